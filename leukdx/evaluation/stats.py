"""Statistical comparison of two configurations (scipy).

LeukNet compares architectures with Student's t-test at 5 % (§4.1, Table 12). Fold scores of a
cross-validation are not independent (the training sets overlap), which makes the naive t-tests
too eager to call a difference significant; the corrected resampled t-test of Nadeau & Bengio
(2003) widens the variance for that. McNemar's test compares two classifiers on the same test
images, and the bootstrap gives a confidence interval for a metric of pooled predictions.

Degenerate inputs have defined answers: two identical samples give statistic 0 and p = 1; samples
with zero spread but different means give an infinite statistic and p = 0; fewer than two
usable pairs give NaN.

Pure NumPy / SciPy; no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from leukdx.evaluation.metrics import METRIC_NAMES, binary_metrics, metrics_from_counts

__all__ = [
    "ALIGN_COLUMNS",
    "ConfidenceInterval",
    "McNemarResult",
    "StatResult",
    "bootstrap_ci",
    "compare_results",
    "corrected_resampled_t_test",
    "mcnemar_test",
    "paired_t_test",
    "student_t_test",
]

# Columns that identify the same fold of the same run in two ledgers.
ALIGN_COLUMNS: tuple[str, ...] = ("protocol", "test_source", "fold", "run")


class StatResult(NamedTuple):
    """A test statistic and its two-sided p-value."""

    statistic: float
    p_value: float


class McNemarResult(NamedTuple):
    """McNemar's test: statistic, p-value, the discordant counts and whether it was exact.

    ``n01``: images classifier A got right and B got wrong; ``n10``: the reverse.
    """

    statistic: float
    p_value: float
    n01: int
    n10: int
    exact: bool


class ConfidenceInterval(NamedTuple):
    """A point estimate and its ``(low, high)`` interval."""

    estimate: float
    low: float
    high: float


_NAN = StatResult(float("nan"), float("nan"))


def _pairs(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"Paired samples must have the same length, got {x.size} and {y.size}.")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _no_spread(mean: float) -> StatResult:
    """Zero variance: no evidence of a difference when the means agree, certainty otherwise."""
    if mean == 0:
        return StatResult(0.0, 1.0)
    return StatResult(float(np.sign(mean) * np.inf), 0.0)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> StatResult:
    """Paired t-test of ``a - b`` (the same folds and runs scored by two configurations).

    Pairs with a NaN are dropped. Reference: Student (1908), Biometrika 6(1):1-25;
    ``scipy.stats.ttest_rel``.

    Args:
        a: scores of configuration A per fold/run.
        b: scores of configuration B on the same folds/runs, same order.

    Returns:
        :class:`StatResult` (t, two-sided p).

    Example:
        >>> paired_t_test([0.9, 0.8, 0.85], [0.9, 0.8, 0.85])
        StatResult(statistic=0.0, p_value=1.0)
    """
    x, y = _pairs(a, b)
    if x.size < 2:
        return _NAN
    d = x - y
    if np.ptp(d) == 0:
        return _no_spread(float(d[0]))
    res = sps.ttest_rel(x, y)
    return StatResult(float(res.statistic), float(res.pvalue))


def student_t_test(a: Sequence[float], b: Sequence[float]) -> StatResult:
    """Two-sample Student's t-test with pooled variance, as LeukNet uses at 5 % (§4.1).

    NaNs are dropped from each sample. Reference: Student (1908); ``scipy.stats.ttest_ind``
    with ``equal_var=True``.

    Returns:
        :class:`StatResult` (t, two-sided p); NaN when a sample is empty or both have one value.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size < 1 or y.size < 1 or x.size + y.size < 3:
        return _NAN
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return _no_spread(float(x[0] - y[0]))
    res = sps.ttest_ind(x, y, equal_var=True)
    return StatResult(float(res.statistic), float(res.pvalue))


