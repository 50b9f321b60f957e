"""Classic classifiers for deep features (Loey et al. 2020, model 1), by name.

Each registered name builds a fresh scikit-learn estimator (a :class:`~sklearn.pipeline.Pipeline`
with a :class:`~sklearn.preprocessing.StandardScaler` in front where the method is sensitive to
feature scale). The settings follow Loey et al. §3.1.3 / §4.2, which used MATLAB's
Classification Learner; the comments on each entry say how the MATLAB setting maps onto
scikit-learn.

Probabilities: :func:`positive_probability` returns P(leukaemia) for any registered
classifier. Estimators with ``predict_proba`` (tree, LDA, k-NN, logistic regression) use it.
The SVMs are built without Platt scaling (which runs an extra internal cross-validation, is
randomised and can disagree with ``predict``), so they have no ``predict_proba``; their
``decision_function`` is mapped through the logistic sigmoid instead. That score is not a
calibrated probability, but it is monotone in the SVM margin, so ranking metrics (AUC) are exact
and a 0.5 threshold reproduces the SVM's own decisions.

This module is TensorFlow-free.

Example:
    >>> import numpy as np
    >>> from leukdx.features.classifiers import build_classifier, positive_probability
    >>> X = np.r_[np.zeros((5, 3)), np.ones((5, 3))]; y = np.r_[np.zeros(5), np.ones(5)]
    >>> clf = build_classifier("knn1").fit(X, y)
    >>> positive_probability(clf, X[:1]).tolist()
    [0.0]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

__all__ = [
    "CLASSIFIER_LABELS",
    "LOEY_CLASSIFIERS",
    "allows_missing",
    "build_classifier",
    "fill_missing",
    "list_classifiers",
    "positive_probability",
    "register_classifier",
]

# The six classifiers of Loey et al.'s Table 1 (first model), in the paper's row order.
LOEY_CLASSIFIERS: tuple[str, ...] = ("tree", "lda", "svm_linear", "svm_rbf", "svm_cubic", "knn1")

# Row labels used in summary tables (Table 1 wording).
CLASSIFIER_LABELS: dict[str, str] = {
    "tree": "DT",
    "lda": "LD",
    "svm_linear": "SVM-Linear",
    "svm_rbf": "SVM-Gaussian",
    "svm_cubic": "SVM-Cubic",
    "knn1": "K-NN",
    "logreg": "LogReg",
    "hgb": "GBDT (balanced)",
}

_REGISTRY: dict[str, Callable[[int], BaseEstimator]] = {}


def register_classifier(name: str) -> Callable:
    """Decorator registering ``factory(seed) -> estimator`` under ``name``.

    Args:
        name: the name used in ``features.classifiers`` and in result tables.

    Returns:
        The decorator; it returns the factory unchanged.
    """

    def decorator(factory: Callable[[int], BaseEstimator]) -> Callable[[int], BaseEstimator]:
        if name in _REGISTRY:
            raise ValueError(f"Classifier '{name}' is already registered.")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_classifiers() -> list[str]:
    """Registered classifier names, in registration order."""
    return list(_REGISTRY)


def build_classifier(name: str, seed: int = 0) -> BaseEstimator:
    """A fresh, unfitted estimator for a registered classifier name.

    Args:
        name: a registered name (see :func:`list_classifiers`).
        seed: random state for the estimators that have one.

    Returns:
        An unfitted scikit-learn estimator (often a Pipeline).

    Raises:
        ValueError: the name is not registered; the message lists the valid names.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown classifier '{name}' in features.classifiers; choose from "
            f"{', '.join(list_classifiers())}."
        )
    return _REGISTRY[name](seed)


def positive_probability(estimator: BaseEstimator, features: np.ndarray) -> np.ndarray:
    """P(leukaemia) for each row of ``features`` from a fitted binary estimator.

    Uses ``predict_proba`` when the estimator offers it, else the logistic sigmoid of
    ``decision_function`` (the SVMs; see the module docstring).

    Args:
        estimator: fitted on labels 0 (healthy) / 1 (leukaemia).
        features: (N, D) array.

    Returns:
        float64 array (N,) in [0, 1].
    """
    if hasattr(estimator, "predict_proba"):
        proba = estimator.predict_proba(features)
        classes = list(estimator.classes_)
        if 1 in classes:
            return np.asarray(proba[:, classes.index(1)], dtype=np.float64)
        # Trained on healthy images only: P(leukaemia) is zero everywhere.
        return np.zeros(len(features), dtype=np.float64)
    scores = np.asarray(estimator.decision_function(features), dtype=np.float64)
    # decision_function is positive for classes_[1], which is label 1 for 0/1 labels.
    return 0.5 * (1.0 + np.tanh(0.5 * scores))  # numerically stable sigmoid


