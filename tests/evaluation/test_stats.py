"""Tests of leukdx.evaluation.stats on hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from leukdx.evaluation.metrics import binary_metrics
from leukdx.evaluation.stats import (
    bootstrap_ci,
    bootstrap_difference_ci,
    compare_results,
    corrected_resampled_t_test,
    mcnemar_per_pass,
    mcnemar_test,
    paired_t_test,
    student_t_test,
)


def test_identical_samples_give_p_one():
    a = [0.91, 0.88, 0.95, 0.90]
    assert paired_t_test(a, a) == (0.0, 1.0)
    assert student_t_test([0.9, 0.9], [0.9, 0.9]) == (0.0, 1.0)
    assert corrected_resampled_t_test(a, a, 800, 200) == (0.0, 1.0)


def test_constant_shift_is_certain():
    a = np.array([0.9, 0.8, 0.85])
    t, p = paired_t_test(a, a - 0.1)
    assert t == math.inf and p == 0.0


def test_too_few_pairs_give_nan():
    assert all(math.isnan(v) for v in paired_t_test([0.9], [0.8]))
    assert all(math.isnan(v) for v in paired_t_test([0.9, np.nan], [0.8, 0.7]))


def test_big_difference_is_significant():
    rng = np.random.default_rng(0)
    a = 0.95 + rng.normal(0, 0.01, 10)
    b = 0.70 + rng.normal(0, 0.01, 10)
    assert paired_t_test(a, b).p_value < 0.05
    assert student_t_test(a, b).p_value < 0.05
    assert corrected_resampled_t_test(a, b, 400, 100).p_value < 0.05
    assert paired_t_test(a, b).statistic > 0


def test_t_tests_match_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.8, 0.05, 8), rng.normal(0.78, 0.05, 8)
    assert paired_t_test(a, b).p_value == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert student_t_test(a, b).p_value == pytest.approx(sps.ttest_ind(a, b).pvalue)


def test_corrected_t_by_hand():
    # d = [1, 2, 3]: mean 2, sample variance 1, J = 3, n_test/n_train = 1/4
    a, b = np.array([2.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0])
    t, p = corrected_resampled_t_test(a, b, n_train=400, n_test=100)
    expected_t = 2 / math.sqrt(1 / 3 + 0.25)
    assert t == pytest.approx(expected_t)
    assert p == pytest.approx(2 * sps.t.sf(expected_t, df=2))
    # with a vanishing test/train ratio it becomes the ordinary paired t-test
    t0, p0 = corrected_resampled_t_test(a, b, n_train=1e12, n_test=1)
    assert p0 == pytest.approx(paired_t_test(a, b).p_value)
    # per-fold sizes are averaged
    assert corrected_resampled_t_test(a, b, [300, 500], [100, 100]).statistic == pytest.approx(t)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=25),
    st.integers(10, 1000),
    st.integers(10, 1000),
)
def test_corrected_p_is_never_smaller_than_naive(pairs, n_train, n_test):
    a, b = np.array(pairs).T
    naive = paired_t_test(a, b).p_value
    corrected = corrected_resampled_t_test(a, b, n_train, n_test).p_value
    assert corrected >= naive - 1e-12


def _mcnemar_case(n01: int, n10: int, n_agree: int = 20):
    """Labels and two prediction vectors with the given discordant counts."""
    y = np.ones(n01 + n10 + n_agree, dtype=int)
    a = np.concatenate([np.ones(n01), np.zeros(n10), np.ones(n_agree)]).astype(int)
    b = np.concatenate([np.zeros(n01), np.ones(n10), np.ones(n_agree)]).astype(int)
    return y, a, b


def test_mcnemar_exact_on_a_known_table():
    res = mcnemar_test(*_mcnemar_case(2, 8))
    assert (res.n01, res.n10, res.exact) == (2, 8, True)
    # two-sided binomial: 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert res.p_value == pytest.approx(112 / 1024)
    assert res.p_value == pytest.approx(sps.binomtest(2, 10, 0.5).pvalue)


def test_mcnemar_chi_square_with_continuity_correction():
    res = mcnemar_test(*_mcnemar_case(30, 10))
    assert not res.exact
    assert res.statistic == pytest.approx(19**2 / 40)
    assert res.p_value == pytest.approx(sps.chi2.sf(19**2 / 40, 1))
    assert res.p_value < 0.05


def test_mcnemar_without_disagreement():
    y = np.array([0, 1, 1])
    assert mcnemar_test(y, y, y)[:2] == (0.0, 1.0)


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    prob = np.clip(y * 0.6 + rng.normal(0.2, 0.25, 300), 0, 1)
    ci = bootstrap_ci(y, prob, metric="mcc", n_boot=500, seed=1)
    assert ci.estimate == pytest.approx(binary_metrics(y, prob)["mcc"])
    assert ci.low <= ci.estimate <= ci.high
    assert 0 < ci.high - ci.low < 0.5
    assert bootstrap_ci(y, prob, metric="mcc", n_boot=500, seed=1) == ci
    assert bootstrap_ci(y, prob, metric="mcc", n_boot=500, seed=2) != ci
    wider = bootstrap_ci(y, prob, metric="mcc", n_boot=500, seed=1, alpha=0.01)
    assert wider.low <= ci.low and wider.high >= ci.high
    auc = bootstrap_ci(y, prob, metric="roc_auc", n_boot=100, seed=0)
    assert auc.low <= auc.estimate <= auc.high <= 1.0
    with pytest.raises(ValueError, match="Unknown metric"):
        bootstrap_ci(y, prob, metric="auc")


def test_mcnemar_matches_statsmodels_on_both_branches():
    from statsmodels.stats.contingency_tables import mcnemar

    for n01, n10 in ((3, 9), (40, 22)):
        y, a, b = _mcnemar_case(n01, n10, n_agree=7)
        expected = mcnemar([[7, n01], [n10, 0]], exact=n01 + n10 < 25, correction=True)
        res = mcnemar_test(y, a, b)
        assert res.p_value == pytest.approx(expected.pvalue)
        assert res.statistic == pytest.approx(expected.statistic)


# ---------------------------------------------------------------------------------------------
# bootstrap over images


def _noisy_predictions(n: int, seed: int, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = np.clip(y * 0.5 + rng.normal(0.25, noise, n), 0, 1)
    return y, prob


def test_bootstrap_percentile_interval_is_scipys():
    y, prob = _noisy_predictions(150, 5)
    correct = ((prob >= 0.5) == y).astype(float)
    expected = sps.bootstrap((correct,), np.mean, n_resamples=400, method="percentile",
                             random_state=np.random.default_rng(4)).confidence_interval
    ci = bootstrap_ci(y, prob, metric="accuracy", n_boot=400, seed=4)
    assert ci.estimate == pytest.approx(correct.mean())
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high))


def test_bootstrap_resamples_images_not_their_repeated_predictions():
    # five runs that predict every image alike carry no more evidence than one run
    y, prob = _noisy_predictions(200, 6)
    runs = 5
    y5, prob5, image5 = np.tile(y, runs), np.tile(prob, runs), np.tile(np.arange(200), runs)
    for metric in ("mcc", "roc_auc"):
        one_run = bootstrap_ci(y, prob, metric=metric, n_boot=300, seed=2)
        clustered = bootstrap_ci(y5, prob5, metric=metric, n_boot=300, seed=2, groups=image5)
        assert clustered == pytest.approx(one_run)
    # counting every prediction as an image shrinks the interval by about sqrt(5)
    clustered = bootstrap_ci(y5, prob5, metric="mcc", n_boot=300, seed=2, groups=image5)
    pooled = bootstrap_ci(y5, prob5, metric="mcc", n_boot=300, seed=2)
    assert pooled.high - pooled.low < 0.6 * (clustered.high - clustered.low)


def test_bootstrap_difference_is_paired_on_images():
    y, prob_b = _noisy_predictions(300, 7, noise=0.35)
    prob_a = np.where(y == 1, 0.9, 0.1)
    image = np.arange(y.size)
    diff = bootstrap_difference_ci(y, prob_a, prob_b, metric="mcc", n_boot=300, groups=image)
    expected = binary_metrics(y, prob_a)["mcc"] - binary_metrics(y, prob_b)["mcc"]
    assert diff.estimate == pytest.approx(expected)
    assert 0 < diff.low <= diff.estimate <= diff.high
    same = bootstrap_difference_ci(y, prob_b, prob_b, metric="mcc", n_boot=100, groups=image)
    assert tuple(same) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# McNemar over passes


def _pass_predictions():
    """12 images, 3 runs; A is right except on image 11, B errs on a different set per run.

    B is wrong on images 0-5 (run 0), 0-3 and 6 (run 1), 0, 1, 7, 8 (run 2), and right on
    image 11. Per run: n01 = 6, 5, 4 and n10 = 1. Majority over runs: B wrong on 0-3 (at least
    2 of 3 runs), so n01 = 4, n10 = 1.
    """
    labels = np.array([1, 0] * 6)
    b_wrong = {0: range(6), 1: [0, 1, 2, 3, 6], 2: [0, 1, 7, 8]}
    rows_a, rows_b = [], []
    for run, wrong in b_wrong.items():
        for image, label in enumerate(labels):
            common = {"path": f"/img/{image}.png", "label": label, "protocol": "lodo",
                      "test_source": "s1", "fold": 0, "run": run}
            pred_a = 1 - label if image == 11 else label
            pred_b = 1 - label if image in wrong else label
            rows_a.append({**common, "probability": float(pred_a), "prediction": pred_a})
            rows_b.append({**common, "probability": float(pred_b), "prediction": pred_b})
    return pd.DataFrame(rows_a), pd.DataFrame(rows_b)


def test_mcnemar_per_pass_and_on_majority_votes():
    pred_a, pred_b = _pass_predictions()
    result = mcnemar_per_pass(pred_a, pred_b.iloc[::-1])
    passes = result.passes
    assert passes["run"].tolist() == ["0", "1", "2"]
    assert passes["n01"].tolist() == [6, 5, 4] and passes["n10"].tolist() == [1, 1, 1]
    expected = [sps.binomtest(1, n, 0.5).pvalue for n in (7, 6, 5)]
    assert passes["p_value"].tolist() == pytest.approx(expected)
    assert (result.combined.n01, result.combined.n10, result.n_images) == (4, 1, 12)
    assert result.combined.p_value == pytest.approx(sps.binomtest(1, 5, 0.5).pvalue)


def test_majority_vote_tie_falls_back_on_mean_probability():
    a = pd.DataFrame({"path": ["x", "x"], "run": [0, 1], "label": [1, 1],
                      "probability": [0.9, 0.4], "prediction": [1, 0]})
    b = a.assign(probability=[0.6, 0.1])  # one right run each; mean 0.65 vs 0.35
    result = mcnemar_per_pass(a, b)
    assert (result.combined.n01, result.combined.n10) == (1, 0)


# ---------------------------------------------------------------------------------------------
# compare_results


def ledger_rows(mcc_mean: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for source in ("all_idb1", "all_idb2"):
        for run in range(5):
            rows.append(
                dict(
                    protocol="lodo",
                    test_source=source,
                    fold=int(source[-1]) - 1,
                    run=run,
                    n_train=900,
                    n_test=100,
                    mcc=mcc_mean + rng.normal(0, 0.02),
                )
            )
    return pd.DataFrame(rows)


def kfold_rows(mcc_mean: float, seed: int, n_train: int, k: int = 3, repeats: int = 2,
               runs: int = 2) -> pd.DataFrame:
    """Repeated k-fold ledger rows: ``n_train`` fitted images, 150 validation, 250 test."""
    rng = np.random.default_rng(seed)
    rows = [
        dict(protocol="kfold", test_source="pooled", fold=fold, repeat=repeat, run=run,
             n_train=n_train, n_val=150, n_test=250, mcc=mcc_mean + rng.normal(0, 0.03))
        for repeat in range(repeats) for fold in range(k) for run in range(runs)
    ]
    return pd.DataFrame(rows)


def test_lodo_is_tested_over_source_and_run_without_the_kfold_correction():
    a, b = ledger_rows(0.9, 0), ledger_rows(0.6, 1)
    out = compare_results(a, b.iloc[::-1], metric="mcc")  # row order must not matter
    assert out["n_pairs"] == 10 and out["n_runs"] == 5 and out["n_splits"] == 2
    assert out["mean_a"] == pytest.approx(a.mcc.mean())
    assert out["diff"] == pytest.approx(a.mcc.mean() - b.mcc.mean())
    assert out["paired_p"] == pytest.approx(sps.ttest_rel(a.mcc, b.mcc).pvalue)
    assert out["student_p"] == pytest.approx(sps.ttest_ind(a.mcc, b.mcc).pvalue)
    assert math.isnan(out["corrected_p"]) and not out["significant_corrected"]
    assert "not applied to protocol 'lodo'" in out["notes"]
    assert out["test"] == "paired" and out["p_value"] == out["paired_p"] and out["significant"]


def test_repeated_kfold_with_runs_aligns_on_repeat_and_corrects_over_splits():
    a = kfold_rows(0.80, 0, n_train=600)
    b = kfold_rows(0.77, 1, n_train=540).sample(frac=1, random_state=0)
    out = compare_results(a, b, metric="mcc")
    assert (out["n_pairs"], out["n_splits"], out["n_repeats"], out["n_runs"]) == (12, 6, 2, 2)
    merged = a.merge(b, on=["fold", "repeat", "run"], suffixes=("_a", "_b"))
    assert out["paired_p"] == pytest.approx(sps.ttest_rel(merged.mcc_a, merged.mcc_b).pvalue)
    # by hand: one difference per split (mean over its 2 runs), J = 6 splits,
    # n_test / n_train = 250 / mean(600, 540) fitted images
    d = (merged.mcc_a - merged.mcc_b).groupby([merged.fold, merged.repeat]).mean().to_numpy()
    t = d.mean() / math.sqrt((1 / 6 + 250 / 570) * d.var(ddof=1))
    assert out["corrected_t"] == pytest.approx(t)
    assert out["corrected_p"] == pytest.approx(2 * sps.t.sf(abs(t), df=5))
    assert out["corrected_n_train"] == pytest.approx(570)
    assert out["test"] == "corrected" and out["p_value"] == out["corrected_p"]
    assert out["notes"] == ""
    # a ledger without n_val may count validation images in n_train: said so
    old = compare_results(a.drop(columns="n_val"), b.drop(columns="n_val"))
    assert "no n_val column" in old["notes"]
    blank = compare_results(a.assign(n_val=np.nan), b)
    assert "no n_val column" in blank["notes"]


def test_kfold_inside_several_sources_is_corrected_per_source_only():
    a = pd.concat([kfold_rows(0.8, 0, 600).assign(test_source=s) for s in ("s1", "s2")])
    b = pd.concat([kfold_rows(0.7, 1, 600).assign(test_source=s) for s in ("s1", "s2")])
    overall = compare_results(a, b)
    assert math.isnan(overall["corrected_p"]) and "per source" in overall["notes"]
    table = compare_results(a, b, by="test_source")
    assert table["corrected_p"].notna().all() and (table["n_pairs"] == 12).all()


def test_compare_results_per_source_and_with_predictions():
    a, b = ledger_rows(0.9, 0), ledger_rows(0.6, 1)
    table = compare_results(a, b, by="test_source")
    assert table["test_source"].tolist() == ["all_idb1", "all_idb2"]
    assert (table["n_pairs"] == 5).all()
    for source, row in table.set_index("test_source").iterrows():
        pa, pb = a[a.test_source == source].mcc, b[b.test_source == source].mcc
        assert row["paired_p"] == pytest.approx(sps.ttest_rel(pa, pb).pvalue)
    pred_a, pred_b = _pass_predictions()
    out = compare_results(a[a.test_source == "all_idb1"].assign(test_source="s1"),
                          b[b.test_source == "all_idb1"].assign(test_source="s1"),
                          predictions_a=pred_a, predictions_b=pred_b)
    assert (out["mcnemar_n01"], out["mcnemar_n10"], out["mcnemar_images"]) == (4, 1, 12)
    assert out["mcnemar_p"] == pytest.approx(sps.binomtest(1, 5, 0.5).pvalue)
    assert (out["mcnemar_passes"], out["mcnemar_passes_significant"]) == (3, 0)


def test_compare_results_errors():
    a = ledger_rows(0.9, 0)
    with pytest.raises(ValueError, match="share no fold"):
        compare_results(a, a.assign(protocol="kfold"))
    with pytest.raises(ValueError, match=r"several rows per \(protocol, test_source, fold, "
                                         r"repeat, run\)"):
        compare_results(pd.concat([a, a]), a)
    with pytest.raises(ValueError, match="no 'kappa' column"):
        compare_results(a, a, metric="kappa")


def test_predictions_pair_the_same_file_written_through_another_path():
    from leukdx.evaluation.stats import align_predictions

    a = pd.DataFrame({"path": ["/w/main/../shared/a.jpg", "/w/main/../shared/b.jpg"],
                      "label": [0, 1], "probability": [0.2, 0.7], "run": [0, 0]})
    b = pd.DataFrame({"path": ["/w/shared/a.jpg", "/w/shared/b.jpg"],
                      "label": [0, 1], "probability": [0.4, 0.9], "run": [0, 0]})
    merged = align_predictions(a, b)
    assert len(merged) == 2
    assert merged.sort_values("path")["probability_b"].tolist() == [0.4, 0.9]
