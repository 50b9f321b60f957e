"""Tests of model.norm (GroupNormalization / LayerNormalization backbones) and small_cnn."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from leukdx.config import ConfigError, HeadConfig, ModelConfig
from leukdx.models import backbone_layers, build_model, get_backbone
from leukdx.models.norm import group_count


@pytest.mark.parametrize(("channels", "groups"), [(16, 16), (32, 32), (64, 32), (88, 22),
                                                  (72, 24), (3, 3), (37, 1)])
def test_group_count_is_the_largest_divisor_up_to_32(channels, groups):
    assert group_count(channels) == groups


@pytest.mark.parametrize(("norm", "cls"), [("group", keras.layers.GroupNormalization),
                                           ("layer", keras.layers.LayerNormalization)])
@pytest.mark.parametrize("backbone", ["small_cnn", "mobilenet_v3_small"])
def test_norm_replaces_every_batchnorm_and_keeps_layer_names(backbone, norm, cls):
    plain = build_model(ModelConfig(backbone=backbone, weights="none"), 32)
    swapped = build_model(ModelConfig(backbone=backbone, weights="none", norm=norm), 32)
    plain_bn = [layer.name for layer in backbone_layers(plain)
                if isinstance(layer, keras.layers.BatchNormalization)]
    assert plain_bn, "the plain backbone has BatchNormalization"
    layers = backbone_layers(swapped)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers)
    assert [layer.name for layer in layers if type(layer) is cls] == plain_bn
    assert len(layers) == len(backbone_layers(plain))
    # The SFT block partition and Grad-CAM's layer still resolve on the swapped network.
    spec = get_backbone(backbone)
    assert len(set(spec.layer_blocks(layers))) == len(spec.blocks)
    swapped.get_layer(spec.last_conv_layer)


def test_group_norm_normalises_each_image_alone_in_training():
    """BatchNorm mixes a batch's images in training; GroupNorm keeps each image's output its own."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    other = rng.uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    outputs = {}
    for norm in ("batch", "group"):
        keras.utils.set_random_seed(0)
        # No dropout: in training it would differ between two calls anyway.
        config = ModelConfig(backbone="small_cnn", weights="none", norm=norm,
                             head=HeadConfig(dropout=[0.0]))
        model = build_model(config, 32)
        alone = model(image, training=True).numpy()[0]
        in_batch = model(np.concatenate([image, other]), training=True).numpy()[0]
        outputs[norm] = np.abs(alone - in_batch).max()
    assert outputs["group"] < 1e-5
    assert outputs["batch"] > 1e-4


def test_group_norm_model_trains_and_round_trips(tmp_path):
    model = build_model(ModelConfig(backbone="small_cnn", weights="none", norm="group"), 32)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1] * 4, "float32")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


@pytest.mark.parametrize("weights", ["imagenet", "old_weights.h5"])
def test_group_norm_refuses_batchnorm_pretrained_weights(weights):
    with pytest.raises(ConfigError, match="model.norm=group") as err:
        build_model(ModelConfig(backbone="mobilenet_v3_small", weights=weights, norm="group"), 32)
    assert "model.norm: batch" in str(err.value)


def test_norm_on_a_backbone_without_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="vgg16 has none"):
        build_model(ModelConfig(backbone="vgg16", weights="none", norm="layer"), 32)


def test_small_cnn_layout():
    spec = get_backbone("small_cnn")
    model = build_model(ModelConfig(backbone="small_cnn", weights="none"), 64)
    assert model.name == "small_cnn_mdft"
    assert model.get_layer(spec.last_conv_layer).output.shape[1:] == (4, 4, 128)
    assert model.count_params() < 500_000
