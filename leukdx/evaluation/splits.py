"""Train/test splits for the four evaluation protocols.

LeukNet (Vogado et al. 2021, §3.5) argues that k-fold cross-validation inside one dataset
flatters a model, because images of the same source (same microscope, stain, camera and often
the same patients) land on both sides of the split; leave-one-dataset-out cross-validation
(LODOCV) trains on every other source and tests on the unseen one, which is what a deployed
model faces. This module builds the index pairs of every protocol:

- ``lodo``: one split per two-class source; healthy-only sources are only ever training data.
- ``kfold``: stratified, grouped k-fold, optionally repeated (LeukNet Table 12: 20 x 5-fold).
- ``holdout``: one stratified, grouped split (Loey et al. 2020: 80/20).
- ``external``: train on some sources, test on each of the others (LeukNet Table 13).

Indices are **positions** (0 .. n-1) into the records table (use ``records.iloc[idx]``), never
index labels. No split ever cuts a group: the group is the unit of independence (identical and
near-duplicate images, re-crops, augmented copies, manifest groups), so every image of a group
is on the same side.

Augmented collections (``leukdx data augment`` output, records column ``augmented``): test sets
hold only originals. The copies of a training original are training data; the copies of a test
original are in neither set (:func:`make_splits`).

Linked sources (``evaluate.linked_sources``, e.g. ALL-IDB1 and ALL-IDB2, crops of the same
slides): while one is tested, the others are left out of training (``lodo`` and ``external``).

Pure NumPy / scikit-learn; no TensorFlow.

Example:
    >>> import numpy as np
    >>> sources = np.array(["a", "a", "b", "b", "c"])
    >>> labels = np.array([0, 1, 0, 1, 0])
    >>> [s.test_source for s in lodo_splits(sources, labels)]
    ['a', 'b']
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

__all__ = [
    "POOLED",
    "PROTOCOLS",
    "Split",
    "calibration_source",
    "external_splits",
    "holdout_splits",
    "kfold_splits",
    "lodo_splits",
    "make_splits",
    "validation_split",
    "withheld_for_calibration",
]

PROTOCOLS = ("lodo", "kfold", "holdout", "external")
# test_source of a split whose test set mixes sources (k-fold or holdout over a collection).
POOLED = "pooled"
CLASS_NAMES = {0: "healthy", 1: "leukaemia"}


def _index_array(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Split:
    """One train/test partition of a records table.

    Args:
        protocol: ``lodo``, ``kfold``, ``holdout`` or ``external``.
        test_source: the source tested on; ``"pooled"`` when the test set mixes sources.
        fold: fold number within the repeat (LODO/external: position of the test source).
        repeat: repetition of a repeated k-fold (0 otherwise).
        train_idx: sorted record positions used for training (read-only int64 array).
        test_idx: sorted record positions used for testing (read-only int64 array).
    """

    protocol: str
    test_source: str
    fold: int
    repeat: int
    train_idx: np.ndarray
    test_idx: np.ndarray

    def __post_init__(self) -> None:
        # Read-only arrays keep the frozen promise: nobody can edit a split in place.
        object.__setattr__(self, "train_idx", _index_array(self.train_idx))
        object.__setattr__(self, "test_idx", _index_array(self.test_idx))

    @property
    def name(self) -> str:
        """A readable identifier, e.g. ``lodo/all_idb2/fold 1/repeat 0``."""
        return f"{self.protocol}/{self.test_source or '-'}/fold {self.fold}/repeat {self.repeat}"

    @property
    def n_train(self) -> int:
        return int(self.train_idx.size)

    @property
    def n_test(self) -> int:
        return int(self.test_idx.size)

    def __repr__(self) -> str:
        return f"Split({self.name}, n_train={self.n_train}, n_test={self.n_test})"


# ---------------------------------------------------------------------------------------------
# input checks


def _as_labels(labels: Any, what: str = "labels") -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what} is empty: there is nothing to split.")
    if not np.isin(arr, (0, 1)).all():
        bad = sorted({str(v) for v in arr[~np.isin(arr, (0, 1))]})[:5]
        raise ValueError(f"{what} must be 0 (healthy) or 1 (leukaemia); found {', '.join(bad)}.")
    return arr.astype(np.int64)


def _as_groups(groups: Any, n: int) -> np.ndarray:
    """Groups as strings; ``None`` makes every image its own group."""
    if groups is None:
        return np.arange(n).astype(str)
    arr = np.asarray(groups).reshape(-1)
    if arr.size != n:
        raise ValueError(f"groups has {arr.size} entries but labels has {n}; they must align.")
    return arr.astype(str)


def _as_sources(sources: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(sources).reshape(-1).astype(str)
    if n is not None and arr.size != n:
        raise ValueError(f"sources has {arr.size} entries but labels has {n}; they must align.")
    return arr


def _source_classes(sources: np.ndarray, labels: np.ndarray) -> dict[str, set[int]]:
    """Source name → set of labels present, in order of first appearance."""
    out: dict[str, set[int]] = {}
    for source, label in zip(sources, labels):
        out.setdefault(str(source), set()).add(int(label))
    return out


def _check_both_classes(labels: np.ndarray, what: str) -> None:
    present = set(np.unique(labels).tolist())
    for cls in (0, 1):
        if cls not in present:
            raise ValueError(
                f"{what} has no {CLASS_NAMES[cls]} (label {cls}) images; both classes are "
                "needed. Add images of that class or choose other sources."
            )


def _drop_shared_groups(train_idx: np.ndarray, test_idx: np.ndarray, groups: np.ndarray):
    """Training positions whose group does not appear in the test set."""
    test_groups = np.unique(groups[test_idx])
    return train_idx[~np.isin(groups[train_idx], test_groups)]


def _repeat_seed(seed: int, repeat: int) -> int:
    """An independent 32-bit seed for each repeat, derived from the master seed."""
    return int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# protocols


def _linked_map(linked_sources: Sequence[Sequence[str]],
                known: Mapping[str, object]) -> dict[str, set[str]]:
    """Source -> the other sources linked to it. Names absent from the data are ignored with
    a warning, so one config can describe links of a collection that is only partly present."""
    out: dict[str, set[str]] = {}
    for members in linked_sources:
        names = {str(m) for m in members}
        unknown = sorted(names - set(known))
        if unknown:
            warnings.warn(
                f"evaluate.linked_sources names {', '.join(unknown)}, not in the data "
                f"(sources: {', '.join(known)}); ignored.", UserWarning, stacklevel=3,
            )
            names -= set(unknown)
        for name in names:
            out.setdefault(name, set()).update(names - {name})
    return out


def lodo_splits(
    sources: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None = None,
    test_sources: Sequence[str] | None = None,
    linked_sources: Sequence[Sequence[str]] = (),
) -> list[Split]:
    """Leave-one-dataset-out splits (LeukNet §3.5, LODOCV).

    Each test source is held out in turn; the model trains on all the other sources. A test
    source must contain both classes, since a one-class test set has no precision/recall
    trade-off to measure: healthy-only sources (BCCD, PBC, ...) are therefore only ever
    training data.

    Cross-source duplicates: when a group spans the test source and another source (the same
    image, or a near duplicate, stored in two sources), the training images of that group are
    **dropped** from that split's training set, so the test images are never seen in training.
    The test set is left intact so that every test source is always evaluated on all its images.

    Args:
        sources: source name of each record.
        labels: 0 (healthy) / 1 (leukaemia) of each record.
        groups: group of each record; ``None`` makes every record its own group.
        test_sources: the sources to hold out, in this order; ``None`` holds out every source
            that has both classes, in order of first appearance.
        linked_sources: sets of sources that share slides or patients (ALL-IDB1 and
            ALL-IDB2 are crops of the same slides): while one of a set is the test source,
            the others are left out of training, so no patient is on both sides.

    Returns:
        One :class:`Split` per test source (``fold`` = its position, ``repeat`` = 0).

    Raises:
        ValueError: a requested test source does not exist or lacks a class; no source has
            both classes; a training set would lack a class.

    Example:
        >>> splits = lodo_splits(["a", "a", "b", "b", "h"], [0, 1, 0, 1, 0])
        >>> [(s.test_source, s.train_idx.tolist()) for s in splits]
        [('a', [2, 3, 4]), ('b', [0, 1, 4])]
    """
    y = _as_labels(labels)
    src = _as_sources(sources, y.size)
    grp = _as_groups(groups, y.size)
    classes = _source_classes(src, y)
    if test_sources is None:
        chosen = [s for s, present in classes.items() if present == {0, 1}]
        if not chosen:
            raise ValueError(
                "lodo needs at least one source with both healthy and leukaemia images to test "
                f"on; sources {', '.join(classes)} each have one class only."
            )
    else:
        chosen = [str(s) for s in test_sources]
        for name in chosen:
            if name not in classes:
                raise ValueError(
                    f"evaluate.test_sources names source '{name}', which is not in the data "
                    f"(sources: {', '.join(classes)})."
                )
            missing = {0, 1} - classes[name]
            if missing:
                cls = CLASS_NAMES[missing.pop()]
                raise ValueError(
                    f"lodo test source '{name}' has no {cls} images; a test source needs both "
                    "classes (one-class sources are training data only). Remove it from "
                    "evaluate.test_sources."
                )
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"evaluate.test_sources lists a source twice: {chosen}.")
    linked = _linked_map(linked_sources, classes)
    splits = []
    for fold, name in enumerate(chosen):
        is_test = src == name
        test_idx = np.flatnonzero(is_test)
        excluded = is_test | np.isin(src, sorted(linked.get(name, ())))
        train_idx = _drop_shared_groups(np.flatnonzero(~excluded), test_idx, grp)
        _check_both_classes(y[train_idx], f"The lodo training set for test source '{name}'")
        splits.append(Split("lodo", name, fold, 0, train_idx, test_idx))
    return splits


def _group_counts(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Number of distinct groups containing each class."""
    return {cls: int(np.unique(groups[labels == cls]).size) for cls in (0, 1)}


