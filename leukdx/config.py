"""The one place that reads experiment configuration.

A config is a YAML file whose top-level sections map onto the dataclasses below. Every
key is validated: an unknown or misspelt key is an error that names it and suggests the
nearest valid key. Command-line overrides use dotted paths (``--set data.image_size=64``),
and a config may inherit another with ``extends: other.yaml`` (paths relative to the file).

Example:
    >>> from leukdx.config import load_config
    >>> cfg = load_config("configs/demo.yaml", overrides=["train.epochs=1"])
    >>> cfg.train.epochs
    1
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from leukdx.errors import ConfigError
from leukdx.io import atomic_write_text

__all__ = [
    "FEATURE_EXTRACTORS",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "CellConfig",
    "DataConfig",
    "TileConfig",
    "EvaluateConfig",
    "FeaturesConfig",
    "HeadConfig",
    "ModelConfig",
    "PretrainConfig",
    "RayConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "records_key",
    "save_config",
    "validate_config",
]


# Class-folder names recognised by the ``folders`` layout (compared case-insensitively).
DEFAULT_CLASS_ALIASES: dict[str, list[str]] = {
    "healthy": ["healthy", "normal", "benign", "hem", "0"],
    "leukemia": ["leukemia", "leukaemia", "all", "blast", "cancer", "1"],
}


@dataclass
class TileConfig:
    """Cutting whole-field sources into cell-sized tiles (:mod:`leukdx.data.tiles`).

    Args:
        sources: sources whose images are tiled (e.g. ``[all_idb1]``); empty: no tiling.
        size_px: tile side in the file's own pixels (ALL-IDB2 cuts 257-px cells from the
            ALL-IDB1 fields).
        stride_px: step between tiles in pixels; ``None`` is ``size_px`` (no overlap).
        aggregate: how tile probabilities become one per image: ``mean``, ``max`` or
            ``topk`` (mean of the ``top_k`` highest).
        top_k: tiles averaged by ``topk``.
        label_tiles: also train on tiles, each labelled with its field's label. Off by
            default because a tile of a leukaemic field can hold only normal cells; training
            then sees the whole field with its image-level label.
    """

    sources: list[str] = field(default_factory=list)
    size_px: int = 256
    stride_px: int | None = None
    aggregate: str = "mean"
    top_k: int = 3
    label_tiles: bool = False


@dataclass
class CellConfig:
    """Nucleus-centred crops of ``data.crop: cell`` (:mod:`leukdx.data.cells`).

    Args:
        scale: crop side in nucleus diameters (at least 1); the nucleus fills about
            ``1 / scale`` of the side. In red-cell diameters with ``scale_by: red_cell``.
        scale_by: ``nucleus`` (each window sized by its own nucleus) or ``red_cell`` (every
            window of an image sized by the image's red-cell diameter, so large nuclei stay
            large; the nucleus rule where no red cell can be measured).
        max_cells: crops per image at most (its largest nuclei).
        aggregate: how the crop probabilities of a test image become one: ``max`` (a field
            is leukaemic if any of its cells is a blast), ``mean`` or ``topk``.
        top_k: crops averaged by ``topk``.
    """

    scale: float = 2.2
    scale_by: str = "nucleus"
    max_cells: int = 8
    aggregate: str = "max"
    top_k: int = 3


@dataclass
class DataConfig:
    """Where the images are and how they become tensors.

    Args:
        root: a collection folder (sub-folders are sources) or a single source folder.
        sources: restrict to these sources (names of sub-folders); ``None`` means all.
        merge_sources: treat several folders as one source, e.g.
            ``{all_idb: [all_idb1, all_idb2]}`` (same slides and patients).
        layout: ``auto``, ``folders``, ``allidb`` or ``manifest``; ``layouts`` overrides it
            per source.
        class_aliases: class-folder names for the ``folders`` layout.
        manifest: file name of the CSV manifest (``path,label[,group]``) of the manifest layout.
        image_size: square side in pixels the images are resized to.
        aspect: ``stretch`` (as the papers did) or ``pad`` (keep aspect, pad with zeros).
        cache: ``memory`` or ``disk`` (decoded arrays keyed by content hash and size).
        cache_dir: folder of the disk cache.
        on_bad_image: ``error`` (stop, naming the file) or ``skip`` (skip and report).
        max_per_class: keep at most this many images per source and class (seeded), for
            quick runs; ``None`` keeps all.
        near_duplicate_distance: dHash (16x16) Hamming distance at or below which two images
            are near duplicates and share a group; ``-1`` disables near-duplicate grouping.
        recrop_similarity: overlap similarity (0-1, :func:`leukdx.data.dedup.recrop_pairs`)
            at or above which two crops of the same picture, shifted by some pixels, share a
            group; ``None`` disables the re-crop search.
        workers: decoding threads; ``None`` uses the CPU count.
        stain_normalize: ``none``, ``reinhard`` or ``macenko``: map each image's colours
            onto a reference fitted per fold on the training images only
            (:mod:`leukdx.data.stain`).
        crop: ``none``, ``center`` (keep the central ``crop_fraction`` of each side) or
            ``cell`` (crops centred on each white-cell nucleus, :class:`CellConfig`) for the
            ``crop_sources`` images (all sources when ``None``).
        crop_fraction: kept share of each side for ``crop: center``, in (0, 1].
        crop_sources: sources that are centre- or cell-cropped; ``None`` means all.
        tile: tiling of whole-field sources at test time (:class:`TileConfig`).
        cell: nucleus-centred crops of ``crop: cell`` (:class:`CellConfig`).
    """

    root: str = "../shared/data"
    sources: list[str] | None = None
    merge_sources: dict[str, list[str]] = field(default_factory=dict)
    layout: str = "auto"
    layouts: dict[str, str] = field(default_factory=dict)
    class_aliases: dict[str, list[str]] = field(
        default_factory=lambda: copy.deepcopy(DEFAULT_CLASS_ALIASES)
    )
    manifest: str = "manifest.csv"
    image_size: int = 224
    aspect: str = "stretch"
    cache: str = "memory"
    cache_dir: str = ".leukdx_cache"
    on_bad_image: str = "error"
    max_per_class: int | None = None
    near_duplicate_distance: int = 12
    recrop_similarity: float | None = 0.5
    workers: int | None = None
    stain_normalize: str = "none"
    crop: str = "none"
    crop_fraction: float = 0.5
    crop_sources: list[str] | None = None
    tile: TileConfig = field(default_factory=TileConfig)
    cell: CellConfig = field(default_factory=CellConfig)


@dataclass
class AugmentConfig:
    """Training-time augmentation.

    Args:
        preset: ``leuknet`` (LeukNet §3.2), ``loey`` (Loey et al. §3.1.1), ``stain``
            (HED + colour jitter), ``leuknet_stain`` (leuknet then stain), ``generalise``
            (strong geometric, scale, stain, blur and JPEG jitter), ``randstainna`` (LAB
            styles from the fold's training images) or ``none``; see
            :mod:`leukdx.data.augment`.
        expand: augmented passes over the training set per epoch (LeukNet used a 20x
            larger training set).
        placement: ``pipeline`` (tf.data, batched, reproducible whatever the thread count)
            or ``model`` (inside the model, so it runs on the accelerator; reproducible only
            single-threaded).
        strength: multiplier of the magnitudes of ``stain``, ``leuknet_stain``,
            ``generalise`` and ``randstainna`` (0 = identity, 2 = twice as strong); the paper
            presets ignore it.
    """

    preset: str = "leuknet"
    expand: int = 1
    placement: str = "pipeline"
    strength: float = 1.0

    def __post_init__(self):
        if self.strength < 0:
            raise ConfigError(
                f"'augment.strength' is {self.strength}; it must be 0 or more (1 = default)."
            )


@dataclass
class HeadConfig:
    """New dense layers of mSFT/mDFT.

    Args:
        units: sizes of the new dense layers; ``None`` uses the backbone's paper default
            (VGG/AlexNet 1024/256, ResNet50/InceptionV3 1024, Xception 128).
        dropout: dropout after each new dense layer (one value per unit, or one for all).
    """

    units: list[int] | None = None
    dropout: list[float] | None = None


@dataclass
class ModelConfig:
    """Backbone, fine-tuning strategy and head.

    Args:
        backbone: a registered backbone name (``leukdx.models.list_backbones()``).
        strategy: ``sft``, ``dft``, ``msft`` or ``mdft``.
        weights: ``imagenet``, ``none`` or a path to a local weights file.
        head: the new dense layers (mSFT/mDFT).
        frozen_blocks: convolutional blocks frozen by SFT, counted from the input.
        norm: normalisation layers of a backbone that has BatchNormalization: ``batch`` (as
            built), ``group`` (GroupNormalization) or ``layer`` (LayerNormalization over
            channels). ``group``/``layer`` need a backbone trained from scratch or weights
            saved by ``leukdx pretrain`` with the same norm.
    """

    backbone: str = "vgg16"
    strategy: str = "mdft"
    weights: str = "imagenet"
    head: HeadConfig = field(default_factory=HeadConfig)
    frozen_blocks: int = 3
    norm: str = "batch"


@dataclass
class TrainConfig:
    """How a model is fitted.

    Args:
        epochs: training epochs.
        batch_size: images per step.
        optimizer: ``sgd``, ``adam`` or ``rmsprop``.
        learning_rate: initial learning rate.
        momentum: SGD momentum.
        loss: Keras loss name.
        validation_split: fraction of the training groups held out for validation
            (grouped and stratified); ``0`` disables validation.
        validation_source: use this source as the validation set instead of a split.
        precision: ``auto``, ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
        jit_compile: XLA compilation of training and prediction: ``auto`` (off on a
            CPU-only machine, where it measured several times slower; on a GPU Keras decides
            per model), ``true`` or ``false`` (see :func:`leukdx.precision.resolve_jit_compile`).
        distribution: ``auto`` (MirroredStrategy when >1 GPU), ``none``, ``mirrored`` or
            ``multi_worker``.
        early_stopping_patience: epochs without val_loss improvement before stopping;
            ``None`` disables.
        reduce_lr_patience: epochs without improvement before halving the learning rate;
            ``None`` disables.
        class_weight: ``none`` or ``balanced``.
        threshold: probability at or above which an image is called leukaemia.
        calibrate: how an evaluation fold sets its threshold: ``none`` (``threshold``) or
            ``unseen_source``: one healthy-only training source (chosen by the fold's seed)
            is withheld from fitting, and the threshold is the ``calibration_specificity``
            quantile of its P(leukaemia), so images of a lab the model never saw are called
            healthy at that specificity. Probabilities shrink on unseen sources, so a fixed
            0.5 calls every image of a new lab healthy even when the ranking is right.
        calibration_specificity: the specificity the ``unseen_source`` threshold aims at.
        label_sources: which of an evaluation fold's training sources the classifier is
            fitted on: ``all``, or ``two_class``: only sources that hold both classes, so
            that no source's look alone predicts the label (with healthy-only sources in
            training, "unlike the one leukaemia source" is a shortcut to "healthy"). The
            single-class sources still serve ``pretrain.per_fold`` (as unlabelled images)
            and ``calibrate: unseen_source``.
        tensorboard: write TensorBoard logs in the run folder.
        verbose: Keras progress output (0 silent, 1 progress bar, 2 one line per epoch).
    """

    epochs: int = 50
    batch_size: int = 32
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    momentum: float = 0.8
    loss: str = "binary_crossentropy"
    validation_split: float = 0.25
    validation_source: str | None = None
    precision: str = "auto"
    jit_compile: bool | str = "auto"
    distribution: str = "auto"
    early_stopping_patience: int | None = None
    reduce_lr_patience: int | None = None
    class_weight: str = "none"
    threshold: float = 0.5
    calibrate: str = "none"
    calibration_specificity: float = 0.95
    label_sources: str = "all"
    tensorboard: bool = True
    verbose: int = 1


@dataclass
class RayConfig:
    """How ``evaluate.executor: ray`` runs folds.

    Args:
        address: the Ray cluster: ``null`` starts a local Ray instance, ``auto`` joins the
            one ``ray start`` made on this machine, ``ray://HOST:10001`` a remote one.
        num_cpus_per_fold: CPUs each fold's task asks for.
        num_gpus_per_fold: GPUs each fold's task asks for; ``auto``: 1 when the cluster has
            GPUs, else 0.
        max_retries: times Ray re-runs a fold whose worker died.
    """

    address: str | None = None
    num_cpus_per_fold: float = 1.0
    num_gpus_per_fold: float | str = "auto"
    max_retries: int = 2


@dataclass
class EvaluateConfig:
    """Cross-dataset evaluation protocol.

    Args:
        protocol: ``lodo``, ``kfold``, ``holdout`` or ``external``.
        test_sources: ``lodo``: sources to hold out (default: every two-class source);
            ``external``: the test sources; ``kfold``/``holdout``: split inside each listed
            source separately (LeukNet Table 10) instead of over the pooled data.
        train_sources: ``external``: the training sources (default: all others).
        linked_sources: ``lodo``: sets of sources that share slides or patients; while one is
            tested the others are not trained on (e.g. ``[[all_idb1, all_idb2]]``).
        k: folds of ``kfold``.
        repeats: repetitions of ``kfold`` with different shuffles.
        test_fraction: test share of ``holdout``.
        runs: independent runs (seeds) per fold.
        grid: dotted config keys mapped to lists of values; every combination is one
            configuration, e.g. ``{model.backbone: [vgg16, resnet50]}``.
        save_predictions: write per-fold predictions CSVs.
        plots: write PNG plots.
        tta: test-time augmentation: average P(leukaemia) over the first ``tta`` of the 8
            flips/rotations by 90 degrees (:mod:`leukdx.tta`); ``1`` predicts plainly.
        adapt_bn: ``test_source``: before scoring a test source, set every BatchNorm layer's
            statistics to those of that source's images (AdaBN, label-free;
            :mod:`leukdx.models.adabn`); ``none`` keeps the training statistics.
        executor: where folds train: ``local`` (one after another in this process) or
            ``ray`` (one Ray task per fold, side by side; :mod:`leukdx.evaluation.executors`).
        ray: settings of ``executor: ray`` (:class:`RayConfig`).
    """

    protocol: str = "lodo"
    test_sources: list[str] | None = None
    train_sources: list[str] | None = None
    linked_sources: list[list[str]] = field(default_factory=list)
    k: int = 5
    repeats: int = 1
    test_fraction: float = 0.2
    runs: int = 1
    grid: dict[str, list[Any]] = field(default_factory=dict)
    save_predictions: bool = True
    plots: bool = True
    tta: int = 1
    adapt_bn: str = "none"
    executor: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)


#: ``features.extractor`` values: a network's activations, or measured nuclear morphology.
FEATURE_EXTRACTORS: tuple[str, ...] = ("network", "morphology")


@dataclass
class FeaturesConfig:
    """Deep features + classic classifiers (Loey model 1) and feature-space analysis.

    Args:
        extractor: ``network`` (the activations of a layer of a backbone or trained model) or
            ``morphology`` (measured nuclear morphology, :mod:`leukdx.features.morphology`;
            no network: ``layer``, ``model`` and ``model.*`` are not used).
        layer: layer whose activations are the features (``auto``: the backbone's
            feature layer, e.g. AlexNet fc7).
        model: a trained run folder or model file to extract from instead of a backbone.
        classifiers: registered classifier names.
        pca_components: PCA components applied when the dimension exceeds ``pca_above``.
        pca_above: feature dimension above which PCA is applied in the analysis.
        cache_dir: folder of the feature cache.
        tsne: write t-SNE plots.
    """

    extractor: str = "network"
    layer: str = "auto"
    model: str | None = None
    classifiers: list[str] = field(
        default_factory=lambda: ["tree", "lda", "svm_linear", "svm_rbf", "svm_cubic", "knn1"]
    )
    pca_components: int = 100
    pca_above: int = 256
    cache_dir: str = ".leukdx_cache/features"
    tsne: bool = True


@dataclass
class PretrainConfig:
    """Self-supervised pretraining of the backbone (SimCLR, ``leukdx pretrain``).

    Args:
        epochs: passes over the unlabelled training images.
        batch_size: images per step; each gives two augmented views (SimCLR's negatives are
            the other 2 * (batch_size - 1) views of the batch).
        learning_rate: Adam learning rate.
        temperature: NT-Xent temperature.
        projection_units: hidden units of the projection head.
        projection_dim: output size of the projection head.
        crop_scale: smallest fraction of the image side a random crop keeps.
        cache_dir: folder of the weights pretrained once per evaluation fold.
        per_fold: in ``leukdx evaluate``, pretrain the backbone on each fold's training
            images only (never its test source; cached by their hashes,
            :func:`leukdx.pretrain.pretrain_for_fold`) and fine-tune from those weights.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    temperature: float = 0.2
    projection_units: int = 256
    projection_dim: int = 64
    crop_scale: float = 0.5
    cache_dir: str = ".leukdx_cache/pretrain"
    per_fold: bool = False


