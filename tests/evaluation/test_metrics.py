"""Tests of leukdx.evaluation.metrics against scikit-learn and the documented degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from leukdx.evaluation.metrics import (
    COUNT_NAMES,
    METRIC_NAMES,
    binary_metrics,
    confusion,
    metrics_from_counts,
)


def labels_and_probs(min_size: int = 1, max_size: int = 60):
    """Aligned (labels, probabilities) lists."""
    return st.integers(min_size, max_size).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(0, 1), min_size=n, max_size=n),
            st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n),
        )
    )


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.filterwarnings("ignore:A single label:UserWarning")  # sklearn's own reference call
@settings(max_examples=150, deadline=None)
@given(labels_and_probs())
def test_metrics_match_sklearn_and_identities(data):
    y, p = (np.array(v) for v in data)
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["tp"] + m["tn"] + m["fp"] + m["fn"] == y.size
    assert m["tp"] == int(np.sum((y == 1) & (pred == 1)))
    assert m["fp"] == int(np.sum((y == 0) & (pred == 1)))
    assert same(m["accuracy"], accuracy_score(y, pred))
    assert same(m["accuracy"], (m["tp"] + m["tn"]) / y.size)
    assert same(m["precision"], precision_score(y, pred, zero_division=0))
    assert same(m["f1"], f1_score(y, pred, zero_division=0))
    if (y == 1).any():
        assert same(m["recall"], recall_score(y, pred))
        assert same(m["recall"], m["tp"] / (m["tp"] + m["fn"]))
    else:
        assert math.isnan(m["recall"])
    if (y == 0).any():
        assert same(m["specificity"], m["tn"] / (m["tn"] + m["fp"]))
        # specificity is the recall of the healthy class
        assert same(m["specificity"], recall_score(1 - y, 1 - pred))
    else:
        assert math.isnan(m["specificity"])
    assert -1.0 <= m["mcc"] <= 1.0 and not math.isnan(m["mcc"])
    assert -1.0 <= m["kappa"] <= 1.0 and not math.isnan(m["kappa"])
    mcc = matthews_corrcoef(y, pred)
    assert same(m["mcc"], 0.0 if math.isnan(mcc) else mcc)
    if 0 < y.sum() < y.size:
        assert same(m["roc_auc"], roc_auc_score(y, p))
        assert same(m["balanced_accuracy"], (m["recall"] + m["specificity"]) / 2)
    else:
        assert math.isnan(m["roc_auc"])
    for name in METRIC_NAMES + COUNT_NAMES:
        assert name in m


@settings(max_examples=100, deadline=None)
@given(labels_and_probs())
def test_metrics_from_counts_agrees_with_binary_metrics(data):
    y, p = (np.array(v) for v in data)
    m = binary_metrics(y, p)
    counted = metrics_from_counts(m["tp"], m["tn"], m["fp"], m["fn"])
    for name, value in counted.items():
        assert same(value, m[name]), name


def test_metrics_from_counts_is_vectorised():
    out = metrics_from_counts(
        np.array([5, 0]), np.array([5, 3]), np.array([0, 0]), np.array([0, 0])
    )
    assert out["mcc"].tolist() == [1.0, 0.0]
    assert math.isnan(out["recall"][1])


def test_perfect_predictions():
    y = [0, 0, 1, 1, 1]
    m = binary_metrics(y, [0.1, 0.2, 0.9, 0.8, 0.7])
    for name in (
        "accuracy",
        "precision",
        "recall",
        "specificity",
        "f1",
        "mcc",
        "kappa",
        "roc_auc",
        "balanced_accuracy",
    ):
        assert m[name] == pytest.approx(1.0), name


def test_inverted_predictions():
    m = binary_metrics([0, 0, 1, 1], [0.9, 0.8, 0.1, 0.2])
    assert m["accuracy"] == 0.0
    assert m["mcc"] == pytest.approx(-1.0)
    assert m["kappa"] == pytest.approx(-1.0)
    assert m["roc_auc"] == pytest.approx(0.0)


def test_all_healthy_labels_are_degenerate_but_defined():
    m = binary_metrics([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.3])
    assert (m["tn"], m["fp"], m["tp"], m["fn"]) == (3, 1, 0, 0)
    assert math.isnan(m["recall"]) and math.isnan(m["roc_auc"])
    assert m["specificity"] == 0.75
    assert m["precision"] == 0.0
    assert m["mcc"] == 0.0 and m["kappa"] == 0.0
    assert m["balanced_accuracy"] == 0.75


def test_all_leukaemia_predictions():
    # the ResNet50 mSFT case of LeukNet Table 7: everything called one class → MCC 0
    m = binary_metrics([0, 1, 0, 1, 1], [0.9] * 5)
    assert m["recall"] == 1.0 and m["specificity"] == 0.0
    assert m["precision"] == 0.6
    assert m["mcc"] == 0.0 and m["kappa"] == 0.0


def test_no_predicted_positives_gives_zero_precision():
    m = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3])
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_threshold_is_inclusive():
    assert binary_metrics([1], [0.5])["tp"] == 1
    assert binary_metrics([1], [0.5], threshold=0.6)["fn"] == 1


def test_confusion_counts():
    assert confusion([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == {"tp": 2, "tn": 1, "fp": 1, "fn": 1}
    assert confusion([0, 0], [0, 0]) == {"tp": 0, "tn": 2, "fp": 0, "fn": 0}


@pytest.mark.parametrize(
    "y, p, message",
    [
        ([0, 2], [0.1, 0.2], "0 \\(healthy\\) or 1"),
        ([0, 1], [0.1], "2 labels but y_prob has 1"),
        ([], [], "empty"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(y, p, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, p)
