"""``benchmarks/run.py --smoke``: every benchmark runs end to end and writes its result files.

The smoke run uses tiny images and one pass, so its numbers mean nothing; what is checked is
that each benchmark produces its rows with positive, ordered numbers, that ratios agree with
the rows they compare, and that the Markdown report carries the machine description.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "run.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _case(rows: list[dict[str, str]], benchmark: str, text: str) -> dict[str, str]:
    found = [r for r in rows if r["benchmark"] == benchmark and text in r["case"]]
    assert len(found) == 1, f"expected one {benchmark} row containing {text!r}, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, shared_data) -> tuple[list[dict[str, str]], str, str]:
    out = tmp_path_factory.mktemp("bench")
    proc = _run("--smoke", "--data", str(shared_data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _rows(out / "results.csv"), (out / "results.md").read_text(), proc.stderr


@pytest.mark.real_data
def test_every_benchmark_writes_rows_with_positive_ordered_numbers(smoke_results):
    rows, _, _ = smoke_results
    assert {r["benchmark"] for r in rows} == {
        "pipeline", "input_bound", "serving", "precision", "gpu"
    }
    measured = [r for r in rows if r["benchmark"] != "gpu" or r["case"] != "no GPU"]
    assert measured
    for row in measured:
        low, median, high = float(row["min"]), float(row["median"]), float(row["max"])
        assert math.isfinite(median) and median > 0, row
        assert low <= median <= high, row
        assert int(row["passes"]) == 1, row  # --smoke measures once


@pytest.mark.real_data
def test_pipeline_compares_three_input_pipelines_warm_and_cold(smoke_results):
    rows, _, _ = smoke_results
    for phase in ("warm", "cold"):
        leukdx = _case(rows, "pipeline", f"leukdx ImageCache + make_dataset ({phase}")
        generator = _case(rows, "pipeline", f"ImageDataGenerator.flow_from_directory ({phase}")
        _case(rows, "pipeline", f"image_dataset_from_directory + leukdx augmentation ({phase}")
        # one pass: the ratio is exactly leukdx / ImageDataGenerator
        expected = float(leukdx["median"]) / float(generator["median"])
        assert float(leukdx["ratio"]) == pytest.approx(expected, rel=1e-3)
    assert _case(rows, "pipeline", "make_dataset (warm")["target"].startswith(">= 5x")


@pytest.mark.real_data
def test_input_bound_ratio_is_pipeline_step_over_memory_step(smoke_results):
    rows, _, _ = smoke_results
    for model in ("demo config", "VGG16 LeukNet"):
        real = float(_case(rows, "input_bound", f"{model}: step fed by leukdx")["median"])
        memory = float(_case(rows, "input_bound", f"{model}: step fed by in-memory")["median"])
        ratio = _case(rows, "input_bound", f"{model}: pipeline / in-memory")
        assert float(ratio["median"]) == pytest.approx(real / memory, rel=1e-3)
        assert ratio["target"] == "<= 1.05"
        assert ratio["target_met"] in ("met", "not met")


@pytest.mark.real_data
def test_serving_and_precision_rows(smoke_results):
    rows, _, _ = smoke_results
    for batch in (1, 32):
        _case(rows, "serving", f"model.predict, batch {batch}")
        saved = _case(rows, "serving", f"SavedModel serving_default, batch {batch}")
        assert float(saved["ratio"]) > 0
    policies = {r["case"]: r for r in rows if r["benchmark"] == "precision"}
    assert len(policies) == 2 and "VGG16 training, float32" in policies
    (auto,) = [case for case in policies if case != "VGG16 training, float32"]
    assert auto.split("auto = ")[-1] in ("float32", "mixed_bfloat16", "mixed_float16"), auto
    assert float(policies[auto]["ratio"]) > 0


@pytest.mark.real_data
def test_markdown_describes_machine_command_and_device(smoke_results):
    _, markdown, _ = smoke_results
    for text in ("- CPU:", "- Accelerator:", "TensorFlow 2", "Keras 3", "- Date:",
                 "--smoke", "## pipeline", "## input_bound", "## serving", "## precision",
                 "## gpu"):
        assert text in markdown, text


def test_unknown_benchmark_name_is_refused_with_the_valid_names():
    proc = _run("--only", "pipeline,warp_drive", timeout=120)
    assert proc.returncode == 2
    assert "warp_drive" in proc.stderr and "input_bound" in proc.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    proc = _run("--smoke", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                timeout=120)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "--data" in proc.stderr
    assert not (tmp_path / "o" / "results.csv").exists()
