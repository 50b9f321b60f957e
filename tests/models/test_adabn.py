"""AdaBN: BatchNorm statistics re-estimated on one source's images, without labels."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from leukdx.config import ConfigError, config_from_dict
from leukdx.evaluation.runner import FineTuneTrainer
from leukdx.models.adabn import adapt_batchnorm, adapted_batchnorm, batchnorm_layers


def _input_bn_model(dropout: float = 0.0) -> keras.Model:
    """Input -> Dropout -> BN -> mean of channel 0 -> sigmoid; Dense fixed to read x0."""
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Dropout(dropout)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(1, activation="sigmoid", name="read_x0")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.array([[8.0], [0.0], [0.0]], np.float32), np.zeros(1, np.float32)])
    return model


@pytest.mark.parametrize("n, batch_size", [(130, 64), (129, 64), (7, 64), (20, 3)])
def test_statistics_are_the_pooled_moments_of_the_images(n, batch_size):
    rng = np.random.default_rng(n)
    images = rng.normal([5.0, -2.0, 30.0], [3.0, 0.5, 10.0], (n, 4, 4, 3)).astype(np.float32)
    # a heavy dropout in front would change the moments if it ran in training mode
    model = _input_bn_model(dropout=0.9)
    assert adapt_batchnorm(model, images, batch_size=batch_size) == 1
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), images.mean(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), images.var(axis=(0, 1, 2)),
                               rtol=1e-3)


def test_context_restores_the_training_statistics_and_nested_layers_are_found():
    inner = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization()], name="backbone")
    model = keras.Sequential([keras.Input((6, 6, 3)), inner, keras.layers.BatchNormalization(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    assert len(batchnorm_layers(model)) == 2
    images = np.random.default_rng(0).uniform(0, 255, (10, 6, 6, 3)).astype(np.float32)
    before = model.predict(images, verbose=0)
    with adapted_batchnorm(model, images) as count:
        assert count == 2
        adapted = model.predict(images, verbose=0)
        # the nested backbone's layer moved off its initial statistics (mean 0, variance 1)
        assert np.abs(batchnorm_layers(inner)[0].moving_variance.numpy() - 1.0).max() > 1.0
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)
    assert np.abs(adapted - before).max() > 1e-3


def test_adaptation_undoes_a_source_shift_that_breaks_the_fixed_statistics():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    # the class is the sign of channel 0 about its source's mean
    signal = np.where(labels == 1, 1.0, -1.0)[:, None, None, None] * np.array([1.0, 0, 0])
    source_a = (100.0 + 10.0 * signal + rng.normal(0, 1, (200, 4, 4, 3))).astype(np.float32)
    # a new lab: brighter and with less contrast
    source_b = (160.0 + 4.0 * signal + rng.normal(0, 0.4, (200, 4, 4, 3))).astype(np.float32)
    model = _input_bn_model()
    adapt_batchnorm(model, source_a)  # the "training" statistics

    def accuracy(images):
        return float(((model.predict(images, verbose=0)[:, 0] >= 0.5) == labels).mean())

    assert accuracy(source_a) == 1.0
    assert accuracy(source_b) == pytest.approx(labels.mean())  # everything called leukaemia
    with adapted_batchnorm(model, source_b):
        assert accuracy(source_b) == 1.0
    assert accuracy(source_b) == pytest.approx(labels.mean())


def test_a_model_without_batchnorm_is_left_alone_and_one_image_is_refused():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.GroupNormalization(groups=3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    weights = [w.copy() for w in model.get_weights()]
    assert adapt_batchnorm(model, np.zeros((5, 4, 4, 3), np.float32)) == 0
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="at least 2 images"):
        adapt_batchnorm(_input_bn_model(), np.zeros((1, 4, 4, 3), np.float32))


def test_the_runner_adapts_to_each_test_source_separately():
    rng = np.random.default_rng(2)
    # uint8, as the runner scores them
    a = np.clip(rng.normal(50, 5, (12, 4, 4, 3)), 0, 255).astype(np.uint8)
    b = np.clip(rng.normal(200, 20, (8, 4, 4, 3)), 0, 255).astype(np.uint8)
    images = np.concatenate([a, b])[[0, 12, 1, 13, *range(2, 12), *range(14, 20)]]
    records = pd.DataFrame({"source": ["a", "b", "a", "b"] + ["a"] * 10 + ["b"] * 6})
    model = _input_bn_model()
    adapt_batchnorm(model, a)
    cfg = config_from_dict({"evaluate": {"adapt_bn": "test_source"}})
    plain_cfg = config_from_dict({})
    trainer = FineTuneTrainer()

    probabilities, _ = trainer._score_sources(model, images, cfg, records)
    for source, own in (("a", a), ("b", b)):
        rows = (records["source"] == source).to_numpy()
        with adapted_batchnorm(model, own):
            expected = model.predict(images[rows].astype(np.float32), verbose=0)[:, 0]
        np.testing.assert_allclose(probabilities[rows], expected, rtol=1e-5, atol=1e-6)
    # without the setting the training statistics score everything
    plain, _ = trainer._score_sources(model, images, plain_cfg, records)
    np.testing.assert_allclose(
        plain, model.predict(images.astype(np.float32), verbose=0)[:, 0], rtol=1e-5)
    assert not np.allclose(plain, probabilities)


def test_unknown_adapt_bn_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluate.adapt_bn"):
        config_from_dict({"evaluate": {"adapt_bn": "always"}})
