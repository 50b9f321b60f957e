"""Tests of leukdx.data.dedup: hashes, Hamming distances, union-find groups."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from leukdx.data.dedup import (
    UnionFind,
    assign_groups,
    bits_to_hex,
    dhash,
    dhash_hex,
    duplicate_pairs,
    group_id,
    hamming_matrix,
    hex_to_bits,
    mixed_label_groups,
    near_pairs,
    near_pairs_between,
    overlap_similarity,
    recrop_pairs,
    sha256_file,
)


def _smooth(seed: int, size: int = 96) -> np.ndarray:
    """A smooth random picture (dHash is meaningful on smooth content, as on micrographs)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def test_sha256_file_matches_hashlib(tmp_path):
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # spans several read chunks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_dhash_shape_and_hex_length():
    bits = dhash(_smooth(0))
    assert bits.dtype == bool and bits.shape == (256,)
    assert len(dhash_hex(_smooth(0))) == 64
    assert dhash(_smooth(0), hash_size=8).shape == (64,)


def test_dhash_is_robust_to_resizing_and_jpeg_but_separates_pictures(tmp_path):
    img = _smooth(1, 200)
    resized = np.asarray(Image.fromarray(img).resize((150, 150), Image.Resampling.BILINEAR))
    path = tmp_path / "re.jpg"
    Image.fromarray(img).save(path, quality=70)
    reencoded = Image.open(path)
    base = dhash(img)
    assert (base != dhash(resized)).sum() <= 12
    assert (base != dhash(reencoded)).sum() <= 12
    assert (base != dhash(_smooth(2, 200))).sum() > 40


def test_dhash_accepts_pillow_images_of_any_mode():
    img = Image.fromarray(_smooth(3))
    expected = dhash(img)
    np.testing.assert_array_equal(dhash(img.convert("L")), expected)
    deep = Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257)
    assert deep.mode.startswith("I")
    assert (dhash(deep) != expected).sum() <= 2


@settings(max_examples=50, deadline=None)
@given(arrays(bool, st.sampled_from([8, 64, 256])))
def test_hex_round_trip(bits):
    np.testing.assert_array_equal(hex_to_bits(bits_to_hex(bits)), bits)


@settings(max_examples=30, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.just(64))))
def test_hamming_matrix_equals_bit_count(bits):
    expected = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.testing.assert_array_equal(hamming_matrix(bits), expected)
    np.testing.assert_array_equal(hamming_matrix([bits_to_hex(b) for b in bits]), expected)


@settings(max_examples=30, deadline=None)
@given(arrays(bool, st.tuples(st.integers(0, 15), st.just(16))), st.integers(-1, 8))
def test_near_pairs_in_blocks_equals_full_matrix(bits, max_distance):
    dist = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    expected = {
        (i, j, int(dist[i, j]))
        for i in range(len(bits))
        for j in range(i + 1, len(bits))
        if dist[i, j] <= max_distance
    }
    assert set(near_pairs(bits, max_distance, block=4)) == expected


@settings(max_examples=30, deadline=None)
@given(arrays(bool, st.tuples(st.integers(0, 9), st.just(16))),
       arrays(bool, st.tuples(st.integers(0, 9), st.just(16))), st.integers(-1, 8))
def test_near_pairs_between_two_sets_equals_brute_force(a, b, max_distance):
    dist = (a[:, None, :] != b[None, :, :]).sum(-1)
    expected = {(i, j, int(dist[i, j])) for i in range(len(a)) for j in range(len(b))
                if dist[i, j] <= max_distance}
    assert set(near_pairs_between(a, b, max_distance, block=3)) == expected
    hexes = set(near_pairs_between([bits_to_hex(x) for x in a], [bits_to_hex(x) for x in b],
                                   max_distance))
    assert hexes == expected


