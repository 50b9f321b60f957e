"""Cross-dataset evaluation: grid x protocol x fold x run -> train -> predict -> ledger (``leukdx
evaluate``).

For every configuration of ``evaluate.grid`` (all combinations of the listed values), every
split of ``evaluate.protocol`` (LODO, grouped k-fold, holdout, external) and every one of
``evaluate.runs`` seeds, the runner trains on the split's training records (validation, when
configured, is carved out of those only — never out of the test fold), predicts the test
records and appends one row to ``folds.csv``. The ledger is the resume unit: a fold already in
it is skipped *before* training, so a killed grid re-run with the same command loses nothing and
repeats nothing. Decoded images come from one :class:`~leukdx.data.pipeline.ImageCache` shared
by every fold, run and configuration.

A results folder holds one configuration (:func:`prepare_results_folder`): ``config.yaml``
records it and every row carries the :func:`config_hash` of its grid point, so a re-run with
another result-affecting setting stops with one line naming the differing keys (``force``
archives the old ledger instead), and summaries and plots cover exactly the rows of the
current plan. The work is split into a pure :func:`run_fold` (train and test one
:class:`FoldTask`, no writes) and a driver, :func:`drive_folds`, that claims each fold
(:meth:`~leukdx.evaluation.ledger.Ledger.try_claim`), runs it and alone appends its row; several
processes driving one folder split the folds, and a parallel executor can hand ``run_fold``
to its workers while its driver keeps the ledger.

Output folder::

    config.yaml             the resolved configuration of the folder
    folds.csv               one row per (configuration, split, run): metrics, timings, hash
    folds.<time>.csv        ledgers set aside by force (with predictions.<time>/)
    leakage.json            source-confound report of every training set
    predictions/*.csv       path,label,probability,prediction per fold and run
    summary.csv, summary.md mean ± std per configuration and test source (LeukNet Tables 3-7)
    plots/                  confusion matrix and ROC per configuration and test source,
                            metric bars of all configurations

How a fold is trained is pluggable: a :class:`FoldTrainer` says which columns identify its
configuration (:meth:`~FoldTrainer.key_fields`) and turns training images into test
probabilities (:meth:`~FoldTrainer.fit_predict`). :class:`FineTuneTrainer` (fine-tuning a
backbone, ``task: finetune``) is the default; other tasks register theirs with
:func:`register_trainer`.

Example:
    >>> from leukdx.config import load_config
    >>> from leukdx.evaluation.runner import run_evaluation
    >>> cfg = load_config("configs/demo.yaml", overrides=["train.epochs=1"])
    >>> folds = run_evaluation(cfg, "results/demo")      # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import itertools
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from leukdx.config import Config, ConfigError, config_to_dict, records_key, replace
from leukdx.errors import DataError, RunFolderError
from leukdx.evaluation.ledger import (
    FOLDS_FILE,
    PREDICTIONS_DIR,
    Ledger,
    LedgerError,
    atomic_write_text,
    predictions_name,
    read_predictions,
    summarize,
    write_predictions,
    write_summary,
)
from leukdx.evaluation.splits import Split, make_splits, withheld_for_calibration
from leukdx.runinfo import write_json_atomic

__all__ = [
    "ClassImbalanceWarning",
    "FineTuneTrainer",
    "FoldOutput",
    "FoldResult",
    "FoldTask",
    "FoldTrainer",
    "GridPoint",
    "ResultsFolderError",
    "SlowPlanWarning",
    "SourceConfoundWarning",
    "class_balance_warning",
    "config_hash",
    "drive_folds",
    "expand_grid",
    "fold_seed",
    "get_trainer",
    "head_label",
    "prepare_results_folder",
    "register_trainer",
    "result_settings",
    "run_evaluation",
    "run_fold",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
HASHES_DIR = ".config_hashes"
LEAKAGE_FILE = "leakage.json"
PLOTS_DIR = "plots"
# Grid keys that already have a column of their own in folds.csv; any other grid key is
# written into the ``experiment`` column so that every configuration has a distinct key.
# The features trainer writes its classifier, source model and layer into strategy/head.
KEYED_GRID_FIELDS = frozenset({
    "model.backbone", "model.strategy", "model.head.units",
    "features.classifiers", "features.model", "features.layer",
})
# Seeds of run r are cfg.seed + RUN_SEED_STRIDE * r + split position: distinct for every fold
# and run, identical across grid configurations (so configurations are compared paired).
RUN_SEED_STRIDE = 1000
# Bumped whenever a change of leukdx changes the result of a fold trained with the same
# settings; it is part of every config_hash, so such rows are never mixed with new ones.
RESULTS_VERSION = "1"
# Settings that cannot change a fold's result: left out of config_hash and of the check that
# a results folder holds one configuration ("executor" is the section of parallel executors).
NON_RESULT_KEYS: tuple[str, ...] = (
    "name", "evaluate.runs", "evaluate.plots", "evaluate.save_predictions", "evaluate.grid",
    "train.verbose", "train.tensorboard", "data.cache", "data.cache_dir", "data.workers",
    "features.cache_dir", "features.tsne", "features.pca_components", "features.pca_above",
    "executor", "evaluate.executor", "evaluate.ray",
)
# Left out of the folder-level check only: each grid point (each feature classifier) has
# its own key columns and config_hash, so adding one extends the folder's plan.
FOLDER_ONLY_KEYS: tuple[str, ...] = ("features.classifiers",)
# A training set with more than this many images of one class per image of the other, trained
# without class weights, is warned about.
IMBALANCE_RATIO = 2.0
# Plans estimated to take longer than this on a machine without a GPU are warned about.
CPU_WARN_SECONDS = 4 * 3600.0
# An epoch of at least twice this many batches is estimated after this many batches.
EARLY_ESTIMATE_BATCHES = 5


class SourceConfoundWarning(UserWarning):
    """A training set's label can be predicted from its source alone."""


class ClassImbalanceWarning(UserWarning):
    """A fold's training set is strongly imbalanced and trained without class weights."""


class SlowPlanWarning(UserWarning):
    """An evaluation plan is estimated to take very long on this (CPU-only) machine."""


class ResultsFolderError(RunFolderError):
    """The results folder holds folds of another configuration; the message names the
    differing settings and how to proceed (another ``--out``, or ``--force``)."""


# ------------------------------------------------------------------------------ trainers


class FoldOutput(NamedTuple):
    """What a trainer returns for one fold of one run.

    Attributes:
        probabilities: P(leukaemia) of each test image, shape (n_test,).
        train_seconds: wall-clock seconds spent training.
        infer_ms_per_image: milliseconds per test image at prediction.
        n_fit: training images actually fitted (the fold's training part minus the
            validation images split off inside it); ``None``: all of the training part.
        n_val: validation images split off inside the fold (``None``: none).
        precision_policy: the Keras dtype policy that trained (``None``: not a Keras model).
        jit_compile: whether training was XLA-compiled, as Keras resolved it (``None``: not
            a Keras model).
        extra_columns: further ``folds.csv`` columns of the fold, e.g. the best epoch's
            ``val_loss``/``val_accuracy``/``val_auc`` (what a recipe is chosen by, since the
            test source may not choose it) and ``pretrain_seconds``.
    """

    probabilities: np.ndarray
    train_seconds: float
    infer_ms_per_image: float
    n_fit: int | None = None
    n_val: int | None = None
    precision_policy: str | None = None
    jit_compile: bool | str | None = None
    extra_columns: Mapping[str, Any] | None = None


