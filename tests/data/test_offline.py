"""Offline augmentation export: counts, layout, manifests, and groups that splits respect."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import DataConfig
from leukdx.data.decode import read_image
from leukdx.data.offline import INDEX_FILE, export_augmented
from leukdx.data.records import load_collection
from leukdx.data.synth import synthesize_collection
from leukdx.evaluation.splits import kfold_splits

FACTOR = 3


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A synthetic collection (2 sources x 2 classes x 6 images) exported with Loey, factor 3."""
    base = tmp_path_factory.mktemp("offline")
    root = synthesize_collection(base / "collection", sources=2, per_class=6, seed=0, image_size=40)
    config = DataConfig(cache_dir=str(base / "cache"))
    original = load_collection(root, config, progress=False)
    out = export_augmented(
        root,
        base / "augmented",
        preset="loey",
        factor=FACTOR,
        seed=0,
        data_config=config,
        progress=False,
    )
    return original, out, config


def test_writes_factor_images_per_original_including_it(exported):
    original, out, config = exported
    augmented = load_collection(out, config, progress=False)
    assert len(augmented) == FACTOR * len(original)
    assert set(augmented.layouts.values()) == {"manifest"}
    before = original.records.groupby(["source", "label"]).size() * FACTOR
    after = augmented.records.groupby(["source", "label"]).size()
    pd.testing.assert_series_equal(before, after)


def test_copy_zero_is_the_original_and_others_are_augmented(exported):
    original, out, _ = exported
    index = pd.read_csv(out / INDEX_FILE)
    assert list(index.columns) == ["path", "label", "group", "source", "origin", "copy"]
    first = original.records.iloc[0]
    rows = index[index["origin"] == str(Path(first["path"]).absolute())].sort_values("copy")
    assert rows["copy"].tolist() == list(range(FACTOR))
    images = [read_image(out / p) for p in rows["path"]]
    np.testing.assert_array_equal(images[0], read_image(first["path"]))
    for img in images[1:]:
        assert img.shape == images[0].shape
        assert not np.array_equal(img, images[0])
    assert (rows["label"] == first["label"]).all() and (rows["source"] == first["source"]).all()


def test_per_source_manifests_point_at_existing_files(exported):
    _, out, _ = exported
    for source in ("source_1", "source_2"):
        manifest = pd.read_csv(out / source / "manifest.csv")
        assert list(manifest.columns) == ["path", "label", "group", "origin"]
        assert all((out / source / p).is_file() for p in manifest["path"])
        assert all(p.startswith("images/") for p in manifest["path"])


def test_copies_share_their_originals_group_and_kfold_never_separates_them(exported):
    original, out, config = exported
    records = load_collection(out, config, progress=False).records
    index = pd.read_csv(out / INDEX_FILE)
    origin_of = {str((out / p).absolute()): o for p, o in zip(index["path"], index["origin"])}
    origins = records["path"].map(origin_of)
    assert origins.notna().all()
    # one group per original family (originals here have no duplicates among themselves)
    assert records.groupby(origins)["group"].nunique().max() == 1
    assert records["group"].nunique() == original.records["group"].nunique()

    for split in kfold_splits(records["label"], records["group"], k=4, repeats=2, seed=1):
        train_origins = set(origins.iloc[split.train_idx])
        test_origins = set(origins.iloc[split.test_idx])
        assert not train_origins & test_origins, split


def test_same_seed_writes_identical_copies(exported, tmp_path):
    original, out, config = exported
    again = export_augmented(
        original.records,
        tmp_path / "again",
        preset="loey",
        factor=FACTOR,
        seed=0,
        data_config=config,
        progress=False,
    )
    index = pd.read_csv(out / INDEX_FILE)
    for rel in index["path"].head(6):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()


def test_image_size_resizes_before_augmenting(exported, tmp_path):
    original, _, config = exported
    out = export_augmented(
        original,
        tmp_path / "sized",
        preset="leuknet",
        factor=2,
        seed=1,
        data_config=config,
        image_size=32,
        progress=False,
    )
    index = pd.read_csv(out / INDEX_FILE)
    assert len(index) == 2 * len(original)
    assert all(read_image(out / p).shape == (32, 32, 3) for p in index["path"].head(4))


def test_refuses_non_empty_output_and_bad_factor(exported, tmp_path):
    original, out, config = exported
    with pytest.raises(FileExistsError, match="not empty"):
        export_augmented(original, out, data_config=config, progress=False)
    with pytest.raises(ValueError, match="factor"):
        export_augmented(original, tmp_path / "x", factor=0, data_config=config, progress=False)


def test_refuses_output_inside_or_around_the_input_collection(exported):
    original, _, config = exported
    for out in (original.root / "source_1" / "augmented", original.root.parent):
        with pytest.raises(ValueError, match="outside"):
            export_augmented(original, out, data_config=config, progress=False)
    assert not (original.root / "source_1" / "augmented").exists()


def test_records_without_groups_make_one_group_per_original(exported, tmp_path):
    original, _, config = exported
    plain = original.records[["path", "label", "source"]].head(4)
    out = export_augmented(plain, tmp_path / "plain", preset="loey", factor=2, seed=0,
                           data_config=config, progress=False)
    records = load_collection(out, config, progress=False).records
    assert len(records) == 8
    assert records["group"].nunique() == 4
    assert (records.groupby("group").size() == 2).all()


