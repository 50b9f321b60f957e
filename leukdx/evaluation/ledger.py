"""The folds ledger: one CSV row per finished (configuration, protocol, fold, run).

An evaluation grid can take days; a killed grid must lose nothing and redo nothing, and several
workers may share one results folder. So:

- **Appends are serialised** by a file lock (``.folds.csv.lock`` beside the ledger,
  :mod:`filelock`): under the lock :meth:`Ledger.append` checks the key is new and appends one
  line (``O_APPEND``, flushed and fsynced). Nothing is read, modified and written back, so no
  writer can drop another's row. A killed writer can leave at most a torn last line without
  its newline: readers ignore it and the next append repairs it.
- **The file is rewritten only when compacting** (a row brings a new column, a torn line is
  dropped, or :meth:`Ledger.compact` is called), atomically: temporary file + ``os.replace``.
- **A fold is claimed before it trains** (:meth:`Ledger.try_claim`): one lock file per fold key
  under ``.claims/``. The operating system releases the lock when its process dies, so a
  crashed worker never blocks a fold for good, and parallel workers on one folder split the
  folds instead of repeating them.

Key values are compared as text, the way they are stored, so a key survives the CSV round trip
(``fold`` 3 and ``"3"`` are the same key). Earlier rows are kept byte for byte.

:func:`summarize` turns the folds into mean ± std per configuration and test source, and
:func:`markdown_table` prints them shaped like LeukNet's Tables 3-7.

Pure pandas; no TensorFlow.

Example:
    >>> import tempfile, pathlib
    >>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "folds.csv")
    >>> key = dict(experiment="demo", backbone="vgg16", strategy="mdft", head="1024-256",
    ...            protocol="lodo", test_source="all_idb2", fold=0, run=0, seed=42)
    >>> ledger.has(key)
    False
    >>> with ledger.try_claim(key) as claim:       # None when another worker trains it
    ...     ledger.append({**key, "accuracy": 0.82, "mcc": 0.67})
    >>> ledger.has(key), len(ledger.read())
    (True, 1)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock, Timeout

from leukdx.errors import LedgerError
from leukdx.evaluation.metrics import COUNT_NAMES, METRIC_NAMES
from leukdx.io import atomic_write_text

__all__ = [
    "CONFIG_COLUMNS",
    "FOLD_COLUMNS",
    "FOLD_KEY_COLUMNS",
    "FOLDS_FILE",
    "PREDICTIONS_DIR",
    "PREDICTION_COLUMNS",
    "PROVENANCE_COLUMNS",
    "FoldClaim",
    "Ledger",
    "LedgerError",
    "atomic_write_text",
    "config_labels",
    "format_mean_std",
    "markdown_table",
    "predictions_name",
    "read_predictions",
    "summarize",
    "write_predictions",
    "write_summary",
]

# What makes a model configuration (one row of a results table).
CONFIG_COLUMNS: tuple[str, ...] = ("experiment", "backbone", "strategy", "head", "protocol")
# One finished fold of one run of one configuration: the resume key.
FOLD_KEY_COLUMNS: tuple[str, ...] = CONFIG_COLUMNS + ("test_source", "fold", "run", "seed")
TIMING_COLUMNS: tuple[str, ...] = ("train_seconds", "infer_ms_per_image")
# How a row was produced: the k-fold repetition, the hash of every setting that can change
# the fold's result (rows of one results folder must share it), and what actually ran.
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "repeat", "config_hash", "image_size", "epochs", "precision_policy", "jit_compile",
)
FOLD_COLUMNS: tuple[str, ...] = (
    FOLD_KEY_COLUMNS + ("n_train", "n_val", "n_test") + COUNT_NAMES + METRIC_NAMES
    + TIMING_COLUMNS + PROVENANCE_COLUMNS
)
_TEXT_KEYS = ("experiment", "backbone", "strategy", "head", "protocol", "test_source",
              "config_hash", "precision_policy", "jit_compile")
_INT_COLUMNS = (
    ("fold", "run", "repeat", "seed", "n_train", "n_val", "n_test", "image_size", "epochs")
    + COUNT_NAMES
)
PREDICTION_COLUMNS: tuple[str, ...] = ("path", "label", "probability", "prediction")
CLAIMS_DIR = ".claims"
# A results folder: the ledger and one predictions file per fold.
FOLDS_FILE = "folds.csv"
PREDICTIONS_DIR = "predictions"

# Column abbreviations of LeukNet's tables.
METRIC_ABBREVIATIONS = {
    "accuracy": "A",
    "precision": "P",
    "recall": "R",
    "specificity": "S",
    "mcc": "MCC",
    "f1": "F1",
    "kappa": "Kappa",
    "roc_auc": "AUC",
    "balanced_accuracy": "BA",
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).strip("_") or "x"


def predictions_name(row: Mapping[str, Any]) -> str:
    """File name of a fold's predictions (in ``predictions/``), made from its ledger key."""
    name = "__".join(_slug(row[c]) for c in FOLD_KEY_COLUMNS)
    if len(name) > 180:  # keep within file-name limits, still unique
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = name[:160] + "__" + digest
    return name + ".csv"


