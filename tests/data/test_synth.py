"""Synthetic demo collections: layout, counts, determinism, source gap, class signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukdx.data.decode import read_image
from leukdx.data.records import load_collection
from leukdx.data.synth import render_smear, source_styles, synthesize_collection

PER_CLASS = 8
SIZE = 64


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "collection"
    return synthesize_collection(out, sources=4, per_class=PER_CLASS, seed=3, image_size=SIZE)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".md"
    }


def _dark_purple_fraction(img: np.ndarray) -> float:
    """Share of nucleus-like pixels: dark, and blue at least as strong as green."""
    rgb = img.astype(np.float32)
    brightness = rgb.mean(axis=-1)
    return float(((brightness < 125) & (rgb[..., 2] >= rgb[..., 1])).mean())


def test_counts_per_source_and_class(synth_root, data_config):
    records = load_collection(synth_root, data_config, progress=False).records
    counts = records.groupby(["source", "label"]).size().to_dict()
    assert counts == {
        ("source_1", 0): PER_CLASS,
        ("source_1", 1): PER_CLASS,
        ("source_2", 0): PER_CLASS,
        ("source_2", 1): PER_CLASS,
        ("source_3", 0): PER_CLASS,
        ("source_3", 1): PER_CLASS,
        ("source_4", 0): PER_CLASS,  # the healthy-only source
    }
    assert (records["width"] == SIZE).all() and (records["height"] == SIZE).all()


def test_sources_use_different_file_formats(synth_root, data_config):
    records = load_collection(synth_root, data_config, progress=False).records
    formats = records.groupby("source")["format"].unique().map(lambda v: tuple(sorted(v)))
    assert formats.to_dict() == {
        "source_1": ("PNG",),
        "source_2": ("JPEG",),
        "source_3": ("BMP",),
        "source_4": ("TIFF",),
    }


def test_readme_describes_every_source(synth_root):
    text = (synth_root / "README.md").read_text()
    for name in ("source_1", "source_2", "source_3", "source_4"):
        assert name in text


def test_same_seed_same_bytes_different_seed_different(tmp_path, synth_root):
    again = synthesize_collection(
        tmp_path / "again", sources=4, per_class=PER_CLASS, seed=3, image_size=SIZE
    )
    other = synthesize_collection(
        tmp_path / "other", sources=4, per_class=PER_CLASS, seed=4, image_size=SIZE
    )
    reference = _files(synth_root)
    assert _files(again) == reference
    other_files = _files(other)
    assert other_files.keys() == reference.keys()
    assert all(other_files[k] != reference[k] for k in reference)


def test_sources_differ_in_mean_colour(synth_root):
    means = {}
    for source in ("source_1", "source_2", "source_3", "source_4"):
        images = [read_image(p) for p in sorted((synth_root / source / "healthy").iterdir())]
        means[source] = np.mean([img.reshape(-1, 3).mean(axis=0) for img in images], axis=0)
    names = sorted(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(means[a] - means[b]).max() > 5.0, (a, b, means[a], means[b])


def test_dark_purple_fraction_separates_classes_within_each_source(synth_root):
    for source in ("source_1", "source_2", "source_3"):
        healthy = [
            _dark_purple_fraction(read_image(p))
            for p in sorted((synth_root / source / "healthy").iterdir())
        ]
        leukemia = [
            _dark_purple_fraction(read_image(p))
            for p in sorted((synth_root / source / "leukemia").iterdir())
        ]
        # AUC of the feature: share of (leukaemia, healthy) pairs ranked the right way
        auc = np.mean([lk > h for lk in leukemia for h in healthy])
        assert auc >= 0.9, (source, auc)


def test_render_is_a_pure_function_of_the_generator():
    style = source_styles(1)[0]
    a = render_smear(np.random.default_rng([1, 2]), style, leukemia=True, image_size=48)
    b = render_smear(np.random.default_rng([1, 2]), style, leukemia=True, image_size=48)
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_extra_sources_get_their_own_styles():
    styles = source_styles(6, seed=0)
    assert [s.name for s in styles] == [f"source_{i}" for i in range(1, 7)]
    assert [s.healthy_only for s in styles] == [False, False, False, True, False, False]
    assert styles[4].hue_shift != styles[0].hue_shift


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize_collection(tmp_path, sources=1, per_class=1)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        synthesize_collection(tmp_path / "a", per_class=0)
    with pytest.raises(ValueError, match="sources"):
        synthesize_collection(tmp_path / "b", sources=0)


def test_overwrite_replaces_an_earlier_larger_collection(tmp_path):
    synthesize_collection(tmp_path, sources=4, per_class=1, image_size=32)
    (tmp_path / "notes.txt").write_text("kept")
    synthesize_collection(tmp_path, sources=2, per_class=2, image_size=32, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["source_1", "source_2"]
    assert len(list((tmp_path / "source_1" / "healthy").iterdir())) == 2
    assert (tmp_path / "notes.txt").read_text() == "kept"
