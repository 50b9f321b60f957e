"""Statistical comparison of two configurations (scipy, statsmodels).

LeukNet compares architectures with Student's t-test at 5 % (§4.1, Table 12). The tests here
are chosen for what each evaluation protocol can support:

- Folds and runs of A and B are paired on every key column that names the same test set and
  seed: protocol, test source, fold, **repeat** (repeated k-fold, e.g. LeukNet's 20 x 5-fold)
  and run.
- The paired t-test over those pairs fits LODO, hold-out and external protocols: for LODO it
  pairs (test source, run), whose test sets are disjoint or re-trained with a new seed.
- Fold scores of a k-fold cross-validation are not independent (the training sets overlap),
  which makes naive t-tests too eager; the corrected resampled t-test of Nadeau & Bengio (2003)
  widens the variance by ``n_test / n_train`` and is applied to k-fold and repeated k-fold
  only, over the splits (fold x repeat; runs of one split are averaged first, since they share
  its test images), with ``n_train`` the images actually fitted.
- McNemar's test (statsmodels) compares two classifiers on the same test images. Each test
  image is seen once per pass (a run of a repeat), so the test is done per pass, and combined on
  per-image majority votes over all passes, which counts each image once.
- Bootstrap intervals (``scipy.stats.bootstrap``) resample images, carrying every prediction of
  an image (all its runs and repeats) with it, so repeated predictions of one image do not pass
  for independent evidence.

Degenerate inputs have defined answers: two identical samples give statistic 0 and p = 1; samples
with zero spread but different means give an infinite statistic and p = 0; fewer than two
usable pairs give NaN.

Pure NumPy / SciPy / statsmodels; no TensorFlow.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from leukdx.evaluation.metrics import METRIC_NAMES, metrics_from_counts

__all__ = [
    "ALIGN_COLUMNS",
    "CORRECTED_PROTOCOLS",
    "ConfidenceInterval",
    "McNemarPasses",
    "McNemarResult",
    "StatResult",
    "align_predictions",
    "bootstrap_ci",
    "bootstrap_difference_ci",
    "compare_results",
    "corrected_resampled_t_test",
    "mcnemar_per_pass",
    "mcnemar_test",
    "paired_t_test",
    "student_t_test",
]

# Columns that identify the same fold of the same repeat and run in two ledgers.
ALIGN_COLUMNS: tuple[str, ...] = ("protocol", "test_source", "fold", "repeat", "run")
# Protocols whose folds resample one data set, as the corrected resampled t-test assumes.
CORRECTED_PROTOCOLS: tuple[str, ...] = ("kfold",)
# A pass over the test images: every image is tested once per (repeat, run).
PASS_COLUMNS: tuple[str, ...] = ("repeat", "run")
# Columns that name an image in predictions files, most specific first.
IMAGE_COLUMNS: tuple[str, ...] = ("sha256", "path")


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



# ---------------------------------------------------------------------------------------------
# McNemar


class McNemarPasses(NamedTuple):
    """McNemar's test per pass over the test images and combined over passes.

    Attributes:
        combined: the test on per-image majority votes over every pass (each image once).
        passes: one row per pass (``repeat``, ``run``): ``n_images, n01, n10, statistic,
            p_value, exact``.
        n_images: images of the combined test.
    """

    combined: McNemarResult
    passes: pd.DataFrame
    n_images: int


def mcnemar_test(
    y_true: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]
) -> McNemarResult:
    """McNemar's test: do two classifiers err on the same test images at different rates?

    Each image must appear once (see :func:`mcnemar_per_pass` for repeated predictions). Only
    the discordant images count: ``n01`` (A right, B wrong) and ``n10`` (A wrong, B right). With
    fewer than 25 discordant images the exact binomial test is used (statistic = the smaller
    count), otherwise the chi-square statistic with Edwards' continuity correction
    ``(|n01 - n10| - 1)^2 / (n01 + n10)`` on 1 degree of freedom; both by
    ``statsmodels.stats.contingency_tables.mcnemar``. No discordant image gives statistic 0 and
    p = 1.

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

    Example:
        >>> mcnemar_test([1, 1, 1], [1, 1, 0], [1, 0, 1]).p_value
        1.0
    """
    y = np.asarray(y_true).reshape(-1)
    a = np.asarray(pred_a).reshape(-1)
    b = np.asarray(pred_b).reshape(-1)
    if not y.size == a.size == b.size:
        raise ValueError(
            f"McNemar needs aligned arrays; got {y.size} labels, {a.size} and {b.size} predictions."
        )
    right_a, right_b = a == y, b == y
    n11 = int(np.sum(right_a & right_b))
    n01 = int(np.sum(right_a & ~right_b))
    n10 = int(np.sum(~right_a & right_b))
    n00 = int(np.sum(~right_a & ~right_b))
    if n01 + n10 == 0:
        return McNemarResult(0.0, 1.0, n01, n10, True)
    exact = n01 + n10 < 25
    res = sm_mcnemar([[n11, n01], [n10, n00]], exact=exact, correction=True)
    return McNemarResult(float(res.statistic), float(res.pvalue), n01, n10, exact)


def _with_default_repeat(df: pd.DataFrame) -> pd.DataFrame:
    """Tables without a ``repeat`` column (written before it existed) hold repeat 0 only."""
    if "repeat" in df.columns:
        return df
    return df.assign(repeat=0)


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


def _normalised_paths(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["path"] = [os.path.normpath(str(p)) for p in out["path"]]
    return out


def align_predictions(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> pd.DataFrame:
    """Pair the per-image predictions of A and B on image and fold keys.

    Images are matched on ``sha256`` when both sides have it, else on ``path``, together with
    every :data:`ALIGN_COLUMNS` column both sides have (a missing ``repeat`` counts as 0).

    Args:
        pred_a, pred_b: predictions with ``label`` and ``prediction`` and/or ``probability``
            (``prediction`` defaults to ``probability >= 0.5``), plus fold keys.

    Returns:
        One row per image and pass: ``image``, the keys, ``label``, ``probability_a``,
        ``prediction_a``, ``probability_b``, ``prediction_b`` (probability NaN where absent).

    Raises:
        ValueError: no shared image column or image, duplicated rows, or disagreeing labels.
    """
    image = next((c for c in IMAGE_COLUMNS if c in pred_a.columns and c in pred_b.columns), None)
    if image is None:
        raise ValueError(
            "predictions_a and predictions_b need a shared 'sha256' or 'path' column to pair "
            "images."
        )
    pred_a, pred_b = _with_default_repeat(pred_a), _with_default_repeat(pred_b)
    if image == "path":
        # the same file written as ../shared/data/x.jpg or /work/shared/data/x.jpg is one image
        pred_a, pred_b = _normalised_paths(pred_a), _normalised_paths(pred_b)
    keys = [image] + [c for c in ALIGN_COLUMNS if c in pred_a.columns and c in pred_b.columns]

    def side(df: pd.DataFrame, name: str) -> pd.DataFrame:
        if "prediction" not in df.columns and "probability" not in df.columns:
            raise ValueError(f"{name} has neither a 'prediction' nor a 'probability' column.")
        out = _align_keys(df, keys, name)
        prob = (pd.to_numeric(out["probability"], errors="coerce") if "probability" in out
                else pd.Series(np.nan, index=out.index))
        pred = (out["prediction"].astype(np.int64) if "prediction" in out
                else (prob >= 0.5).astype(np.int64))
        return pd.DataFrame({**{k: out[k] for k in keys}, "label": out["label"],
                             "probability": prob, "prediction": pred})

    merged = side(pred_a, "predictions_a").merge(
        side(pred_b, "predictions_b"), on=keys, suffixes=("_a", "_b")
    )
    if merged.empty:
        raise ValueError(
            f"predictions_a and predictions_b share no images (matched on {', '.join(keys)})."
        )
    if (merged["label_a"].astype(np.int64) != merged["label_b"].astype(np.int64)).any():
        raise ValueError(
            "predictions_a and predictions_b disagree on the true label of some "
            "images; they must come from the same test set."
        )
    merged = merged.rename(columns={"label_a": "label"}).drop(columns="label_b")
    merged["label"] = merged["label"].astype(np.int64)
    merged.insert(0, "image", merged[image])
    return merged


def _key_order(values: pd.Series) -> pd.Series:
    """Sort key of text keys: numbers by value, the rest as text after them."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.fillna(np.inf) if numbers.notna().any() else values


