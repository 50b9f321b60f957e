"""Tests of leukdx.evaluation.splits: protocol semantics, grouping, stratification, seeding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from leukdx.config import EvaluateConfig
from leukdx.evaluation.leakage import assert_no_leakage
from leukdx.evaluation.splits import (
    Split,
    external_splits,
    holdout_splits,
    kfold_splits,
    lodo_splits,
    make_splits,
    validation_split,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def toy_records() -> pd.DataFrame:
    """Two two-class sources (a, b) and two healthy-only sources (h1, h2)."""
    rows = []
    for source, n_healthy, n_leuk in (("a", 6, 6), ("b", 5, 7), ("h1", 8, 0), ("h2", 4, 0)):
        for i in range(n_healthy + n_leuk):
            label = int(i >= n_healthy)
            rows.append(
                {
                    "path": f"/d/{source}/{i}.png",
                    "label": label,
                    "source": source,
                    "group": f"{source}-{i}",
                    "sha256": f"{source}{i}",
                }
            )
    return pd.DataFrame(rows)


def groups_of(values: np.ndarray, idx: np.ndarray) -> set:
    return set(values[idx].tolist())


# ---------------------------------------------------------------------------------------------
# lodo


def test_lodo_tests_exactly_the_two_class_sources():
    df = toy_records()
    splits = lodo_splits(df.source, df.label, df.group)
    assert [s.test_source for s in splits] == ["a", "b"]
    src = df.source.to_numpy()
    for fold, s in enumerate(splits):
        assert (s.protocol, s.fold, s.repeat) == ("lodo", fold, 0)
        assert set(src[s.test_idx]) == {s.test_source}
        assert s.test_idx.size == int((src == s.test_source).sum())
        assert s.test_source not in set(src[s.train_idx])
        # healthy-only sources are training data in every split
        assert {"h1", "h2"} <= set(src[s.train_idx])
        assert s.n_train + s.n_test == len(df)


def test_lodo_requested_source_without_a_class_is_named():
    df = toy_records()
    with pytest.raises(ValueError, match="'h1' has no leukaemia"):
        lodo_splits(df.source, df.label, df.group, test_sources=["a", "h1"])
    with pytest.raises(ValueError, match="'zzz', which is not in the data"):
        lodo_splits(df.source, df.label, df.group, test_sources=["zzz"])


def test_lodo_respects_requested_order():
    df = toy_records()
    assert [s.test_source for s in lodo_splits(df.source, df.label, test_sources=["b", "a"])] == [
        "b",
        "a",
    ]


def test_lodo_without_two_class_source_fails_clearly():
    with pytest.raises(ValueError, match="both healthy and leukaemia"):
        lodo_splits(["h", "h", "x"], [0, 0, 1])


def test_lodo_drops_training_copies_of_test_groups():
    df = toy_records()
    # the first image of h1 duplicates a leukaemic image of source a (same group)
    df.loc[df.index[(df.source == "h1")][0], "group"] = "a-7"
    split = lodo_splits(df.source, df.label, df.group, test_sources=["a"])[0]
    dropped = int(df.index[(df.source == "h1")][0])
    assert dropped not in split.train_idx
    assert split.test_idx.size == 12  # the test source keeps every image
    assert not groups_of(df.group.to_numpy(), split.train_idx) & groups_of(
        df.group.to_numpy(), split.test_idx
    )
    # the other split still trains on that image
    other = lodo_splits(df.source, df.label, df.group, test_sources=["b"])[0]
    assert dropped in other.train_idx


def test_lodo_training_set_needs_both_classes():
    with pytest.raises(ValueError, match="training set for test source 'a'"):
        lodo_splits(["a", "a", "h"], [0, 1, 0])


def test_split_is_frozen_and_read_only():
    s = Split("kfold", "pooled", 0, 0, [3, 1], [2])
    with pytest.raises(AttributeError):
        s.fold = 2
    with pytest.raises(ValueError):
        s.train_idx[0] = 5
    assert s.name == "kfold/pooled/fold 0/repeat 0"
    assert s.train_idx.dtype == np.int64


# ---------------------------------------------------------------------------------------------
# kfold


def test_kfold_partitions_every_repeat_and_stratifies():
    rng = np.random.default_rng(0)
    labels = np.array([1] * 40 + [0] * 60)
    rng.shuffle(labels)
    splits = kfold_splits(labels, None, k=5, repeats=3, seed=7)
    assert len(splits) == 15
    for repeat in range(3):
        folds = [s for s in splits if s.repeat == repeat]
        assert [s.fold for s in folds] == list(range(5))
        counts = np.zeros(labels.size, int)
        for s in folds:
            counts[s.test_idx] += 1
            assert np.intersect1d(s.train_idx, s.test_idx).size == 0
            assert s.n_train + s.n_test == labels.size
            # 40 % leukaemia in every test fold (20 images → 8 ± 1)
            assert abs(labels[s.test_idx].sum() - 8) <= 1
        assert (counts == 1).all()
    # the repeats are different shuffles
    first = [set(s.test_idx.tolist()) for s in splits if s.repeat == 0]
    second = [set(s.test_idx.tolist()) for s in splits if s.repeat == 1]
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))


def test_kfold_is_seeded_and_repeat_seeds_do_not_depend_on_the_count():
    labels = np.tile([0, 1], 30)
    a = kfold_splits(labels, None, k=4, repeats=2, seed=1)
    b = kfold_splits(labels, None, k=4, repeats=2, seed=1)
    c = kfold_splits(labels, None, k=4, repeats=2, seed=2)
    assert all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, b))
    assert not all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, c))
    longer = kfold_splits(labels, None, k=4, repeats=3, seed=1)
    assert all(np.array_equal(x.test_idx, y.test_idx) for x, y in zip(a, longer[:8]))


def test_kfold_needs_k_groups_per_class():
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["g0", "g1", "g2", "g3", "g4", "g5", "p", "p", "q", "r"]
    with pytest.raises(ValueError, match="leukaemia has only 3"):
        kfold_splits(labels, groups, k=5)
    assert len(kfold_splits(labels, groups, k=3)) == 3
    with pytest.raises(ValueError, match="k >= 2"):
        kfold_splits(labels, groups, k=1)


# ---------------------------------------------------------------------------------------------
# holdout and validation


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.3])
def test_holdout_fraction_and_stratification(fraction):
    labels = np.array([0] * 150 + [1] * 50)
    (split,) = holdout_splits(labels, None, test_fraction=fraction, seed=3)
    assert (split.protocol, split.test_source) == ("holdout", "pooled")
    assert split.n_test == pytest.approx(fraction * 200, abs=2)
    assert labels[split.test_idx].mean() == pytest.approx(0.25, abs=0.02)
    assert np.union1d(split.train_idx, split.test_idx).size == 200


def test_holdout_keeps_groups_whole_and_is_seeded():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 60, size=300).astype(str)
    labels = (np.char.str_len(groups) % 2).astype(int)  # group-consistent labels
    a = holdout_splits(labels, groups, 0.2, seed=5)[0]
    b = holdout_splits(labels, groups, 0.2, seed=5)[0]
    c = holdout_splits(labels, groups, 0.2, seed=6)[0]
    assert np.array_equal(a.test_idx, b.test_idx)
    assert not np.array_equal(a.test_idx, c.test_idx)
    assert not groups_of(groups, a.train_idx) & groups_of(groups, a.test_idx)
    assert a.n_test == pytest.approx(60, abs=8)


def test_validation_split_is_relative_grouped_and_stratified():
    labels = np.array([0] * 40 + [1] * 40)
    groups = np.repeat(np.arange(40), 2).astype(str)  # pairs of images
    fit, val = validation_split(labels, groups, 0.25, seed=0)
    assert np.union1d(fit, val).tolist() == list(range(80))
    assert np.intersect1d(fit, val).size == 0
    assert val.size == 20
    assert labels[val].mean() == pytest.approx(0.5)
    assert not groups_of(groups, fit) & groups_of(groups, val)
    fit0, val0 = validation_split(labels, groups, 0.0)
    assert fit0.size == 80 and val0.size == 0


def test_single_group_class_cannot_be_split():
    with pytest.raises(ValueError, match="leukaemia has a single group"):
        holdout_splits([0, 0, 0, 1, 1], ["a", "b", "c", "d", "d"])


# ---------------------------------------------------------------------------------------------
# external


def test_external_one_split_per_test_source():
    df = toy_records()
    splits = external_splits(df.source, ["a", "h1"], ["b", "h2"], df.label, df.group)
    assert [(s.protocol, s.test_source, s.fold) for s in splits] == [
        ("external", "b", 0),
        ("external", "h2", 1),
    ]
    src = df.source.to_numpy()
    for s in splits:
        assert set(src[s.train_idx]) == {"a", "h1"}
        assert set(src[s.test_idx]) == {s.test_source}
    default = external_splits(df.source, None, ["b"], df.label)
    assert set(src[default[0].train_idx]) == {"a", "h1", "h2"}


def test_external_rejects_bad_settings():
    df = toy_records()
    with pytest.raises(ValueError, match="both evaluate.train_sources and"):
        external_splits(df.source, ["a", "b"], ["b"])
    with pytest.raises(ValueError, match="'nope'"):
        external_splits(df.source, None, ["nope"])
    with pytest.raises(ValueError, match="needs evaluate.test_sources"):
        external_splits(df.source, None, [])
    with pytest.raises(ValueError, match="no leukaemia"):
        external_splits(df.source, ["h1"], ["a"], df.label)


# ---------------------------------------------------------------------------------------------
# dispatch


def test_make_splits_dispatches_on_the_protocol():
    df = toy_records()
    lodo = make_splits(df, EvaluateConfig(protocol="lodo"), seed=0)
    assert [s.test_source for s in lodo] == ["a", "b"]
    kfold = make_splits(df, EvaluateConfig(protocol="kfold", k=3, repeats=2), seed=0)
    assert len(kfold) == 6 and {s.test_source for s in kfold} == {"pooled"}
    holdout = make_splits(df, EvaluateConfig(protocol="holdout", test_fraction=0.25), seed=0)
    assert len(holdout) == 1 and holdout[0].n_test == pytest.approx(len(df) * 0.25, abs=2)
    external = make_splits(
        df, EvaluateConfig(protocol="external", train_sources=["a", "h1"], test_sources=["b"]), 0
    )
    assert [s.test_source for s in external] == ["b"]
    # the protocol may come first (docs/architecture.md)
    legacy = make_splits("lodo", df, EvaluateConfig(protocol="kfold"), 0)
    assert [s.test_source for s in legacy] == ["a", "b"]


def test_make_splits_kfold_within_listed_sources():
    df = toy_records()
    splits = make_splits(df, EvaluateConfig(protocol="kfold", k=3, test_sources=["a", "b"]), 1)
    assert [(s.test_source, s.fold) for s in splits] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
        ("b", 1),
        ("b", 2),
    ]
    src = df.source.to_numpy()
    for name in ("a", "b"):
        inside = [s for s in splits if s.test_source == name]
        tested = np.concatenate([s.test_idx for s in inside])
        assert sorted(tested.tolist()) == np.flatnonzero(src == name).tolist()
        for s in inside:
            assert set(src[s.train_idx]) == {name}
    with pytest.raises(ValueError, match="Source 'h1'"):
        make_splits(df, EvaluateConfig(protocol="kfold", k=3, test_sources=["h1"]), 1)


def test_make_splits_checks_columns():
    with pytest.raises(ValueError, match="lacks column"):
        make_splits(pd.DataFrame({"label": [0, 1]}), EvaluateConfig(), 0)


# ---------------------------------------------------------------------------------------------
# property: no protocol ever cuts a group


@st.composite
def grouped_records(draw):
    n_groups = draw(st.integers(12, 40))
    sizes = draw(st.lists(st.integers(1, 3), min_size=n_groups, max_size=n_groups))
    group_label = draw(st.lists(st.integers(0, 1), min_size=n_groups, max_size=n_groups))
    group_source = draw(
        st.lists(st.sampled_from(["s0", "s1", "s2", "h"]), min_size=n_groups, max_size=n_groups)
    )
    rows = []
    for g, size in enumerate(sizes):
        for j in range(size):
            # a few groups spread over two sources (cross-source duplicates)
            source = group_source[g] if j == 0 or g % 5 else "s0"
            label = 0 if source == "h" else group_label[g]
            rows.append({"source": source, "label": label, "group": f"g{g}"})
    return pd.DataFrame(rows)


def _lodo_should_fail(df: pd.DataFrame) -> bool:
    """Whether lodo must refuse this table: no two-class source, or a test source whose
    training set (other sources, minus groups shared with it) lacks a class."""
    two_class = [s for s, part in df.groupby("source") if part.label.nunique() == 2]
    if not two_class:
        return True
    for name in two_class:
        test_groups = set(df.group[df.source == name])
        train = df[(df.source != name) & ~df.group.isin(test_groups)]
        if train.label.nunique() < 2:
            return True
    return False


@settings(max_examples=40, deadline=None)
@given(grouped_records(), st.integers(0, 2**16))
def test_no_protocol_cuts_a_group(df, seed):
    groups = df.group.to_numpy()
    per_class = [df[df.label == c].group.nunique() for c in (0, 1)]
    assume(min(per_class) >= 3)
    splits = kfold_splits(df.label, df.group, k=3, seed=seed)
    splits += holdout_splits(df.label, df.group, 0.3, seed=seed)
    if _lodo_should_fail(df):
        with pytest.raises(ValueError, match="both healthy and leukaemia|training set"):
            lodo_splits(df.source, df.label, df.group)
    else:
        lodo = lodo_splits(df.source, df.label, df.group)
        assert len(lodo) == sum(part.label.nunique() == 2 for _, part in df.groupby("source"))
        splits += lodo
    for s in splits:
        assert np.intersect1d(s.train_idx, s.test_idx).size == 0
        assert not groups_of(groups, s.train_idx) & groups_of(groups, s.test_idx), s.name
    assert_no_leakage(df, splits)
    fit, val = validation_split(df.label, df.group, 0.25, seed=seed)
    assert not groups_of(groups, fit) & groups_of(groups, val)


# ---------------------------------------------------------------------------------------------
# real data and import hygiene


@pytest.fixture(scope="module")
def real_records(shared_data, tmp_path_factory) -> pd.DataFrame:
    """The real collection grouped by leukdx itself (sha256, dHash and re-crop links)."""
    from leukdx.config import DataConfig
    from leukdx.data.records import load_collection

    cache = tmp_path_factory.mktemp("splits_scan_cache")
    return load_collection(shared_data, DataConfig(cache_dir=str(cache)), progress=False).records


# SOURCES.md: overlapping re-crops of the same cells in ALL-IDB2 (32-95 dHash bits apart).
RECROPS = [(222, 256), (224, 258), (225, 259), (227, 260)]


@pytest.mark.real_data
def test_real_splits_keep_re_crops_together_and_do_not_leak(real_records):
    records = real_records
    assert records.source.nunique() == 7
    position = {Path(p).name: k for k, p in enumerate(records.path)}
    pairs = [(position[f"Im{a}_0.tif"], position[f"Im{b}_0.tif"]) for a, b in RECROPS]
    lodo = make_splits(records, EvaluateConfig(protocol="lodo"), seed=42)
    assert sorted(s.test_source for s in lodo) == ["all_idb1", "all_idb2", "taleqani_all"]
    healthy_only = {"bccd", "pbc", "jtsc", "cellavision_zheng"}
    for s in lodo:
        assert not healthy_only & set(records.source.to_numpy()[s.test_idx])
    pooled = make_splits(records, EvaluateConfig(protocol="kfold", k=5), seed=42)
    pooled += make_splits(records, EvaluateConfig(protocol="holdout"), seed=42)
    inside = make_splits(records, EvaluateConfig(protocol="kfold", k=5,
                                                 test_sources=["all_idb2"]), seed=42)
    for s in pooled + inside:
        test = set(s.test_idx.tolist())
        for a, b in pairs:
            assert (a in test) == (b in test), (s.name, a, b)
    _, val = validation_split(records.label, records.group, 0.25, seed=42)
    for a, b in pairs:
        assert (a in set(val.tolist())) == (b in set(val.tolist()))
    assert_no_leakage(records, lodo + pooled + inside, near_duplicate_distance=12)


def test_evaluation_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import leukdx.evaluation, leukdx.evaluation.splits, leukdx.evaluation.metrics\n"
        "import leukdx.evaluation.ledger, leukdx.evaluation.stats, leukdx.evaluation.leakage\n"
        "import leukdx.plots\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_lodo_leaves_linked_sources_out_of_training():
    sources = ["idb1"] * 4 + ["idb2"] * 4 + ["tq"] * 4 + ["h"] * 2
    labels = [0, 1, 0, 1] * 3 + [0, 0]
    splits = {s.test_source: s for s in lodo_splits(sources, labels,
                                                     linked_sources=[["idb1", "idb2"]])}
    src = np.asarray(sources)
    assert set(src[splits["idb1"].train_idx]) == {"tq", "h"}
    assert set(src[splits["idb2"].train_idx]) == {"tq", "h"}
    assert set(src[splits["tq"].train_idx]) == {"idb1", "idb2", "h"}
    unlinked = {s.test_source: s for s in lodo_splits(sources, labels)}
    assert "idb2" in set(src[unlinked["idb1"].train_idx])


def test_lodo_linked_sources_absent_from_the_data_are_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="linked_sources names nope"):
        splits = lodo_splits(["a", "a", "b", "b"], [0, 1, 0, 1], linked_sources=[["a", "nope"]])
    assert [s.test_source for s in splits] == ["a", "b"]
    assert all(len(s.train_idx) == 2 for s in splits)


# ---------------------------------------------------------------------------------------------
# augmented collections and linked sources


def augmented_records(copies: int = 2) -> pd.DataFrame:
    """toy_records plus ``copies`` augmented copies of every image (same group)."""
    base = toy_records().assign(augmented=False)
    extra = [base.assign(augmented=True, path=base.path + f"__aug{c}") for c in range(1, copies + 1)]
    return pd.concat([base, *extra], ignore_index=True)


@pytest.mark.parametrize(
    "ev",
    [
        EvaluateConfig(protocol="kfold", k=3, repeats=2),
        EvaluateConfig(protocol="holdout", test_fraction=0.3),
        EvaluateConfig(protocol="kfold", k=3, test_sources=["a", "b"]),
        EvaluateConfig(protocol="lodo"),
        EvaluateConfig(protocol="external", train_sources=["a", "h1"], test_sources=["b"]),
    ],
    ids=lambda ev: f"{ev.protocol}-{ev.test_sources}",
)
def test_augmented_copies_are_training_data_only(ev):
    df = augmented_records()
    copies = df.augmented.to_numpy()
    groups = df.group.to_numpy()
    splits = make_splits(df, ev, seed=3)
    assert splits
    for s in splits:
        assert not copies[s.test_idx].any(), s.name
        train_groups = set(groups[s.train_idx])
        # every training original brings its copies; copies of test originals are unused
        for g in train_groups:
            assert copies[s.train_idx][groups[s.train_idx] == g].sum() == 2, (s.name, g)
        assert not set(groups[s.test_idx]) & train_groups
    if ev.protocol == "kfold" and not ev.test_sources:
        # each original is tested exactly once per repeat, as without copies
        for repeat in (0, 1):
            tested = np.concatenate([s.test_idx for s in splits if s.repeat == repeat])
            assert sorted(tested.tolist()) == np.flatnonzero(~copies).tolist()


def test_without_augmented_copies_splits_are_unchanged():
    df = toy_records()
    ev = EvaluateConfig(protocol="kfold", k=3)
    plain = make_splits(df, ev, seed=1)
    marked = make_splits(df.assign(augmented=False), ev, seed=1)
    assert [s.test_idx.tolist() for s in plain] == [s.test_idx.tolist() for s in marked]
    direct = kfold_splits(df.label, df.group, k=3, seed=1)
    assert [s.test_idx.tolist() for s in plain] == [s.test_idx.tolist() for s in direct]


def test_external_leaves_linked_sources_out_of_training():
    c = toy_records().query("source == 'a'").assign(source="c")
    df = pd.concat([toy_records(), c.assign(group=c.group + "c")], ignore_index=True)
    src = df.source.to_numpy()
    linked = [["a", "b"]]
    (default,) = external_splits(df.source, None, ["b"], df.label, df.group, linked)
    assert set(src[default.train_idx]) == {"c", "h1", "h2"}
    with pytest.warns(UserWarning, match="linked to training source.*a"):
        (listed,) = external_splits(df.source, ["a", "c", "h1"], ["b"], df.label, df.group,
                                    linked)
    assert set(src[listed.train_idx]) == {"c", "h1"}
    unlinked = external_splits(df.source, None, ["b"], df.label, df.group)
    assert "a" in set(src[unlinked[0].train_idx])
    via_config = make_splits(
        df, EvaluateConfig(protocol="external", test_sources=["b"], linked_sources=linked), 0
    )
    assert set(src[via_config[0].train_idx]) == {"c", "h1", "h2"}


def test_pooled_kfold_over_linked_sources_warns():
    df = toy_records()
    with pytest.warns(UserWarning, match="linked sources a, b"):
        make_splits(df, EvaluateConfig(protocol="kfold", k=3, linked_sources=[["a", "b"]]), 0)


@pytest.mark.parametrize("with_copy_column", [True, False])
def test_augmented_collection_on_disk_tests_originals_only(tmp_path, with_copy_column):
    """A manifest like `leukdx data augment` writes: `<stem>__augK` files with an origin."""
    from PIL import Image

    from leukdx.config import DataConfig
    from leukdx.data.records import load_collection

    rng = np.random.default_rng(0)
    rows = []
    for source in ("s1", "s2"):
        folder = tmp_path / "aug" / source
        (folder / "images").mkdir(parents=True)
        for n in range(8):
            for copy in range(3):
                name = f"images/im{n}__aug{copy}.png"
                pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / name)
                rows.append((source, name, n % 2, f"{source}-{n}", f"/orig/{source}/im{n}.png",
                             copy))
    for source in ("s1", "s2"):
        table = pd.DataFrame(
            [r[1:] for r in rows if r[0] == source],
            columns=["path", "label", "group", "origin", "copy"],
        )
        if not with_copy_column:
            table = table.drop(columns="copy")
        table.to_csv(tmp_path / "aug" / source / "manifest.csv", index=False)
    records = load_collection(
        tmp_path / "aug", DataConfig(cache_dir="", recrop_similarity=None), progress=False
    ).records
    expected = records.path.str.contains("__aug0") == False  # noqa: E712
    assert records.augmented.tolist() == expected.tolist()
    for ev in (EvaluateConfig(protocol="kfold", k=2), EvaluateConfig(protocol="lodo")):
        for s in make_splits(records, ev, seed=0):
            assert not records.augmented.to_numpy()[s.test_idx].any()
            assert records.augmented.to_numpy()[s.train_idx].sum() == 2 * (
                ~records.augmented.to_numpy()[s.train_idx]
            ).sum()
        assert_no_leakage(records, make_splits(records, ev, seed=0))
