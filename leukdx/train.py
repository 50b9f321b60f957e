"""Fit a network and keep everything about the run in one folder (``leukdx train``).

A run folder holds::

    config.yaml     the fully resolved config
    model.keras     the best checkpoint (lowest val_loss; lowest loss without validation)
    history.csv     one row per epoch (metrics, learning rate, epoch_seconds)
    curves.png      training/validation accuracy and loss per epoch (LeukNet Fig. 7)
    run.json        versions, seed, data fingerprint, class counts, device, precision,
                    XLA (jit_compile), distribution strategy, training time, inference ms per image (Table 8),
                    epochs completed, best validation metrics
    backup/         training state while the run is unfinished (removed when it finishes)
    tensorboard/    TensorBoard logs (``train.tensorboard``)

Re-running the same command on the same folder resumes a killed run at its last finished
epoch (Keras ``BackupAndRestore``), and returns at once when the run already finished. A
finished run keeps no training state, so re-running it with another ``train.epochs`` is
refused (``force`` retrains it from scratch).

Nothing is written before the inputs are checked: the config against the registries, the
pretrained weights, the run folder, and every image is decoded first. A run that fails before
its first epoch is backed up removes the files it wrote, so the corrected command starts clean.

The pieces the evaluation runner reuses for every fold are public: :func:`compile_model`,
:func:`fit_model`, :func:`predict_proba`, :func:`measure_inference_ms`, :func:`class_weights`.

Example:
    >>> from leukdx.config import load_config
    >>> from leukdx.train import train_run
    >>> cfg = load_config("configs/demo.yaml", overrides=["train.epochs=2"])
    >>> result = train_run(cfg, "runs/demo")            # doctest: +SKIP
    >>> result.info["epochs_completed"]                  # doctest: +SKIP
    2
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from leukdx.config import Config, ConfigError, TrainConfig, config_to_dict, save_config
from leukdx.errors import RunFolderError
from leukdx.io import atomic_write_csv
from leukdx.runinfo import device_info, read_json, software_versions, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras
    import tensorflow as tf

__all__ = [
    "INFERENCE_BATCH_SIZE",
    "RunFolderError",
    "RunResult",
    "class_weights",
    "compile_model",
    "distribution_strategy",
    "fit_model",
    "load_model",
    "make_optimizer",
    "measure_inference_ms",
    "predict_proba",
    "predict_timed",
    "train_run",
    "validation_indices",
]

log = logging.getLogger(__name__)

# LeukNet Table 8 reports the time to classify one image; we time batches of 32.
INFERENCE_BATCH_SIZE = 32
# Images timed for the inference figure when there is no validation set to time on.
INFERENCE_SAMPLE = 256

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
RUN_FILE = "run.json"
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"

# Settings that may change between an interrupted run and its resumption without changing
# what is being trained (how long, how verbose, where decoded images are cached).
RESUMABLE_CHANGES = frozenset(
    {
        "name",
        "train.epochs",
        "train.verbose",
        "train.tensorboard",
        "train.jit_compile",
        "data.cache",
        "data.cache_dir",
        "data.workers",
        "evaluate",
        "features",
    }
)


@dataclass
class RunResult:
    """What :func:`train_run` produced.

    Attributes:
        run_dir: the run folder.
        info: the contents of ``run.json``.
        history: ``history.csv`` as a DataFrame (one row per epoch).
        model: the trained model with the best checkpoint's weights; ``None`` when the run
            had already finished and was not retrained (use :meth:`load`).
        skipped: True when a finished run was found and nothing was trained.
        resumed_from_epoch: epochs already done before this call (0 for a fresh run).
        precision: the Keras dtype policy the run trained under (``train.precision``
            resolved).
        jit_compile: whether training was XLA-compiled (``train.jit_compile`` resolved).
    """

    run_dir: Path
    info: dict[str, Any]
    history: pd.DataFrame
    model: keras.Model | None = None
    skipped: bool = False
    resumed_from_epoch: int = 0
    precision: str | None = None
    jit_compile: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        """Path of the best checkpoint, ``model.keras``."""
        return self.run_dir / MODEL_FILE

    def load(self) -> keras.Model:
        """The model (loaded from ``model.keras`` when not in memory)."""
        if self.model is None:
            self.model = load_model(self.model_path)
        return self.model


# --------------------------------------------------------------------------- model helpers


def load_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """:func:`leukdx.models.io.load_model`, kept here for callers of ``leukdx.train``.

    Importing :mod:`leukdx.train` does not import Keras; this imports it on first use.
    """
    from leukdx.models.io import load_model as load

    return load(path, compile=compile)


def make_optimizer(train_cfg: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimizer named by ``train.optimizer`` with ``train.learning_rate``."""
    import keras

    lr = float(train_cfg.learning_rate)
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=float(train_cfg.momentum))
    if train_cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if train_cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    raise ConfigError(
        f"'train.optimizer' is {train_cfg.optimizer!r}; choose one of sgd, adam, rmsprop."
    )


