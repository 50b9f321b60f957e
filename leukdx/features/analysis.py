"""Feature-space analysis: linear separability across and within sources (LeukNet §4.3).

LeukNet compares feature spaces (ImageNet VGG-16, SFT, DFT, mSFT, mDFT) by how well a linear SVM
separates the classes in them, once with leave-one-dataset-out training and once with k-fold
cross-validation inside each test dataset (Table 10), and draws them with t-SNE and the 2-D
decision boundary of a linear SVM (Figures 10-12). This module provides:

- :func:`analyse_feature_space`: PCA to ``pca_components`` when the dimension exceeds
  ``pca_above``, then a linear SVM, under LODO and within-source k-fold side by side, per test
  source: accuracy, precision, recall, kappa (the Table 10 row of one feature set);
  :func:`feature_space_markdown` prints such rows like Table 10.
- :func:`tsne_embedding`, :func:`embedding_boundary` and :func:`plot_feature_space`: seeded
  t-SNE maps coloured by class and by source, with the boundary of a linear SVM fitted in 2-D,
  per test source (Figures 10-11) and for all sources pooled (Figure 12).
- :func:`source_confound_report`: how well the same features predict the *source* (which
  database an image comes from) next to how well they predict the class. Features that name
  the database almost perfectly make any within-dataset score suspect.

TensorFlow-free (scikit-learn and Matplotlib only).

Example:
    >>> table = analyse_feature_space(features, records, k=5, seed=0)   # doctest: +SKIP
    >>> print(feature_space_markdown(table))                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from leukdx.config import EvaluateConfig
from leukdx.evaluation.metrics import binary_metrics
from leukdx.evaluation.splits import make_splits
from leukdx.features.classifiers import positive_probability

__all__ = [
    "FEATURE_SPACE_METRICS",
    "GlobalScaler",
    "analyse_feature_space",
    "embedding_boundary",
    "extractor_leak",
    "feature_space_markdown",
    "feature_space_pipeline",
    "plot_feature_space",
    "source_confound_report",
    "tsne_embedding",
    "tsne_perplexity",
]

log = logging.getLogger(__name__)

# Table 10's columns: A, P, R (in %) and Cohen's kappa.
FEATURE_SPACE_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "kappa")
FEATURE_SPACE_PROTOCOLS: tuple[str, ...] = ("lodo", "kfold")
# t-SNE: features are first reduced to this many principal components (the usual speed-up).
TSNE_PCA_COMPONENTS = 50
# Below this many points t-SNE uses the exact gradient (cheap there, and no Barnes-Hut error).
TSNE_EXACT_BELOW = 200


class GlobalScaler(TransformerMixin, BaseEstimator):
    """Centre the features and divide them all by one number (their root mean variance).

    Unlike a per-feature StandardScaler this keeps the relative variances, so low-variance
    principal components (mostly noise) keep their small weight, while the SVM's ``C`` still
    sees features of unit overall scale whatever the network's activation range.
    """

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        self.mean_ = X.mean(axis=0)
        scale = float(np.sqrt(X.var(axis=0).mean()))
        self.scale_ = scale if scale > 0 else 1.0
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X):
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_


def _median_imputer() -> SimpleImputer:
    """NaN -> the fitted rows' column median (all-NaN columns -> 0, kept)."""
    return SimpleImputer(strategy="median", keep_empty_features=True)


def _pca_size(n_features: int, n_samples: int, pca_components: int, pca_above: int) -> int:
    """Components to keep (0: no PCA). PCA cannot have more components than samples."""
    if pca_components <= 0 or n_features <= pca_above:
        return 0
    return int(max(1, min(pca_components, n_features, n_samples)))


