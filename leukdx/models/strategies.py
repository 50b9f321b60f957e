"""Fine-tuning strategies (LeukNet §3.3, Figure 5) and the one function that builds a model.

- ``sft`` (shallow): the backbone's original dense layers (VGG fc1/fc2, AlexNet fc6/fc7);
  the first ``model.frozen_blocks`` convolutional blocks frozen, the rest trained.
- ``dft`` (deep): the original dense layers; every layer trained.
- ``msft`` (modified shallow): a new, smaller head (``model.head``) on a frozen base; only
  the head is trained.
- ``mdft`` (modified deep, LeukNet): a new head; every layer trained.

The original 1000-class output is always replaced by ``Dense(1, sigmoid)``. Networks whose
original top is global average pooling (ResNet50, InceptionV3, Xception, MobileNetV3) have no
original dense layers: their SFT/DFT models are GAP + output.

Every model has the same shape and layer names:

``image`` (float32 RGB in [0, 255], (B, S, S, 3)) -> [augmentation] -> ``preprocess`` ->
backbone layers under their Keras names (``block1_conv1`` ... ``block5_pool``) ->
``top_flatten`` or ``top_pool`` -> ``fc1``, ``fc2`` (original dense layers, SFT/DFT) or
``head_dense_1``, ``head_dropout_1``, ... (new head, mSFT/mDFT) -> ``prediction``
(float32 P(leukaemia), (B, 1), under every precision policy).

Weights (``model.weights``, see :mod:`leukdx.models.weights`) go into the backbone. With
``imagenet`` the original dense layers of SFT/DFT are copied from the Keras Applications file
that includes them when ``data.image_size`` is the backbone's default size (VGG 224 px);
at other sizes the flattened map has another length, so they start random (with a warning),
as do new heads always. A local legacy ``.h5`` holding ``fc1``/``fc2`` (``fc6``/``fc7``) fills
them too.

The backbone is flattened into the model rather than nested, so the last convolutional
layer (``spec.last_conv_layer``) and the prediction live in one graph:
``keras.Model(model.inputs, [model.get_layer(spec.last_conv_layer).output, model.output])``
is all Grad-CAM needs, and ``model.get_layer(spec.feature_layer).output`` gives deep
features. :func:`backbone_layers` returns the backbone's layers of any built or loaded
model. With pretrained weights, BatchNormalization layers keep their moving statistics
(:class:`leukdx.models.layers.InferenceBatchNormalization`); with ``weights: none`` they
learn as usual, since there is nothing pretrained to keep. ``model.norm: group|layer``
builds the backbone with GroupNormalization / LayerNormalization in place of
BatchNormalization (:mod:`leukdx.models.norm`). No ``Lambda`` layers are used, so models load
with ``safe_mode=True``.

Example:
    >>> from leukdx.config import ModelConfig
    >>> from leukdx.models import build_model
    >>> model = build_model(ModelConfig(backbone="vgg16", strategy="mdft", weights="none"), 64)
    >>> model.name, model.output.shape
    ('vgg16_mdft', (None, 1))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from leukdx.models.backbones import BackboneSpec, get_backbone
from leukdx.models.weights import (
    PRETRAIN_INFO,
    check_pretrain_info,
    load_pretrained,
    normalize_weights,
    resolve_weights,
)

__all__ = [
    "PREDICTION_LAYER",
    "backbone_layers",
    "build_dft",
    "build_mdft",
    "build_model",
    "build_msft",
    "build_sft",
    "get_strategy",
    "head_layout",
    "list_strategies",
    "model_backbone",
    "register_strategy",
]

PREDICTION_LAYER = "prediction"
PREPROCESS_LAYER = "preprocess"
_TOP_START = ("top_flatten", "top_pool")

_STRATEGIES: dict[str, Callable[..., Any]] = {}


def register_strategy(name: str) -> Callable:
    """Decorator registering a builder ``(model_config, image_size, augmentation=None)``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(builder: Callable) -> Callable:
        if name in _STRATEGIES:
            raise ValueError(f"Strategy '{name}' is already registered.")
        _STRATEGIES[name] = builder
        return builder

    return decorator


def list_strategies() -> list[str]:
    """Registered strategy names."""
    return list(_STRATEGIES)