@dataclass
class Config:
    """A whole experiment.

    Args:
        name: experiment name (used in output folders and CSV rows).
        seed: master seed; every random choice derives from it.
        task: ``finetune`` (train a network) or ``features`` (deep features + classifiers).
    """

    name: str = "experiment"
    seed: int = 42
    task: str = "finetune"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


# Allowed values of enumerated settings, checked once here so that every layer can trust them.
CHOICES: dict[str, tuple[str, ...]] = {
    "task": ("finetune", "features"),
    "data.layout": ("auto", "folders", "allidb", "manifest"),
    "data.aspect": ("stretch", "pad"),
    "data.cache": ("memory", "disk"),
    "data.on_bad_image": ("error", "skip"),
    "data.stain_normalize": ("none", "reinhard", "macenko"),
    "data.crop": ("none", "center", "cell"),
    "data.cell.scale_by": ("nucleus", "red_cell"),
    "data.tile.aggregate": ("mean", "max", "topk"),
    "data.cell.aggregate": ("mean", "max", "topk"),
    "augment.preset": (
        "leuknet", "loey", "stain", "leuknet_stain", "generalise", "randstainna", "none"
    ),
    "augment.placement": ("pipeline", "model"),
    "model.strategy": ("sft", "dft", "msft", "mdft"),
    "model.norm": ("batch", "group", "layer"),
    "train.optimizer": ("sgd", "adam", "rmsprop"),
    "train.precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "train.distribution": ("auto", "none", "mirrored", "multi_worker"),
    "train.class_weight": ("none", "balanced"),
    "train.calibrate": ("none", "unseen_source"),
    "train.label_sources": ("all", "two_class"),
    "evaluate.protocol": ("lodo", "kfold", "holdout", "external"),
    "evaluate.executor": ("local", "ray"),
    "evaluate.adapt_bn": ("none", "test_source"),
}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{close[0]}'?"
    return f" Valid keys: {', '.join(sorted(valid))}."


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007 - built at run time
    return False, tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise a ConfigError naming ``where``."""
    if tp is Any:
        # free-form values (evaluate.grid entries) may be null, e.g. features.model: [null, ...]
        return value
    optional, inner = _is_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "~")):
        if optional:
            return None
        raise ConfigError(f"'{where}' may not be empty (null).")
    tp = inner
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping of keys, got {value!r}.")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a scalar where a list is expected means a list of one
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"'{where}' must be a list, got {value!r}.")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}.")
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ConfigError(f"'{where}' must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}.")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"'{where}' must be an integer, got {value!r}.") from None
        if f != int(f):
            raise ConfigError(f"'{where}' must be an integer, got {value!r}.")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"'{where}' must be a number, got {value!r}.") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"'{where}' must be a string, got {value!r}.")
        return str(value)
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"Unknown config key '{where}'.{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], where)
    obj = cls(**kwargs)
    for key in names:
        where = f"{prefix}.{key}" if prefix else key
        if where in CHOICES:
            val = getattr(obj, key)
            if val not in CHOICES[where]:
                raise ConfigError(
                    f"'{where}' is {val!r}; choose one of {', '.join(CHOICES[where])}."
                )
    return obj


def _validate(cfg: Config) -> None:
    d, t, e = cfg.data, cfg.train, cfg.evaluate
    if d.image_size < 32:
        raise ConfigError(f"'data.image_size' is {d.image_size}; it must be at least 32 pixels.")
    if d.recrop_similarity is not None and not 0.0 < d.recrop_similarity <= 1.0:
        raise ConfigError(
            f"'data.recrop_similarity' is {d.recrop_similarity}; it must be in (0, 1] "
            "(default 0.5), or null to turn the re-crop search off."
        )
    if not 0.0 <= t.validation_split < 1.0:
        raise ConfigError("'train.validation_split' must be in [0, 1).")
    t.jit_compile = _jit_compile_setting(t.jit_compile)
    if not 0.0 < e.test_fraction < 1.0:
        raise ConfigError("'evaluate.test_fraction' must be in (0, 1).")
    if e.k < 2:
        raise ConfigError("'evaluate.k' must be at least 2.")
    if not 1 <= e.tta <= 8:
        raise ConfigError(
            f"'evaluate.tta' is {e.tta}; it counts flips/rotations to average, from 1 (none) to 8."
        )
    _check_ray(e.ray)
    pre = cfg.pretrain
    if pre.temperature <= 0:
        raise ConfigError(f"'pretrain.temperature' is {pre.temperature}; it must be above 0.")
    if not 0.0 < pre.crop_scale <= 1.0:
        raise ConfigError(f"'pretrain.crop_scale' is {pre.crop_scale}; it must be in (0, 1].")
    for name, value in (("augment.expand", cfg.augment.expand), ("evaluate.runs", e.runs),
                        ("evaluate.repeats", e.repeats), ("train.epochs", t.epochs),
                        ("train.batch_size", t.batch_size),
                        ("pretrain.epochs", cfg.pretrain.epochs),
                        ("pretrain.batch_size", cfg.pretrain.batch_size)):
        if value < 1:
            raise ConfigError(f"'{name}' must be at least 1, got {value}.")
    if not 0.0 < d.crop_fraction <= 1.0:
        raise ConfigError(f"'data.crop_fraction' is {d.crop_fraction}; it must be in (0, 1].")
    tile_steps = (("data.tile.size_px", d.tile.size_px), ("data.tile.top_k", d.tile.top_k),
                  ("data.tile.stride_px", 1 if d.tile.stride_px is None else d.tile.stride_px))
    for name, value in (*tile_steps, ("data.cell.max_cells", d.cell.max_cells),
                        ("data.cell.top_k", d.cell.top_k)):
        if value < 1:
            raise ConfigError(f"'{name}' must be at least 1, got {value}.")
    if not d.cell.scale >= 1.0:
        raise ConfigError(
            f"'data.cell.scale' is {d.cell.scale}; it must be at least 1 (crop side in nucleus "
            "diameters)."
        )
    if d.crop == "cell" and d.tile.sources:
        tiled = set(map(str, d.tile.sources))
        both = sorted(tiled if d.crop_sources is None else tiled & set(map(str, d.crop_sources)))
        if both:
            raise ConfigError(
                f"'data.crop: cell' and 'data.tile.sources' both apply to {', '.join(both)}; "
                "list the cell-cropped sources in "
                "data.crop_sources without the tiled ones, or drop data.tile.sources."
            )
    for source, layout in d.layouts.items():
        if layout not in CHOICES["data.layout"]:
            raise ConfigError(
                f"'data.layouts.{source}' is {layout!r}; choose one of "
                f"{', '.join(CHOICES['data.layout'])}."
            )
    for key in e.grid:
        _check_dotted_key(key, where="evaluate.grid")


def _check_ray(r: RayConfig) -> None:
    """``evaluate.ray``: positive CPUs, ``auto`` or a non-negative GPU count, retries >= 0."""
    gpus = r.num_gpus_per_fold
    if isinstance(gpus, str) and gpus.strip().lower() != "auto":
        try:
            gpus = float(gpus)
        except ValueError:
            raise ConfigError(f"'evaluate.ray.num_gpus_per_fold' is {gpus!r}; use auto or a "
                              "number of GPUs (e.g. 1, or 0.5 to share a GPU).") from None
    if isinstance(gpus, str):
        r.num_gpus_per_fold = "auto"
    elif isinstance(gpus, bool) or float(gpus) < 0:
        raise ConfigError(f"'evaluate.ray.num_gpus_per_fold' is {gpus!r}; use auto or a "
                          "number of GPUs of at least 0.")
    else:
        r.num_gpus_per_fold = float(gpus)
    if not r.num_cpus_per_fold > 0:
        raise ConfigError(f"'evaluate.ray.num_cpus_per_fold' is {r.num_cpus_per_fold}; it must "
                          "be above 0.")
    if r.max_retries < 0:
        raise ConfigError(f"'evaluate.ray.max_retries' is {r.max_retries}; it must be at "
                          "least 0.")


def _jit_compile_setting(value: Any) -> bool | str:
    """``train.jit_compile`` as True, False or ``"auto"`` (YAML may give a bool or a string)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return {"true": True, "false": False}.get(text, "auto")
    raise ConfigError(f"'train.jit_compile' is {value!r}; choose auto, true or false.")


