"""Registry of backbones: the pretrained convolutional networks leukdx fine-tunes.

A backbone is one decorated constructor; the decorator records everything else leukdx needs
to know about it in a :class:`BackboneSpec`:

.. code-block:: python

    @register_backbone("vgg16", preprocess_mode="caffe", min_size=32, default_size=224, ...)
    def vgg16(input_shape, input_tensor=None):
        return keras.applications.VGG16(include_top=False, weights=None, ...)

Registered: ``vgg16``, ``vgg19``, ``resnet50``, ``inception_v3``, ``xception`` (LeukNet,
Table 2), ``alexnet`` (Loey et al.), ``mobilenet_v3_small`` (small and fast on a CPU, for
demos and tests) and ``small_cnn`` (a small residual network for training from scratch).
TensorFlow is imported only when a backbone is built, so listing and querying the registry is
cheap.

Normalisation: ``build(..., norm="group"|"layer")`` replaces a backbone's
BatchNormalization layers by GroupNormalization / LayerNormalization under the same names
(``model.norm``; see :mod:`leukdx.models.norm`), for networks trained from scratch.

Blocks: ``spec.blocks`` are the ordered units SFT freezes from the input. Block *i* is the
run of layers, in topological order, from the first layer named ``<blocks[i]>`` or
``<blocks[i]>_<suffix>`` (a suffix not starting with a digit, so ``block1`` is not
``block10``) up to the start of block *i+1*; unnamed layers (activations, residual adds)
stay with the block they follow. InceptionV3's layers have generated names, so its first
block (``stem``) ends at the second max pooling and the others at the ``mixed0`` ...
``mixed10`` concatenations.

Example:
    >>> from leukdx.models.backbones import get_backbone, list_backbones
    >>> "vgg16" in list_backbones()
    True
    >>> spec = get_backbone("vgg16")
    >>> spec.preprocess_mode, spec.min_size, spec.dense_top
    ('caffe', 32, (4096, 4096))
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from leukdx.errors import ConfigError, UnknownBackboneError
from leukdx.models.alexnet import ALEXNET_DEFAULT_SIZE, ALEXNET_MIN_SIZE
from leukdx.models.weights import (
    WeightsFile,
    check_pretrain_info,
    load_pretrained,
    normalize_weights,
    resolve_weights,
)

__all__ = [
    "BackboneSpec",
    "UnknownBackboneError",
    "get_backbone",
    "list_backbones",
    "partition_by_end",
    "partition_by_name",
    "register_backbone",
]

_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything leukdx needs to know about one backbone.

    Args:
        name: registry name (``model.backbone``).
        constructor: ``(input_shape, input_tensor=None) -> keras.Model``, the convolutional
            base (``include_top=False``) with random weights; with ``input_tensor`` its layers
            are added to that tensor's graph.
        preprocess_mode: a :data:`leukdx.models.layers.PREPROCESS_MODES` key.
        min_size: smallest input side (pixels) the base accepts.
        default_size: the side the ImageNet weights were trained at.
        dense_top: sizes of the original dense layers before the 1000-class output
            (``(4096, 4096)`` for VGG/AlexNet, ``()`` for global-average-pooling networks).
        dense_top_names: names of those layers (weight files refer to them).
        dense_top_dropout: dropout after each original dense layer (0 = none).
        pooling: how the base output meets dense layers: ``flatten`` or ``gap``.
        blocks: ordered block names for SFT freezing (see the module docstring).
        last_conv_layer: layer whose output Grad-CAM weights (the last convolutional map).
        default_head: ``(units, dropout)`` of the new head of mSFT/mDFT (LeukNet §3.4, §4.2).
        feature_layer: layer of a model from :func:`leukdx.models.build_model` whose output
            is the deep-feature vector (``fc2``/``fc7`` when the original dense layers are
            built, else the pooled base output ``top_pool``).
        imagenet_notop: the Keras Applications weights without the dense layers, or ``None``.
        imagenet_top: the weights file including the original dense layers, or ``None``.
        partition: optional ``(layers) -> block index per layer`` replacing the name rule.
        description: one line for listings.
    """

    name: str
    constructor: Callable[..., Any]
    preprocess_mode: str
    min_size: int
    default_size: int
    blocks: tuple[str, ...]
    last_conv_layer: str
    default_head: tuple[tuple[int, ...], tuple[float, ...]]
    pooling: str = "gap"
    dense_top: tuple[int, ...] = ()
    dense_top_names: tuple[str, ...] = ()
    dense_top_dropout: float = 0.0
    feature_layer: str = "top_pool"
    imagenet_notop: WeightsFile | None = None
    imagenet_top: WeightsFile | None = None
    partition: Callable[[Sequence[Any]], list[int]] | None = field(default=None, repr=False)
    description: str = ""

    def __post_init__(self):
        if len(self.dense_top) != len(self.dense_top_names):
            raise ValueError(f"{self.name}: dense_top and dense_top_names differ in length.")
        if self.pooling not in ("flatten", "gap"):
            raise ValueError(f"{self.name}: pooling must be 'flatten' or 'gap'.")
        units, dropout = self.default_head
        if len(units) != len(dropout):
            raise ValueError(f"{self.name}: default_head units and dropout differ in length.")

    def check_size(self, image_size: int) -> None:
        """Raise a ConfigError naming the settings when ``image_size`` is below ``min_size``."""
        if int(image_size) < self.min_size:
            raise ConfigError(
                f"data.image_size={image_size} is too small for model.backbone={self.name}: it "
                f"needs at least {self.min_size} px (default {self.default_size}). Raise "
                f"data.image_size or pick another backbone."
            )

    def check_norm(self, norm: str, weights: str | os.PathLike | None = "none") -> None:
        """Raise a ConfigError when ``model.norm`` cannot go with ``model.weights``.

        GroupNormalization and LayerNormalization (``group``, ``layer``) replace
        BatchNormalization, so they need weights trained with them: none (from scratch) or a
        ``.weights.h5`` saved by ``leukdx pretrain`` with the same norm. ImageNet files and
        legacy ``.h5`` files hold BatchNormalization statistics and are refused.
        """
        from leukdx.models.norm import NORMS

        if norm not in NORMS:
            raise ConfigError(f"'model.norm' is {norm!r}; choose one of {', '.join(NORMS)}.")
        value = normalize_weights(weights)
        if norm == "batch" or value is None or value.lower().endswith(".weights.h5"):
            return
        raise ConfigError(
            f"model.norm={norm} cannot load model.weights={value}: those weights were trained "
            f"with BatchNormalization. Use model.norm: batch to fine-tune them, or "
            f"model.weights: none (or a .weights.h5 from `leukdx pretrain` with "
            f"model.norm={norm}) to train {norm} normalisation."
        )

    def build(self, input_shape: Sequence[int] | None = None,
              weights: str | os.PathLike | None = "none", *, input_tensor=None,
              norm: str = "batch"):
        """Build the convolutional base (no dense layers) and load its weights.

        Args:
            input_shape: ``(size, size, 3)``; ``None`` uses ``default_size``. The base takes
                preprocessed images (see ``preprocess_mode``).
            weights: ``imagenet``, ``none`` or a local weights file (see
                :mod:`leukdx.models.weights`).
            input_tensor: a symbolic tensor of an enclosing functional graph; the base's
                layers are then added to that graph (not nested), and the returned model
                maps the graph's inputs to the base output.
            norm: ``batch`` (as built), ``group`` or ``layer``: the BatchNormalization layers
                become GroupNormalization / LayerNormalization (see :mod:`leukdx.models.norm`).

        Returns:
            A functional ``keras.Model``.

        Raises:
            ConfigError: the input is smaller than ``min_size``; ``norm`` is unknown, does not
                fit ``weights`` (see :meth:`check_norm`), or is not ``batch`` for a backbone
                without BatchNormalization; a pretrained file was saved for another backbone
                or norm.
            WeightsUnavailableError: the weights cannot be had (see ``resolve_weights``).
        """
        if input_shape is None:
            input_shape = (self.default_size, self.default_size, 3)
        input_shape = tuple(int(s) for s in input_shape)
        self.check_size(min(input_shape[:2]))
        self.check_norm(norm, weights)
        path = resolve_weights(self, weights, include_top=False)
        if path is not None:
            check_pretrain_info(path, self.name, norm)
        if norm == "batch":
            model = self.constructor(input_shape, input_tensor)
        else:
            model = self._build_norm(input_shape, input_tensor, norm)
        if path is not None:
            load_pretrained(self.base_layers(model, input_tensor), path, spec=self,
                            input_shape=input_shape, norm=norm)
        return model

    def _build_norm(self, input_shape, input_tensor, norm: str):
        import keras

        from leukdx.models.norm import swap_batchnorm

        plain = self.constructor(input_shape, None)
        if not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers):
            raise ConfigError(
                f"model.norm={norm} needs BatchNormalization layers to replace, and "
                f"model.backbone={self.name} has none; set model.norm: batch or pick a backbone "
                f"with BatchNormalization (e.g. small_cnn, resnet50, mobilenet_v3_small)."
            )
        return swap_batchnorm(plain, norm, input_tensor)

    def base_layers(self, model, input_tensor=None) -> list:
        """The layers of a model from :meth:`build` that belong to the base (no InputLayer).

        Args:
            model: the model :meth:`build` returned.
            input_tensor: the ``input_tensor`` it was built on, if any.
        """
        layers = list(model.layers)
        if input_tensor is None:
            return [layer for layer in layers if type(layer).__name__ != "InputLayer"]
        # Layers are topologically ordered: everything up to the op producing input_tensor
        # belongs to the enclosing graph (input, augmentation, preprocessing).
        producer = input_tensor._keras_history.operation
        return layers[layers.index(producer) + 1:]

    def layer_blocks(self, layers: Sequence[Any]) -> list[int]:
        """0-based block index of each base layer (see the module docstring for the rule)."""
        if self.partition is not None:
            return self.partition(layers)
        return partition_by_name([layer.name for layer in layers], self.blocks)


