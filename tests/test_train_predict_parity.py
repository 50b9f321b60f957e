"""A run trained on cell crops, stain-normalised, with a calibrated threshold: ``leukdx train``
fits what ``leukdx evaluate`` evaluates, and ``leukdx predict`` (run folder or SavedModel
export) prepares new images the same way, so the recommended LODO recipe ships as measured."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from smears import smear

from leukdx.config import config_from_dict
from leukdx.data.cells import load_cells
from leukdx.data.inputs import STAIN_REFERENCE_FILE, InputPreparation
from leukdx.data.stain import StainReference, normalize_images
from leukdx.predict import predict_paths
from leukdx.train import predict_proba, train_run


@pytest.fixture(scope="module")
def smear_collection(tmp_path_factory) -> Path:
    """Two two-class labs (small vs large nuclei, different tints) and two healthy-only labs."""
    root = tmp_path_factory.mktemp("smears")
    labs = {"lab_a": (1.0, True), "lab_b": (0.9, True), "only_healthy_1": (1.05, False),
            "only_healthy_2": (0.95, False)}
    for i, (lab, (tint, both)) in enumerate(labs.items()):
        for cls, nucleus in (("healthy", 26.0), ("leukemia", 50.0)):
            if cls == "leukemia" and not both:
                continue
            folder = root / lab / cls
            folder.mkdir(parents=True)
            for k in range(6):
                img = smear(size=128, rbc=24.0, nucleus=nucleus * (0.9 + 0.04 * k),
                            seed=100 * i + k)
                img = np.clip(img.astype(np.float32) * tint, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{cls}_{k}.png")
    return root


def _cell_config(root: Path, tmp_path: Path):
    return config_from_dict({
        "name": "cells", "seed": 3,
        "data": {"root": str(root), "image_size": 32, "cache_dir": str(tmp_path / "scan"),
                 "crop": "cell", "stain_normalize": "reinhard",
                 "cell": {"scale": 3.0, "max_cells": 2}},
        "augment": {"preset": "none"},
        "model": {"backbone": "small_cnn", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "validation_split": 0.25, "verbose": 0,
                  "tensorboard": False, "precision": "float32", "calibrate": "unseen_source"},
        "evaluate": {"tta": 2},
    })


@pytest.fixture(scope="module")
def cell_run(smear_collection, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cellrun")
    cfg = _cell_config(smear_collection, tmp)
    result = train_run(cfg, tmp / "run", progress=False)
    return cfg, result


def _manual_probability(model, path, reference, n_tta=2):
    """What the run's preparation means, written out: crops -> stain -> TTA -> max."""
    from leukdx.tta import predict_proba_tta

    crops = normalize_images(load_cells(path, 32, scale=3.0, max_cells=2), reference)
    return float(np.max(predict_proba_tta(model, crops, n_tta)))


def test_training_withholds_a_healthy_lab_and_calibrates_the_threshold_on_it(
        cell_run, smear_collection):
    cfg, result = cell_run
    info = json.loads((result.run_dir / "run.json").read_text())
    calibration = info["calibration"]
    source = calibration["source"]
    assert source in {"only_healthy_1", "only_healthy_2"}
    assert calibration["n_images"] == 6 and calibration["specificity"] == 0.95
    assert source in info["data"]["sources"]  # seen (for the threshold), so listed
    # not trained on: every training/validation count leaves its 6 images out
    counted = sum(info["data"]["n_train"].values()) + sum(info["data"]["n_val"].values())
    assert counted == 24 + 12 - 6
    # the threshold is the 95 % quantile of the lab's probabilities as predict computes them
    reference = StainReference.load(result.run_dir / STAIN_REFERENCE_FILE)
    files = sorted((smear_collection / source / "healthy").glob("*.png"))
    probs = [_manual_probability(result.model, f, reference) for f in files]
    assert calibration["threshold"] == pytest.approx(np.quantile(probs, 0.95), abs=1e-4)


def test_the_stain_reference_is_fitted_on_training_images_only(cell_run):
    _, result = cell_run
    reference = StainReference.load(result.run_dir / STAIN_REFERENCE_FILE)
    info = json.loads((result.run_dir / "run.json").read_text())
    assert reference.method == "reinhard"
    assert info["calibration"]["source"] not in reference.sources
    assert reference.n_images == sum(info["data"]["n_train"].values())


def test_predict_prepares_files_as_the_run_did(cell_run, smear_collection):
    _, result = cell_run
    files = sorted((smear_collection / "lab_a").glob("*/*.png"))
    out = predict_paths(result.run_dir, files, out=None, progress=False)
    reference = StainReference.load(result.run_dir / STAIN_REFERENCE_FILE)
    expected = [_manual_probability(result.model, f, reference) for f in files]
    np.testing.assert_allclose(out.table["probability"], expected, atol=1e-5)
    threshold = json.loads((result.run_dir / "run.json").read_text())["calibration"]["threshold"]
    assert (out.table["label"] == (np.asarray(expected) >= threshold)).all()
    # a whole, raw image is not what the model was trained on: its answer differs
    whole = np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files])
    assert np.abs(predict_proba(result.model, whole) - np.asarray(expected)).max() > 1e-3


def test_predict_refuses_a_stain_normalised_run_without_its_reference(cell_run, tmp_path,
                                                                       smear_collection):
    import shutil

    _, result = cell_run
    copy = tmp_path / "run_copy"
    shutil.copytree(result.run_dir, copy)
    (copy / STAIN_REFERENCE_FILE).unlink()
    with pytest.raises(ValueError, match=STAIN_REFERENCE_FILE):
        predict_paths(copy, [next((smear_collection / "lab_a").rglob("*.png"))], out=None,
                      progress=False)


def test_the_savedmodel_export_carries_the_preparation(cell_run, smear_collection, tmp_path):
    from leukdx.export import export_run
    from leukdx.predict import read_serving_metadata

    _, result = cell_run
    files = sorted((smear_collection / "lab_b").glob("*/*.png"))[:4]
    export = export_run(result.run_dir, formats=("savedmodel",), out=tmp_path / "export",
                        images=files, progress=False)
    meta = read_serving_metadata(export.out_dir / "savedmodel")
    prep = InputPreparation.from_dict(meta["preparation"])
    assert prep.crop == "cell" and prep.stain is not None and meta["tta_views"] == 2
    from_export = predict_paths(export.out_dir, files, out=None, progress=False)
    from_run = predict_paths(result.run_dir, files, out=None, progress=False)
    np.testing.assert_allclose(from_export.table["probability"],
                               from_run.table["probability"], atol=1e-4)
    assert (from_export.table["label"] == from_run.table["label"]).all()
    # the model card says what a client must do first, and where the threshold came from
    facts = export.card["model"]
    assert "cell crops" in facts["input"]["prepared_outside_the_graph"]
    assert "reinhard" in facts["input"]["prepared_outside_the_graph"]
    source = json.loads((result.run_dir / "run.json").read_text())["calibration"]["source"]
    assert source in facts["output"]["threshold_from"]
    card_md = (export.out_dir / "model_card.md").read_text()
    assert "prepared outside the graph" in card_md and source in card_md
