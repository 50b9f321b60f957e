"""Tests of the evaluation runner: grid expansion, resumption, leakage wiring, real runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import ConfigError, config_from_dict, load_config, replace
from leukdx.evaluation import runner
from leukdx.evaluation.leakage import LeakageError
from leukdx.evaluation.ledger import FOLD_KEY_COLUMNS, Ledger
from leukdx.evaluation.runner import (
    FoldOutput,
    FoldTrainer,
    ResultsFolderError,
    SourceConfoundWarning,
    expand_grid,
    fold_seed,
    run_evaluation,
)
from leukdx.evaluation.splits import Split


def _config(root: Path, tmp_path: Path, **sections) -> object:
    data = {
        "name": "t",
        "seed": 3,
        "data": {"root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "cache")},
        "augment": {"preset": "none"},
        "model": {"backbone": "vgg16", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "validation_split": 0.0,
                  "tensorboard": False, "verbose": 0, "precision": "float32"},
        "evaluate": {"protocol": "kfold", "k": 2, "runs": 1, "plots": False},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


class BrightnessTrainer:
    """A TensorFlow-free trainer: darker images (more stained blobs) score as leukaemia.

    Records every call; optionally raises on call number ``fail_on`` (1-based) to simulate a
    killed evaluation.
    """

    def __init__(self, fail_on: int | None = None):
        self.fail_on = fail_on
        self.calls: list[dict] = []

    def key_fields(self, cfg):
        return {"backbone": cfg.model.backbone, "strategy": cfg.model.strategy, "head": "rule"}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        assert "label" not in test_records.columns  # the runner keeps test labels to itself
        assert len(test_records) == len(test_images)
        self.calls.append({"seed": seed, "n_train": len(train_images),
                           "train_paths": set(train_records["path"]),
                           "strategy": cfg.model.strategy})
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        brightness = test_images.reshape(len(test_images), -1).mean(axis=1) / 255.0
        return FoldOutput(1.0 - brightness, 0.01, 0.1)


def test_fake_trainer_satisfies_protocol():
    assert isinstance(BrightnessTrainer(), FoldTrainer)
    assert isinstance(runner.FineTuneTrainer(), FoldTrainer)


def test_expand_grid_is_the_cartesian_product(tmp_path):
    cfg = _config(tmp_path, tmp_path, evaluate={"grid": {
        "model.strategy": ["sft", "mdft"], "train.learning_rate": [0.1, 0.01, 0.001]}})
    points = expand_grid(cfg)
    combos = {(p.cfg.model.strategy, p.cfg.train.learning_rate) for p in points}
    assert combos == {(s, lr) for s in ("sft", "mdft") for lr in (0.1, 0.01, 0.001)}
    assert len(points) == 6
    # a grid key without a column of its own goes into the experiment name, keeping keys unique
    experiments = {runner.experiment_label(p) for p in points}
    assert len(experiments) == 3 and all(e.startswith("t [train.learning_rate=") for e in experiments)
    assert expand_grid(_config(tmp_path, tmp_path))[0].overrides == {}


def test_expand_grid_rejects_bad_values(tmp_path):
    cfg = _config(tmp_path, tmp_path, evaluate={"grid": {"model.strategy": ["sft", "bogus"]}})
    with pytest.raises(ConfigError, match="bogus"):
        expand_grid(cfg)


def test_head_label_of_original_and_new_heads(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    assert runner.head_label(cfg) == "8"
    assert runner.head_label(_config(tmp_path, tmp_path, model={"strategy": "dft"})) == "original"
    multi = _config(tmp_path, tmp_path, model={"head": {"units": [1024, 256]}})
    assert runner.head_label(multi) == "1024-256"


def test_fold_seeds_differ_per_run_and_split_but_not_per_config(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    seeds = {fold_seed(cfg, s, r) for s in range(5) for r in range(5)}
    assert len(seeds) == 25
    other = _config(tmp_path, tmp_path, model={"strategy": "sft"})
    assert fold_seed(cfg, 2, 1) == fold_seed(other, 2, 1)


def test_interrupted_grid_resumes_without_repeating_or_losing_folds(tiny_collection, tmp_path):
    cfg = _config(tiny_collection, tmp_path,
                  evaluate={"grid": {"model.strategy": ["sft", "mdft"]}, "runs": 2})
    out = tmp_path / "results"
    crashing = BrightnessTrainer(fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_evaluation(cfg, out, trainer=crashing, progress=False)
    ledger = Ledger(out / "folds.csv")
    first = ledger.read()
    assert len(first) == 1
    first_text = (out / "folds.csv").read_text()

    resumed = BrightnessTrainer()
    folds = run_evaluation(cfg, out, trainer=resumed, progress=False)
    total = 2 * 2 * 2  # strategies x folds x runs
    assert len(resumed.calls) == total - 1  # the finished fold was not retrained
    assert len(folds) == total and len(ledger.read()) == total
    assert (out / "folds.csv").read_text().startswith(first_text)  # earlier rows untouched
    keys = {Ledger.key_of(r) for _, r in ledger.read().iterrows()}
    assert len(keys) == total
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    assert len(list((out / "predictions").glob("*.csv"))) == total

    again = BrightnessTrainer()
    run_evaluation(cfg, out, trainer=again, progress=False)
    assert again.calls == [] and len(ledger.read()) == total


def test_folds_never_train_on_their_test_images(tiny_collection, tmp_path):
    from leukdx.data.pipeline import ImageCache

    cfg = _config(tiny_collection, tmp_path, evaluate={"protocol": "lodo", "runs": 2})
    trainer = BrightnessTrainer()
    cache = ImageCache(progress=False)
    folds = run_evaluation(cfg, tmp_path / "r", trainer=trainer, progress=False, cache=cache)
    # every image is used by 3 folds x 2 runs but decoded once
    assert cache.decode_count == 36
    folds = folds[folds["run"] == 0].reset_index(drop=True)
    trainer.calls = trainer.calls[::2]
    assert sorted(folds["test_source"]) == ["src_a", "src_b", "src_c"]
    predictions = sorted((tmp_path / "r" / "predictions").glob("*.csv"))
    for call, (_, row) in zip(trainer.calls, folds.iterrows()):
        test_dir = tiny_collection / row["test_source"]
        assert not any(p.startswith(str(test_dir)) for p in call["train_paths"])
        assert call["n_train"] == row["n_train"] == 24
    tested = pd.concat(pd.read_csv(p) for p in predictions)
    assert len(predictions) == 6 and len(tested) == 72 and set(tested.columns) == {"path", "label", "probability",
                                                         "prediction"}
    expected = tested["path"].map(lambda p: int(Path(p).parent.name == "leukemia"))
    assert (tested["label"] == expected).all()


def test_tampered_splits_fail_before_any_training(tiny_collection, tmp_path, monkeypatch):
    real_make_splits = runner.make_splits

    def leaky(records, evaluate_config, seed):
        split = real_make_splits(records, evaluate_config, seed)[0]
        train = np.concatenate([split.train_idx, split.test_idx[:1]])
        return [Split(split.protocol, split.test_source, 0, 0, np.sort(train), split.test_idx)]

    monkeypatch.setattr(runner, "make_splits", leaky)
    trainer = BrightnessTrainer()
    with pytest.raises(LeakageError):
        run_evaluation(_config(tiny_collection, tmp_path), tmp_path / "r", trainer=trainer,
                       progress=False)
    assert trainer.calls == []
    assert not (tmp_path / "r" / "folds.csv").exists()


def test_source_confound_is_warned_and_recorded(tmp_path):
    # Every healthy image comes from one source, every leukaemic one from another.
    root = tmp_path / "confounded"
    rng = np.random.default_rng(0)
    for source, cls in (("h", "healthy"), ("l", "leukemia")):
        folder = root / source / cls
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    cfg = _config(root, tmp_path, data={"near_duplicate_distance": -1})
    with pytest.warns(SourceConfoundWarning, match="confounded"):
        run_evaluation(cfg, tmp_path / "r", trainer=BrightnessTrainer(), progress=False)
    report = json.loads((tmp_path / "r" / "leakage.json").read_text())
    entries = report["split_sets"][0]["splits"]
    assert len(entries) == 2 and all(e["confounded"] for e in entries)
    assert entries[0]["source_confound"]["balanced_accuracy"] == pytest.approx(1.0)


# ------------------------------------------------------------------- results folders


def _summary_runs(out: Path) -> str:
    return re.search(r"(\d+) run\(s\) per fold", (out / "summary.md").read_text()).group(1)


@pytest.mark.parametrize("override", [
    {"train": {"epochs": 2}}, {"data": {"image_size": 48}}, {"train": {"learning_rate": 0.5}},
])
def test_a_rerun_with_another_config_is_refused_naming_the_setting(
    tiny_collection, tmp_path, override
):
    out = tmp_path / "r"
    run_evaluation(_config(tiny_collection, tmp_path), out, trainer=BrightnessTrainer(),
                   progress=False)
    before = (out / "folds.csv").read_bytes()
    (section, values), = override.items()
    (key, _), = values.items()
    trainer = BrightnessTrainer()
    with pytest.raises(ResultsFolderError, match=rf"\({section}\.{key} differ\)") as info:
        run_evaluation(_config(tiny_collection, tmp_path, **override), out, trainer=trainer,
                       progress=False)
    assert "\n" not in str(info.value) and "--force" in str(info.value)
    assert trainer.calls == [] and (out / "folds.csv").read_bytes() == before


def test_force_starts_a_new_ledger_and_keeps_the_old_one(tiny_collection, tmp_path):
    out = tmp_path / "r"
    first = run_evaluation(_config(tiny_collection, tmp_path), out, trainer=BrightnessTrainer(),
                           progress=False)
    old_bytes = (out / "folds.csv").read_bytes()
    changed = _config(tiny_collection, tmp_path, train={"epochs": 2})
    trainer = BrightnessTrainer()
    folds = run_evaluation(changed, out, trainer=trainer, progress=False, force=True)
    archived = sorted(out.glob("folds.*.csv"))
    assert len(archived) == 1 and archived[0].read_bytes() == old_bytes
    assert re.fullmatch(r"folds\.\d{8}T\d{6}Z\.csv", archived[0].name)
    assert len(trainer.calls) == len(first) == len(folds) == 2  # every fold trained afresh
    assert set(folds["config_hash"]) == {runner.config_hash(changed)}
    assert set(folds["config_hash"]).isdisjoint(set(first["config_hash"]))
    assert load_config(out / "config.yaml").train.epochs == 2
    assert load_config(next(out.glob("config.*.yaml"))).train.epochs == 1
    assert len(list(out.glob("predictions.*/*.csv"))) == 2  # the old fold predictions


def test_fewer_runs_summarise_only_the_planned_runs(tiny_collection, tmp_path):
    out = tmp_path / "r"
    two = run_evaluation(_config(tiny_collection, tmp_path, evaluate={"runs": 2}), out,
                         trainer=BrightnessTrainer(), progress=False)
    assert len(two) == 4 and _summary_runs(out) == "2"
    trainer = BrightnessTrainer()
    one = run_evaluation(_config(tiny_collection, tmp_path, evaluate={"runs": 1}), out,
                         trainer=trainer, progress=False)
    assert trainer.calls == []  # evaluate.runs is not part of the configuration
    assert set(one["run"]) == {0} and len(one) == 2
    assert len(Ledger(out / "folds.csv").read()) == 4  # run 1 stays in the ledger
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["n"] == 2).all() and _summary_runs(out) == "1"
    run0 = two[two["run"] == 0]
    assert summary["accuracy_mean"].iloc[0] == pytest.approx(run0["accuracy"].mean())


def test_rows_record_the_config_hash_sizes_and_the_folder_its_config(tiny_collection, tmp_path):
    cfg = _config(tiny_collection, tmp_path, evaluate={"grid": {"model.strategy": ["sft", "mdft"]}})
    out = tmp_path / "r"
    folds = run_evaluation(cfg, out, trainer=BrightnessTrainer(), progress=False)
    hashes = {p.cfg.model.strategy: runner.config_hash(p.cfg) for p in expand_grid(cfg)}
    assert len(set(hashes.values())) == 2
    assert (folds["config_hash"] == folds["strategy"].map(hashes)).all()
    assert (folds["n_val"] == 0).all() and (folds["image_size"] == 32).all()
    assert (folds["epochs"] == 1).all() and (folds["precision_policy"] == "float32").all()
    assert load_config(out / "config.yaml") == cfg
    # settings that cannot change a result do not change the hash
    quiet = replace(cfg, {"evaluate.runs": 3, "evaluate.plots": True, "train.verbose": 2})
    assert runner.config_hash(quiet) == runner.config_hash(cfg)


def test_rows_of_another_results_version_are_refused(tiny_collection, tmp_path, monkeypatch):
    out = tmp_path / "r"
    cfg = _config(tiny_collection, tmp_path)
    run_evaluation(cfg, out, trainer=BrightnessTrainer(), progress=False)
    monkeypatch.setattr(runner, "RESULTS_VERSION", "999")
    with pytest.raises(ResultsFolderError, match="leukdx results version 1 -> 999"):
        run_evaluation(cfg, out, trainer=BrightnessTrainer(), progress=False)


def test_trainer_sizes_and_provenance_reach_the_row(tiny_collection, tmp_path):
    class Validating(BrightnessTrainer):
        def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
            output = super().fit_predict(cfg, train_records, train_images, test_images, seed,
                                         test_records)
            return output._replace(n_fit=len(train_images) - 5, n_val=5,
                                   precision_policy="mixed_bfloat16", jit_compile=True)

    folds = run_evaluation(_config(tiny_collection, tmp_path), tmp_path / "r",
                           trainer=Validating(), progress=False)
    assert (folds["n_train"] == 13).all() and (folds["n_val"] == 5).all()
    assert (folds["n_train"] + folds["n_val"] + folds["n_test"] == 36).all()
    assert set(folds["precision_policy"]) == {"mixed_bfloat16"}
    assert set(folds["jit_compile"]) == {"True"}


def test_imbalanced_training_sets_are_warned_unless_weighted(tmp_path):
    root = tmp_path / "imbalanced"
    rng = np.random.default_rng(1)
    for source in ("a", "b"):
        for cls, n in (("healthy", 9), ("leukemia", 3)):
            folder = root / source / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png")
    cfg = _config(root, tmp_path, data={"near_duplicate_distance": -1})
    with pytest.warns(runner.ClassImbalanceWarning, match="train.class_weight: balanced"):
        run_evaluation(cfg, tmp_path / "r", trainer=BrightnessTrainer(), progress=False)
    weighted = _config(root, tmp_path, data={"near_duplicate_distance": -1},
                       train={"class_weight": "balanced"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", runner.ClassImbalanceWarning)
        run_evaluation(weighted, tmp_path / "w", trainer=BrightnessTrainer(), progress=False)


def test_the_plan_and_progress_are_printed_and_skips_said(tiny_collection, tmp_path, capsys):
    cfg = _config(tiny_collection, tmp_path, evaluate={"runs": 2})
    out = tmp_path / "r"
    run_evaluation(cfg, out, trainer=BrightnessTrainer(), progress=True)
    printed = capsys.readouterr().out
    assert ("Plan: 1 configuration(s) x 2 split(s) x 2 run(s) = 4 fits; 4 to train."
            in printed)
    assert re.search(r"fold 1/4 kfold.*run 0: accuracy \d\.\d{3}, MCC -?\d\.\d{3}; "
                     r"elapsed \d+ s, ETA \d+ s", printed)
    assert "fold 4/4" in printed and "ETA done" in printed
    run_evaluation(cfg, out, trainer=BrightnessTrainer(), progress=True)
    again = capsys.readouterr().out
    assert "4 already in folds.csv (not retrained), 0 to train." in again
    assert "fold 1/4" not in again


def test_long_plans_on_cpu_are_estimated_from_history_and_warned(
    tiny_collection, tmp_path, capsys, monkeypatch
):
    cfg = _config(tiny_collection, tmp_path)
    run_evaluation(cfg, tmp_path / "first", trainer=BrightnessTrainer(), progress=False)
    # an archived ledger of the same backbone and size: 300 s per image-epoch
    old = Ledger(tmp_path / "first" / "folds.csv").read()
    old["train_seconds"] = 300.0 * old["n_train"] * old["epochs"]
    out = tmp_path / "r"
    for folder in (out, tmp_path / "r2"):
        archive = Ledger(folder / "folds.20250101T000000Z.csv")
        for _, row in old.iterrows():
            archive.append(row.to_dict())
    monkeypatch.setattr(runner, "_has_gpu", lambda: False)
    with pytest.warns(runner.SlowPlanWarning, match="executor: ray on a GPU machine"):
        run_evaluation(replace(cfg, {"train.epochs": 3}), out, trainer=BrightnessTrainer(),
                       progress=True)
    printed = capsys.readouterr().out
    # 2 fits x 18 images x 3 epochs x 300 s = 32,400 s
    assert ("Estimated time: about 9 h 00 min for 2 fit(s) (from 2 earlier fit(s) of vgg16 "
            "at 32 px)." in printed)
    # the same plan on a GPU machine is not warned
    monkeypatch.setattr(runner, "_has_gpu", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", runner.SlowPlanWarning)
        run_evaluation(replace(cfg, {"train.epochs": 3}), tmp_path / "r2",
                       trainer=BrightnessTrainer(), progress=True)
    assert "Estimated time: about 9 h 00 min" in capsys.readouterr().out


_WORKER = """
import json, os, sys, time
from pathlib import Path
from leukdx.config import config_from_dict
from leukdx.evaluation.runner import FoldOutput, run_evaluation

