"""Normalisation layers of backbones trained from scratch (``model.norm``).

BatchNormalization normalises with statistics pooled over the training batches, and at test
time with their moving averages: images of another source (stain, scanner, magnification)
are normalised with the training sources' statistics, a known cause of poor cross-domain
transfer of blood-cell CNNs (Tsutsui et al., ICASSP 2023). GroupNormalization and
LayerNormalization normalise every image with its own statistics, identically in training
and at test time.

``model.norm``:

- ``batch``: the backbone as built (BatchNormalization where it has it);
- ``group``: every BatchNormalization becomes a ``keras.layers.GroupNormalization`` with
  :func:`group_count` groups (at most 32, dividing the channels);
- ``layer``: every BatchNormalization becomes a ``keras.layers.LayerNormalization`` over
  the channel axis (per pixel, as in ConvNeXt).

The replacement keeps each layer's name, so SFT blocks, Grad-CAM's last convolutional
layer and the block partition of :mod:`leukdx.models.backbones` are unchanged.

Example:
    >>> from leukdx.models.norm import group_count
    >>> group_count(64), group_count(88), group_count(3)
    (32, 22, 3)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_GROUPS",
    "NORMS",
    "group_count",
    "normalization_layer",
    "swap_batchnorm",
]

NORMS = ("batch", "group", "layer")
MAX_GROUPS = 32


def group_count(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest number of groups, at most ``max_groups``, that divides ``channels``.

    Args:
        channels: channels of the normalised feature map.
        max_groups: upper bound (32, as in Wu & He 2018).

    Returns:
        The group count (1 when only 1 divides, e.g. for a prime above ``max_groups``).
    """
    channels = int(channels)
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def normalization_layer(norm: str, channels: int, name: str, epsilon: float = 1e-3):
    """A fresh normalisation layer of kind ``norm`` for a channels-last map.

    Args:
        norm: ``batch``, ``group`` or ``layer``.
        channels: channels of the map (sets the group count).
        name: layer name.
        epsilon: added to the variance.

    Raises:
        ValueError: unknown ``norm``.
    """
    import keras

    if norm == "batch":
        return keras.layers.BatchNormalization(axis=-1, epsilon=epsilon, name=name)
    if norm == "group":
        return keras.layers.GroupNormalization(groups=group_count(channels), axis=-1,
                                               epsilon=epsilon, name=name)
    if norm == "layer":
        return keras.layers.LayerNormalization(axis=-1, epsilon=epsilon, name=name)
    raise ValueError(f"Unknown model.norm {norm!r}; choose one of {', '.join(NORMS)}.")


def _channel_axis_is_last(layer) -> bool:
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    return axis in (-1, 3)


def swap_batchnorm(model, norm: str, input_tensor=None):
    """A copy of a functional model whose BatchNormalization layers are ``norm`` layers.

    Every layer is re-created from its config (fresh, random weights: this is for networks
    trained from scratch); BatchNormalization layers become GroupNormalization or
    LayerNormalization under the same name.

    Args:
        model: a functional model whose single input is a Keras ``Input`` (e.g. a base from
            a ``BackboneSpec`` constructor called without ``input_tensor``).
        norm: ``batch`` (returns ``model`` unchanged), ``group`` or ``layer``.
        input_tensor: a symbolic tensor of an enclosing functional graph to build the copy
            on (its layers are then added to that graph, not nested); ``None`` builds it on
            a new ``Input``.

    Returns:
        A functional model mapping the enclosing graph's inputs (or a new ``Input``) to the
        copy's output.

    Raises:
        ValueError: unknown ``norm``, or a BatchNormalization that does not normalise the
            last (channel) axis.
    """
    import keras

    if norm not in NORMS:
        raise ValueError(f"Unknown model.norm {norm!r}; choose one of {', '.join(NORMS)}.")
    if norm == "batch":
        return model

    def clone(layer: Any):
        if isinstance(layer, keras.layers.BatchNormalization):
            if not _channel_axis_is_last(layer):
                raise ValueError(
                    f"Layer '{layer.name}' normalises axis {layer.axis}, not the channel axis; "
                    f"model.norm={norm} supports channels-last networks only."
                )
            channels = int(layer.input.shape[-1])
            return normalization_layer(norm, channels, layer.name, epsilon=layer.epsilon)
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a stateless op of the graph (e.g. MobileNetV3's hard sigmoid)
        return layer.__class__.from_config(layer.get_config())

    inputs = input_tensor if input_tensor is not None else keras.Input(
        batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype,
        name=model.inputs[0].name)
    called = []

    def call(layer: Any, *args, **kwargs):
        if isinstance(layer, (keras.layers.GroupNormalization, keras.layers.LayerNormalization)):
            # The graph recorded BatchNormalization's call, which takes a mask; these do not.
            kwargs.pop("mask", None)
            kwargs.pop("training", None)
        out = layer(*args, **kwargs)
        called.append(out)
        return out

    if len(model.outputs) != 1:
        raise ValueError(f"Model '{model.name}' has {len(model.outputs)} outputs; one expected.")
    keras.models.clone_model(model, input_tensors=inputs, clone_function=clone,
                             call_function=call)
    # clone_model wraps its result around copies of an intermediate input_tensor; the tensor
    # that belongs to the enclosing graph is the one the output layer (called last, the graph
    # being run from the inputs to the output) returned.
    sources = keras.utils.get_source_inputs(inputs)
    return keras.Model(sources if len(sources) > 1 else sources[0], called[-1], name=model.name)