def test_near_pairs_between_refuses_hashes_of_different_sizes():
    with pytest.raises(ValueError, match="different lengths: 16 and 8 bits"):
        next(near_pairs_between(["00ff"], ["0f"], 1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 19)), max_size=30))
def test_union_find_matches_graph_connectivity(edges):
    uf = UnionFind(20)
    for a, b in edges:
        uf.union(a, b)
    # reference: transitive closure by repeated relabelling
    label = list(range(20))
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            lo = min(label[a], label[b])
            for x in (a, b):
                if label[x] != lo:
                    label[x] = lo
                    changed = True
    roots = uf.components()
    for i in range(20):
        for j in range(20):
            assert (roots[i] == roots[j]) == (label[i] == label[j])


def _records(sha, dh=None, **extra) -> pd.DataFrame:
    data = {"sha256": sha, "path": [f"/d/{i}.png" for i in range(len(sha))]}
    if dh is not None:
        data["dhash"] = dh
    data.update(extra)
    return pd.DataFrame(data)


def _hex(bits_on: list[int], n: int = 64) -> str:
    bits = np.zeros(n, bool)
    bits[bits_on] = True
    return bits_to_hex(bits)


def test_identical_files_share_a_group_with_stable_id():
    sha = ["c" * 64, "a" * 64, "c" * 64, "b" * 64]
    groups = assign_groups(_records(sha), max_distance=-1)
    assert groups[0] == groups[2] == group_id(["c" * 64]) == "g-" + "c" * 12
    assert len({groups[0], groups[1], groups[3]}) == 3


def test_near_duplicates_join_transitively_and_threshold_applies():
    # A~B (distance 3), B~C (distance 3), A and C are 6 apart; D is far from all
    dh = [_hex([]), _hex([0, 1, 2]), _hex([0, 1, 2, 3, 4, 5]), _hex(list(range(20, 60)))]
    sha = ["a" * 64, "b" * 64, "c" * 64, "d" * 64]
    groups = assign_groups(_records(sha, dh), max_distance=3)
    assert groups[0] == groups[1] == groups[2] == "g-" + "a" * 12
    assert groups[3] != groups[0]
    apart = assign_groups(_records(sha, dh), max_distance=2)
    assert apart.nunique() == 4
    disabled = assign_groups(_records(sha, [dh[0]] * 4), max_distance=-1)
    assert disabled.nunique() == 4


def test_declared_groups_are_scoped_per_source_and_origin_links_copies():
    sha = [c * 64 for c in "abcdef"]
    records = _records(
        sha,
        group=["p1", "p1", "p1", None, "", None],
        source=["s1", "s1", "s2", "s1", "s1", "s1"],
        origin=[None, None, None, None, None, "/d/3.png"],
    )
    groups = assign_groups(records, max_distance=-1)
    assert groups[0] == groups[1]
    assert groups[2] != groups[0]  # same group name in another source is another patient
    assert groups[5] == groups[3]  # an augmented copy joins its origin
    assert groups[4] not in {groups[0], groups[3]}  # an empty group name links nothing


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(6))))
def test_group_ids_do_not_depend_on_row_order(order):
    sha = ["a" * 64, "b" * 64, "a" * 64, "c" * 64, "d" * 64, "c" * 64]
    dh = [_hex([1]), _hex([50]), _hex([1]), _hex([2, 3]), _hex([2]), _hex([2, 3])]
    base = assign_groups(_records(sha, dh), max_distance=1)
    shuffled = _records([sha[i] for i in order], [dh[i] for i in order])
    again = assign_groups(shuffled, max_distance=1)
    assert again.tolist() == [base[i] for i in order]