def _matches(name: str, prefix: str) -> bool:
    if name == prefix:
        return True
    rest = name[len(prefix) + 1:]
    return name.startswith(prefix + "_") and bool(rest) and not rest[0].isdigit()


def partition_by_name(names: Sequence[str], blocks: Sequence[str]) -> list[int]:
    """Block index of each layer name: a block starts at the first layer named after it.

    Block *i* runs from its first layer named ``<blocks[i]>`` or ``<blocks[i]>_<suffix>`` up
    to the layer before block *i+1* starts, so unnamed layers (activations, residual adds)
    stay with the block they follow; layers before the first block join it.

    Args:
        names: layer names in topological order.
        blocks: block names (prefixes) in order.

    Returns:
        One block index per name.

    Raises:
        ValueError: a block matches no layer, or blocks start out of order.
    """
    starts = []
    for block in blocks:
        first = next((i for i, name in enumerate(names) if _matches(name, block)), None)
        if first is None:
            raise ValueError(f"No layer is named after block '{block}'.")
        if starts and first <= starts[-1]:
            raise ValueError(f"Block '{block}' starts before the block preceding it.")
        starts.append(first)
    out, block = [], 0
    for i in range(len(names)):
        while block + 1 < len(starts) and i >= starts[block + 1]:
            block += 1
        out.append(block)
    return out


