"""leukdx.evaluation.compare: two results folders, one configuration each, tested fold by fold."""

from __future__ import annotations

import numpy as np
import pytest

from leukdx.evaluation.compare import compare_result_dirs
from leukdx.evaluation.ledger import Ledger, write_predictions
from leukdx.evaluation.metrics import binary_metrics
from leukdx.evaluation.runner import FOLDS_FILE, PREDICTIONS_DIR, predictions_name


def write_results(out, strategy: str, noise: float, folds: int = 8, n: int = 40, seed: int = 0):
    """A results folder of one configuration whose probabilities are the labels plus noise."""
    rng = np.random.default_rng(seed)
    ledger = Ledger(out / FOLDS_FILE)
    for fold in range(folds):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        flip = np.random.default_rng(fold).random(n) < noise  # same images, same fold draw
        probs = np.where(flip, 1 - labels, labels) * 0.8 + 0.1
        key = {"experiment": "e", "backbone": "vgg16", "strategy": strategy, "head": "1024-256",
               "protocol": "kfold", "test_source": "pooled", "fold": fold, "run": 0,
               "seed": fold}
        ledger.append({**key, "n_train": 4 * n, "n_test": n, **binary_metrics(labels, probs),
                       "train_seconds": 1.0, "infer_ms_per_image": 1.0})
        paths = [f"/img/{fold}_{i}.png" for i in range(n)]
        write_predictions(out / PREDICTIONS_DIR / predictions_name(key), paths, labels, probs)


def test_a_clearly_better_configuration_is_significant(tmp_path):
    write_results(tmp_path / "a", "mdft", noise=0.02)
    write_results(tmp_path / "b", "msft", noise=0.35)
    report = compare_result_dirs(tmp_path / "a", tmp_path / "b", metric="mcc")
    assert report.overall["n_pairs"] == 8
    assert report.overall["diff"] > 0.3
    assert report.overall["significant_corrected"] and report.overall["significant_paired"]
    assert report.overall["mcnemar_p"] < 0.05
    assert set(report.intervals["side"]) == {"A", "B"}
    a_ci = report.intervals[report.intervals["side"] == "A"].iloc[0]
    assert a_ci["low"] <= a_ci["estimate"] <= a_ci["high"]
    assert "significant at 0.05" in report.text and "not significant" not in report.text


def test_identical_configurations_are_not_significant(tmp_path):
    write_results(tmp_path / "a", "mdft", noise=0.1)
    report = compare_result_dirs(tmp_path / "a", tmp_path / "a", metric="accuracy")
    assert report.overall["diff"] == 0
    assert not report.overall["significant_corrected"]
    assert "not significant" in report.text


def test_a_grid_ledger_needs_a_selection_and_accepts_one(tmp_path):
    write_results(tmp_path / "grid", "mdft", noise=0.02)
    write_results(tmp_path / "other", "msft", noise=0.3)
    # merge both configurations into one grid ledger
    ledger = Ledger(tmp_path / "grid" / FOLDS_FILE)
    for _, row in Ledger(tmp_path / "other" / FOLDS_FILE).read().iterrows():
        ledger.append(row.to_dict())
    with pytest.raises(ValueError, match=r"Side A holds 2 configurations.*--where-a"):
        compare_result_dirs(tmp_path / "grid", tmp_path / "grid")
    report = compare_result_dirs(tmp_path / "grid", tmp_path / "grid",
                                 where_a={"strategy": "mdft"}, where_b={"strategy": "msft"})
    assert report.overall["diff"] > 0
    assert report.intervals.empty or set(report.intervals["side"]) <= {"A", "B"}


def test_missing_ledger_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folds ledger"):
        compare_result_dirs(tmp_path / "nothing", tmp_path / "nothing")
