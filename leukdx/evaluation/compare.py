"""``leukdx compare``: two evaluated configurations side by side, with significance tests.

Reads the ``folds.csv`` ledgers (and per-fold ``predictions/``) that
:func:`leukdx.evaluation.runner.run_evaluation` writes, selects one configuration on each
side, pairs their folds on (protocol, test source, fold, repeat, run) and hands them to
:func:`leukdx.evaluation.stats.compare_results`: the paired t-test (LODO over test source and
run), Student's t-test (LeukNet's choice), the corrected resampled t-test for k-fold, and
McNemar's test per pass and on per-image majority votes. Bootstrap intervals of A, B and A - B
resample images, each with all its predictions
(:func:`~leukdx.evaluation.stats.bootstrap_ci`,
:func:`~leukdx.evaluation.stats.bootstrap_difference_ci`).

Example:
    >>> report = compare_result_dirs("results/lodo_vgg16", "results/lodo_resnet50",
    ...                              metric="mcc")  # doctest: +SKIP
    >>> print(report.text)  # doctest: +SKIP
    >>> report.write("results/vgg16_vs_resnet50")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from leukdx.evaluation.ledger import (
    CONFIG_COLUMNS,
    FOLDS_FILE,
    PREDICTIONS_DIR,
    atomic_write_text,
    predictions_name,
    read_predictions,
)
from leukdx.evaluation.metrics import METRIC_NAMES
from leukdx.evaluation.stats import (
    ALIGN_COLUMNS,
    align_predictions,
    bootstrap_ci,
    bootstrap_difference_ci,
    compare_results,
    mcnemar_per_pass,
)

__all__ = ["COMPARISON_FILES", "Comparison", "compare_result_dirs", "select_configuration"]

# What :meth:`Comparison.write` puts in its folder.
COMPARISON_FILES: tuple[str, ...] = (
    "comparison.csv", "intervals.csv", "mcnemar_passes.csv", "comparison.md",
)
ALL_SOURCES = "all"
_TESTS = {
    "corrected": "Corrected resampled t-test (Nadeau & Bengio 2003) over {n_splits} k-fold "
                 "splits (runs averaged per split)",
    "paired": "Paired t-test over {n_pairs} (test source, fold, repeat, run) pairs",
}


@dataclass
class Comparison:
    """The result of :func:`compare_result_dirs`.

    Attributes:
        overall: test results over every shared fold (a dict of
            :func:`~leukdx.evaluation.stats.compare_results`).
        per_source: the same per test source (one row each).
        intervals: bootstrap intervals of the metric for A, B and A - B (``side``), one row per
            side and test source plus ``all`` (empty without predictions on both sides).
        mcnemar: McNemar's test per pass (``repeat``, ``run``) over all test sources (empty
            without predictions).
        text: a readable report.
        markdown: the same as Markdown tables.
    """

    overall: dict
    per_source: pd.DataFrame
    intervals: pd.DataFrame
    mcnemar: pd.DataFrame
    text: str
    markdown: str

    def __str__(self) -> str:
        return self.text

    def table(self) -> pd.DataFrame:
        """Per-source rows followed by the overall row (``test_source`` = ``all``)."""
        overall = pd.DataFrame([{"test_source": ALL_SOURCES, **self.overall}])
        return pd.concat([self.per_source, overall], ignore_index=True)

    def write(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write :data:`COMPARISON_FILES` (CSV tables and the Markdown report) to ``out_dir``.

        Args:
            out_dir: folder, created if needed; existing files of these names are replaced.

        Returns:
            The written paths.
        """
        out = Path(out_dir)
        frames = (self.table(), self.intervals, self.mcnemar)
        paths = [atomic_write_text(out / name, frame.to_csv(index=False))
                 for name, frame in zip(COMPARISON_FILES, frames)]
        paths.append(atomic_write_text(out / COMPARISON_FILES[-1], self.markdown))
        return paths


