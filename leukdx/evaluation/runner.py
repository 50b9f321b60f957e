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

Output folder::

    folds.csv               one row per (configuration, split, run): metrics, timings
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

from leukdx.config import Config, ConfigError, config_to_dict, replace
from leukdx.evaluation.ledger import (
    FOLD_KEY_COLUMNS,
    Ledger,
    read_predictions,
    summarize,
    write_predictions,
    write_summary,
)
from leukdx.evaluation.splits import Split, make_splits
from leukdx.runinfo import write_json_atomic

__all__ = [
    "FineTuneTrainer",
    "FoldOutput",
    "FoldTrainer",
    "GridPoint",
    "SourceConfoundWarning",
    "expand_grid",
    "fold_seed",
    "get_trainer",
    "head_label",
    "register_trainer",
    "run_evaluation",
]

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.csv"
LEAKAGE_FILE = "leakage.json"
PREDICTIONS_DIR = "predictions"
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


class SourceConfoundWarning(UserWarning):
    """A training set's label can be predicted from its source alone."""


# ------------------------------------------------------------------------------ trainers


class FoldOutput(NamedTuple):
    """What a trainer returns for one fold of one run.

    Attributes:
        probabilities: P(leukaemia) of each test image, shape (n_test,).
        train_seconds: wall-clock seconds spent training.
        infer_ms_per_image: milliseconds per test image at prediction.
    """

    probabilities: np.ndarray
    train_seconds: float
    infer_ms_per_image: float


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
            test_images: (M, S, S, 3) uint8.
            seed: the seed of this fold and run.
            test_records: records of the test images without their ``label`` column
                (paths and hashes identify them; labels stay with the runner).

        Returns:
            A :class:`FoldOutput` (a plain ``(probabilities, train_seconds, infer_ms)`` tuple
            is accepted too).
        """
        ...


_TRAINERS: dict[str, Callable[[], FoldTrainer]] = {}


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
    """The registered trainer for ``task`` (``finetune``; ``features`` once its module is in).

    Raises:
        ConfigError: no trainer is registered for the task.
    """
    if task not in _TRAINERS and task == "features":
        import importlib

        try:  # the deep-features package registers its trainer when imported
            importlib.import_module("leukdx.features")
        except ImportError:
            pass
    if task not in _TRAINERS:
        raise ConfigError(
            f"'task' is {task!r} but no fold trainer is registered for it; registered: "
            f"{', '.join(sorted(_TRAINERS))}."
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
    """

    def __init__(self, callbacks: Sequence[Any] = ()):
        self.callbacks = list(callbacks)

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
            predict_timed,
        )

        train_records = train_records.reset_index(drop=True)
        keras.utils.set_random_seed(int(seed))
        fit_pos, val_pos = self._validation(cfg, train_records, seed)
        require_two_classes(train_records.iloc[fit_pos], "the fold's training part")
        labels = train_records["label"].to_numpy().astype(np.float32)

        previous_policy = keras.mixed_precision.global_policy()
        try:
            apply_precision(cfg.train.precision)
            strategy = distribution_strategy(cfg.train.distribution)
            train_ds, val_ds, model_augmentation = make_training_datasets(
                cfg, train_images[fit_pos], labels[fit_pos],
                train_images[val_pos], labels[val_pos], seed=int(seed),
            )
            model = build_compiled_model(cfg, strategy, model_augmentation)
            start = time.perf_counter()
            fit_model(
                model, train_ds, val_ds, cfg, callbacks=self.callbacks,
                class_weight=class_weights(labels[fit_pos], cfg.train.class_weight),
            )
            train_seconds = time.perf_counter() - start
            probabilities, infer_ms = predict_timed(model, test_images)
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        return FoldOutput(probabilities, train_seconds, infer_ms)


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


# Data settings that change what images are loaded (image size and caching only change how).
_DECODE_ONLY = ("image_size", "aspect", "cache", "cache_dir", "workers")


def _data_key(cfg: Config) -> str:
    data = {k: v for k, v in config_to_dict(cfg.data).items() if k not in _DECODE_ONLY}
    return json.dumps({"data": data, "seed": cfg.seed}, sort_keys=True, default=str)


def _splits_key(cfg: Config) -> str:
    evaluate = {k: v for k, v in config_to_dict(cfg.evaluate).items() if k != "grid"}
    return _data_key(cfg) + json.dumps(evaluate, sort_keys=True, default=str)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "x"


def predictions_name(row: Mapping[str, Any]) -> str:
    """File name of a fold's predictions, made from its ledger key."""
    name = "__".join(_slug(row[c]) for c in FOLD_KEY_COLUMNS)
    if len(name) > 180:  # keep within file-name limits, still unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = name[:160] + "__" + digest
    return name + ".csv"


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
        data_key = _data_key(pcfg)
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


def _write_plots(
    out: Path, folds: pd.DataFrame, prediction_files: Mapping[tuple[str, ...], Path]
) -> list[Path]:
    """Confusion matrix and ROC per configuration and test source, metric bars overall."""
    from leukdx.evaluation.ledger import CONFIG_COLUMNS, config_labels
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
            pred = pooled["prediction"].astype(int).to_numpy()
            counts = {
                "tp": int(((pred == 1) & (y == 1)).sum()),
                "tn": int(((pred == 0) & (y == 0)).sum()),
                "fp": int(((pred == 1) & (y == 0)).sum()),
                "fn": int(((pred == 0) & (y == 1)).sum()),
            }
            stem = _slug(f"{label}__{test_source}")
            written.append(plot_confusion_matrix(
                counts, plots / f"confusion__{stem}.png",
                title=f"{label} — {test_source} ({len(block)} fold runs pooled)",
            ))
            curves[str(test_source)] = (y, p)
        if curves:
            written.append(plot_roc(curves, plots / f"roc__{_slug(label)}.png",
                                    title=f"ROC — {label}"))
    return written


