"""Leakage checks for splits, and the source-label confound report.

Two ways an evaluation lies:

1. **Leakage** — the same image (or a near copy, or another crop of the same cell) is in both
   the training and the test set. :func:`assert_no_leakage` checks every split for shared record
   positions, paths, groups (which already join identical and near-duplicate images, see
   ``leukdx.data.dedup``) and identical content (sha256), and optionally recomputes dHash near
   duplicates across the split.
2. **Source confound** — when every healthy image comes from one database and every leukaemic
   one from another (as in Loey et al. 2020's data), a model can score perfectly by recognising
   the database (stain, camera, resolution) instead of the cells. :func:`source_confound`
   measures how well the source alone predicts the label; :func:`confound_warning` turns that
   into a message.

Pure NumPy / pandas; no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from leukdx.errors import LeakageError

__all__ = [
    "LeakageError",
    "assert_no_leakage",
    "confound_warning",
    "source_confound",
]


def _split_problems(
    records: pd.DataFrame,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    side: str,
    near_duplicate_distance: int | None,
) -> list[str]:
    """Human-readable problems of one train/test (or val/test) pair; empty when clean."""
    paths = records["path"].astype(str).to_numpy() if "path" in records.columns else None

    def example(i_train: int, i_test: int) -> str:
        if paths is None:
            return f"{side} row {i_train} / test row {i_test}"
        return f"{side} {paths[i_train]} / test {paths[i_test]}"

    problems = []
    shared_rows = np.intersect1d(train_idx, test_idx)
    if shared_rows.size:
        i = int(shared_rows[0])
        problems.append(
            f"{shared_rows.size} record(s) in both {side} and test sets, e.g. {example(i, i)}"
        )
    for column, what in (("path", "file path"), ("group", "group"), ("sha256", "sha256")):
        if column not in records.columns:
            continue
        values = records[column].astype(str).to_numpy()
        train_values, test_values = values[train_idx], values[test_idx]
        shared = np.intersect1d(train_values, test_values)
        shared = shared[shared != ""]
        if shared.size:
            v = shared[0]
            i_train = int(train_idx[np.flatnonzero(train_values == v)[0]])
            i_test = int(test_idx[np.flatnonzero(test_values == v)[0]])
            problems.append(
                f"{shared.size} {what}(s) in both {side} and test sets, e.g. "
                f"{what} '{v}': {example(i_train, i_test)}"
            )
    if (
        near_duplicate_distance is not None
        and near_duplicate_distance >= 0
        and ("dhash" in records.columns and train_idx.size and test_idx.size)
    ):
        from leukdx.data.dedup import near_pairs_between

        hashes = records["dhash"].astype(str).to_numpy()
        # one example is enough for the message: stop at the first pair
        pair = next(near_pairs_between(hashes[train_idx], hashes[test_idx],
                                       near_duplicate_distance), None)
        if pair is not None:
            r, c, _ = pair
            problems.append(
                f"near-duplicate images (dHash distance <= {near_duplicate_distance}) "
                f"in {side} and test sets, e.g. {example(train_idx[r], test_idx[c])}"
            )
    return problems


def assert_no_leakage(
    records: pd.DataFrame,
    splits: Sequence[Any],
    val_indices: Sequence[np.ndarray | None] | None = None,
    near_duplicate_distance: int | None = None,
) -> None:
    """Raise :class:`LeakageError` when any split shares images between training and test.

    For every split the training and test positions must share no record, and (for the
    columns present) no ``path``, ``group`` or ``sha256``; with an ``augmented`` column the test
    set must hold no augmented copy. Groups already encode near duplicates and re-crops; ``near_duplicate_distance`` additionally recomputes dHash near duplicates
    across each split (slower; for audits). Validation sets, when given, must not touch the
    test set either.

    Args:
        records: the records table the split positions refer to.
        splits: :class:`leukdx.evaluation.splits.Split` objects (anything with ``train_idx``,
            ``test_idx`` and, for the message, ``protocol``/``test_source``/``fold``).
        val_indices: optional validation positions (absolute, into ``records``), one entry per
            split (``None`` for a split without one).
        near_duplicate_distance: also flag train/test pairs whose dHash Hamming distance is at
            most this; ``None`` skips the pixel-hash check.

    Raises:
        LeakageError: naming the first leaking split (protocol/test_source/fold/repeat), what is
            shared and example paths, and how many splits leak.
        ValueError: ``val_indices`` does not align with ``splits``.
    """
    if val_indices is not None and len(val_indices) != len(splits):
        raise ValueError(f"val_indices has {len(val_indices)} entries for {len(splits)} splits.")
    n = len(records)
    failures = []
    for i, split in enumerate(splits):
        train = np.asarray(split.train_idx, dtype=np.int64)
        test = np.asarray(split.test_idx, dtype=np.int64)
        sides = [("train", train)]
        if val_indices is not None and val_indices[i] is not None:
            sides.append(("validation", np.asarray(val_indices[i], dtype=np.int64)))
        for side, idx in sides + [("test", test)]:
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(
                    f"Split {_split_name(split)}: {side} positions fall outside the {n} records."
                )
        problems = []
        for side, idx in sides:
            problems += _split_problems(records, idx, test, side, near_duplicate_distance)
        if "augmented" in records.columns and test.size:
            copies = test[records["augmented"].fillna(False).astype(bool).to_numpy()[test]]
            if copies.size:
                where = (f", e.g. {records['path'].iloc[int(copies[0])]}"
                         if "path" in records.columns else "")
                problems.append(
                    f"{copies.size} augmented cop(ies) in the test set{where} (test sets hold "
                    "originals only)"
                )
        if problems:
            failures.append((split, problems))
    if failures:
        split, problems = failures[0]
        more = f" ({len(failures)} of {len(splits)} splits leak.)" if len(failures) > 1 else ""
        raise LeakageError(
            f"Leakage in split {_split_name(split)}: "
            + "; ".join(problems)
            + "."
            + more
            + " Training would see test images; regroup the records (data.near_duplicate_"
            "distance) or rebuild the splits from the records' groups."
        )


def _split_name(split: Any) -> str:
    name = getattr(split, "name", None)
    if isinstance(name, str):
        return name
    return "/".join(str(getattr(split, a, "?")) for a in ("protocol", "test_source", "fold"))


# ---------------------------------------------------------------------------------------------
# source confound


def source_confound(records: pd.DataFrame, idx: Sequence[int] | np.ndarray | None = None) -> dict:
    """How well the source alone predicts the label (a trivial "which database?" classifier).

    Each image is called the majority class of its source; in a source with as many healthy as
    leukaemic images the call is a coin flip and counts as half right (its expected value).
    ``balanced_accuracy`` is then the mean of the two classes' recalls: 1.0 means the classes
    are separable by source (every source holds one class), so a model can learn the database
    instead of the cells; 0.5 means the source says nothing about the label. This describes the
    make-up of the data (it is the purity of the sources weighted by class), not a fitted model;
    ``roc_auc`` ranks images by their source's leukaemia share.

    Args:
        records: records table with ``source`` and ``label``.
        idx: positions to analyse (e.g. a split's ``train_idx``); ``None``: all records.

    Returns:
        Dict with ``n``, ``n_sources``, ``accuracy``, ``balanced_accuracy``, ``roc_auc`` (NaN
        with one class), ``majority_baseline`` (accuracy of always predicting the larger class)
        and ``sources``: ``{source: {"n", "healthy", "leukaemia", "majority_label" (ties:
        0), "purity"}}`` in order of first appearance.

    Example:
        >>> df = pd.DataFrame({"source": ["a", "a", "b", "b"], "label": [0, 0, 1, 1]})
        >>> source_confound(df)["balanced_accuracy"]
        1.0
    """
    missing = [c for c in ("source", "label") if c not in records.columns]
    if missing:
        raise ValueError(f"source_confound: records lacks column(s) {', '.join(missing)}.")
    data = records if idx is None else records.iloc[np.asarray(idx, dtype=np.int64)]
    sources = data["source"].astype(str).to_numpy()
    labels = data["label"].to_numpy().astype(np.int64)
    n = labels.size
    if n == 0:
        raise ValueError("source_confound: no records to analyse.")
    names, inverse = np.unique(sources, return_inverse=True)
    size = np.bincount(inverse, minlength=names.size)
    positives = np.bincount(inverse, weights=labels, minlength=names.size)
    share = positives[inverse] / size[inverse]
    # probability that the trivial classifier calls the image leukaemia
    called = np.where(share > 0.5, 1.0, np.where(share < 0.5, 0.0, 0.5))
    right = np.where(labels == 1, called, 1.0 - called)
    has_pos, has_neg = (labels == 1).any(), (labels == 0).any()
    recall = right[labels == 1].mean() if has_pos else np.nan
    specificity = right[labels == 0].mean() if has_neg else np.nan
    balanced = np.nanmean([recall, specificity])
    report = {
        "n": int(n),
        "n_sources": int(names.size),
        "accuracy": float(right.mean()),
        "balanced_accuracy": float(balanced),
        "roc_auc": float(roc_auc_score(labels, share)) if has_pos and has_neg else float("nan"),
        "majority_baseline": float(max(labels.mean(), 1 - labels.mean())),
        "sources": {},
    }
    order = pd.unique(sources)
    for name in order:
        k = int(np.flatnonzero(names == name)[0])
        pos = int(positives[k])
        neg = int(size[k]) - pos
        report["sources"][str(name)] = {
            "n": int(size[k]),
            "healthy": neg,
            "leukaemia": pos,
            "majority_label": int(pos > neg),
            "purity": float(max(pos, neg) / size[k]),
        }
    return report


def confound_warning(report: dict, threshold: float = 0.9) -> str | None:
    """A warning when the label is confounded with the source, else ``None``.

    Args:
        report: output of :func:`source_confound`.
        threshold: balanced accuracy of the source-only classifier at or above which the
            data are called confounded.

    Returns:
        A message naming the sources and their class make-up, or ``None``.
    """
    balanced = report.get("balanced_accuracy", float("nan"))
    if not np.isfinite(balanced) or balanced < threshold:
        return None
    parts = [
        f"{name}: {s['healthy']} healthy / {s['leukaemia']} leukaemia"
        for name, s in report["sources"].items()
    ]
    return (
        f"Class is confounded with source: predicting each image's label from its source alone "
        f"reaches balanced accuracy {balanced:.2f} (>= {threshold:.2f}). Sources: "
        + "; ".join(parts)
        + ". A model can score well by recognising the database (stain, camera, resolution) "
        "rather than the cells; evaluate with protocol 'lodo' or add sources holding both "
        "classes."
    )
