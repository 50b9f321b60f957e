"""Tests of leukdx.models.backbones: the registry, each backbone's base and its SFT blocks."""

from __future__ import annotations

import pytest

from leukdx.models.backbones import (
    UnknownBackboneError,
    get_backbone,
    list_backbones,
    partition_by_end,
    partition_by_name,
    register_backbone,
)
from leukdx.models.layers import PREPROCESS_MODES

PAPER_BACKBONES = {"vgg16", "vgg19", "resnet50", "inception_v3", "xception", "alexnet"}


def test_registry_holds_the_papers_backbones_and_a_small_one():
    assert PAPER_BACKBONES | {"mobilenet_v3_small"} <= set(list_backbones())


@pytest.mark.parametrize(
    ("typo", "nearest"),
    [("vgg_16", "vgg16"), ("resnet", "resnet50"), ("inceptionv3", "inception_v3")],
)
def test_unknown_backbone_error_suggests_the_nearest_name(typo, nearest):
    with pytest.raises(UnknownBackboneError) as err:
        get_backbone(typo)
    message = str(err.value)
    assert f"Did you mean '{nearest}'" in message
    assert "model.backbone" in message
    assert isinstance(err.value, ValueError)


def test_get_backbone_ignores_case_and_dashes():
    assert get_backbone("VGG16").name == "vgg16"
    assert get_backbone("mobilenet-v3-small").name == "mobilenet_v3_small"


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("vgg16", preprocess_mode="caffe", min_size=32, default_size=224,
                          blocks=("block1",), last_conv_layer="x",
                          default_head=((8,), (0.5,)))(lambda shape, tensor=None: None)


@pytest.mark.parametrize(
    ("name", "mode", "min_size", "default_size"),
    [
        ("vgg16", "caffe", 32, 224),
        ("vgg19", "caffe", 32, 224),
        ("resnet50", "caffe", 32, 224),
        ("inception_v3", "tf", 75, 299),
        ("xception", "tf", 71, 299),
        ("mobilenet_v3_small", "tf", 32, 224),
        ("alexnet", "caffe", 67, 227),
    ],
)
def test_preprocessing_and_sizes_follow_keras_applications(name, mode, min_size, default_size):
    spec = get_backbone(name)
    assert (spec.preprocess_mode, spec.min_size, spec.default_size) == (
        mode, min_size, default_size
    )


@pytest.mark.parametrize(
    ("name", "units", "dropout"),
    [
        ("vgg16", (1024, 256), (0.5, 0.6)),  # LeukNet §4.2
        ("alexnet", (1024, 256), (0.5, 0.6)),
        ("resnet50", (1024,), (0.5,)),  # LeukNet §3.4
        ("inception_v3", (1024,), (0.5,)),
        ("xception", (128,), (0.5,)),
    ],
)
def test_default_heads_follow_the_paper(name, units, dropout):
    assert get_backbone(name).default_head == (units, dropout)


@pytest.mark.parametrize("name", list_backbones())
def test_spec_is_consistent(name):
    spec = get_backbone(name)
    assert spec.preprocess_mode in PREPROCESS_MODES
    assert 32 <= spec.min_size <= spec.default_size
    # Networks with original dense layers are flattened into them; the others are pooled.
    assert (spec.pooling == "flatten") == bool(spec.dense_top)
    assert len(spec.blocks) == len(set(spec.blocks)) >= 5
    if spec.dense_top:
        assert spec.feature_layer == spec.dense_top_names[-1]
    if spec.imagenet_notop is not None:
        assert spec.imagenet_notop.url.endswith("/" + spec.imagenet_notop.fname)


@pytest.fixture(scope="module")
def min_size_base():
    """Builds (once per module) each backbone's base at its minimum size."""
    built = {}

    def get(name):
        if name not in built:
            spec = get_backbone(name)
            built[name] = spec.build((spec.min_size, spec.min_size, 3), weights="none")
        return built[name]

    return get


@pytest.mark.parametrize("name", list_backbones())
def test_base_builds_at_its_minimum_size_with_a_sound_block_partition(name, min_size_base):
    spec = get_backbone(name)
    base = min_size_base(name)
    assert base.output.shape[1] >= 1 and base.output.shape[2] >= 1
    last_conv = base.get_layer(spec.last_conv_layer)
    assert len(last_conv.output.shape) == 4

    layers = spec.base_layers(base)
    assert layers and all(type(layer).__name__ != "InputLayer" for layer in layers)
    blocks = spec.layer_blocks(layers)
    assert len(blocks) == len(layers)
    assert blocks[0] == 0
    assert all(b <= c for b, c in zip(blocks, blocks[1:])), "blocks must be contiguous runs"
    assert set(blocks) == set(range(len(spec.blocks))), "every block holds layers"
    # Every block with weights holds at least one layer that carries them.
    assert all(
        any(layer.weights for layer, b in zip(layers, blocks) if b == i)
        for i in range(len(spec.blocks))
    )


@pytest.mark.parametrize("name", ["vgg16", "inception_v3", "alexnet"])
def test_base_below_minimum_size_names_the_settings(name):
    spec = get_backbone(name)
    with pytest.raises(ValueError) as err:
        spec.build((spec.min_size - 1, spec.min_size - 1, 3), weights="none")
    assert f"model.backbone={name}" in str(err.value)
    assert "data.image_size" in str(err.value)


def test_partition_by_name_keeps_unnamed_layers_with_the_block_they_follow():
    names = ["block1_conv1", "relu", "block1_pool", "block2_conv1", "add", "block10_conv1",
             "block10_pool"]
    assert partition_by_name(names, ["block1", "block2", "block10"]) == [0, 0, 0, 1, 1, 2, 2]


def test_partition_by_name_does_not_confuse_numbered_prefixes():
    # "expanded_conv" must not claim "expanded_conv_1_*" layers.
    names = ["conv", "conv_bn", "expanded_conv_project", "expanded_conv_1_expand", "conv_1"]
    blocks = ["conv", "expanded_conv", "expanded_conv_1", "conv_1"]
    assert partition_by_name(names, blocks) == [0, 0, 1, 2, 3]


def test_partition_by_name_rejects_a_missing_block():
    with pytest.raises(ValueError, match="block3"):
        partition_by_name(["block1_a", "block2_a"], ["block1", "block2", "block3"])


def test_partition_by_end_ends_blocks_at_named_layers():
    names = ["a", "b", "mixed0", "c", "mixed1_0", "mixed1", "d"]
    assert partition_by_end(names, ["mixed0", "mixed1"]) == [0, 0, 0, 1, 1, 1, 1]


def test_inception_stem_ends_at_the_second_max_pooling(min_size_base):
    spec = get_backbone("inception_v3")
    base = min_size_base("inception_v3")
    layers = spec.base_layers(base)
    blocks = spec.layer_blocks(layers)
    stem = [layer for layer, b in zip(layers, blocks) if b == 0]
    assert type(stem[-1]).__name__ == "MaxPooling2D"
    assert sum(type(layer).__name__ == "Conv2D" for layer in stem) == 5  # the 5 stem convs
    mixed0 = [layer.name for layer, b in zip(layers, blocks) if b == 1]
    assert mixed0[-1] == "mixed0"
