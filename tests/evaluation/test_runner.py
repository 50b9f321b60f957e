"""Tests of the evaluation runner: grid expansion, resumption, leakage wiring, real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import ConfigError, config_from_dict
from leukdx.evaluation import runner
from leukdx.evaluation.leakage import LeakageError
from leukdx.evaluation.ledger import FOLD_KEY_COLUMNS, Ledger
from leukdx.evaluation.runner import (
    FoldOutput,
    FoldTrainer,
    SourceConfoundWarning,
    expand_grid,
    fold_seed,
    run_evaluation,
)
from leukdx.evaluation.splits import Split


def _config(root: Path, tmp_path: Path, **sections) -> object:
    data = {
        "name": "t",
        "seed": 3,
        "data": {"root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "cache")},
        "augment": {"preset": "none"},
        "model": {"backbone": "vgg16", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "validation_split": 0.0,
                  "tensorboard": False, "verbose": 0, "precision": "float32"},
        "evaluate": {"protocol": "kfold", "k": 2, "runs": 1, "plots": False},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


class BrightnessTrainer:
    """A TensorFlow-free trainer: darker images (more stained blobs) score as leukaemia.

    Records every call; optionally raises on call number ``fail_on`` (1-based) to simulate a
    killed evaluation.
    """

    def __init__(self, fail_on: int | None = None):
        self.fail_on = fail_on
        self.calls: list[dict] = []

    def key_fields(self, cfg):
        return {"backbone": cfg.model.backbone, "strategy": cfg.model.strategy, "head": "rule"}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        assert "label" not in test_records.columns  # the runner keeps test labels to itself
        assert len(test_records) == len(test_images)
        self.calls.append({"seed": seed, "n_train": len(train_images),
                           "train_paths": set(train_records["path"]),
                           "strategy": cfg.model.strategy})
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise RuntimeError("simulated crash")
        brightness = test_images.reshape(len(test_images), -1).mean(axis=1) / 255.0
        return FoldOutput(1.0 - brightness, 0.01, 0.1)


def test_fake_trainer_satisfies_protocol():
    assert isinstance(BrightnessTrainer(), FoldTrainer)
    assert isinstance(runner.FineTuneTrainer(), FoldTrainer)


def test_expand_grid_is_the_cartesian_product(tmp_path):
    cfg = _config(tmp_path, tmp_path, evaluate={"grid": {
        "model.strategy": ["sft", "mdft"], "train.learning_rate": [0.1, 0.01, 0.001]}})
    points = expand_grid(cfg)
    combos = {(p.cfg.model.strategy, p.cfg.train.learning_rate) for p in points}
    assert combos == {(s, lr) for s in ("sft", "mdft") for lr in (0.1, 0.01, 0.001)}
    assert len(points) == 6
    # a grid key without a column of its own goes into the experiment name, keeping keys unique
    experiments = {runner.experiment_label(p) for p in points}
    assert len(experiments) == 3 and all(e.startswith("t [train.learning_rate=") for e in experiments)
    assert expand_grid(_config(tmp_path, tmp_path))[0].overrides == {}


def test_expand_grid_rejects_bad_values(tmp_path):
    cfg = _config(tmp_path, tmp_path, evaluate={"grid": {"model.strategy": ["sft", "bogus"]}})
    with pytest.raises(ConfigError, match="bogus"):
        expand_grid(cfg)


def test_head_label_of_original_and_new_heads(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    assert runner.head_label(cfg) == "8"
    assert runner.head_label(_config(tmp_path, tmp_path, model={"strategy": "dft"})) == "original"
    multi = _config(tmp_path, tmp_path, model={"head": {"units": [1024, 256]}})
    assert runner.head_label(multi) == "1024-256"


def test_fold_seeds_differ_per_run_and_split_but_not_per_config(tmp_path):
    cfg = _config(tmp_path, tmp_path)
    seeds = {fold_seed(cfg, s, r) for s in range(5) for r in range(5)}
    assert len(seeds) == 25
    other = _config(tmp_path, tmp_path, model={"strategy": "sft"})
    assert fold_seed(cfg, 2, 1) == fold_seed(other, 2, 1)


def test_interrupted_grid_resumes_without_repeating_or_losing_folds(tiny_collection, tmp_path):
    cfg = _config(tiny_collection, tmp_path,
                  evaluate={"grid": {"model.strategy": ["sft", "mdft"]}, "runs": 2})
    out = tmp_path / "results"
    crashing = BrightnessTrainer(fail_on=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_evaluation(cfg, out, trainer=crashing, progress=False)
    ledger = Ledger(out / "folds.csv")
    first = ledger.read()
    assert len(first) == 1
    first_text = (out / "folds.csv").read_text()

    resumed = BrightnessTrainer()
    folds = run_evaluation(cfg, out, trainer=resumed, progress=False)
    total = 2 * 2 * 2  # strategies x folds x runs
    assert len(resumed.calls) == total - 1  # the finished fold was not retrained
    assert len(folds) == total and len(ledger.read()) == total
    assert (out / "folds.csv").read_text().startswith(first_text)  # earlier rows untouched
    keys = {Ledger.key_of(r) for _, r in ledger.read().iterrows()}
    assert len(keys) == total
    assert (out / "summary.csv").is_file() and (out / "summary.md").is_file()
    assert len(list((out / "predictions").glob("*.csv"))) == total

    again = BrightnessTrainer()
    run_evaluation(cfg, out, trainer=again, progress=False)
    assert again.calls == [] and len(ledger.read()) == total


def test_folds_never_train_on_their_test_images(tiny_collection, tmp_path):
    from leukdx.data.pipeline import ImageCache

    cfg = _config(tiny_collection, tmp_path, evaluate={"protocol": "lodo", "runs": 2})
    trainer = BrightnessTrainer()
    cache = ImageCache(progress=False)
    folds = run_evaluation(cfg, tmp_path / "r", trainer=trainer, progress=False, cache=cache)
    # every image is used by 3 folds x 2 runs but decoded once
    assert cache.decode_count == 36
    folds = folds[folds["run"] == 0].reset_index(drop=True)
    trainer.calls = trainer.calls[::2]
    assert sorted(folds["test_source"]) == ["src_a", "src_b", "src_c"]
    predictions = sorted((tmp_path / "r" / "predictions").glob("*.csv"))
    for call, (_, row) in zip(trainer.calls, folds.iterrows()):
        test_dir = tiny_collection / row["test_source"]
        assert not any(p.startswith(str(test_dir)) for p in call["train_paths"])
        assert call["n_train"] == row["n_train"] == 24
    tested = pd.concat(pd.read_csv(p) for p in predictions)
    assert len(predictions) == 6 and len(tested) == 72 and set(tested.columns) == {"path", "label", "probability",
                                                         "prediction"}
    expected = tested["path"].map(lambda p: int(Path(p).parent.name == "leukemia"))
    assert (tested["label"] == expected).all()


def test_tampered_splits_fail_before_any_training(tiny_collection, tmp_path, monkeypatch):
    real_make_splits = runner.make_splits

    def leaky(records, evaluate_config, seed):
        split = real_make_splits(records, evaluate_config, seed)[0]
        train = np.concatenate([split.train_idx, split.test_idx[:1]])
        return [Split(split.protocol, split.test_source, 0, 0, np.sort(train), split.test_idx)]

    monkeypatch.setattr(runner, "make_splits", leaky)
    trainer = BrightnessTrainer()
    with pytest.raises(LeakageError):
        run_evaluation(_config(tiny_collection, tmp_path), tmp_path / "r", trainer=trainer,
                       progress=False)
    assert trainer.calls == []
    assert not (tmp_path / "r" / "folds.csv").exists()


def test_source_confound_is_warned_and_recorded(tmp_path):
    # Every healthy image comes from one source, every leukaemic one from another.
    root = tmp_path / "confounded"
    rng = np.random.default_rng(0)
    for source, cls in (("h", "healthy"), ("l", "leukemia")):
        folder = root / source / cls
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    cfg = _config(root, tmp_path, data={"near_duplicate_distance": -1})
    with pytest.warns(SourceConfoundWarning, match="confounded"):
        run_evaluation(cfg, tmp_path / "r", trainer=BrightnessTrainer(), progress=False)
    report = json.loads((tmp_path / "r" / "leakage.json").read_text())
    entries = report["split_sets"][0]["splits"]
    assert len(entries) == 2 and all(e["confounded"] for e in entries)
    assert entries[0]["source_confound"]["balanced_accuracy"] == pytest.approx(1.0)


@pytest.mark.slow
def test_kfold_fine_tuning_on_tiny_collection(tiny_collection, tmp_path):
    # validation is carved out of each fold's training part (grouped, 25 %)
    import keras

    epoch_logs: list[dict] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_logs.append(dict(logs or {}))

    cfg = _config(tiny_collection, tmp_path, evaluate={"plots": True},
                  train={"validation_split": 0.25})
    trainer = runner.FineTuneTrainer(callbacks=[Record()])
    folds = run_evaluation(cfg, tmp_path / "r", progress=False, trainer=trainer)
    assert len(folds) == 2
    assert len(epoch_logs) == 2 and all("val_loss" in logs for logs in epoch_logs)
    assert set(folds["test_source"]) == {"pooled"}
    assert (folds["n_train"] + folds["n_test"] == 36).all()
    assert folds["tp"].add(folds["fn"]).sum() == 18  # every leukaemia image tested once
    assert (folds[["accuracy", "mcc", "roc_auc"]].notna()).all().all()
    assert (folds["train_seconds"] > 0).all() and (folds["infer_ms_per_image"] > 0).all()
    assert list(folds.columns[: len(FOLD_KEY_COLUMNS)]) == list(FOLD_KEY_COLUMNS)
    assert set(folds["head"]) == {"8"} and set(folds["backbone"]) == {"vgg16"}
    plots = {p.name for p in (tmp_path / "r" / "plots").glob("*.png")}
    assert "metrics.png" in plots
    assert any(p.startswith("confusion__") for p in plots)
    assert any(p.startswith("roc__") for p in plots)


@pytest.mark.real_data
@pytest.mark.slow
def test_lodo_on_real_sources(shared_data, tmp_path):
    cfg = _config(
        shared_data, tmp_path,
        data={"sources": ["all_idb1", "all_idb2", "taleqani_all", "cellavision_zheng"],
              "max_per_class": 4},
        evaluate={"protocol": "lodo", "plots": True},
    )
    out = tmp_path / "lodo"
    folds = run_evaluation(cfg, out, progress=False)
    # one fold per two-class source; the healthy-only source is training data only
    assert sorted(folds["test_source"]) == ["all_idb1", "all_idb2", "taleqani_all"]
    assert (folds["n_test"] == 8).all() and (folds["n_train"] == 20).all()
    for name in ("folds.csv", "summary.csv", "summary.md", "leakage.json", "plots/metrics.png"):
        assert (out / name).is_file(), name
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["test_source"]) == ["all_idb1", "all_idb2", "taleqani_all"]
    markdown = (out / "summary.md").read_text()
    assert "| A (%) | P (%) | R (%) | S (%) | MCC (%) |" in markdown
    assert all(f"**{s}**" in markdown for s in ("all_idb1", "all_idb2", "taleqani_all"))
    assert len(list((out / "plots").glob("confusion__*.png"))) == 3
