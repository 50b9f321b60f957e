"""Label-free test-time adaptation of BatchNorm statistics to one source (AdaBN).

A network trained from scratch with BatchNorm normalises every layer with the moving mean and
variance of its *training* sources. A new lab's images (another stain, scanner or
magnification) shift those statistics, and the shift compounds layer by layer. AdaBN
(Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", ICLR workshop
2017, arXiv:1603.04779) replaces each BatchNorm layer's moving statistics by those of the
target source's images; nothing else changes and no label is used.

What it costs the protocol: the score of an image then depends on the other images of its
source (their statistics), so a source is scored as a batch, and the statistics depend on the
source's class mix (a source of only healthy images normalises differently from a 50/50 one).
``evaluate.adapt_bn: test_source`` does this per test source in evaluation; the
models it leaves behind (``run.json``, exports) keep the training statistics.

Example:
    >>> with adapted_batchnorm(model, new_lab_images):
    ...     probabilities = model.predict(new_lab_images)
    >>> # outside the block the model has its training statistics again
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

from leukdx.models.layers import nested_layers

__all__ = ["adapt_batchnorm", "adapted_batchnorm", "batchnorm_layers"]

ADAPT_BATCH_SIZE = 64


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every ``BatchNormalization`` layer of ``model``, nested models included."""
    return [layer for layer in nested_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _moment_recorder(layer, sums: dict):
    """A replacement for ``layer.call`` that normalises with the batch's own statistics (as
    in training, so the layers after it see what AdaBN passes them) and adds the batch's
    per-channel sums of x and x² to ``sums`` (float64: exact pooled moments over batches)."""

    def call(inputs, training=None, mask=None):
        x = ops.cast(inputs, "float32")
        axis = layer.axis if layer.axis >= 0 else len(x.shape) + layer.axis
        reduce = [i for i in range(len(x.shape)) if i != axis]
        mean, variance = ops.moments(x, axes=reduce)
        count = float(np.prod([x.shape[i] for i in reduce]))
        sums["n"] += count
        sums["x"] += ops.convert_to_numpy(mean).astype(np.float64) * count
        sums["x2"] += (
            ops.convert_to_numpy(variance + ops.square(mean)).astype(np.float64) * count
        )
        out = ops.batch_normalization(
            x, mean, variance, axis=axis,
            offset=None if layer.beta is None else ops.cast(layer.beta, "float32"),
            scale=None if layer.gamma is None else ops.cast(layer.gamma, "float32"),
            epsilon=layer.epsilon,
        )
        return ops.cast(out, inputs.dtype)

    return call


def adapt_batchnorm(
    model: keras.Model, images: np.ndarray, batch_size: int = ADAPT_BATCH_SIZE
) -> int:
    """Set every BatchNorm layer's moving mean and variance to the statistics of ``images``.

    One pass over ``images`` in inference mode except for the BatchNorm layers, which
    normalise with each batch's statistics and record per-channel moments; the moving mean
    and variance become the moments pooled over all images (exact over batches, not a
    momentum average). Dropout and augmentation layers stay in inference mode.

    Args:
        model: a built Keras model (modified in place; see :func:`adapted_batchnorm` to
            restore it).
        images: ``(N, H, W, 3)`` inputs as the model takes them, ``N >= 2``, all from one
            source.
        batch_size: images per forward pass; every batch holds at least two images.

    Returns:
        The number of BatchNorm layers adapted (0: the model has none and is unchanged).

    Raises:
        ValueError: fewer than two images.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    images = np.asarray(images)
    if len(images) < 2:
        raise ValueError(
            f"BatchNorm adaptation needs at least 2 images of the source, got {len(images)}."
        )
    sums = {
        id(layer): {"n": 0.0, "x": np.zeros(layer.moving_mean.shape, np.float64),
                    "x2": np.zeros(layer.moving_mean.shape, np.float64)}
        for layer in layers
    }
    for layer in layers:
        layer.call = _moment_recorder(layer, sums[id(layer)])
    try:
        starts = list(range(0, len(images), batch_size))
        if len(starts) > 1 and len(images) - starts[-1] < 2:
            starts.pop()  # fold a one-image tail into the previous batch (its variance is 0)
        bounds = [*starts[1:], len(images)]
        for start, stop in zip(starts, bounds, strict=True):
            batch = images[start:stop]
            if not np.issubdtype(batch.dtype, np.floating):
                batch = batch.astype(np.float32)  # leukdx models take float [0, 255] pixels
            model(ops.convert_to_tensor(batch), training=False)
    finally:
        for layer in layers:
            del layer.call  # back to the class's method
    for layer in layers:
        s = sums[id(layer)]
        mean = s["x"] / s["n"]
        variance = np.maximum(s["x2"] / s["n"] - mean**2, 0.0)
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    return len(layers)


@contextlib.contextmanager
def adapted_batchnorm(
    model: keras.Model, images: np.ndarray, batch_size: int = ADAPT_BATCH_SIZE
) -> Iterator[int]:
    """Inside the block ``model``'s BatchNorm statistics are those of ``images``
    (:func:`adapt_batchnorm`); on leaving it the training statistics are restored.

    Yields:
        The number of BatchNorm layers adapted.
    """
    layers = batchnorm_layers(model)
    saved = [(ops.convert_to_numpy(layer.moving_mean), ops.convert_to_numpy(layer.moving_variance))
             for layer in layers]
    try:
        yield adapt_batchnorm(model, images, batch_size)
    finally:
        for layer, (mean, variance) in zip(layers, saved, strict=True):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(variance)
