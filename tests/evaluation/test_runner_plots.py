"""Figures of a results folder: ROC with one faint curve per fold run, confusion from counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

import leukdx.plots
from leukdx.evaluation import runner
from leukdx.evaluation.ledger import (
    FOLDS_FILE,
    PREDICTIONS_DIR,
    Ledger,
    predictions_name,
    write_predictions,
)
from leukdx.evaluation.metrics import binary_metrics


def _results(out, n_folds=3, n=12):
    ledger = Ledger(out / FOLDS_FILE)
    files, rng = {}, np.random.default_rng(0)
    for fold in range(n_folds):
        y = np.arange(n) % 2
        probs = np.clip(y * 0.25 + rng.random(n) * 0.75, 0.0, 1.0)  # overlapping classes
        key = {"experiment": "e", "backbone": "vgg16", "strategy": "mdft", "head": "1024-256",
               "protocol": "kfold", "test_source": "pooled", "fold": fold, "run": 0,
               "seed": fold, "repeat": 0}
        ledger.append({**key, "n_train": 20, "n_val": 4, "n_test": n,
                       **binary_metrics(y, probs), "train_seconds": 1.0,
                       "infer_ms_per_image": 1.0})
        path = out / PREDICTIONS_DIR / predictions_name(key)
        write_predictions(path, [f"/img/{fold}_{i}.png" for i in range(n)], y, probs)
        files[Ledger.key_of(pd.Series(key))] = path
    return ledger.read(), files


def test_roc_gets_each_fold_and_confusion_counts_every_image(tmp_path, monkeypatch):
    folds, files = _results(tmp_path)
    seen = {}
    real_roc, real_confusion = leukdx.plots.plot_roc, leukdx.plots.plot_confusion_matrix

    def spy_roc(curves, path, title="ROC", folds=None):
        seen["curves"], seen["folds"] = curves, folds
        return real_roc(curves, path, title=title, folds=folds)

    def spy_confusion(counts, path, **kwargs):
        seen["counts"] = counts
        return real_confusion(counts, path, **kwargs)

    monkeypatch.setattr(leukdx.plots, "plot_roc", spy_roc)
    monkeypatch.setattr(leukdx.plots, "plot_confusion_matrix", spy_confusion)
    written = runner._write_plots(tmp_path, folds, files)

    assert len(seen["folds"]["pooled"]) == 3
    pooled_y, _ = seen["curves"]["pooled"]
    assert sum(len(y) for y, _ in seen["folds"]["pooled"]) == len(pooled_y) == 36
    counts = seen["counts"]
    assert sum(counts.values()) == 36
    assert counts["tp"] + counts["fn"] == 18  # every leukaemia image, from the predictions
    assert counts["tp"] == int(folds["tp"].sum()) and counts["fp"] == int(folds["fp"].sum())
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