def compile_model(model: keras.Model, train_cfg: TrainConfig) -> keras.Model:
    """Compile ``model`` with the configured optimizer, loss and metrics.

    Metrics: accuracy, AUC, precision and recall at ``train.threshold``. XLA follows
    ``train.jit_compile`` (:func:`leukdx.precision.resolve_jit_compile`; after compiling,
    ``model.jit_compile`` says what Keras chose). Under the
    ``mixed_float16`` policy the optimizer is wrapped in a ``LossScaleOptimizer`` so that
    small float16 gradients do not underflow (Keras does this for models whose own policy
    is mixed_float16; wrapping here also covers models built before the policy was set).
    Call inside ``strategy.scope()`` when distributing.

    Args:
        model: an uncompiled (or to-be-recompiled) model with a sigmoid output.
        train_cfg: the ``train`` section.

    Returns:
        The same model, compiled.
    """
    import keras

    from leukdx.precision import resolve_jit_compile

    optimizer = make_optimizer(train_cfg)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    threshold = float(train_cfg.threshold)
    model.compile(
        jit_compile=resolve_jit_compile(train_cfg.jit_compile),
        optimizer=optimizer,
        loss=train_cfg.loss,
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy", threshold=threshold),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision", thresholds=threshold),
            keras.metrics.Recall(name="recall", thresholds=threshold),
        ],
    )
    return model


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Per-class loss weights: ``balanced`` gives each class the same total weight.

    Args:
        labels: 0/1 training labels.
        mode: ``none`` or ``balanced`` (``train.class_weight``).

    Returns:
        ``{0: w0, 1: w1}`` with ``w_c = n / (2 * n_c)`` (scikit-learn's
        ``compute_class_weight('balanced')``), or ``None`` for ``none``.

    Example:
        >>> class_weights(np.array([0, 0, 0, 1]), "balanced")
        {0: 0.6666666666666666, 1: 2.0}
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise ConfigError(f"'train.class_weight' is {mode!r}; choose none or balanced.")
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ConfigError(
            "'train.class_weight: balanced' needs both classes in the training set; "
            f"found {int(counts[0])} healthy and {int(counts[1])} leukaemia images."
        )
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)
    return {c: float(weights[c]) for c in (0, 1)}


def distribution_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``train.distribution``.

    ``auto`` mirrors over all GPUs when more than one is visible and otherwise uses the
    default (single-device) strategy; ``multi_worker`` reads the cluster from ``TF_CONFIG``.

    Args:
        name: ``auto``, ``none``, ``mirrored`` or ``multi_worker``.

    Returns:
        A strategy whose ``scope()`` the model must be built and compiled in.
    """
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "auto":
        if len(tf.config.list_logical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "'train.distribution: multi_worker' needs the TF_CONFIG environment variable "
                "describing the cluster (see tf.distribute.MultiWorkerMirroredStrategy)."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(
        f"'train.distribution' is {name!r}; choose auto, none, mirrored or multi_worker."
    )


def _strategy_name(strategy: tf.distribute.Strategy) -> str:
    return f"{type(strategy).__name__} ({strategy.num_replicas_in_sync} replica(s))"


def _worker_folder() -> str | None:
    """``None`` for the chief; a per-task folder name for other multi-worker tasks.

    Every worker of a ``MultiWorkerMirroredStrategy`` runs the callbacks, so the non-chief
    ones write their (identical) files to a folder of their own instead of the run folder.
    """
    spec = os.environ.get("TF_CONFIG")
    if not spec:
        return None
    try:
        parsed = json.loads(spec)
    except ValueError:
        return None
    task, cluster = parsed.get("task", {}), parsed.get("cluster", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster):
        return None
    return f".{kind}-{index}"


# ------------------------------------------------------------------------------ callbacks


def _callback_classes():
    """Small callbacks, defined lazily so importing this module does not import Keras."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` to the epoch logs (so it lands in history.csv)."""

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self._start

    class RestoreBest(keras.callbacks.Callback):
        """Keeps the weights of the best epoch in memory and restores them at the end.

        The in-memory counterpart of the best-model checkpoint, for fold training where
        no files are written.
        """

        def __init__(self, monitor: str):
            super().__init__()
            self.monitor = monitor
            self.best = np.inf
            self.best_weights = None

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is not None and np.isfinite(value) and value < self.best:
                self.best = float(value)
                self.best_weights = self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return EpochTimer, RestoreBest


