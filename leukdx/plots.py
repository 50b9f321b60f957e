"""PNG figures: training curves, confusion matrices, ROC curves, metric bars and t-SNE maps.

Each figure has two functions: ``*_figure`` builds and returns the Matplotlib
:class:`~matplotlib.figure.Figure` (to show in a notebook, or to check what is drawn), and
``plot_*`` builds it and saves it as a PNG, returning the path. Figures use the
object-oriented Matplotlib API on the Agg canvas (no ``pyplot``, so no global figure registry
to leak memory in long grids and no GUI backend is ever touched) and are written atomically
(:func:`leukdx.io.atomic_output`), so a reader never sees half a picture.

No TensorFlow.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> history = pd.DataFrame({"epoch": [0, 1], "accuracy": [0.6, 0.8],
    ...                         "val_accuracy": [0.55, 0.7], "loss": [0.7, 0.4],
    ...                         "val_loss": [0.72, 0.6]})
    >>> fig = curves_figure(history, majority_baseline=("healthy", 0.69))
    >>> [int(t) for t in fig.axes[0].get_xticks()]
    [0, 1]
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
from matplotlib.ticker import MaxNLocator

from leukdx.io import atomic_output

__all__ = [
    "confusion_matrix_figure",
    "curves_figure",
    "metric_bars_figure",
    "plot_confusion_matrix",
    "plot_curves",
    "plot_metric_bars",
    "plot_roc",
    "plot_tsne",
    "roc_figure",
    "save_figure",
    "tsne_figure",
]

CLASS_NAMES = ("healthy", "leukaemia")
CLASS_COLOURS = ("tab:blue", "tab:red")
# Metrics whose range is [-1, 1] rather than [0, 1] (their error bars may go below zero).
SIGNED_METRICS = frozenset({"mcc"})
# Up to this many epochs every epoch gets a tick; beyond, Matplotlib picks integer ticks.
MAX_EPOCH_TICKS = 20


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as a PNG atomically (folders created) and return the path.

    Args:
        fig: the figure.
        path: the PNG to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _first_column(df: pd.DataFrame, names: Sequence[str]) -> str | None:
    return next((n for n in names if n in df.columns), None)


# --------------------------------------------------------------------------- training curves


def best_epoch_of(history: pd.DataFrame) -> int | None:
    """The epoch whose weights a run keeps: lowest ``val_loss``, else lowest ``loss``.

    Args:
        history: ``history.csv`` as a table.

    Returns:
        The ``epoch`` value of that row (0-based, as in ``history.csv``), or ``None`` when
        neither loss was recorded.
    """
    monitor = _first_column(history, ("val_loss", "loss"))
    if monitor is None:
        return None
    values = pd.to_numeric(history[monitor], errors="coerce")
    if values.notna().sum() == 0:
        return None
    epochs = _epochs(history)
    return int(epochs[int(np.nanargmin(values.to_numpy(dtype=np.float64)))])


def _epochs(history: pd.DataFrame) -> np.ndarray:
    if "epoch" in history.columns:
        return history["epoch"].to_numpy().astype(int)
    return np.arange(len(history))


def curves_figure(
    history: pd.DataFrame,
    title: str | None = None,
    *,
    best_epoch: int | None | str = "auto",
    majority_baseline: tuple[str, float] | None = None,
) -> Figure:
    """Training and validation accuracy (left) and loss (right) per epoch (LeukNet Fig. 7).

    Epochs are numbered as in ``history.csv`` and ``run.json`` (from 0) and the x axis has
    integer ticks only. A dotted line and a star mark the best epoch (the saved model); the
    dashed line in the accuracy panel is the accuracy of always answering the majority
    class, so a model that learnt nothing but the class balance is visible at a glance.

    Args:
        history: Keras history as a table (``history.csv``): ``accuracy`` (or
            ``binary_accuracy``/``acc``), ``loss`` and their ``val_`` counterparts, and the
            0-based ``epoch`` column CSVLogger writes (row numbers are used without it).
        title: optional figure title.
        best_epoch: the epoch to mark; ``"auto"`` (default) the lowest ``val_loss`` (else
            ``loss``), the rule the training run uses to keep weights; ``None`` marks none.
        majority_baseline: ``(class name, share)`` of the majority class in the set the
            validation accuracy is measured on, e.g. ``("healthy", 0.692)``.

    Returns:
        The figure.

    Raises:
        ValueError: the table has neither an accuracy nor a loss column, or no rows.

    Example:
        >>> fig = curves_figure(history, majority_baseline=("healthy", 0.692))  # doctest: +SKIP
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
    epochs = _epochs(history)
    if isinstance(best_epoch, str):
        best_epoch = best_epoch_of(history)
    fig = _figure(10, 4)
    panels = [(accuracy, "Accuracy", "(a)"), (loss, "Loss", "(b)")]
    for i, (column, label, letter) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        if column is None:
            ax.text(0.5, 0.5, f"no {label.lower()} recorded", ha="center", va="center")
            ax.set_axis_off()
            continue
        ax.plot(epochs, history[column], marker="o", ms=3, label="training")
        validation = f"val_{column}"
        if validation in history.columns:
            ax.plot(epochs, history[validation], marker="s", ms=3, label="validation")
        if majority_baseline is not None and column == accuracy:
            name, share = majority_baseline
            ax.axhline(float(share), ls="--", color="grey", lw=1.2,
                       label=f"always '{name}' ({float(share):.3f})")
        if best_epoch is not None and best_epoch in set(epochs.tolist()):
            marked = validation if validation in history.columns else column
            value = history[marked].to_numpy(dtype=np.float64)[list(epochs).index(best_epoch)]
            ax.axvline(best_epoch, ls=":", color="black", lw=1)
            ax.plot([best_epoch], [value], marker="*", ms=14, color="gold", mec="black",
                    ls="none", label=f"best epoch {best_epoch} (saved model)")
        if len(set(epochs.tolist())) <= MAX_EPOCH_TICKS:
            ax.set_xticks(sorted(set(epochs.tolist())))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if epochs.min() == epochs.max():  # one epoch: a narrow window around its tick
            ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
        ax.set_xlabel("epoch (from 0, as in history.csv)")
        ax.set_ylabel(label.lower())
        ax.set_title(f"{letter} {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(
    history: pd.DataFrame,
    path: str | os.PathLike,
    title: str | None = None,
    *,
    best_epoch: int | None | str = "auto",
    majority_baseline: tuple[str, float] | None = None,
) -> Path:
    """Save :func:`curves_figure` as a PNG (``curves.png`` of a run) and return its path.

    Args:
        history: see :func:`curves_figure`.
        path: the PNG to write.
        title: optional figure title.
        best_epoch: see :func:`curves_figure`.
        majority_baseline: see :func:`curves_figure`.

    Returns:
        The PNG path.
    """
    fig = curves_figure(history, title, best_epoch=best_epoch,
                        majority_baseline=majority_baseline)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- confusion matrix


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


