"""Tests of leukdx.models.layers: preprocessing, LRN and inference-mode BatchNormalization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from leukdx.models.layers import (
    InferenceBatchNormalization,
    LocalResponseNormalization,
    Preprocess,
    use_inference_batchnorm,
)


def rgb_batch(n=2, size=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.vgg16.preprocess_input),
        ("tf", keras.applications.xception.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_preprocess_matches_keras_applications(mode, reference):
    x = rgb_batch()
    expected = reference(x.copy())
    np.testing.assert_allclose(np.asarray(Preprocess(mode)(x)), expected, rtol=1e-5, atol=1e-4)


def test_preprocess_none_passes_values_through():
    x = rgb_batch()
    np.testing.assert_array_equal(np.asarray(Preprocess("none")(x)), x)


def test_preprocess_rejects_unknown_modes():
    with pytest.raises(ValueError, match="caffe"):
        Preprocess("imagenet")


def test_preprocess_config_round_trip():
    layer = Preprocess("tf", name="preprocess")
    clone = Preprocess.from_config(layer.get_config())
    assert (clone.mode, clone.name) == ("tf", "preprocess")
    x = rgb_batch()
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(layer(x)))


def test_preprocess_under_bfloat16_stays_close_to_float32():
    x = rgb_batch()
    exact = np.asarray(Preprocess("caffe")(x))
    low = Preprocess("caffe", dtype="mixed_bfloat16")(x)
    assert low.dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(tf.cast(low, tf.float32)), exact, atol=1.0)


@settings(max_examples=15, deadline=None)
@given(
    depth_radius=st.integers(0, 4),
    bias=st.floats(0.5, 3.0),
    alpha=st.floats(1e-5, 1e-2),
    beta=st.floats(0.25, 1.0),
    channels=st.integers(1, 12),
)
def test_lrn_matches_tensorflow(depth_radius, bias, alpha, beta, channels):
    x = np.random.default_rng(channels).normal(0, 20, (2, 3, 3, channels)).astype("float32")
    layer = LocalResponseNormalization(depth_radius, bias, alpha, beta)
    expected = tf.nn.local_response_normalization(
        x, depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta
    )
    np.testing.assert_allclose(np.asarray(layer(x)), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_lrn_defaults_are_krizhevsky_2012():
    config = LocalResponseNormalization().get_config()
    assert (config["depth_radius"], config["bias"], config["alpha"], config["beta"]) == (
        2, 2.0, 1e-4, 0.75
    )


def test_lrn_does_not_overflow_under_float16():
    x = np.full((1, 2, 2, 8), 300.0, "float32")  # 5 * 300**2 overflows float16 (max 65504)
    out = LocalResponseNormalization(dtype="mixed_float16")(x)
    assert out.dtype == "float16"
    expected = tf.nn.local_response_normalization(x, 2, 2.0, 1e-4, 0.75).numpy()
    np.testing.assert_allclose(np.asarray(tf.cast(out, tf.float32)), expected, rtol=2e-3)


def _bn_input():
    return np.random.default_rng(3).normal(5.0, 2.0, (8, 4)).astype("float32")


def test_inference_batchnorm_ignores_the_training_flag():
    x = _bn_input()
    layer = InferenceBatchNormalization()
    inference = np.asarray(layer(x, training=False))
    training = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(training, inference)
    np.testing.assert_array_equal(np.asarray(layer.moving_mean), np.zeros(4, "float32"))
    # A plain BatchNormalization does use and update batch statistics in training.
    plain = keras.layers.BatchNormalization()
    assert not np.allclose(np.asarray(plain(x, training=True)), inference)
    assert not np.allclose(np.asarray(plain.moving_mean), 0.0)


def test_use_inference_batchnorm_switches_only_plain_batchnorm_layers():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, x)
    x_in = _bn_input()
    before = np.asarray(model(x_in, training=False))

    assert use_inference_batchnorm(model.layers) == 1
    assert use_inference_batchnorm(model.layers) == 0  # already switched
    bn = model.get_layer("bn")
    assert isinstance(bn, InferenceBatchNormalization) and bn.name == "bn"
    assert type(model.get_layer("dense")) is keras.layers.Dense
    np.testing.assert_array_equal(np.asarray(model(x_in, training=True)), before)
    assert bn.gamma.trainable