def test_duplicate_pairs_lists_exact_and_near_pairs():
    sha = ["a" * 64, "a" * 64, "b" * 64, "c" * 64]
    dh = [_hex([1]), _hex([1]), _hex([1, 2]), _hex(list(range(30)))]
    records = _records(sha, dh, source=["s", "s", "t", "t"])
    pairs = duplicate_pairs(records, max_distance=2)
    got = {(r.i, r.j): (r.kind, r.distance) for r in pairs.itertuples()}
    assert got == {(0, 1): ("exact", 0), (0, 2): ("near", 1), (1, 2): ("near", 1)}
    assert set(pairs.loc[pairs["kind"] == "near", "source_b"]) == {"t"}
    exact_only = duplicate_pairs(records, max_distance=-1)
    assert exact_only["kind"].tolist() == ["exact"]


def test_mixed_label_groups_finds_groups_with_both_labels():
    records = pd.DataFrame({"group": ["g1", "g1", "g2", "g2", "g3"], "label": [0, 1, 0, 0, 1]})
    assert mixed_label_groups(records) == ["g1"]


def test_assign_groups_of_empty_table():
    empty = pd.DataFrame({"sha256": [], "dhash": []})
    assert len(assign_groups(empty, 12)) == 0


# ----------------------------------------------------------------------------- re-crops


