"""Tests of leukdx.features.analysis: Table 10 analysis, t-SNE maps, source confound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from leukdx.evaluation.leakage import source_confound
from leukdx.features.analysis import (
    FEATURE_SPACE_METRICS,
    analyse_feature_space,
    embedding_boundary,
    extractor_leak,
    feature_space_markdown,
    plot_feature_space,
    source_confound_report,
    tsne_embedding,
    tsne_perplexity,
)


def _records(per_class: dict[str, int]) -> pd.DataFrame:
    rows = []
    for source, n in per_class.items():
        for label in (0, 1):
            for i in range(n):
                rows.append({"source": source, "label": label, "group": f"{source}-{label}-{i}",
                             "path": f"/x/{source}/{label}/{i}.png"})
    return pd.DataFrame(rows)


def _flipped_features(records: pd.DataFrame, signs: dict[str, float], dim: int = 5, seed: int = 0):
    """Class signal on feature 0 whose direction depends on the source."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=0.3, size=(len(records), dim))
    sign = records["source"].map(signs).to_numpy()
    X[:, 0] += 2.0 * sign * (2 * records["label"].to_numpy() - 1)
    return X


def test_lodo_exposes_a_signal_that_kfold_within_a_source_hides():
    records = _records({"a": 15, "b": 15, "c": 15})
    X = _flipped_features(records, {"a": 1.0, "b": -1.0, "c": -1.0})
    table = analyse_feature_space(X, records, k=5, seed=0, name="toy")
    assert table["test_source"].tolist() == ["a", "b", "c"]
    row = table.set_index("test_source").loc["a"]
    # inside source a the classes are separable; trained on b and c the SVM learns the
    # opposite direction and gets a almost entirely wrong
    assert row["kfold_accuracy"] >= 0.9
    assert row["lodo_accuracy"] <= 0.2
    assert row["lodo_kappa"] < 0 < row["kfold_kappa"]
    for protocol in ("lodo", "kfold"):
        for metric in FEATURE_SPACE_METRICS:
            assert f"{protocol}_{metric}" in table.columns
    assert (table["kfold_k"] == 5).all()
    assert (table["features"] == "toy").all()


def test_lodo_leaves_linked_sources_out_of_training():
    # idb1 and idb2 share slides: their strong class signal points the same way; tq's weak one
    # the opposite way
    records = _records({"idb1": 15, "idb2": 15, "tq": 15})
    X = _flipped_features(records, {"idb1": 1.0, "idb2": 1.0, "tq": -0.25})
    linked = [["idb1", "idb2"]]
    # trained on idb1 (same slides) the SVM gets idb2 right: that is the leak
    leaky = analyse_feature_space(X, records, test_sources=["idb2"]).iloc[0]
    assert leaky["lodo_accuracy"] >= 0.9
    honest = analyse_feature_space(X, records, test_sources=["idb2"],
                                   linked_sources=linked).iloc[0]
    assert honest["lodo_accuracy"] <= 0.1
    assert honest["kfold_accuracy"] == leaky["kfold_accuracy"]  # within-source k-fold unchanged


def test_features_of_a_network_trained_on_the_test_source_are_refused():
    records = _records({"a": 10, "b": 10, "c": 10})
    X = _flipped_features(records, {"a": 1.0, "b": 1.0, "c": 1.0})
    table = analyse_feature_space(X, records, name="mdft", extractor_sources=["a", "h"],
                                  linked_sources=[["b", "c"]]).set_index("test_source")
    assert table.loc["a", "note"] == (
        "refused: mdft was trained on a (its run.json data.sources), the test source 'a'; "
        "train one extractor per test source without it (data.sources)"
    )
    assert table.loc["a", ["lodo_accuracy", "kfold_accuracy", "kfold_kappa"]].isna().all()
    for other in ("b", "c"):
        assert table.loc[other, "note"] == ""
        assert table.loc[other, "lodo_accuracy"] >= 0.9 and table.loc[other, "kfold_k"] == 5
    linked = analyse_feature_space(X, records, name="mdft", extractor_sources=["c"],
                                   linked_sources=[["b", "c"]]).set_index("test_source")
    assert "linked to test source 'b'" in linked.loc["b", "note"]
    assert np.isnan(linked.loc["b", "lodo_accuracy"])
    assert not np.isnan(linked.loc["a", "lodo_accuracy"])
    assert "| n/a |" in feature_space_markdown(linked.reset_index())


def test_extractor_leak_reasons():
    assert extractor_leak(None, "a") is None
    assert extractor_leak(["b", "c"], "a") is None
    assert extractor_leak(["a", "b"], "a", [["a", "b"]], "run").startswith(
        "refused: run was trained on a, b (its run.json data.sources), the test source 'a' and "
        "sources linked to it;"
    )


def test_pca_applies_only_above_the_threshold():
    records = _records({"a": 40, "b": 40})
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(len(records), 300))
    narrow = wide[:, :200]
    assert (analyse_feature_space(wide, records, pca_components=10, pca_above=256)
            ["n_features"] == 10).all()
    assert (analyse_feature_space(narrow, records, pca_components=10, pca_above=256)
            ["n_features"] == 200).all()


