"""Tests of leukdx.features.extract: feature extraction and its disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from leukdx.config import Config, ConfigError, replace
from leukdx.data.pipeline import ImageCache
from leukdx.data.records import load_collection
from leukdx.features import extract
from leukdx.features.extract import extract_features, feature_cache_key, feature_source


def _fake_records(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"/x/{i}.png" for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "source": ["a"] * n,
        "sha256": [f"{i:064x}" for i in range(n)],
    })


def _config(tmp_path: Path, **overrides) -> Config:
    base = {
        "model.backbone": "alexnet", "model.weights": "none", "data.image_size": 67,
        "data.cache_dir": str(tmp_path / "scan"), "features.cache_dir": str(tmp_path / "features"),
    }
    return replace(Config(), {**base, **overrides})


def test_cache_key_ignores_row_order_but_tracks_everything_else(tmp_path):
    cfg = _config(tmp_path)
    records = _fake_records()
    key = feature_cache_key(feature_source(cfg), records)
    shuffled = records.sample(frac=1.0, random_state=0)
    assert feature_cache_key(feature_source(cfg), shuffled) == key
    changed = {
        "layer": {"features.layer": "fc6"},
        "size": {"data.image_size": 99},
        "aspect": {"data.aspect": "pad"},
        "seed of a random network": {"seed": 7},
        "backbone": {"model.backbone": "vgg16"},
    }
    for what, override in changed.items():
        other = feature_cache_key(feature_source(replace(cfg, override)), records)
        assert other != key, what
    assert feature_cache_key(feature_source(cfg), records.iloc[:-1]) != key


def test_cache_key_follows_weights_and_model_file_contents(tmp_path):
    weights = tmp_path / "alexnet.weights.h5"
    weights.write_bytes(b"first")
    cfg = _config(tmp_path, **{"model.weights": str(weights)})
    records = _fake_records()
    first = feature_cache_key(feature_source(cfg), records)
    weights.write_bytes(b"second")
    assert feature_cache_key(feature_source(cfg), records) != first
    # the seed does not matter once the weights are given
    assert feature_cache_key(feature_source(replace(cfg, {"seed": 1})), records) == \
        feature_cache_key(feature_source(cfg), records)
    with pytest.raises(FileNotFoundError, match="features.model"):
        feature_source(replace(cfg, {"features.model": str(tmp_path / "missing_run")}))
    with pytest.raises(FileNotFoundError, match="model.weights"):
        feature_source(replace(cfg, {"model.weights": str(tmp_path / "nope.h5")}))


def _counting(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(extract, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, name, wrapper)
    return calls


def test_second_call_is_served_from_disk_without_running_the_network(
    tiny_collection, tmp_path, monkeypatch
):
    cfg = _config(tmp_path)
    records = load_collection(tiny_collection, cfg.data, progress=False).records
    builds, forwards = _counting(monkeypatch, "build_extractor"), _counting(monkeypatch, "_forward")
    cache = ImageCache()

    first = extract_features(cfg, records, image_cache=cache)
    assert not first.from_cache
    assert first.features.shape == (len(records), 4096) and first.layer == "fc7"
    assert first.name == "alexnet:fc7"
    assert first.path.is_file() and first.path.parent == Path(cfg.features.cache_dir)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp files
    assert (len(builds), len(forwards)) == (1, 1)

    shuffled = records.sample(frac=1.0, random_state=1).reset_index(drop=True)
    second = extract_features(cfg, shuffled, image_cache=ImageCache())
    assert second.from_cache and second.layer == "fc7"
    assert (len(builds), len(forwards)) == (1, 1)  # no network built, no forward pass
    by_sha = dict(zip(records["sha256"], first.features))
    expected = np.stack([by_sha[s] for s in shuffled["sha256"]])
    np.testing.assert_array_equal(second.features, expected)

    first.path.write_bytes(b"not an npz file")  # a damaged cache is rebuilt, not trusted
    third = extract_features(cfg, records, image_cache=cache)
    assert not third.from_cache and len(builds) == 2
    # a seeded, randomly initialised network gives the same features again
    np.testing.assert_allclose(third.features, first.features, rtol=1e-5, atol=1e-6)


def _save_trained_model(run_dir: Path, size: int) -> None:
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(6, activation="relu", name="head_dense_1")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout_1")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="prediction")(x)
    run_dir.mkdir(parents=True)
    keras.Model(inputs, outputs).save(run_dir / "model.keras")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"backbone": "vgg16"}, "data": {"image_size": size, "aspect": "stretch"}}))


def test_trained_run_features_come_from_the_layer_before_the_classifier(tiny_collection, tmp_path):
    import keras

    run_dir = tmp_path / "runs" / "toy_mdft"
    _save_trained_model(run_dir, size=32)
    # the run's own input size (32) wins over data.image_size
    cfg = _config(tmp_path, **{"features.model": str(run_dir), "data.image_size": 64})
    records = load_collection(tiny_collection, cfg.data, progress=False).records
    cache = ImageCache()
    fs = extract_features(cfg, records, image_cache=cache)
    assert fs.layer == "head_dense_1"  # dropout and the sigmoid output are skipped
    assert fs.name == "toy_mdft:head_dense_1"
    assert fs.source.kind == "model" and fs.source.backbone == "vgg16"
    assert fs.source.image_size == 32 and fs.features.shape == (len(records), 6)

    model = keras.models.load_model(run_dir / "model.keras")
    head = keras.Model(model.inputs, model.get_layer("head_dense_1").output)
    images = cache.get(records, 32).astype(np.float32)
    np.testing.assert_allclose(fs.features, head.predict(images, verbose=0), rtol=1e-5, atol=1e-5)

    with pytest.raises(ConfigError, match="head_dense_1"):
        extract_features(replace(cfg, {"features.layer": "fc7"}), records, image_cache=cache)


def test_empty_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        extract_features(_config(tmp_path), _fake_records().iloc[:0])


def test_a_run_folder_reports_the_sources_it_was_trained_on(tmp_path):
    import json

    run_dir = tmp_path / "runs" / "mdft_without_idb"
    run_dir.mkdir(parents=True)
    (run_dir / "model.keras").write_bytes(b"not read here")
    (run_dir / "run.json").write_text(json.dumps(
        {"status": "finished", "data": {"sources": ["taleqani_all", "bccd"]}}
    ))
    cfg = _config(tmp_path, **{"features.model": str(run_dir)})
    source = feature_source(cfg)
    assert source.trained_on == ("bccd", "taleqani_all")
    assert extract.run_training_sources(run_dir) == ("bccd", "taleqani_all")
    (run_dir / "run.json").write_text("{}")
    assert feature_source(cfg).trained_on is None  # unknown: nothing to check against
    bare = feature_source(replace(cfg, {"features.model": str(run_dir / "model.keras")}))
    assert bare.trained_on is None
    assert feature_source(_config(tmp_path)).trained_on is None  # a backbone saw no smears


def test_grids_accept_null_for_the_backbone_row():
    from leukdx.config import config_from_dict
    from leukdx.evaluation.runner import expand_grid

    cfg = config_from_dict(
        {"task": "features", "evaluate": {"grid": {"features.model": [None, "runs/vgg16_mdft"]}}}
    )
    assert cfg.evaluate.grid == {"features.model": [None, "runs/vgg16_mdft"]}
    assert [p.cfg.features.model for p in expand_grid(cfg)] == [None, "runs/vgg16_mdft"]
    with pytest.raises(ConfigError, match="may not be empty"):
        config_from_dict({"evaluate": {"k": None}})
