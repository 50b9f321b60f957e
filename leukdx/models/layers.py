"""Serialisable Keras layers that leukdx models are made of.

Every layer here is registered with Keras (package ``leukdx``), so a saved ``.keras`` model
that contains them loads with ``safe_mode=True`` once :mod:`leukdx.models` has been imported;
leukdx models never need ``Lambda`` layers.

- :class:`Preprocess` puts a backbone's input preprocessing inside the model, so the model
  takes plain float32 images in [0, 255] and an exported model needs no separate step.
- :class:`LocalResponseNormalization` is the cross-channel normalisation of AlexNet
  (Krizhevsky et al. 2012, §3.3).
- :class:`InferenceBatchNormalization` is a BatchNormalization that always normalises with
  its moving statistics, which is how fine-tuning keeps pretrained statistics intact.

Example:
    >>> import numpy as np
    >>> from leukdx.models.layers import Preprocess
    >>> float(Preprocess("tf")(np.full((1, 2, 2, 3), 255.0, "float32")).numpy().max())
    1.0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import keras
from keras import ops

__all__ = [
    "CAFFE_MEAN_BGR",
    "PREPROCESS_MODES",
    "TORCH_MEAN_RGB",
    "TORCH_STD_RGB",
    "InferenceBatchNormalization",
    "LocalResponseNormalization",
    "Preprocess",
    "nested_layers",
    "use_inference_batchnorm",
]

# ImageNet channel statistics used by the Keras Applications preprocessing functions.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

#: What each preprocessing mode does to an RGB image with values in [0, 255].
PREPROCESS_MODES: dict[str, str] = {
    "caffe": "RGB to BGR, then subtract the ImageNet mean per channel (VGG, ResNet50, AlexNet)",
    "tf": "scale to [-1, 1] (InceptionV3, Xception, MobileNetV3)",
    "torch": "scale to [0, 1], then standardise with the ImageNet mean and std per channel",
    "none": "leave the values in [0, 255] (a backbone that preprocesses inside itself)",
}


@keras.saving.register_keras_serializable(package="leukdx")
class Preprocess(keras.layers.Layer):
    """A backbone's input preprocessing as a layer: float32 RGB [0, 255] in, network input out.

    The modes reproduce ``keras.applications.<net>.preprocess_input`` for channels-last
    images.

    Args:
        mode: one of :data:`PREPROCESS_MODES` (``caffe``, ``tf``, ``torch``, ``none``).
        **kwargs: standard layer arguments (``name``, ``dtype``).

    Raises:
        ValueError: unknown mode.

    Example:
        >>> layer = Preprocess("caffe", name="preprocess")
        >>> layer.get_config()["mode"]
        'caffe'
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(
                f"Unknown preprocessing mode {mode!r}; choose one of "
                f"{', '.join(PREPROCESS_MODES)}."
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)  # RGB -> BGR
            return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_MEAN_RGB, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(TORCH_STD_RGB, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class LocalResponseNormalization(keras.layers.Layer):
    """Cross-channel local response normalisation (AlexNet, Krizhevsky et al. 2012, §3.3).

    ``b[c] = a[c] / (bias + alpha * sum(a[c'] ** 2 for |c' - c| <= depth_radius)) ** beta``,
    over the last (channel) axis. The defaults are the paper's k = 2, n = 5, alpha = 1e-4,
    beta = 0.75 (alpha is not divided by n, as in the paper and
    ``tf.nn.local_response_normalization``; Caffe divides it). The sum is computed in
    float32 whatever the precision policy, because squared activations overflow float16.

    Args:
        depth_radius: half-width of the channel window (n = 2 * depth_radius + 1).
        bias: additive constant k.
        alpha: scale of the sum of squares.
        beta: exponent.
        **kwargs: standard layer arguments.
    """

    def __init__(
        self,
        depth_radius: int = 2,
        bias: float = 2.0,
        alpha: float = 1e-4,
        beta: float = 0.75,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth_radius < 0:
            raise ValueError(f"depth_radius must be >= 0, got {depth_radius}.")
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        r = self.depth_radius
        squared = ops.square(x)
        pad = [[0, 0]] * (len(x.shape) - 1) + [[r, r]]
        padded = ops.pad(squared, pad)
        # Sum over the 2r + 1 channel neighbours as shifted slices of the padded squares.
        window_sum = padded[..., 0:channels]
        for shift in range(1, 2 * r + 1):
            window_sum = window_sum + padded[..., shift : shift + channels]
        out = x / ops.power(self.bias + self.alpha * window_sum, self.beta)
        return ops.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
        )
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class InferenceBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization that always runs in inference mode (moving mean and variance).

    Fine-tuning a pretrained network on a small data set should not overwrite its batch
    statistics with those of tiny, augmented batches. The usual recipe, calling the base
    with ``training=False``, no longer works in Keras 3: a functional model propagates the
    outer ``training=True`` of ``fit()`` to every layer, overriding an explicit
    ``training=False`` (keras-team/keras#20285). This layer ignores the flag instead.
    ``gamma`` and ``beta`` stay trainable, so DFT/mDFT still train every layer's weights;
    setting ``trainable=False`` freezes them too (SFT/mSFT).
    """

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs, training=False, mask=mask)


def use_inference_batchnorm(layers: Iterable[keras.layers.Layer]) -> int:
    """Switch every plain BatchNormalization among ``layers`` to inference mode, in place.

    The layer objects keep their weights, names and connections; only their class becomes
    :class:`InferenceBatchNormalization` (a subclass that differs in ``call`` alone), so
    the model saves and loads as such.

    Args:
        layers: layers of a built model, e.g. a backbone's layers.

    Returns:
        How many layers were switched.
    """
    switched = 0
    for layer in layers:
        if type(layer) is keras.layers.BatchNormalization:
            # Bypass Layer.__setattr__ (attribute tracking); the subclass adds no state.
            object.__setattr__(layer, "__class__", InferenceBatchNormalization)
            switched += 1
    return switched


def nested_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model``, depth first, the layers of nested models (a backbone inside a
    task model) included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from nested_layers(layer)