def _cell(value: Any) -> str:
    """The CSV text of one value: shortest round-trip floats, blank for missing."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        # str of a NumPy scalar is the shortest text that round-trips in its own precision
        # (float32 0.8 → "0.8", not "0.800000011920929")
        return str(value) if isinstance(value, np.floating) else repr(float(value))
    return str(value)


def _key_text(value: Any) -> str:
    """Key values as text; integral floats (a fold read back as 3.0) become ``"3"``."""
    if (
        isinstance(value, (float, np.floating))
        and not math.isnan(value)
        and float(value).is_integer()
    ):
        return str(int(value))
    return _cell(value)


def _line(values: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


class FoldClaim:
    """The exclusive right to train one fold (a lock file under the ledger's ``.claims/``).

    Held from before training until the fold's row is appended; released by
    :meth:`release`, by leaving its ``with`` block, or by the operating system when the process
    dies, so a crashed worker never blocks the fold for good.

    Args:
        path: the lock file of the fold.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path))

    @property
    def held(self) -> bool:
        """Whether this process holds the claim."""
        return self._lock.is_locked

    def acquire(self, timeout: float = -1) -> bool:
        """Take the claim; wait up to ``timeout`` seconds (``-1``: as long as it takes, ``0``:
        not at all). Returns whether it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=timeout)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        """Give the claim up (a no-op when not held)."""
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> FoldClaim:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Ledger:
    """A resumable ``folds.csv`` that several processes may append to.

    Args:
        path: the CSV file; created (with its folder) by the first :meth:`append`.

    Columns: :data:`FOLD_COLUMNS` in that order (blank where a row has no value), then any
    extra columns rows bring, in order of first appearance.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = FileLock(str(self.path.with_name(f".{self.path.name}.lock")))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the ledger's write lock (re-entrant within one process and thread).

        Every change of ``folds.csv`` happens under it; a driver also holds it while it writes
        the reports derived from the ledger, so two workers never interleave them.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            yield

    # -- raw access -----------------------------------------------------------------------
    def _read_raw(self) -> tuple[list[str], list[dict[str, str]], str, bool]:
        """Header, rows, the complete text, and whether a torn last line was left out."""
        if not self.path.exists():
            return list(FOLD_COLUMNS), [], "", False
        text = self.path.read_text(encoding="utf-8")
        torn = bool(text) and not text.endswith("\n")
        if torn:  # a writer died mid-line: that row never finished, so it does not count
            text = text[: text.rfind("\n") + 1]
        if not text.strip():
            return list(FOLD_COLUMNS), [], "", torn
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        missing = [c for c in FOLD_KEY_COLUMNS if c not in header]
        if missing:
            raise LedgerError(
                f"{self.path} is not a folds ledger: it lacks column(s) {', '.join(missing)}. "
                "Point the evaluation at a new results folder or fix the file."
            )
        rows = []
        for number, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) > len(header):
                raise LedgerError(f"{self.path}, line {number}: more fields than columns.")
            rows.append(dict(zip(header, values)))
        return header, rows, text, torn

    @staticmethod
    def key_of(row: Mapping[str, Any]) -> tuple[str, ...]:
        """The resume key of a row, as text (raises LedgerError when a key column is missing)."""
        missing = [c for c in FOLD_KEY_COLUMNS if c not in row]
        if missing:
            raise LedgerError(
                f"A folds row needs every key column; missing: {', '.join(missing)} "
                f"(keys: {', '.join(FOLD_KEY_COLUMNS)}). Use '' for a key that does not apply."
            )
        return tuple(_key_text(row[c]) for c in FOLD_KEY_COLUMNS)

    def _write_all(self, header: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
        lines = [_line(header)] + [_line([r.get(c, "") for c in header]) for r in rows]
        atomic_write_text(self.path, "".join(lines))

    # -- public API -----------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, ...]]:
        """Keys of every finished row (see :meth:`key_of`)."""
        _, rows, _, _ = self._read_raw()
        return {self.key_of(r) for r in rows}

    def has(self, key: Mapping[str, Any]) -> bool:
        """Whether the fold identified by ``key`` (all of :data:`FOLD_KEY_COLUMNS`) is done."""
        return self.key_of(key) in self.done_keys()

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one finished fold: one line appended under the ledger's lock.

        The file is rewritten (atomically) instead only when it does not exist yet, when the
        row brings a column the header lacks, or when a torn last line must be dropped.

        Args:
            row: every key column plus any metric/extra columns.

        Raises:
            LedgerError: a key column is missing or the key is already in the ledger (a
                finished fold is never written twice; claim it with :meth:`try_claim`).
        """
        key = self.key_of(row)
        new_cells = {str(k): _cell(v) for k, v in row.items()}
        with self.locked():
            header, rows, text, torn = self._read_raw()
            if any(self.key_of(r) == key for r in rows):
                shown = ", ".join(f"{c}={v}" for c, v in zip(FOLD_KEY_COLUMNS, key))
                raise LedgerError(
                    f"{self.path} already has the fold {shown}; it is not written twice."
                )
            extra = [c for c in new_cells if c not in header]
            if extra or torn or not text:
                self._write_all(header + extra, [*rows, new_cells])
                return
            line = _line([new_cells.get(c, "") for c in header]).encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                written = 0
                while written < len(line):
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)

    def compact(self) -> None:
        """Rewrite the ledger atomically: one header, complete rows only (drops a torn line)."""
        with self.locked():
            header, rows, text, torn = self._read_raw()
            if text or torn:
                self._write_all(header, rows)

    def archive(self, stamp: str | None = None) -> Path | None:
        """Move the ledger aside as ``folds.<stamp>.csv`` (default: the UTC time), under the
        lock, so the next append starts a new ledger. Returns the new path (None: no ledger).
        """
        stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        with self.locked():
            if not self.path.exists():
                return None
            target = self.path.with_name(f"{self.path.stem}.{stamp}{self.path.suffix}")
            counter = 1
            while target.exists():  # two archives within one second
                target = self.path.with_name(
                    f"{self.path.stem}.{stamp}-{counter}{self.path.suffix}")
                counter += 1
            os.replace(self.path, target)
            return target

    def claim_path(self, key: Mapping[str, Any]) -> Path:
        """The lock file that claims the fold ``key``."""
        digest = hashlib.sha1("\x1f".join(self.key_of(key)).encode("utf-8")).hexdigest()
        return self.path.parent / CLAIMS_DIR / f"{self.path.stem}.{digest[:20]}.lock"

    def try_claim(self, key: Mapping[str, Any], timeout: float = 0) -> FoldClaim | None:
        """Claim the fold ``key`` for this worker before training it.

        Args:
            key: the fold's key columns.
            timeout: seconds to wait for a claim held by another worker (``0``: do not
                wait; ``-1``: until it is released).

        Returns:
            The held :class:`FoldClaim` (use it as a context manager), or ``None`` when
            another worker holds the claim. A fold already in the ledger may still be claimed:
            check :meth:`has` once the claim is held.
        """
        claim = FoldClaim(self.claim_path(key))
        return claim if claim.acquire(timeout=timeout) else None

    def read(self) -> pd.DataFrame:
        """The ledger as a DataFrame (empty, with :data:`FOLD_COLUMNS`, when there is no file).

        Text keys stay text (``""`` for a blank test source), ``fold``/``run``/``seed``, sizes
        and counts are integers where complete, metrics are floats with NaN for blanks; extra
        columns are numeric when every value parses, else text.
        """
        header, rows, _, _ = self._read_raw()
        df = pd.DataFrame(
            [[r.get(c, "") for c in header] for r in rows], columns=header, dtype=object
        )
        for column in header:
            if column in _TEXT_KEYS:
                df[column] = df[column].astype(str)
                continue
            values = df[column].replace("", np.nan)
            try:
                numeric = pd.to_numeric(values)
            except (TypeError, ValueError):
                df[column] = df[column].astype(str)
                continue
            if column in _INT_COLUMNS and len(numeric) and numeric.notna().all():
                numeric = numeric.astype(np.int64)
            df[column] = numeric.astype(np.float64) if column not in _INT_COLUMNS else numeric
        return df


# ---------------------------------------------------------------------------------------------
# summaries


def summarize(folds: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation of each metric per configuration and test source.

    The spread is over every fold and run of the group (LeukNet reports mean ± std over five
    runs per test dataset). ``std`` uses ``ddof=1`` and both ignore NaN (an undefined recall in
    one fold does not blank the whole cell); a single value has NaN std.

    Args:
        folds: rows of a ledger (:meth:`Ledger.read`).
        by: grouping columns; default :data:`CONFIG_COLUMNS` + ``test_source`` (those present).

    Returns:
        One row per group, in order of first appearance: the grouping columns, ``n`` (rows),
        then ``<metric>_mean`` and ``<metric>_std`` for each metric and timing column present.
    """
    if by is None:
        by = [c for c in CONFIG_COLUMNS + ("test_source",) if c in folds.columns]
    by = list(by)
    missing = [c for c in by if c not in folds.columns]
    if missing:
        raise ValueError(f"summarize: the folds table lacks column(s) {', '.join(missing)}.")
    values = [c for c in METRIC_NAMES + TIMING_COLUMNS if c in folds.columns]
    if not by:
        raise ValueError("summarize needs at least one grouping column.")
    keyed = folds.copy()
    for column in by:
        keyed[column] = keyed[column].fillna("").astype(str)
    grouped = keyed.groupby(by, sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    for column in values:
        numbers = pd.to_numeric(keyed[column], errors="coerce")
        by_group = numbers.groupby([keyed[c] for c in by], sort=False, dropna=False)
        out[f"{column}_mean"] = by_group.mean()
        out[f"{column}_std"] = by_group.std(ddof=1)
    return out.reset_index()


def format_mean_std(mean: float, std: float, percent: bool = True, digits: int = 2) -> str:
    """``"97.04 ± 1.21"``; the std is left out when undefined (a single run), ``"n/a"`` for NaN.

    Example:
        >>> format_mean_std(0.97041, 0.0121)
        '97.04 ± 1.21'
    """
    scale = 100.0 if percent else 1.0
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:.{digits}f}"
    if std is None or not np.isfinite(std):
        return text
    return f"{text} ± {std * scale:.{digits}f}"


def config_labels(summary: pd.DataFrame) -> pd.Series:
    """A short row label per configuration: the configuration columns that differ.

    E.g. ``"mdft"`` when only the strategy varies, ``"vgg16 / mdft"`` when backbone and strategy
    vary. When nothing varies, the strategy (or backbone, or experiment) names the row.
    """
    columns = [c for c in ("experiment", "backbone", "strategy", "head") if c in summary.columns]
    varying = [c for c in columns if summary[c].astype(str).nunique() > 1]
    if not varying:
        varying = [c for c in ("strategy", "backbone", "experiment") if c in columns][:1]
    if not varying:
        return pd.Series(["all"] * len(summary), index=summary.index)
    return summary[varying].astype(str).agg(" / ".join, axis=1)


def markdown_table(
    summary: pd.DataFrame,
    metrics: Sequence[str] = ("accuracy", "precision", "recall", "specificity", "mcc"),
    percent: bool = True,
    bold_best: bool = True,
) -> str:
    """A Markdown results table shaped like LeukNet's Tables 3-7.

    One block per test source (a bold header row), one row per configuration, columns
    ``A (%) | P (%) | R (%) | S (%) | MCC (%)`` as mean ± std. The best mean of each column
    within a block is bold when the block has more than one row.

    Args:
        summary: output of :func:`summarize`.
        metrics: metric names (each needs ``<metric>_mean`` in ``summary``).
        percent: show values in %.
        bold_best: bold the best mean per block and column.

    Returns:
        The table as Markdown text.
    """
    missing = [m for m in metrics if f"{m}_mean" not in summary.columns]
    if missing:
        raise ValueError(
            f"markdown_table: the summary has no column(s) "
            f"{', '.join(m + '_mean' for m in missing)}."
        )
    unit = " (%)" if percent else ""
    names = [METRIC_ABBREVIATIONS.get(m, m) + unit for m in metrics]
    lines = ["| Approach | " + " | ".join(names) + " |", "|---" * (len(metrics) + 1) + "|"]
    labels = config_labels(summary)
    block_columns = [c for c in ("protocol", "test_source") if c in summary.columns]
    several_protocols = "protocol" in summary.columns and summary["protocol"].nunique() > 1
    if block_columns:
        blocks = summary.groupby(block_columns, sort=False, dropna=False).groups.items()
    else:
        blocks = [((), summary.index)]
    for key, index in blocks:
        key = key if isinstance(key, tuple) else (key,)
        parts = dict(zip(block_columns, key))
        title = parts.get("test_source") or "all"
        if several_protocols:
            title = f"{parts['protocol']}: {title}"
        lines.append(f"| **{title}** |" + " |" * len(metrics))
        block = summary.loc[index]
        best = {}
        for m in metrics:
            means = pd.to_numeric(block[f"{m}_mean"], errors="coerce")
            best[m] = means.max() if bold_best and len(block) > 1 and means.notna().any() else None
        for i, row in block.iterrows():
            cells = []
            for m in metrics:
                std = row[f"{m}_std"] if f"{m}_std" in block.columns else float("nan")
                text = format_mean_std(row[f"{m}_mean"], std, percent=percent)
                if best[m] is not None and row[f"{m}_mean"] == best[m]:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {labels[i]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    folds_csv: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``summary.csv`` and ``summary.md`` for a folds ledger.

    Args:
        folds_csv: the ledger file, or the rows to summarise (the evaluation runner passes
            exactly the rows of its current plan, so rows of earlier plans never leak in).
        out_dir: folder for the two summary files (created if needed).

    Returns:
        ``(summary_csv_path, summary_md_path)``.

    Raises:
        ValueError: there are no rows.
    """
    if isinstance(folds_csv, pd.DataFrame):
        folds, where = folds_csv, "The folds table"
    else:
        folds, where = Ledger(folds_csv).read(), str(folds_csv)
    if folds.empty:
        raise ValueError(
            f"{where} has no finished folds to summarise; run the evaluation first."
        )
    summary = summarize(folds)
    out_dir = Path(out_dir)
    csv_path = atomic_write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    n_runs = folds["run"].nunique() if "run" in folds.columns else 1
    md = (
        "# Results\n\n"
        "Mean ± standard deviation over the folds and runs of each configuration "
        f"({len(folds)} trained folds in {FOLDS_FILE}, {n_runs} run(s) per fold), in %. A: accuracy, P: precision, R: recall "
        "(sensitivity), S: specificity, MCC: Matthews correlation coefficient. "
        "Best mean per test source in bold.\n\n" + markdown_table(summary)
    )
    md_path = atomic_write_text(out_dir / "summary.md", md)
    return csv_path, md_path


# ---------------------------------------------------------------------------------------------
# predictions


def write_predictions(
    path: str | os.PathLike,
    paths: Sequence[str],
    labels: Sequence[int] | None,
    probs: Sequence[float],
    threshold: float = 0.5,
) -> Path:
    """Write per-image predictions (columns ``path,label,probability,prediction``) atomically.

    Args:
        path: the CSV file.
        paths: image paths.
        labels: true 0/1 labels, or ``None`` when unknown (the column is left blank).
        probs: P(leukaemia) per image.
        threshold: probability at or above which ``prediction`` is 1.

    Returns:
        The written path.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    paths = [str(p) for p in paths]
    if len(paths) != probs.size:
        raise ValueError(f"write_predictions: {len(paths)} paths but {probs.size} probabilities.")
    if labels is None:
        label_col = pd.array([pd.NA] * probs.size, dtype="Int64")
    else:
        label_col = np.asarray(labels).reshape(-1).astype(np.int64)
        if label_col.size != probs.size:
            raise ValueError(
                f"write_predictions: {label_col.size} labels but {probs.size} probabilities."
            )
    df = pd.DataFrame(
        {
            "path": paths,
            "label": label_col,
            "probability": probs,
            "prediction": (probs >= threshold).astype(np.int64),
        }
    )
    return atomic_write_text(path, df.to_csv(index=False))


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions CSV written by :func:`write_predictions`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required column is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Predictions file not found: {path}")
    df = pd.read_csv(path, dtype={"path": str})
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path} is not a predictions file: it lacks {', '.join(missing)}.")
    df["label"] = df["label"].astype("Int64")
    df["prediction"] = df["prediction"].astype(np.int64)
    return df
