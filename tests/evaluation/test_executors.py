"""Tests of the fold executors: a grid run on Ray gives the ledger a local run gives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray

from leukdx.config import ConfigError, config_from_dict
from leukdx.evaluation import executors, runner
from leukdx.evaluation.executors import FoldsFailedError, get_executor
from leukdx.evaluation.ledger import FOLD_KEY_COLUMNS, Ledger
from leukdx.evaluation.metrics import METRIC_NAMES
from leukdx.evaluation.runner import FoldOutput, config_hash, run_evaluation

# Trainers defined here travel to Ray workers by value (workers cannot import test modules).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for the tests of this module."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception:  # Ray's node gives its agents 15 s to start; a busy machine may not
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()


def _config(root: Path, tmp_path: Path, **sections):
    data = {
        "name": "x",
        "seed": 5,
        "data": {"root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "cache")},
        "augment": {"preset": "leuknet"},
        "model": {"backbone": "small_cnn", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "validation_split": 0.0,
                  "tensorboard": False, "verbose": 0, "precision": "float32"},
        "evaluate": {"protocol": "lodo", "runs": 1, "plots": False,
                     "grid": {"model.head.units": [[8], [16]]}},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


class DarknessTrainer:
    """A TensorFlow-free trainer: darker images score as leukaemia. Records the process that
    trained each fold (``worker_pid``) and fails the folds testing ``fail_source``."""

    def __init__(self, fail_source: str | None = None):
        self.fail_source = fail_source

    def key_fields(self, cfg):
        return {"backbone": cfg.model.backbone, "strategy": cfg.model.strategy,
                "head": "-".join(map(str, cfg.model.head.units))}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        if self.fail_source and set(test_records["source"]) == {self.fail_source}:
            raise RuntimeError(f"no GPU memory left for {self.fail_source}")
        darkness = 1.0 - test_images.reshape(len(test_images), -1).mean(axis=1) / 255.0
        return FoldOutput(darkness, 0.01, 0.1, extra_columns={"worker_pid": os.getpid()})


def _sorted(folds: pd.DataFrame) -> pd.DataFrame:
    return folds.sort_values(list(FOLD_KEY_COLUMNS)).reset_index(drop=True)


def test_settings_of_the_executor_do_not_change_the_config_hash(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    on_ray = _config(tmp_path, tmp_path, evaluate={
        "executor": "ray", "ray": {"address": "auto", "num_gpus_per_fold": 0.5}})
    assert on_ray.evaluate.ray.num_gpus_per_fold == 0.5
    assert config_hash(cfg) == config_hash(on_ray)
    with pytest.raises(ConfigError, match="evaluate.executor"):
        _config(tmp_path, tmp_path, evaluate={"executor": "spark"})
    with pytest.raises(ConfigError, match="num_gpus_per_fold"):
        _config(tmp_path, tmp_path, evaluate={"ray": {"num_gpus_per_fold": "many"}})
    assert isinstance(get_executor(on_ray), executors.RayExecutor)
    assert isinstance(get_executor(cfg), executors.LocalExecutor)


def test_cli_executor_and_address_reach_the_evaluation(tmp_path, monkeypatch):
    from leukdx.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("model: {backbone: small_cnn, weights: none}\ndata: {image_size: 32}\n")
    seen = []
    monkeypatch.setattr(runner, "run_evaluation", lambda cfg, out, **kw: seen.append(cfg))
    assert main(["evaluate", "-c", str(config), "--out", str(tmp_path / "r")]) == 0
    assert main(["evaluate", "-c", str(config), "--out", str(tmp_path / "r"),
                 "--address", "ray://head:10001"]) == 0
    assert main(["evaluate", "-c", str(config), "--out", str(tmp_path / "r"),
                 "--executor", "ray"]) == 0
    assert [(c.evaluate.executor, c.evaluate.ray.address) for c in seen] == [
        ("local", None), ("ray", "ray://head:10001"), ("ray", None)]


@pytest.mark.slow
def test_ray_runs_the_grid_in_workers_and_failed_or_interrupted_folds_resume(
        tiny_collection, tmp_path, local_ray, capsys, monkeypatch):
    cfg = _config(tiny_collection, tmp_path)
    local = run_evaluation(cfg, tmp_path / "local", trainer=DarknessTrainer(), progress=False)
    on_ray = _config(tiny_collection, tmp_path, evaluate={"executor": "ray"})

    out = tmp_path / "ray"
    with pytest.raises(FoldsFailedError, match="2 fold"):
        run_evaluation(on_ray, out, trainer=DarknessTrainer(fail_source="src_b"))
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if " failed: " in line]
    assert len(failed) == 2  # one line per failed fold: each configuration's src_b fold
    assert all("src_b" in line and "RuntimeError: no GPU memory left" in line for line in failed)
    partial = Ledger(out / "folds.csv").read()
    assert len(partial) == 4 and "src_b" not in set(partial["test_source"])
    # the driver alone wrote the folder; the folds trained in Ray worker processes
    assert os.getpid() not in set(partial["worker_pid"])
    assert set(Ledger(tmp_path / "local" / "folds.csv").read()["worker_pid"]) == {os.getpid()}

    # Ctrl-C once the first of the two missing folds is written: the other is cancelled
    written = []

    def write_then_interrupt(*args):
        runner_write(*args)
        written.append(args[2].label)
        raise KeyboardInterrupt

    runner_write = runner._write_fold
    monkeypatch.setattr(runner, "_write_fold", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(on_ray, out, trainer=DarknessTrainer())
    assert "Interrupted: cancelled 1 running fold(s)" in capsys.readouterr().out
    assert len(written) == 1 and len(Ledger(out / "folds.csv").read()) == 5
    monkeypatch.setattr(runner, "_write_fold", runner_write)

    resumed = run_evaluation(on_ray, out, trainer=DarknessTrainer(), progress=False)
    assert len(resumed) == len(local) == 6
    ledger = Ledger(out / "folds.csv").read()
    assert len(ledger) == 6 and set(ledger["test_source"]) == {"src_a", "src_b", "src_c"}
    a, b = _sorted(local), _sorted(resumed)
    pd.testing.assert_frame_equal(a[list(FOLD_KEY_COLUMNS)], b[list(FOLD_KEY_COLUMNS)])
    metrics = [m for m in METRIC_NAMES if m in a.columns]
    np.testing.assert_array_equal(a[metrics].to_numpy(), b[metrics].to_numpy())
    assert (b["config_hash"] == a["config_hash"]).all()
    assert (out / "summary.md").is_file() and len(list((out / "predictions").glob("*.csv"))) == 6


@pytest.mark.slow
def test_lodo_grid_on_ray_matches_the_local_run(tiny_collection, tmp_path, local_ray):
    cfg = _config(tiny_collection, tmp_path)
    local = run_evaluation(cfg, tmp_path / "local", progress=False)
    on_ray = run_evaluation(_config(tiny_collection, tmp_path, evaluate={"executor": "ray"}),
                            tmp_path / "ray", progress=False)
    assert len(local) == len(on_ray) == 6  # 2 configurations x 3 held-out sources
    a, b = _sorted(local), _sorted(on_ray)
    pd.testing.assert_frame_equal(a[list(FOLD_KEY_COLUMNS)], b[list(FOLD_KEY_COLUMNS)])
    assert set(a["head"]) == {"8", "16"}
    metrics = [m for m in METRIC_NAMES if m in a.columns]
    counts = ["tp", "tn", "fp", "fn"]
    np.testing.assert_array_equal(a[metrics + counts].to_numpy(), b[metrics + counts].to_numpy())
    assert (a["config_hash"] == b["config_hash"]).all()
