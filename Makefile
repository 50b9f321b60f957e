# leukdx — thin targets over the `leukdx` CLI. Variables pass through:
#   make train CONFIG=configs/leuknet.yaml DATA=../shared/data OUT=runs/leuknet
#   make evaluate CONFIG=configs/lodo_leuknet.yaml OUT=results/lodo
#   make export RUN=runs/leuknet OUT=exports/leuknet
# SET='train.epochs=2 data.image_size=64' adds --set overrides.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/leuknet.yaml
DATA   ?=
OUT    ?=
RUN    ?= runs/demo
SET    ?=
FORMAT ?= savedmodel tflite keras

overrides = $(if $(DATA),--set data.root=$(DATA)) $(foreach s,$(SET),--set $(s))

.PHONY: install test lint demo train evaluate export bench lodo-bench clean help

help:
	@echo "make demo      synthetic data -> small LODO evaluation -> summary table (no download)"
	@echo "make test      the test suite (unit, real-data, notebooks, bench smoke)"
	@echo "make train     CONFIG=... [DATA=...] [OUT=runs/NAME] [SET='k=v ...']"
	@echo "make evaluate  CONFIG=... [DATA=...] [OUT=results/NAME]"
	@echo "make export    RUN=runs/NAME [OUT=exports/NAME] [FORMAT='savedmodel tflite keras']"
	@echo "make bench     [ONLY=xla,input_bound] speed of pipeline, training, XLA, serving -> benchmarks/"
	@echo "make lodo-bench  LODO ablation of the generalisation techniques -> benchmarks/lodo.md"
	@echo "make lint      ruff"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: install
	LEUKDX_SMALL=1 $(BIN)/pytest -q --nbmake tests notebooks

lint: install
	$(BIN)/ruff check leukdx tests benchmarks

demo: install
	$(BIN)/leukdx data synth demo_data --sources 3 --per-class 40 --seed 0 --overwrite
	$(BIN)/leukdx data inspect demo_data
	$(BIN)/leukdx evaluate --config configs/demo.yaml --out $(or $(OUT),results/demo) $(overrides)

train: install
	$(BIN)/leukdx train --config $(CONFIG) $(if $(OUT),--out $(OUT)) $(overrides)

evaluate: install
	$(BIN)/leukdx evaluate --config $(CONFIG) $(if $(OUT),--out $(OUT)) $(overrides)

export: install
	$(BIN)/leukdx export $(RUN) --format $(FORMAT) $(if $(OUT),--out $(OUT))

bench: install
	$(BIN)/python benchmarks/run.py --data $(or $(DATA),../shared/data) --out benchmarks \
		$(if $(ONLY),--only $(ONLY))

# LODO ablation of the generalisation techniques (resumable): VARIANTS=a,b RUNS=1 EPOCHS=12
lodo-bench: install
	$(BIN)/python benchmarks/lodo.py --data $(or $(DATA),../shared/data) \
		$(if $(VARIANTS),--variants $(VARIANTS)) $(if $(RUNS),--runs $(RUNS)) \
		$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(SIZE),--size $(SIZE))

clean:
	rm -rf runs results exports demo_data .leukdx_cache benchmarks/_work
