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
    compare_results,
    corrected_resampled_t_test,
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


def test_compare_results_aligns_folds_and_flags_a_real_difference():
    a, b = ledger_rows(0.9, 0), ledger_rows(0.6, 1)
    out = compare_results(a, b.iloc[::-1], metric="mcc")  # row order must not matter
    assert out["n_pairs"] == 10
    assert out["mean_a"] == pytest.approx(a.mcc.mean())
    assert out["diff"] == pytest.approx(a.mcc.mean() - b.mcc.mean())
    assert out["paired_p"] == pytest.approx(sps.ttest_rel(a.mcc, b.mcc).pvalue)
    assert out["significant_paired"] and out["significant_student"]
    assert out["corrected_p"] >= out["paired_p"]
    same = compare_results(a, a)
    assert same["paired_p"] == 1.0 and not same["significant_paired"]


def test_compare_results_per_source_and_with_predictions():
    a, b = ledger_rows(0.9, 0), ledger_rows(0.6, 1)
    table = compare_results(a, b, by="test_source")
    assert table["test_source"].tolist() == ["all_idb1", "all_idb2"]
    assert (table["n_pairs"] == 5).all()
    y, pa, pb = _mcnemar_case(30, 10)
    paths = [f"/img/{i}.png" for i in range(y.size)]
    preds_a = pd.DataFrame({"path": paths, "label": y, "prediction": pa})
    preds_b = pd.DataFrame({"path": paths[::-1], "label": y[::-1], "prediction": pb[::-1]})
    out = compare_results(a, b, predictions_a=preds_a, predictions_b=preds_b)
    assert (out["mcnemar_n01"], out["mcnemar_n10"]) == (30, 10)
    assert out["significant_mcnemar"]


def test_compare_results_errors():
    a = ledger_rows(0.9, 0)
    with pytest.raises(ValueError, match="share no fold"):
        compare_results(a, a.assign(protocol="kfold"))
    with pytest.raises(ValueError, match="several rows per"):
        compare_results(pd.concat([a, a]), a)
    with pytest.raises(ValueError, match="no 'kappa' column"):
        compare_results(a, a, metric="kappa")