def corrected_resampled_t_test(
    a: Sequence[float], b: Sequence[float], n_train: Any, n_test: Any
) -> StatResult:
    """Corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004).

    For J paired fold scores with differences d, the variance of the mean difference is
    ``(1/J + n_test/n_train) * var(d)`` instead of ``var(d)/J``, which accounts for the overlap
    of the training sets; t has J - 1 degrees of freedom. It always gives a larger p-value
    than :func:`paired_t_test` on the same scores.

    References:
        - Nadeau, C. & Bengio, Y. (2003). Inference for the generalization error. Machine
          Learning 52(3):239-281.
        - Bouckaert, R. & Frank, E. (2004). Evaluating the replicability of significance tests
          for comparing learning algorithms. PAKDD, LNCS 3056:3-12.

    Args:
        a, b: paired scores per fold/run.
        n_train: training-set size (a number, or one per fold: the mean is used).
        n_test: test-set size (a number or one per fold).

    Returns:
        :class:`StatResult` (corrected t, two-sided p).
    """
    x, y = _pairs(a, b)
    if x.size < 2:
        return _NAN
    n_train = float(np.nanmean(np.asarray(n_train, dtype=np.float64)))
    n_test = float(np.nanmean(np.asarray(n_test, dtype=np.float64)))
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train and n_test must be positive, got {n_train} and {n_test}.")
    d = x - y
    if np.ptp(d) == 0:
        return _no_spread(float(d[0]))
    j = d.size
    variance = (1.0 / j + n_test / n_train) * np.var(d, ddof=1)
    t = float(np.mean(d) / np.sqrt(variance))
    p = float(2 * sps.t.sf(abs(t), df=j - 1))
    return StatResult(t, p)


def _resampled_metric(
    y: np.ndarray, prob: np.ndarray, pred: np.ndarray, idx: np.ndarray, metric: str
) -> np.ndarray:
    """``metric`` of each resample (one row of ``idx`` per resample)."""
    if metric == "roc_auc":
        values = np.full(idx.shape[0], np.nan)
        for i, rows in enumerate(idx):
            yt = y[rows]
            if 0 < yt.sum() < yt.size:
                values[i] = roc_auc_score(yt, prob[rows])
        return values
    yt, yp = y[idx], pred[idx]
    tp = np.sum((yt == 1) & (yp == 1), axis=1)
    tn = np.sum((yt == 0) & (yp == 0), axis=1)
    fp = np.sum((yt == 0) & (yp == 1), axis=1)
    fn = np.sum((yt == 1) & (yp == 0), axis=1)
    return metrics_from_counts(tp, tn, fp, fn)[metric]