def run_evaluation(
    cfg: Config,
    out_dir: str | Path,
    *,
    cache=None,
    progress: bool = True,
    trainer: FoldTrainer | None = None,
    collection=None,
) -> pd.DataFrame:
    """Run the whole evaluation (every grid point, split and run) into ``out_dir``.

    Args:
        cfg: the experiment config (``evaluate`` chooses protocol, runs and grid).
        out_dir: results folder (created); re-using it resumes an interrupted evaluation.
        cache: an ``ImageCache`` to share with other work; by default one is made from
            ``data.cache`` and shared by every fold, run and grid point.
        progress: progress bars and the printed summary table.
        trainer: how folds are trained; default :func:`get_trainer` of ``cfg.task``.
        collection: an already loaded ``Collection`` (used for every grid point).

    Returns:
        The folds of this evaluation (one row per configuration, split and run), including
        those finished by earlier invocations.

    Raises:
        LeakageError: a split shares images between training and test.
        ConfigError: an invalid grid combination or unknown task.
    """
    from tqdm.auto import tqdm

    from leukdx.evaluation.metrics import binary_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = trainer if trainer is not None else get_trainer(cfg.task)
    points = expand_grid(cfg)
    plans, leakage = _make_plans(cfg, points, trainer, collection, progress)
    write_json_atomic(leakage, out / LEAKAGE_FILE)

    if cache is None:
        from leukdx.data.pipeline import ImageCache

        cache = ImageCache.from_config(cfg.data, progress=progress)
    ledger = Ledger(out / FOLDS_FILE)
    done = ledger.done_keys()
    units = [
        (plan, position, split, run)
        for plan in plans
        for position, split in enumerate(plan.splits)
        for run in range(plan.point.cfg.evaluate.runs)
    ]
    planned_keys: list[tuple[str, ...]] = []
    prediction_files: dict[tuple[str, ...], Path] = {}
    bar = tqdm(total=len(units), desc=f"Evaluating {cfg.name}", unit="fold",
               disable=None if progress else True)
    try:
        for plan, position, split, run in units:
            pcfg = plan.point.cfg
            seed = fold_seed(pcfg, position, run)
            key = _row_key(plan, split, run, seed)
            key_text = Ledger.key_of(key)
            planned_keys.append(key_text)
            prediction_path = out / PREDICTIONS_DIR / predictions_name(key)
            if pcfg.evaluate.save_predictions:
                prediction_files[key_text] = prediction_path
            if key_text in done:  # finished by an earlier invocation: never retrain
                bar.update(1)
                continue
            bar.set_postfix_str(f"{plan.point.label or pcfg.name} | {split.name} | run {run}")
            train_records = plan.records.iloc[split.train_idx].reset_index(drop=True)
            test_records = plan.records.iloc[split.test_idx].reset_index(drop=True)
            size, aspect = pcfg.data.image_size, pcfg.data.aspect
            try:
                # decoded once per image and size by the shared cache; copied per fold
                output = FoldOutput(*trainer.fit_predict(
                    pcfg, train_records, cache.get(train_records, size, aspect),
                    cache.get(test_records, size, aspect), seed,
                    test_records=test_records.drop(columns=["label"]),
                ))
            finally:
                if getattr(trainer, "builds_keras_models", True):
                    _free_memory()
            probabilities = np.asarray(output.probabilities, dtype=np.float64).reshape(-1)
            if probabilities.size != len(test_records):
                raise RuntimeError(
                    f"The fold trainer returned {probabilities.size} probabilities for "
                    f"{len(test_records)} test images ({split.name})."
                )
            y_test = test_records["label"].to_numpy().astype(int)
            metrics = binary_metrics(y_test, probabilities, threshold=pcfg.train.threshold)
            if pcfg.evaluate.save_predictions:
                write_predictions(prediction_path, test_records["path"].tolist(), y_test,
                                  probabilities, threshold=pcfg.train.threshold)
            row = {
                **key,
                "n_train": split.n_train,
                "n_test": split.n_test,
                **metrics,
                "train_seconds": float(output.train_seconds),
                "infer_ms_per_image": float(output.infer_ms_per_image),
                "repeat": split.repeat,
            }
            ledger.append(row)  # atomic: the fold is now safe from a crash
            done.add(key_text)
            log.info("%s %s run %d: accuracy %.3f, MCC %.3f", plan.experiment, split.name, run,
                     metrics["accuracy"], metrics["mcc"])
            bar.update(1)
    finally:
        bar.close()

    folds = ledger.read()
    wanted = set(planned_keys)
    folds = folds[[Ledger.key_of(r) in wanted for _, r in folds.iterrows()]].reset_index(drop=True)
    if folds.empty:
        return folds
    write_summary(out / FOLDS_FILE, out)
    if cfg.evaluate.plots:
        _write_plots(out, folds, prediction_files)
    if progress:
        print((out / "summary.md").read_text())
    return folds