def kfold_splits(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    k: int = 5,
    repeats: int = 1,
    seed: int = 0,
) -> list[Split]:
    """Stratified, grouped k-fold cross-validation, optionally repeated.

    Uses scikit-learn's ``StratifiedGroupKFold`` with shuffling; each repeat gets its own seed
    derived from ``seed`` (``numpy.random.SeedSequence([seed, repeat])``), so repeat r is the
    same whatever the number of repeats. LeukNet Table 12 uses 20 repeats of 5-fold.

    Args:
        labels: 0/1 label of each record.
        groups: group of each record (never cut by a fold); ``None``: every record its own group.
        k: number of folds.
        repeats: number of repetitions with different shuffles.
        seed: master seed.

    Returns:
        ``k * repeats`` splits, ordered by repeat then fold; within a repeat every record is in
        exactly one test fold. ``test_source`` is ``"pooled"``.

    Raises:
        ValueError: ``k < 2``, ``repeats < 1``, a class is missing, or a class has fewer than
            ``k`` groups (a fold would have no image of it).
    """
    y = _as_labels(labels)
    grp = _as_groups(groups, y.size)
    if k < 2:
        raise ValueError(f"kfold needs k >= 2 folds (evaluate.k), got {k}.")
    if repeats < 1:
        raise ValueError(f"kfold needs repeats >= 1 (evaluate.repeats), got {repeats}.")
    _check_both_classes(y, "The kfold data")
    for cls, count in _group_counts(y, grp).items():
        if count < k:
            raise ValueError(
                f"kfold with k={k} needs at least {k} groups of each class, but "
                f"{CLASS_NAMES[cls]} has only {count}; lower evaluate.k or add images."
            )
    splits = []
    positions = np.arange(y.size)
    for repeat in range(repeats):
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=_repeat_seed(seed, repeat))
        for fold, (train_idx, test_idx) in enumerate(cv.split(positions, y, grp)):
            splits.append(
                Split("kfold", POOLED, fold, repeat, np.sort(train_idx), np.sort(test_idx))
            )
    return splits