@runtime_checkable
class FoldTrainer(Protocol):
    """How one fold is trained and predicted; the runner does everything else.

    Implementations must be deterministic for a given ``seed`` and must not look at test
    labels (they receive none).
    """

    def key_fields(self, cfg: Config) -> dict[str, str]:
        """Values of the ``backbone``, ``strategy`` and ``head`` columns for ``cfg``."""
        ...

    def fit_predict(
        self,
        cfg: Config,
        train_records: pd.DataFrame,
        train_images: np.ndarray,
        test_images: np.ndarray,
        seed: int,
        test_records: pd.DataFrame,
    ) -> FoldOutput:
        """Train on ``train_records`` / ``train_images`` and return test probabilities.

        Args:
            cfg: the configuration of this grid point.
            train_records: records of the training images (``label``, ``source``, ``group``
                ...), positions aligned with ``train_images``.
            train_images: (N, S, S, 3) uint8.
            test_images: (M, S, S, 3) uint8: the test images, followed by their tiles and
                cell crops when ``data.tile`` / ``data.crop: cell`` make any
                (:attr:`~leukdx.data.tiles.FoldImages.test_inputs`); return one
                probability per input (the runner aggregates them per record) or per record.
            seed: the seed of this fold and run.
            test_records: records of the test images without their ``label`` column
                (paths and hashes identify them; labels stay with the runner).

        Returns:
            A :class:`FoldOutput` (a plain ``(probabilities, train_seconds, infer_ms)`` tuple
            is accepted too).
        """
        ...


_TRAINERS: dict[str, Callable[[], FoldTrainer]] = {}
# Trainers that live in a higher layer are named here, "module:attribute", and imported only
# when a configuration asks for their task, so importing leukdx.evaluation never imports them.
TRAINER_ENTRY_POINTS: dict[str, str] = {"features": "leukdx.features.evaluate:FeatureTrainer"}


def register_trainer(task: str) -> Callable:
    """Register a zero-argument factory of the :class:`FoldTrainer` for ``cfg.task``.

    Example:
        >>> @register_trainer("my_task")
        ... class MyTrainer:
        ...     def key_fields(self, cfg): return {"backbone": "x", "strategy": "y", "head": "z"}
        ...     def fit_predict(self, cfg, train_records, train_images, test_images, seed,
        ...                     test_records): ...
    """

    def decorator(factory: Callable[[], FoldTrainer]) -> Callable[[], FoldTrainer]:
        _TRAINERS[task] = factory
        return factory

    return decorator


def get_trainer(task: str) -> FoldTrainer:
    """The trainer for ``task``: registered, or loaded from :data:`TRAINER_ENTRY_POINTS`.

    Raises:
        ConfigError: no trainer is registered or named for the task.
    """
    if task not in _TRAINERS and task in TRAINER_ENTRY_POINTS:
        import importlib

        module, _, attribute = TRAINER_ENTRY_POINTS[task].partition(":")
        _TRAINERS[task] = getattr(importlib.import_module(module), attribute)
    if task not in _TRAINERS:
        raise ConfigError(
            f"'task' is {task!r} but no fold trainer is registered for it; known: "
            f"{', '.join(sorted(set(_TRAINERS) | set(TRAINER_ENTRY_POINTS)))}."
        )
    return _TRAINERS[task]()


def head_label(cfg: Config) -> str:
    """The ``head`` column: ``original`` (SFT/DFT keep the backbone's top), else the new dense
    layer sizes joined by ``-`` (e.g. ``1024-256``), the backbone's paper default when
    ``model.head.units`` is null.
    """
    if cfg.model.strategy in ("sft", "dft"):
        return "original"
    units = cfg.model.head.units
    if units is None:
        from leukdx.models.backbones import get_backbone

        units = get_backbone(cfg.model.backbone).default_head[0]
    return "-".join(str(int(u)) for u in units) if units else "none"


