"""Tests of leukdx.train: helpers, the run folder, resumption and model reloading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from leukdx.config import ConfigError, config_from_dict, config_to_dict
from leukdx.train import (
    RunFolderError,
    _config_differences,
    class_weights,
    train_run,
)

RUN_JSON_KEYS = {
    "versions", "seed", "data", "device", "precision", "distribution", "train_seconds",
    "infer_ms_per_image", "epochs_completed", "epochs_planned", "best", "status",
}


def _config(root: Path, cache_dir: Path, **sections):
    data = {
        "name": "train-test",
        "seed": 7,
        "data": {"root": str(root), "image_size": 32, "cache_dir": str(cache_dir)},
        "augment": {"preset": "none"},
        "model": {"backbone": "vgg16", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adam", "learning_rate": 1e-3,
                  "validation_split": 0.25, "tensorboard": False, "verbose": 0,
                  "precision": "float32"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


# ------------------------------------------------------------------------------ pure helpers


@settings(deadline=None)  # the first call imports scikit-learn
@given(st.lists(st.integers(0, 1), min_size=2, max_size=200).filter(lambda v: 0 < sum(v) < len(v)))
def test_balanced_class_weights_give_each_class_equal_total_weight(labels):
    labels = np.array(labels)
    weights = class_weights(labels, "balanced")
    total_0 = weights[0] * (labels == 0).sum()
    total_1 = weights[1] * (labels == 1).sum()
    assert total_0 == pytest.approx(total_1)
    assert total_0 + total_1 == pytest.approx(len(labels))  # the mean weight stays 1


def test_class_weights_none_and_one_class():
    assert class_weights(np.array([0, 1, 1]), "none") is None
    with pytest.raises(ConfigError, match="both classes"):
        class_weights(np.array([1, 1, 1]), "balanced")


def test_config_differences_ignore_resumable_settings(tmp_path):
    base = _config(tmp_path, tmp_path)
    longer = _config(tmp_path, tmp_path, train={"epochs": 9, "verbose": 2})
    assert _config_differences(config_to_dict(base), config_to_dict(longer)) == []
    other = _config(tmp_path, tmp_path, model={"strategy": "dft"}, train={"learning_rate": 0.1})
    assert _config_differences(config_to_dict(base), config_to_dict(other)) == [
        "model.strategy", "train.learning_rate"]


def test_distribution_strategy_choices(monkeypatch):
    import tensorflow as tf

    from leukdx.train import distribution_strategy

    default = tf.distribute.get_strategy()
    assert distribution_strategy("none") is default
    if len(tf.config.list_logical_devices("GPU")) < 2:
        assert distribution_strategy("auto") is default
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribution_strategy("multi_worker")


def test_compile_wraps_optimizer_for_float16_loss_scaling():
    import keras

    from leukdx.config import TrainConfig
    from leukdx.train import compile_model

    previous = keras.mixed_precision.global_policy()
    try:
        for policy, scaled in (("mixed_float16", True), ("float32", False)):
            keras.mixed_precision.set_global_policy(policy)
            model = keras.Sequential([keras.Input((4,)),
                                      keras.layers.Dense(1, activation="sigmoid", dtype="float32")])
            compile_model(model, TrainConfig(optimizer="sgd", learning_rate=0.01, momentum=0.8))
            wrapped = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            assert wrapped is scaled
            inner = model.optimizer.inner_optimizer if wrapped else model.optimizer
            assert isinstance(inner, keras.optimizers.SGD)
            assert float(inner.momentum) == pytest.approx(0.8)
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ------------------------------------------------------------------------------ real runs


class Interrupt(Exception):
    """Stands in for a killed process."""


def _interrupt_after_first_epoch():
    import keras

    class InterruptAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise Interrupt("killed after epoch 1")

    return InterruptAfterFirstEpoch()


def _epoch_recorder(seen: list[int]):
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    return Recorder()


@pytest.fixture(scope="module")
def resumed_run(shared_data, tmp_path_factory):
    """A 2-epoch run on real images, killed after epoch 1 and then re-run (resumed)."""
    out = tmp_path_factory.mktemp("run")
    cfg = _config(shared_data, tmp_path_factory.mktemp("cache"),
                  data={"sources": ["all_idb2", "taleqani_all"], "max_per_class": 8})
    with pytest.raises(Interrupt):
        train_run(cfg, out, callbacks=[_interrupt_after_first_epoch()], progress=False)
    state = {
        "history_after_kill": pd.read_csv(out / "history.csv"),
        "run_json_after_kill": (out / "run.json").exists(),
        "backup_after_kill": (out / "backup").is_dir(),
    }
    seen: list[int] = []
    result = train_run(cfg, out, callbacks=[_epoch_recorder(seen)], progress=False)
    return {"cfg": cfg, "out": out, "result": result, "seen": seen, **state}


@pytest.mark.real_data
@pytest.mark.slow
def test_killed_run_resumes_at_its_last_epoch(resumed_run):
    assert list(resumed_run["history_after_kill"]["epoch"]) == [0]
    assert not resumed_run["run_json_after_kill"] and resumed_run["backup_after_kill"]
    # the re-run trained only the missing epoch, not the whole run again
    assert resumed_run["seen"] == [1]
    result = resumed_run["result"]
    assert result.resumed_from_epoch == 1 and not result.skipped
    history = pd.read_csv(resumed_run["out"] / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    # the epoch logged before the kill is kept as it was
    first = resumed_run["history_after_kill"].iloc[0]
    assert history.iloc[0]["loss"] == pytest.approx(first["loss"])
    assert result.info["epochs_completed"] == resumed_run["cfg"].train.epochs == 2
    assert not (resumed_run["out"] / "backup").exists()  # finished: no resumption state left


@pytest.mark.real_data
@pytest.mark.slow
def test_run_folder_has_every_artefact(resumed_run):
    out = resumed_run["out"]
    for name in ("config.yaml", "model.keras", "history.csv", "curves.png", "run.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    info = json.loads((out / "run.json").read_text())
    assert RUN_JSON_KEYS <= set(info)
    assert set(info["versions"]) >= {"leukdx", "tensorflow", "keras", "numpy", "python"}
    data = info["data"]
    assert len(data["fingerprint"]) == 40
    # 8 per class and source, 25 % of the groups held out for validation
    assert sum(data["n_train"].values()) + sum(data["n_val"].values()) == 32
    assert min(data["n_val"].values()) >= 1 and min(data["n_train"].values()) >= 1
    assert info["precision"] == "float32" and info["seed"] == 7
    assert info["infer_ms_per_image"] > 0 and info["train_seconds"] > 0
    assert info["best"]["monitor"] == "val_loss"
    assert info["device"]["cpu"]
    history = pd.read_csv(out / "history.csv")
    assert {"loss", "val_loss", "accuracy", "val_accuracy", "epoch_seconds"} <= set(history)
    assert info["best"]["val_loss"] == pytest.approx(history["val_loss"].min())
    # run.json numbers epochs as history.csv does (from 0)
    best_row = history.loc[history["val_loss"].idxmin()]
    assert info["best"]["epoch"] == int(best_row["epoch"])


@pytest.mark.real_data
@pytest.mark.slow
def test_model_reloads_with_safe_mode_and_predicts_the_same(resumed_run):
    from leukdx.data.pipeline import ImageCache
    from leukdx.data.records import load_collection
    from leukdx.train import load_model, predict_proba

    cfg = resumed_run["cfg"]
    records = load_collection(cfg.data.root, cfg.data, progress=False, seed=cfg.seed).records
    images = ImageCache().get(records.iloc[:12], cfg.data.image_size)
    expected = predict_proba(resumed_run["result"].model, images)
    reloaded = load_model(resumed_run["out"] / "model.keras")
    assert expected.shape == (12,) and ((expected >= 0) & (expected <= 1)).all()
    np.testing.assert_allclose(predict_proba(reloaded, images), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.real_data
@pytest.mark.slow
def test_finished_run_is_not_retrained_and_other_configs_are_refused(resumed_run):
    cfg, out = resumed_run["cfg"], resumed_run["out"]
    before = (out / "run.json").read_text()
    seen: list[int] = []
    again = train_run(cfg, out, callbacks=[_epoch_recorder(seen)], progress=False)
    assert again.skipped and seen == [] and (out / "run.json").read_text() == before
    assert again.info["epochs_completed"] == 2
    changed = _config(cfg.data.root, Path(cfg.data.cache_dir), data=config_to_dict(cfg.data),
                      model={"strategy": "dft"})
    with pytest.raises(RunFolderError, match="model.strategy"):
        train_run(changed, out, progress=False)


def test_validation_source_holds_out_that_source(tiny_collection, tmp_path):
    from leukdx.data.records import load_collection
    from leukdx.train import validation_indices

    cfg = _config(tiny_collection, tmp_path, train={"validation_source": "src_c"})
    records = load_collection(tiny_collection, cfg.data, progress=False).records
    train_pos, val_pos = validation_indices(records, cfg.train, seed=0)
    assert set(records.iloc[val_pos]["source"]) == {"src_c"} and len(val_pos) == 12
    assert "src_c" not in set(records.iloc[train_pos]["source"]) and len(train_pos) == 24
    split = _config(tiny_collection, tmp_path, train={"validation_split": 0.25})
    train_pos, val_pos = validation_indices(records, split.train, seed=0)
    assert set(records.iloc[train_pos]["group"]).isdisjoint(records.iloc[val_pos]["group"])
    assert sorted(records.iloc[val_pos]["label"].unique()) == [0, 1]
    bad = _config(tiny_collection, tmp_path, train={"validation_source": "nope"})
    with pytest.raises(ConfigError, match="nope"):
        validation_indices(records, bad.train, seed=0)


def test_force_discards_a_finished_run(tiny_collection, tmp_path):
    from leukdx.config import save_config
    from leukdx.runinfo import write_json_atomic

    cfg = _config(tiny_collection, tmp_path / "cache", train={"epochs": 1})
    out = tmp_path / "run"
    save_config(cfg, out / "config.yaml")
    write_json_atomic({"status": "finished", "epochs_planned": 1, "epochs_completed": 1},
                      out / "run.json")
    (out / "history.csv").write_text("epoch,loss\n0,0.5\n")
    seen: list[int] = []
    kept = train_run(cfg, out, callbacks=[_epoch_recorder(seen)], progress=False)
    assert kept.skipped and seen == [] and len(kept.history) == 1

    import keras

    class StopAtStart(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)
            raise Interrupt("stop before the first step")

    with pytest.raises(Interrupt):
        train_run(cfg, out, callbacks=[StopAtStart()], progress=False, force=True)
    assert seen == [0]  # training started afresh from epoch 0
    assert not (out / "run.json").exists()
    history = out / "history.csv"
    assert not history.exists() or "0.5" not in history.read_text()  # old epochs discarded


def _fake_finished_run(cfg, out: Path) -> dict[str, bytes]:
    """A run folder as a finished 1-epoch run leaves it (contents of each file returned)."""
    from leukdx.config import save_config
    from leukdx.runinfo import write_json_atomic

    save_config(cfg, out / "config.yaml")
    write_json_atomic({"status": "finished", "epochs_planned": 1, "epochs_completed": 1},
                      out / "run.json")
    (out / "history.csv").write_text("epoch,loss\n0,0.5\n")
    (out / "model.keras").write_bytes(b"the trained model")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_more_epochs_on_a_finished_run_are_refused_and_nothing_is_touched(tiny_collection,
                                                                           tmp_path):
    out = tmp_path / "run"
    before = _fake_finished_run(_config(tiny_collection, tmp_path / "cache",
                                        train={"epochs": 1}), out)
    longer = _config(tiny_collection, tmp_path / "cache", train={"epochs": 3})
    with pytest.raises(RunFolderError, match="finished 1 epochs.*train.epochs is now 3"):
        train_run(longer, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("sections", "error", "match"),
    [
        ({"model": {"backbone": "vgg61"}}, ConfigError, "vgg61"),
        ({"model": {"backbone": "inception_v3"}}, ConfigError, "at least 75"),
        ({"model": {"weights": "missing.weights.h5"}}, RuntimeError, "missing.weights.h5"),
        ({"data": {"root": "no/such/folder"}}, ValueError, "no/such/folder"),
    ],
)
def test_bad_inputs_are_refused_before_the_run_folder_is_made(tiny_collection, tmp_path,
                                                               sections, error, match):
    from leukdx.errors import LeukdxError

    cfg = _config(tiny_collection, tmp_path / "cache", **sections)
    out = tmp_path / "run"
    with pytest.raises(error, match=match) as info:
        train_run(cfg, out, progress=False)
    assert isinstance(info.value, LeukdxError)
    assert not out.exists()


def test_a_failed_run_leaves_nothing_that_blocks_the_corrected_one(tiny_collection, tmp_path,
                                                                   monkeypatch):
    import leukdx.train as train_module

    out = tmp_path / "run"
    first = _config(tiny_collection, tmp_path / "cache", train={"epochs": 1})

    def fail_to_build(*args, **kwargs):
        raise RuntimeError("out of memory while building")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "build_compiled_model", fail_to_build)
        with pytest.raises(RuntimeError, match="out of memory"):
            train_run(first, out, progress=False)
    assert not out.exists()  # created by the failed run, so removed with what it wrote

    # A folder holding only the config of a run that never trained (as older versions left
    # it) does not block another config either.
    out.mkdir()
    from leukdx.config import save_config

    save_config(first, out / "config.yaml")
    corrected = _config(tiny_collection, tmp_path / "cache",
                        train={"epochs": 1, "learning_rate": 1e-4})
    result = train_run(corrected, out, progress=False)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_completed"] == 1
    assert result.precision == info["precision"] == "float32"
    assert result.jit_compile is info["jit_compile"]
    assert isinstance(info["jit_compile"], bool)
    saved = json.loads(json.dumps(yaml.safe_load((out / "config.yaml").read_text())))
    assert saved["train"]["learning_rate"] == pytest.approx(1e-4)