def feature_space_pipeline(
    n_features: int, n_samples: int, pca_components: int = 100, pca_above: int = 256,
    seed: int = 0,
) -> Pipeline:
    """The analysis classifier: [PCA] -> :class:`GlobalScaler` -> linear SVM (C = 1).

    Args:
        n_features: dimension of the features.
        n_samples: training images (PCA keeps at most this many components).
        pca_components: principal components kept when PCA applies (LeukNet: 100).
        pca_above: PCA applies only when ``n_features`` exceeds this (LeukNet kept the 256-d
            mDFT/mSFT features as they are and reduced the 4096-d ones).
        seed: random state of PCA's solver.

    Returns:
        An unfitted scikit-learn Pipeline.
    """
    # a missing measurement (NaN, e.g. a morphology feature with nothing to measure) takes
    # the training rows' median; without NaN the imputer changes nothing
    steps: list[tuple[str, Any]] = [("impute", _median_imputer())]
    components = _pca_size(n_features, n_samples, pca_components, pca_above)
    if components:
        steps.append(("pca", PCA(n_components=components, random_state=seed)))
    steps += [("scale", GlobalScaler()), ("svm", SVC(kernel="linear", C=1.0))]
    return Pipeline(steps)


def _kfold_size(records: pd.DataFrame, k: int) -> int:
    """Largest usable k <= ``k`` for a within-source grouped k-fold (0 when impossible)."""
    labels = records["label"].to_numpy()
    groups = records["group"].astype(str).to_numpy() if "group" in records else np.arange(len(records))
    counts = [np.unique(groups[labels == c]).size for c in (0, 1)]
    return min(int(k), *counts) if min(counts) >= 2 else 0


def _two_class_sources(records: pd.DataFrame) -> list[str]:
    classes = records.groupby("source", sort=False)["label"].nunique()
    return [str(s) for s, n in classes.items() if n == 2]


def _linked_partners(source: str, linked_sources: Sequence[Sequence[str]]) -> set[str]:
    partners: set[str] = set()
    for members in linked_sources:
        names = {str(m) for m in members}
        if source in names:
            partners |= names - {source}
    return partners


def extractor_leak(
    trained_on: Sequence[str] | None,
    test_source: str,
    linked_sources: Sequence[Sequence[str]] = (),
    name: str = "features.model",
) -> str | None:
    """Why features of a trained network cannot be evaluated on ``test_source``, or ``None``.

    A network fine-tuned on a source has seen its images (and their labels): features it
    extracts there measure memory, not generalisation. The same holds for a source linked to
    the test source (same slides or patients, ``evaluate.linked_sources``).

    Args:
        trained_on: the network's training sources (``FeatureSource.trained_on``, from the
            run's ``run.json``); ``None`` or empty: nothing to check.
        test_source: the source tested on.
        linked_sources: sets of sources that share slides or patients.
        name: the network's name for the message.

    Returns:
        A one-line reason, or ``None`` when the network never saw the test source.

    Example:
        >>> extractor_leak(["all_idb1", "bccd"], "all_idb2", [["all_idb1", "all_idb2"]], "mdft")
        "refused: mdft was trained on all_idb1 (its run.json data.sources), linked to test source 'all_idb2'; train one extractor per test source without it (data.sources)"
    """
    if not trained_on:
        return None
    seen = sorted({test_source} | _linked_partners(test_source, linked_sources))
    seen = [s for s in seen if s in set(trained_on)]
    if not seen:
        return None
    if seen == [test_source]:
        how = f"the test source '{test_source}'"
    elif test_source in seen:
        how = f"the test source '{test_source}' and sources linked to it"
    else:
        how = f"linked to test source '{test_source}'"
    return (f"refused: {name} was trained on {', '.join(seen)} (its run.json data.sources), "
            f"{how}; train one extractor per test source without it (data.sources)")