@register_trainer("finetune")
class FineTuneTrainer:
    """Fine-tune ``model.backbone`` with ``model.strategy`` (the default trainer).

    Uses the same building blocks as ``leukdx train`` (:func:`leukdx.train.compile_model`,
    :func:`leukdx.train.fit_model`) but writes no files: the best epoch's weights (lowest
    ``val_loss``) are kept in memory, and there is no backup — the ledger is the resume unit.

    Args:
        callbacks: extra Keras callbacks for every fit (e.g. for monitoring).

    Attributes:
        epoch_listener: called as ``epoch_listener(epoch, seconds, n_fit, basis)`` after every
            training epoch (``basis`` ``"epoch"``), and once per fit early in the first epoch
            with that epoch's duration extrapolated from its first batches (``basis``
            ``"batches"``); the runner uses the first call to estimate the whole plan.
    """

    def __init__(self, callbacks: Sequence[Any] = ()):
        self.callbacks = list(callbacks)
        self.epoch_listener: Callable[[int, float, int], None] | None = None

    def _timing_callback(self, n_fit: int):
        import keras

        listener = self.epoch_listener

        class EpochSeconds(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()
                self._after_first_batch = None
                self._first_epoch = epoch == 0

            def on_train_batch_end(self, batch, logs=None):
                # A long first epoch (a big network on a CPU) is extrapolated from its first
                # batches; batch 0 carries the graph tracing, so the rate is taken after it.
                steps = (self.params or {}).get("steps") or 0
                if listener is None or not self._first_epoch or steps < 2 * EARLY_ESTIMATE_BATCHES:
                    return
                if batch == 0:
                    self._after_first_batch = time.perf_counter()
                elif batch == EARLY_ESTIMATE_BATCHES and self._after_first_batch is not None:
                    now = time.perf_counter()
                    per_batch = (now - self._after_first_batch) / batch
                    seconds = (self._after_first_batch - self._start) + per_batch * (steps - 1)
                    listener(0, seconds, n_fit, "batches")

            def on_epoch_end(self, epoch, logs=None):
                if listener is not None:
                    listener(int(epoch), time.perf_counter() - self._start, n_fit, "epoch")

        return EpochSeconds()

    def key_fields(self, cfg: Config) -> dict[str, str]:
        return {
            "backbone": cfg.model.backbone,
            "strategy": cfg.model.strategy,
            "head": head_label(cfg),
        }

    @staticmethod
    def _validation(cfg: Config, train_records: pd.DataFrame, seed: int):
        """Fit/validation positions inside the training records of a fold."""
        from leukdx.train import validation_indices

        train_cfg = cfg.train
        if train_cfg.validation_source and not (
            train_records["source"] == train_cfg.validation_source
        ).any():
            # e.g. LODO holding out the validation source: never validate on the test fold.
            log.warning(
                "train.validation_source %r is not among this fold's training sources; "
                "using a grouped %.0f %% validation split instead.",
                train_cfg.validation_source, 100 * train_cfg.validation_split,
            )
            train_cfg = dataclasses.replace(train_cfg, validation_source=None)
        return validation_indices(train_records, train_cfg, seed=seed)

    def fit_predict(
        self,
        cfg: Config,
        train_records: pd.DataFrame,
        train_images: np.ndarray,
        test_images: np.ndarray,
        seed: int,
        test_records: pd.DataFrame | None = None,
    ) -> FoldOutput:
        import keras

        from leukdx.data.records import require_two_classes
        from leukdx.precision import apply_precision
        from leukdx.train import (
            build_compiled_model,
            class_weights,
            distribution_strategy,
            fit_model,
            make_training_datasets,
        )

        train_records = train_records.reset_index(drop=True)
        extra: dict[str, Any] = {}
        held, calibration = withheld_for_calibration(train_records, cfg.train.calibrate, seed)
        if calibration is not None:
            calibration_images = train_images[held]
            train_records = train_records[~held].reset_index(drop=True)
            train_images = train_images[~held]
            extra["calibration_source"] = calibration
        if cfg.pretrain.per_fold:
            cfg, extra["pretrain_seconds"] = self._pretrained(cfg, train_records, train_images)
        if cfg.train.label_sources == "two_class":
            # after pretraining: the single-class sources were its unlabelled images
            keep = two_class_sources_mask(train_records)
            train_records = train_records[keep].reset_index(drop=True)
            train_images = train_images[keep]
        keras.utils.set_random_seed(int(seed))
        fit_pos, val_pos = self._validation(cfg, train_records, seed)
        require_two_classes(train_records.iloc[fit_pos], "the fold's training part")
        labels = train_records["label"].to_numpy().astype(np.float32)

        previous_policy = keras.mixed_precision.global_policy()
        try:
            policy_name = apply_precision(cfg.train.precision)
            strategy = distribution_strategy(cfg.train.distribution)
            train_ds, val_ds, model_augmentation = make_training_datasets(
                cfg, train_images[fit_pos], labels[fit_pos],
                train_images[val_pos], labels[val_pos], seed=int(seed),
            )
            model = build_compiled_model(cfg, strategy, model_augmentation)
            start = time.perf_counter()
            history = fit_model(
                model, train_ds, val_ds, cfg,
                callbacks=[*self.callbacks, self._timing_callback(len(fit_pos))],
                class_weight=class_weights(labels[fit_pos], cfg.train.class_weight),
            )
            train_seconds = time.perf_counter() - start
            extra.update(best_validation(getattr(history, "history", None) or {}))
            probabilities, infer_ms = self._score_sources(model, test_images, cfg,
                                                          test_records)
            if calibration is not None:
                extra["threshold"] = self._unseen_threshold(model, calibration_images, cfg)
            # what Keras resolved (``auto`` becomes a bool once the model is compiled)
            jit_compile = getattr(model, "jit_compile", getattr(cfg.train, "jit_compile", None))
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        return FoldOutput(probabilities, train_seconds, infer_ms, n_fit=len(fit_pos),
                          n_val=len(val_pos), precision_policy=policy_name,
                          jit_compile=jit_compile, extra_columns=extra)

    def _unseen_threshold(self, model, images: np.ndarray, cfg: Config) -> float:
        """The ``train.calibration_specificity`` quantile of P(leukaemia) over the images of
        the withheld healthy-only source, scored exactly as the test images are (with its
        own BatchNorm statistics under ``evaluate.adapt_bn``)."""
        scores, _ = self._score_sources(model, images, cfg)
        return float(np.quantile(np.asarray(scores, dtype=np.float64),
                                 cfg.train.calibration_specificity))

    def _score(self, model, images: np.ndarray, cfg: Config) -> tuple[np.ndarray, float]:
        """P(leukaemia) of ``images`` (averaged over ``evaluate.tta`` views) and ms/image."""
        from leukdx.train import predict_timed

        if cfg.evaluate.tta > 1:
            return self._predict_tta(model, images, cfg.evaluate.tta)
        return predict_timed(model, images)

    def _score_sources(self, model, images: np.ndarray, cfg: Config,
                       records: pd.DataFrame | None = None) -> tuple[np.ndarray, float]:
        """:meth:`_score`, each source with its own BatchNorm statistics when
        ``evaluate.adapt_bn`` is ``test_source``.

        ``records`` (aligned with ``images``) tells the sources apart; without them, or when
        the inputs are tiles or cell crops (more inputs than records), the images are
        adapted to as one source.
        """
        if cfg.evaluate.adapt_bn != "test_source" or len(images) < 2:
            return self._score(model, images, cfg)
        from leukdx.models.adabn import adapted_batchnorm, batchnorm_layers

        if not batchnorm_layers(model):
            log.warning("evaluate.adapt_bn: test_source has nothing to adapt: the model has no "
                        "BatchNorm layer (model.norm: %s).", cfg.model.norm)
            return self._score(model, images, cfg)
        images = np.asarray(images)
        if records is not None and len(records) == len(images) and "source" in records:
            groups = [np.flatnonzero((records["source"] == source).to_numpy())
                      for source in pd.unique(records["source"])]
        else:
            groups = [np.arange(len(images))]
        probabilities = np.zeros(len(images), dtype=np.float64)
        seconds = 0.0
        for rows in groups:
            start = time.perf_counter()
            with adapted_batchnorm(model, images[rows]):
                scores, _ = self._score(model, images[rows], cfg)
            seconds += time.perf_counter() - start
            probabilities[rows] = np.asarray(scores, dtype=np.float64).reshape(-1)
        return probabilities, seconds * 1000.0 / len(images)

    @staticmethod
    def _pretrained(cfg: Config, train_records: pd.DataFrame,
                    train_images: np.ndarray) -> tuple[Config, float]:
        """``cfg`` fine-tuning from SimCLR weights pretrained on this fold's training images
        only (``pretrain.per_fold``; cached per training set), and the seconds it took."""
        from leukdx.pretrain import pretrain_for_fold

        start = time.perf_counter()
        weights = pretrain_for_fold(cfg, train_records, train_images,
                                    progress=cfg.train.verbose > 0)
        return replace(cfg, {"model.weights": str(weights)}), time.perf_counter() - start

    @staticmethod
    def _predict_tta(model, images: np.ndarray, n: int) -> tuple[np.ndarray, float]:
        """P(leukaemia) averaged over ``n`` flips/rotations (``evaluate.tta``), and the
        milliseconds per image it took (one batch first, untimed, to trace the graph)."""
        from leukdx.train import INFERENCE_BATCH_SIZE
        from leukdx.tta import predict_proba_tta

        images = np.asarray(images)
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64), float("nan")
        predict_proba_tta(model, images[:INFERENCE_BATCH_SIZE], n, INFERENCE_BATCH_SIZE)
        start = time.perf_counter()
        probabilities = predict_proba_tta(model, images, n, INFERENCE_BATCH_SIZE)
        return probabilities, (time.perf_counter() - start) * 1000.0 / len(images)


def two_class_sources_mask(train_records: pd.DataFrame) -> np.ndarray:
    """Rows of the sources that hold both classes (``train.label_sources: two_class``).

    Raises:
        DataError: no training source holds both classes.

    Example:
        >>> recs = pd.DataFrame({"source": ["a", "a", "h"], "label": [0, 1, 0]})
        >>> two_class_sources_mask(recs).tolist()
        [True, True, False]
    """
    classes = train_records.groupby("source")["label"].nunique()
    both = classes.index[classes >= 2]
    if len(both) == 0:
        raise DataError(
            "train.label_sources: two_class needs a training source with both classes; this "
            f"fold trains on {', '.join(map(str, classes.index))}, each with one class. Use "
            "train.label_sources: all, or add a two-class source."
        )
    return train_records["source"].isin(both).to_numpy()


