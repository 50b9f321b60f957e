"""leukdx.evaluation.compare: two results folders, one configuration each, tested fold by fold.

The folders are written directly (folds.csv + predictions/) from known predictions, so every
expected p-value and interval below is computed from those predictions with scipy, statsmodels
and sklearn-backed metrics, independently of leukdx.evaluation.stats.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

from leukdx.cli import main
from leukdx.evaluation.compare import COMPARISON_FILES, compare_result_dirs
from leukdx.evaluation.ledger import Ledger, write_predictions
from leukdx.evaluation.metrics import METRIC_NAMES, binary_metrics
from leukdx.evaluation.runner import FOLDS_FILE, PREDICTIONS_DIR, predictions_name

N_IMAGES = 60
N_VAL = 5
LABELS = np.random.default_rng(100).permutation(np.arange(N_IMAGES) % 2)


def _splits(protocol: str, k: int, repeats: int):
    """(test_source, fold, repeat, test image indices) of a k-fold or a two-source LODO."""
    if protocol == "lodo":
        half = N_IMAGES // 2
        return [("s1", 0, 0, np.arange(half)), ("s2", 1, 0, np.arange(half, N_IMAGES))]
    splits = []
    for repeat in range(repeats):
        order = np.random.default_rng(1000 + repeat).permutation(N_IMAGES)
        splits += [("pooled", fold, repeat, np.sort(order[fold::k])) for fold in range(k)]
    return splits


def write_results(out, strategy: str, noise: float, protocol: str = "kfold", k: int = 3,
                  repeats: int = 3, runs: int = 3, side: int = 0) -> pd.DataFrame:
    """A results folder of one configuration whose predictions are the labels with some flipped.

    Returns the predictions written (image, test_source, fold, repeat, run, label, probability,
    prediction) and the folds rows, for computing expected results independently.
    """
    ledger = Ledger(out / FOLDS_FILE)
    records = []
    for source, fold, repeat, test in _splits(protocol, k, repeats):
        for run in range(runs):
            y = LABELS[test]
            flip = np.random.default_rng([side, repeat, fold, run]).random(test.size) < noise
            probs = np.where(flip, 1 - y, y) * 0.8 + 0.1
            key = {"experiment": "e", "backbone": "vgg16", "strategy": strategy,
                   "head": "1024-256", "protocol": protocol, "test_source": source,
                   "fold": fold, "run": run, "seed": 100 * run + 10 * repeat + fold,
                   "repeat": repeat}
            ledger.append({**key, "n_train": N_IMAGES - test.size - N_VAL, "n_val": N_VAL,
                           "n_test": test.size, **binary_metrics(y, probs),
                           "train_seconds": 1.0, "infer_ms_per_image": 1.0})
            paths = [f"/img/{i}.png" for i in test]
            write_predictions(out / PREDICTIONS_DIR / predictions_name(key), paths, y, probs)
            records.append(pd.DataFrame({"image": test, "test_source": source, "fold": fold,
                                         "repeat": repeat, "run": run, "label": y,
                                         "probability": probs,
                                         "prediction": (probs >= 0.5).astype(int)}))
    return pd.concat(records, ignore_index=True)


def _mcnemar_p(label, pred_a, pred_b) -> float:
    right_a, right_b = np.asarray(pred_a) == label, np.asarray(pred_b) == label
    table = [[np.sum(right_a & right_b), np.sum(right_a & ~right_b)],
             [np.sum(~right_a & right_b), np.sum(~right_a & ~right_b)]]
    return mcnemar(table, exact=table[0][1] + table[1][0] < 25, correction=True).pvalue


def test_two_folders_of_repeated_kfold_with_runs(tmp_path):
    pred_a = write_results(tmp_path / "a", "mdft", noise=0.05, side=0)
    pred_b = write_results(tmp_path / "b", "msft", noise=0.30, side=1)
    report = compare_result_dirs(tmp_path / "a", tmp_path / "b", metric="mcc", n_boot=300)
    overall = report.overall
    folds_a, folds_b = Ledger(tmp_path / "a" / FOLDS_FILE).read(), Ledger(
        tmp_path / "b" / FOLDS_FILE).read()
    assert (overall["n_pairs"], overall["n_splits"], overall["n_repeats"], overall["n_runs"]) == (
        27, 9, 3, 3)
    keys = ["fold", "repeat", "run"]
    folds = folds_a.merge(folds_b, on=keys, suffixes=("_a", "_b"))
    assert overall["paired_p"] == pytest.approx(sps.ttest_rel(folds.mcc_a, folds.mcc_b).pvalue)
    # corrected resampled t-test by hand: 9 splits (runs averaged), 20 test / 35 fitted images
    d = (folds.mcc_a - folds.mcc_b).groupby([folds.fold, folds.repeat]).mean().to_numpy()
    t = d.mean() / math.sqrt((1 / 9 + 20 / 35) * d.var(ddof=1))
    assert overall["corrected_p"] == pytest.approx(2 * sps.t.sf(abs(t), df=8))
    assert overall["test"] == "corrected" and overall["significant"]
    assert "Corrected resampled t-test" in report.text and "significant at 0.05" in report.text

    # McNemar: each of the 9 passes (repeat, run) on its own, and on majority votes over them
    both = pred_a.merge(pred_b, on=["image", "repeat", "run"], suffixes=("_a", "_b"))
    expected = [_mcnemar_p(p.label_a, p.prediction_a, p.prediction_b)
                for _, p in both.groupby(["repeat", "run"])]
    assert report.mcnemar["p_value"].tolist() == pytest.approx(expected)
    votes = both.groupby("image")[["label_a", "prediction_a", "prediction_b"]].mean()
    assert overall["mcnemar_p"] == pytest.approx(
        _mcnemar_p(votes.label_a, votes.prediction_a > 0.5, votes.prediction_b > 0.5))
    assert overall["mcnemar_images"] == N_IMAGES

    # bootstrap: estimates on all predictions; 60 images, each predicted 9 times
    intervals = report.intervals.set_index("side")
    estimate_a = binary_metrics(pred_a.label, pred_a.probability)["mcc"]
    estimate_b = binary_metrics(pred_b.label, pred_b.probability)["mcc"]
    assert intervals.loc["A", "estimate"] == pytest.approx(estimate_a)
    assert intervals.loc["A-B", "estimate"] == pytest.approx(estimate_a - estimate_b)
    assert (intervals["n_images"] == N_IMAGES).all()
    assert (intervals["n_predictions"] == 9 * N_IMAGES).all()
    assert 0 < intervals.loc["A-B", "low"] < intervals.loc["A-B", "high"]


def test_lodo_is_paired_over_source_and_run(tmp_path):
    write_results(tmp_path / "a", "mdft", noise=0.1, protocol="lodo", runs=3, side=0)
    write_results(tmp_path / "b", "msft", noise=0.2, protocol="lodo", runs=3, side=1)
    report = compare_result_dirs(tmp_path / "a", tmp_path / "b", metric="accuracy", n_boot=200)
    folds_a, folds_b = Ledger(tmp_path / "a" / FOLDS_FILE).read(), Ledger(
        tmp_path / "b" / FOLDS_FILE).read()
    folds = folds_a.merge(folds_b, on=["test_source", "run"], suffixes=("_a", "_b"))
    assert report.overall["n_pairs"] == 6
    assert report.overall["paired_p"] == pytest.approx(
        sps.ttest_rel(folds.accuracy_a, folds.accuracy_b).pvalue)
    assert report.overall["test"] == "paired" and math.isnan(report.overall["corrected_p"])
    assert "not applied to protocol 'lodo'" in report.text
    table = report.per_source.set_index("test_source")
    assert table.loc["s2", "paired_p"] == pytest.approx(sps.ttest_rel(
        folds[folds.test_source == "s2"].accuracy_a,
        folds[folds.test_source == "s2"].accuracy_b).pvalue)
    assert report.mcnemar["run"].tolist() == ["0", "1", "2"]
    assert (report.mcnemar["n_images"] == N_IMAGES).all()  # a pass covers both sources
    assert set(report.intervals["test_source"]) == {"s1", "s2", "all"}


def test_a_grid_ledger_needs_a_selection_and_accepts_one(tmp_path):
    pred_a = write_results(tmp_path / "grid", "mdft", noise=0.02, repeats=1, runs=1)
    write_results(tmp_path / "other", "msft", noise=0.3, repeats=1, runs=1, side=1)
    # merge both configurations into one grid ledger
    ledger = Ledger(tmp_path / "grid" / FOLDS_FILE)
    for _, row in Ledger(tmp_path / "other" / FOLDS_FILE).read().iterrows():
        ledger.append(row.to_dict())
    for path in (tmp_path / "other" / PREDICTIONS_DIR).iterdir():
        path.rename(tmp_path / "grid" / PREDICTIONS_DIR / path.name)
    with pytest.raises(ValueError, match=r"Side A holds 2 configurations.*--where-a"):
        compare_result_dirs(tmp_path / "grid", tmp_path / "grid")
    report = compare_result_dirs(tmp_path / "grid", tmp_path / "grid", n_boot=100,
                                 where_a={"strategy": "mdft"}, where_b={"strategy": "msft"})
    assert report.overall["n_pairs"] == 3 and report.overall["diff"] > 0
    intervals = report.intervals.set_index("side")
    assert list(intervals.index) == ["A", "B", "A-B"]
    assert intervals.loc["A", "estimate"] == pytest.approx(
        binary_metrics(pred_a.label, pred_a.probability)["mcc"])


def test_out_writes_csv_and_markdown_through_the_cli(tmp_path, capsys):
    write_results(tmp_path / "a", "mdft", noise=0.05, repeats=2, runs=2)
    write_results(tmp_path / "b", "msft", noise=0.3, repeats=2, runs=2, side=1)
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--metric", "accuracy",
                 "--out", str(out), "--n-boot", "100"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(COMPARISON_FILES)
    table = pd.read_csv(out / "comparison.csv")
    assert table["test_source"].tolist() == ["pooled", "all"]
    report = compare_result_dirs(tmp_path / "a", tmp_path / "b", metric="accuracy", n_boot=100)
    assert table.loc[1, "corrected_p"] == pytest.approx(report.overall["corrected_p"])
    assert len(pd.read_csv(out / "mcnemar_passes.csv")) == 4
    assert set(pd.read_csv(out / "intervals.csv")["side"]) == {"A", "B", "A-B"}
    markdown = (out / "comparison.md").read_text()
    assert "| test source |" in markdown and "| pooled |" in markdown
    assert str(out / "comparison.md") in capsys.readouterr().out


def test_an_unknown_metric_lists_the_valid_names(tmp_path, capsys):
    write_results(tmp_path / "a", "mdft", noise=0.1, repeats=1, runs=1)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--metric", "auc"]) == 2
    error = capsys.readouterr().err
    assert "Unknown metric 'auc'" in error and all(name in error for name in METRIC_NAMES)


def test_without_predictions_the_image_tests_are_skipped_and_said_so(tmp_path):
    write_results(tmp_path / "a", "mdft", noise=0.05, repeats=1, runs=2)
    write_results(tmp_path / "b", "msft", noise=0.3, repeats=1, runs=2, side=1)
    next((tmp_path / "b" / PREDICTIONS_DIR).iterdir()).unlink()
    report = compare_result_dirs(tmp_path / "a", tmp_path / "b", n_boot=100)
    assert report.intervals.empty and report.mcnemar.empty
    assert "mcnemar_p" not in report.overall
    assert "side B has no predictions/ file" in report.text


def test_missing_ledger_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folds ledger"):
        compare_result_dirs(tmp_path / "nothing", tmp_path / "nothing")