def _backup_epoch(backup_dir: Path) -> int:
    """Epochs finished according to a BackupAndRestore folder (0 when there is none)."""
    meta = read_json(backup_dir / "training_metadata.json")
    if not meta or not (backup_dir / "latest.weights.h5").is_file():
        return 0
    return int(meta.get("epoch", 0))


def _read_history(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch"])
    history = pd.read_csv(path)
    if "epoch" in history:
        # A run killed between logging and backing up an epoch logs it twice; keep the last.
        history = history.drop_duplicates("epoch", keep="last").sort_values("epoch")
    return history.reset_index(drop=True)


def _truncate_history(path: Path, epochs_done: int) -> pd.DataFrame:
    """Keep only history rows of epochs the backup restores, so resumed rows do not repeat."""
    history = _read_history(path)
    if history.empty:
        path.unlink(missing_ok=True)
        return history
    kept = history[history["epoch"] < epochs_done]
    atomic_write_csv(path, kept)
    return kept.reset_index(drop=True)


def fit_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    cfg: Config,
    out_dir: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    *,
    class_weight: dict[int, float] | None = None,
    best_so_far: float | None = None,
) -> keras.callbacks.History:
    """Fit a compiled model for ``train.epochs`` epochs with the configured callbacks.

    Always: ``epoch_seconds`` in the logs, ``EarlyStopping`` / ``ReduceLROnPlateau`` when
    their patience is set. The monitored quantity is ``val_loss`` (``loss`` without
    validation). At the end the model holds the weights of its best epoch.

    With ``out_dir`` (a run folder) also: best-model checkpoint ``model.keras``, CSV log
    ``history.csv`` (appended, for resumption), ``BackupAndRestore`` in ``backup/`` and
    TensorBoard logs when ``train.tensorboard``. Without ``out_dir`` (evaluation folds)
    nothing is written and the best weights are kept in memory.

    Args:
        model: a model compiled with :func:`compile_model`.
        train_ds: training batches ``(images, labels)`` (see ``pipeline.make_dataset``).
        val_ds: validation batches or ``None``.
        cfg: the whole config (``train`` settings are used).
        out_dir: run folder, or ``None`` for no files.
        callbacks: extra callbacks, run after the built-in ones.
        class_weight: per-class loss weights (see :func:`class_weights`).
        best_so_far: best monitored value of epochs done before a resumption, so the
            checkpoint is not overwritten by a worse epoch.

    Returns:
        The Keras ``History`` of this call (resumed epochs only).
    """
    import keras

    train_cfg = cfg.train
    monitor = "val_loss" if val_ds is not None else "loss"
    epoch_timer, restore_best = _callback_classes()
    built: list[keras.callbacks.Callback] = [epoch_timer()]
    if train_cfg.reduce_lr_patience is not None:
        built.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=0.5, patience=int(train_cfg.reduce_lr_patience),
                verbose=int(train_cfg.verbose > 0),
            )
        )
    if train_cfg.early_stopping_patience is not None:
        built.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=int(train_cfg.early_stopping_patience),
                verbose=int(train_cfg.verbose > 0),
            )
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        built += [
            # The log is written before the backup, so a run killed in between logs an
            # epoch twice (deduplicated when resuming) rather than not at all.
            keras.callbacks.CSVLogger(str(out / HISTORY_FILE), append=True),
            keras.callbacks.ModelCheckpoint(
                str(out / MODEL_FILE), monitor=monitor, mode="min", save_best_only=True,
                initial_value_threshold=best_so_far,
            ),
            keras.callbacks.BackupAndRestore(str(out / BACKUP_DIR), delete_checkpoint=False),
        ]
        if train_cfg.tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                log.warning("train.tensorboard is on but the tensorboard package is not "
                            "installed (pip install tensorboard); no TensorBoard logs written.")
            else:
                built.append(keras.callbacks.TensorBoard(log_dir=str(out / TENSORBOARD_DIR)))
    else:
        built.append(restore_best(monitor))
    return model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=int(train_cfg.epochs),
        callbacks=built + list(callbacks),
        class_weight=class_weight,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
        verbose=int(train_cfg.verbose),
    )