def best_validation(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The validation metrics of the best epoch (lowest ``val_loss``, the one whose weights
    the fold keeps) as ``folds.csv`` columns: ``val_loss``, ``val_accuracy``, ``val_auc``
    and ``best_epoch`` (from 0). Empty without validation.

    Example:
        >>> best_validation({"val_loss": [0.7, 0.5, 0.6], "val_accuracy": [0.5, 0.8, 0.7]})
        {'best_epoch': 1, 'val_loss': 0.5, 'val_accuracy': 0.8}
    """
    losses = np.asarray(history.get("val_loss") or [], dtype=np.float64)
    if not np.isfinite(losses).any():
        return {}
    best = int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))
    out: dict[str, float] = {"best_epoch": best}
    for name in ("val_loss", "val_accuracy", "val_auc"):
        values = history.get(name) or []
        if len(values) > best:
            out[name] = float(values[best])
    return out


# ------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid.

    Attributes:
        overrides: dotted key -> value applied to the base config (empty without a grid).
        cfg: the resulting config.
        label: ``key=value`` pairs of the overrides, for messages.
    """

    overrides: Mapping[str, Any]
    cfg: Config
    label: str


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value) if value else "[]"
    if value is None:
        return "null"
    return str(value)


def expand_grid(cfg: Config) -> list[GridPoint]:
    """Every combination of ``evaluate.grid`` (in the order written), as configs.

    Args:
        cfg: the base config.

    Returns:
        One :class:`GridPoint` per combination; a single point with no overrides when the
        grid is empty.

    Raises:
        ConfigError: a grid entry is not a non-empty list, or a combination is invalid.

    Example:
        >>> from leukdx.config import Config, EvaluateConfig
        >>> grid = {"model.strategy": ["sft", "mdft"], "train.learning_rate": [0.1, 0.01]}
        >>> len(expand_grid(Config(evaluate=EvaluateConfig(grid=grid))))
        4
    """
    grid = dict(cfg.evaluate.grid)
    if not grid:
        return [GridPoint({}, cfg, "")]
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(
                f"'evaluate.grid.{key}' must be a non-empty list of values, got {values!r}."
            )
    points = []
    for combination in itertools.product(*grid.values()):
        overrides = dict(zip(grid.keys(), combination))
        label = ", ".join(f"{k}={_format_value(v)}" for k, v in overrides.items())
        try:
            point_cfg = replace(cfg, overrides)
        except ConfigError as exc:
            raise ConfigError(f"evaluate.grid combination ({label}): {exc}") from exc
        points.append(GridPoint(overrides, point_cfg, label))
    return points


def experiment_label(point: GridPoint) -> str:
    """The ``experiment`` column: ``cfg.name`` plus grid values without a column of their own
    (e.g. ``grid_lr [train.learning_rate=0.01]``)."""
    extra = {k: v for k, v in point.overrides.items() if k not in KEYED_GRID_FIELDS}
    if not extra:
        return point.cfg.name
    return f"{point.cfg.name} [" + ", ".join(
        f"{k}={_format_value(v)}" for k, v in extra.items()
    ) + "]"


def fold_seed(cfg: Config, split_position: int, run: int) -> int:
    """Seed of run ``run`` on the split at ``split_position`` (deterministic)."""
    return int(cfg.seed) + RUN_SEED_STRIDE * int(run) + int(split_position)


# ------------------------------------------------------------------------------ the loop


def _splits_key(cfg: Config) -> str:
    evaluate = {k: v for k, v in config_to_dict(cfg.evaluate).items() if k != "grid"}
    return records_key(cfg) + json.dumps(evaluate, sort_keys=True, default=str)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "x"


@dataclass
class _Plan:
    point: GridPoint
    experiment: str
    key_fields: dict[str, str]
    records: pd.DataFrame
    splits: list[Split]


def _confound_report(records: pd.DataFrame, splits: Sequence[Split]) -> list[dict[str, Any]]:
    from leukdx.evaluation.leakage import confound_warning, source_confound

    entries = []
    for split in splits:
        report = source_confound(records, split.train_idx)
        message = confound_warning(report)
        if message:
            warnings.warn(f"Training set of {split.name}: {message}", SourceConfoundWarning,
                          stacklevel=3)
        entries.append({
            "split": split.name,
            "protocol": split.protocol,
            "test_source": split.test_source,
            "fold": split.fold,
            "repeat": split.repeat,
            "n_train": split.n_train,
            "n_test": split.n_test,
            "confounded": message is not None,
            "warning": message,
            "source_confound": report,
        })
    return entries


def _make_plans(
    cfg: Config, points: Sequence[GridPoint], trainer: FoldTrainer, collection, progress: bool
) -> tuple[list[_Plan], dict[str, Any]]:
    """Records and splits of every grid point, checked for leakage before anything trains."""
    from leukdx.data.records import load_collection
    from leukdx.evaluation.leakage import assert_no_leakage

    collections: dict[str, Any] = {}
    split_sets: dict[str, tuple[pd.DataFrame, list[Split]]] = {}
    leakage: dict[str, Any] = {"experiment": cfg.name, "split_sets": []}
    plans = []
    for point in points:
        pcfg = point.cfg
        data_key = records_key(pcfg)
        if data_key not in collections:
            collections[data_key] = collection if collection is not None else load_collection(
                pcfg.data.root, pcfg.data, progress=progress, seed=pcfg.seed
            )
        splits_key = _splits_key(pcfg)
        if splits_key not in split_sets:
            records = collections[data_key].records.reset_index(drop=True)
            splits = make_splits(records, pcfg.evaluate, pcfg.seed)
            if not splits:
                raise ConfigError(f"evaluate.protocol {pcfg.evaluate.protocol!r} produced no "
                                  "splits for these data; check evaluate.test_sources.")
            assert_no_leakage(records, splits)  # fails loudly, before any training
            split_sets[splits_key] = (records, splits)
            leakage["split_sets"].append({
                "protocol": pcfg.evaluate.protocol,
                "configurations": [],
                "splits": _confound_report(records, splits),
            })
        records, splits = split_sets[splits_key]
        index = list(split_sets).index(splits_key)
        leakage["split_sets"][index]["configurations"].append(point.label or pcfg.name)
        plans.append(_Plan(point, experiment_label(point), trainer.key_fields(pcfg),
                           records, splits))
    leakage["no_leakage"] = True
    return plans, leakage


def _row_key(plan: _Plan, split: Split, run: int, seed: int) -> dict[str, Any]:
    return {
        "experiment": plan.experiment,
        **plan.key_fields,
        "protocol": split.protocol,
        "test_source": split.test_source,
        "fold": split.fold,
        "run": run,
        "seed": seed,
    }


def _free_memory() -> None:
    """Drop the graph and models of the last fold before the next one is built."""
    if "keras" in sys.modules:
        import keras

        keras.backend.clear_session()
    gc.collect()


