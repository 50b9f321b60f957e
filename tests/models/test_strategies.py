"""Tests of leukdx.models.strategies: SFT/DFT/mSFT/mDFT models for every backbone."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from leukdx.config import HeadConfig, ModelConfig
from leukdx.models import backbone_layers, build_model, get_backbone, list_backbones
from leukdx.models.layers import InferenceBatchNormalization, Preprocess
from leukdx.models.strategies import (
    SCRATCH_BN_MOMENTUM,
    head_layout,
    list_strategies,
    model_backbone,
)

STRATEGIES = ["sft", "dft", "msft", "mdft"]
FROZEN_BLOCKS = 2


def config(backbone, strategy, **kwargs) -> ModelConfig:
    kwargs.setdefault("weights", "none")
    kwargs.setdefault("frozen_blocks", FROZEN_BLOCKS)
    return ModelConfig(backbone=backbone, strategy=strategy, **kwargs)


def images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def built():
    """Builds each (backbone, strategy) model once per module, under mixed_bfloat16."""
    cache = {}

    def get(backbone, strategy):
        if (backbone, strategy) not in cache:
            previous = keras.mixed_precision.global_policy()
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
            try:
                size = get_backbone(backbone).min_size
                cache[backbone, strategy] = build_model(config(backbone, strategy), size)
            finally:
                keras.mixed_precision.set_global_policy(previous)
        return cache[backbone, strategy]

    return get


def test_all_four_strategies_are_registered():
    assert set(STRATEGIES) <= set(list_strategies())


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backbone", list_backbones())
def test_model_layout_and_trainable_layers_follow_the_strategy(backbone, strategy, built):
    spec = get_backbone(backbone)
    model = built(backbone, strategy)

    assert model.name == f"{backbone}_{strategy}"
    assert model.input.shape == (None, spec.min_size, spec.min_size, 3)
    assert model.output.shape == (None, 1)
    assert model.output.dtype == "float32"  # under mixed_bfloat16
    preprocess = model.get_layer("preprocess")
    assert isinstance(preprocess, Preprocess) and preprocess.mode == spec.preprocess_mode
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert isinstance(model.get_layer(spec.last_conv_layer), keras.layers.Layer)

    names = {layer.name for layer in model.layers}
    original_top = strategy in ("sft", "dft")
    has_fc = set(spec.dense_top_names) <= names and bool(spec.dense_top_names)
    has_head = "head_dense_1" in names
    assert has_fc == (original_top and bool(spec.dense_top))
    assert has_head == (not original_top)
    if has_head:
        units, _ = spec.default_head
        assert [model.get_layer(f"head_dense_{i + 1}").units for i in range(len(units))] == list(
            units
        )
    if original_top or spec.pooling == "gap":
        assert spec.feature_layer in names

    base = backbone_layers(model)
    assert base and base[0].name != "preprocess"
    bns = [layer for layer in base if isinstance(layer, keras.layers.BatchNormalization)]
    # weights none: trained from scratch, so BN layers learn their statistics, quickly
    assert not any(isinstance(layer, InferenceBatchNormalization) for layer in bns)
    assert all(layer.momentum <= SCRATCH_BN_MOMENTUM for layer in bns)
    top = model.layers[model.layers.index(base[-1]) + 1:]
    assert all(layer.trainable for layer in top), "dense layers are always trained"

    frozen = {layer.name for layer in base if not layer.trainable}
    if strategy == "msft":
        assert frozen == {layer.name for layer in base}
    elif strategy == "sft":
        blocks = spec.layer_blocks(base)
        expected = {layer.name for layer, b in zip(base, blocks) if b < FROZEN_BLOCKS}
        assert frozen == expected
        assert 0 < len(frozen) < len(base)
        assert model.get_layer(spec.last_conv_layer).trainable
    else:
        assert frozen == set()


def _round_trip_strategy(backbone: str) -> str:
    # SFT exercises the original dense layers and frozen flags where a backbone has them.
    return "sft" if get_backbone(backbone).dense_top else "mdft"


@pytest.mark.parametrize("backbone", list_backbones())
def test_model_round_trips_through_keras_file_in_safe_mode(backbone, tmp_path, built):
    spec = get_backbone(backbone)
    model = built(backbone, _round_trip_strategy(backbone))  # a mixed_bfloat16 model
    x = images(spec.min_size)
    before = np.asarray(model(x, training=False))
    assert before.dtype == np.float32 and before.shape == (2, 1)

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    after = np.asarray(loaded(x, training=False))
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert after.dtype == np.float32
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [layer.trainable for layer in loaded.layers] == [
        layer.trainable for layer in model.layers
    ]
    assert [layer.name for layer in backbone_layers(loaded)] == [
        layer.name for layer in backbone_layers(model)
    ]
    assert model_backbone(loaded) is spec
    conv = spec.last_conv_layer
    assert loaded.get_layer(conv).compute_dtype == model.get_layer(conv).compute_dtype


@pytest.mark.parametrize(("strategy", "gamma_trains"), [("mdft", True), ("msft", False)])
def test_batchnorm_keeps_its_statistics_while_fine_tuning(strategy, gamma_trains, tmp_path):
    spec = get_backbone("mobilenet_v3_small")
    weights = tmp_path / "base.weights.h5"  # stands in for pretrained weights
    spec.build((32, 32, 3), weights=None).save_weights(weights)
    model = build_model(config("mobilenet_v3_small", strategy, weights=str(weights)), 32)
    bns = [layer for layer in backbone_layers(model)
           if isinstance(layer, keras.layers.BatchNormalization)]
    means = [np.asarray(layer.moving_mean).copy() for layer in bns]
    variances = [np.asarray(layer.moving_variance).copy() for layer in bns]
    model(images(32, n=4), training=True)  # what fit() does in every step

    for layer, mean, variance in zip(bns, means, variances):
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), mean)
        np.testing.assert_array_equal(np.asarray(layer.moving_variance), variance)
    trainable = {id(v) for v in model.trainable_weights}
    assert all((id(layer.gamma) in trainable) == gamma_trains for layer in bns)


def test_image_size_below_the_backbone_minimum_names_both_settings():
    with pytest.raises(ValueError) as err:
        build_model(config("inception_v3", "mdft"), 64)
    message = str(err.value)
    assert "model.backbone=inception_v3" in message and "data.image_size=64" in message
    assert "75" in message


@pytest.mark.parametrize("frozen", [-1, 6])
def test_sft_rejects_frozen_blocks_out_of_range(frozen):
    with pytest.raises(ValueError, match="model.frozen_blocks"):
        build_model(config("vgg16", "sft", frozen_blocks=frozen), 32)


def test_sft_with_all_blocks_frozen_trains_only_the_dense_layers():
    model = build_model(config("vgg16", "sft", frozen_blocks=5), 32)
    assert not any(layer.trainable for layer in backbone_layers(model))
    assert model.get_layer("fc1").trainable and model.get_layer("fc2").trainable


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="model.strategy") as err:
        build_model(config("vgg16", "xft"), 32)
    assert "mdft" in str(err.value)


def test_custom_head_from_config():
    head = HeadConfig(units=[64, 32], dropout=[0.2])
    model = build_model(config("alexnet", "mdft", head=head), 67)
    assert model.get_layer("head_dense_1").units == 64
    assert model.get_layer("head_dense_2").units == 32
    assert model.get_layer("head_dropout_1").rate == pytest.approx(0.2)
    assert model.get_layer("head_dropout_2").rate == pytest.approx(0.2)
    assert "head_dense_3" not in {layer.name for layer in model.layers}


def test_head_layout_defaults_and_validation():
    vgg = get_backbone("vgg16")
    assert head_layout(vgg, HeadConfig()) == [(1024, 0.5), (256, 0.6)]
    assert head_layout(vgg, HeadConfig(units=[512, 128])) == [(512, 0.5), (128, 0.6)]
    assert head_layout(vgg, HeadConfig(units=[64])) == [(64, 0.5)]
    assert head_layout(get_backbone("xception"), None) == [(128, 0.5)]
    with pytest.raises(ValueError, match="model.head.dropout"):
        head_layout(vgg, HeadConfig(units=[8, 8, 8], dropout=[0.1, 0.2]))
    with pytest.raises(ValueError, match="model.head.dropout"):
        head_layout(vgg, HeadConfig(units=[8], dropout=[1.0]))
    with pytest.raises(ValueError, match="model.head.units"):
        head_layout(vgg, HeadConfig(units=[0]))


def test_augmentation_layer_sits_between_input_and_preprocessing():
    augmentation = keras.layers.RandomFlip("horizontal", seed=0, name="augmentation")
    model = build_model(config("alexnet", "mdft"), 67, augmentation=augmentation)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["image", "augmentation", "preprocess"]
    assert backbone_layers(model)[0].name == "conv1"
    # Active only in training: at inference the model sees the image as given.
    probe = keras.Model(model.input, model.get_layer("augmentation").output)
    x = images(67)
    np.testing.assert_array_equal(np.asarray(probe(x, training=False)), x)


def test_models_built_by_other_code_are_rejected_by_backbone_layers():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with pytest.raises(ValueError, match="not built by leukdx"):
        backbone_layers(model)