def predict_proba(
    model: keras.Model, images: np.ndarray, batch_size: int = INFERENCE_BATCH_SIZE
) -> np.ndarray:
    """P(leukaemia) for each image.

    Args:
        model: a leukdx model (input float32 [0, 255] images, output (B, 1) sigmoid).
        images: (N, S, S, 3) uint8 or float images.
        batch_size: images per forward pass.

    Returns:
        float64 array of shape (N,).
    """
    from leukdx.data.pipeline import make_dataset

    images = np.asarray(images)
    n, batch_size = len(images), int(batch_size)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    # Every batch has the same shape (the last one padded with copies of the first image),
    # so the prediction function is traced once, not again for each new remainder size.
    pad = (-n) % batch_size
    if pad:
        images = np.concatenate([images, np.repeat(images[:1], pad, axis=0)])
    dataset = make_dataset(images, batch_size=batch_size)
    probabilities = model.predict(dataset, verbose=0)
    return np.asarray(probabilities, dtype=np.float64).reshape(-1)[:n]


def predict_timed(
    model: keras.Model, images: np.ndarray, batch_size: int = INFERENCE_BATCH_SIZE
) -> tuple[np.ndarray, float]:
    """:func:`predict_proba` plus the milliseconds per image it took (LeukNet Table 8).

    One batch is predicted first and not timed, so graph tracing does not count.

    Returns:
        ``(probabilities (N,), ms_per_image)``; NaN ms when there are no images.
    """
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros(0, dtype=np.float64), float("nan")
    predict_proba(model, images[:batch_size], batch_size)  # warm-up: trace and allocate
    start = time.perf_counter()
    probabilities = predict_proba(model, images, batch_size)
    return probabilities, (time.perf_counter() - start) * 1000.0 / len(images)


def measure_inference_ms(
    model: keras.Model,
    images: np.ndarray,
    batch_size: int = INFERENCE_BATCH_SIZE,
    max_images: int | None = INFERENCE_SAMPLE,
) -> float:
    """Milliseconds per image to classify ``images`` at ``batch_size`` (LeukNet Table 8).

    Args:
        model: the model to time.
        images: images to classify (the first ``max_images`` are timed).
        batch_size: images per forward pass.
        max_images: cap on the timed images; ``None`` times them all.

    Returns:
        Wall-clock milliseconds per image (after a warm-up batch), NaN without images.
    """
    images = np.asarray(images)
    if max_images is not None:
        images = images[:max_images]
    return predict_timed(model, images, batch_size)[1]


# ------------------------------------------------------------------------------ data


def _class_counts(labels: np.ndarray) -> dict[str, int]:
    labels = np.asarray(labels).astype(int)
    return {"healthy": int((labels == 0).sum()), "leukaemia": int((labels == 1).sum())}