def _ledger_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / FOLDS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No folds ledger at {path}: give a results folder written by `leukdx evaluate` "
            "or its folds.csv."
        )
    return path


def select_configuration(folds: pd.DataFrame, where: dict[str, str], side: str) -> pd.DataFrame:
    """Rows of one configuration of a ledger.

    Args:
        folds: ledger rows.
        where: column → value filters (e.g. ``{"strategy": "mdft"}``).
        side: ``"A"`` or ``"B"`` (for messages).

    Raises:
        ValueError: a filter names an unknown column, or the rows still hold several
            configurations (the message lists them and how to pick one).
    """
    rows = folds
    for column, value in where.items():
        if column not in rows.columns:
            raise ValueError(f"--where-{side.lower()}: folds.csv has no column '{column}'.")
        rows = rows[rows[column].astype(str) == str(value)]
    columns = [c for c in CONFIG_COLUMNS if c in rows.columns]
    configs = rows[columns].drop_duplicates()
    if len(configs) != 1:
        listed = "\n".join("  " + ", ".join(f"{c}={r[c]}" for c in columns)
                           for _, r in configs.iterrows())
        raise ValueError(
            f"Side {side} holds {len(configs)} configurations; pick one with "
            f"--where-{side.lower()} COLUMN=VALUE (repeatable):\n{listed or '  (none)'}"
        )
    return rows.reset_index(drop=True)


def _pooled_predictions(ledger: Path, folds: pd.DataFrame) -> pd.DataFrame | None:
    """Per-image predictions of the selected folds with their fold keys, or None if absent."""
    parts = []
    for _, row in folds.iterrows():
        path = ledger.parent / PREDICTIONS_DIR / predictions_name(row)
        if not path.is_file():
            return None
        part = read_predictions(path)
        for column in ALIGN_COLUMNS:
            # ledgers written before the repeat column held repeat 0 only
            part[column] = row[column] if column in row.index else 0
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else None


def _intervals(aligned: pd.DataFrame, metric: str, n_boot: int, alpha: float
               ) -> pd.DataFrame:
    """Bootstrap intervals of A, B and A - B per test source and over all, resampling images."""
    rows = []
    parts = [(str(s), part) for s, part in aligned.groupby("test_source", sort=False)]
    if len(parts) > 1:
        parts.append((ALL_SOURCES, aligned))
    for source, part in parts:
        common: dict[str, Any] = dict(metric=metric, n_boot=n_boot, seed=0, alpha=alpha,
                                      groups=part["image"].to_numpy())
        probs = {s: part[f"probability_{s}"] for s in ("a", "b")}
        if metric != "roc_auc":  # threshold metrics use the saved predictions
            probs = {s: None for s in ("a", "b")}
        sizes = {"n_images": int(part["image"].nunique()), "n_predictions": len(part)}
        for side in ("a", "b"):
            ci = bootstrap_ci(part["label"], probs[side], y_pred=part[f"prediction_{side}"],
                              **common)
            rows.append({"test_source": source, "side": side.upper(), **ci._asdict(), **sizes})
        ci = bootstrap_difference_ci(part["label"], probs["a"], probs["b"],
                                     pred_a=part["prediction_a"], pred_b=part["prediction_b"],
                                     **common)
        rows.append({"test_source": source, "side": "A-B", **ci._asdict(), **sizes})
    return pd.DataFrame(rows)


def _fmt(value: Any, digits: int = 4) -> str:
    return "nan" if value is None or pd.isna(value) else f"{value:.{digits}f}"


_TABLE_COLUMNS = (  # (header, column, width)
    ("test source", "test_source", 16), ("pairs", "n_pairs", 6), ("mean A", "mean_a", 9),
    ("mean B", "mean_b", 9), ("A-B", "diff", 9), ("paired p", "paired_p", 10),
    ("Student p", "student_p", 11), ("corrected p", "corrected_p", 13),
    ("McNemar p", "mcnemar_p", 11),
)