# ----------------------------------------------------------------------------- registry
# MATLAB's Classification Learner standardises the predictors of SVMs by default; the
# scikit-learn equivalents get a StandardScaler. Trees, LDA and 1-NN on raw activations follow
# the paper ("K-NN using Euclidean distance"): scaling would change their behaviour.


@register_classifier("tree")
def _tree(seed: int) -> BaseEstimator:
    # "DT with a max-split equal to 20": a binary tree with at most 20 splits has at most
    # 21 leaves (MATLAB's MaxNumSplits=20, the "medium tree").
    return DecisionTreeClassifier(max_leaf_nodes=21, criterion="gini", random_state=seed)


@register_classifier("lda")
def _lda(seed: int) -> BaseEstimator:
    # The SVD solver copes with more features (4096) than images without inverting a singular
    # covariance matrix.
    return LinearDiscriminantAnalysis(solver="svd")


@register_classifier("svm_linear")
def _svm_linear(seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), SVC(kernel="linear", C=1.0, random_state=seed))


@register_classifier("svm_rbf")
def _svm_rbf(seed: int) -> Pipeline:
    # Gaussian kernel; gamma="scale" is 1 / (D * var) = 1 / D after standardisation, i.e.
    # MATLAB's kernel scale sqrt(D) ("medium Gaussian SVM").
    return make_pipeline(
        StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    )


@register_classifier("svm_cubic")
def _svm_cubic(seed: int) -> Pipeline:
    # MATLAB's cubic kernel (1 + x'y / s^2)^3 with the automatic scale: degree 3, coef0 1.
    return make_pipeline(
        StandardScaler(),
        SVC(kernel="poly", degree=3, coef0=1.0, C=1.0, gamma="scale", random_state=seed),
    )


@register_classifier("knn1")
def _knn1(seed: int) -> BaseEstimator:
    return KNeighborsClassifier(n_neighbors=1, metric="euclidean")


@register_classifier("logreg")
def _logreg(seed: int) -> Pipeline:
    # Extra linear baseline (not in Loey et al.): L2-regularised, calibrated probabilities.
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    )


@register_classifier("hgb")
def _hgb(seed: int) -> BaseEstimator:
    # Gradient-boosted shallow trees for a few measured features (leukdx.features.morphology):
    # no scaling needed, NaN (an unmeasurable feature) is routed by the trees, and balanced
    # class weights because LODO training sets are mostly healthy (four healthy-only sources).
    return HistGradientBoostingClassifier(
        max_depth=3, learning_rate=0.05, max_iter=200, class_weight="balanced",
        random_state=seed,
    )


def allows_missing(estimator: BaseEstimator) -> bool:
    """True when ``estimator`` fits and predicts on features with NaN (scikit-learn's
    ``allow_nan`` tag, e.g. :class:`~sklearn.ensemble.HistGradientBoostingClassifier`)."""
    from sklearn.utils import get_tags

    return bool(get_tags(estimator).input_tags.allow_nan)


def fill_missing(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Replace NaN by the column medians of ``train`` (0 for a column with no value in it).

    The medians come from the training rows only, so test rows leak nothing into the fit.

    Args:
        train: (N, D) training features.
        *others: further (M, D) arrays (test features) filled with the same medians.

    Returns:
        ``(train, *others)`` as float64 copies without NaN.

    Example:
        >>> fill_missing(np.array([[1.0], [np.nan], [3.0]]), np.array([[np.nan]]))[1].tolist()
        [[2.0]]
    """
    from sklearn.impute import SimpleImputer

    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    imputer.fit(np.asarray(train, dtype=np.float64))
    return tuple(imputer.transform(np.asarray(a, dtype=np.float64)) for a in (train, *others))