def validation_indices(
    records: pd.DataFrame, train_cfg: TrainConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``records``) of the training and validation images.

    ``train.validation_source`` makes that source the validation set; otherwise
    ``train.validation_split`` holds out that fraction of the groups (grouped and
    stratified, so no group straddles the two); ``0`` means no validation.

    Args:
        records: the training records (never the test fold).
        train_cfg: the ``train`` section.
        seed: seed of the split.

    Returns:
        ``(train_positions, validation_positions)``; the latter may be empty.
    """
    positions = np.arange(len(records))
    if train_cfg.validation_source:
        name = train_cfg.validation_source
        is_val = (records["source"] == name).to_numpy()
        if not is_val.any():
            raise ConfigError(
                f"'train.validation_source' is {name!r} but no training image comes from it; "
                f"sources present: {', '.join(sorted(records['source'].unique()))}."
            )
        return positions[~is_val], positions[is_val]
    if train_cfg.validation_split <= 0:
        return positions, positions[:0]
    from leukdx.evaluation.splits import validation_split

    groups = records["group"].astype(str).to_numpy() if "group" in records else None
    train_pos, val_pos = validation_split(
        records["label"].to_numpy(), groups, train_cfg.validation_split, seed=seed
    )
    return np.asarray(train_pos, dtype=int), np.asarray(val_pos, dtype=int)


def make_image_cache(cfg: Config, *, progress: bool = True):
    """The ImageCache the config asks for (``data.cache: disk`` keeps it under
    ``data.cache_dir``)."""
    from leukdx.data.pipeline import ImageCache

    return ImageCache.from_config(cfg.data, progress=progress)


def _augmentation(cfg: Config, seed: int):
    from leukdx.data.augment import build_augmentation

    return build_augmentation(cfg.augment.preset, cfg.data.image_size, seed=seed,
                              strength=cfg.augment.strength)


def build_compiled_model(cfg: Config, strategy=None, augmentation=None) -> keras.Model:
    """Build ``cfg.model`` and compile it inside the distribution strategy's scope.

    Args:
        cfg: the whole config.
        strategy: a ``tf.distribute`` strategy; ``None`` uses the default one.
        augmentation: augmentation layers to put inside the model
            (``augment.placement: model``), or ``None``.

    Returns:
        The compiled model.
    """
    import tensorflow as tf

    from leukdx.models import build_model

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(cfg.model, cfg.data.image_size, augmentation=augmentation)
        compile_model(model, cfg.train)
    return model


def make_training_datasets(
    cfg: Config,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray | None,
    val_labels: np.ndarray | None,
    seed: int,
):
    """tf.data pipelines for fitting, plus the augmentation meant for the model (if any).

    Returns:
        ``(train_ds, val_ds_or_None, model_augmentation_or_None)``.
    """
    from leukdx.data.pipeline import make_dataset

    augmentation = _augmentation(cfg, seed)
    in_model = cfg.augment.placement == "model"
    train_ds = make_dataset(
        train_images,
        np.asarray(train_labels),
        batch_size=cfg.train.batch_size,
        training=True,
        seed=seed,
        augmentation=None if in_model else augmentation,
        expand=cfg.augment.expand,
    )
    val_ds = None
    if val_images is not None and len(val_images):
        val_ds = make_dataset(val_images, np.asarray(val_labels), batch_size=cfg.train.batch_size)
    return train_ds, val_ds, (augmentation if in_model else None)


# ------------------------------------------------------------------------------ run folder


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name not in ("evaluate.grid",):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring settings a resumption may change."""
    a, b = _flatten(saved), _flatten(current)
    for flat in (a, b):  # the same folder written relative or absolute is the same data
        if flat.get("data.root"):
            flat["data.root"] = str(Path(str(flat["data.root"])).expanduser().resolve())
    keys = sorted(set(a) | set(b))
    return [
        k
        for k in keys
        if a.get(k) != b.get(k)
        and k not in RESUMABLE_CHANGES
        and k.split(".")[0] not in RESUMABLE_CHANGES
    ]