def confusion_matrix_figure(
    cm: Mapping[str, int] | np.ndarray | Sequence[Sequence[int]],
    title: str = "Confusion matrix",
    class_names: Sequence[str] = CLASS_NAMES,
) -> Figure:
    """A 2x2 confusion matrix (scikit-learn's ``ConfusionMatrixDisplay``) with counts and
    row-normalised percentages; cells are coloured by the share of their true class.

    Args:
        cm: ``{"tp", "tn", "fp", "fn"}`` counts (e.g. a ``binary_metrics`` result or a ledger
            row), or the scikit-learn 2x2 matrix ``[[tn, fp], [fn, tp]]`` (rows = true class).
        title: figure title.
        class_names: names of class 0 and 1.

    Returns:
        The figure; cell texts read ``"<count>\\n<percent of the row>"``.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = _as_matrix(cm)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)
    fig = _figure(4.8, 4)
    ax = fig.add_subplot(1, 1, 1)
    display = ConfusionMatrixDisplay(np.nan_to_num(share), display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=False, im_kw={"vmin": 0.0, "vmax": 1.0},
                 text_kw={"fontsize": 12})
    fig.colorbar(display.im_, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for r in range(2):
        for c in range(2):
            pct = "–" if np.isnan(share[r, c]) else f"{100 * share[r, c]:.1f}%"
            display.text_[r, c].set_text(f"{matrix[r, c]}\n{pct}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def plot_confusion_matrix(
    cm: Mapping[str, int] | np.ndarray | Sequence[Sequence[int]],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """Save :func:`confusion_matrix_figure` as a PNG and return its path.

    Args:
        cm: counts or 2x2 matrix, see :func:`confusion_matrix_figure`.
        path: the PNG to write.
        title: figure title.
        class_names: names of class 0 and 1.

    Returns:
        The PNG path.
    """
    return save_figure(confusion_matrix_figure(cm, title, class_names), path)


# --------------------------------------------------------------------------- ROC


def _scores(label: str, pair: tuple[Sequence[int], Sequence[float]]):
    y = np.asarray(pair[0]).reshape(-1).astype(int)
    p = np.asarray(pair[1], dtype=np.float64).reshape(-1)
    if y.size != p.size:
        raise ValueError(f"plot_roc: '{label}' has {y.size} labels and {p.size} scores.")
    return y, p


def roc_figure(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str = "ROC",
    folds: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]] | None = None,
) -> Figure:
    """ROC curves (scikit-learn's ``RocCurveDisplay``): one bold pooled curve per entry and,
    when the folds are given, each fold's curve faint in the same colour.

    The legend says which AUC is which: "pooled AUC" is the area under the one ROC of all
    predictions together; "fold mean" is the mean ± std of the per-fold AUCs, the number
    ``summary.csv`` reports as ``roc_auc_mean``.

    Args:
        curves: label (e.g. test source) → ``(y_true, y_prob)`` of all its predictions. An
            entry whose labels hold one class has no ROC curve; the legend says so.
        title: figure title.
        folds: label → one ``(y_true, y_prob)`` per fold run, drawn faint; folds holding
            one class are skipped (they have no ROC).

    Returns:
        The figure.

    Raises:
        ValueError: no curves, or labels and scores of different lengths.
    """
    from sklearn.metrics import RocCurveDisplay, roc_auc_score

    if not curves:
        raise ValueError("plot_roc: no curves given.")
    fig = _figure(5.6, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.5)")
    for i, (label, pair) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        y, p = _scores(label, pair)
        fold_aucs = []
        for k, fold in enumerate((folds or {}).get(label, ())):
            fy, fp = _scores(f"{label} fold {k}", fold)
            if np.unique(fy).size < 2:
                continue
            fold_aucs.append(roc_auc_score(fy, fp))
            RocCurveDisplay.from_predictions(
                fy, fp, ax=ax, name=f"_{label} fold {k}",
                curve_kwargs={"color": colour, "alpha": 0.25, "lw": 0.8},
            ).line_.set_label(f"_{label} fold {k}")  # a leading _ keeps it out of the legend
        if np.unique(y).size < 2:
            ax.plot([], [], color=colour, label=f"{label}: one class, no ROC")
            continue
        text = f"{label}: pooled AUC {roc_auc_score(y, p):.3f}"
        if fold_aucs:
            text += (f"; fold mean {np.mean(fold_aucs):.3f} ± {np.std(fold_aucs, ddof=1):.3f}"
                     if len(fold_aucs) > 1 else f"; 1 fold {fold_aucs[0]:.3f}")
            text += f" ({len(fold_aucs)} folds)" if len(fold_aucs) > 1 else ""
        display = RocCurveDisplay.from_predictions(
            y, p, ax=ax, name=label, curve_kwargs={"color": colour, "lw": 2.2}
        )
        display.line_.set_label(text)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def plot_roc(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | os.PathLike,
    title: str = "ROC",
    folds: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]] | None = None,
) -> Path:
    """Save :func:`roc_figure` as a PNG and return its path.

    Args:
        curves: label → ``(y_true, y_prob)`` pooled over folds, see :func:`roc_figure`.
        path: the PNG to write.
        title: figure title.
        folds: label → per-fold ``(y_true, y_prob)`` pairs, drawn faint.

    Returns:
        The PNG path.
    """
    return save_figure(roc_figure(curves, title, folds), path)


# --------------------------------------------------------------------------- metric bars


def _clipped_errors(means: np.ndarray, stds: np.ndarray, lowest: float) -> np.ndarray:
    """``(2, n)`` asymmetric error bars: ±std cut at the metric's range [lowest, 100]."""
    lower = np.minimum(stds, np.maximum(means - lowest, 0.0))
    upper = np.minimum(stds, np.maximum(100.0 - means, 0.0))
    return np.vstack([lower, upper])


def metric_bars_figure(
    summary: pd.DataFrame,
    metrics: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "mcc"),
    title: str | None = None,
) -> Figure:
    """Grouped bars of mean metrics (%) with ±std error bars, one panel per test source.

    Error bars stop at the ends of each metric's range (0-100 %; MCC -100-100 %), and the
    legend of the configurations sits below the panels, never over a bar.

    Args:
        summary: output of :func:`leukdx.evaluation.ledger.summarize` (``<metric>_mean`` and
            ``<metric>_std`` columns, ``test_source``).
        metrics: metrics to show (x axis groups).
        title: optional figure title.

    Returns:
        The figure.
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
    fig = _figure(max(5.0, 1.2 * len(metrics) * len(blocks) + 1), 4.6)
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(configs))
    lowest = np.array([-100.0 if m in SIGNED_METRICS else 0.0 for m in metrics])
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
            means = np.nan_to_num(
                np.array([row[f"{m}_mean"] for m in metrics], dtype=np.float64) * 100)
            stds = np.nan_to_num(np.array([row.get(f"{m}_std", np.nan) for m in metrics],
                                          dtype=np.float64) * 100)
            ax.bar(
                x + (j - (len(configs) - 1) / 2) * width,
                means,
                width,
                yerr=_clipped_errors(means, stds, lowest),
                capsize=2,
                color=colours[config],
                label=config,
            )
        ax.set_xticks(x, labels=[METRIC_ABBREVIATIONS.get(m, m) for m in metrics])
        ax.set_title(str(parts.get("test_source") or "all"))
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    top = 105.0
    bottom = min(0.0, *(ax.get_ylim()[0] for ax in axes))
    axes[0].set_ylim(bottom, top)
    axes[0].set_ylabel("%")
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a configuration may be missing from the first panel
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="outside lower center", fontsize=8,
               ncols=min(len(names), 4), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_metric_bars(
    summary: pd.DataFrame,
    path: str | os.PathLike,
    metrics: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "mcc"),
    title: str | None = None,
) -> Path:
    """Save :func:`metric_bars_figure` as a PNG (``plots/metrics.png``) and return its path.

    Args:
        summary: output of :func:`leukdx.evaluation.ledger.summarize`.
        path: the PNG to write.
        metrics: metrics to show (x axis groups).
        title: optional figure title.

    Returns:
        The PNG path.
    """
    return save_figure(metric_bars_figure(summary, metrics, title), path)


# --------------------------------------------------------------------------- t-SNE


def tsne_figure(
    embedding: np.ndarray,
    labels: Sequence[int],
    sources: Sequence[str],
    boundary: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str | None = None,
) -> Figure:
    """A 2-D embedding coloured by class (left) and, when it holds several sources, by
    source (right).

    The two panels show whether the feature space separates the diseases or the databases
    (LeukNet §4.3); a map of one source has the class panel only.

    Args:
        embedding: (N, 2) coordinates (e.g. t-SNE of deep features).
        labels: 0/1 label per point.
        sources: source name per point.
        boundary: optional decision function of a 2-D classifier: called with an (M, 2) array
            of grid points, it returns (M,) decision values; the 0 level is drawn on every
            panel (e.g. ``svm.decision_function`` of an SVM fitted on the embedding).
        title: optional figure title.

    Returns:
        The figure.
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
    names = list(dict.fromkeys(src.tolist()))
    palette = "tab10" if len(names) <= 10 else "tab20"
    colormap = colormaps[palette]
    panels = [("class", [(CLASS_NAMES[c], y == c, CLASS_COLOURS[c]) for c in (0, 1)])]
    if len(names) > 1:  # one source would be one colour: nothing to compare
        panels.append(
            ("source", [(n, src == n, colormap(i % colormap.N)) for i, n in enumerate(names)])
        )
    fig = _figure(5.5 * len(panels), 5)
    for i, (what, groups) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
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
        ax.set_title(f"coloured by {what}" if len(panels) > 1 else f"{names[0]}: coloured by class")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def plot_tsne(
    embedding: np.ndarray,
    labels: Sequence[int],
    sources: Sequence[str],
    path: str | os.PathLike,
    boundary: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str | None = None,
) -> Path:
    """Save :func:`tsne_figure` as a PNG and return its path.

    Args:
        embedding: (N, 2) coordinates.
        labels: 0/1 label per point.
        sources: source name per point.
        path: the PNG to write.
        boundary: optional 2-D decision function, see :func:`tsne_figure`.
        title: optional figure title.

    Returns:
        The PNG path.
    """
    return save_figure(tsne_figure(embedding, labels, sources, boundary, title), path)