def test_rejects_labels_other_than_zero_and_one(exported, tmp_path):
    original, _, config = exported
    bad = original.records[["path", "label", "source"]].head(2).assign(label=[0, 2])
    with pytest.raises(ValueError, match="Labels"):
        export_augmented(bad, tmp_path / "bad", data_config=config, progress=False)


# --------------------------------------------------------------------------- distinct copies


def _symmetric_collection(root: Path, size: int = 24, suffix: str = ".png") -> Path:
    """Two left-right symmetric images per class: a mirror reproduces them exactly."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for cls in ("healthy", "leukemia"):
        folder = root / "src" / cls
        folder.mkdir(parents=True)
        for i in range(2):
            half = rng.integers(0, 256, (size, size // 2, 3), dtype=np.uint8)
            Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(
                folder / f"{cls}_{i}{suffix}")
    return root


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_copy_repeats_its_original_or_another_copy(tmp_path):
    root = _symmetric_collection(tmp_path / "collection")
    config = DataConfig(cache_dir=str(tmp_path / "cache"), near_duplicate_distance=-1)
    out = export_augmented(root, tmp_path / "out", preset="loey", factor=8, seed=0,
                           data_config=config, progress=False)
    index = pd.read_csv(out / INDEX_FILE)
    assert len(index) == 4 * 8
    for _, family in index.groupby("origin"):
        files = [out / p for p in family["path"]]
        assert len({_sha256(f) for f in files}) == len(files)
        pixels = {read_image(f).tobytes() for f in files}
        assert len(pixels) == len(files)  # not even a re-encoded duplicate


def test_a_preset_that_can_only_repeat_the_image_is_a_clear_error(tmp_path):
    import keras

    from leukdx.data.augment import RandomAffine, list_augmentations, register_augmentation

    if "test_mirror_only" not in list_augmentations():
        @register_augmentation("test_mirror_only")
        def _mirror_only(image_size, seed):
            return keras.Sequential([RandomAffine(horizontal_flip=True, seed=seed)])

    root = _symmetric_collection(tmp_path / "collection")
    with pytest.raises(ValueError, match="distinct augmented copies.*--factor"):
        export_augmented(root, tmp_path / "out", preset="test_mirror_only", factor=3,
                         data_config=DataConfig(cache_dir=str(tmp_path / "c")), progress=False)


# --------------------------------------------------------------------------- formats and sizes


def test_jpeg_sources_stay_jpeg_and_the_original_is_copied_byte_for_byte(tmp_path):
    root = _symmetric_collection(tmp_path / "collection", size=40, suffix=".jpg")
    config = DataConfig(cache_dir=str(tmp_path / "cache"))
    out = export_augmented(root, tmp_path / "out", preset="leuknet", factor=2, seed=0,
                           data_config=config, progress=False)
    index = pd.read_csv(out / INDEX_FILE)
    assert all(p.endswith(".jpg") for p in index["path"])
    for origin, path in zip(index["origin"], index["path"]):
        with Image.open(out / path) as image:
            assert image.format == "JPEG"
        if path.endswith("__aug0.jpg"):
            assert (out / path).read_bytes() == Path(origin).read_bytes()
    assert len(load_collection(out, config, progress=False)) == len(index)


@pytest.mark.parametrize(("image_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_chosen_format_and_max_size(tmp_path, image_format, pil_format):
    root = tmp_path / "collection" / "src" / "healthy"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)).save(root / "a.bmp")
    out = export_augmented(tmp_path / "collection", tmp_path / "out", preset="stain", factor=3,
                           image_format=image_format, max_size=50, progress=False,
                           data_config=DataConfig(cache_dir=str(tmp_path / "cache")))
    index = pd.read_csv(out / INDEX_FILE)
    assert len(index) == 3
    for path in index["path"]:
        with Image.open(out / path) as image:
            assert image.format == pil_format
            assert image.size == (50, 30)  # longer side 50, aspect kept


def test_bad_format_and_max_size_are_rejected(exported, tmp_path):
    original, _, config = exported
    with pytest.raises(ValueError, match="--format"):
        export_augmented(original, tmp_path / "a", image_format="gif", data_config=config,
                         progress=False)
    with pytest.raises(ValueError, match="--max-size"):
        export_augmented(original, tmp_path / "b", max_size=0, data_config=config,
                         progress=False)


def test_progress_bar_shows_when_stderr_is_not_a_terminal(exported, tmp_path, capsys):
    original, _, config = exported
    export_augmented(original.records.head(2), tmp_path / "p", preset="loey", factor=2,
                     data_config=config, progress=True)
    assert "Augmenting (loey x2)" in capsys.readouterr().err


def test_cli_passes_format_max_size_and_strength(tmp_path):
    from leukdx.cli import main

    root = _symmetric_collection(tmp_path / "collection", size=40)
    out = tmp_path / "out"
    assert main(["data", "augment", str(out), "--root", str(root), "--preset", "stain",
                 "--factor", "2", "--format", "jpeg", "--max-size", "20",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}",
                 "--set", "augment.strength=0.5"]) == 0
    index = pd.read_csv(out / INDEX_FILE)
    assert len(index) == 8 and all(p.endswith(".jpg") for p in index["path"])
    assert all(read_image(out / p).shape == (20, 20, 3) for p in index["path"])
    assert "strength=0.5" in (out / "README.md").read_text()
