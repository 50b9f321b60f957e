"""Tests of leukdx.models.weights: resolving ``model.weights`` offline and loading files.

Nothing here downloads: the Keras cache is an empty temporary folder (``KERAS_HOME``) and the
network probe is replaced.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from leukdx.config import ModelConfig
from leukdx.models import backbone_layers, build_model, get_backbone
from leukdx.models import weights as weights_mod
from leukdx.models.alexnet import alexnet_base
from leukdx.models.weights import (
    WeightsUnavailableError,
    keras_models_dir,
    load_pretrained,
    network_available,
    normalize_weights,
    resolve_weights,
)


@pytest.fixture
def keras_home(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache and a network probe that reports no connection."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(weights_mod, "network_available", lambda *a, **k: False)
    return home


def weighted(layers):
    return [layer for layer in layers if layer.weights]


def assert_same_weights(layers_a, layers_b):
    layers_a, layers_b = weighted(layers_a), weighted(layers_b)
    assert len(layers_a) == len(layers_b) > 0
    for a, b in zip(layers_a, layers_b):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("none", None), ("None", None), ("", None), ("imagenet", "imagenet"),
     ("ImageNet", "imagenet"), ("w/vgg.h5", "w/vgg.h5")],
)
def test_normalize_weights(value, expected):
    assert normalize_weights(value) == expected


def test_keras_models_dir_follows_keras_home(keras_home):
    assert keras_models_dir() == keras_home / "models"


def test_none_means_random_initialisation():
    assert resolve_weights(get_backbone("vgg16"), "none") is None


def test_missing_imagenet_weights_fail_fast_with_download_instructions(keras_home):
    spec = get_backbone("vgg16")
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(spec, "imagenet")
    message = str(err.value)
    file = spec.imagenet_notop
    assert file.fname == "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert file.url in message
    assert str(keras_home / "models" / file.fname) in message
    assert "model.weights: none" in message
    assert "KERAS_HOME" in message


def test_build_model_fails_on_missing_imagenet_weights_before_building(keras_home):
    cfg = ModelConfig(backbone="resnet50", strategy="mdft", weights="imagenet")
    with pytest.raises(WeightsUnavailableError, match="resnet50_weights_tf_dim_ordering"):
        build_model(cfg, 32)


def test_original_dense_layers_at_default_size_ask_for_the_file_with_the_top(keras_home):
    cfg = ModelConfig(backbone="vgg16", strategy="dft", weights="imagenet")
    with pytest.raises(WeightsUnavailableError) as err:
        build_model(cfg, 224)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in str(err.value)


def test_cached_imagenet_file_is_used_without_probing_the_network(keras_home, monkeypatch):
    def probe(*args, **kwargs):
        raise AssertionError("the network must not be probed when the file is cached")

    monkeypatch.setattr(weights_mod, "network_available", probe)
    spec = get_backbone("xception")
    cached = keras_home / "models" / spec.imagenet_notop.fname
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"placeholder")
    assert resolve_weights(spec, "imagenet") == str(cached)


def test_failed_download_explains_what_to_do(keras_home, monkeypatch):
    monkeypatch.setattr(weights_mod, "network_available", lambda *a, **k: True)

    def broken_get_file(*args, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(keras.utils, "get_file", broken_get_file)
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(get_backbone("inception_v3"), "imagenet")
    assert "connection reset" in str(err.value)
    assert get_backbone("inception_v3").imagenet_notop.url in str(err.value)


def test_alexnet_has_no_imagenet_weights(keras_home):
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(get_backbone("alexnet"), "imagenet")
    message = str(err.value)
    assert "alexnet" in message and "local weights file" in message and "none" in message


def test_local_path_must_exist_and_be_a_weights_file(tmp_path):
    spec = get_backbone("vgg16")
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        resolve_weights(spec, tmp_path / "missing.h5")
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(WeightsUnavailableError, match="not a Keras weights file"):
        resolve_weights(spec, text)


def test_network_probe_tells_open_from_closed_ports():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert network_available("127.0.0.1", port, timeout=1.0)
    assert not network_available("127.0.0.1", port, timeout=1.0)


def test_keras_weights_file_of_a_base_loads_into_the_model(tmp_path):
    spec = get_backbone("mobilenet_v3_small")
    base = spec.build((32, 32, 3), weights="none")
    path = tmp_path / "mobilenet.weights.h5"
    base.save_weights(path)

    model = build_model(ModelConfig(backbone="mobilenet_v3_small", strategy="mdft",
                                    weights=str(path)), 32)
    assert_same_weights(spec.base_layers(base), backbone_layers(model))


def test_cached_imagenet_h5_loads_into_the_model(keras_home):
    """A Keras Applications style file in the cache is what ``imagenet`` loads."""
    spec = get_backbone("mobilenet_v3_small")
    source = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, include_preprocessing=False
    )
    cached = keras_home / "models" / spec.imagenet_notop.fname
    cached.parent.mkdir(parents=True)
    source.save(cached)  # legacy HDF5 format, like the Keras Applications files

    model = build_model(ModelConfig(backbone="mobilenet_v3_small", strategy="msft",
                                    weights="imagenet"), 32)
    assert_same_weights(source.layers, backbone_layers(model))


def test_imagenet_dense_layers_are_random_at_another_size_with_a_warning(keras_home):
    spec = get_backbone("vgg16")
    source = keras.applications.VGG16(input_shape=(32, 32, 3), include_top=False, weights=None)
    cached = keras_home / "models" / spec.imagenet_notop.fname
    cached.parent.mkdir(parents=True)
    source.save(cached)

    with pytest.warns(UserWarning, match="randomly initialised"):
        model = build_model(ModelConfig(backbone="vgg16", strategy="dft", weights="imagenet"),
                            32)
    assert_same_weights(source.layers, backbone_layers(model))


def tiny_network(with_top: bool) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.Conv2D(2, 3, name="conv_b")(x)
    if with_top:
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(5, name="fc1")(x)
        x = keras.layers.Dense(3, name="predictions")(x)
    return keras.Model(inputs, x)


def test_legacy_h5_fills_the_base_in_order_and_dense_layers_by_name(tmp_path):
    source = tiny_network(with_top=True)
    path = tmp_path / "full.h5"
    source.save(path)

    target = tiny_network(with_top=True)
    base = [target.get_layer(n) for n in ("conv_a", "bn_a", "conv_b")]
    loaded = load_pretrained(base, path, top_layers=[target.get_layer("fc1")])
    assert loaded == ["fc1"]
    names = ["conv_a", "bn_a", "conv_b", "fc1"]
    assert_same_weights([source.get_layer(n) for n in names], [target.get_layer(n) for n in names])
    assert not np.array_equal(target.get_layer("predictions").get_weights()[0],
                              source.get_layer("predictions").get_weights()[0])


def test_weights_of_another_network_are_refused_with_the_layer_named(tmp_path):
    path = tmp_path / "alexnet.h5"
    alexnet_base((67, 67, 3)).save(path)
    target = tiny_network(with_top=False)
    base = [layer for layer in target.layers if layer.weights]
    with pytest.raises(WeightsUnavailableError) as err:
        load_pretrained(base, path)
    assert "conv1" in str(err.value) and "conv_a" in str(err.value)


def test_too_few_layers_in_a_file_are_refused(tmp_path):
    path = tmp_path / "tiny.h5"
    tiny_network(with_top=False).save(path)
    spec = get_backbone("alexnet")
    base = spec.build((67, 67, 3), weights="none")
    with pytest.raises(WeightsUnavailableError, match="holds 3 layers with weights"):
        load_pretrained(spec.base_layers(base), path)


def test_alexnet_base_file_warns_that_the_dense_layers_stay_random(tmp_path):
    source = alexnet_base((67, 67, 3))
    path = tmp_path / "alexnet_conv.h5"
    source.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(ModelConfig(backbone="alexnet", strategy="sft", weights=str(path)),
                            67)
    assert any("fc6, fc7" in str(w.message) for w in caught)
    assert_same_weights(source.layers, backbone_layers(model))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("name", ["mobilenet.weights.h5", "mobilenet_notop.h5"])
def test_damaged_weights_file_is_called_corrupt_not_a_mismatch(tmp_path, damage, name):
    spec = get_backbone("mobilenet_v3_small")
    base = spec.build((32, 32, 3), weights="none")
    path = tmp_path / name
    if name.endswith(".weights.h5"):
        base.save_weights(path)
    else:
        base.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\0junk" * 999)
    target = spec.build((32, 32, 3), weights="none")
    with pytest.raises(WeightsUnavailableError) as err:
        load_pretrained(spec.base_layers(target), path, spec=spec, input_shape=(32, 32, 3))
    message = str(err.value)
    assert str(path) in message and "corrupt" in message and "model.weights" in message
    assert "does not fit" not in message and "belongs to another" not in message


def test_weights_of_another_backbone_still_do_not_fit(tmp_path):
    path = tmp_path / "vgg16.weights.h5"
    get_backbone("vgg16").build((32, 32, 3), weights="none").save_weights(path)
    spec = get_backbone("mobilenet_v3_small")
    target = spec.build((32, 32, 3), weights="none")
    with pytest.raises(WeightsUnavailableError, match="does not fit backbone"):
        load_pretrained(spec.base_layers(target), path, spec=spec, input_shape=(32, 32, 3))