def get_strategy(name: str) -> Callable[..., Any]:
    """The builder of strategy ``name``; a ValueError lists the valid names."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"Unknown model.strategy '{name}'; choose one of {', '.join(_STRATEGIES)}."
        ) from None


def build_model(model_config, image_size: int, augmentation=None):
    """Build the model ``model_config`` describes for ``image_size`` x ``image_size`` images.

    Args:
        model_config: a :class:`leukdx.config.ModelConfig` (backbone, strategy, weights,
            head, frozen_blocks).
        image_size: input side in pixels (``data.image_size``).
        augmentation: optional Keras layer applied right after the input
            (``augment.placement: model``); it is active only in training.

    Returns:
        An uncompiled ``keras.Model`` named ``<backbone>_<strategy>``.

    Raises:
        UnknownBackboneError: unknown ``model.backbone``.
        ValueError: unknown strategy, ``image_size`` below the backbone's minimum, or bad
            ``model.head`` / ``model.frozen_blocks``.
        WeightsUnavailableError: the weights cannot be had offline (the message says how).
    """
    return get_strategy(model_config.strategy)(model_config, image_size,
                                               augmentation=augmentation)


@register_strategy("sft")
def build_sft(model_config, image_size: int, augmentation=None):
    """Shallow fine-tuning: original dense layers; the first ``frozen_blocks`` blocks frozen."""
    spec = get_backbone(model_config.backbone)
    n_blocks = len(spec.blocks)
    frozen = model_config.frozen_blocks
    if not 0 <= frozen <= n_blocks:
        raise ValueError(
            f"model.frozen_blocks={frozen} is out of range for model.backbone={spec.name}, "
            f"which has {n_blocks} blocks ({', '.join(spec.blocks)}); use 0 to {n_blocks}."
        )
    return _assemble(spec, "sft", image_size, model_config.weights, augmentation,
                     original_top=True, frozen_blocks=frozen, norm=_norm(model_config))


@register_strategy("dft")
def build_dft(model_config, image_size: int, augmentation=None):
    """Deep fine-tuning: original dense layers; every layer trained."""
    spec = get_backbone(model_config.backbone)
    return _assemble(spec, "dft", image_size, model_config.weights, augmentation,
                     original_top=True, frozen_blocks=0, norm=_norm(model_config))


@register_strategy("msft")
def build_msft(model_config, image_size: int, augmentation=None):
    """Modified shallow fine-tuning: a new head on a frozen convolutional base."""
    spec = get_backbone(model_config.backbone)
    return _assemble(spec, "msft", image_size, model_config.weights, augmentation,
                     head=head_layout(spec, model_config.head), frozen_blocks=len(spec.blocks),
                     norm=_norm(model_config))


@register_strategy("mdft")
def build_mdft(model_config, image_size: int, augmentation=None):
    """Modified deep fine-tuning (LeukNet): a new head; every layer trained."""
    spec = get_backbone(model_config.backbone)
    return _assemble(spec, "mdft", image_size, model_config.weights, augmentation,
                     head=head_layout(spec, model_config.head), frozen_blocks=0,
                     norm=_norm(model_config))


def is_self_supervised(weights_file: str | os.PathLike) -> bool:
    """Whether a weights file was written by ``leukdx pretrain`` (a ``pretrain.json`` beside it)."""
    from pathlib import Path

    return (Path(weights_file).parent / PRETRAIN_INFO).is_file()


def _norm(model_config) -> str:
    return getattr(model_config, "norm", "batch")


def head_layout(spec: BackboneSpec, head_config=None) -> list[tuple[int, float]]:
    """The (units, dropout) of each new dense layer, from ``model.head`` or the backbone.

    ``units: null`` takes the backbone's default head (LeukNet §3.4/§4.2). ``dropout: null``
    takes the default dropout when the unit count matches it, else 0.5 for every layer; one
    dropout value applies to all layers.

    Raises:
        ValueError: non-positive units, dropout outside [0, 1), or a dropout list whose
            length matches neither 1 nor the number of units.
    """
    default_units, default_dropout = spec.default_head
    units = getattr(head_config, "units", None)
    dropout = getattr(head_config, "dropout", None)
    units = list(default_units) if units is None else [int(u) for u in units]
    if any(u < 1 for u in units):
        raise ValueError(f"model.head.units={units}: every layer needs at least 1 unit.")
    if dropout is None:
        dropout = list(default_dropout) if len(units) == len(default_units) else [0.5]
    dropout = [float(d) for d in dropout]
    if len(dropout) == 1:
        dropout = dropout * len(units)
    if units and len(dropout) != len(units):
        raise ValueError(
            f"model.head.dropout={dropout} has {len(dropout)} values for {len(units)} dense "
            f"layers (model.head.units={units}); give one value per layer or one for all."
        )
    if any(not 0.0 <= d < 1.0 for d in dropout):
        raise ValueError(f"model.head.dropout={dropout}: every rate must be in [0, 1).")
    return list(zip(units, dropout))


def backbone_layers(model) -> list:
    """The backbone's layers of a model built by :func:`build_model` (built or loaded).

    They are the layers between ``preprocess`` and the first top layer (``top_flatten`` or
    ``top_pool``), in topological order.

    Raises:
        ValueError: the model was not built by leukdx.
    """
    names = [layer.name for layer in model.layers]
    try:
        start = names.index(PREPROCESS_LAYER) + 1
        end = next(i for i, name in enumerate(names) if name in _TOP_START)
    except (ValueError, StopIteration):
        raise ValueError(
            f"Model '{model.name}' was not built by leukdx.models.build_model (it lacks the "
            f"'{PREPROCESS_LAYER}' or '{_TOP_START[0]}'/'{_TOP_START[1]}' layers)."
        ) from None
    return list(model.layers[start:end])


def model_backbone(model) -> BackboneSpec:
    """The backbone spec of a model built by :func:`build_model` (from its name)."""
    name = model.name.rsplit("_", 1)[0]
    return get_backbone(name)


# --------------------------------------------------------------------------- assembly


# BatchNormalization momentum of backbones trained from scratch (``weights: none``).
SCRATCH_BN_MOMENTUM = 0.9


def _assemble(spec: BackboneSpec, strategy: str, image_size: int,
              weights: str | os.PathLike | None, augmentation,
              *, original_top: bool = False, head: Sequence[tuple[int, float]] = (),
              frozen_blocks: int = 0, norm: str = "batch"):
    import keras

    from leukdx.models.layers import Preprocess, use_inference_batchnorm

    spec.check_size(image_size)
    spec.check_norm(norm, weights)
    size = int(image_size)
    weights = normalize_weights(weights)
    dense_top = original_top and bool(spec.dense_top)

    # Resolve files before building anything, so a missing download fails in a second.
    top_file = None
    if dense_top and weights == "imagenet" and size == spec.default_size:
        top_file = resolve_weights(spec, weights, include_top=True)
        base_file = None
    else:
        base_file = resolve_weights(spec, weights, include_top=False)
    if dense_top and weights == "imagenet" and size != spec.default_size:
        warnings.warn(
            f"model.backbone={spec.name} with model.weights=imagenet at data.image_size={size}: "
            f"the ImageNet dense layers ({', '.join(spec.dense_top_names)}) were trained on "
            f"the flattened {spec.default_size}px map, which has another size here, so they "
            f"are randomly initialised (the convolutional base is pretrained).",
            UserWarning, stacklevel=3,
        )

    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = augmentation(inputs) if augmentation is not None else inputs
    x = Preprocess(spec.preprocess_mode, name=PREPROCESS_LAYER)(x)
    base = spec.build((size, size, 3), weights=None, input_tensor=x, norm=norm)
    base_layers = spec.base_layers(base, x)

    x = base.output
    if spec.pooling == "flatten":
        x = keras.layers.Flatten(name="top_flatten")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="top_pool")(x)
    top_layers = []
    if dense_top:
        for units, name in zip(spec.dense_top, spec.dense_top_names):
            layer = keras.layers.Dense(units, activation="relu", name=name)
            top_layers.append(layer)
            x = layer(x)
            if spec.dense_top_dropout:
                x = keras.layers.Dropout(spec.dense_top_dropout, name=f"{name}_dropout")(x)
    for i, (units, rate) in enumerate(head, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}")(x)
        if rate > 0:
            x = keras.layers.Dropout(rate, name=f"head_dropout_{i}")(x)
    # float32 output whatever the global policy: sigmoid and loss stay numerically safe.
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32",
                                 name=PREDICTION_LAYER)(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_{strategy}")

    weights_file = top_file or base_file
    if weights_file is not None:
        check_pretrain_info(weights_file, spec.name, norm)
        loaded = load_pretrained(base_layers, weights_file, top_layers, spec=spec,
                                 input_shape=(size, size, 3), norm=norm)
        if dense_top and weights != "imagenet" and len(loaded) < len(top_layers):
            warnings.warn(
                f"model.weights={weights} holds no weights for the dense layers "
                f"{', '.join(spec.dense_top_names)} of {spec.name}; they are randomly "
                f"initialised (only the convolutional base is pretrained).",
                UserWarning, stacklevel=3,
            )

    if weights_file is not None and not is_self_supervised(weights_file):
        # Fine-tuning keeps the pretrained BatchNormalization statistics (they describe the
        # pretraining data and a small batch would wreck them). A network trained from
        # scratch (weights none) has no statistics worth keeping, so its BN layers learn;
        # so do those of `leukdx pretrain` weights, whose statistics describe augmented views
        # (colour-jittered, grayscale) of the same images rather than the images themselves.
        use_inference_batchnorm(base_layers)
    else:
        # From scratch the moving statistics must catch up within a short run: Keras builds
        # MobileNetV3 with momentum 0.999, whose averages still sit near their initial values
        # after a few hundred steps, so every image gets the same output at inference.
        for layer in base_layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    if frozen_blocks >= len(spec.blocks):
        for layer in base_layers:
            layer.trainable = False
    elif frozen_blocks:
        blocks = spec.layer_blocks(base_layers)
        for layer, block in zip(base_layers, blocks):
            if block < frozen_blocks:
                layer.trainable = False
    return model
