"""Tests of leukdx.plots: every figure is a real PNG, written atomically, from valid input."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.evaluation.ledger import summarize
from leukdx.evaluation.metrics import METRIC_NAMES
from leukdx.plots import (
    plot_confusion_matrix,
    plot_curves,
    plot_metric_bars,
    plot_roc,
    plot_tsne,
)


def pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def assert_png(path, min_bytes: int = 5000) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > min_bytes
    arr = pixels(path)
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 5  # not a blank canvas
    assert [p for p in os.listdir(path.parent) if p.endswith(".tmp")] == []
    return arr


def test_plot_curves(tmp_path):
    history = pd.DataFrame(
        {
            "epoch": range(5),
            "accuracy": np.linspace(0.6, 0.95, 5),
            "val_accuracy": np.linspace(0.55, 0.9, 5),
            "loss": np.linspace(0.7, 0.1, 5),
            "val_loss": np.linspace(0.8, 0.3, 5),
        }
    )
    out = plot_curves(history, tmp_path / "run" / "curves.png", title="vgg16 mdft")
    assert out == tmp_path / "run" / "curves.png"
    assert_png(out)
    # training-only history (no validation) still plots
    assert_png(plot_curves(history[["loss", "accuracy"]], tmp_path / "train_only.png"))
    with pytest.raises(ValueError, match="no 'accuracy' or 'loss'"):
        plot_curves(pd.DataFrame({"lr": [0.1]}), tmp_path / "bad.png")


def test_plot_confusion_matrix_accepts_counts_or_matrix(tmp_path):
    from_counts = assert_png(
        plot_confusion_matrix(
            {"tp": 5, "tn": 3, "fp": 1, "fn": 2}, tmp_path / "a.png", title="fold 0"
        )
    )
    from_matrix = assert_png(
        plot_confusion_matrix([[3, 1], [2, 5]], tmp_path / "b.png", title="fold 0")
    )
    other = assert_png(plot_confusion_matrix([[3, 1], [5, 2]], tmp_path / "c.png", title="fold 0"))
    assert np.array_equal(from_counts, from_matrix)
    assert not np.array_equal(from_counts, other)
    # an empty row (no healthy images) is drawn, not a division error
    assert_png(plot_confusion_matrix([[0, 0], [2, 5]], tmp_path / "d.png"))
    with pytest.raises(ValueError, match="2x2 matrix"):
        plot_confusion_matrix([5, 3, 1, 2], tmp_path / "e.png")


def test_plot_roc(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    curves = {
        "mdft": (y, np.clip(y * 0.5 + rng.uniform(0, 0.5, 100), 0, 1)),
        "sft": (y, rng.uniform(0, 1, 100)),
        "healthy only": (np.zeros(5, int), rng.uniform(0, 1, 5)),
    }
    assert_png(plot_roc(curves, tmp_path / "roc.png"))
    with pytest.raises(ValueError, match="no curves"):
        plot_roc({}, tmp_path / "none.png")


def test_plot_metric_bars(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for strategy in ("sft", "msft", "dft", "mdft"):
        for source in ("all_idb1", "all_idb2"):
            for run in range(3):
                rows.append(
                    dict(
                        experiment="e",
                        backbone="vgg16",
                        strategy=strategy,
                        head="",
                        protocol="lodo",
                        test_source=source,
                        fold=0,
                        run=run,
                        **{m: rng.uniform(0.4, 1) for m in METRIC_NAMES},
                    )
                )
    summary = summarize(pd.DataFrame(rows))
    assert_png(plot_metric_bars(summary, tmp_path / "bars.png", title="VGG-16"))
    with pytest.raises(ValueError, match="lacks brier_mean"):
        plot_metric_bars(summary, tmp_path / "x.png", metrics=("brier",))


def test_plot_tsne_with_and_without_boundary(tmp_path):
    rng = np.random.default_rng(2)
    embedding = np.vstack([rng.normal(-2, 1, (40, 2)), rng.normal(2, 1, (40, 2))])
    labels = np.repeat([0, 1], 40)
    sources = np.array(["a", "b", "h", "h"] * 20)
    calls = []

    def boundary(points):
        calls.append(points.shape)
        return points[:, 0] + points[:, 1]

    plain = assert_png(plot_tsne(embedding, labels, sources, tmp_path / "plain.png"))
    drawn = assert_png(
        plot_tsne(embedding, labels, sources, tmp_path / "boundary.png", boundary=boundary)
    )
    assert len(calls) == 1 and calls[0][1] == 2 and calls[0][0] > 1000
    assert plain.shape == drawn.shape and not np.array_equal(plain, drawn)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plot_tsne(np.zeros((5, 3)), labels[:5], sources[:5], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="must align"):
        plot_tsne(embedding, labels[:5], sources, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="one per point"):
        plot_tsne(embedding, labels, sources, tmp_path / "bad.png", boundary=lambda p: p[:3, 0])