def _grouped_stratified_mask(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str
) -> np.ndarray:
    """Boolean mask of records drawn into the smaller side of a grouped, stratified split.

    Each group is assigned to the class of the majority of its images (ties: leukaemia). Within
    each class the groups are shuffled (seeded) and taken greedily while taking the next one
    brings the drawn image count closer to ``fraction`` of that class's images; a group that
    would overshoot is skipped in favour of smaller ones. Every class with images gets at least
    one group on each side, so both sides are stratified and non-empty.
    """
    codes, group_ids = np.unique(groups, return_inverse=True)
    size = np.bincount(group_ids, minlength=codes.size)
    positives = np.bincount(group_ids, weights=labels, minlength=codes.size)
    group_label = (2 * positives >= size).astype(np.int64)
    rng = np.random.default_rng(int(seed))
    drawn = np.zeros(codes.size, dtype=bool)
    for cls in (0, 1):
        members = np.flatnonzero(group_label == cls)
        if members.size == 0:
            continue
        if members.size < 2:
            raise ValueError(
                f"{what}: {CLASS_NAMES[cls]} has a single group, so it cannot be on both sides "
                "of a grouped split; add images of that class."
            )
        target = fraction * size[members].sum()
        taken = 0
        for g in rng.permutation(members):
            if taken >= target:
                break
            if taken == 0 or abs(taken + size[g] - target) <= abs(taken - target):
                drawn[g] = True
                taken += size[g]
        if drawn[members].all():
            # keep at least one group of this class on the larger side
            drawn[members[drawn[members]][-1]] = False
    return drawn[group_ids]


