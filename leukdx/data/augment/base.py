"""Per-example stateless randomness shared by every leukdx augmentation layer.

Every random layer of :mod:`leukdx.data.augment` derives what it does to image ``i`` of a batch
from a seed pair ``seeds[i]`` (``(B, 2)`` integers) through a counter-based generator
(:func:`random_uniform`: a hash of the seed pair and a counter, computed for the whole batch at
once). The same seed pair always gives the same transform, whatever the batch it sits in, the
batch size, the thread or device that runs it or the order in which ``tf.data`` runs parallel
map calls.

Where the seeds come from:

* ``augment.placement: pipeline`` — :func:`leukdx.data.pipeline.make_dataset` attaches to each
  example a seed pair derived from (run seed, epoch, example index) and calls
  :func:`leukdx.data.augment.apply_augmentation` with it.
* ``augment.placement: model`` or a direct call ``layer(images)`` — no seeds are given, so the
  layer draws one pair per image from its own ``keras.random.SeedGenerator``. That generator is
  a state advanced on every call: the sequence is reproducible only when calls happen in one
  order (single-threaded), as for Keras' own random layers.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

__all__ = ["StatelessRandomLayer", "fold_in", "random_normal", "random_uniform"]

# Largest seed drawn from a SeedGenerator (stateless ops accept any int32/int64 pair).
_SEED_MAX = 2**31 - 1


_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: spreads consecutive counters over 32 bits


def _u32(value: int):
    return tf.constant(value & 0xFFFFFFFF, tf.uint32)


def _mix32(h):
    """MurmurHash3's 32-bit finaliser (full avalanche) on uint32 tensors (wrapping products)."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))
    h = h * _u32(0x85EBCA6B)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(13)))
    h = h * _u32(0xC2B2AE35)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))


def _key(seeds, salt: int = 0):
    """One well-mixed uint32 key per example from its seed pair (all 128 bits) and a salt."""
    words = tf.reshape(tf.bitcast(tf.cast(seeds, tf.int64), tf.uint32), (-1, 4))
    h = _mix32(words[:, 0] + _u32(_GOLDEN * (2 * salt + 1)))
    for i in (1, 2, 3):
        h = _mix32(tf.bitwise.bitwise_xor(h + _u32(_GOLDEN), words[:, i]))
    return h


def random_uniform(seeds, count: int):
    """``count`` uniform numbers in ``[0, 1)`` per example, from per-example seeds.

    A counter-based generator: number ``j`` of example ``i`` is a hash (MurmurHash3's
    finaliser, chained) of ``(seeds[i], j)``. It is a pure function of the seeds, vectorised
    over the batch (no per-example loop), and the same on every device and thread.

    Args:
        seeds: ``(B, 2)`` int32 or int64 tensor, one seed pair per example.
        count: numbers per example.

    Returns:
        float32 tensor ``(B, count)``; row ``i`` depends only on ``seeds[i]``.

    Example:
        >>> u = random_uniform(tf.constant([[1, 2], [3, 4]]), 3)   # (2, 3)
    """
    key = _key(seeds)[:, None]
    steps = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN) & 0xFFFFFFFF
    counter = _mix32(tf.constant(steps.astype(np.uint32)))[None, :]
    h = _mix32(tf.bitwise.bitwise_xor(key, counter) + key)
    # 24 random bits: exactly representable in float32, so the result is < 1.
    return tf.cast(tf.bitwise.right_shift(h, _u32(8)), tf.float32) / float(1 << 24)


def random_normal(seeds, count: int):
    """``count`` standard normal numbers per example (see :func:`random_uniform`)."""
    u = random_uniform(seeds, count)
    return tf.math.ndtri(tf.clip_by_value(u, 1e-7, 1.0 - 1e-7))


def fold_in(seeds, salt: int):
    """New per-example seed pairs, independent of ``seeds`` for every distinct ``salt``.

    Used to give each layer of a preset its own stream from the same example seeds.
    """
    key = tf.cast(_key(seeds), tf.int64)
    return tf.stack([key, tf.fill(tf.shape(key), tf.constant(int(salt), tf.int64))], axis=1)


class StatelessRandomLayer(keras.layers.Layer):
    """Base of leukdx's random image layers: float32 ``[0, 255]`` batches, per-example seeds.

    Subclasses implement :meth:`augment`. Calling the layer with ``training=False`` returns
    the images unchanged; with ``training=True`` (the default when called directly, as for
    Keras' preprocessing layers) it augments them with ``seeds`` when given, otherwise with
    seeds drawn from the layer's ``SeedGenerator``.

    Args:
        seed: seed of the layer's ``SeedGenerator`` (used only when no seeds are passed).
    """

    def __init__(self, seed: int | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")  # pixel maths stays float32 under mixed policies
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False
        # Like Keras' own random image layers: stateless-per-example loops (map_fn), the
        # projective-transform and JPEG kernels keep XLA off.
        self.supports_jit = False

    def call(self, images, training=True, seeds=None):
        if not training:
            return images
        in_dtype = images.dtype
        images = ops.cast(images, "float32")
        if seeds is None:
            seeds = self.draw_seeds(ops.shape(images)[0])
        out = self.augment(images, seeds)
        return ops.cast(out, in_dtype)

    def draw_seeds(self, batch_size):
        """One stateless seed pair per image from the layer's generator (stateful)."""
        return keras.random.randint(
            (batch_size, 2), 0, _SEED_MAX, seed=self.seed_generator, dtype="int32"
        )

    def augment(self, images, seeds):  # pragma: no cover - abstract
        """Augment float32 ``(B, H, W, 3)`` images in ``[0, 255]`` with ``(B, 2)`` seeds."""
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, inputs, training=True, seeds=None):
        # Shape and dtype never change; no need to trace the call (RandStainNA may not be
        # fitted yet when a model is assembled).
        return keras.KerasTensor(inputs.shape, dtype=inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config