# ------------------------------------------------------------------- the results folder


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _excluded(key: str, names: Sequence[str]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def result_settings(cfg: Config, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The settings of ``cfg`` that can change a fold's result, as dotted keys.

    Everything but :data:`NON_RESULT_KEYS` (and ``exclude``); ``data.root`` is resolved, so
    the same folder written relative or absolute is the same data.

    Args:
        cfg: a configuration.
        exclude: further dotted keys (or sections) to leave out.

    Example:
        >>> from leukdx.config import Config
        >>> "evaluate.runs" in result_settings(Config()), "train.epochs" in result_settings(Config())
        (False, True)
    """
    flat = _flatten(config_to_dict(cfg))
    if flat.get("data.root"):
        flat["data.root"] = str(Path(str(flat["data.root"])).expanduser().resolve())
    names = tuple(NON_RESULT_KEYS) + tuple(exclude)
    return {k: v for k, v in flat.items() if not _excluded(k, names)}


def config_hash(cfg: Config, inputs: str | None = None) -> str:
    """Hash of everything that can change the result of a fold trained with ``cfg``.

    Covers :func:`result_settings` (data, augment, model, train, evaluate protocol, seed, ...)
    and :data:`RESULTS_VERSION`; not ``evaluate.runs``, plots, verbosity, caches or executor
    settings. Every ``folds.csv`` row carries the hash of its grid point's config.

    ``inputs`` is what produced the fold's inputs where the settings cannot say it (a fold
    trainer's ``inputs_fingerprint``: e.g. the code that measures morphology features, or a
    weights file's sha256), so rows computed from other inputs under the same settings are
    never taken for these. ``None`` leaves the hash as it always was.

    Example:
        >>> from leukdx.config import Config, replace
        >>> base = Config()
        >>> config_hash(base) == config_hash(replace(base, {"evaluate.runs": 5}))
        True
        >>> config_hash(base) == config_hash(replace(base, {"train.epochs": 2}))
        False
    """
    settings = result_settings(cfg)
    # Settings at their default are left out (the data folder aside), so a setting added in a
    # later leukdx, whose default keeps the old behaviour, leaves earlier folders valid. A
    # change of a default's meaning bumps RESULTS_VERSION instead.
    defaults = _default_settings()
    material = {"results_version": RESULTS_VERSION,
                "settings": {k: v for k, v in settings.items()
                             if k == "data.root" or k not in defaults
                             or _canonical(defaults[k]) != _canonical(v)}}
    if inputs is not None:
        material["inputs"] = str(inputs)
    text = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _canonical(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _default_settings() -> dict[str, Any]:
    return result_settings(Config())


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ; a key one side lacks (a setting added in a later
    leukdx, or dropped) counts as its default there."""
    defaults = _default_settings()
    keys = sorted(set(saved) | set(current))
    return [k for k in keys
            if _canonical(saved.get(k, defaults.get(k))) != _canonical(current.get(k, defaults.get(k)))]


def _shown(keys: Sequence[str]) -> str:
    return ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")


def _refusal(out: Path, what: str) -> ResultsFolderError:
    return ResultsFolderError(
        f"{out} holds folds of a different configuration ({what}). Use another --out, or "
        f"--force to start a new ledger there (the old {FOLDS_FILE} is kept as "
        "folds.<timestamp>.csv)."
    )


def _check_saved_config(out: Path, results_cfg: Config) -> None:
    """Compare the folder's ``config.yaml`` with ``results_cfg`` (result-affecting keys)."""
    import yaml

    from leukdx.config import config_from_dict

    saved_path = out / CONFIG_FILE
    if not saved_path.is_file():
        return
    try:
        saved_cfg = config_from_dict(yaml.safe_load(saved_path.read_text()) or {})
    except (ConfigError, yaml.YAMLError) as exc:
        raise ResultsFolderError(
            f"{saved_path} cannot be read as a leukdx config ({exc}). Use another --out, or "
            "--force to start a new ledger there."
        ) from exc
    differing = _differences(result_settings(saved_cfg, FOLDER_ONLY_KEYS),
                             result_settings(results_cfg, FOLDER_ONLY_KEYS))
    if differing:
        raise _refusal(out, f"{_shown(differing)} differ")


def _hash_settings(out: Path, digest: str) -> dict[str, Any] | None:
    from leukdx.runinfo import read_json

    return read_json(out / HASHES_DIR / f"{digest}.json")


def _check_rows(out: Path, folds: pd.DataFrame, planned: Mapping[tuple[str, ...], Any]) -> None:
    """Refuse when a planned fold is in the ledger with another config hash."""
    for _, row in folds.iterrows():
        key = Ledger.key_of(row)
        if key not in planned:
            continue
        unit = planned[key]
        written = str(row.get("config_hash", "") or "")
        if written in ("", "nan"):
            raise _refusal(out, "its rows carry no config_hash: they were written by an "
                                "older leukdx and cannot be checked")
        if written == unit.config_hash:
            continue
        saved = _hash_settings(out, written)
        if saved is None:
            raise _refusal(out, f"config_hash {written} differs from {unit.config_hash}")
        differing = _differences(saved.get("settings", {}), result_settings(unit.cfg))
        if saved.get("inputs") != unit.inputs:
            differing.append(f"the fold inputs ({saved.get('inputs')} -> {unit.inputs}: "
                             "the code or file that produced them changed)")
        if saved.get("results_version") != RESULTS_VERSION:
            differing.append(f"leukdx results version {saved.get('results_version')} -> "
                             f"{RESULTS_VERSION}")
        raise _refusal(out, f"{_shown(differing or ['config_hash'])} differ")


def prepare_results_folder(
    out: str | Path, results_cfg: Config, *, force: bool = False
) -> Ledger:
    """Make ``out`` a results folder of ``results_cfg``: check, archive on ``force``, record.

    A folder holds one configuration: its ``config.yaml`` is compared with ``results_cfg`` on
    every result-affecting key (:func:`result_settings`, grid values and the list of feature
    classifiers aside, since each grid point's rows are checked by their ``config_hash``).
    With ``force`` the old ledger is kept as ``folds.<timestamp>.csv`` (its predictions as
    ``predictions.<timestamp>/``, its config as ``config.<timestamp>.yaml``) and a new one
    starts.

    Args:
        out: the results folder (created).
        results_cfg: the configuration the folder is to describe.
        force: start a new ledger when the folder holds another configuration.

    Returns:
        The folder's :class:`~leukdx.evaluation.ledger.Ledger`.

    Raises:
        ResultsFolderError: the folder holds another configuration and ``force`` is false.
    """
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / FOLDS_FILE)
    with ledger.locked():
        if force:
            archived = ledger.archive()
            if archived is not None:
                stamp = archived.name[len("folds."):-len(".csv")]
                for name, target in ((PREDICTIONS_DIR, f"{PREDICTIONS_DIR}.{stamp}"),
                                     (CONFIG_FILE, f"config.{stamp}.yaml")):
                    if (out / name).exists():
                        (out / name).rename(out / target)
                log.warning("Started a new ledger in %s; the old one is %s.", out, archived.name)
        elif ledger.done_keys():  # a folder without folds has nothing to mix with
            _check_saved_config(out, results_cfg)
        atomic_write_text(out / CONFIG_FILE,
                          yaml.safe_dump(config_to_dict(results_cfg), sort_keys=False))
    return ledger


def _record_hash(out: Path, cfg: Config, digest: str, inputs: str | None = None) -> None:
    """Keep what a hash stands for, so a later mismatch can name the differing keys."""
    path = out / HASHES_DIR / f"{digest}.json"
    if not path.is_file():
        write_json_atomic({"results_version": RESULTS_VERSION, "inputs": inputs,
                           "settings": result_settings(cfg)}, path)


# ------------------------------------------------------------------- one fold, pure


@dataclass
class FoldTask:
    """Everything needed to train and test one fold of one run (no ledger access).

    Attributes:
        cfg: the grid point's configuration.
        key: the ledger key columns of the fold.
        split: the split (train/test positions into ``records``).
        records: the records the split indexes (with labels).
        seed: the seed of this fold and run.
        config_hash: :func:`config_hash` of ``cfg`` (and ``inputs``).
        label: ``grid point | split | run`` for messages.
        inputs: the trainer's ``inputs_fingerprint`` of ``cfg`` (``None``: the settings
            say everything).
    """

    cfg: Config
    key: dict[str, Any]
    split: Split
    records: pd.DataFrame
    seed: int
    config_hash: str
    label: str
    inputs: str | None = None

    @property
    def key_text(self) -> tuple[str, ...]:
        return Ledger.key_of(self.key)


class FoldResult(NamedTuple):
    """What :func:`run_fold` returns: the ledger row and the per-image predictions.

    Attributes:
        row: the ``folds.csv`` row (key, sizes, counts, metrics, timings, provenance).
        predictions: ``path``, ``label``, ``probability`` of every test image.
    """

    row: dict[str, Any]
    predictions: pd.DataFrame


def class_balance_warning(train_records: pd.DataFrame, cfg: Config, where: str) -> str | None:
    """The one-line warning for a strongly imbalanced training set (> 2:1) trained with
    ``train.class_weight: none``; ``None`` when balanced enough or already weighted."""
    if cfg.train.class_weight != "none":
        return None
    labels = train_records["label"].to_numpy().astype(int)
    healthy, leukaemia = int((labels == 0).sum()), int((labels == 1).sum())
    if min(healthy, leukaemia) == 0:
        return None  # one class only: the trainer reports that itself
    ratio = max(healthy, leukaemia) / min(healthy, leukaemia)
    if ratio <= IMBALANCE_RATIO:
        return None
    return (f"The training set of {where} is imbalanced ({healthy} healthy : {leukaemia} "
            f"leukaemia, {ratio:.1f}:1) and train.class_weight is none; set "
            "train.class_weight: balanced to weight both classes equally.")


def run_fold(task: FoldTask, trainer: FoldTrainer, cache) -> FoldResult:
    """Train and test one fold; writes nothing (the driver alone writes the ledger).

    Args:
        task: the fold.
        trainer: how it is trained.
        cache: the ImageCache that decodes (once per image and size) its images.

    Returns:
        The fold's :class:`FoldResult`.

    Raises:
        RuntimeError: the trainer returned the wrong number of probabilities.
    """
    from leukdx.evaluation.metrics import binary_metrics

    cfg, split = task.cfg, task.split
    train_records = task.records.iloc[split.train_idx].reset_index(drop=True)
    test_records = task.records.iloc[split.test_idx].reset_index(drop=True)
    try:
        # Decoded once per image and setting by the shared cache. data.crop, data.tile and
        # data.stain_normalize apply here; the stain reference is fitted on this fold's
        # training images only, so the test source never shapes it.
        fold = cache.fold_images(train_records, test_records, cfg.data, seed=task.seed)
        output = FoldOutput(*trainer.fit_predict(
            cfg, fold.train_records, fold.train, fold.test_inputs, task.seed,
            test_records=test_records.drop(columns=["label"]),
        ))
    finally:
        if getattr(trainer, "builds_keras_models", True):
            _free_memory()
    probabilities = np.asarray(output.probabilities, dtype=np.float64).reshape(-1)
    if probabilities.size == len(fold.test_inputs) != len(test_records):
        # scores of whole images, tiles and cell crops -> one probability per test record
        probabilities = fold.test_probabilities(probabilities)
    if probabilities.size != len(test_records):
        raise RuntimeError(
            f"The fold trainer returned {probabilities.size} probabilities for "
            f"{len(test_records)} test images ({split.name})."
        )
    y_test = test_records["label"].to_numpy().astype(int)
    # a trainer may calibrate the fold's own threshold (train.calibrate)
    threshold = float((output.extra_columns or {}).get("threshold", cfg.train.threshold))
    metrics = binary_metrics(y_test, probabilities, threshold=threshold)
    keras_model = getattr(trainer, "builds_keras_models", True)
    jit = output.jit_compile
    if jit is None and keras_model:
        jit = getattr(cfg.train, "jit_compile", None)
    row = {
        **task.key,
        "n_train": int(output.n_fit) if output.n_fit is not None else split.n_train,
        "n_val": int(output.n_val) if output.n_val is not None else 0,
        "n_test": split.n_test,
        **metrics,
        "train_seconds": float(output.train_seconds),
        "infer_ms_per_image": float(output.infer_ms_per_image),
        "repeat": split.repeat,
        "config_hash": task.config_hash,
        "image_size": int(cfg.data.image_size),
        "epochs": int(cfg.train.epochs) if keras_model else None,
        "precision_policy": output.precision_policy or (cfg.train.precision if keras_model
                                                        else None),
        "jit_compile": jit,
        **dict(output.extra_columns or {}),
    }
    predictions = pd.DataFrame({"path": test_records["path"].astype(str).tolist(),
                                "label": y_test, "probability": probabilities})
    return FoldResult(row, predictions)


# ------------------------------------------------------------------- plan, estimate, ETA


def _duration(seconds: float) -> str:
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes:02d} min"


