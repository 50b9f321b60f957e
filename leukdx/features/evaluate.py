"""Deep features + classic classifiers under the evaluation protocols (``leukdx features``).

Loey et al.'s first model (AlexNet fc7 features, then DT / LD / SVM / K-NN, 10-fold) and
LeukNet's feature-space analysis (§4.3) as one experiment, ``task: features``:

1. **Classifiers** (``features.classifiers``) are evaluated by the shared evaluation runner
   (:func:`leukdx.evaluation.runner.run_evaluation`) with :class:`FeatureTrainer` as its fold
   trainer, so protocols, leakage checks, resume, predictions and ``folds.csv`` are exactly
   those of fine-tuning. Each classifier is one grid configuration (``features.classifiers``
   is added to ``evaluate.grid``, one name per point). In ``folds.csv``:
   ``strategy = "features:<classifier>"`` (e.g. ``features:svm_cubic``), ``head`` = the feature
   layer (``fc7``; ``<run>:<layer>`` for features of a trained run), ``backbone`` = the
   backbone. ``train_seconds`` / ``infer_ms_per_image`` time the classifier only (features
   come from the cache; extraction time is in ``features.json``).
   ``summary.md`` is shaped like Loey et al.'s Table 1: one row per classifier.
2. **Feature space** (LeukNet Table 10): for each feature set (each point of the user's
   ``evaluate.grid``, e.g. ``features.model: [null, runs/dft, runs/mdft]``), PCA + linear SVM
   under LODO and within-source k-fold (``evaluate.k``) on every test source
   (``evaluate.test_sources`` or every two-class source) → ``feature_space.csv`` /
   ``feature_space.md``.
3. **t-SNE maps** (``features.tsne``; Figures 10-12) → ``plots/tsne__<features>__<source>.png``.
4. **Source confound**: features → source vs. features → class accuracy →
   ``source_confound.csv`` / ``source_confound.json`` (printed too).

An empty ``features.classifiers`` runs steps 2-4 only (``configs/feature_space.yaml``).
``features.extractor: morphology`` runs all four on measured nuclear morphology instead of a
network's activations (``configs/lodo_morphology.yaml``).

Example:
    >>> from leukdx.config import load_config
    >>> cfg = load_config("configs/loey_features.yaml", ["data.max_per_class=10",
    ...                                                   "data.image_size=67"])
    >>> folds = run_feature_evaluation(cfg, "results/loey_small")     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukdx.config import Config, ConfigError, records_key, replace
from leukdx.evaluation.ledger import (
    FOLD_COLUMNS,
    atomic_write_text,
    markdown_table,
    summarize,
)
from leukdx.evaluation.runner import (
    FoldOutput,
    expand_grid,
    prepare_results_folder,
    run_evaluation,
)
from leukdx.evaluation.splits import withheld_for_calibration
from leukdx.features.analysis import (
    analyse_feature_space,
    feature_space_markdown,
    plot_feature_space,
    source_confound_report,
)
from leukdx.features.classifiers import (
    CLASSIFIER_LABELS,
    allows_missing,
    build_classifier,
    fill_missing,
    list_classifiers,
    positive_probability,
)
from leukdx.features.extract import FeatureSet, extract_features
from leukdx.runinfo import write_json_atomic

__all__ = ["STRATEGY_PREFIX", "FeatureTrainer", "run_feature_evaluation", "table1_markdown"]

log = logging.getLogger(__name__)

# folds.csv ``strategy`` of a classifier on deep features: "features:<classifier>".
STRATEGY_PREFIX = "features:"
CLASSIFIER_GRID_KEY = "features.classifiers"
# Loey et al.'s Table 1 reports precision, recall, accuracy and specificity; MCC and ROC AUC
# are added because they stay informative on imbalanced and cross-dataset test sets.
TABLE1_METRICS = ("precision", "recall", "accuracy", "specificity", "mcc", "roc_auc")
def _features_key(cfg: Config) -> str:
    """Everything the features of a grid point depend on (not the classifier)."""
    return records_key(cfg) + json.dumps({
        "features": [cfg.features.extractor, cfg.features.model, cfg.features.layer,
                     cfg.features.cache_dir],
        "model": [cfg.model.backbone, cfg.model.weights],
        "input": [cfg.data.image_size, cfg.data.aspect],
    }, sort_keys=True, default=str)



class FeatureTrainer:
    """Fold trainer of ``task: features``: fit one classic classifier on cached deep features.

    The evaluation runner hands a trainer the fold's training records and the decoded
    training and test images. With ``train.calibrate: unseen_source`` one healthy-only
    training source is withheld from the fit and the fold's threshold is the
    ``train.calibration_specificity`` quantile of its scores, exactly as for fine-tuning.
    Features are extracted once per feature set for the whole
    collection (and cached on disk, :func:`~leukdx.features.extract.extract_features`); a
    fold then only looks its rows up by ``sha256`` (test records come without labels).

    Args:
        image_cache: the experiment's ImageCache (shared with the runner); one is made from
            the config when ``None``.
        collection: an already loaded collection used for every configuration; by default
            each configuration's ``data`` section is loaded (once).
    """

    # fits scikit-learn models only: the runner need not clear the Keras session per fold
    builds_keras_models = False

    def __init__(self, image_cache=None, collection=None):
        self.image_cache = image_cache
        self.collection = collection
        self._records: dict[str, pd.DataFrame] = {}
        self._feature_sets: dict[str, FeatureSet] = {}
        self.extract_seconds: dict[str, float] = {}

    # -- data --------------------------------------------------------------------------
    def _cache(self, cfg: Config):
        if self.image_cache is None:
            from leukdx.data.pipeline import ImageCache

            self.image_cache = ImageCache.from_config(cfg.data)
        return self.image_cache

    def records(self, cfg: Config) -> pd.DataFrame:
        """The records of ``cfg`` (the runner's row order: the collection's, index reset)."""
        key = records_key(cfg)
        if key not in self._records:
            if self.collection is not None:
                collection = self.collection
            else:
                from leukdx.data.records import load_collection

                collection = load_collection(cfg.data.root, cfg.data, progress=False,
                                             seed=cfg.seed)
            self._records[key] = collection.records.reset_index(drop=True)
        return self._records[key]

    def feature_set(self, cfg: Config) -> FeatureSet:
        """The features of every record of ``cfg`` (extracted once, then memoised)."""
        key = _features_key(cfg)
        if key not in self._feature_sets:
            start = time.perf_counter()
            fs = extract_features(cfg, self.records(cfg), image_cache=self._cache(cfg))
            self.extract_seconds[fs.name] = 0.0 if fs.from_cache else time.perf_counter() - start
            self._feature_sets[key] = fs
        return self._feature_sets[key]

    # -- FoldTrainer protocol -----------------------------------------------------------
    @staticmethod
    def inputs_fingerprint(cfg: Config) -> str | None:
        """What produced the features where the settings cannot say it: the measuring code
        of ``features.extractor: morphology`` (part of each fold's config hash, so its rows
        are recomputed, never reused, after that code changes); ``None`` for networks."""
        if cfg.features.extractor == "morphology":
            from leukdx.features.morphology import measurement_fingerprint

            return measurement_fingerprint()
        return None

    @staticmethod
    def classifier_name(cfg: Config) -> str:
        """The single classifier of a grid point (``features.classifiers`` of length 1)."""
        names = list(cfg.features.classifiers)
        if len(names) != 1:
            raise ConfigError(
                f"The features fold trainer fits one classifier per configuration, but "
                f"features.classifiers is {names}; run `leukdx features` "
                "(run_feature_evaluation), which evaluates each listed classifier in turn."
            )
        if names[0] not in list_classifiers():
            raise ConfigError(f"Unknown classifier '{names[0]}' in features.classifiers; "
                              f"choose from {', '.join(list_classifiers())}.")
        return names[0]

    def key_fields(self, cfg: Config) -> dict[str, str]:
        fs = self.feature_set(cfg)
        head = fs.layer if fs.source.kind == "backbone" else fs.name
        return {
            "backbone": fs.source.backbone or fs.source.name,
            "strategy": STRATEGY_PREFIX + self.classifier_name(cfg),
            "head": head,
        }

    def fit_predict(
        self,
        cfg: Config,
        train_records: pd.DataFrame,
        train_images: np.ndarray,
        test_images: np.ndarray,
        seed: int,
        test_records: pd.DataFrame,
    ) -> FoldOutput:
        check_extractor_for_fold(cfg, test_records)
        fs = self.feature_set(cfg)
        row_of = {sha: i for i, sha in enumerate(self.records(cfg)["sha256"].astype(str))}
        train_records = train_records.reset_index(drop=True)
        extra: dict[str, Any] = {}
        # the same rule as fine-tuning: one healthy-only training source sets the threshold
        held_out, calibration = withheld_for_calibration(train_records, cfg.train.calibrate,
                                                         seed)
        if calibration is not None:
            extra["calibration_source"] = calibration
        rows = np.asarray([row_of[sha] for sha in train_records["sha256"].astype(str)], int)
        x_train = fs.features[rows[~held_out]]
        x_calibration = fs.features[rows[held_out]]
        y_train = train_records["label"].to_numpy().astype(int)[~held_out]
        x_test = fs.features[[row_of[sha] for sha in test_records["sha256"].astype(str)]]
        # a feature no training image has (e.g. a red-cell ruler no training source can
        # measure) carries nothing, and some estimators cannot bin an all-missing column
        measured = ~np.isnan(x_train).all(axis=0)
        if not measured.all():
            x_train, x_test = x_train[:, measured], x_test[:, measured]
            x_calibration = x_calibration[:, measured]
        classifier = build_classifier(self.classifier_name(cfg), seed=int(seed) % (2**32))
        if not allows_missing(classifier) and any(
                np.isnan(x).any() for x in (x_train, x_test, x_calibration)):
            x_train, x_test, x_calibration = fill_missing(x_train, x_test, x_calibration)
        with warnings.catch_warnings():
            # collinear/constant features (e.g. dead ReLUs of a random network) make LDA and
            # the solvers warn; the fold result is still what the method gives
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            start = time.perf_counter()
            classifier.fit(x_train, y_train)
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            probabilities = positive_probability(classifier, x_test)
            infer_ms = (time.perf_counter() - start) * 1000.0 / max(len(x_test), 1)
            if len(x_calibration):
                scores = positive_probability(classifier, x_calibration)
                extra["threshold"] = float(np.quantile(
                    np.asarray(scores, np.float64), cfg.train.calibration_specificity))
        return FoldOutput(probabilities, train_seconds, infer_ms, n_fit=len(x_train),
                          extra_columns=extra)


def check_extractor_for_fold(cfg: Config, test_records: pd.DataFrame) -> None:
    """Refuse a fold whose test source the ``features.model`` run was trained on.

    Features of a network fine-tuned on a source (or on one linked to it, e.g. ALL-IDB1 and
    ALL-IDB2) measure memory there, not generalisation, so no classifier is fitted on them.

    Args:
        cfg: the fold's configuration (``features.model``, ``evaluate.linked_sources``).
        test_records: the fold's test records (their ``source`` column).

    Raises:
        LeakageError: one line naming the run, the source and what to do.
    """
    if not cfg.features.model or "source" not in test_records.columns:
        return
    from leukdx.errors import LeakageError
    from leukdx.features.analysis import extractor_leak
    from leukdx.features.extract import run_training_sources

    trained_on = run_training_sources(cfg.features.model)
    for source in sorted(set(test_records["source"].astype(str))):
        reason = extractor_leak(trained_on, source, cfg.evaluate.linked_sources,
                                f"features.model {cfg.features.model}")
        if reason is not None:
            raise LeakageError(f"Fold testing on '{source}' {reason}.")


# ------------------------------------------------------------------------------ tables


def _classifier_of(strategy: str) -> str:
    return strategy[len(STRATEGY_PREFIX):] if strategy.startswith(STRATEGY_PREFIX) else strategy


def table1_markdown(folds: pd.DataFrame, title: str = "") -> str:
    """Classifier results shaped like Loey et al.'s Table 1 (one row per classifier).

    Args:
        folds: ``folds.csv`` rows of a features evaluation.
        title: optional heading line.

    Returns:
        Markdown: mean ± std over folds (and runs) of precision, recall, accuracy,
        specificity, MCC and ROC AUC (%) per classifier, one block per test source.
    """
    display = folds.copy()
    display["strategy"] = [
        CLASSIFIER_LABELS.get(_classifier_of(s), _classifier_of(s)) for s in display["strategy"]
    ]
    summary = summarize(display)
    n_folds = int(summary["n"].max()) if len(summary) else 0
    text = (
        (f"# {title}\n\n" if title else "")
        + "Deep features + classic classifiers (Loey et al. 2020, model 1). Mean ± standard "
        "deviation over folds and runs, in %. P: precision, R: recall (sensitivity), "
        "A: accuracy, S: specificity, MCC: Matthews correlation coefficient, AUC: ROC area "
        "(SVM scores are sigmoid-mapped margins: ranking exact, not calibrated). "
        f"Up to {int(n_folds)} fold results per classifier and test source. Best mean per column in bold.\n\n"
    )
    return text + markdown_table(summary, metrics=TABLE1_METRICS)


def _confound_markdown(reports: list[dict[str, Any]]) -> str:
    lines = [
        "| Features | Source acc. (chance) | Class acc. (chance) | Class bal. acc. | "
        "Label from source alone (bal. acc.) |",
        "|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r['features']} | {100 * r['source_accuracy']:.1f}% "
            f"({100 * r['source_chance']:.1f}%) | {100 * r['class_accuracy']:.1f}% "
            f"({100 * r['class_chance']:.1f}%) | {100 * r['class_balanced_accuracy']:.1f}% | "
            f"{100 * r['label_from_source_balanced_accuracy']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ driver


def _check_classifiers(cfg: Config) -> list[str]:
    names = list(cfg.features.classifiers)
    unknown = [n for n in names if n not in list_classifiers()]
    if unknown:
        raise ConfigError(f"Unknown classifier(s) {', '.join(unknown)} in features.classifiers; "
                          f"choose from {', '.join(list_classifiers())}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"features.classifiers lists a classifier twice: {names}.")
    if CLASSIFIER_GRID_KEY in cfg.evaluate.grid:
        raise ConfigError("Put classifiers in features.classifiers, not in evaluate.grid.")
    return names


def _analysis_sources(cfg: Config) -> list[str] | None:
    ev = cfg.evaluate
    if ev.protocol in ("lodo", "kfold", "holdout") and ev.test_sources:
        return [str(s) for s in ev.test_sources]
    return None


def _write_feature_space_reports(cfg: Config, out: Path, table10: pd.DataFrame,
                                 confound: list[dict[str, Any]],
                                 feature_info: list[dict[str, Any]]) -> list[str]:
    """Write feature_space.csv/.md, source_confound.csv/.json and features.json.

    Returns:
        The Markdown reports, to print.
    """
    printed = []
    atomic_write_text(out / "feature_space.csv", table10.to_csv(index=False))
    md10 = (
        f"# {cfg.name}: feature-space analysis (LeukNet Table 10)\n\n"
        "Linear SVM on the features (PCA to "
        f"{cfg.features.pca_components} components when the dimension exceeds "
        f"{cfg.features.pca_above}). LODO: trained on every other source, tested on this one. "
        f"k-fold: grouped, stratified {cfg.evaluate.k}-fold inside this source alone (mean "
        "over folds). A: accuracy, P: precision, R: recall, Kappa: Cohen's kappa.\n\n"
        + feature_space_markdown(table10)
    )
    atomic_write_text(out / "feature_space.md", md10)
    printed.append(md10)

    atomic_write_text(out / "source_confound.csv", pd.DataFrame(confound).to_csv(index=False))
    write_json_atomic({"experiment": cfg.name, "reports": confound}, out / "source_confound.json")
    n_folds = max(r["folds"] for r in confound)
    md_confound = (
        "# Source confound\n\nCross-validated accuracy of a linear classifier predicting the "
        "source dataset from the features, next to predicting the class (grouped, stratified "
        f"{n_folds}-fold; chance = always the largest source / class). Last column: the class "
        "predicted from the source name alone.\n\n" + _confound_markdown(confound)
    )
    printed.append(md_confound)
    write_json_atomic({"experiment": cfg.name, "feature_sets": feature_info},
                      out / "features.json")
    return printed


def run_feature_evaluation(
    cfg: Config, out_dir: str | Path, *, progress: bool = True, force: bool = False
) -> pd.DataFrame:
    """Evaluate classic classifiers on deep features and analyse the feature space.

    Args:
        cfg: a ``task: features`` config (see the module docstring; ``features.*``,
            ``evaluate.*``, ``model.backbone``/``model.weights``, ``data.*``).
        out_dir: results folder (created); re-running resumes the classifier folds of the
            same configuration and refuses another one (the message names the settings).
        progress: progress bars, the plan with its estimate, and the printed tables.
        force: when the folder holds another configuration, keep its ledger as
            ``folds.<timestamp>.csv`` and start a new one.

    Returns:
        The classifier folds (``folds.csv`` rows, :data:`~leukdx.evaluation.ledger.FOLD_COLUMNS`
        plus ``repeat``) of this evaluation; empty when ``features.classifiers`` is empty.

    Raises:
        ConfigError: an unknown classifier or layer, an invalid grid.
        FileNotFoundError: a missing ``features.model`` or weights file.
        ResultsFolderError: the folder holds another configuration (without ``force``).
    """
    from leukdx.data.pipeline import ImageCache
    from leukdx.data.records import load_collection

    out = Path(out_dir)
    classifiers = _check_classifiers(cfg)
    # checked (and config.yaml written) before any feature is extracted
    prepare_results_folder(out, cfg, force=force)
    points = expand_grid(cfg)  # one feature set per point
    data_in_grid = any(key.startswith("data.") for key in cfg.evaluate.grid)
    collection = None if data_in_grid else load_collection(
        cfg.data.root, cfg.data, progress=progress, seed=cfg.seed
    )
    cache = ImageCache.from_config(cfg.data, progress=progress)
    trainer = FeatureTrainer(image_cache=cache, collection=collection)

    folds = pd.DataFrame(columns=list(FOLD_COLUMNS))
    printed: list[str] = []
    if classifiers:
        grid = {**cfg.evaluate.grid, CLASSIFIER_GRID_KEY: [[name] for name in classifiers]}
        eval_cfg = replace(cfg, {"evaluate.grid": grid, "task": "features"})
        # the folder was prepared above (force applied once); run_evaluation re-checks it
        folds = run_evaluation(eval_cfg, out, cache=cache, progress=progress, trainer=trainer,
                               collection=collection, results_config=cfg,
                               print_summary=False)
        if len(folds):
            table1 = table1_markdown(folds, title=f"{cfg.name}: deep features + classifiers")
            atomic_write_text(out / "summary.md", table1)
            printed.append(table1)

    analysis_rows, confound, feature_info = [], [], []
    plots_dir = out / "plots"
    feature_sets = [trainer.feature_set(point.cfg) for point in points]
    plain_names = [fs.name for fs in feature_sets]
    for point, fs in zip(points, feature_sets):
        pcfg = point.cfg
        records = trainer.records(pcfg)
        # grid points with the same network and layer (e.g. other image sizes) need the grid
        # values in their name to stay apart in the tables and plot file names
        name = fs.name if plain_names.count(fs.name) == 1 else f"{fs.name} [{point.label}]"
        feature_info.append({
            "features": name, "grid": point.label, "kind": fs.source.kind,
            "backbone": fs.source.backbone, "layer": fs.layer, "dim": fs.dim,
            "image_size": fs.source.image_size, "aspect": fs.source.aspect,
            "n_images": len(records), "cache_file": str(fs.path), "from_cache": fs.from_cache,
            "extract_seconds": trainer.extract_seconds.get(fs.name, 0.0),
        })
        log.info("Feature-space analysis of %s (%d-d)", name, fs.dim)
        analysis_rows.append(analyse_feature_space(
            fs.features, records, test_sources=_analysis_sources(pcfg), k=pcfg.evaluate.k,
            seed=pcfg.seed, pca_components=pcfg.features.pca_components,
            pca_above=pcfg.features.pca_above, threshold=pcfg.train.threshold, name=name,
            linked_sources=pcfg.evaluate.linked_sources, extractor_sources=fs.source.trained_on,
        ))
        confound.append(source_confound_report(
            fs.features, records, name=name, seed=pcfg.seed,
            pca_components=pcfg.features.pca_components, pca_above=pcfg.features.pca_above,
        ))
        if pcfg.features.tsne:
            plot_feature_space(fs.features, records, plots_dir, name=name,
                               sources=_analysis_sources(pcfg), seed=pcfg.seed)

    printed += _write_feature_space_reports(
        cfg, out, pd.concat(analysis_rows, ignore_index=True), confound, feature_info)
    if progress:
        print("\n".join(printed))
    return folds