out, calls = Path(sys.argv[2]), Path(sys.argv[3])


class SlowTrainer:
    builds_keras_models = False

    def key_fields(self, cfg):
        return {"backbone": "vgg16", "strategy": "rule", "head": "rule"}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        first = not list(calls.parent.glob(f"ready.{os.getpid()}"))
        (calls.parent / f"ready.{os.getpid()}").touch()
        deadline = time.time() + 60
        while first and len(list(calls.parent.glob("ready.*"))) < 2 and time.time() < deadline:
            time.sleep(0.02)  # both workers are training before either goes on
        with open(calls, "a") as fh:
            fh.write(f"{os.getpid()} {seed}\\n")
        time.sleep(0.3)
        brightness = test_images.reshape(len(test_images), -1).mean(axis=1) / 255.0
        return FoldOutput(1.0 - brightness, 0.3, 0.1)


folds = run_evaluation(config_from_dict(json.loads(sys.argv[1])), out, trainer=SlowTrainer(),
                       progress=False)
print("ROWS", len(folds))
"""


def test_two_workers_on_one_folder_split_the_folds(tiny_collection, tmp_path):
    settings = {
        "name": "t", "seed": 3, "augment": {"preset": "none"},
        "data": {"root": str(tiny_collection), "image_size": 32},
        "evaluate": {"protocol": "kfold", "k": 2, "runs": 3, "plots": False},
    }
    script, calls = tmp_path / "worker.py", tmp_path / "calls" / "calls.txt"
    script.write_text(_WORKER)
    calls.parent.mkdir()
    out = tmp_path / "shared"
    workers = [
        subprocess.Popen([sys.executable, str(script), json.dumps(settings), str(out),
                          str(calls)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert all("ROWS 6" in text for text in outputs)  # each returns the complete plan
    trained = [line.split() for line in calls.read_text().splitlines()]
    seeds = [seed for _, seed in trained]
    assert len(seeds) == 6 and len(set(seeds)) == 6  # every fold trained exactly once
    assert len({pid for pid, _ in trained}) == 2  # by both workers
    folds = Ledger(out / "folds.csv").read()
    assert len(folds) == 6 and len({Ledger.key_of(r) for _, r in folds.iterrows()}) == 6
    assert len(list((out / "predictions").glob("*.csv"))) == 6


@pytest.mark.slow
def test_kfold_fine_tuning_on_tiny_collection(tiny_collection, tmp_path, caplog):
    # validation is carved out of each fold's training part (grouped, 25 %)
    import keras

    epoch_logs: list[dict] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_logs.append(dict(logs or {}))

    cfg = _config(tiny_collection, tmp_path, evaluate={"plots": True},
                  train={"validation_split": 0.25})
    trainer = runner.FineTuneTrainer(callbacks=[Record()])
    with caplog.at_level("INFO", logger="leukdx.evaluation.runner"):
        folds = run_evaluation(cfg, tmp_path / "r", progress=False, trainer=trainer)
    # no earlier fits: the first epoch measured gives the plan's estimate
    assert "Estimated time: known after the first epoch." in caplog.text
    assert re.search(r"Estimated time: about \d+ s for 2 fit\(s\) \(from a measured first "
                     r"epoch of \d+ s\)", caplog.text)
    assert len(folds) == 2
    assert len(epoch_logs) == 2 and all("val_loss" in logs for logs in epoch_logs)
    assert set(folds["test_source"]) == {"pooled"}
    # n_train counts the images fitted: the fold's validation images are in n_val
    assert (folds["n_train"] + folds["n_val"] + folds["n_test"] == 36).all()
    assert (folds["n_val"] > 0).all() and (folds["n_train"] > folds["n_val"]).all()
    assert set(folds["precision_policy"]) == {"float32"}
    assert set(folds["jit_compile"]) <= {"True", "False"}
    assert folds["tp"].add(folds["fn"]).sum() == 18  # every leukaemia image tested once
    assert (folds[["accuracy", "mcc", "roc_auc"]].notna()).all().all()
    assert (folds["train_seconds"] > 0).all() and (folds["infer_ms_per_image"] > 0).all()
    assert list(folds.columns[: len(FOLD_KEY_COLUMNS)]) == list(FOLD_KEY_COLUMNS)
    assert set(folds["head"]) == {"8"} and set(folds["backbone"]) == {"vgg16"}
    plots = {p.name for p in (tmp_path / "r" / "plots").glob("*.png")}
    assert "metrics.png" in plots
    assert any(p.startswith("confusion__") for p in plots)
    assert any(p.startswith("roc__") for p in plots)


@pytest.mark.real_data
@pytest.mark.slow
def test_lodo_on_real_sources(shared_data, tmp_path):
    cfg = _config(
        shared_data, tmp_path,
        data={"sources": ["all_idb1", "all_idb2", "taleqani_all", "cellavision_zheng"],
              "max_per_class": 4},
        evaluate={"protocol": "lodo", "plots": True},
    )
    out = tmp_path / "lodo"
    folds = run_evaluation(cfg, out, progress=False)
    # one fold per two-class source; the healthy-only source is training data only
    assert sorted(folds["test_source"]) == ["all_idb1", "all_idb2", "taleqani_all"]
    assert (folds["n_test"] == 8).all() and (folds["n_train"] == 20).all()
    for name in ("folds.csv", "summary.csv", "summary.md", "leakage.json", "plots/metrics.png"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["test_source"]) == ["all_idb1", "all_idb2", "taleqani_all"]
    markdown = (out / "summary.md").read_text()
    assert "| A (%) | P (%) | R (%) | S (%) | MCC (%) |" in markdown
    assert all(f"**{s}**" in markdown for s in ("all_idb1", "all_idb2", "taleqani_all"))
    assert len(list((out / "plots").glob("confusion__*.png"))) == 3


@pytest.mark.slow
def test_fine_tuning_reports_its_first_batches_then_each_epoch(tiny_collection, tmp_path):
    from leukdx.data.pipeline import ImageCache
    from leukdx.data.records import load_collection

    cfg = _config(tiny_collection, tmp_path, train={"batch_size": 1, "epochs": 2})
    records = load_collection(tiny_collection, cfg.data, progress=False).records
    train = records.iloc[::3].reset_index(drop=True)  # 12 images: 12 steps per epoch
    images = ImageCache(progress=False).get(train, 32, "stretch")
    calls = []
    trainer = runner.FineTuneTrainer()
    trainer.epoch_listener = lambda *args: calls.append(args)
    output = trainer.fit_predict(cfg, train, images, images[:3], seed=0,
                                 test_records=train.iloc[:3].drop(columns=["label"]))
    assert [(epoch, basis) for epoch, _, _, basis in calls] == [
        (0, "batches"), (0, "epoch"), (1, "epoch")]
    assert all(seconds > 0 and n_fit == 12 for _, seconds, n_fit, _ in calls)
    assert (output.n_fit, output.n_val, output.precision_policy) == (12, 0, "float32")


def test_a_setting_added_later_at_its_default_keeps_older_folders_valid():
    from leukdx.config import Config, replace
    from leukdx.evaluation.runner import _differences, config_hash, result_settings

    current = result_settings(Config())
    older = {k: v for k, v in current.items() if k != "train.calibrate"}  # before it existed
    assert _differences(older, current) == []
    changed = result_settings(replace(Config(), {"train.calibrate": "unseen_source"}))
    assert _differences(older, changed) == ["train.calibrate"]
    # the hash leaves settings at their default out, so it is the same with or without them
    assert config_hash(Config()) != config_hash(replace(Config(), {"train.calibrate":
                                                                   "unseen_source"}))
    assert config_hash(replace(Config(), {"train.epochs": 3})) != config_hash(Config())