def _field(seed: int, size: int = 330) -> np.ndarray:
    """A smear-like field: smooth colour blobs (the cells) plus fine grain (camera detail)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 230, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 10, (size, size, 1))
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _refocused(seed: int, size: int = 330) -> np.ndarray:
    """The same field photographed again: same cells, new grain, slightly out of focus."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 230, (8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    grain = np.random.default_rng(seed + 1000).normal(0, 10, (size, size, 1))
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def _recrop_records(tmp_path, images: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for name, img in images.items():
        path = tmp_path / f"{name}.png"
        Image.fromarray(img).save(path)
        rows.append({"path": str(path), "sha256": sha256_file(path), "dhash": dhash_hex(img),
                     "source": "s", "label": 0})
    return pd.DataFrame(rows)


def test_overlap_similarity_is_one_for_shared_pixels_and_low_for_new_grain():
    field = _field(0).astype(float).mean(axis=2)
    a, b = field[6:263, 3:260], field[0:257, 0:257]  # a[y, x] = b[y + 6, x + 3]
    similarity, dy, dx = overlap_similarity(a, b, (0, 0))
    assert similarity == pytest.approx(1.0, abs=1e-6)
    assert (dy, dx) == (-6, -3)
    other = _refocused(0).astype(float).mean(axis=2)[0:257, 0:257]
    assert overlap_similarity(a, other, (-6, -3))[0] < 0.3


def test_recrops_far_apart_in_dhash_are_grouped_and_other_photographs_are_not(tmp_path):
    field = _field(1)
    images = {
        "crop": field[0:257, 0:257],
        "recrop": field[9:266, 5:262],  # the same cell, cut again a few pixels away
        "refocused": _refocused(1)[9:266, 5:262],  # the same cell photographed again
        "other": _field(2)[0:257, 0:257],
    }
    records = _recrop_records(tmp_path, images)
    dist = hamming_matrix(records["dhash"].tolist())
    assert dist[0, 1] > 12  # a whole-image hash misses this re-crop
    pairs = recrop_pairs(records, 0.5)
    assert pairs[["i", "j"]].values.tolist() == [[0, 1]]
    assert pairs["similarity"].item() > 0.95
    # crop[y, x] = recrop[y - 9, x - 5]
    assert (pairs["shift_y"].item(), pairs["shift_x"].item()) == (9, 5)
    grouped = assign_groups(records, -1, recrop_similarity=0.5)
    assert grouped[0] == grouped[1]
    assert len({grouped[0], grouped[2], grouped[3]}) == 3
    by_dhash = assign_groups(records, 12)
    assert by_dhash[0] != by_dhash[1]  # the dHash alone keeps the re-crop apart
    kinds = duplicate_pairs(records, -1, recrop_similarity=0.5)
    assert kinds[["i", "j", "kind"]].values.tolist() == [[0, 1, "recrop"]]
    assert kinds["distance"].item() == dist[0, 1]


def test_recrop_search_is_cached_by_content(tmp_path, monkeypatch):
    import leukdx.data.dedup as dedup_module

    field = _field(3)
    records = _recrop_records(tmp_path, {"a": field[0:200, 0:200], "b": field[4:204, 7:207],
                                         "c": _field(4)[0:200, 0:200]})
    cache = tmp_path / "cache"
    first = recrop_pairs(records, 0.5, cache_dir=cache)
    assert {p.name for p in cache.iterdir()} == {"recrop_thumbs.npz", "recrops.json"}
    dedup_module._recrop_memo.clear()

    def no_pixels(path, preview):
        raise AssertionError(f"{path} was decoded again")

    monkeypatch.setattr(dedup_module, "_load_gray", no_pixels)
    again = recrop_pairs(records.iloc[::-1].reset_index(drop=True), 0.5, cache_dir=cache)
    assert first[["i", "j"]].values.tolist() == [[0, 1]]
    assert again[["i", "j"]].values.tolist() == [[1, 2]]  # same pair, rows reversed


def test_recrop_similarity_setting_is_checked():
    from leukdx.config import ConfigError, config_from_dict

    assert config_from_dict({"data": {"recrop_similarity": None}}).data.recrop_similarity is None
    assert config_from_dict({}).data.recrop_similarity == 0.5
    with pytest.raises(ConfigError, match=r"data.recrop_similarity' is 1.5; it must be in \(0, 1\]"):
        config_from_dict({"data": {"recrop_similarity": 1.5}})


# The duplicates documented in ../shared/data/SOURCES.md, and nothing else.
DOCUMENTED_PAIRS = {
    ("all_idb2/healthy/Im223_0.tif", "all_idb2/healthy/Im257_0.tif"),  # identical
    ("all_idb2/healthy/Im222_0.tif", "all_idb2/healthy/Im256_0.tif"),  # re-crops
    ("all_idb2/healthy/Im224_0.tif", "all_idb2/healthy/Im258_0.tif"),
    ("all_idb2/healthy/Im225_0.tif", "all_idb2/healthy/Im259_0.tif"),
    ("all_idb2/healthy/Im227_0.tif", "all_idb2/healthy/Im260_0.tif"),
    ("jtsc/healthy/112.bmp", "jtsc/healthy/139.bmp"),  # identical
    ("taleqani_all/healthy/WBC-Benign-238.jpg", "taleqani_all/healthy/WBC-Benign-241.jpg"),
    ("taleqani_all/healthy/WBC-Benign-407.jpg", "taleqani_all/healthy/WBC-Benign-410.jpg"),
}


def _relative(path: str) -> str:
    return "/".join(str(path).replace("\\", "/").split("/")[-3:])


@pytest.mark.real_data
def test_real_groups_are_exactly_the_documented_duplicate_pairs(real_collection):
    records = real_collection.records
    grouped = set()
    for _, members in records.groupby("group")["path"]:
        if len(members) > 1:
            names = sorted(_relative(p) for p in members)
            grouped |= {(a, b) for k, a in enumerate(names) for b in names[k + 1 :]}
    assert grouped == DOCUMENTED_PAIRS


@pytest.mark.real_data
def test_real_duplicate_pairs_name_their_kind(real_collection, real_config):
    pairs = duplicate_pairs(real_collection.records, real_config.near_duplicate_distance,
                            recrop_similarity=real_config.recrop_similarity,
                            cache_dir=real_config.cache_dir)
    found = {
        tuple(sorted((_relative(r.path_a), _relative(r.path_b)))): r.kind
        for r in pairs.itertuples()
    }
    assert set(found) == DOCUMENTED_PAIRS
    assert sorted(found.values()) == ["exact"] * 2 + ["near"] * 2 + ["recrop"] * 4
    assert (pairs["source_a"] == pairs["source_b"]).all()