def _cell(row: dict, column: str) -> str:
    value = row.get(column, float("nan"))
    if column == "test_source":
        return str(value)
    if column == "n_pairs":
        return str(int(value))
    return _fmt(value)


def _report(
    folds_a: pd.DataFrame, folds_b: pd.DataFrame, sides: tuple[Path, Path], overall: dict,
    per_source: pd.DataFrame, intervals: pd.DataFrame, passes: pd.DataFrame, alpha: float,
) -> tuple[str, str]:
    """The text and Markdown reports."""

    def describe(folds: pd.DataFrame) -> str:
        row = folds.iloc[0]
        return ", ".join(f"{c}={row[c]}" for c in CONFIG_COLUMNS if c in folds.columns)

    rows = [r.to_dict() for _, r in per_source.iterrows()]
    rows.append({**overall, "test_source": "all folds"})
    header = (f"metric: {overall['metric']}; protocol {overall['protocol'] or '?'}; "
              f"{overall['n_pairs']} paired folds ({overall['n_splits']} splits x "
              f"{overall['n_runs']} run(s), {overall['n_repeats']} repeat(s)); "
              f"significance level {alpha:g}")
    test = _TESTS[overall["test"]].format(**overall)
    if pd.isna(overall["p_value"]):
        verdict = f"{test}: not computed (see notes)."
    else:
        word = "significant" if overall["significant"] else "not significant"
        verdict = (f"{test}: A - B = {_fmt(overall['diff'])}, p = {_fmt(overall['p_value'])}, "
                   f"{word} at {alpha:g}.")
    notes = [n for n in (overall.get("notes") or "").split("; ") if n]
    mc_line = ""
    if "mcnemar_p" in overall:
        mc_line = (f"McNemar's test on per-image majority votes ({overall['mcnemar_images']} "
                   f"images): n01 = {overall['mcnemar_n01']}, n10 = {overall['mcnemar_n10']}, "
                   f"p = {_fmt(overall['mcnemar_p'])}; significant in "
                   f"{overall['mcnemar_passes_significant']} of {overall['mcnemar_passes']} "
                   "passes on their own.")
    level = f"{100 * (1 - alpha):g} %"

    text = [f"A: {describe(folds_a)}  ({sides[0]})", f"B: {describe(folds_b)}  ({sides[1]})",
            header, "",
            "".join(f"{h:<{w}}" if c == "test_source" else f"{h:>{w}}"
                    for h, c, w in _TABLE_COLUMNS)]
    for row in rows:
        text.append("".join(f"{_cell(row, c):<{w}}" if c == "test_source"
                            else f"{_cell(row, c):>{w}}" for _, c, w in _TABLE_COLUMNS))
    text += ["", verdict]
    text += [f"Note: {n}." for n in notes]
    if mc_line:
        text += ["", mc_line, "  pass (repeat, run)   images   n01   n10   p"]
        for _, r in passes.iterrows():
            text.append(f"  {r['repeat']:>6}, {r['run']:<12}{r['n_images']:>8}{r['n01']:>6}"
                        f"{r['n10']:>6}   {_fmt(r['p_value'])}")
    if not intervals.empty:
        text += ["", f"Bootstrap {level} intervals of {overall['metric']} (images resampled "
                     "with all their predictions):"]
        for _, r in intervals.iterrows():
            text.append(f"  {r['test_source']:<16} {r['side']:<4} {_fmt(r['estimate'])} "
                        f"[{_fmt(r['low'])}, {_fmt(r['high'])}]  {r['n_images']} images, "
                        f"{r['n_predictions']} predictions")

    md = ["# Comparison", "", f"- A: {describe(folds_a)} (`{sides[0]}`)",
          f"- B: {describe(folds_b)} (`{sides[1]}`)", f"- {header}", "",
          "| " + " | ".join(h for h, _, _ in _TABLE_COLUMNS) + " |",
          "|---" * len(_TABLE_COLUMNS) + "|"]
    md += ["| " + " | ".join(_cell(row, c) for _, c, _ in _TABLE_COLUMNS) + " |"
           for row in rows]
    md += ["", f"**{verdict}**"]
    md += [f"- Note: {n}." for n in notes]
    if mc_line:
        md += ["", mc_line, "", "| repeat | run | images | n01 | n10 | p |", "|---" * 6 + "|"]
        md += [f"| {r['repeat']} | {r['run']} | {r['n_images']} | {r['n01']} | {r['n10']} | "
               f"{_fmt(r['p_value'])} |" for _, r in passes.iterrows()]
    if not intervals.empty:
        md += ["", f"Bootstrap {level} intervals (images resampled with all their "
                   "predictions):", "",
               "| test source | side | estimate | low | high | images | predictions |",
               "|---" * 7 + "|"]
        md += [f"| {r['test_source']} | {r['side']} | {_fmt(r['estimate'])} | {_fmt(r['low'])} "
               f"| {_fmt(r['high'])} | {r['n_images']} | {r['n_predictions']} |"
               for _, r in intervals.iterrows()]
    return "\n".join(text), "\n".join(md) + "\n"


