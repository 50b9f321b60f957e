"""Tests of leukdx.models.alexnet: the layer structure of Krizhevsky et al. (2012)."""

from __future__ import annotations

import keras
import pytest

from leukdx.config import ModelConfig
from leukdx.models import build_model, get_backbone
from leukdx.models.alexnet import (
    ALEXNET_MIN_SIZE,
    alexnet_base,
    alexnet_feature_size,
    build_alexnet,
)
from leukdx.models.layers import LocalResponseNormalization
from leukdx.models.weights import WeightsUnavailableError


def of_type(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_full_alexnet_has_five_convolutions_three_dense_layers_and_lrn():
    model = build_alexnet((227, 227, 3), classes=2)
    convs = of_type(model, keras.layers.Conv2D)
    dense = of_type(model, keras.layers.Dense)
    assert [c.name for c in convs] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [c.filters for c in convs] == [96, 256, 384, 384, 256]
    assert [c.kernel_size for c in convs] == [(11, 11), (5, 5), (3, 3), (3, 3), (3, 3)]
    assert convs[0].strides == (4, 4)
    assert [d.name for d in dense] == ["fc6", "fc7", "fc8"]
    assert [d.units for d in dense] == [4096, 4096, 2]
    assert [n.name for n in of_type(model, LocalResponseNormalization)] == [
        "conv1_norm", "conv2_norm"
    ]
    assert [d.rate for d in of_type(model, keras.layers.Dropout)] == [0.5, 0.5]
    pools = of_type(model, keras.layers.MaxPooling2D)
    assert [(p.pool_size, p.strides) for p in pools] == [((3, 3), (2, 2))] * 3
    # The map sizes of the paper at 227 px: 55, 27, 13 and a 6x6x256 conv5 output.
    assert model.get_layer("conv1").output.shape[1:] == (55, 55, 96)
    assert model.get_layer("conv1_pool").output.shape[1:3] == (27, 27)
    assert model.get_layer("conv2_pool").output.shape[1:3] == (13, 13)
    assert model.get_layer("conv5_pool").output.shape[1:] == (6, 6, 256)
    assert model.get_layer("fc7").output.shape == (None, 4096)


@pytest.mark.parametrize("size", [67, 83, 99, 128, 227])
def test_feature_size_formula_matches_the_network(size):
    base = alexnet_base((size, size, 3))
    assert base.output.shape[1] == alexnet_feature_size(size) >= 1


def test_minimum_size_is_the_smallest_input_that_leaves_a_conv5_map():
    first = next(s for s in range(11, 300) if alexnet_feature_size(s) >= 1)
    assert first == ALEXNET_MIN_SIZE == get_backbone("alexnet").min_size
    with pytest.raises(ValueError, match="at least 67x67"):
        alexnet_base((66, 66, 3))


@pytest.mark.parametrize("strategy", ["sft", "dft"])
def test_original_alexnet_top_gives_4096_d_fc7_features(strategy):
    spec = get_backbone("alexnet")
    model = build_model(ModelConfig(backbone="alexnet", strategy=strategy, weights="none"), 99)
    assert model.get_layer(spec.feature_layer).output.shape == (None, 4096)
    assert model.get_layer("fc6_dropout").rate == 0.5
    assert model.get_layer("fc7_dropout").rate == 0.5
    assert "fc8" not in {layer.name for layer in model.layers}  # replaced by the prediction
    assert model.get_layer("prediction").units == 1


def test_imagenet_weights_for_alexnet_ask_for_a_local_file():
    with pytest.raises(WeightsUnavailableError, match="local weights file"):
        get_backbone("alexnet").build((67, 67, 3), weights="imagenet")
