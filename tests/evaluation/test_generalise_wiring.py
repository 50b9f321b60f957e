"""``leukdx evaluate`` applies the generalisation switches to every fold (real data, tiny).

Each test runs one LODO fold on a few real images at 32 px and checks that a switch changes
what the fold trains and predicts on: the stain reference is fitted on the training sources
only, tiles of a test image are scored and aggregated into one row per test image, test-time
augmentation and per-fold SimCLR pretraining are used by the fine-tuning trainer, and the best
epoch's validation metrics reach ``folds.csv``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukdx.config import config_from_dict
from leukdx.data.pipeline import ImageCache
from leukdx.data.records import load_collection
from leukdx.evaluation.runner import FineTuneTrainer, best_validation, run_evaluation

pytestmark = pytest.mark.real_data


def _config(shared_data, tmp_path, sources, test_source, **sections):
    data = {"root": str(shared_data), "image_size": 32, "sources": sources,
            "max_per_class": 3, "cache": "memory", **sections.pop("data", {})}
    raw = {
        "name": "wiring", "seed": 0,
        "data": data,
        "augment": {"preset": "none"},
        "model": {"backbone": "small_cnn", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "validation_split": 0.25,
                  "class_weight": "balanced", "tensorboard": False, "verbose": 0},
        "evaluate": {"protocol": "lodo", "test_sources": [test_source], "runs": 1,
                     "plots": False},
        "pretrain": {"cache_dir": str(tmp_path / "pretrain")},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


class RecordingTrainer:
    """Scores each input by its mean intensity and keeps what it was given (no Keras)."""

    builds_keras_models = False

    def __init__(self):
        self.calls = []

    def key_fields(self, cfg):
        return {"backbone": "mean_intensity", "strategy": "none", "head": "none"}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        self.calls.append({"train_records": train_records, "train": train_images.copy(),
                           "test": test_images.copy(), "test_records": test_records})
        return test_images.reshape(len(test_images), -1).mean(axis=1) / 255.0, 0.1, 0.1


def _fold_records(cfg, test_source):
    records = load_collection(cfg.data.root, cfg.data, progress=False, seed=cfg.seed).records
    test = records["source"] == test_source
    return records[~test].reset_index(drop=True), records[test].reset_index(drop=True)


def test_stain_reference_is_fitted_on_the_training_sources_only(shared_data, tmp_path):
    from leukdx.data.stain import fit_stain_reference, normalize_images

    sources = ["all_idb2", "taleqani_all", "jtsc"]
    cfg = _config(shared_data, tmp_path, sources, "taleqani_all",
                  data={"stain_normalize": "reinhard"})
    trainer, cache = RecordingTrainer(), ImageCache(progress=False)
    run_evaluation(cfg, tmp_path / "r", trainer=trainer, cache=cache, progress=False)

    (call,) = trainer.calls
    assert set(call["train_records"]["source"]) == {"all_idb2", "jtsc"}
    train_records, test_records = _fold_records(cfg, "taleqani_all")
    raw_train = ImageCache(progress=False).get(train_records, 32)
    raw_test = ImageCache(progress=False).get(test_records, 32)
    reference = fit_stain_reference(raw_train, "reinhard", sources=train_records["source"])
    expected_test = normalize_images(raw_test, reference)
    with_test = fit_stain_reference(np.concatenate([raw_train, raw_test]), "reinhard")
    assert not np.array_equal(normalize_images(raw_test, with_test), expected_test)

    assert not np.array_equal(call["test"], raw_test)  # normalised, not the raw pixels
    diff = np.abs(call["test"].astype(int) - expected_test.astype(int))
    assert diff.max() <= 1
    order = [list(train_records["path"]).index(p) for p in call["train_records"]["path"]]
    expected_train = normalize_images(raw_train, reference)[order]
    assert np.abs(call["train"].astype(int) - expected_train.astype(int)).max() <= 1


def test_tiles_are_scored_and_give_one_row_per_test_image(shared_data, tmp_path):
    sources = ["all_idb1", "taleqani_all", "jtsc"]
    cfg = _config(shared_data, tmp_path, sources, "all_idb1",
                  data={"max_per_class": 2, "tile": {"sources": ["all_idb1"], "size_px": 648,
                                                     "aggregate": "max"}})
    trainer, cache = RecordingTrainer(), ImageCache(progress=False)
    folds = run_evaluation(cfg, tmp_path / "r", trainer=trainer, cache=cache, progress=False)

    (call,) = trainer.calls
    n_test = len(call["test_records"])
    assert n_test == 4 and int(folds["n_test"].iloc[0]) == n_test
    assert len(call["test"]) == n_test + 4 * 12  # each 2592x1944 field: 4 x 3 tiles
    predictions = pd.read_csv(next((tmp_path / "r" / "predictions").glob("*.csv")))
    assert len(predictions) == n_test
    scores = call["test"].reshape(len(call["test"]), -1).mean(axis=1) / 255.0
    owner = np.repeat(np.arange(n_test), 12)
    tile_max = [scores[n_test:][owner == i].max() for i in range(n_test)]
    by_path = dict(zip(predictions["path"], predictions["probability"]))
    got = [by_path[p] for p in call["test_records"]["path"]]
    np.testing.assert_allclose(got, tile_max, rtol=1e-6)


@pytest.mark.slow
def test_tta_and_per_fold_pretraining_reach_the_fine_tuning_trainer(shared_data, tmp_path,
                                                                    monkeypatch):
    import leukdx.pretrain
    import leukdx.train
    import leukdx.tta

    seen = {"tta": [], "pretrain_sources": [], "weights": []}
    real_tta, real_pretrain = leukdx.tta.predict_proba_tta, leukdx.pretrain.pretrain_for_fold
    real_build = leukdx.train.build_compiled_model

    def tta_spy(model, images, n=1, batch_size=32):
        seen["tta"].append(n)
        return real_tta(model, images, n, batch_size)

    def pretrain_spy(cfg, train_records, images, cache_dir=None, *, progress=True):
        seen["pretrain_sources"].append(set(train_records["source"]))
        return real_pretrain(cfg, train_records, images, cache_dir, progress=progress)

    def build_spy(cfg, strategy=None, augmentation=None):
        seen["weights"].append(cfg.model.weights)
        return real_build(cfg, strategy, augmentation)

    monkeypatch.setattr(leukdx.tta, "predict_proba_tta", tta_spy)
    monkeypatch.setattr(leukdx.pretrain, "pretrain_for_fold", pretrain_spy)
    monkeypatch.setattr(leukdx.train, "build_compiled_model", build_spy)
    cfg = _config(shared_data, tmp_path, ["all_idb2", "taleqani_all", "jtsc"], "taleqani_all",
                  data={"max_per_class": 6}, evaluate={"tta": 4},
                  pretrain={"per_fold": True, "epochs": 1, "batch_size": 8})
    folds = run_evaluation(cfg, tmp_path / "r", trainer=FineTuneTrainer(), progress=False)

    assert seen["tta"] and set(seen["tta"]) == {4}
    assert seen["pretrain_sources"] == [{"all_idb2", "jtsc"}]  # never the test source
    (weights,) = seen["weights"]
    assert weights.endswith("backbone.weights.h5") and str(tmp_path / "pretrain") in weights
    row = folds.iloc[0]
    assert int(row["n_test"]) == 12 and np.isfinite(row["mcc"])
    assert float(row["pretrain_seconds"]) > 0
    ledger = pd.read_csv(tmp_path / "r" / "folds.csv")
    for column in ("val_loss", "val_accuracy", "val_auc", "best_epoch"):
        assert column in ledger.columns and ledger[column].notna().all(), column


def test_best_validation_takes_the_epoch_of_lowest_val_loss():
    history = {"loss": [0.9, 0.8, 0.7], "val_loss": [0.6, float("nan"), 0.4],
               "val_accuracy": [0.5, 0.9, 0.7], "val_auc": [0.55, 0.95, 0.75]}
    assert best_validation(history) == {"best_epoch": 2, "val_loss": 0.4,
                                        "val_accuracy": 0.7, "val_auc": 0.75}
    assert best_validation({"loss": [0.5]}) == {}


def test_predict_proba_pads_the_last_batch_and_keeps_n_probabilities():
    import keras

    from leukdx.train import predict_proba

    inputs = keras.Input((4, 4, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    batch_shapes = []
    real_predict = model.predict

    def recording_predict(dataset, **kwargs):
        batch_shapes.extend(int(x.shape[0]) for x in dataset.map(lambda *b: b[0]))
        return real_predict(dataset, **kwargs)

    model.predict = recording_predict
    images = np.random.default_rng(0).integers(0, 255, (10, 4, 4, 3)).astype(np.uint8)
    probabilities = predict_proba(model, images, batch_size=4)
    assert batch_shapes == [4, 4, 4]
    one_by_one = [real_predict(images[i:i + 1].astype(np.float32), verbose=0)[0, 0]
                  for i in range(10)]
    np.testing.assert_allclose(probabilities, one_by_one, atol=1e-5)


@pytest.mark.slow
def test_two_class_label_sources_fit_on_two_class_sources_but_pretrain_on_all(
        shared_data, tmp_path, monkeypatch):
    import leukdx.pretrain
    import leukdx.train

    seen = {"pretrain_sources": [], "fit_rows": []}
    real_pretrain = leukdx.pretrain.pretrain_for_fold
    real_datasets = leukdx.train.make_training_datasets

    def pretrain_spy(cfg, train_records, images, cache_dir=None, *, progress=True):
        seen["pretrain_sources"].append(set(train_records["source"]))
        return real_pretrain(cfg, train_records, images, cache_dir, progress=progress)

    def datasets_spy(cfg, fit_images, fit_labels, val_images, val_labels, seed):
        seen["fit_rows"].append(len(fit_images) + len(val_images))
        return real_datasets(cfg, fit_images, fit_labels, val_images, val_labels, seed=seed)

    monkeypatch.setattr(leukdx.pretrain, "pretrain_for_fold", pretrain_spy)
    monkeypatch.setattr(leukdx.train, "make_training_datasets", datasets_spy)
    cfg = _config(shared_data, tmp_path, ["all_idb2", "taleqani_all", "jtsc", "pbc"],
                  "all_idb2", data={"max_per_class": 4},
                  train={"label_sources": "two_class"},
                  pretrain={"per_fold": True, "epochs": 1, "batch_size": 8})
    folds = run_evaluation(cfg, tmp_path / "r", trainer=FineTuneTrainer(), progress=False)

    # the unlabelled pretraining saw every training source, the healthy-only ones included
    assert seen["pretrain_sources"] == [{"taleqani_all", "jtsc", "pbc"}]
    # the classifier saw taleqani_all's 4 + 4 images only (fit + validation)
    assert seen["fit_rows"] == [8]
    row = folds.iloc[0]
    assert int(row["n_train"]) + int(row["n_val"]) == 8 and int(row["n_test"]) == 8


def test_two_class_mask_keeps_two_class_sources_and_refuses_a_fold_without_one():
    from leukdx.errors import DataError
    from leukdx.evaluation.runner import two_class_sources_mask

    recs = pd.DataFrame({"source": ["a", "h", "a", "b", "b", "h"],
                         "label": [0, 0, 1, 1, 0, 0]})
    assert two_class_sources_mask(recs).tolist() == [True, False, True, True, True, False]
    with pytest.raises(DataError, match="train.label_sources: two_class"):
        two_class_sources_mask(recs[recs.source == "h"])