def analyse_feature_space(
    features: np.ndarray,
    records: pd.DataFrame,
    *,
    test_sources: Sequence[str] | None = None,
    k: int = 5,
    seed: int = 0,
    pca_components: int = 100,
    pca_above: int = 256,
    threshold: float = 0.5,
    name: str = "features",
    linked_sources: Sequence[Sequence[str]] = (),
    extractor_sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Linear separability of one feature set under LODO and within-source k-fold (Table 10).

    For each test source: **LODO** trains the PCA+linear-SVM pipeline on every other source
    (except sources linked to it) and tests on this one; **k-fold** runs grouped, stratified
    k-fold inside this source alone (k is lowered, with a log message, when a class has fewer
    groups than k). A protocol that cannot run for a source (e.g. LODO on a single-source
    collection) gives NaN cells and a ``note``. When the features come from a network trained
    on the test source (or a source linked to it), the source's row is refused: NaN cells and
    the reason in ``note`` (:func:`extractor_leak`).

    Args:
        features: (N, D) array aligned with ``records``.
        records: the records table (``label``, ``source``, ``group``).
        test_sources: sources to test on; default every source with both classes.
        k: folds of the within-source k-fold (LeukNet: 5).
        seed: seed of the k-fold shuffles and PCA.
        pca_components: components kept when ``D > pca_above``.
        pca_above: dimension above which PCA applies.
        threshold: decision threshold on P(leukaemia) (0.5 = the SVM's own decision).
        name: the feature set's name (the ``features`` column).
        linked_sources: sets of sources sharing slides or patients (``evaluate.linked_sources``):
            left out of a LODO training set while one of them is tested.
        extractor_sources: the sources the feature network was trained on
            (``FeatureSource.trained_on``); ``None``: not a trained network, nothing refused.

    Returns:
        One row per test source: ``features``, ``feature_dim`` (dimension of the features),
        ``n_features`` (dimension the SVM saw: the PCA components, fewer when a training set
        has fewer images, or ``feature_dim`` when no PCA applied),
        ``test_source``, ``n_images``, then ``lodo_<metric>`` and ``kfold_<metric>`` (mean over
        folds) and ``kfold_<metric>_std`` for each of :data:`FEATURE_SPACE_METRICS`, then
        ``kfold_k`` and ``note``.

    Raises:
        ValueError: misaligned inputs, or no source with both classes to test on.
    """
    X = np.asarray(features, dtype=np.float64)
    records = records.reset_index(drop=True)
    if X.ndim != 2 or len(X) != len(records):
        raise ValueError(f"analyse_feature_space: features of shape {X.shape} do not align with "
                         f"{len(records)} records.")
    sources = list(test_sources) if test_sources else _two_class_sources(records)
    if not sources:
        raise ValueError("analyse_feature_space needs a source with both healthy and leukaemia "
                         "images to test on; none has both (set evaluate.test_sources).")
    labels = records["label"].to_numpy().astype(int)
    rows = []
    for source in sources:
        row: dict[str, Any] = {
            "features": name, "feature_dim": int(X.shape[1]), "n_features": 0,
            "test_source": source,
            "n_images": int((records["source"] == source).sum()),
        }
        notes = []
        svm_dims: list[int] = []
        results: dict[str, list[dict[str, float]]] = {p: [] for p in FEATURE_SPACE_PROTOCOLS}
        k_used = _kfold_size(records[records["source"] == source], k)
        refused = extractor_leak(extractor_sources, str(source), linked_sources, name)
        if refused:
            log.warning("%s on %s %s", name, source, refused)
            notes.append(refused)
            k_used = 0
        for protocol in FEATURE_SPACE_PROTOCOLS if not refused else ():
            if protocol == "kfold" and k_used < 2:
                notes.append("kfold: a class has fewer than 2 groups in this source")
                continue
            if protocol == "kfold" and k_used < k:
                log.info("%s: within-source k-fold uses k=%d (a class has only %d groups)",
                         source, k_used, k_used)
            ev = EvaluateConfig(protocol=protocol, test_sources=[source], k=max(k_used, 2),
                                linked_sources=[list(m) for m in linked_sources])
            try:
                splits = make_splits(protocol, records, ev, seed)
            except ValueError as exc:
                notes.append(f"{protocol}: {exc}")
                continue
            for split in splits:
                train, test = split.train_idx, split.test_idx
                if np.unique(labels[train]).size < 2:
                    notes.append(f"{protocol}: a training set has one class")
                    continue
                model = feature_space_pipeline(X.shape[1], len(train), pca_components,
                                               pca_above, seed)
                model.fit(X[train], labels[train])
                svm_dims.append(int(model.named_steps["svm"].n_features_in_))
                prob = positive_probability(model, X[test])
                results[protocol].append(binary_metrics(labels[test], prob, threshold))
        row.update(_fold_means(results))
        # PCA keeps at most as many components as training images, so report what was used.
        row["n_features"] = max(svm_dims) if svm_dims else int(X.shape[1])
        row["kfold_k"] = int(k_used) if k_used >= 2 else 0
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


def _fold_means(results: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """``<protocol>_<metric>`` means over folds (NaN without folds) and, for k-fold, the
    standard deviations ``kfold_<metric>_std``."""
    out: dict[str, float] = {}
    for protocol, folds in results.items():
        for metric in FEATURE_SPACE_METRICS:
            values = np.array([f[metric] for f in folds], dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN
                out[f"{protocol}_{metric}"] = float(np.nanmean(values)) if values.size else np.nan
                if protocol == "kfold":
                    out[f"kfold_{metric}_std"] = (
                        float(np.nanstd(values, ddof=1)) if values.size > 1 else np.nan
                    )
    return out


def _cell(value: float, percent: bool) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:.4f}"


def _dimension_cell(row: pd.Series) -> str:
    """``4096 → PCA 80`` when PCA reduced the features, else the dimension (``256``)."""
    used = int(row["n_features"])
    dim = row.get("feature_dim")
    if dim is None or pd.isna(dim) or int(dim) == used:
        return str(used)
    return f"{int(dim)} → PCA {used}"


def feature_space_markdown(table: pd.DataFrame) -> str:
    """Rows of :func:`analyse_feature_space` (one or several feature sets) shaped like Table 10.

    One bold block per test source; one row per feature set with its number of features
    (``4096 → PCA 80`` when PCA reduced them before the SVM) and
    A/P/R (%) and kappa under LODOCV and k-fold. The best accuracy and kappa of each protocol
    within a block are bold.

    Args:
        table: concatenated outputs of :func:`analyse_feature_space`.

    Returns:
        Markdown text.
    """
    heads = ["A (%)", "P (%)", "R (%)", "Kappa"]
    lines = [
        "| Approach | Num. of features | " + " | ".join(f"LODO {h}" for h in heads) + " | "
        + " | ".join(f"k-fold {h}" for h in heads) + " |",
        "|---" * (2 + 2 * len(heads)) + "|",
    ]
    for source, block in table.groupby("test_source", sort=False):
        lines.append(f"| **{source}** |" + " |" * (1 + 2 * len(heads)))
        best = {}
        for protocol in FEATURE_SPACE_PROTOCOLS:
            for metric in ("accuracy", "kappa"):
                values = pd.to_numeric(block[f"{protocol}_{metric}"], errors="coerce")
                if len(block) > 1 and values.notna().any():
                    best[(protocol, metric)] = values.max()
        for _, row in block.iterrows():
            cells = [str(row["features"]), _dimension_cell(row)]
            for protocol in FEATURE_SPACE_PROTOCOLS:
                for metric in FEATURE_SPACE_METRICS:
                    value = row[f"{protocol}_{metric}"]
                    text = _cell(value, percent=metric != "kappa")
                    if best.get((protocol, metric)) is not None and value == best[(protocol, metric)]:
                        text = f"**{text}**"
                    cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- t-SNE


def tsne_perplexity(n: int, preferred: float = 30.0) -> float:
    """A t-SNE perplexity valid for ``n`` points: ``preferred``, lowered to (n - 1) / 3 for small
    sets (scikit-learn needs perplexity < n), at least 1.

    Example:
        >>> tsne_perplexity(1000), tsne_perplexity(31), tsne_perplexity(4)
        (30.0, 10.0, 1.0)
    """
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}.")
    return float(max(1.0, min(preferred, (n - 1) / 3.0)))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (seeded; PCA to 50 components first when larger; the exact
    method below 200 points, Barnes-Hut above).

    Args:
        features: (N, D) array, N >= 3.
        seed: random state of PCA and t-SNE.

    Returns:
        (N, 2) float64 embedding.
    """
    X = _median_imputer().fit_transform(np.asarray(features, dtype=np.float64))
    X = GlobalScaler().fit_transform(X)
    n = len(X)
    components = min(TSNE_PCA_COMPONENTS, X.shape[1], n)
    if X.shape[1] > components:
        X = PCA(n_components=components, random_state=seed).fit_transform(X)
    tsne = TSNE(n_components=2, perplexity=tsne_perplexity(n), init="pca", random_state=seed,
                max_iter=1000, method="exact" if n < TSNE_EXACT_BELOW else "barnes_hut")
    return np.asarray(tsne.fit_transform(X), dtype=np.float64)


def embedding_boundary(
    embedding: np.ndarray, labels: Sequence[int]
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The decision function of a linear SVM fitted on a 2-D embedding (LeukNet Figs. 10-11).

    Args:
        embedding: (N, 2) points.
        labels: 0/1 labels.

    Returns:
        ``f(points (M, 2)) -> (M,)`` decision values (positive: leukaemia) of an SVM with
        balanced class weights, or ``None`` when only one class is present.
    """
    y = np.asarray(labels).astype(int)
    if np.unique(y).size < 2:
        return None
    # Balanced class weights: with unequal classes an unweighted SVM in 2-D often calls every
    # point the majority class, and there is no boundary left to draw.
    svm = Pipeline([("scale", StandardScaler()),
                    ("svm", SVC(kernel="linear", C=1.0, class_weight="balanced"))])
    svm.fit(np.asarray(embedding, dtype=np.float64), y)
    return svm.decision_function


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "x"


def plot_feature_space(
    features: np.ndarray,
    records: pd.DataFrame,
    out_dir: str | os.PathLike,
    *,
    name: str = "features",
    sources: Sequence[str] | None = None,
    seed: int = 0,
) -> list[Path]:
    """t-SNE maps with linear-SVM boundaries: all sources pooled and each test source alone.

    Writes ``tsne__<name>__pooled.png`` (LeukNet Figure 12: every source together, coloured by
    class and by source) and ``tsne__<name>__<source>.png`` for each source in ``sources``
    (Figures 10-11), each with the 0-level of a linear SVM fitted on that embedding.

    Args:
        features: (N, D) array aligned with ``records``.
        records: the records table (``label``, ``source``).
        out_dir: folder of the PNGs (created).
        name: the feature set's name (in titles and file names).
        sources: per-source maps to draw; default every source with both classes.
        seed: t-SNE seed.

    Returns:
        Paths of the written PNGs (sources with fewer than 3 images are skipped).
    """
    from leukdx.plots import plot_tsne

    out = Path(out_dir)
    records = records.reset_index(drop=True)
    X = np.asarray(features)
    labels = records["label"].to_numpy().astype(int)
    src = records["source"].astype(str).to_numpy()
    subsets = [("pooled", np.ones(len(records), dtype=bool))]
    for source in sources if sources is not None else _two_class_sources(records):
        subsets.append((str(source), src == str(source)))
    written = []
    for title, mask in subsets:
        if mask.sum() < 3:
            log.info("t-SNE of %s skipped: fewer than 3 images", title)
            continue
        embedding = tsne_embedding(X[mask], seed=seed)
        boundary = embedding_boundary(embedding, labels[mask])
        path = out / f"tsne__{_slug(name)}__{_slug(title)}.png"
        what = "all sources" if title == "pooled" else title
        written.append(plot_tsne(
            embedding, labels[mask], src[mask], path, boundary=boundary,
            title=f"t-SNE of {name} — {what} ({int(mask.sum())} images; line: linear SVM in 2-D)",
        ))
    return written


# ------------------------------------------------------------------------ source confound


def _linear_cv(X: np.ndarray, target: np.ndarray, groups: np.ndarray, folds: int, seed: int,
               pca_components: int, pca_above: int) -> tuple[float, float, int]:
    """Cross-validated (accuracy, balanced accuracy, folds used) of a linear classifier."""
    _, counts = np.unique(target, return_counts=True)
    n_folds = int(min(folds, counts.min(), np.unique(groups).size))
    if counts.size < 2 or n_folds < 2:
        return float("nan"), float("nan"), 0
    predicted = np.empty_like(target)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a group-constrained fold may miss a rare class: fine for an accuracy estimate
        warnings.simplefilter("ignore", UserWarning)
        for train, test in cv.split(X, target, groups):
            steps: list[tuple[str, Any]] = [("impute", _median_imputer())]
            components = _pca_size(X.shape[1], len(train), pca_components, pca_above)
            if components:
                steps.append(("pca", PCA(n_components=components, random_state=seed)))
            steps += [("scale", GlobalScaler()),
                      ("linear", LogisticRegression(max_iter=2000, random_state=seed))]
            model = Pipeline(steps).fit(X[train], target[train])
            predicted[test] = model.predict(X[test])
    return (float(np.mean(predicted == target)),
            float(balanced_accuracy_score(target, predicted)), n_folds)


def source_confound_report(
    features: np.ndarray,
    records: pd.DataFrame,
    *,
    name: str = "features",
    folds: int = 5,
    seed: int = 0,
    pca_components: int = 100,
    pca_above: int = 256,
) -> dict[str, Any]:
    """How well the features predict the source dataset, next to how well they predict the class.

    Both use the same linear classifier ([PCA] + :class:`GlobalScaler` + logistic regression)
    and the same
    grouped, stratified ``folds``-fold cross-validation (groups never cut). A source accuracy
    far above its chance level means the features encode the database (stain, camera,
    resolution) - a shortcut a classifier can exploit whenever class and source are correlated,
    which ``label_from_source_balanced_accuracy`` (the label predicted from the source name
    alone, :func:`leukdx.evaluation.leakage.source_confound`) measures.

    Args:
        features: (N, D) array aligned with ``records``.
        records: the records table (``label``, ``source``, ``group``).
        name: the feature set's name.
        folds: cross-validation folds (lowered when a class or source is smaller).
        seed: seed of the fold shuffle.
        pca_components: components kept when ``D > pca_above``.
        pca_above: dimension above which PCA applies.

    Returns:
        Dict: ``features``, ``n_images``, ``n_sources``, ``n_features``, ``folds``,
        ``source_accuracy``, ``source_balanced_accuracy``, ``source_chance`` (share of the
        largest source), ``class_accuracy``, ``class_balanced_accuracy``, ``class_chance``,
        ``label_from_source_balanced_accuracy``. NaN where a target has a single value.
    """
    from leukdx.evaluation.leakage import source_confound

    records = records.reset_index(drop=True)
    X = np.asarray(features, dtype=np.float64)
    if len(X) != len(records):
        raise ValueError(f"source_confound_report: {len(X)} feature rows for {len(records)} "
                         "records.")
    groups = (records["group"].astype(str).to_numpy() if "group" in records
              else np.arange(len(records)).astype(str))
    src = records["source"].astype(str).to_numpy()
    labels = records["label"].to_numpy().astype(int)
    source_acc, source_bal, source_folds = _linear_cv(X, src, groups, folds, seed,
                                                      pca_components, pca_above)
    class_acc, class_bal, class_folds = _linear_cv(X, labels, groups, folds, seed,
                                                   pca_components, pca_above)
    _, source_counts = np.unique(src, return_counts=True)
    return {
        "features": name,
        "n_images": int(len(records)),
        "n_sources": int(source_counts.size),
        "n_features": int(X.shape[1]),
        "folds": int(max(source_folds, class_folds)),
        "source_accuracy": source_acc,
        "source_balanced_accuracy": source_bal,
        "source_chance": float(source_counts.max() / source_counts.sum()),
        "class_accuracy": class_acc,
        "class_balanced_accuracy": class_bal,
        "class_chance": float(max(labels.mean(), 1 - labels.mean())),
        "label_from_source_balanced_accuracy": float(
            source_confound(records)["balanced_accuracy"]
        ),
    }