def bootstrap_ci(
    y_true: Sequence[int],
    y_prob: Sequence[float],
    metric: str = "mcc",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of a metric of pooled predictions.

    Images are resampled with replacement ``n_boot`` times (seeded); the interval is the
    ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled metric (resamples where it is
    undefined, e.g. a single class for ROC AUC, are ignored). Reference: Efron, B. &
    Tibshirani, R. (1993). An Introduction to the Bootstrap, ch. 13 (percentile interval).

    Args:
        y_true: 0/1 labels.
        y_prob: P(leukaemia).
        metric: a name of :data:`leukdx.evaluation.metrics.METRIC_NAMES`.
        n_boot: number of resamples.
        seed: seed of the resampling.
        alpha: 1 - confidence level.
        threshold: decision threshold.

    Returns:
        :class:`ConfidenceInterval` (estimate on all images, low, high).
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"Unknown metric '{metric}'; choose one of {', '.join(METRIC_NAMES)}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")
    estimate = binary_metrics(y_true, y_prob, threshold)[metric]
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    pred = (prob >= threshold).astype(np.int64)
    rng = np.random.default_rng(seed)
    # chunks bound the (resamples x images) index matrix to a few million entries
    chunk = max(1, min(n_boot, 4_000_000 // max(y.size, 1)))
    values = []
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        idx = rng.integers(0, y.size, size=(size, y.size))
        values.append(_resampled_metric(y, prob, pred, idx, metric))
        done += size
    values = np.concatenate(values)
    if np.isnan(values).all():
        return ConfidenceInterval(float(estimate), float("nan"), float("nan"))
    low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return ConfidenceInterval(float(estimate), float(low), float(high))


def mcnemar_test(
    y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]
) -> McNemarResult:
    """McNemar's test: do two classifiers err on the same test images at different rates?

    Only the discordant images count: ``n01`` (A right, B wrong) and ``n10`` (A wrong, B right).
    With fewer than 25 discordant images the exact binomial test is used
    (``scipy.stats.binomtest(min(n01, n10), n01 + n10, 0.5)``, statistic = the smaller count);
    otherwise the chi-square statistic with Edwards' continuity correction
    ``(|n01 - n10| - 1)^2 / (n01 + n10)`` on 1 degree of freedom. No discordant image gives
    statistic 0 and p = 1.

    References:
        - McNemar, Q. (1947). Psychometrika 12(2):153-157.
        - Edwards, A. L. (1948). Psychometrika 13(3):185-187 (continuity correction).
        - Dietterich, T. G. (1998). Neural Computation 10(7):1895-1923.

    Args:
        y_true: 0/1 labels.
        pred_a: 0/1 predictions of classifier A on the same images.
        pred_b: 0/1 predictions of classifier B.

    Returns:
        :class:`McNemarResult`.
    """
    y = np.asarray(y_true).reshape(-1)
    a = np.asarray(pred_a).reshape(-1)
    b = np.asarray(pred_b).reshape(-1)
    if not y.size == a.size == b.size:
        raise ValueError(
            f"McNemar needs aligned arrays; got {y.size} labels, {a.size} and {b.size} predictions."
        )
    right_a, right_b = a == y, b == y
    n01 = int(np.sum(right_a & ~right_b))
    n10 = int(np.sum(~right_a & right_b))
    n = n01 + n10
    if n == 0:
        return McNemarResult(0.0, 1.0, n01, n10, True)
    if n < 25:
        p = sps.binomtest(min(n01, n10), n, 0.5).pvalue
        return McNemarResult(float(min(n01, n10)), float(p), n01, n10, True)
    statistic = (abs(n01 - n10) - 1) ** 2 / n
    return McNemarResult(float(statistic), float(sps.chi2.sf(statistic, df=1)), n01, n10, False)


# ---------------------------------------------------------------------------------------------
# comparing two ledgers


def _align_keys(df: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    out = df.copy()
    for column in columns:
        values = out[column]
        if pd.api.types.is_float_dtype(values):
            values = values.map(
                lambda v: (
                    str(int(v))
                    if pd.notna(v) and float(v).is_integer()
                    else ("" if pd.isna(v) else str(v))
                )
            )
        out[column] = values.fillna("").astype(str)
    if out.duplicated(list(columns)).any():
        raise ValueError(
            f"{what} has several rows per ({', '.join(columns)}); filter it to one "
            "configuration (experiment/backbone/strategy/head) before comparing."
        )
    return out


def _mcnemar_from_predictions(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> McNemarResult:
    keys = ["path"] + [c for c in ALIGN_COLUMNS if c in pred_a.columns and c in pred_b.columns]
    a = _align_keys(pred_a, keys, "predictions_a")
    b = _align_keys(pred_b, keys, "predictions_b")
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        raise ValueError(
            f"predictions_a and predictions_b share no images (matched on {', '.join(keys)})."
        )
    if (merged["label_a"] != merged["label_b"]).any():
        raise ValueError(
            "predictions_a and predictions_b disagree on the true label of some "
            "images; they must come from the same test set."
        )

    def predicted(side: str) -> np.ndarray:
        if f"prediction_{side}" in merged.columns:
            return merged[f"prediction_{side}"].to_numpy(dtype=np.int64)
        return (merged[f"probability_{side}"].to_numpy(dtype=np.float64) >= 0.5).astype(np.int64)

    return mcnemar_test(merged["label_a"].to_numpy(dtype=np.int64), predicted("a"), predicted("b"))


def compare_results(
    folds_a: pd.DataFrame,
    folds_b: pd.DataFrame,
    metric: str = "mcc",
    predictions_a: pd.DataFrame | None = None,
    predictions_b: pd.DataFrame | None = None,
    alpha: float = 0.05,
    by: str | None = None,
) -> dict[str, Any] | pd.DataFrame:
    """Compare two configurations evaluated on the same folds and runs.

    Folds are aligned on :data:`ALIGN_COLUMNS` (protocol, test_source, fold, run); each ledger
    must hold a single configuration. Reported: the means and standard deviations of ``metric``,
    their difference (A - B), the paired t-test, Student's t-test (LeukNet's choice), the
    corrected resampled t-test (when ``n_train``/``n_test`` columns exist) and, given per-image
    predictions of both (columns ``path, label, prediction``, optionally fold keys), McNemar's
    test; each with ``significant_<test>`` at level ``alpha``.

    Args:
        folds_a, folds_b: ledger rows of configuration A and B.
        metric: the metric column to compare.
        predictions_a, predictions_b: optional pooled per-image predictions of A and B.
        alpha: significance level (5 % as in LeukNet).
        by: ``"test_source"`` (or another column) to compare separately per value; then a
            DataFrame with one row per value is returned.

    Returns:
        A dict of results, or a DataFrame when ``by`` is given.

    Raises:
        ValueError: the metric is missing, no fold matches, or a ledger has several
            configurations.
    """
    if by is not None:
        rows = []
        for value in pd.unique(folds_a[by].astype(str)):
            part_a = folds_a[folds_a[by].astype(str) == value]
            part_b = folds_b[folds_b[by].astype(str) == value]
            if part_b.empty:
                continue
            pa = pb = None
            if predictions_a is not None and predictions_b is not None:
                pa, pb = predictions_a, predictions_b
                if by in predictions_a.columns and by in predictions_b.columns:
                    pa = predictions_a[predictions_a[by].astype(str) == value]
                    pb = predictions_b[predictions_b[by].astype(str) == value]
            rows.append({by: value, **compare_results(part_a, part_b, metric, pa, pb, alpha)})
        return pd.DataFrame(rows)
    for name, df in (("folds_a", folds_a), ("folds_b", folds_b)):
        if metric not in df.columns:
            raise ValueError(f"{name} has no '{metric}' column.")
    keys = [c for c in ALIGN_COLUMNS if c in folds_a.columns and c in folds_b.columns]
    if not keys:
        raise ValueError(f"Cannot align the folds: neither table has any of {ALIGN_COLUMNS}.")
    a = _align_keys(folds_a, keys, "folds_a")
    b = _align_keys(folds_b, keys, "folds_b")
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        raise ValueError(f"folds_a and folds_b share no fold (matched on {', '.join(keys)}).")
    x = pd.to_numeric(merged[f"{metric}_a"], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(merged[f"{metric}_b"], errors="coerce").to_numpy(dtype=np.float64)
    paired = paired_t_test(x, y)
    student = student_t_test(x, y)
    if "n_train_a" in merged.columns and "n_test_a" in merged.columns:
        corrected = corrected_resampled_t_test(
            x, y, merged["n_train_a"].astype(float), merged["n_test_a"].astype(float)
        )
    else:
        corrected = _NAN
    with np.errstate(invalid="ignore"):
        out: dict[str, Any] = {
            "metric": metric,
            "n_pairs": int(np.sum(~(np.isnan(x) | np.isnan(y)))),
            "mean_a": float(np.nanmean(x)) if np.isfinite(x).any() else float("nan"),
            "mean_b": float(np.nanmean(y)) if np.isfinite(y).any() else float("nan"),
            "std_a": float(pd.Series(x).std(ddof=1)),
            "std_b": float(pd.Series(y).std(ddof=1)),
        }
    out["diff"] = out["mean_a"] - out["mean_b"]
    for name, res in (("paired", paired), ("student", student), ("corrected", corrected)):
        out[f"{name}_t"] = res.statistic
        out[f"{name}_p"] = res.p_value
        out[f"significant_{name}"] = bool(res.p_value < alpha)
    if predictions_a is not None and predictions_b is not None:
        mc = _mcnemar_from_predictions(predictions_a, predictions_b)
        out.update(
            mcnemar_statistic=mc.statistic,
            mcnemar_p=mc.p_value,
            mcnemar_n01=mc.n01,
            mcnemar_n10=mc.n10,
            significant_mcnemar=bool(mc.p_value < alpha),
        )
    return out