def _clear_run_folder(out: Path, *, config: bool = False) -> None:
    names = (MODEL_FILE, HISTORY_FILE, CURVES_FILE, RUN_FILE) + ((CONFIG_FILE,) if config else ())
    for name in names:
        (out / name).unlink(missing_ok=True)
    for name in (BACKUP_DIR, TENSORBOARD_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def _has_training(out: Path) -> bool:
    """Whether ``out`` holds anything trained (a config.yaml alone is a run that never began)."""
    return (
        (out / MODEL_FILE).is_file()
        or (out / RUN_FILE).is_file()
        or _backup_epoch(out / BACKUP_DIR) > 0
        or not _read_history(out / HISTORY_FILE).empty
    )


def _finished_result(out: Path, cfg: Config) -> RunResult | None:
    """The finished run in ``out`` matching ``cfg``, or None when there is none.

    Raises:
        RunFolderError: the run finished with another ``train.epochs``.
    """
    info = read_json(out / RUN_FILE)
    if not info or info.get("status") != "finished":
        return None
    planned = int(info.get("epochs_planned", -1))
    if planned != int(cfg.train.epochs):
        raise RunFolderError(
            f"{out} holds a run that finished {planned} epochs, but train.epochs is now "
            f"{cfg.train.epochs}; a finished run keeps no training state to continue from. "
            f"Use --force to train {cfg.train.epochs} epochs from scratch there, or another "
            "output folder."
        )
    return RunResult(out, info, _read_history(out / HISTORY_FILE), skipped=True,
                     precision=info.get("precision"), jit_compile=info.get("jit_compile"))


def _check_same_run(out: Path, cfg: Config) -> None:
    saved_path = out / CONFIG_FILE
    if not saved_path.is_file() or not _has_training(out):
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    differences = _config_differences(saved, config_to_dict(cfg))
    if differences:
        shown = ", ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
        raise RunFolderError(
            f"{out} holds a run with a different config ({shown} differ). Use another output "
            "folder, or --force to discard that run and train afresh."
        )


def _best_epoch(history: pd.DataFrame, monitor: str) -> dict[str, Any]:
    if history.empty or monitor not in history:
        return {}
    values = pd.to_numeric(history[monitor], errors="coerce")
    if values.notna().sum() == 0:
        return {}
    row = history.loc[values.idxmin()]
    # 0-based, the numbering of history.csv's `epoch` column and of curves.png
    out = {"epoch": int(row["epoch"]), "monitor": monitor}
    for key, value in row.items():
        if key != "epoch" and key != "epoch_seconds":
            out[str(key)] = float(value) if pd.notna(value) else None
    return out


def _plot_curves(
    history: pd.DataFrame, path: Path, best_epoch: int | None, labels: np.ndarray
) -> None:
    """curves.png, marking the kept epoch and the accuracy of always answering the
    majority class of ``labels`` (those the validation accuracy is measured on)."""
    from leukdx.plots import plot_curves

    counts = np.bincount(np.asarray(labels, dtype=int).reshape(-1), minlength=2)
    majority = None
    if counts.sum():
        majority = (("healthy", "leukaemia")[int(counts.argmax())],
                    float(counts.max() / counts.sum()))
    plot_curves(history, path, best_epoch=best_epoch, majority_baseline=majority)


def _start_run_folder(out: Path, write_dir: Path, cfg: Config,
                      force: bool) -> tuple[int, pd.DataFrame]:
    """Create (or clear, with ``force``) the run folder and find where training resumes.

    Returns:
        The epochs already done (from the backup; 0 for a fresh start) and the history rows
        of those epochs. ``config.yaml`` is written.
    """
    out.mkdir(parents=True, exist_ok=True)
    if force:
        _clear_run_folder(out)
    write_dir.mkdir(parents=True, exist_ok=True)
    epochs_done = _backup_epoch(write_dir / BACKUP_DIR)
    if epochs_done == 0:
        if _has_training(write_dir):
            log.warning("%s holds a run that was killed before its first epoch was backed "
                        "up; training afresh.", out)
        # No usable backup: whatever partial files exist belong to a run that cannot resume.
        _clear_run_folder(write_dir)
        prior_history = pd.DataFrame(columns=["epoch"])
    else:
        prior_history = _truncate_history(write_dir / HISTORY_FILE, epochs_done)
        log.info("Resuming %s after epoch %d of %d.", out, epochs_done, cfg.train.epochs)
    save_config(cfg, write_dir / CONFIG_FILE)
    return epochs_done, prior_history


def _run_info(cfg: Config, collection, records: pd.DataFrame, train_labels: np.ndarray,
              val_labels: np.ndarray, model: keras.Model, history: pd.DataFrame, monitor: str,
              *, precision: str, jit_compile: bool, strategy, class_weight,
              epochs_done: int, infer_ms: float) -> dict[str, Any]:
    """The facts of a finished run, as written to ``run.json``."""
    epochs_completed = int(history["epoch"].max()) + 1 if not history.empty else 0
    seconds = (
        float(pd.to_numeric(history["epoch_seconds"], errors="coerce").sum())
        if "epoch_seconds" in history
        else float("nan")
    )
    info = {
        "status": "finished",
        "name": cfg.name,
        "versions": software_versions(),
        "seed": int(cfg.seed),
        "data": {
            "root": str(cfg.data.root),
            "fingerprint": collection.fingerprint,
            "sources": sorted(records["source"].unique().tolist()),
            "image_size": int(cfg.data.image_size),
            "n_train": _class_counts(train_labels),
            "n_val": _class_counts(val_labels),
            "validation": (
                f"source {cfg.train.validation_source}" if cfg.train.validation_source
                else f"grouped split {cfg.train.validation_split:g}"
            ),
        },
        "model": {
            "backbone": cfg.model.backbone,
            "strategy": cfg.model.strategy,
            "weights": cfg.model.weights,
            "parameters": int(model.count_params()),
            "trainable_parameters": int(
                sum(int(np.prod(w.shape)) for w in model.trainable_weights)
            ),
        },
        "device": device_info(),
        "precision": precision,
        "jit_compile": jit_compile,
        "distribution": _strategy_name(strategy),
        "class_weight": class_weight,
        "epochs_planned": int(cfg.train.epochs),
        "epochs_completed": epochs_completed,
        "resumed_from_epoch": epochs_done,
        "train_seconds": seconds,
        "infer_ms_per_image": infer_ms,
        "infer_batch_size": INFERENCE_BATCH_SIZE,
        "best": _best_epoch(history, monitor),
    }
    return info


def _withhold_calibration_source(
    records: pd.DataFrame, cfg: Config
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train.calibrate: unseen_source``: split off one healthy-only source (drawn with the
    seed, :func:`leukdx.evaluation.splits.withheld_for_calibration`) - exactly as an
    evaluation fold does - so the threshold is set on a lab the model never trained on.

    Returns:
        ``(records to train and validate on, calibration records)`` (the latter empty when
        calibration is off or no healthy-only source exists, which is logged).
    """
    from leukdx.evaluation.splits import withheld_for_calibration

    held, source = withheld_for_calibration(records, cfg.train.calibrate, int(cfg.seed))
    if source is not None:
        log.info("Withholding %s (%d healthy images) to calibrate the threshold.", source,
                 int(held.sum()))
    return records[~held].reset_index(drop=True), records[held].reset_index(drop=True)


def _calibrate_threshold(model, fold, n_val: int, calibration_records: pd.DataFrame,
                         cfg: Config) -> dict[str, Any]:
    """The ``train.calibration_specificity`` quantile of P(leukaemia) over the withheld
    source's images, each scored as evaluation and ``leukdx predict`` score it (its cell crops
    aggregated, ``evaluate.tta`` views averaged). Empty without calibration records."""
    if len(calibration_records) == 0:
        return {}
    from leukdx.tta import predict_proba_tta

    probs = predict_proba_tta(model, fold.test_inputs, int(cfg.evaluate.tta),
                              INFERENCE_BATCH_SIZE)
    scores = fold.test_probabilities(probs)[n_val:]
    threshold = float(np.quantile(scores, cfg.train.calibration_specificity))
    return {
        "source": str(calibration_records["source"].iloc[0]),
        "n_images": len(calibration_records),
        "specificity": float(cfg.train.calibration_specificity),
        "threshold": threshold,
    }


def train_run(
    cfg: Config,
    out_dir: str | os.PathLike,
    cache=None,
    collection=None,
    *,
    force: bool = False,
    progress: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> RunResult:
    """Train one model on a collection and write its run folder.

    Steps: load records (``data``), hold out validation (``train.validation_split`` grouped,
    or ``train.validation_source``), decode through the shared cache, apply the precision
    policy and distribution strategy, build + compile (``model``, ``train``), fit with
    checkpoint / CSV log / backup / TensorBoard, then write curves and ``run.json``.

    Re-running with the same folder resumes an interrupted run at its last finished epoch;
    a finished run (``run.json`` status finished, same ``train.epochs``) is returned without
    training unless ``force``. The config (:func:`leukdx.config.validate_config`), the
    weights, the folder and the images are checked before anything is written, and a run
    that fails before its first epoch is backed up removes what it wrote.

    Args:
        cfg: the experiment config.
        out_dir: run folder (created).
        cache: an ``ImageCache`` to reuse; by default one is made from ``data.cache``.
        collection: an already loaded ``Collection``; by default ``data.root`` is loaded.
        force: discard whatever the folder holds and train from scratch.
        progress: show progress while scanning and decoding images.
        callbacks: extra Keras callbacks (run after the built-in ones).

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: a setting names something unregistered or does not fit the backbone.
        WeightsUnavailableError: the pretrained weights cannot be had.
        RunFolderError: the folder holds a run with a different config, or a run finished
            with another ``train.epochs`` (and not ``force``).
        DataError: fewer than two classes in the training data, or an unreadable image.
    """
    import keras

    from leukdx.config import validate_config
    from leukdx.data.records import load_collection, require_two_classes
    from leukdx.precision import apply_precision

    out = Path(out_dir)
    # Non-chief multi-worker tasks train in lockstep but keep their files apart.
    worker = _worker_folder()
    write_dir = out if worker is None else out / worker

    # Check every input before writing (or deleting) anything, so a mistake found here
    # leaves the folder as it was and the corrected command starts clean.
    validate_config(cfg, check_weights=True)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out} is a file, not a run folder; choose another output folder.")
    if not force:
        _check_same_run(out, cfg)
        finished = _finished_result(out, cfg)
        if finished is not None:
            log.info("%s already holds a finished run of %d epochs; not retraining "
                     "(use --force to retrain).", out, cfg.train.epochs)
            return finished

    keras.utils.set_random_seed(int(cfg.seed))
    if collection is None:
        collection = load_collection(cfg.data.root, cfg.data, progress=progress, seed=cfg.seed)
    records = collection.records.reset_index(drop=True)
    require_two_classes(records, f"the training data ({cfg.data.root})")
    records, calibration_records = _withhold_calibration_source(records, cfg)

    train_pos, val_pos = validation_indices(records, cfg.train, seed=int(cfg.seed))
    train_records = records.iloc[train_pos].reset_index(drop=True)
    require_two_classes(train_records, "the training part (after holding out validation)")

    cache = cache if cache is not None else make_image_cache(cfg, progress=progress)
    # the fold path of the evaluator: crops, cell windows, training-only stain reference
    held_out = pd.concat([records.iloc[val_pos], calibration_records], ignore_index=True)
    fold = cache.fold_images(train_records, held_out, cfg.data, seed=int(cfg.seed))
    train_images = fold.train
    train_labels = fold.train_records["label"].to_numpy().astype(np.float32)
    val_images = fold.test[: len(val_pos)]
    val_labels = records["label"].to_numpy().astype(np.float32)[val_pos]
    weights = class_weights(train_labels, cfg.train.class_weight)

    # The inputs are valid: from here on the run folder is written.
    created = not out.exists()
    epochs_done, prior_history = _start_run_folder(out, write_dir, cfg, force)

    previous_policy = keras.mixed_precision.global_policy()
    try:
        policy_name = apply_precision(cfg.train.precision)
        strategy = distribution_strategy(cfg.train.distribution)
        train_ds, val_ds, model_augmentation = make_training_datasets(
            cfg, train_images, train_labels, val_images, val_labels, seed=int(cfg.seed)
        )
        model = build_compiled_model(cfg, strategy, model_augmentation)
        jit_compile = bool(model.jit_compile)
        monitor = "val_loss" if val_ds is not None else "loss"
        best_so_far = None
        if not prior_history.empty and monitor in prior_history:
            best_so_far = float(pd.to_numeric(prior_history[monitor], errors="coerce").min())

        fit_model(
            model, train_ds, val_ds, cfg, out_dir=write_dir, callbacks=callbacks,
            class_weight=weights, best_so_far=best_so_far,
        )

        model_path = write_dir / MODEL_FILE
        if model_path.is_file():
            model.load_weights(model_path)  # the best epoch, possibly from before a resume
        else:  # no finite monitored value ever: keep the last weights
            model.save(model_path)
        history = _read_history(write_dir / HISTORY_FILE)
        timing_images = val_images if len(val_images) else train_images
        infer_ms = measure_inference_ms(model, timing_images)
        calibration = _calibrate_threshold(model, fold, len(val_pos), calibration_records, cfg)
    except BaseException:
        if _backup_epoch(write_dir / BACKUP_DIR) == 0:
            # Nothing a re-run could resume: leave no half-made run behind to block it.
            _clear_run_folder(write_dir, config=True)
            leftovers = ([write_dir] if write_dir != out else []) + ([out] if created else [])
            for folder in leftovers:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    log.info("Wrote %s", model_path)
    _plot_curves(history, write_dir / CURVES_FILE,
                 _best_epoch(history, monitor).get("epoch"),
                 val_labels if val_labels is not None and len(val_labels) else train_labels)
    # every source the run looked at, the calibration source included (leakage checks)
    seen = pd.concat([records, calibration_records], ignore_index=True)
    info = _run_info(
        cfg, collection, seen, train_labels, val_labels, model, history, monitor,
        precision=policy_name, jit_compile=jit_compile, strategy=strategy,
        class_weight=weights, epochs_done=epochs_done, infer_ms=infer_ms,
    )
    if calibration:
        info["calibration"] = calibration
    if fold.stain_reference is not None:
        from leukdx.data.inputs import STAIN_REFERENCE_FILE

        # leukdx predict / export normalise new images to the same reference
        write_json_atomic(fold.stain_reference.to_dict(), write_dir / STAIN_REFERENCE_FILE)
    write_json_atomic(info, write_dir / RUN_FILE)
    # The run is complete: its resumption state is no longer needed.
    shutil.rmtree(write_dir / BACKUP_DIR, ignore_errors=True)
    return RunResult(write_dir, info, history, model=model, resumed_from_epoch=epochs_done,
                     precision=policy_name, jit_compile=jit_compile)
