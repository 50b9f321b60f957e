"""``train.calibrate: unseen_source``: a fold withholds one healthy-only training source and
sets its threshold so that source's images are called healthy at the asked specificity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukdx.config import ConfigError, config_from_dict
from leukdx.evaluation.metrics import binary_metrics
from leukdx.evaluation.runner import run_evaluation
from leukdx.evaluation.splits import calibration_source


def test_calibration_source_is_healthy_only_and_rotates_with_the_seed():
    recs = pd.DataFrame({"source": ["mix", "mix", "h1", "h2", "h3"], "label": [0, 1, 0, 0, 0]})
    drawn = {calibration_source(recs, seed) for seed in range(40)}
    assert drawn == {"h1", "h2", "h3"}
    assert calibration_source(recs, 7) == calibration_source(recs, 7)
    assert calibration_source(recs[recs.source == "mix"], 0) is None


def test_unknown_calibration_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="train.calibrate"):
        config_from_dict({"train": {"calibrate": "test_source"}})


@pytest.mark.real_data
@pytest.mark.slow
def test_fold_threshold_comes_from_the_withheld_source(shared_data, tmp_path):
    cfg = config_from_dict({
        "name": "calibrated", "seed": 0,
        "data": {"root": str(shared_data), "image_size": 32, "max_per_class": 4,
                 "sources": ["all_idb2", "taleqani_all", "jtsc", "pbc"], "cache": "memory"},
        "augment": {"preset": "none"},
        "model": {"backbone": "small_cnn", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "validation_split": 0.25,
                  "class_weight": "balanced", "tensorboard": False, "verbose": 0,
                  "calibrate": "unseen_source", "calibration_specificity": 0.9},
        "evaluate": {"protocol": "lodo", "test_sources": ["all_idb2"], "runs": 2,
                     "plots": False},
    })
    folds = run_evaluation(cfg, tmp_path / "r", progress=False, print_summary=False)
    assert set(folds["calibration_source"]) <= {"jtsc", "pbc"}
    # the withheld source was not fitted: 4 images per class of the two other training sources
    # (taleqani 4 + 4, the other healthy-only source 4) minus validation
    assert (folds["n_train"] + folds["n_val"] == 12).all()
    for _, row in folds.iterrows():
        assert 0.0 <= row["threshold"] <= 1.0
        preds = pd.read_csv(next((tmp_path / "r" / "predictions").glob(f"*__{row['run']}__*")))
        again = binary_metrics(preds["label"], preds["probability"], threshold=row["threshold"])
        assert np.isclose(again["accuracy"], row["accuracy"])
        assert ((preds["probability"] >= row["threshold"]).astype(int)
                == preds["prediction"]).all()