def _fit_cost(n_fit: float, epochs: float | None) -> float:
    """Work of one fit in image-epochs (the unit of the time estimate)."""
    return max(float(n_fit), 1.0) * max(float(epochs or 1), 1.0)


def _history_rates(out: Path, backbone: str, image_size: int) -> list[float]:
    """Seconds per image-epoch of earlier fits of the same backbone and image size: rows of
    this folder's ledgers (current and archived) and ``runs/*/run.json`` of ``leukdx train``."""
    from leukdx.runinfo import read_json

    rates: list[float] = []
    for path in sorted(out.glob("folds*.csv")):
        try:
            folds = Ledger(path).read()
        except LedgerError:
            continue
        if folds.empty or not {"backbone", "image_size", "train_seconds"} <= set(folds.columns):
            continue
        same = folds[(folds["backbone"].astype(str) == str(backbone))
                     & (pd.to_numeric(folds["image_size"], errors="coerce") == image_size)]
        for _, row in same.iterrows():
            seconds = pd.to_numeric(row.get("train_seconds"), errors="coerce")
            n_fit = pd.to_numeric(row.get("n_train"), errors="coerce")
            epochs = pd.to_numeric(row.get("epochs"), errors="coerce")
            if np.isfinite(seconds) and seconds > 0 and np.isfinite(n_fit) and n_fit > 0:
                rates.append(float(seconds) / _fit_cost(n_fit, epochs if np.isfinite(epochs)
                                                        else None))
    for path in sorted(Path("runs").glob("*/run.json"))[:200]:
        info = read_json(path) or {}
        data, model = info.get("data") or {}, info.get("model") or {}
        if model.get("backbone") != backbone or data.get("image_size") != image_size:
            continue
        n_fit = sum((data.get("n_train") or {}).values()) if isinstance(
            data.get("n_train"), dict) else 0
        seconds, epochs = info.get("train_seconds"), info.get("epochs_completed")
        if n_fit and epochs and isinstance(seconds, (int, float)) and seconds > 0:
            rates.append(float(seconds) / _fit_cost(n_fit, epochs))
    return rates


