"""Tests of leukdx.pretrain: SimCLR pretraining, its weights file and the per-fold cache."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leukdx.config import ConfigError, config_from_dict
from leukdx.pretrain import (
    PRETRAIN_INFO,
    fold_cache_key,
    nt_xent_loss,
    pretrain_backbone,
    pretrain_for_fold,
)

SIZE = 32


def _textures(n: int = 8, size: int = SIZE) -> np.ndarray:
    """Gray checkerboards and ring patterns: easy to tell apart under crops, turns and colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        if i < 4:
            period = 2 ** i
            pattern = (yy // period + xx // period) % 2
        else:
            pattern = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2) // (4 * (i - 3)) % 2
        out.append(np.stack([pattern * 200 + 30] * 3, -1))
    return np.asarray(out, np.uint8)


def _config(**pretrain):
    settings = {"epochs": 12, "batch_size": 8, "learning_rate": 3e-3, "crop_scale": 1.0,
                "temperature": 0.5, **pretrain}
    return config_from_dict({"model": {"backbone": "small_cnn", "weights": "none"},
                             "data": {"image_size": SIZE}, "pretrain": settings})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("simclr")
    images = _textures()
    hashes = [f"sha{i}" for i in range(len(images))]
    return pretrain_backbone(_config(), images, out, hashes, progress=False)


def test_nt_xent_matches_its_definition():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    temperature = 0.3
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = z @ z.T / temperature
    losses = []
    for i in range(8):
        positive = (i + 4) % 8
        others = [j for j in range(8) if j != i]
        losses.append(-sim[i, positive] + np.log(np.exp(sim[i, others]).sum()))
    got = float(nt_xent_loss(z1.astype("float32"), z2.astype("float32"), temperature))
    assert got == pytest.approx(np.mean(losses), rel=1e-4)


def test_loss_decreases_and_the_run_is_described(pretrained):
    losses = pretrained.losses
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < losses[0] - 0.3
    info = json.loads(pretrained.info_path.read_text())
    assert info["backbone"] == "small_cnn" and info["norm"] == "batch"
    assert info["image_size"] == SIZE and info["n_images"] == 8
    assert info["image_sha256"] == [f"sha{i}" for i in range(8)]
    assert pretrained.weights_path.name == "backbone.weights.h5"


def test_weights_load_into_a_fine_tuning_model(pretrained):
    import keras

    from leukdx.models import backbone_layers, build_model, get_backbone

    cfg = _config()
    keras.utils.set_random_seed(1)
    random_init = build_model(cfg.model, SIZE)
    keras.utils.set_random_seed(1)
    cfg.model.weights = str(pretrained.weights_path)
    fine_tune = build_model(cfg.model, SIZE)
    saved = get_backbone("small_cnn").build((SIZE, SIZE, 3), weights="none")
    saved.load_weights(str(pretrained.weights_path))
    conv = fine_tune.get_layer("stage4_2_conv").get_weights()[0]
    np.testing.assert_array_equal(conv, saved.get_layer("stage4_2_conv").get_weights()[0])
    assert len(backbone_layers(fine_tune)) == len(backbone_layers(random_init))
    # Statistics of augmented views are not kept frozen: BatchNormalization learns again.
    norms = [layer for layer in backbone_layers(fine_tune)
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is keras.layers.BatchNormalization for layer in norms)
    assert all(layer.momentum <= 0.9 for layer in norms)
    images = _textures()
    assert np.abs(fine_tune.predict(images, verbose=0)
                  - random_init.predict(images, verbose=0)).max() > 1e-4


def test_weights_of_another_norm_are_refused(pretrained):
    from leukdx.models import build_model

    cfg = _config()
    cfg.model.weights = str(pretrained.weights_path)
    cfg.model.norm = "group"
    with pytest.raises(ConfigError, match="pretrained with model.norm=batch"):
        build_model(cfg.model, SIZE)


def test_group_norm_pretraining_round_trips(tmp_path):
    from leukdx.models import build_model

    cfg = _config(epochs=1)
    cfg.model.norm = "group"
    result = pretrain_backbone(cfg, _textures(4), tmp_path, progress=False)
    cfg.model.weights = str(result.weights_path)
    model = build_model(cfg.model, SIZE)
    assert model.get_layer("stem_bn").__class__.__name__ == "GroupNormalization"


def test_fold_pretraining_is_cached_by_the_training_images(tmp_path, monkeypatch):
    import leukdx.pretrain as pretrain

    cfg = _config(epochs=1)
    images = _textures(4)
    records = pd.DataFrame({"sha256": ["a", "b", "c", "d"], "source": "s", "label": 0})
    first = pretrain_for_fold(cfg, records, images, tmp_path, progress=False)
    assert first.is_file() and (first.parent / PRETRAIN_INFO).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("a cached fold must not be pretrained again")

    monkeypatch.setattr(pretrain, "pretrain_backbone", refuse)
    shuffled = records.iloc[::-1].reset_index(drop=True)
    assert pretrain_for_fold(cfg, shuffled, images[::-1], tmp_path) == first
    other = records.assign(sha256=["a", "b", "c", "e"])
    assert fold_cache_key(cfg, other["sha256"], SIZE) != fold_cache_key(cfg, records["sha256"],
                                                                          SIZE)
    with pytest.raises(AssertionError, match="must not be pretrained"):
        pretrain_for_fold(cfg, other, images, tmp_path)


def test_cli_pretrains_on_the_training_sources(tiny_collection, tmp_path):
    from leukdx.cli import main

    config = tmp_path / "simclr.yaml"
    config.write_text(
        f"data: {{root: {tiny_collection}, image_size: 32, cache_dir: {tmp_path / 'cache'}}}\n"
        "model: {backbone: small_cnn, weights: none}\n"
        "pretrain: {epochs: 1, batch_size: 8}\n"
    )
    out = tmp_path / "weights" / "simclr"
    code = main(["pretrain", "-c", str(config), "--out", str(out),
                 "--set", "evaluate.train_sources=[src_a,src_b]"])
    assert code == 0
    info = json.loads((out / PRETRAIN_INFO).read_text())
    assert info["n_images"] == 24  # src_c (12 images) is left out
    assert (out / "backbone.weights.h5").is_file()
    code = main(["pretrain", "-c", str(config), "--out", str(out),
                 "--set", "evaluate.train_sources=[nowhere]"])
    assert code == 2