def mcnemar_per_pass(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> McNemarPasses:
    """McNemar's test per pass (repeat, run) and on per-image majority votes over all passes.

    A pass tests every image once, so each pass is a valid McNemar test. Pooling passes would
    count an image once per run and repeat and make p too small; the combined test instead
    takes, per image and classifier, the prediction of the majority of its passes (a tie is
    broken by the mean probability at 0.5, and counts as 0 without probabilities), so each
    image counts once.

    Args:
        pred_a, pred_b: per-image predictions with fold keys (see :func:`align_predictions`).

    Returns:
        :class:`McNemarPasses`.

    Example:
        >>> import pandas as pd
        >>> a = pd.DataFrame({"path": ["x", "y"], "label": [1, 0], "prediction": [1, 0]})
        >>> mcnemar_per_pass(a, a).combined.p_value
        1.0
    """
    merged = align_predictions(pred_a, pred_b)
    pass_keys = [c for c in PASS_COLUMNS if c in merged.columns]
    rows = []
    for values, part in merged.groupby(pass_keys, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        res = mcnemar_test(part["label"], part["prediction_a"], part["prediction_b"])
        rows.append({**dict(zip(pass_keys, values)), "n_images": len(part), "n01": res.n01,
                     "n10": res.n10, "statistic": res.statistic, "p_value": res.p_value,
                     "exact": res.exact})
    passes = pd.DataFrame(rows)
    passes = passes.sort_values(pass_keys, key=_key_order, kind="stable").reset_index(drop=True)
    votes = merged.groupby("image", sort=False).agg(
        label=("label", "first"),
        share_a=("prediction_a", "mean"),
        share_b=("prediction_b", "mean"),
        prob_a=("probability_a", "mean"),
        prob_b=("probability_b", "mean"),
    )

    def majority(share: pd.Series, prob: pd.Series) -> np.ndarray:
        tie_break = (prob.to_numpy() >= 0.5).astype(np.int64)  # NaN >= 0.5 is False
        share = share.to_numpy()
        return np.where(share > 0.5, 1, np.where(share < 0.5, 0, tie_break))

    combined = mcnemar_test(votes["label"], majority(votes["share_a"], votes["prob_a"]),
                            majority(votes["share_b"], votes["prob_b"]))
    return McNemarPasses(combined, passes, len(votes))


# ---------------------------------------------------------------------------------------------
# bootstrap over images

# bound on the (resamples x images) weight matrix evaluated at once
_RESAMPLE_CELLS = 4_000_000


def _cluster_codes(groups: Any, n_rows: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n_rows), n_rows
    groups = np.asarray(groups).reshape(-1)
    if groups.size != n_rows:
        raise ValueError(f"groups has {groups.size} values for {n_rows} predictions.")
    codes, uniques = pd.factorize(groups)
    if (codes < 0).any():
        raise ValueError("groups has missing values; give every prediction its image id.")
    return codes.astype(np.int64), len(uniques)


class _ClusteredMetric:
    """A metric of prediction rows for given cluster weights (how often each image was drawn)."""

    def __init__(self, y: np.ndarray, prob: np.ndarray, pred: np.ndarray, codes: np.ndarray,
                 n_clusters: int, metric: str) -> None:
        self.metric, self.y, self.prob, self.codes = metric, y, prob, codes
        if metric == "roc_auc":
            if np.isnan(prob).any():
                raise ValueError("roc_auc needs a probability for every prediction.")
            return
        cells = ((y == 1) & (pred == 1), (y == 0) & (pred == 0),
                 (y == 0) & (pred == 1), (y == 1) & (pred == 0))  # tp, tn, fp, fn
        self.counts = np.stack(
            [np.bincount(codes, weights=c.astype(np.float64), minlength=n_clusters)
             for c in cells], axis=1)

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """``weights``: (resamples, clusters) → the metric per resample."""
        if self.metric != "roc_auc":
            totals = weights @ self.counts
            return np.asarray(metrics_from_counts(*totals.T)[self.metric], dtype=np.float64)
        values = np.full(weights.shape[0], np.nan)
        for i, w in enumerate(weights):
            row_weights = w[self.codes]
            keep = row_weights > 0
            if np.unique(self.y[keep]).size == 2:
                values[i] = roc_auc_score(self.y[keep], self.prob[keep],
                                          sample_weight=row_weights[keep])
        return values


def _percentile_interval(
    statistic_of_weights: Any, n_clusters: int, n_boot: int, seed: int, alpha: float
) -> tuple[float, float]:
    """Percentile interval of a statistic of clusters, resampled by ``scipy.stats.bootstrap``."""
    if n_clusters < 2:
        return float("nan"), float("nan")

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx, dtype=np.int64), axis, -1)
        flat = idx.reshape(-1, n_clusters)
        offsets = np.arange(flat.shape[0])[:, None] * n_clusters
        weights = np.bincount((flat + offsets).ravel(), minlength=flat.size)
        weights = weights.reshape(flat.shape).astype(np.float64)
        return statistic_of_weights(weights).reshape(idx.shape[:-1])

    with warnings.catch_warnings():
        # undefined resamples (NaN) are handled below
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap(
            (np.arange(n_clusters),), statistic, n_resamples=n_boot, vectorized=True,
            batch=max(1, _RESAMPLE_CELLS // n_clusters), confidence_level=1 - alpha,
            method="percentile", random_state=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    if np.isfinite(low) and np.isfinite(high):
        return float(low), float(high)
    values = res.bootstrap_distribution
    if np.isnan(values).all():
        return float("nan"), float("nan")
    # resamples where the metric is undefined (e.g. one class for ROC AUC) are left out
    low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _check_bootstrap_args(metric: str, n_boot: int, alpha: float) -> None:
    if metric not in METRIC_NAMES:
        raise ValueError(f"Unknown metric '{metric}'; choose one of {', '.join(METRIC_NAMES)}.")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}.")


def _rows(y_true: Any, y_prob: Any, y_pred: Any, threshold: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    prob = (np.full(y.size, np.nan) if y_prob is None
            else np.asarray(y_prob, dtype=np.float64).reshape(-1))
    if y_pred is None:
        if y_prob is None:
            raise ValueError("Give y_prob or y_pred.")
        pred = (prob >= threshold).astype(np.int64)
    else:
        pred = np.asarray(y_pred).reshape(-1).astype(np.int64)
    if not y.size == prob.size == pred.size:
        raise ValueError(
            f"{y.size} labels, {prob.size} probabilities and {pred.size} predictions differ."
        )
    return y, prob, pred


def bootstrap_ci(
    y_true: Sequence[int],
    y_prob: Sequence[float] | None,
    metric: str = "mcc",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
    groups: Sequence[Any] | None = None,
    y_pred: Sequence[int] | None = None,
) -> ConfidenceInterval:
    """Percentile bootstrap confidence interval of a metric of predictions, resampling images.

    ``groups`` names the image of each prediction: an image predicted in several runs or
    repeats is one cluster, drawn with all its predictions, so the interval reflects the number
    of images rather than of predictions. Resampling is ``scipy.stats.bootstrap`` (percentile
    method, seeded); resamples where the metric is undefined (one class for ROC AUC) are left
    out. Reference: Efron, B. & Tibshirani, R. (1993). An Introduction to the Bootstrap,
    ch. 13 (percentile interval); Field, C. A. & Welsh, A. H. (2007). Bootstrapping clustered
    data. JRSS B 69(3):369-390.

    Args:
        y_true: 0/1 labels, one per prediction.
        y_prob: P(leukaemia) per prediction (needed for ``roc_auc``; may be None with
            ``y_pred``).
        metric: a name of :data:`leukdx.evaluation.metrics.METRIC_NAMES`.
        n_boot: number of resamples.
        seed: seed of the resampling.
        alpha: 1 - confidence level.
        threshold: decision threshold when ``y_pred`` is not given.
        groups: image id per prediction (default: every prediction its own image).
        y_pred: 0/1 predictions (default ``y_prob >= threshold``).

    Returns:
        :class:`ConfidenceInterval` (estimate on all predictions, low, high).

    Example:
        >>> ci = bootstrap_ci([0, 1, 0, 1] * 10, [0.2, 0.9, 0.6, 0.7] * 10, "accuracy",
        ...                   n_boot=200, groups=[i // 4 for i in range(40)])
        >>> ci.estimate
        0.75
    """
    _check_bootstrap_args(metric, n_boot, alpha)
    y, prob, pred = _rows(y_true, y_prob, y_pred, threshold)
    codes, n_clusters = _cluster_codes(groups, y.size)
    stat = _ClusteredMetric(y, prob, pred, codes, n_clusters, metric)
    estimate = float(stat(np.ones((1, n_clusters)))[0])
    low, high = _percentile_interval(stat, n_clusters, n_boot, seed, alpha)
    return ConfidenceInterval(estimate, low, high)


def bootstrap_difference_ci(
    y_true: Sequence[int],
    prob_a: Sequence[float] | None,
    prob_b: Sequence[float] | None,
    metric: str = "mcc",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
    groups: Sequence[Any] | None = None,
    pred_a: Sequence[int] | None = None,
    pred_b: Sequence[int] | None = None,
) -> ConfidenceInterval:
    """Paired bootstrap interval of ``metric(A) - metric(B)`` on the same predictions rows.

    Rows are aligned (row i of A and of B: the same image in the same pass, see
    :func:`align_predictions`); each resample draws images (``groups``) and evaluates both
    classifiers on the drawn images, so the interval accounts for their shared test set.

    Args:
        y_true: 0/1 labels per row.
        prob_a, prob_b: P(leukaemia) per row of A and B (None with ``pred_a``/``pred_b``).
        metric, n_boot, seed, alpha, threshold, groups: as in :func:`bootstrap_ci`.
        pred_a, pred_b: 0/1 predictions per row (default probability >= threshold).

    Returns:
        :class:`ConfidenceInterval` of the difference A - B.

    Example:
        >>> y = [0, 1] * 20
        >>> bootstrap_difference_ci(y, None, None, "accuracy", n_boot=100,
        ...                         pred_a=y, pred_b=y).high
        0.0
    """
    _check_bootstrap_args(metric, n_boot, alpha)
    y, p_a, d_a = _rows(y_true, prob_a, pred_a, threshold)
    _, p_b, d_b = _rows(y_true, prob_b, pred_b, threshold)
    codes, n_clusters = _cluster_codes(groups, y.size)
    stat_a = _ClusteredMetric(y, p_a, d_a, codes, n_clusters, metric)
    stat_b = _ClusteredMetric(y, p_b, d_b, codes, n_clusters, metric)

    def difference(weights: np.ndarray) -> np.ndarray:
        return stat_a(weights) - stat_b(weights)

    estimate = float(difference(np.ones((1, n_clusters)))[0])
    low, high = _percentile_interval(difference, n_clusters, n_boot, seed, alpha)
    return ConfidenceInterval(estimate, low, high)


# ---------------------------------------------------------------------------------------------
# comparing two ledgers


def _mean_of(merged: pd.DataFrame, column: str) -> pd.Series | None:
    """Row-wise mean of ``column`` over the sides that have it (``column_a``/``_b`` or plain)."""
    present = [c for c in (f"{column}_a", f"{column}_b", column) if c in merged.columns]
    if not present:
        return None
    return merged[present].apply(pd.to_numeric, errors="coerce").mean(axis=1)


def _corrected(
    merged: pd.DataFrame, x: np.ndarray, y: np.ndarray, protocol: str, has_n_val: bool
) -> tuple[StatResult, dict[str, Any], list[str]]:
    """The corrected resampled t-test where it applies, its sizes, and notes on why not."""
    sizes: dict[str, Any] = {"corrected_n_train": float("nan"), "corrected_n_test": float("nan")}
    if protocol not in CORRECTED_PROTOCOLS:
        return _NAN, sizes, [
            f"corrected resampled t-test not applied to protocol '{protocol or '?'}': it "
            "assumes k-fold resamples of one data set; the paired t-test over (test source, "
            "fold, repeat, run) is the test"
        ]
    if "test_source" in merged.columns and merged["test_source"].nunique() > 1:
        return _NAN, sizes, [
            "corrected resampled t-test: k-fold inside several test sources is tested per "
            "source (see the per-source table), not over all of them"
        ]
    n_train, n_test = _mean_of(merged, "n_train"), _mean_of(merged, "n_test")
    if n_train is None or n_test is None:
        return _NAN, sizes, ["corrected resampled t-test needs n_train and n_test in folds.csv"]
    split_keys = [c for c in ("test_source", "fold", "repeat") if c in merged.columns]
    frame = merged[split_keys].assign(a=x, b=y, n_train=n_train.to_numpy(),
                                      n_test=n_test.to_numpy())
    # runs of one split share its test images: one score per split, averaged over runs
    per_split = frame.groupby(split_keys, sort=False).mean()
    result = corrected_resampled_t_test(per_split["a"], per_split["b"], per_split["n_train"],
                                        per_split["n_test"])
    sizes = {"corrected_n_train": float(per_split["n_train"].mean()),
             "corrected_n_test": float(per_split["n_test"].mean())}
    notes = []
    if not has_n_val:
        notes.append(
            "folds.csv has no n_val column (or blank values), so its n_train may count "
            "validation images that were not fitted, which makes the correction too small "
            "(re-evaluate to record n_val)"
        )
    return result, sizes, notes


def compare_results(
    folds_a: pd.DataFrame,
    folds_b: pd.DataFrame,
    metric: str = "mcc",
    predictions_a: pd.DataFrame | None = None,
    predictions_b: pd.DataFrame | None = None,
    alpha: float = 0.05,
    by: str | None = None,
) -> dict[str, Any] | pd.DataFrame:
    """Compare two configurations evaluated on the same folds, repeats and runs.

    Folds are aligned on :data:`ALIGN_COLUMNS` (protocol, test_source, fold, repeat, run; a
    ledger without ``repeat`` has repeat 0); each ledger must hold a single configuration.
    Reported: the means and standard deviations of ``metric``, their difference (A - B), the
    paired t-test over the aligned pairs, Student's t-test (LeukNet's choice), the corrected
    resampled t-test over the splits of a k-fold protocol (NaN, with a note, for the others),
    and, given per-image predictions of both, McNemar's test on per-image majority votes with
    the number of passes significant on their own (:func:`mcnemar_per_pass`). ``test`` names
    the test that fits the protocol (``corrected`` for k-fold, ``paired`` otherwise) and
    ``p_value``/``significant`` repeat its result.

    Args:
        folds_a, folds_b: ledger rows of configuration A and B.
        metric: the metric column to compare.
        predictions_a, predictions_b: optional per-image predictions of A and B (``path``,
            ``label``, ``prediction``/``probability``, and fold keys).
        alpha: significance level (5 % as in LeukNet).
        by: ``"test_source"`` (or another column) to compare separately per value; then a
            DataFrame with one row per value is returned.

    Returns:
        A dict of results (``notes``: why a test was not applied), or a DataFrame when ``by``
        is given.

    Raises:
        ValueError: the metric is missing, no fold matches, or a ledger has several
            configurations.

    Example:
        >>> import pandas as pd
        >>> a = pd.DataFrame({"protocol": "lodo", "test_source": ["s1", "s2"], "fold": [0, 1],
        ...                   "run": 0, "mcc": [0.9, 0.8]})
        >>> compare_results(a, a.assign(mcc=[0.7, 0.6]))["test"]
        'paired'
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
    # ledgers of one header may leave n_val blank in rows written before it was recorded
    has_n_val = all(
        "n_val" in f.columns and pd.to_numeric(f["n_val"], errors="coerce").notna().all()
        for f in (folds_a, folds_b)
    )
    folds_a, folds_b = _with_default_repeat(folds_a), _with_default_repeat(folds_b)
    keys = [c for c in ALIGN_COLUMNS if c in folds_a.columns and c in folds_b.columns]
    if keys == ["repeat"]:
        raise ValueError(f"Cannot align the folds: neither table has any of {ALIGN_COLUMNS}.")
    a = _align_keys(folds_a, keys, "folds_a")
    b = _align_keys(folds_b, keys, "folds_b")
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"))
    if merged.empty:
        raise ValueError(f"folds_a and folds_b share no fold (matched on {', '.join(keys)}).")
    x = pd.to_numeric(merged[f"{metric}_a"], errors="coerce").to_numpy(dtype=np.float64)
    y = pd.to_numeric(merged[f"{metric}_b"], errors="coerce").to_numpy(dtype=np.float64)
    protocols = sorted(merged["protocol"].unique()) if "protocol" in merged.columns else []
    protocol = "+".join(protocols)
    split_keys = [c for c in ("test_source", "fold", "repeat") if c in merged.columns]
    paired = paired_t_test(x, y)
    student = student_t_test(x, y)
    corrected, sizes, notes = _corrected(merged, x, y, protocol, has_n_val)
    with np.errstate(invalid="ignore"):
        out: dict[str, Any] = {
            "metric": metric,
            "protocol": protocol,
            "n_pairs": int(np.sum(~(np.isnan(x) | np.isnan(y)))),
            "n_splits": len(merged[split_keys].drop_duplicates()),
            "n_repeats": int(merged["repeat"].nunique()),
            "n_runs": int(merged["run"].nunique()) if "run" in merged.columns else 1,
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
    out.update(sizes)
    # k-fold scores overlap in training data: only the corrected test may decide for them
    primary = "corrected" if protocol in CORRECTED_PROTOCOLS else "paired"
    out.update(test=primary, p_value=out[f"{primary}_p"],
               significant=out[f"significant_{primary}"])
    if predictions_a is not None and predictions_b is not None:
        mc = mcnemar_per_pass(predictions_a, predictions_b)
        out.update(
            mcnemar_statistic=mc.combined.statistic,
            mcnemar_p=mc.combined.p_value,
            mcnemar_n01=mc.combined.n01,
            mcnemar_n10=mc.combined.n10,
            mcnemar_exact=mc.combined.exact,
            mcnemar_images=mc.n_images,
            significant_mcnemar=bool(mc.combined.p_value < alpha),
            mcnemar_passes=len(mc.passes),
            mcnemar_passes_significant=int((mc.passes["p_value"] < alpha).sum()),
        )
    out["notes"] = "; ".join(notes)
    return out