def _has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (imports TensorFlow; asked only for long plans)."""
    try:
        import tensorflow as tf
    except ImportError:
        return False
    return bool(tf.config.list_physical_devices("GPU"))


class _Progress:
    """Prints the plan, its time estimate, and ``fold k/N, elapsed, ETA`` as folds finish."""

    def __init__(self, units: Sequence[FoldTask], done: set[tuple[str, ...]], out: Path,
                 plans: Sequence[Any], keras_models: bool, progress: bool) -> None:
        self.units, self.out, self.progress = list(units), out, progress
        self.keras_models = keras_models
        self.total = len(self.units)
        self.to_train = [u for u in self.units if u.key_text not in done]
        self.skipped = self.total - len(self.to_train)
        self.plans = plans
        self.finished = self.skipped
        self.trained = 0
        self.start = time.perf_counter()
        self.training_seconds = 0.0
        self.estimate: float | None = None
        self.warned = False

    def say(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)
        else:
            log.info("%s", message)

    def _cost(self, unit: FoldTask) -> float:
        return _fit_cost(unit.split.n_train, unit.cfg.train.epochs if self.keras_models else None)

    def plan_line(self) -> str:
        runs = {p.point.cfg.evaluate.runs for p in self.plans}
        splits = {len(p.splits) for p in self.plans}
        if len(runs) == 1 and len(splits) == 1:
            shape = (f"{len(self.plans)} configuration(s) x {splits.pop()} split(s) x "
                     f"{runs.pop()} run(s) = {self.total} fits")
        else:
            shape = f"{self.total} fits over {len(self.plans)} configuration(s)"
        done = (f"{self.skipped} already in {FOLDS_FILE} (not retrained), "
                if self.skipped else "")
        return f"Plan: {shape}; {done}{len(self.to_train)} to train."

    def announce(self) -> None:
        self.say(self.plan_line())
        if not self.to_train:
            return
        first = self.to_train[0].cfg
        rates = _history_rates(self.out, first.model.backbone, int(first.data.image_size))
        if rates:
            rate = float(np.median(rates))
            self._set_estimate(rate * sum(self._cost(u) for u in self.to_train),
                               f"{len(rates)} earlier fit(s) of {first.model.backbone} at "
                               f"{first.data.image_size} px")
        elif self.keras_models:
            self.say("Estimated time: known after the first epoch.")

    def first_epoch(self, epoch: int, seconds: float, n_fit: int, basis: str = "epoch") -> None:
        """Epoch listener: the first epoch measured (or extrapolated from its first batches)
        sets the estimate when earlier fits gave none."""
        if self.estimate is not None or epoch != 0:
            return
        rate = seconds / _fit_cost(n_fit, 1)
        measured = ("a measured first epoch" if basis == "epoch" else
                    f"the first {EARLY_ESTIMATE_BATCHES + 1} batches of a first epoch")
        self._set_estimate(rate * sum(self._cost(u) for u in self.to_train),
                           f"{measured} of {_duration(seconds)}")

    def _set_estimate(self, seconds: float, basis: str) -> None:
        self.estimate = seconds
        self.say(f"Estimated time: about {_duration(seconds)} for {len(self.to_train)} "
                 f"fit(s) (from {basis}).")
        if self.keras_models and seconds > CPU_WARN_SECONDS and not self.warned:
            self.warned = True
            if not _has_gpu():
                warnings.warn(
                    f"This plan needs about {_duration(seconds)} on this CPU-only machine; "
                    "faster: a smaller data.image_size (e.g. 64 or 96), a lighter "
                    "model.backbone (mobilenetv3small), fewer evaluate.runs, or executor: ray "
                    "on a GPU machine.", SlowPlanWarning, stacklevel=4)

    def fold_done(self, task: FoldTask, row: Mapping[str, Any], seconds: float) -> None:
        self.finished += 1
        self.trained += 1
        self.training_seconds += seconds
        elapsed = time.perf_counter() - self.start
        left = self.to_train[self.trained:]
        per_cost = self.training_seconds / max(sum(self._cost(u) for u in
                                                   self.to_train[: self.trained]), 1.0)
        eta = per_cost * sum(self._cost(u) for u in left)
        self.say(f"fold {self.finished}/{self.total} {task.label}: accuracy "
                 f"{row['accuracy']:.3f}, MCC {row['mcc']:.3f}; elapsed {_duration(elapsed)}, "
                 f"ETA {_duration(eta) if left else 'done'}")

    def fold_elsewhere(self, task: FoldTask, how: str) -> None:
        self.finished += 1
        self.say(f"fold {self.finished}/{self.total} {task.label}: {how}")


# ------------------------------------------------------------------- the driver


def _write_fold(out: Path, ledger: Ledger, task: FoldTask, result: FoldResult) -> None:
    """Predictions first, then the row: a row in the ledger means its predictions exist."""
    if task.cfg.evaluate.save_predictions:
        preds = result.predictions
        write_predictions(out / PREDICTIONS_DIR / predictions_name(task.key),
                          preds["path"].tolist(), preds["label"].to_numpy(),
                          preds["probability"].to_numpy(),
                          threshold=float(result.row.get("threshold", task.cfg.train.threshold)))
    ledger.append(result.row)  # under the ledger lock; the fold is now safe from a crash


def _train_claimed(out, ledger, task, trainer, cache, progress_report) -> None:
    start = time.perf_counter()
    result = run_fold(task, trainer, cache)
    _write_fold(out, ledger, task, result)
    if progress_report is not None:
        progress_report.fold_done(task, result.row, time.perf_counter() - start)


def drive_folds(
    tasks: Sequence[FoldTask], ledger: Ledger, out: Path, trainer: FoldTrainer, cache,
    progress_report: _Progress | None = None,
) -> None:
    """Claim, train and record every task not yet in the ledger.

    A fold is claimed (:meth:`Ledger.try_claim`) before it trains, so workers sharing the
    folder split the folds; folds claimed by other workers are waited for at the end and
    trained here only if their worker died without finishing them. Its predictions are
    written while the claim is held, then its row is appended.

    Args:
        tasks: the folds of the plan (finished ones are skipped).
        ledger: the folder's ledger.
        out: the results folder (predictions go to ``out/predictions``).
        trainer: how folds are trained.
        cache: the ImageCache for :func:`run_fold`.
        progress_report: where progress is reported (the runner's; ``None``: nowhere).
    """

    def elsewhere_done(task: FoldTask) -> None:
        if progress_report is not None:
            progress_report.fold_elsewhere(task, "finished by another worker")

    done = ledger.done_keys()
    elsewhere: list[FoldTask] = []
    for task in tasks:
        if task.key_text in done:
            continue
        claim = ledger.try_claim(task.key)
        if claim is None:
            elsewhere.append(task)
            continue
        with claim:
            if ledger.has(task.key):
                elsewhere_done(task)
                continue
            _train_claimed(out, ledger, task, trainer, cache, progress_report)
    for task in elsewhere:
        with ledger.try_claim(task.key, timeout=-1):  # until its worker finishes or dies
            if ledger.has(task.key):
                elsewhere_done(task)
                continue
            _train_claimed(out, ledger, task, trainer, cache, progress_report)


def _write_plots(
    out: Path, folds: pd.DataFrame, prediction_files: Mapping[tuple[str, ...], Path]
) -> list[Path]:
    """Confusion matrix and ROC per configuration and test source, metric bars overall."""
    from leukdx.evaluation.ledger import CONFIG_COLUMNS, config_labels
    from leukdx.evaluation.metrics import confusion
    from leukdx.plots import plot_confusion_matrix, plot_metric_bars, plot_roc

    plots = out / PLOTS_DIR
    written: list[Path] = []
    summary = summarize(folds)
    written.append(plot_metric_bars(summary, plots / "metrics.png"))
    if not prediction_files:
        return written
    config_columns = [c for c in CONFIG_COLUMNS if c in folds.columns]
    labels = config_labels(folds[config_columns].drop_duplicates().reset_index(drop=True))
    distinct = folds[config_columns].drop_duplicates().reset_index(drop=True)
    for i, config in distinct.iterrows():
        rows = folds[(folds[config_columns] == config.values).all(axis=1)]
        label = labels[i]
        curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        fold_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for test_source, block in rows.groupby("test_source", sort=False):
            frames = []
            for _, row in block.iterrows():
                path = prediction_files.get(Ledger.key_of(row))
                if path is not None and path.is_file():
                    frames.append(read_predictions(path))
            if not frames:
                continue
            pooled = pd.concat(frames, ignore_index=True)
            y = pooled["label"].astype(int).to_numpy()
            p = pooled["probability"].to_numpy(dtype=np.float64)
            counts = confusion(y, pooled["prediction"].astype(int).to_numpy())
            stem = _slug(f"{label}__{test_source}")
            written.append(plot_confusion_matrix(
                counts, plots / f"confusion__{stem}.png",
                title=f"{label} — {test_source} ({len(block)} fold runs pooled)",
            ))
            curves[str(test_source)] = (y, p)
            # one faint curve per fold run shows how much the pooled curve varies
            fold_curves[str(test_source)] = [
                (f["label"].astype(int).to_numpy(), f["probability"].to_numpy(dtype=np.float64))
                for f in frames
            ]
        if curves:
            written.append(plot_roc(curves, plots / f"roc__{_slug(label)}.png",
                                    title=f"ROC — {label}", folds=fold_curves))
    return written


def run_evaluation(
    cfg: Config,
    out_dir: str | Path,
    *,
    cache=None,
    progress: bool = True,
    trainer: FoldTrainer | None = None,
    collection=None,
    force: bool = False,
    results_config: Config | None = None,
    print_summary: bool = True,
) -> pd.DataFrame:
    """Run the whole evaluation (every grid point, split and run) into ``out_dir``.

    Prints the plan first (configurations x splits x runs = fits, how many are already in
    the ledger, an estimate of the time), then ``fold k/N, elapsed, ETA`` per fold. Several
    processes may run the same evaluation into one folder: they split the folds.

    Args:
        cfg: the experiment config (``evaluate`` chooses protocol, runs and grid).
        out_dir: results folder (created); re-using it resumes an interrupted evaluation of
            the same configuration and refuses another one.
        cache: an ``ImageCache`` to share with other work; by default one is made from
            ``data.cache`` and shared by every fold, run and grid point.
        progress: print the plan, per-fold progress and the summary table (else they are
            logged at INFO).
        trainer: how folds are trained; default :func:`get_trainer` of ``cfg.task``.
        collection: an already loaded ``Collection`` (used for every grid point).
        force: when the folder holds another configuration, keep its ledger as
            ``folds.<timestamp>.csv`` and start a new one.
        results_config: the configuration the folder records in ``config.yaml`` and checks
            against (default ``cfg``; ``leukdx features`` passes the user's config).
        print_summary: with ``progress``, print ``summary.md`` at the end.

    Returns:
        The folds of this evaluation's plan (one row per configuration, split and run),
        including those finished by earlier invocations; ``summary.*`` and plots cover
        exactly these rows.

    Raises:
        LeakageError: a split shares images between training and test.
        ConfigError: an invalid grid combination or unknown task.
        ResultsFolderError: the folder holds folds of another configuration (without
            ``force``); the message names the differing settings.
    """
    out = Path(out_dir)
    trainer = trainer if trainer is not None else get_trainer(cfg.task)
    points = expand_grid(cfg)
    ledger = prepare_results_folder(out, results_config or cfg, force=force)
    plans, leakage = _make_plans(cfg, points, trainer, collection, progress)
    write_json_atomic(leakage, out / LEAKAGE_FILE)

    tasks: list[FoldTask] = []
    keras_models = bool(getattr(trainer, "builds_keras_models", True))
    for plan in plans:
        pcfg = plan.point.cfg
        fingerprint = getattr(trainer, "inputs_fingerprint", None)
        inputs = fingerprint(pcfg) if fingerprint is not None else None
        digest = config_hash(pcfg, inputs)
        _record_hash(out, pcfg, digest, inputs)
        for position, split in enumerate(plan.splits):
            if keras_models:
                message = class_balance_warning(
                    plan.records.iloc[split.train_idx], pcfg, split.name)
                if message:
                    warnings.warn(message, ClassImbalanceWarning, stacklevel=2)
            for run in range(pcfg.evaluate.runs):
                seed = fold_seed(pcfg, position, run)
                tasks.append(FoldTask(
                    cfg=pcfg, key=_row_key(plan, split, run, seed), split=split,
                    records=plan.records, seed=seed, config_hash=digest, inputs=inputs,
                    label=" | ".join(p for p in (plan.point.label, split.name, f"run {run}")
                                     if p),
                ))
    planned = {task.key_text: task for task in tasks}
    if not force:
        _check_rows(out, ledger.read(), planned)

    done = ledger.done_keys()
    report = _Progress(tasks, done, out, plans, keras_models, progress)
    report.announce()
    if len(report.to_train):
        from leukdx.evaluation.executors import get_executor

        if hasattr(trainer, "epoch_listener"):
            trainer.epoch_listener = report.first_epoch
        # local: drive_folds here; ray: one task per fold, rows still written here only
        get_executor(cfg, progress=progress).run(tasks, ledger, out, trainer, cache, report)

    folds = ledger.read()
    mine = [Ledger.key_of(r) in planned
            and str(r.get("config_hash", "")) == planned[Ledger.key_of(r)].config_hash
            for _, r in folds.iterrows()]
    folds = folds[mine].reset_index(drop=True) if len(folds) else folds
    if folds.empty:
        return folds
    prediction_files = {
        key: out / PREDICTIONS_DIR / predictions_name(task.key)
        for key, task in planned.items() if task.cfg.evaluate.save_predictions
    }
    with ledger.locked():  # one worker at a time writes the reports
        write_summary(folds, out)
        if cfg.evaluate.plots:
            _write_plots(out, folds, prediction_files)
    if progress and print_summary:
        print((out / "summary.md").read_text())
    return folds