def partition_by_end(names: Sequence[str], ends: Sequence[str]) -> list[int]:
    """Block index of each layer name: block *i* ends at the layer named ``ends[i]``.

    For networks whose only stable names are the last layer of each block (InceptionV3's
    ``mixed0`` ... ``mixed10`` concatenations); layers after the last end join the last block.

    Raises:
        ValueError: an end layer is missing or out of order.
    """
    positions = []
    for end in ends:
        if end not in names:
            raise ValueError(f"No layer named '{end}' ends a block.")
        positions.append(names.index(end))
    if positions != sorted(positions):
        raise ValueError(f"Block ends {list(ends)} are out of topological order.")
    out, block = [], 0
    for i in range(len(names)):
        while block + 1 < len(positions) and i > positions[block]:
            block += 1
        out.append(block)
    return out


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, **spec_fields) -> Callable:
    """Decorator registering a base constructor as backbone ``name``.

    Args:
        name: the registry name (lower case, used as ``model.backbone``).
        **spec_fields: the other :class:`BackboneSpec` fields.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(constructor: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"Backbone '{name}' is already registered.")
        _REGISTRY[name] = BackboneSpec(name=name, constructor=constructor, **spec_fields)
        return constructor

    return decorator


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec of backbone ``name`` (case-insensitive; ``-`` and ``_`` are the same).

    Raises:
        UnknownBackboneError: with the nearest registered name.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    near = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.4)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    raise UnknownBackboneError(
        f"Unknown model.backbone '{name}'.{hint} Registered backbones: "
        f"{', '.join(_REGISTRY)}."
    )


# --------------------------------------------------------------------------- Keras Applications


def _app(app_name: str, input_shape, input_tensor, **kwargs):
    import keras

    constructor = getattr(keras.applications, app_name)
    return constructor(include_top=False, weights=None, input_shape=tuple(input_shape),
                       input_tensor=input_tensor, **kwargs)


def _files(folder: str, stem: str, top_md5: str, notop_md5: str):
    return dict(
        imagenet_top=WeightsFile(f"{stem}.h5", f"{_KERAS_APPS}{folder}/{stem}.h5", top_md5),
        imagenet_notop=WeightsFile(
            f"{stem}_notop.h5", f"{_KERAS_APPS}{folder}/{stem}_notop.h5", notop_md5
        ),
    )


# LeukNet §4.2: new dense layers of 1024 and 256 units with dropout 0.5 and 0.6.
_LEUKNET_HEAD = ((1024, 256), (0.5, 0.6))
# LeukNet §3.4: ResNet50 / InceptionV3 get GAP + Dense 1024, Xception GAP + Dense 128. The
# paper names no dropout for them; 0.5 (its rate after the first new dense layer) is used.
_GAP_1024_HEAD = ((1024,), (0.5,))


@register_backbone(
    "vgg16",
    preprocess_mode="caffe", min_size=32, default_size=224,
    dense_top=(4096, 4096), dense_top_names=("fc1", "fc2"), pooling="flatten",
    blocks=("block1", "block2", "block3", "block4", "block5"),
    last_conv_layer="block5_conv3", default_head=_LEUKNET_HEAD, feature_layer="fc2",
    description="VGG-16 (Simonyan & Zisserman 2015); LeukNet's backbone",
    **_files("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels",
             "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
)
def vgg16(input_shape, input_tensor=None):
    """Keras Applications VGG16 without its dense layers."""
    return _app("VGG16", input_shape, input_tensor)


@register_backbone(
    "vgg19",
    preprocess_mode="caffe", min_size=32, default_size=224,
    dense_top=(4096, 4096), dense_top_names=("fc1", "fc2"), pooling="flatten",
    blocks=("block1", "block2", "block3", "block4", "block5"),
    last_conv_layer="block5_conv4", default_head=_LEUKNET_HEAD, feature_layer="fc2",
    description="VGG-19 (Simonyan & Zisserman 2015)",
    **_files("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels",
             "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
)
def vgg19(input_shape, input_tensor=None):
    """Keras Applications VGG19 without its dense layers."""
    return _app("VGG19", input_shape, input_tensor)


@register_backbone(
    "resnet50",
    preprocess_mode="caffe", min_size=32, default_size=224,
    blocks=("conv1", "conv2", "conv3", "conv4", "conv5"),
    last_conv_layer="conv5_block3_out", default_head=_GAP_1024_HEAD,
    description="ResNet-50 (He et al. 2016)",
    **_files("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels",
             "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
)
def resnet50(input_shape, input_tensor=None):
    """Keras Applications ResNet50 without its classifier."""
    return _app("ResNet50", input_shape, input_tensor)


def _inception_partition(layers: Sequence[Any]) -> list[int]:
    """Stem (up to the second max pooling), then one block per ``mixed0`` ... ``mixed10``."""
    pools = [i for i, layer in enumerate(layers) if type(layer).__name__ == "MaxPooling2D"]
    if len(pools) < 2:
        raise ValueError("InceptionV3 stem not found: expected two max poolings before mixed0.")
    stem_end = pools[1]
    mixed = tuple(f"mixed{i}" for i in range(11))
    names = [layer.name for layer in layers][stem_end + 1:]
    return [0] * (stem_end + 1) + [1 + b for b in partition_by_end(names, mixed)]


@register_backbone(
    "inception_v3",
    preprocess_mode="tf", min_size=75, default_size=299,
    blocks=("stem",) + tuple(f"mixed{i}" for i in range(11)),
    partition=_inception_partition,
    last_conv_layer="mixed10", default_head=_GAP_1024_HEAD,
    description="Inception-v3 (Szegedy et al. 2016)",
    **_files("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels",
             "9a0d58056eeedaa3f26cb7ebd46da564", "bcbd6486424b2319ff4ef7d526e38f63"),
)
def inception_v3(input_shape, input_tensor=None):
    """Keras Applications InceptionV3 without its classifier."""
    return _app("InceptionV3", input_shape, input_tensor)


@register_backbone(
    "xception",
    preprocess_mode="tf", min_size=71, default_size=299,
    blocks=tuple(f"block{i}" for i in range(1, 15)),
    last_conv_layer="block14_sepconv2_act", default_head=((128,), (0.5,)),
    description="Xception (Chollet 2017)",
    **_files("xception", "xception_weights_tf_dim_ordering_tf_kernels",
             "0a58e3b7378bc2990ea3b43d5981f1f6", "b0042744bf5b25fce3cb969f33bebb97"),
)
def xception(input_shape, input_tensor=None):
    """Keras Applications Xception without its classifier."""
    return _app("Xception", input_shape, input_tensor)


_MOBILENET_URL = f"{_KERAS_APPS}mobilenet_v3/"


@register_backbone(
    "mobilenet_v3_small",
    preprocess_mode="tf", min_size=32, default_size=224,
    blocks=("conv", "expanded_conv") + tuple(f"expanded_conv_{i}" for i in range(1, 11))
    + ("conv_1",),
    last_conv_layer="conv_1_act", default_head=_LEUKNET_HEAD,
    description="MobileNetV3-Small (Howard et al. 2019); fast on a CPU, for demos and tests",
    imagenet_top=WeightsFile(
        "weights_mobilenet_v3_small_224_1.0_float.h5",
        f"{_MOBILENET_URL}weights_mobilenet_v3_small_224_1.0_float.h5",
        "8768d4c2e7dee89b9d02b2d03d65d862",
    ),
    imagenet_notop=WeightsFile(
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        f"{_MOBILENET_URL}weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
)
def mobilenet_v3_small(input_shape, input_tensor=None):
    """Keras Applications MobileNetV3Small (alpha 1, not minimalistic) without its classifier.

    Keras' built-in rescaling is left out (``include_preprocessing=False``); the model's
    ``Preprocess("tf")`` layer does the same [-1, 1] scaling. The final hard-swish activation,
    auto-named by Keras, is renamed ``conv_1_act`` so Grad-CAM can find it by name.
    """
    model = _app("MobileNetV3Small", input_shape, input_tensor,
                 minimalistic=False, include_preprocessing=False)
    model.layers[-1].name = "conv_1_act"
    return model


@register_backbone(
    "alexnet",
    preprocess_mode="caffe", min_size=ALEXNET_MIN_SIZE, default_size=ALEXNET_DEFAULT_SIZE,
    dense_top=(4096, 4096), dense_top_names=("fc6", "fc7"), dense_top_dropout=0.5,
    pooling="flatten", blocks=("conv1", "conv2", "conv3", "conv4", "conv5"),
    last_conv_layer="conv5", default_head=_LEUKNET_HEAD, feature_layer="fc7",
    description="AlexNet (Krizhevsky et al. 2012); Loey et al.'s network; no ImageNet weights",
)
def alexnet(input_shape, input_tensor=None):
    """AlexNet's convolutional part (:func:`leukdx.models.alexnet.alexnet_base`).

    Preprocessing is ``caffe`` (BGR minus the ImageNet mean, values not rescaled), the
    convention of the widely converted Caffe AlexNet weights.
    """
    from leukdx.models.alexnet import alexnet_base

    return alexnet_base(input_shape, input_tensor)


# --------------------------------------------------------------------------- from scratch

# Narrow enough to train at > 150 images/s at 64-96 px on two CPU cores.
SMALL_CNN_WIDTHS = (16, 32, 64, 128)


def small_cnn_base(input_shape, input_tensor=None, widths: Sequence[int] = SMALL_CNN_WIDTHS):
    """A small four-stage residual network for training from scratch at 64–128 px.

    A 3x3 stride-2 stem, then four stages of one residual block each (two 3x3 convolutions
    with BatchNormalization, a 1x1 projection shortcut where the shape changes); stages 2–4
    halve the resolution. About 0.3 M weights; layers are named ``stem_*`` and
    ``stage<i>_*`` (``stage4_out`` is the last convolutional map).

    Args:
        input_shape: ``(size, size, 3)``.
        input_tensor: optional symbolic tensor to build on (see :meth:`BackboneSpec.build`).
        widths: channels of the four stages.

    Returns:
        A functional ``keras.Model`` named ``small_cnn``.
    """
    import keras
    from keras import layers

    if input_tensor is None:
        inputs = keras.Input(shape=tuple(input_shape), name="input_layer")
        x = inputs
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        x = input_tensor

    def conv_bn(x, filters, kernel, strides, name):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv")(x)
        return layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)

    x = layers.ReLU(name="stem_relu")(conv_bn(x, widths[0], 3, 2, "stem"))
    for i, filters in enumerate(widths, start=1):
        strides = 1 if i == 1 else 2
        shortcut = x
        if strides != 1 or int(x.shape[-1]) != filters:
            shortcut = conv_bn(x, filters, 1, strides, f"stage{i}_proj")
        y = layers.ReLU(name=f"stage{i}_relu1")(conv_bn(x, filters, 3, strides, f"stage{i}_1"))
        y = conv_bn(y, filters, 3, 1, f"stage{i}_2")
        x = layers.Add(name=f"stage{i}_add")([shortcut, y])
        x = layers.ReLU(name=f"stage{i}_out")(x)
    model_inputs = inputs if not isinstance(inputs, list) or len(inputs) > 1 else inputs[0]
    return keras.Model(model_inputs, x, name="small_cnn")


@register_backbone(
    "small_cnn",
    preprocess_mode="tf", min_size=32, default_size=96,
    blocks=("stem", "stage1", "stage2", "stage3", "stage4"),
    last_conv_layer="stage4_out", default_head=((128,), (0.5,)),
    description="small 4-stage residual CNN for training from scratch at 64-128 px on a CPU",
)
def small_cnn(input_shape, input_tensor=None):
    """:func:`small_cnn_base` (no ImageNet weights; train from scratch or ``leukdx pretrain``)."""
    return small_cnn_base(input_shape, input_tensor)
