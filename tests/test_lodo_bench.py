"""``benchmarks/lodo.py --smoke``: the LODO ablation runs end to end, resumes, and reports.

The smoke run trains tiny models (32 px, 1 epoch, 6 images per source and class), so its
numbers mean nothing; what is checked is the shape of ``lodo.csv`` and ``lodo.md``, that the
statistics agree with the ledgers they summarise, and that a second invocation trains nothing.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "lodo.py"
SOURCES = {"all_idb1", "all_idb2", "taleqani_all"}


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, shared_data):
    work = tmp_path_factory.mktemp("lodo")
    args = ("--smoke", "--variants", "lodo_cpu_tta,lodo_morphology", "--data", str(shared_data),
            "--work", str(work))
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work, args


@pytest.mark.real_data
@pytest.mark.slow
def test_rows_per_variant_and_source_match_the_ledgers(smoke):
    work, _ = smoke
    rows = _rows(work / "lodo.csv")
    assert [r["variant"] for r in rows[:: len(SOURCES) + 1]] == ["lodo_cpu", "lodo_cpu_tta",
                                                                 "lodo_morphology"]
    for variant in ("lodo_cpu", "lodo_cpu_tta"):
        mine = {r["test_source"]: r for r in rows if r["variant"] == variant}
        assert set(mine) == SOURCES | {"mean"}
        folds = pd.read_csv(work / variant / "folds.csv")
        assert len(folds) == len(SOURCES)  # 1 run per held-out source
        for source in SOURCES:
            fold = folds[folds["test_source"] == source].iloc[0]
            assert float(mine[source]["MCC_mean"]) == pytest.approx(fold["mcc"])
            assert float(mine[source]["sensitivity_mean"]) == pytest.approx(fold["recall"])
            assert float(mine[source]["MCC_std"]) == 0.0
        expected = sum(float(mine[s]["accuracy_mean"]) for s in SOURCES) / len(SOURCES)
        assert float(mine["mean"]["accuracy_mean"]) == pytest.approx(expected)
        # validation metrics of the fits, for choosing the recipe without the test sources
        assert math.isfinite(float(mine["mean"]["val_loss_mean"]))
        assert float(mine["mean"]["val_loss_mean"]) == pytest.approx(folds["val_loss"].mean())
        assert float(mine["mean"]["wall_seconds"]) > 0
    # the morphology variant's classifier folds go through the same ledger; it fits no
    # network, so it has no validation epochs
    morphology = {r["test_source"]: r for r in rows if r["variant"] == "lodo_morphology"}
    assert set(morphology) == SOURCES | {"mean"}
    folds = pd.read_csv(work / "lodo_morphology" / "folds.csv")
    assert set(folds["strategy"]) == {"features:hgb"} and len(folds) == len(SOURCES)
    for source in SOURCES:
        fold = folds[folds["test_source"] == source].iloc[0]
        assert float(morphology[source]["MCC_mean"]) == pytest.approx(fold["mcc"])
    assert morphology["mean"]["val_loss_mean"] in ("", "nan")
    assert (work / "lodo_morphology" / "feature_space.md").is_file()
    tta = {r["test_source"]: r for r in rows if r["variant"] == "lodo_cpu_tta"}
    assert tta["mean"]["p_mcc_vs_baseline"] != ""  # compared with the baseline
    assert all(r["p_mcc_vs_baseline"] in ("", "nan") for r in rows if r["variant"] == "lodo_cpu")


@pytest.mark.real_data
@pytest.mark.slow
def test_markdown_has_machine_command_and_selection_rule(smoke):
    work, _ = smoke
    text = (work / "lodo.md").read_text()
    for needle in ("- CPU:", "flags:", "cores", "- Command: `python benchmarks/lodo.py --smoke",
                   "Selection rule", "training* sources", "| lodo_cpu_tta |",
                   "p (MCC) vs baseline", "all_idb1"):
        assert needle in text, needle


@pytest.mark.real_data
@pytest.mark.slow
def test_a_second_invocation_resumes_without_training(smoke):
    work, args = smoke
    before = {v: (work / v / "folds.csv").read_text()
              for v in ("lodo_cpu", "lodo_cpu_tta", "lodo_morphology")}
    walls = {r["variant"]: r["wall_seconds"] for r in _rows(work / "lodo.csv")}
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for variant, text in before.items():
        assert (work / variant / "folds.csv").read_text() == text
    assert {r["variant"]: r["wall_seconds"] for r in _rows(work / "lodo.csv")} == walls


def test_unknown_variant_is_refused_with_the_valid_names(tmp_path):
    proc = _run("--variants", "lodo_cpu_warp", "--work", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "lodo_cpu_warp" in proc.stderr and "lodo_cpu_stainnorm" in proc.stderr
    assert not list(tmp_path.iterdir())
