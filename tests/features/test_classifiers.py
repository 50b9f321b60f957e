"""Tests of leukdx.features.classifiers: the registry and Loey et al.'s settings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from leukdx.features.classifiers import (
    CLASSIFIER_LABELS,
    LOEY_CLASSIFIERS,
    build_classifier,
    list_classifiers,
    positive_probability,
    register_classifier,
)


def _final(estimator):
    return estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator


def _data(seed: int, n: int = 60, d: int = 5):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 1.5 * y[:, None]
    return X, y


def test_registry_holds_loey_six_in_table1_order_plus_logreg():
    names = list_classifiers()
    assert LOEY_CLASSIFIERS == ("tree", "lda", "svm_linear", "svm_rbf", "svm_cubic", "knn1")
    assert names[: len(LOEY_CLASSIFIERS)] == list(LOEY_CLASSIFIERS)
    assert "logreg" in names
    assert set(CLASSIFIER_LABELS) >= set(names)


def test_tree_has_at_most_20_splits():
    tree = build_classifier("tree", seed=3)
    assert isinstance(tree, DecisionTreeClassifier)
    assert tree.max_leaf_nodes == 21 and tree.random_state == 3
    # noisy labels would grow a much larger tree if it were not limited
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 6)), rng.integers(0, 2, 400)
    tree.fit(X, y)
    splits = tree.tree_.node_count - tree.get_n_leaves()
    assert splits == 20


def test_knn_is_one_neighbour_euclidean_on_raw_features():
    knn = build_classifier("knn1")
    assert isinstance(knn, KNeighborsClassifier)
    assert knn.n_neighbors == 1 and knn.metric == "euclidean"
    X, y = _data(1)
    knn.fit(X, y)
    assert (knn.predict(X) == y).all()  # 1-NN recalls every training image


@pytest.mark.parametrize(
    ("name", "kernel", "degree", "coef0"),
    [("svm_linear", "linear", None, None), ("svm_rbf", "rbf", None, None),
     ("svm_cubic", "poly", 3, 1.0)],
)
def test_svms_standardise_and_use_the_paper_kernels(name, kernel, degree, coef0):
    model = build_classifier(name)
    assert isinstance(model, Pipeline)
    assert isinstance(model.steps[0][1], StandardScaler)
    svm = _final(model)
    assert isinstance(svm, SVC)
    assert svm.kernel == kernel
    X, y = _data(0)
    # scores come from the margin (positive_probability), not from Platt scaling
    assert not hasattr(model.fit(X, y), "predict_proba")
    if kernel != "linear":
        assert svm.gamma == "scale"
    if degree is not None:
        assert svm.degree == degree and svm.coef0 == coef0


def test_lda_and_logreg():
    assert isinstance(build_classifier("lda"), LinearDiscriminantAnalysis)
    logreg = build_classifier("logreg")
    assert isinstance(logreg.steps[0][1], StandardScaler)
    assert isinstance(_final(logreg), LogisticRegression)


def test_builds_fresh_estimators():
    assert build_classifier("svm_rbf") is not build_classifier("svm_rbf")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="svm_cubic"):
        build_classifier("svm_quartic")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_classifier("tree")(lambda seed: DecisionTreeClassifier())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["svm_linear", "svm_rbf", "svm_cubic"]))
def test_svm_probability_is_sigmoid_margin_and_agrees_with_predict(seed, name):
    X, y = _data(seed)
    model = build_classifier(name).fit(X, y)
    prob = positive_probability(model, X)
    margin = model.decision_function(X)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-margin)), rtol=1e-9, atol=1e-12)
    assert ((prob >= 0.5).astype(int) == model.predict(X)).all()


@pytest.mark.parametrize("name", ["tree", "lda", "knn1", "logreg"])
def test_probability_is_predict_proba_of_class_one(name):
    X, y = _data(7)
    model = build_classifier(name).fit(X, y)
    prob = positive_probability(model, X)
    np.testing.assert_allclose(prob, model.predict_proba(X)[:, 1])
    assert ((prob >= 0) & (prob <= 1)).all()


def test_probability_is_zero_when_trained_on_healthy_only():
    X, _ = _data(2)
    model = build_classifier("tree").fit(X, np.zeros(len(X), dtype=int))
    assert (positive_probability(model, X) == 0).all()


def test_gradient_boosting_takes_missing_values_the_others_get_training_medians():
    from leukdx.features.classifiers import allows_missing, fill_missing

    assert allows_missing(build_classifier("hgb"))
    assert not allows_missing(build_classifier("logreg"))
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(40), np.ones(40)]
    X = np.c_[y + rng.normal(0, 0.3, 80), rng.normal(size=80)]
    X[::7, 0] = np.nan
    probs = positive_probability(build_classifier("hgb", seed=0).fit(X, y), X)
    assert np.isfinite(probs).all() and ((probs > 0.5) == y).mean() > 0.9

    train = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    test = np.array([[np.nan, 5.0], [100.0, np.nan]])
    filled_train, filled_test = fill_missing(train, test)
    # medians of the training rows only (the test row's 100 does not move them); a column
    # without any training value becomes 0
    assert filled_train.tolist() == [[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]]
    assert filled_test.tolist() == [[2.0, 5.0], [100.0, 0.0]]
    assert np.isnan(train).sum() == 4  # inputs are not modified