def holdout_splits(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> list[Split]:
    """One stratified, grouped train/test split (Loey et al. 2020: 80 % train, 20 % test).

    Groups are drawn per class (a group counts for the class of most of its images) until the
    test set holds about ``test_fraction`` of each class's images, so the class ratio of the
    test set matches the data and no group is cut.

    Args:
        labels: 0/1 label of each record.
        groups: group of each record; ``None``: every record its own group.
        test_fraction: share of images in the test set, in (0, 1).
        seed: seed of the group shuffle.

    Returns:
        A list with one split (``test_source`` ``"pooled"``, fold 0, repeat 0).

    Raises:
        ValueError: the fraction is outside (0, 1), a class is missing or has a single group.
    """
    y = _as_labels(labels)
    grp = _as_groups(groups, y.size)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"holdout test fraction (evaluate.test_fraction) must be in (0, 1), got {test_fraction}."
        )
    _check_both_classes(y, "The holdout data")
    is_test = _grouped_stratified_mask(y, grp, test_fraction, seed, "holdout")
    return [Split("holdout", POOLED, 0, 0, np.flatnonzero(~is_test), np.flatnonzero(is_test))]


def external_splits(
    sources: Sequence[str] | np.ndarray,
    train_sources: Sequence[str] | None,
    test_sources: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    groups: Sequence[str] | np.ndarray | None = None,
    linked_sources: Sequence[Sequence[str]] = (),
) -> list[Split]:
    """Train on some sources, test on each of the others (LeukNet Table 13, the UFG set).

    One split **per test source** (not one pooled test set), so each external source gets its
    own row in the results, as in LeukNet's tables; pool them afterwards if wanted. As in
    :func:`lodo_splits`, training images whose group also occurs in the test source are dropped.
    A test source may hold a single class (e.g. checking false alarms on healthy-only data); its
    metrics for the absent class are then undefined (NaN).

    Args:
        sources: source name of each record.
        train_sources: training sources; ``None`` means every source not in ``test_sources``.
        test_sources: the external test sources.
        labels: 0/1 labels; when given, each training set must contain both classes.
        groups: group of each record; ``None``: every record its own group.
        linked_sources: sets of sources that share slides or patients; a training source
            linked to the test source is left out of that split's training (with a warning
            when it was listed in ``train_sources``).

    Returns:
        One :class:`Split` per test source (``fold`` = its position).

    Raises:
        ValueError: no test sources, an unknown source, a source both trained and tested on, or
            a training set lacking a class.
    """
    src = _as_sources(sources)
    grp = _as_groups(groups, src.size)
    y = None if labels is None else _as_labels(labels)
    if y is not None and y.size != src.size:
        raise ValueError(f"labels has {y.size} entries but sources has {src.size}.")
    known = list(dict.fromkeys(src.tolist()))
    if not test_sources:
        raise ValueError(
            "external evaluation needs evaluate.test_sources: the sources to test on "
            f"(available: {', '.join(known)})."
        )
    tests = [str(s) for s in test_sources]
    trains = (
        [s for s in known if s not in tests]
        if train_sources is None
        else [str(s) for s in train_sources]
    )
    for setting, names in (("evaluate.test_sources", tests), ("evaluate.train_sources", trains)):
        for name in names:
            if name not in known:
                raise ValueError(
                    f"{setting} names source '{name}', which is not in the data "
                    f"(sources: {', '.join(known)})."
                )
    both = sorted(set(tests) & set(trains))
    if both:
        raise ValueError(
            f"Sources {', '.join(both)} are in both evaluate.train_sources and "
            "evaluate.test_sources; an external test source must be unseen in training."
        )
    if not trains:
        raise ValueError(
            "external evaluation has no training sources left; list some in evaluate.train_sources."
        )
    linked = _linked_map(linked_sources, dict.fromkeys(known))
    splits = []
    for fold, name in enumerate(tests):
        test_idx = np.flatnonzero(src == name)
        left_out = sorted(linked.get(name, set()) & set(trains))
        if left_out and train_sources is not None:
            warnings.warn(
                f"External test source '{name}' is linked to training source(s) "
                f"{', '.join(left_out)} (evaluate.linked_sources: same slides or patients); "
                "they are left out of its training set.", UserWarning, stacklevel=2,
            )
        train_all = np.flatnonzero(np.isin(src, [t for t in trains if t not in left_out]))
        train_idx = _drop_shared_groups(train_all, test_idx, grp)
        if y is not None:
            _check_both_classes(y[train_idx], f"The external training set for '{name}'")
        splits.append(Split("external", name, fold, 0, train_idx, test_idx))
    return splits