def validate_config(cfg: Config, *, check_weights: bool = False) -> Config:
    """Check ``cfg`` against the registries before any image is read.

    Checks every configuration the experiment will build (``cfg`` itself and each
    combination of ``evaluate.grid``): the backbone and strategy are registered,
    ``data.image_size`` is at least the backbone's minimum, ``model.frozen_blocks`` and
    ``model.head`` fit the backbone, and the feature classifiers are registered. With ``check_weights`` the pretrained weights must also be at
    hand (a cached or downloadable ImageNet file, or an existing weights file).

    Args:
        cfg: a config from :func:`load_config`.
        check_weights: also resolve ``model.weights`` (may probe the network for ImageNet
            weights that are not cached, for up to 3 s).

    Returns:
        ``cfg``, unchanged.

    Raises:
        ConfigError: a setting names something unregistered or does not fit the backbone.
        WeightsUnavailableError: with ``check_weights``, the weights cannot be had.

    Example:
        >>> validate_config(load_config(overrides=["model.backbone=vgg16"])).model.backbone
        'vgg16'
    """
    import itertools

    from leukdx.features.classifiers import list_classifiers
    from leukdx.models.backbones import get_backbone
    from leukdx.models.strategies import get_strategy, head_layout
    from leukdx.models.weights import resolve_weights

    unknown = [name for name in cfg.features.classifiers if name not in list_classifiers()]
    if unknown:
        raise ConfigError(
            f"'features.classifiers' names {', '.join(unknown)}, which are not registered; "
            f"choose from {', '.join(list_classifiers())}."
        )
    if cfg.features.extractor not in FEATURE_EXTRACTORS:
        raise ConfigError(
            f"'features.extractor' is '{cfg.features.extractor}'; choose from "
            f"{', '.join(FEATURE_EXTRACTORS)}."
        )
    if cfg.features.extractor == "morphology" and cfg.features.model:
        raise ConfigError(
            "'features.extractor' is 'morphology', which uses no network, but "
            f"'features.model' is '{cfg.features.model}'; unset one of them."
        )
    grid = cfg.evaluate.grid
    variants = [cfg] + [
        replace(cfg, dict(zip(grid, values))) for values in itertools.product(*grid.values())
    ] if grid else [cfg]
    seen: set[tuple] = set()
    for variant in variants:
        m = variant.model
        key = (m.backbone, m.strategy, m.weights, variant.data.image_size, m.frozen_blocks,
               repr(m.head))
        if key in seen:
            continue
        seen.add(key)
        spec = get_backbone(m.backbone)
        spec.check_size(variant.data.image_size)
        if variant.task == "finetune":
            try:
                get_strategy(m.strategy)
                head_layout(spec, m.head)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            if m.strategy == "sft" and not 0 <= m.frozen_blocks <= len(spec.blocks):
                raise ConfigError(
                    f"'model.frozen_blocks' is {m.frozen_blocks}, out of range for "
                    f"model.backbone={spec.name}, which has {len(spec.blocks)} blocks "
                    f"({', '.join(spec.blocks)}); use 0 to {len(spec.blocks)}."
                )
        uses_network = not (variant.task == "features" and (
            variant.features.model or variant.features.extractor == "morphology"))
        if check_weights and uses_network:
            resolve_weights(spec, m.weights)
    return cfg


