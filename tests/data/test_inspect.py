"""Tests of leukdx.data.inspect: the per-source report and its text table."""

from __future__ import annotations

import shutil

import pytest

from leukdx.data.inspect import INSPECT_COLUMNS, format_inspect_table, inspect_collection


@pytest.fixture
def messy_collection(tmp_path, noise_image):
    """two-class 'clinic' (PNG, one exact duplicate, one text file posing as .png),
    healthy-only 'donors' (JPEG, 50x30 and 60x40)."""
    root = tmp_path / "coll"
    for i in range(3):
        noise_image(root / "clinic" / "healthy" / f"h{i}.png", i)
        noise_image(root / "clinic" / "leukemia" / f"l{i}.png", 10 + i)
    shutil.copy(root / "clinic" / "healthy" / "h0.png", root / "clinic" / "healthy" / "h0b.png")
    (root / "clinic" / "leukemia" / "broken.png").write_text("oops")
    for i, size in enumerate([(50, 30), (60, 40)]):
        noise_image(root / "donors" / "normal" / f"d{i}.jpg", 20 + i, size=size)
    return root


def test_inspect_reports_counts_formats_sizes_duplicates_and_problems(
    messy_collection, data_config
):
    df = inspect_collection(messy_collection, data_config, progress=False)
    assert tuple(df.columns) == INSPECT_COLUMNS
    assert df["source"].tolist() == ["clinic", "donors"]
    clinic, donors = (df.iloc[i].to_dict() for i in range(2))

    assert (clinic["n_healthy"], clinic["n_leukemia"], clinic["n_total"]) == (4, 3, 7)
    assert clinic["formats"] == "PNG:7" and clinic["layout"] == "folders"
    assert clinic["exact_duplicate_pairs"] == 1 and clinic["groups"] == 6
    assert "1 unreadable file(s) skipped: broken.png" in clinic["problems"]
    assert "not a recognised image" in clinic["problems"]

    assert (donors["n_healthy"], donors["n_leukemia"]) == (2, 0)
    assert donors["formats"] == "JPEG:2"
    assert (donors["min_width"], donors["max_width"]) == (50, 60)
    assert (donors["min_height"], donors["max_height"]) == (30, 40)
    assert "healthy images only" in donors["problems"]
    assert donors["exact_duplicate_pairs"] == 0 and donors["near_duplicate_pairs"] == 0


def test_inspect_reports_duplicates_shared_between_sources(messy_collection, data_config):
    shutil.copy(
        messy_collection / "clinic" / "healthy" / "h1.png",
        messy_collection / "donors" / "normal" / "copy.png",
    )
    df = inspect_collection(messy_collection, data_config, progress=False).set_index("source")
    assert df.loc["donors", "exact_duplicate_pairs"] == 1
    assert "1 duplicate pair(s) shared with clinic" in df.loc["donors", "problems"]
    assert "shared with donors" in df.loc["clinic", "problems"]


def test_inspect_names_groups_with_both_labels(messy_collection, data_config):
    shutil.copy(
        messy_collection / "clinic" / "healthy" / "h2.png",
        messy_collection / "clinic" / "leukemia" / "same.png",
    )
    df = inspect_collection(messy_collection, data_config, progress=False)
    assert "1 group(s) hold both labels" in df.iloc[0]["problems"]


def test_format_table_is_fixed_width_with_total_and_problems(messy_collection, data_config):
    df = inspect_collection(messy_collection, data_config, progress=False)
    text = format_inspect_table(df)
    lines = text.splitlines()
    header, rule = lines[0], lines[1]
    assert header.split() == [
        "source",
        "layout",
        "healthy",
        "leukemia",
        "total",
        "formats",
        "width",
        "height",
        "exact",
        "near",
        "re-crop",
        "groups",
    ]
    table = lines[: lines.index("")]
    # right-aligned counts end in the same column as their header
    total_end = header.index("total") + len("total")
    for line in table[2:]:
        if not set(line) <= {"-", " "}:
            assert line[total_end - 1].isdigit(), line
    clinic_line = next(line for line in table if line.startswith("clinic"))
    assert "50-60" not in clinic_line and "PNG:7" in clinic_line
    donors_line = next(line for line in table if line.startswith("donors"))
    assert "50-60" in donors_line and "30-40" in donors_line
    total_line = next(line for line in table if line.startswith("TOTAL"))
    assert total_line.split()[1:4] == ["6", "3", "9"]
    assert rule.startswith("------")
    assert any("clinic:" in line and "broken.png" in line for line in lines)
    assert any("donors:" in line and "healthy images only" in line for line in lines)


def test_inspect_of_a_single_source(tmp_path, data_config, noise_image):
    src = tmp_path / "ALL_IDB2"
    for i, lab in enumerate([0, 1]):
        noise_image(src / f"Im00{i}_{lab}.tif", 40 + i)
    df = inspect_collection(src, data_config, progress=False)
    assert df[["source", "layout", "n_healthy", "n_leukemia"]].values.tolist() == [
        ["ALL_IDB2", "allidb", 1, 1]
    ]
    assert df.iloc[0]["problems"] == ""


@pytest.mark.real_data
def test_inspect_real_collection(shared_data, real_config, real_collection):
    df = inspect_collection(shared_data, real_config, progress=False).set_index("source")
    records = real_collection.records
    for source, part in records.groupby("source"):
        assert df.loc[source, "n_healthy"] == (part["label"] == 0).sum()
        assert df.loc[source, "n_leukemia"] == (part["label"] == 1).sum()
    assert df["n_total"].sum() == 1884
    assert df.loc["all_idb2", "formats"] == "TIFF:260"
    assert df.loc["all_idb1", "min_width"] == 2592
    assert df.loc["all_idb2", "exact_duplicate_pairs"] >= 1
    assert df.loc["jtsc", "exact_duplicate_pairs"] >= 1
    # SOURCES.md: one identical pair and four overlapping re-crops in all_idb2, one identical
    # pair in jtsc, two near-identical pairs in taleqani_all, nothing else
    counts = df[["exact_duplicate_pairs", "near_duplicate_pairs", "recrop_pairs"]]
    assert counts.loc["all_idb2"].tolist() == [1, 0, 4]
    assert counts.loc["jtsc"].tolist() == [1, 0, 0]
    assert counts.loc["taleqani_all"].tolist() == [0, 2, 0]
    assert counts.drop(["all_idb2", "jtsc", "taleqani_all"]).to_numpy().sum() == 0
    assert df.loc["all_idb2", "groups"] == 260 - 5
    assert "healthy images only" in df.loc["bccd", "problems"]
    assert df.loc["taleqani_all", "problems"] == ""
    text = format_inspect_table(df.reset_index())
    assert "1884" in text.splitlines()[text.splitlines().index("") - 1]
    listed = text[text.index("Duplicate pairs"):].split("\n\n")[0].splitlines()[1:]
    assert any("recrop" in line and "Im224_0.tif" in line and "Im258_0.tif" in line
               and "95 bits" in line for line in listed)
    assert len(listed) == 8