def validation_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    fraction: float = 0.25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into fit and validation parts (LeukNet §4.2: a random 25 %).

    Grouped and stratified like :func:`holdout_splits`. Positions are **relative** to the
    arrays passed in: map them back with ``split.train_idx[fit_idx]``.

    Args:
        labels: 0/1 labels of the training records.
        groups: their groups; ``None``: every record its own group.
        fraction: validation share of the images, in [0, 1); ``0`` gives an empty validation set.
        seed: seed of the group shuffle.

    Returns:
        ``(fit_idx, val_idx)``, sorted int64 arrays of relative positions.

    Raises:
        ValueError: the fraction is outside [0, 1) or a class has a single group.
    """
    y = _as_labels(labels, "training labels")
    grp = _as_groups(groups, y.size)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(
            f"validation fraction (train.validation_split) must be in [0, 1), got {fraction}."
        )
    if fraction == 0.0:
        return np.arange(y.size, dtype=np.int64), np.zeros(0, dtype=np.int64)
    is_val = _grouped_stratified_mask(y, grp, fraction, seed, "validation split")
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# dispatch


def _within_sources(records_sources: np.ndarray, names: Sequence[str], make) -> list[Split]:
    """Run a pooled protocol inside each named source, mapping indices back to the table."""
    known = list(dict.fromkeys(records_sources.tolist()))
    splits = []
    for name in names:
        if name not in known:
            raise ValueError(
                f"evaluate.test_sources names source '{name}', which is not in the data "
                f"(sources: {', '.join(known)})."
            )
        positions = np.flatnonzero(records_sources == name)
        try:
            inner = make(positions)
        except ValueError as exc:
            raise ValueError(f"Source '{name}': {exc}") from exc
        splits += [
            replace(
                s,
                test_source=name,
                train_idx=positions[s.train_idx],
                test_idx=positions[s.test_idx],
            )
            for s in inner
        ]
    return splits


def make_splits(
    records: pd.DataFrame, evaluate_config: Any, seed: int = 0, *args: Any
) -> list[Split]:
    """All splits of the protocol named by ``evaluate_config.protocol``.

    ``lodo`` and ``external`` read ``evaluate.test_sources`` / ``evaluate.train_sources``.
    ``kfold`` and ``holdout`` run over the whole table (``test_source`` ``"pooled"``), or, when
    ``evaluate.test_sources`` is set, **inside each listed source separately** (LeukNet
    Table 10's within-dataset k-fold on ALL-IDB 1 and 2), with ``test_source`` that source.

    The protocol may also be passed first, ``make_splits(protocol, records, evaluate_config,
    seed)``, to run a protocol other than the configured one.

    When ``records`` has an ``augmented`` column (offline augmented copies), ``kfold`` and
    ``holdout`` are drawn over the originals, the copies of each training original join the
    training set, and every test set holds originals only (copies of a test original are
    used nowhere). ``evaluate.linked_sources`` applies to ``lodo`` and ``external``; a pooled
    ``kfold``/``holdout`` over several linked sources warns, as groups cannot tell which of
    their images share a slide.

    Args:
        records: the records table (columns ``source``, ``label`` and, if present, ``group``).
        evaluate_config: a :class:`leukdx.config.EvaluateConfig`.
        seed: master seed (the experiment's ``seed``).
        *args: the seed, in the protocol-first form only.

    Returns:
        The list of :class:`Split` with positions into ``records``.

    Raises:
        ValueError: an unknown protocol, missing columns, or any error of the protocol function.
    """
    protocol = None
    if isinstance(records, str):
        # make_splits(protocol, records, evaluate_config, seed)
        protocol = records
        records, evaluate_config, seed = evaluate_config, seed, (args[0] if args else 0)
    ev = evaluate_config
    protocol = protocol or ev.protocol
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"Unknown protocol '{protocol}' (evaluate.protocol); choose one of "
            f"{', '.join(PROTOCOLS)}."
        )
    missing = [c for c in ("source", "label") if c not in records.columns]
    if missing:
        raise ValueError(
            f"records lacks column(s) {', '.join(missing)}; load it with "
            "leukdx.data.records.load_collection."
        )
    sources = records["source"].astype(str).to_numpy()
    labels = records["label"].to_numpy()
    groups = records["group"].astype(str).to_numpy() if "group" in records.columns else None
    copies = _augmented_mask(records)
    linked = getattr(ev, "linked_sources", None) or ()
    if protocol == "lodo":
        splits = lodo_splits(sources, labels, groups, ev.test_sources, linked)
        return [_originals_in_test(s, copies) for s in splits]
    if protocol == "external":
        splits = external_splits(
            sources, ev.train_sources, ev.test_sources or [], labels, groups, linked
        )
        return [_originals_in_test(s, copies) for s in splits]

    def pooled(positions: np.ndarray) -> list[Split]:
        # drawn over the originals; positions relative to ``positions`` as _within_sources wants
        originals = np.flatnonzero(~copies[positions])
        g = None if groups is None else groups[positions][originals]
        y = labels[positions][originals]
        if protocol == "kfold":
            inner = kfold_splits(y, g, ev.k, ev.repeats, seed)
        else:
            inner = holdout_splits(y, g, ev.test_fraction, seed)
        local_groups = None if groups is None else groups[positions]
        return [_with_training_copies(s, originals, copies[positions], local_groups)
                for s in inner]

    if ev.test_sources:
        return _within_sources(sources, [str(s) for s in ev.test_sources], pooled)
    present = set(sources.tolist())
    for members in linked:
        together = sorted(present & {str(m) for m in members})
        if len(together) > 1:
            warnings.warn(
                f"Pooled {protocol} mixes the linked sources {', '.join(together)} "
                "(evaluate.linked_sources): images of one slide or patient may land on both "
                "sides. Merge them (data.merge_sources) and use lodo, or test inside one source "
                "(evaluate.test_sources).", UserWarning, stacklevel=2,
            )
    return pooled(np.arange(len(records)))


def _augmented_mask(records: pd.DataFrame) -> np.ndarray:
    """True for offline augmented copies (records column ``augmented``; absent: none)."""
    if "augmented" not in records.columns:
        return np.zeros(len(records), dtype=bool)
    return records["augmented"].fillna(False).astype(bool).to_numpy()


def _originals_in_test(split: Split, copies: np.ndarray) -> Split:
    """The split with augmented copies removed from its test set."""
    if not copies.any():
        return split
    return replace(split, test_idx=split.test_idx[~copies[split.test_idx]])


def _with_training_copies(split: Split, originals: np.ndarray, copies: np.ndarray,
                          groups: np.ndarray | None) -> Split:
    """A split drawn over ``originals`` (positions into the rows that ``copies`` and ``groups``
    describe) mapped onto those rows, with the augmented copies of the training groups added to
    training."""
    train, test = originals[split.train_idx], originals[split.test_idx]
    extra = np.flatnonzero(copies)
    if extra.size and groups is not None:
        extra = extra[np.isin(groups[extra], groups[train])]
        train = np.union1d(train, extra)
    return replace(split, train_idx=train, test_idx=test)


def calibration_source(train_records: pd.DataFrame, seed: int) -> str | None:
    """The training source a fold withholds to calibrate its threshold on
    (``train.calibrate: unseen_source``): one of the sources that hold only healthy images,
    drawn with the fold's seed, so the runs of a fold rotate over them. ``None`` when there
    is none (withholding a two-class source would take away leukaemia examples).

    Example:
        >>> import pandas as pd
        >>> recs = pd.DataFrame({"source": ["a", "a", "b", "c"], "label": [0, 1, 0, 0]})
        >>> calibration_source(recs, seed=0) in {"b", "c"}
        True
        >>> calibration_source(recs[recs.source == "a"], seed=0) is None
        True
    """
    by_source = train_records.groupby("source")["label"].max()
    candidates = sorted(str(s) for s, has_leukaemia in by_source.items() if has_leukaemia == 0)
    if not candidates:
        return None
    return candidates[int(np.random.default_rng(int(seed)).integers(len(candidates)))]


def withheld_for_calibration(records: pd.DataFrame, calibrate: str,
                             seed: int) -> tuple[np.ndarray, str | None]:
    """Which training rows ``train.calibrate`` withholds to set the threshold on.

    With ``unseen_source``, the rows of :func:`calibration_source` (one healthy-only source
    drawn with ``seed``); fine-tuning folds, classic-classifier folds and ``leukdx train`` all
    withhold through here, so the rule is one.

    Args:
        records: the training records (``source``, ``label``).
        calibrate: ``train.calibrate`` (``none`` or ``unseen_source``).
        seed: the fold's (or run's) seed.

    Returns:
        ``(mask, source)``: a bool mask over ``records`` (all false when nothing is withheld)
        and the withheld source's name, or ``None`` (calibration off, or no healthy-only
        source, which is logged: the fixed ``train.threshold`` applies then).

    Example:
        >>> recs = pd.DataFrame({"source": ["a", "a", "b"], "label": [0, 1, 0]})
        >>> mask, source = withheld_for_calibration(recs, "unseen_source", 0)
        >>> mask.tolist(), source
        ([False, False, True], 'b')
    """
    mask = np.zeros(len(records), bool)
    if calibrate != "unseen_source":
        return mask, None
    source = calibration_source(records, seed)
    if source is None:
        warnings.warn("train.calibrate: unseen_source needs a healthy-only training source "
                      "besides the two-class ones; using train.threshold.", stacklevel=2)
        return mask, None
    return (records["source"].astype(str) == source).to_numpy(), source
