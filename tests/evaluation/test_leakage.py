"""Tests of leukdx.evaluation.leakage: overlap detection and the source confound report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukdx.evaluation.leakage import (
    LeakageError,
    assert_no_leakage,
    confound_warning,
    source_confound,
)
from leukdx.evaluation.splits import Split, lodo_splits


def random_dhash(rng: np.random.Generator) -> str:
    return rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()


def records_table(n_per_source: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for source in ("a", "b", "h"):
        for i in range(n_per_source):
            label = 0 if source == "h" else i % 2
            rows.append(
                {
                    "path": f"/data/{source}/{i}.png",
                    "label": label,
                    "source": source,
                    "group": f"{source}{i}",
                    "sha256": f"sha-{source}-{i}",
                    "dhash": random_dhash(rng),
                }
            )
    return pd.DataFrame(rows)


def test_clean_lodo_splits_pass():
    df = records_table()
    splits = lodo_splits(df.source, df.label, df.group)
    assert assert_no_leakage(df, splits, near_duplicate_distance=12) is None


def test_injected_group_overlap_names_the_split_and_paths():
    df = records_table()
    df.loc[14, "group"] = df.loc[2, "group"]  # h/2 shares a group with a/2
    splits = [Split("lodo", "a", 0, 0, np.arange(6, 18), np.arange(0, 6))]
    with pytest.raises(LeakageError) as info:
        assert_no_leakage(df, splits)
    message = str(info.value)
    assert "lodo/a/fold 0" in message
    assert "group 'a2'" in message
    assert "train /data/h/2.png / test /data/a/2.png" in message


def test_identical_content_in_different_groups_is_caught():
    df = records_table()
    df.loc[7, "sha256"] = df.loc[1, "sha256"]
    splits = [Split("kfold", "pooled", 3, 1, np.arange(6, 18), np.arange(0, 6))]
    with pytest.raises(LeakageError, match="kfold/pooled/fold 3/repeat 1.*sha256"):
        assert_no_leakage(df, splits)


def test_same_record_on_both_sides_and_count_of_leaking_splits():
    df = records_table()
    splits = [
        Split("kfold", "pooled", 0, 0, np.arange(0, 10), np.arange(9, 18)),
        Split("kfold", "pooled", 1, 0, np.arange(0, 9), np.arange(9, 18)),
        Split("kfold", "pooled", 2, 0, np.arange(0, 12), np.arange(11, 18)),
    ]
    with pytest.raises(LeakageError, match=r"fold 0.*record\(s\) in both.*2 of 3 splits leak"):
        assert_no_leakage(df, splits)


def test_validation_set_must_not_touch_the_test_set():
    df = records_table()
    splits = [Split("lodo", "a", 0, 0, np.arange(6, 18), np.arange(0, 6))]
    assert_no_leakage(df, splits, val_indices=[np.arange(12, 18)])
    with pytest.raises(LeakageError, match="validation"):
        assert_no_leakage(df, splits, val_indices=[np.array([3, 12])])
    with pytest.raises(ValueError, match="1 splits"):
        assert_no_leakage(df, splits, val_indices=[None, None])


def test_near_duplicates_found_by_dhash_when_asked():
    df = records_table()
    bits = bytearray(bytes.fromhex(df.loc[0, "dhash"]))
    bits[0] ^= 0b111  # three bits away from record 0
    df.loc[10, "dhash"] = bytes(bits).hex()
    splits = [Split("lodo", "a", 0, 0, np.arange(6, 18), np.arange(0, 6))]
    assert_no_leakage(df, splits)  # groups say nothing, the pixel check is off
    with pytest.raises(LeakageError, match="near-duplicate.*distance <= 5"):
        assert_no_leakage(df, splits, near_duplicate_distance=5)
    assert_no_leakage(df, splits, near_duplicate_distance=2)


def test_augmented_copies_in_a_test_set_are_leakage():
    df = records_table().assign(augmented=False)
    df.loc[4, "augmented"] = True  # a/4 is an augmented copy
    clean = [Split("lodo", "a", 0, 0, np.arange(6, 18), np.arange(0, 4))]
    assert_no_leakage(df, clean)
    tested = [Split("lodo", "a", 0, 0, np.arange(6, 18), np.arange(0, 6))]
    with pytest.raises(LeakageError, match=r"1 augmented cop\(ies\) in the test set, e.g. "
                                           r"/data/a/4.png"):
        assert_no_leakage(df, tested)


def test_out_of_range_positions_are_an_error():
    df = records_table()
    with pytest.raises(ValueError, match="outside the 18 records"):
        assert_no_leakage(df, [Split("holdout", "pooled", 0, 0, [0, 1], [99])])


# ---------------------------------------------------------------------------------------------
# source confound


def test_perfectly_confounded_data_are_flagged():
    # Loey et al.'s setting: every healthy image from one database, every leukaemic one from
    # another
    df = pd.DataFrame({"source": ["db_healthy"] * 8 + ["db_all"] * 5, "label": [0] * 8 + [1] * 5})
    report = source_confound(df)
    assert report["balanced_accuracy"] == 1.0 and report["accuracy"] == 1.0
    assert report["roc_auc"] == 1.0
    assert report["sources"]["db_all"] == {
        "n": 5,
        "healthy": 0,
        "leukaemia": 5,
        "majority_label": 1,
        "purity": 1.0,
    }
    message = confound_warning(report)
    assert message is not None
    assert "db_healthy: 8 healthy / 0 leukaemia" in message and "lodo" in message


def test_balanced_sources_are_not_flagged():
    df = pd.DataFrame({"source": ["a"] * 6 + ["b"] * 6, "label": [0, 1] * 6})
    report = source_confound(df)
    assert report["balanced_accuracy"] == 0.5
    assert report["roc_auc"] == 0.5
    assert confound_warning(report) is None


def test_partly_confounded_data_and_training_subset():
    # one two-class source plus a healthy-only source: the source predicts part of the label
    df = pd.DataFrame(
        {"source": ["mix"] * 10 + ["healthy_only"] * 10, "label": [0] * 5 + [1] * 5 + [0] * 10}
    )
    report = source_confound(df)
    # leukaemic images sit in a tied source (half right); healthy: 10 right + 5 half right
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 12.5 / 15) / 2)
    assert confound_warning(report) is None
    assert confound_warning(report, threshold=0.6) is not None
    # restricted to the training positions of a split
    sub = source_confound(df, idx=np.r_[5:10, 10:20])
    assert sub["n"] == 15 and sub["balanced_accuracy"] == 1.0


def test_single_class_report_has_no_auc():
    report = source_confound(pd.DataFrame({"source": ["a", "b"], "label": [0, 0]}))
    assert np.isnan(report["roc_auc"])
    assert report["majority_baseline"] == 1.0


@pytest.mark.real_data
def test_confound_report_on_the_real_collection(shared_data):
    frames = []
    for manifest in sorted(shared_data.glob("*/MANIFEST.csv")):
        m = pd.read_csv(manifest)
        label = (m["label"] == "leukemia").astype(int)
        frames.append(pd.DataFrame({"source": manifest.parent.name, "label": label}))
    records = pd.concat(frames, ignore_index=True)
    # all seven sources: the two-class sources are balanced, so the source only partly
    # predicts the label (healthy-only sources are the confounded part)
    pooled = source_confound(records)
    assert pooled["n_sources"] == 7 and pooled["n"] == 1884
    assert 0.6 < pooled["balanced_accuracy"] < 0.9
    assert confound_warning(pooled) is None
    # a Loey-like pairing: healthy images from BCCD, leukaemic ones from ALL-IDB2
    loey_like = records[
        ((records.source == "bccd") & (records.label == 0))
        | ((records.source == "all_idb2") & (records.label == 1))
    ]
    report = source_confound(loey_like)
    assert report["balanced_accuracy"] == 1.0
    assert "bccd: 364 healthy / 0 leukaemia" in confound_warning(report)