def test_markdown_names_the_feature_dimension_and_what_pca_kept():
    records = _records({"a": 40, "b": 40})
    wide = np.random.default_rng(1).normal(size=(len(records), 300))
    table = pd.concat([
        analyse_feature_space(wide, records, name="fc7", pca_components=10, pca_above=256),
        analyse_feature_space(wide[:, :200], records, name="gap", pca_components=10,
                              pca_above=256),
    ], ignore_index=True)
    rows = feature_space_markdown(table).splitlines()
    assert all(line.startswith("| fc7 | 300 → PCA 10 |")
               for line in rows if line.startswith("| fc7 |"))
    assert all(line.startswith("| gap | 200 |") for line in rows if line.startswith("| gap |"))


def test_single_source_has_no_lodo_but_still_kfold_with_lowered_k():
    records = _records({"only": 3})
    X = _flipped_features(records, {"only": 1.0})
    table = analyse_feature_space(X, records, k=5)
    row = table.iloc[0]
    assert np.isnan(row["lodo_accuracy"])
    assert "lodo" in row["note"]
    assert row["kfold_k"] == 3
    assert row["kfold_accuracy"] == pytest.approx(1.0)


def test_no_two_class_source_is_an_error():
    records = pd.DataFrame({"source": ["h"] * 4, "label": [0] * 4, "group": list("abcd")})
    with pytest.raises(ValueError, match="both"):
        analyse_feature_space(np.zeros((4, 2)), records)


def test_markdown_blocks_per_source_with_best_in_bold():
    records = _records({"a": 10, "b": 10})
    good = _flipped_features(records, {"a": 1.0, "b": 1.0})
    noise = np.random.default_rng(3).normal(size=good.shape)
    table = pd.concat([analyse_feature_space(good, records, name="good"),
                       analyse_feature_space(noise, records, name="noise")], ignore_index=True)
    text = feature_space_markdown(table)
    lines = text.splitlines()
    assert lines[0].startswith("| Approach | Num. of features | LODO A (%)")
    assert lines.index("| **a** |" + " |" * 9) < lines.index("| **b** |" + " |" * 9)
    good_rows = [line for line in lines if line.startswith("| good |")]
    assert len(good_rows) == 2 and all("**100.00%**" in line for line in good_rows)


@given(n=st.integers(3, 5000), preferred=st.floats(1.0, 100.0))
def test_perplexity_is_valid_for_any_size(n, preferred):
    p = tsne_perplexity(n, preferred)
    assert 1.0 <= p < n
    assert p <= max(preferred, 1.0)


def test_tsne_is_seeded_and_two_dimensional():
    X = np.random.default_rng(0).normal(size=(25, 80))
    a, b = tsne_embedding(X, seed=4), tsne_embedding(X, seed=4)
    assert a.shape == (25, 2)
    np.testing.assert_array_equal(a, b)


def test_boundary_separates_a_separable_embedding():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(10)].astype(int)
    points = rng.normal(scale=0.3, size=(40, 2)) + np.c_[3 * y, np.zeros(40)]
    decision = embedding_boundary(points, y)
    assert ((decision(points) > 0).astype(int) == y).all()
    assert embedding_boundary(points, np.zeros(40, dtype=int)) is None


def test_plot_feature_space_writes_pooled_and_per_source_maps(tmp_path):
    records = _records({"a": 8, "b": 8, "healthy_only": 0})
    records = pd.concat([records, pd.DataFrame({
        "source": ["h"] * 6, "label": [0] * 6, "group": [f"h{i}" for i in range(6)],
        "path": [f"/h/{i}.png" for i in range(6)]})], ignore_index=True)
    X = _flipped_features(records, {"a": 1.0, "b": -1.0, "h": 1.0}, dim=12)
    paths = plot_feature_space(X, records, tmp_path, name="toy:fc7", seed=0)
    assert sorted(p.name for p in paths) == ["tsne__toy_fc7__a.png", "tsne__toy_fc7__b.png",
                                             "tsne__toy_fc7__pooled.png"]
    for path in paths:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            width, height = im.size
        assert 300 < height < 600
        if path.name.endswith("pooled.png"):  # several sources: class and source panels
            assert 900 < width < 1200
        else:  # one source: the class panel only (a one-colour source panel shows nothing)
            assert 400 < width < 700


def test_confound_report_sees_source_shortcut_and_absent_class_signal():
    records = _records({"a": 12, "b": 12, "c": 12})
    rng = np.random.default_rng(0)
    onehot = pd.get_dummies(records["source"]).to_numpy(dtype=float)
    X = np.c_[3 * onehot, rng.normal(size=(len(records), 4))]  # source coded, class absent
    report = source_confound_report(X, records, name="toy", seed=0)
    assert report["source_accuracy"] == pytest.approx(1.0)
    assert report["source_chance"] == pytest.approx(1 / 3)
    assert report["class_balanced_accuracy"] < 0.75
    assert report["class_chance"] == pytest.approx(0.5)
    assert report["label_from_source_balanced_accuracy"] == pytest.approx(
        source_confound(records)["balanced_accuracy"])
    assert report["n_sources"] == 3 and report["n_features"] == 7
