"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in Keras, as used by Loey et al. (2020).

Keras Applications has no AlexNet, so it is written here: five convolutional and three
fully connected layers, ReLU everywhere, local response normalisation after conv1 and conv2,
overlapping 3x3/2 max pooling after conv1, conv2 and conv5, and dropout 0.5 after fc6 and
fc7. Two departures from the 2012 paper, both as in the common single-GPU re-implementations:

- the convolutions are not split into two GPU groups (conv2, conv4 and conv5 see all input
  channels; grouped convolutions are not supported by TensorFlow on CPU);
- conv2 to conv5 use ``same`` padding, so 227x227 inputs give the paper's 55, 27, 13 and
  6 px maps and a 6x6x256 = 9216-d flattened conv5 output.

Layer names (``conv1``, ``conv1_norm``, ``conv1_pool``, ..., ``conv5_pool``, ``fc6``,
``fc6_dropout``, ``fc7``, ``fc7_dropout``, ``fc8``) are what weight files and the SFT block
partition (``conv1`` ... ``conv5``) refer to. ``fc7`` gives the 4096-d deep features of
Loey et al.'s first model.

Input size: conv1 (11x11, stride 4, no padding) and the three 3x3/2 poolings leave a
1x1 conv5 map from 67x67 pixels up (:data:`ALEXNET_MIN_SIZE`); see :func:`alexnet_feature_size`.

Example:
    >>> from leukdx.models.alexnet import build_alexnet
    >>> model = build_alexnet((227, 227, 3), classes=2)
    >>> model.get_layer("fc7").output.shape
    (None, 4096)
"""

from __future__ import annotations

__all__ = [
    "ALEXNET_DEFAULT_SIZE",
    "ALEXNET_MIN_SIZE",
    "alexnet_base",
    "alexnet_feature_size",
    "build_alexnet",
]

ALEXNET_DEFAULT_SIZE = 227
ALEXNET_MIN_SIZE = 67


def alexnet_feature_size(image_size: int) -> int:
    """Side in pixels of AlexNet's conv5 output (after pool5) for a square input.

    Args:
        image_size: input side in pixels.

    Returns:
        The output side; 0 means the input is too small for the network.

    Example:
        >>> alexnet_feature_size(227), alexnet_feature_size(67), alexnet_feature_size(66)
        (6, 1, 0)
    """
    if image_size < 11:
        return 0
    side = (image_size - 11) // 4 + 1  # conv1: 11x11, stride 4, valid
    for _ in range(3):  # pool1, pool2, pool5: 3x3, stride 2, valid (convs keep the size)
        if side < 3:
            return 0
        side = (side - 3) // 2 + 1
    return side


def alexnet_base(input_shape=(ALEXNET_DEFAULT_SIZE, ALEXNET_DEFAULT_SIZE, 3), input_tensor=None,
                 name: str = "alexnet"):
    """AlexNet's convolutional part (conv1 to pool5), randomly initialised.

    Args:
        input_shape: ``(height, width, 3)`` of the network input (already preprocessed).
        input_tensor: optional symbolic tensor to build on; the layers are then added to that
            tensor's graph and the returned model starts from that graph's inputs.
        name: model name.

    Returns:
        A functional ``keras.Model`` whose output is the pooled conv5 map.

    Raises:
        ValueError: the input is smaller than :data:`ALEXNET_MIN_SIZE`.
    """
    import keras

    from leukdx.models.layers import LocalResponseNormalization

    side = min(int(s) for s in input_shape[:2])
    if alexnet_feature_size(side) < 1:
        raise ValueError(
            f"AlexNet needs inputs of at least {ALEXNET_MIN_SIZE}x{ALEXNET_MIN_SIZE} pixels "
            f"(got {tuple(input_shape)}): smaller inputs leave no conv5 map."
        )
    if input_tensor is None:
        inputs = keras.Input(shape=tuple(input_shape), name="alexnet_input")
        x = inputs
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        x = input_tensor
    conv = keras.layers.Conv2D
    pool = keras.layers.MaxPooling2D
    x = conv(96, 11, strides=4, padding="valid", activation="relu", name="conv1")(x)
    x = LocalResponseNormalization(name="conv1_norm")(x)
    x = pool(3, strides=2, name="conv1_pool")(x)
    x = conv(256, 5, padding="same", activation="relu", name="conv2")(x)
    x = LocalResponseNormalization(name="conv2_norm")(x)
    x = pool(3, strides=2, name="conv2_pool")(x)
    x = conv(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = conv(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = conv(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = pool(3, strides=2, name="conv5_pool")(x)
    return keras.Model(inputs, x, name=name)


def build_alexnet(input_shape=(ALEXNET_DEFAULT_SIZE, ALEXNET_DEFAULT_SIZE, 3),
                  classes: int = 1000, include_top: bool = True,
                  classifier_activation: str | None = "softmax", dropout: float = 0.5):
    """The whole AlexNet: conv1..pool5, then fc6 (4096), fc7 (4096) and fc8 (``classes``).

    Dropout follows fc6 and fc7 (Krizhevsky et al. 2012, §4.2).

    Args:
        input_shape: ``(height, width, 3)``; 227x227 as in the paper.
        classes: output units of fc8.
        include_top: add the three fully connected layers; ``False`` returns
            :func:`alexnet_base`.
        classifier_activation: activation of fc8.
        dropout: dropout rate after fc6 and fc7.

    Returns:
        A functional ``keras.Model`` named ``alexnet``.
    """
    import keras

    base = alexnet_base(input_shape)
    if not include_top:
        return base
    x = keras.layers.Flatten(name="flatten")(base.output)
    for fc in ("fc6", "fc7"):
        x = keras.layers.Dense(4096, activation="relu", name=fc)(x)
        x = keras.layers.Dropout(dropout, name=f"{fc}_dropout")(x)
    x = keras.layers.Dense(classes, activation=classifier_activation, name="fc8")(x)
    return keras.Model(base.inputs, x, name="alexnet")
