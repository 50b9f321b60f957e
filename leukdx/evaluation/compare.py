"""``leukdx compare``: two evaluated configurations side by side, with significance tests.

Reads the ``folds.csv`` ledgers (and per-fold ``predictions/``) that
:func:`leukdx.evaluation.runner.run_evaluation` writes, selects one configuration on each
side, and hands them to :func:`leukdx.evaluation.stats.compare_results` (paired, Student and
corrected resampled t-tests; McNemar on the images both saw) and
:func:`leukdx.evaluation.stats.bootstrap_ci` (95 % interval on the pooled predictions).

Example:
    >>> report = compare_result_dirs("results/lodo_vgg16", "results/lodo_resnet50",
    ...                              metric="mcc")  # doctest: +SKIP
    >>> print(report.text)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leukdx.evaluation.ledger import CONFIG_COLUMNS, read_predictions
from leukdx.evaluation.runner import FOLDS_FILE, PREDICTIONS_DIR, predictions_name
from leukdx.evaluation.stats import bootstrap_ci, compare_results

__all__ = ["Comparison", "compare_result_dirs", "select_configuration"]


@dataclass
class Comparison:
    """The result of :func:`compare_result_dirs`.

    Attributes:
        overall: test results over every shared fold (a dict of
            :func:`~leukdx.evaluation.stats.compare_results`).
        per_source: the same per test source (one row each).
        intervals: bootstrap confidence intervals of the metric on pooled predictions,
            one row per side and test source (empty without predictions).
        text: a readable report.
    """

    overall: dict
    per_source: pd.DataFrame
    intervals: pd.DataFrame
    text: str

    def __str__(self) -> str:
        return self.text


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
        for column in ("protocol", "test_source", "fold", "run"):
            part[column] = row[column]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else None


def _fmt(value: float, digits: int = 4) -> str:
    return "nan" if pd.isna(value) else f"{value:.{digits}f}"


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
        metric: a metric column of the ledgers (``mcc``, ``accuracy``, ...).
        where_a, where_b: column filters selecting one configuration per side.
        alpha: significance level (LeukNet used 5 %).
        n_boot: bootstrap resamples for the confidence intervals.

    Returns:
        A :class:`Comparison` whose ``text`` is printed by the CLI.
    """
    ledger_a, ledger_b = _ledger_path(a), _ledger_path(b)
    folds_a = select_configuration(pd.read_csv(ledger_a), where_a or {}, "A")
    folds_b = select_configuration(pd.read_csv(ledger_b), where_b or {}, "B")
    pred_a = _pooled_predictions(ledger_a, folds_a)
    pred_b = _pooled_predictions(ledger_b, folds_b)

    overall = compare_results(folds_a, folds_b, metric, pred_a, pred_b, alpha=alpha)
    per_source = compare_results(folds_a, folds_b, metric, pred_a, pred_b, alpha=alpha,
                                 by="test_source")
    intervals = []
    for side, pred in (("A", pred_a), ("B", pred_b)):
        if pred is None:
            continue
        for source, part in pred.groupby("test_source"):
            ci = bootstrap_ci(part["label"], part["probability"], metric=metric,
                              n_boot=n_boot, seed=0, alpha=alpha)
            intervals.append({"side": side, "test_source": source, "estimate": ci.estimate,
                              "low": ci.low, "high": ci.high, "n_images": len(part)})
    intervals_df = pd.DataFrame(intervals)

    def describe(folds: pd.DataFrame) -> str:
        row = folds.iloc[0]
        return ", ".join(f"{c}={row[c]}" for c in CONFIG_COLUMNS if c in folds.columns)

    lines = [
        f"A: {describe(folds_a)}  ({ledger_a})",
        f"B: {describe(folds_b)}  ({ledger_b})",
        f"metric: {metric}; {overall['n_pairs']} paired folds; significance level {alpha:g}",
        "",
        f"{'test source':<20}{'mean A':>9}{'mean B':>9}{'A-B':>9}"
        f"{'paired p':>10}{'Student p':>11}{'corrected p':>13}{'McNemar p':>11}",
    ]
    for _, r in per_source.iterrows():
        lines.append(
            f"{str(r['test_source']):<20}{_fmt(r['mean_a']):>9}{_fmt(r['mean_b']):>9}"
            f"{_fmt(r['diff']):>9}{_fmt(r['paired_p']):>10}{_fmt(r['student_p']):>11}"
            f"{_fmt(r['corrected_p']):>13}{_fmt(r.get('mcnemar_p', float('nan'))):>11}"
        )
    lines.append(
        f"{'all folds':<20}{_fmt(overall['mean_a']):>9}{_fmt(overall['mean_b']):>9}"
        f"{_fmt(overall['diff']):>9}{_fmt(overall['paired_p']):>10}"
        f"{_fmt(overall['student_p']):>11}{_fmt(overall['corrected_p']):>13}"
        f"{_fmt(overall.get('mcnemar_p', float('nan'))):>11}"
    )
    verdict = "significant" if overall["significant_corrected"] else "not significant"
    lines += ["", f"Corrected resampled t-test (Nadeau & Bengio 2003) over all folds: {verdict} "
                  f"at {alpha:g}."]
    if not intervals_df.empty:
        lines += ["", f"Bootstrap {100 * (1 - alpha):.0f} % intervals of {metric} on pooled "
                      "predictions:"]
        for _, r in intervals_df.iterrows():
            lines.append(f"  {r['side']} {r['test_source']:<18} {_fmt(r['estimate'])} "
                         f"[{_fmt(r['low'])}, {_fmt(r['high'])}]  n={r['n_images']}")
    return Comparison(overall, per_source, intervals_df, "\n".join(lines))
