"""PNG figures: training curves, confusion matrices, ROC curves, metric bars and t-SNE maps.

Figures are built with the object-oriented Matplotlib API on the Agg canvas (no ``pyplot``, so
no global figure registry to leak memory in long grids and no GUI backend is ever touched). Each
function writes the PNG to a temporary file beside the target and moves it into place with
``os.replace``, so a reader never sees half a picture, and returns the final path.

No TensorFlow.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> history = pd.DataFrame({"accuracy": [0.6, 0.8], "val_accuracy": [0.55, 0.7],
    ...                         "loss": [0.7, 0.4], "val_loss": [0.72, 0.6]})
    >>> plot_curves(history, pathlib.Path(tempfile.mkdtemp()) / "curves.png").name
    'curves.png'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "plot_confusion_matrix",
    "plot_curves",
    "plot_metric_bars",
    "plot_roc",
    "plot_tsne",
]

CLASS_NAMES = ("healthy", "leukaemia")
CLASS_COLOURS = ("tab:blue", "tab:red")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        fig.clear()
    return path


def _first_column(df: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def plot_curves(history: pd.DataFrame, path: str | os.PathLike, title: str | None = None) -> Path:
    """Training and validation accuracy (left) and loss (right) per epoch (LeukNet Fig. 7).

    Args:
        history: Keras history as a table (``history.csv``): ``accuracy`` (or
            ``binary_accuracy``/``acc``), ``loss`` and their ``val_`` counterparts; an
            ``epoch`` column (0-based, as CSVLogger writes) is used for the x axis when present.
        path: the PNG to write.
        title: optional figure title.

    Returns:
        The PNG path.

    Raises:
        ValueError: the table has neither an accuracy nor a loss column, or no rows.
    """
    if history.empty:
        raise ValueError("plot_curves: the history has no epochs.")
    accuracy = _first_column(history, ("accuracy", "binary_accuracy", "acc"))
    loss = _first_column(history, ("loss",))
    if accuracy is None and loss is None:
        raise ValueError(
            "plot_curves: the history has no 'accuracy' or 'loss' column (columns: "
            f"{', '.join(map(str, history.columns))})."
        )
    epochs = (
        (history["epoch"].to_numpy() + 1)
        if "epoch" in history.columns
        else (np.arange(1, len(history) + 1))
    )
    fig = _figure(10, 4)
    panels = [(accuracy, "Accuracy", "(a)"), (loss, "Loss", "(b)")]
    for i, (column, label, letter) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        if column is None:
            ax.text(0.5, 0.5, f"no {label.lower()} recorded", ha="center", va="center")
            ax.set_axis_off()
            continue
        ax.plot(epochs, history[column], marker="o", ms=3, label="training")
        if f"val_{column}" in history.columns:
            ax.plot(epochs, history[f"val_{column}"], marker="s", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(f"{letter} {label}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _as_matrix(cm: Any) -> np.ndarray:
    """2x2 matrix ``[[tn, fp], [fn, tp]]`` (rows = true class) from a mapping or array."""
    if isinstance(cm, Mapping) or isinstance(cm, pd.Series):
        missing = [k for k in ("tp", "tn", "fp", "fn") if k not in cm]
        if missing:
            raise ValueError(f"plot_confusion_matrix: counts lack {', '.join(missing)}.")
        return np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.int64)
    arr = np.asarray(cm)
    if arr.shape != (2, 2):
        raise ValueError(
            "plot_confusion_matrix needs a mapping with tp/tn/fp/fn or a 2x2 matrix "
            f"[[tn, fp], [fn, tp]] (rows = true class); got shape {arr.shape}."
        )
    return arr.astype(np.int64)


def plot_confusion_matrix(
    cm: Mapping[str, int] | np.ndarray | Sequence[Sequence[int]],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """A 2x2 confusion matrix with counts and row-normalised percentages.

    Args:
        cm: ``{"tp", "tn", "fp", "fn"}`` counts (e.g. a ``binary_metrics`` result or a ledger
            row), or the scikit-learn 2x2 matrix ``[[tn, fp], [fn, tp]]`` (rows = true class).
        path: the PNG to write.
        title: figure title.
        class_names: names of class 0 and 1.

    Returns:
        The PNG path.
    """
    matrix = _as_matrix(cm)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
    fig = _figure(4.6, 4)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for r in range(2):
        for c in range(2):
            pct = "–" if np.isnan(share[r, c]) else f"{100 * share[r, c]:.1f}%"
            dark = not np.isnan(share[r, c]) and share[r, c] > 0.5
            ax.text(
                c,
                r,
                f"{matrix[r, c]}\n{pct}",
                ha="center",
                va="center",
                color="white" if dark else "black",
                fontsize=12,
            )
    ax.set_xticks([0, 1], labels=list(class_names))
    ax.set_yticks([0, 1], labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "ROC",
) -> Path:
    """ROC curves, one per entry, with the AUC in the legend.

    Args:
        curves: label → ``(y_true, y_prob)``. An entry whose labels hold one class has no ROC
            curve; it is listed in the legend as such.
        path: the PNG to write.
        title: figure title.

    Returns:
        The PNG path.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if not curves:
        raise ValueError("plot_roc: no curves given.")
    fig = _figure(5, 5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for label, (y_true, y_prob) in curves.items():
        y = np.asarray(y_true).reshape(-1)
        p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
        if y.size != p.size:
            raise ValueError(f"plot_roc: '{label}' has {y.size} labels and {p.size} scores.")
        if np.unique(y).size < 2:
            ax.plot([], [], label=f"{label} (one class: no ROC)")
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{label} (AUC = {roc_auc_score(y, p):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_metric_bars(
    summary: pd.DataFrame,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "mcc"),
    title: str | None = None,
) -> Path:
    """Grouped bars of mean metrics (%) with std error bars, one panel per test source.

    Args:
        summary: output of :func:`leukdx.evaluation.ledger.summarize` (``<metric>_mean`` and
            ``<metric>_std`` columns, ``test_source``).
        path: the PNG to write.
        metrics: metrics to show (x axis groups).
        title: optional figure title.

    Returns:
        The PNG path.
    """
    from leukdx.evaluation.ledger import METRIC_ABBREVIATIONS, config_labels

    missing = [m for m in metrics if f"{m}_mean" not in summary.columns]
    if missing:
        raise ValueError(
            f"plot_metric_bars: the summary lacks {', '.join(m + '_mean' for m in missing)}."
        )
    if summary.empty:
        raise ValueError("plot_metric_bars: the summary has no rows.")
    labels = config_labels(summary)
    block_columns = [c for c in ("protocol", "test_source") if c in summary.columns]
    blocks = (
        list(summary.groupby(block_columns, sort=False, dropna=False).groups.items())
        if block_columns
        else [((), summary.index)]
    )
    configs = list(dict.fromkeys(labels))
    colours = {c: f"C{i % 10}" for i, c in enumerate(configs)}
    fig = _figure(max(5.0, 1.2 * len(metrics) * len(blocks) + 1), 4.2)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(configs))
    axes = []
    for b, (key, index) in enumerate(blocks):
        ax = fig.add_subplot(1, len(blocks), b + 1, sharey=axes[0] if axes else None)
        axes.append(ax)
        key = key if isinstance(key, tuple) else (key,)
        parts = dict(zip(block_columns, key))
        block = summary.loc[index]
        for j, config in enumerate(configs):
            rows = block[labels.loc[index] == config]
            if rows.empty:
                continue
            row = rows.iloc[0]
            means = np.array([row[f"{m}_mean"] for m in metrics], dtype=np.float64) * 100
            stds = np.array([row.get(f"{m}_std", np.nan) for m in metrics], dtype=np.float64) * 100
            ax.bar(
                x + (j - (len(configs) - 1) / 2) * width,
                np.nan_to_num(means),
                width,
                yerr=np.nan_to_num(stds),
                capsize=2,
                color=colours[config],
                label=config,
            )
        ax.set_xticks(x, labels=[METRIC_ABBREVIATIONS.get(m, m) for m in metrics])
        ax.set_title(parts.get("test_source") or "all")
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_tsne(
    embedding: np.ndarray,
    labels: Sequence[int],
    sources: Sequence[str],
    path: str | os.PathLike,
    boundary: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str | None = None,
) -> Path:
    """A 2-D embedding coloured by class (left) and by source (right).

    Two panels side by side show whether the feature space separates the diseases or the
    databases (LeukNet §4.3).

    Args:
        embedding: (N, 2) coordinates (e.g. t-SNE of deep features).
        labels: 0/1 label per point.
        sources: source name per point.
        path: the PNG to write.
        boundary: optional decision function of a 2-D classifier: called with an (M, 2) array
            of grid points, it returns (M,) decision values; the 0 level is drawn on both panels
            (e.g. ``svm.decision_function`` of an SVM fitted on the embedding).
        title: optional figure title.

    Returns:
        The PNG path.
    """
    points = np.asarray(embedding, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    src = np.asarray(sources).astype(str).reshape(-1)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"plot_tsne needs an (N, 2) embedding, got shape {points.shape}.")
    if not points.shape[0] == y.size == src.size:
        raise ValueError(
            f"plot_tsne: {points.shape[0]} points, {y.size} labels and {src.size} "
            "sources must align."
        )
    grid = None
    if boundary is not None:
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = 0.05 * np.maximum(hi - lo, 1e-9)
        gx, gy = np.meshgrid(
            np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
            np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200),
        )
        values = np.asarray(boundary(np.column_stack([gx.ravel(), gy.ravel()])), dtype=np.float64)
        if values.size != gx.size:
            raise ValueError(
                f"plot_tsne: the boundary function returned {values.size} values "
                f"for {gx.size} grid points; it must return one per point."
            )
        grid = (gx, gy, values.reshape(gx.shape))
    fig = _figure(11, 5)
    names = list(dict.fromkeys(src.tolist()))
    palette = "tab10" if len(names) <= 10 else "tab20"
    colormap = colormaps[palette]
    panels = [
        ("class", [(CLASS_NAMES[c], y == c, CLASS_COLOURS[c]) for c in (0, 1)]),
        ("source", [(n, src == n, colormap(i % colormap.N)) for i, n in enumerate(names)]),
    ]
    for i, (what, groups) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, mask, colour in groups:
            if mask.any():
                ax.scatter(
                    points[mask, 0],
                    points[mask, 1],
                    s=10,
                    alpha=0.75,
                    color=colour,
                    label=f"{name} ({int(mask.sum())})",
                    edgecolors="none",
                )
        if grid is not None and np.nanmin(grid[2]) < 0 < np.nanmax(grid[2]):
            ax.contour(grid[0], grid[1], grid[2], levels=[0.0], colors="black", linewidths=1.5)
        ax.set_title(f"coloured by {what}")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