def _check_dotted_key(key: str, where: str = "--set") -> None:
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            # dict-valued settings (e.g. data.layouts.NAME) accept any sub-key
            return
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            shown = ".".join(parts[: i + 1])
            raise ConfigError(f"{where}: unknown config key '{shown}'.{_suggest(part, names)}")
        _, cls = _is_optional(_field_types(cls)[part])


def _deep_merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict) and k not in ("grid",):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle.")
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections.")
    parent = data.pop("extends", None)
    if parent:
        base = _read_yaml((path.parent / str(parent)), seen + (path,))
        data = _deep_merge(base, data)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like key.path=value.")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``key='a.b'``, creating sections as needed."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Cannot set '{key}': '{part}' is not a section.")
    node[parts[-1]] = value


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """Build and validate a Config from a plain mapping plus ``key=value`` overrides."""
    data = copy.deepcopy(dict(data))
    data.pop("extends", None)
    for text in overrides:
        key, value = parse_override(text)
        _check_dotted_key(key)
        set_dotted(data, key, value)
    cfg = _build(Config, data)
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Args:
        path: YAML file; ``extends: base.yaml`` inside it inherits another file.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: unknown key (with the nearest valid one), bad type or value.
    """
    data = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(data, overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for YAML/JSON), every default filled in."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> Path:
    """Write the fully resolved config as YAML (atomically, through :mod:`leukdx.io`)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


# Data settings that only change how images are decoded, not which records there are.
DECODE_ONLY_KEYS: tuple[str, ...] = ("image_size", "aspect", "cache", "cache_dir", "workers")


def records_key(cfg: Config) -> str:
    """A text key equal for two configs that select the same records and seed.

    Evaluations share one loaded collection (and its splits) between grid points with the
    same key; decoding settings (:data:`DECODE_ONLY_KEYS`) do not change it.

    Example:
        >>> a = Config()
        >>> records_key(a) == records_key(replace(a, {"data.image_size": 64}))
        True
    """
    data = {k: v for k, v in config_to_dict(cfg.data).items() if k not in DECODE_ONLY_KEYS}
    return json.dumps({"data": data, "seed": cfg.seed}, sort_keys=True, default=str)


def replace(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """A copy of ``cfg`` with dotted-key overrides applied (used by evaluation grids)."""
    data = config_to_dict(cfg)
    for key, value in overrides.items():
        _check_dotted_key(key)
        set_dotted(data, key, value)
    out = _build(Config, data)
    _validate(out)
    return out