def compare_result_dirs(
    a: str | os.PathLike,
    b: str | os.PathLike,
    metric: str = "mcc",
    where_a: dict[str, str] | None = None,
    where_b: dict[str, str] | None = None,
    alpha: float = 0.05,
    n_boot: int = 1000,
) -> Comparison:
    """Compare configuration A with configuration B, fold by fold.

    Args:
        a, b: results folders (or their ``folds.csv``); may be the same folder of a grid,
            with ``where_a``/``where_b`` picking a configuration each.
        metric: a name of :data:`leukdx.evaluation.metrics.METRIC_NAMES` (``mcc``,
            ``accuracy``, ``roc_auc``, ...).
        where_a, where_b: column filters selecting one configuration per side.
        alpha: significance level (LeukNet used 5 %).
        n_boot: bootstrap resamples for the confidence intervals.

    Returns:
        A :class:`Comparison` whose ``text`` is printed by the CLI and whose
        :meth:`~Comparison.write` saves it.

    Raises:
        ValueError: an unknown metric (the message lists the valid ones), a side with several
            configurations, or folds that do not align.
        FileNotFoundError: no ledger at ``a`` or ``b``.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(
            f"Unknown metric '{metric}' (--metric); choose one of {', '.join(METRIC_NAMES)}."
        )
    ledger_a, ledger_b = _ledger_path(a), _ledger_path(b)
    folds_a = select_configuration(pd.read_csv(ledger_a), where_a or {}, "A")
    folds_b = select_configuration(pd.read_csv(ledger_b), where_b or {}, "B")
    pred_a = _pooled_predictions(ledger_a, folds_a)
    pred_b = _pooled_predictions(ledger_b, folds_b)

    overall = compare_results(folds_a, folds_b, metric, pred_a, pred_b, alpha=alpha)
    per_source = compare_results(folds_a, folds_b, metric, pred_a, pred_b, alpha=alpha,
                                 by="test_source")
    intervals, passes = pd.DataFrame(), pd.DataFrame()
    missing = [side for side, pred in (("A", pred_a), ("B", pred_b)) if pred is None]
    if missing:
        note = (f"side {' and '.join(missing)} has no predictions/ file for some folds "
                "(evaluate.save_predictions), so McNemar's test and the bootstrap are skipped")
        overall["notes"] = "; ".join(n for n in (overall["notes"], note) if n)
    else:
        passes = mcnemar_per_pass(pred_a, pred_b).passes
        intervals = _intervals(align_predictions(pred_a, pred_b), metric, n_boot, alpha)
    text, markdown = _report(folds_a, folds_b, (ledger_a, ledger_b), overall, per_source,
                             intervals, passes, alpha)
    return Comparison(overall, per_source, intervals, passes, text, markdown)
