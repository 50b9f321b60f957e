"""Per-fold binary classification metrics, thin over scikit-learn.

Label 1 (leukaemia) is the positive class; ``y_prob`` is P(leukaemia). LeukNet reports
accuracy (A), precision (P), recall (R), specificity (S) and the Matthews correlation
coefficient (MCC); Loey et al. add F1. Degenerate folds happen in cross-dataset work (a model
that calls everything healthy, a test source with one class), so every undefined case has one
documented value instead of a warning and an arbitrary number:

==================  ============================================  =========
metric              undefined when                                value
==================  ============================================  =========
precision           no predicted positives                        0
recall              no actual positives                           NaN
specificity         no actual negatives                           NaN
f1                  precision + recall = 0 (or no positives)      0
mcc                 a row or column of the confusion matrix is 0  0
kappa               expected agreement is 1 (one label only)      0
roc_auc             one class in ``y_true``                       NaN
balanced_accuracy   one class in ``y_true``                       the defined
                                                                  one of recall /
                                                                  specificity
==================  ============================================  =========

Pure NumPy / scikit-learn; no TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    confusion_matrix,
    roc_auc_score,
)

__all__ = [
    "COUNT_NAMES",
    "METRIC_NAMES",
    "binary_metrics",
    "confusion",
    "metrics_from_counts",
]

# Rates (averaged over folds and runs in summaries), in the order of the results tables.
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "mcc",
    "kappa",
    "roc_auc",
    "balanced_accuracy",
)
# Confusion-matrix counts (summed, not averaged, when pooling folds).
COUNT_NAMES: tuple[str, ...] = ("tp", "tn", "fp", "fn")


def _check_labels(y: Any, what: str) -> np.ndarray:
    arr = np.asarray(y).reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        bad = sorted({str(v) for v in arr[~np.isin(arr, (0, 1))]})[:5]
        raise ValueError(f"{what} must hold 0 (healthy) or 1 (leukaemia); found {', '.join(bad)}.")
    return arr.astype(np.int64)


def confusion(y_true: Any, y_pred: Any) -> dict[str, int]:
    """Confusion-matrix counts with leukaemia (1) as the positive class.

    Uses ``sklearn.metrics.confusion_matrix(labels=[0, 1])`` so the matrix is always 2x2, even
    when a class is absent.

    Args:
        y_true: true 0/1 labels.
        y_pred: predicted 0/1 labels.

    Returns:
        ``{"tp": ..., "tn": ..., "fp": ..., "fn": ...}`` as Python ints.

    Example:
        >>> confusion([0, 1, 1, 0], [0, 1, 0, 1])
        {'tp': 1, 'tn': 1, 'fp': 1, 'fn': 1}
    """
    t = _check_labels(y_true, "y_true")
    p = _check_labels(y_pred, "y_pred")
    if t.size != p.size:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}.")
    if t.size == 0:
        return {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
    (tn, fp), (fn, tp) = confusion_matrix(t, p, labels=[0, 1])
    return {"tp": int(tp), "tn": int(tn), "fp": int(fp), "fn": int(fn)}


def _nan_to_zero(value: float) -> float:
    value = float(value)
    return 0.0 if np.isnan(value) else value


def binary_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, float]:
    """Counts and rates of one test set (one fold of one run).

    An image is called leukaemia when ``y_prob >= threshold``. The counts come from
    :func:`confusion`, the rates from them by :func:`metrics_from_counts` (the same
    definitions that pool folds), ROC AUC from scikit-learn; the undefined cases are normalised
    as in the module table (precision 0, recall/specificity NaN for an absent class, MCC 0,
    kappa 0, ROC AUC NaN).

    References:
        - Matthews, B. W. (1975). Biochim. Biophys. Acta 405(2):442-451 (MCC); Chicco & Jurman
          (2020), BMC Genomics 21:6 (why MCC for imbalanced binary tasks).
        - Cohen, J. (1960). Educ. Psychol. Meas. 20(1):37-46 (kappa).
        - Brodersen et al. (2010). ICPR, "The balanced accuracy and its posterior distribution".
        - Hanley & McNeil (1982). Radiology 143(1):29-36 (ROC AUC).
        - https://scikit-learn.org/stable/modules/model_evaluation.html

    Args:
        y_true: true 0/1 labels, shape (n,).
        y_prob: P(leukaemia) (or any score with a matching ``threshold``), shape (n,).
        threshold: decision threshold (``train.threshold``).

    Returns:
        Dict with ``tp, tn, fp, fn`` (ints) and every name of :data:`METRIC_NAMES` (floats in
        [0, 1], MCC and kappa in [-1, 1], or NaN as documented).

    Raises:
        ValueError: empty or misaligned inputs, labels other than 0/1, non-finite scores.

    Example:
        >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.8, 0.9])
        >>> m["tp"], m["fp"], m["accuracy"], m["specificity"]
        (2, 1, 0.75, 0.5)
    """
    t = _check_labels(y_true, "y_true")
    prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if t.size == 0:
        raise ValueError("binary_metrics needs at least one test image; y_true is empty.")
    if prob.size != t.size:
        raise ValueError(f"y_true has {t.size} labels but y_prob has {prob.size} scores.")
    if not np.isfinite(prob).all():
        raise ValueError("y_prob contains NaN or infinite values; check the model's outputs.")
    pred = (prob >= threshold).astype(np.int64)
    counts = confusion(t, pred)
    rates = metrics_from_counts(**counts)  # one set of definitions for folds and pooled counts
    out: dict[str, float] = dict(counts)
    for name in METRIC_NAMES:
        out[name] = rates[name] if name != "roc_auc" else float("nan")
    if counts["tp"] + counts["fn"] > 0 and counts["tn"] + counts["fp"] > 0:
        out["roc_auc"] = float(roc_auc_score(t, prob))
    return out


def metrics_from_counts(tp: Any, tn: Any, fp: Any, fn: Any) -> dict[str, Any]:
    """The threshold metrics from confusion counts, vectorised over arrays of counts.

    The one place the rates are defined: :func:`binary_metrics` calls it too (ROC AUC needs
    scores and is not included). Used to pool folds (sum the counts, then call
    this) and by the bootstrap, which evaluates thousands of resamples at once.

    Args:
        tp, tn, fp, fn: counts (scalars or equally shaped arrays).

    Returns:
        Dict of ``accuracy, precision, recall, specificity, f1, mcc, kappa, balanced_accuracy``
        (floats for scalar input, arrays otherwise).

    Example:
        >>> round(metrics_from_counts(8, 9, 1, 2)["mcc"], 4)
        0.7035
    """
    tp, tn, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, tn, fp, fn))
    n = tp + tn + fp + fn
    pos, neg, pred_pos, pred_neg = tp + fn, tn + fp, tp + fp, tn + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(n > 0, (tp + tn) / n, np.nan)
        precision = np.where(pred_pos > 0, tp / pred_pos, 0.0)
        recall = np.where(pos > 0, tp / pos, np.nan)
        specificity = np.where(neg > 0, tn / neg, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        denom = np.sqrt(pos * neg * pred_pos * pred_neg)
        mcc = np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)
        observed = accuracy
        expected = (pos * pred_pos + neg * pred_neg) / (n * n)
        kappa = np.where((n > 0) & (expected < 1), (observed - expected) / (1 - expected), 0.0)
        balanced = np.where(
            (pos > 0) & (neg > 0),
            (recall + specificity) / 2,
            np.where(pos > 0, recall, specificity),
        )
    out = {
        "accuracy": accuracy,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "mcc": mcc,
        "kappa": kappa,
        "balanced_accuracy": balanced,
    }
    if out["accuracy"].ndim == 0:
        return {k: float(v) for k, v in out.items()}
    return out
