"""Tests of leukdx.plots: what each figure draws (line data, ticks, legends, bars) and that
the PNGs are real, written atomically, from valid input."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.evaluation.ledger import summarize
from leukdx.evaluation.metrics import METRIC_NAMES
from leukdx.plots import (
    best_epoch_of,
    confusion_matrix_figure,
    curves_figure,
    metric_bars_figure,
    plot_confusion_matrix,
    plot_curves,
    plot_metric_bars,
    plot_roc,
    plot_tsne,
    roc_figure,
    tsne_figure,
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
    assert [p for p in os.listdir(path.parent) if ".tmp" in p] == []
    return arr


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def line(ax, label: str):
    return next(ln for ln in ax.get_lines() if ln.get_label() == label)


HISTORY = pd.DataFrame(
    {
        "epoch": range(5),
        "accuracy": np.linspace(0.6, 0.95, 5),
        "val_accuracy": [0.6, 0.7, 0.8, 0.75, 0.7],
        "loss": np.linspace(0.7, 0.1, 5),
        "val_loss": [0.7, 0.5, 0.4, 0.45, 0.6],
    }
)


def test_curves_integer_ticks_best_epoch_and_majority_baseline():
    fig = curves_figure(HISTORY, majority_baseline=("healthy", 0.692))
    accuracy, loss = fig.axes
    for ax in (accuracy, loss):
        assert ax.get_xticks().tolist() == [0, 1, 2, 3, 4]  # history.csv numbering
        assert line(ax, "training").get_xdata().tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(line(accuracy, "validation").get_ydata(), HISTORY["val_accuracy"])
    # the best epoch is the lowest val_loss (epoch 2), marked on the validation curves
    assert best_epoch_of(HISTORY) == 2
    star = line(accuracy, "best epoch 2 (saved model)")
    assert star.get_xdata().tolist() == [2] and star.get_ydata().tolist() == [0.8]
    assert line(loss, "best epoch 2 (saved model)").get_ydata().tolist() == [0.4]
    baseline = line(accuracy, "always 'healthy' (0.692)")
    assert baseline.get_linestyle() == "--" and list(baseline.get_ydata()) == [0.692, 0.692]
    assert not any("always" in t for t in legend_texts(loss))  # accuracy only


def test_curves_of_one_epoch_have_one_integer_tick():
    one = HISTORY.iloc[:1]
    fig = curves_figure(one, majority_baseline=("healthy", 0.692))
    for ax in fig.axes:
        assert ax.get_xticks().tolist() == [0]
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi and hi - lo <= 1.0
    # explicit best epoch, or none at all
    assert "best epoch 0 (saved model)" in legend_texts(fig.axes[0])
    none = curves_figure(HISTORY, best_epoch=None)
    assert not any("best epoch" in t for t in legend_texts(none.axes[0]))
    # long runs still get integer ticks only
    long = pd.DataFrame({"epoch": range(60), "loss": np.linspace(1, 0, 60)})
    ticks = curves_figure(long).axes[1].get_xticks()
    assert np.all(ticks == np.round(ticks)) and len(ticks) < 15


def test_plot_curves_writes_png(tmp_path):
    out = plot_curves(HISTORY, tmp_path / "run" / "curves.png", title="vgg16 mdft",
                      majority_baseline=("healthy", 0.6))
    assert out == tmp_path / "run" / "curves.png"
    assert_png(out)
    # training-only history (no validation) still plots; the best epoch is the lowest loss
    fig = curves_figure(HISTORY[["loss", "accuracy"]])
    assert line(fig.axes[1], "best epoch 4 (saved model)").get_ydata().tolist() == [0.1]
    with pytest.raises(ValueError, match="no 'accuracy' or 'loss'"):
        plot_curves(pd.DataFrame({"lr": [0.1]}), tmp_path / "bad.png")


def test_confusion_matrix_texts_and_colours():
    fig = confusion_matrix_figure({"tp": 5, "tn": 3, "fp": 1, "fn": 2}, title="fold 0")
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["3\n75.0%", "1\n25.0%", "2\n28.6%", "5\n71.4%"])
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [2 / 7, 5 / 7]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["healthy", "leukaemia"]
    assert ax.get_title() == "fold 0"
    same = confusion_matrix_figure([[3, 1], [2, 5]])
    assert sorted(t.get_text() for t in same.axes[0].texts) == texts
    # an empty row (no healthy images) is drawn, not a division error
    empty = confusion_matrix_figure([[0, 0], [2, 5]])
    assert "0\n–" in [t.get_text() for t in empty.axes[0].texts]


def test_plot_confusion_matrix_png(tmp_path):
    assert_png(plot_confusion_matrix([[3, 1], [2, 5]], tmp_path / "b.png", title="fold 0"))
    with pytest.raises(ValueError, match="2x2 matrix"):
        plot_confusion_matrix([5, 3, 1, 2], tmp_path / "e.png")


def test_roc_pooled_bold_folds_faint_legend_names_both_aucs(tmp_path):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    folds = []
    for _ in range(3):
        y = np.r_[np.zeros(20, int), np.ones(20, int)]
        folds.append((y, np.clip(y * 0.4 + rng.uniform(0, 0.6, 40), 0, 1)))
    pooled = (np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]))
    curves = {"all_idb2": pooled, "bccd": (np.zeros(5, int), rng.uniform(0, 1, 5))}
    fig = roc_figure(curves, title="ROC — vgg16 mdft", folds={"all_idb2": folds})
    ax = fig.axes[0]
    fold_aucs = [roc_auc_score(*f) for f in folds]
    texts = legend_texts(ax)
    assert texts[1] == (
        f"all_idb2: pooled AUC {roc_auc_score(*pooled):.3f}; fold mean "
        f"{np.mean(fold_aucs):.3f} ± {np.std(fold_aucs, ddof=1):.3f} (3 folds)"
    )
    assert texts[2] == "bccd: one class, no ROC"
    bold = line(ax, texts[1])
    faint = [ln for ln in ax.get_lines() if ln.get_label().startswith("_all_idb2 fold")]
    assert len(faint) == 3
    assert all(f.get_alpha() < 0.5 and f.get_linewidth() < bold.get_linewidth() for f in faint)
    assert all(f.get_color() == bold.get_color() for f in faint)
    assert ax.get_title() == "ROC — vgg16 mdft"
    # without folds the legend still says the AUC is of the pooled predictions
    assert legend_texts(roc_figure({"x": pooled}).axes[0])[1].startswith("x: pooled AUC")
    assert_png(plot_roc(curves, tmp_path / "roc.png", folds={"all_idb2": folds}))
    with pytest.raises(ValueError, match="no curves"):
        plot_roc({}, tmp_path / "none.png")


def summary_table(low: float = 0.4, high: float = 1.0, runs: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for strategy in ("sft", "msft", "dft", "mdft"):
        for source in ("all_idb1", "all_idb2"):
            for run in range(runs):
                rows.append(
                    dict(
                        experiment="e", backbone="vgg16", strategy=strategy, head="",
                        protocol="lodo", test_source=source, fold=0, run=run,
                        **{m: rng.uniform(low, high) for m in METRIC_NAMES},
                    )
                )
    return summarize(pd.DataFrame(rows))


def bar_groups(ax) -> list:
    from matplotlib.container import BarContainer

    return [c for c in ax.containers if isinstance(c, BarContainer)]


def error_bar_ends(ax) -> np.ndarray:
    """(lower, upper) y of every error bar in the panel."""
    ends = []
    for container in bar_groups(ax):
        segments = container.errorbar.lines[2][0].get_segments()
        ends += [(s[0][1], s[1][1]) for s in segments]
    return np.array(ends)


def test_metric_bars_heights_error_bars_clipped_legend_outside(tmp_path):
    summary = summary_table(low=0.9, high=1.0, runs=2)  # near 100 %: wide std would overflow
    summary["accuracy_std"] = 0.3
    fig = metric_bars_figure(summary, metrics=("accuracy", "mcc"), title="VGG-16")
    panels = [ax for ax in fig.axes if ax.containers]
    assert [ax.get_title() for ax in panels] == ["all_idb1", "all_idb2"]
    first = bar_groups(panels[0])[0]  # sft on all_idb1
    row = summary[(summary.strategy == "sft") & (summary.test_source == "all_idb1")].iloc[0]
    heights = [bar.get_height() for bar in first.patches]
    np.testing.assert_allclose(heights, [100 * row.accuracy_mean, 100 * row.mcc_mean])
    for ax in panels:
        ends = error_bar_ends(ax)
        assert ends.min() >= -100 and ends.max() <= 100.0 + 1e-9
        assert ends[:, 1].max() == pytest.approx(100.0)  # clipped, not 90 + 30
        assert ax.get_legend() is None  # no legend over the bars
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["sft", "msft", "dft", "mdft"]
    assert fig.get_suptitle() == "VGG-16"
    assert_png(plot_metric_bars(summary_table(), tmp_path / "bars.png", title="VGG-16"))
    with pytest.raises(ValueError, match="lacks brier_mean"):
        plot_metric_bars(summary, tmp_path / "x.png", metrics=("brier",))


def test_tsne_source_panel_only_with_several_sources(tmp_path):
    rng = np.random.default_rng(2)
    embedding = np.vstack([rng.normal(-2, 1, (40, 2)), rng.normal(2, 1, (40, 2))])
    labels = np.repeat([0, 1], 40)
    sources = np.array(["a", "b", "h", "h"] * 20)
    two = tsne_figure(embedding, labels, sources)
    assert [ax.get_title() for ax in two.axes] == ["coloured by class", "coloured by source"]
    assert legend_texts(two.axes[1]) == ["a (20)", "b (20)", "h (40)"]
    one = tsne_figure(embedding, labels, ["all_idb2"] * 80)
    assert [ax.get_title() for ax in one.axes] == ["all_idb2: coloured by class"]
    assert legend_texts(one.axes[0]) == ["healthy (40)", "leukaemia (40)"]
    np.testing.assert_allclose(one.axes[0].collections[0].get_offsets(), embedding[:40])


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
