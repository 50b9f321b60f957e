"""Tests of leukdx.data.pipeline: the image cache and the tf.data pipelines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from leukdx.data.decode import BadImageError, load_image
from leukdx.data.pipeline import ImageCache, dataset_from_records, make_dataset
from leukdx.data.records import load_collection


@pytest.fixture
def tiny_records(tiny_collection, data_config):
    return load_collection(tiny_collection, data_config, progress=False).records


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _pattern_images(n: int = 10, size: int = 8) -> np.ndarray:
    """Image i is filled with the value 10 * i, so a batch reveals which rows it holds."""
    return (
        np.arange(n, dtype=np.uint8)[:, None, None, None]
        * 10
        * np.ones((1, size, size, 3), np.uint8)
    )


def _rows(x: np.ndarray) -> list[int]:
    return (x[:, 0, 0, 0] / 10).round().astype(int).tolist()


# ----------------------------------------------------------------------------- ImageCache


def test_cache_returns_aligned_uint8_arrays(tiny_records):
    cache = ImageCache(workers=2, progress=False)
    images = cache.get(tiny_records, 32)
    assert images.shape == (len(tiny_records), 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], load_image(tiny_records.loc[3, "path"], 32))
    reversed_rows = cache.get(tiny_records.iloc[::-1], 32)
    np.testing.assert_array_equal(reversed_rows, images[::-1])


def test_cache_decodes_each_image_once_per_size_and_aspect(tiny_records):
    cache = ImageCache(workers=2, progress=False)
    cache.get(tiny_records, 32)
    assert cache.decode_count == len(tiny_records)
    cache.get(tiny_records, 32)
    cache.get(tiny_records.iloc[:5], 32)
    assert cache.decode_count == len(tiny_records)  # memory hits decode nothing
    cache.get(tiny_records.iloc[:5], 40)
    cache.get(tiny_records.iloc[:5], 32, aspect="pad")
    assert cache.decode_count == len(tiny_records) + 10


def test_identical_files_decode_once(tiny_records):
    doubled = tiny_records.iloc[[0, 0, 1, 1, 1]]
    cache = ImageCache(workers=1, progress=False)
    images = cache.get(doubled, 24)
    assert cache.decode_count == 2
    np.testing.assert_array_equal(images[0], images[1])


def test_disk_cache_survives_a_new_instance(tiny_records, tmp_path):
    disk = tmp_path / "images"
    first = ImageCache(disk_dir=disk, workers=2, progress=False)
    expected = first.get(tiny_records, 32, aspect="pad")
    files = sorted(p.name for p in disk.iterdir())
    assert len(files) == len(tiny_records)
    assert all(f.endswith("_32_pad.npy") for f in files)  # sha256_size_aspect.npy
    assert not any(f.startswith(".") for f in files)  # no temporary files left behind

    second = ImageCache(disk_dir=disk, workers=2, progress=False)
    np.testing.assert_array_equal(second.get(tiny_records, 32, aspect="pad"), expected)
    assert second.decode_count == 0 and second.disk_hits == len(tiny_records)
    second.get(tiny_records.iloc[:3], 32, aspect="stretch")
    assert second.decode_count == 3


def test_damaged_disk_cache_file_is_decoded_again(tiny_records, tmp_path):
    disk = tmp_path / "images"
    ImageCache(disk_dir=disk, progress=False).get(tiny_records.iloc[:1], 16)
    (victim,) = disk.iterdir()
    victim.write_bytes(b"garbage")
    cache = ImageCache(disk_dir=disk, progress=False)
    cache.get(tiny_records.iloc[:1], 16)
    assert cache.decode_count == 1
    assert np.load(victim).shape == (16, 16, 3)


def test_cache_from_config(tmp_path):
    from leukdx.config import DataConfig

    assert ImageCache.from_config(DataConfig(cache="memory")).disk_dir is None
    disk = ImageCache.from_config(DataConfig(cache="disk", cache_dir=str(tmp_path), workers=3))
    assert disk.disk_dir == tmp_path / "images" and disk.workers == 3


def test_cache_raises_bad_image_naming_the_file(tiny_records, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    rows = tiny_records.iloc[:2].copy()
    rows.loc[rows.index[1], ["path", "sha256"]] = [str(broken), "f" * 64]
    with pytest.raises(BadImageError, match="broken.png"):
        ImageCache(workers=2, progress=False).get(rows, 16)


def test_cache_converts_every_mode_to_rgb(tmp_path):
    import pandas as pd

    paths = []
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    for name, image in {
        "gray.png": Image.fromarray(gray, "L"),
        "rgba.png": Image.fromarray(np.dstack([gray] * 3 + [gray]), "RGBA"),
        "palette.gif": Image.fromarray(np.dstack([gray] * 3)).quantize(8),
        "cmyk.jpg": Image.new("CMYK", (32, 32), (0, 200, 200, 0)),
        "deep.tif": Image.fromarray(gray.astype(np.uint16) * 257),
    }.items():
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    records = pd.DataFrame({"path": paths})  # no sha256 column: the cache hashes the files
    images = ImageCache(progress=False).get(records, 16)
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8
    gray_out = images[0]
    np.testing.assert_array_equal(gray_out[..., 0], gray_out[..., 1])
    assert gray_out[:, 0, 0].max() < 20 and gray_out[:, -1, 0].min() > 230
    deep = images[4]
    assert np.abs(deep.astype(int) - gray_out.astype(int)).max() <= 1


# ------------------------------------------------------- ImageCache: crops, stain, tiles


def test_centre_crops_are_cached_apart_from_whole_images(tiny_records):
    cache = ImageCache(workers=2, progress=False)
    whole = cache.get(tiny_records, 32)
    cropped = cache.get(tiny_records, 32, crop_fraction=0.5)
    assert cache.decode_count == 2 * len(tiny_records)
    np.testing.assert_array_equal(
        cropped[2], load_image(tiny_records.loc[2, "path"], 32, crop_fraction=0.5)
    )
    assert not np.array_equal(cropped, whole)
    only_a = cache.get(tiny_records, 32, crop_fraction=0.5, crop_sources=["src_a"])
    is_a = (tiny_records["source"] == "src_a").to_numpy()
    np.testing.assert_array_equal(only_a[is_a], cropped[is_a])
    np.testing.assert_array_equal(only_a[~is_a], whole[~is_a])
    assert cache.decode_count == 2 * len(tiny_records)  # all served from memory


def test_stain_normalised_images_are_made_once_per_reference(tiny_records, tmp_path):
    from leukdx.data.stain import fit_stain_reference, normalize_images

    disk = tmp_path / "images"
    cache = ImageCache(disk_dir=disk, workers=2, progress=False)
    plain = cache.get(tiny_records, 32)
    is_a = (tiny_records["source"] == "src_a").to_numpy()
    ref_a = fit_stain_reference(plain[is_a], "reinhard")
    ref_b = fit_stain_reference(plain[~is_a], "reinhard")

    normalised = cache.get(tiny_records, 32, stain=ref_a)
    np.testing.assert_array_equal(normalised, normalize_images(plain, ref_a))
    assert cache.normalize_count == len(tiny_records)
    np.testing.assert_array_equal(cache.get(tiny_records.iloc[::-1], 32, stain=ref_a),
                                  normalised[::-1])
    assert cache.normalize_count == len(tiny_records)
    assert not np.array_equal(cache.get(tiny_records, 32, stain=ref_b), normalised)
    assert cache.normalize_count == 2 * len(tiny_records)
    assert cache.decode_count == len(tiny_records)  # normalising never decodes again
    assert any(f"_32_stretch_s{ref_a.fingerprint[:16]}.npy" in p.name for p in disk.iterdir())

    again = ImageCache(disk_dir=disk, workers=2, progress=False)
    np.testing.assert_array_equal(again.get(tiny_records, 32, stain=ref_a), normalised)
    assert again.normalize_count == 0 and again.decode_count == 0


def test_tiles_are_cached_with_their_owner(tiny_records):
    from leukdx.data.decode import load_tiles

    cache = ImageCache(workers=2, progress=False)
    rows = tiny_records.iloc[[1, 4, 9]]
    tiles, owner = cache.get_tiles(rows, 16, 24)  # 48 px images: 2 x 2 tiles each
    assert tiles.shape == (12, 16, 16, 3) and owner.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    np.testing.assert_array_equal(tiles[4:8], load_tiles(rows["path"].iloc[1], 16, 24))
    cache.get_tiles(rows, 16, 24)
    assert cache.decode_count == 3
    cache.get_tiles(rows, 16, 24, stride_px=12)  # another layout is another variant
    assert cache.decode_count == 6


def _fold_config(data_config, **changes):
    return dataclasses.replace(data_config, image_size=32, **changes)


def test_fold_stain_reference_sees_only_the_training_images(tiny_records, data_config):
    from leukdx.data.stain import fit_stain_reference, normalize_images

    cache = ImageCache(workers=2, progress=False)
    train = tiny_records[tiny_records["source"] != "src_c"]
    test = tiny_records[tiny_records["source"] == "src_c"]
    config = _fold_config(data_config, stain_normalize="reinhard")
    fold = cache.fold_images(train, test, config)
    expected = fit_stain_reference(cache.get(train, 32), "reinhard", sources=train["source"])
    assert fold.stain_reference.fingerprint == expected.fingerprint
    assert cache.fold_images(train, test.iloc[:3], config).stain_reference.fingerprint == (
        expected.fingerprint
    )
    np.testing.assert_array_equal(fold.test, normalize_images(cache.get(test, 32), expected))
    np.testing.assert_array_equal(fold.train, normalize_images(cache.get(train, 32), expected))
    assert len(fold.tiles) == 0 and fold.test_inputs.shape == fold.test.shape


def test_fold_tiles_test_images_of_tiled_sources_but_trains_on_whole_images(
    tiny_records, data_config
):
    from leukdx.config import TileConfig

    cache = ImageCache(workers=2, progress=False)
    train = tiny_records[tiny_records["source"] != "src_b"]
    test = tiny_records[tiny_records["source"] != "src_a"].reset_index(drop=True)
    config = _fold_config(data_config, tile=TileConfig(sources=["src_a", "src_b"], size_px=24,
                                                       aggregate="max"))
    fold = cache.fold_images(train, test, config)
    # the label rule: training keeps one whole image per record with its own label
    assert len(fold.train) == len(fold.train_records) == len(train)
    np.testing.assert_array_equal(fold.train, cache.get(train, 32))
    is_b = (test["source"] == "src_b").to_numpy()
    assert len(fold.tiles) == 4 * is_b.sum()
    assert set(fold.tile_owner.tolist()) == set(np.flatnonzero(is_b).tolist())
    scores = np.concatenate([np.full(len(test), 0.2), np.linspace(0, 1, len(fold.tiles))])
    per_record = fold.test_probabilities(scores)
    assert per_record.shape == (len(test),)
    assert (per_record[~is_b] == 0.2).all()
    last_b = np.flatnonzero(is_b)[-1]
    assert per_record[last_b] == 1.0  # max over that image's tiles


def test_fold_trains_on_labelled_tiles_only_when_asked(tiny_records, data_config):
    from leukdx.config import TileConfig

    cache = ImageCache(workers=2, progress=False)
    train = tiny_records[tiny_records["source"] != "src_c"]
    test = tiny_records[tiny_records["source"] == "src_c"]
    tile = TileConfig(sources=["src_a"], size_px=24, label_tiles=True)
    fold = cache.fold_images(train, test, _fold_config(data_config, tile=tile))
    n_a = int((train["source"] == "src_a").sum())
    assert len(fold.train) == len(fold.train_records) == len(train) - n_a + 4 * n_a
    tiles_rows = fold.train_records[fold.train_records["source"] == "src_a"]
    assert sorted(tiles_rows["tile"].unique().tolist()) == [0, 1, 2, 3]
    by_path = train.set_index("path")
    assert (tiles_rows["label"].to_numpy() == by_path.loc[tiles_rows["path"], "label"]).all()
    assert (tiles_rows["group"].to_numpy() == by_path.loc[tiles_rows["path"], "group"]).all()


@pytest.mark.real_data
def test_real_all_idb1_fields_tile_into_cell_sized_pieces(real_collection):
    from leukdx.data.tiles import tile_count

    records = real_collection.records
    fields = records[records["source"] == "all_idb1"].iloc[[0, -1]]
    cache = ImageCache(progress=False)
    tiles, owner = cache.get_tiles(fields, 32, 257)
    expected = [tile_count(h, w, 257) for h, w in zip(fields["height"], fields["width"])]
    assert np.bincount(owner).tolist() == expected and expected[0] == 11 * 8
    assert tiles.std() > 5


# ----------------------------------------------------------------------------- make_dataset


def test_evaluation_dataset_keeps_order_shapes_and_values():
    images = _pattern_images(10)
    labels = np.arange(10) % 2
    batches = _batches(make_dataset(images, labels, batch_size=4))
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and x.shape == (10, 8, 8, 3)
    assert y.dtype == np.float32 and y.shape == (10,)
    np.testing.assert_array_equal(x, images.astype(np.float32))
    np.testing.assert_array_equal(y, labels.astype(np.float32))
    assert 0.0 <= x.min() and x.max() <= 255.0


def test_images_only_dataset():
    images = _pattern_images(5)
    (x,) = list(make_dataset(images, None, batch_size=8))
    assert x.shape == (5, 8, 8, 3) and x.dtype.name == "float32"


def test_training_shuffle_is_seeded_and_labels_follow_images():
    images = _pattern_images(20)
    labels = np.arange(20, dtype=np.float32)  # label i belongs to image i

    def first_epoch(seed):
        x, y = zip(*_batches(make_dataset(images, labels, batch_size=6, training=True, seed=seed)))
        rows = _rows(np.concatenate(x))
        assert rows == np.concatenate(y).astype(int).tolist()
        return rows

    same_a, same_b, other = first_epoch(7), first_epoch(7), first_epoch(8)
    assert same_a == same_b
    assert same_a != other
    assert sorted(same_a) == list(range(20)) and same_a != list(range(20))


def test_each_iteration_reshuffles_and_expand_repeats_passes():
    images = _pattern_images(12)
    ds = make_dataset(images, np.zeros(12), batch_size=5, training=True, seed=3, expand=3)
    epoch1 = _rows(np.concatenate([x for x, _ in _batches(ds)]))
    epoch2 = _rows(np.concatenate([x for x, _ in _batches(ds)]))
    assert len(epoch1) == 36
    for epoch in (epoch1, epoch2):
        for p in range(3):  # every pass visits every image once, in its own order
            assert sorted(epoch[12 * p : 12 * (p + 1)]) == list(range(12))
    assert epoch1 != epoch2
    assert epoch1[:12] != epoch1[12:24]


def test_augmentation_changes_pixels_not_shapes():
    import keras

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    augmentation = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=1),
            keras.layers.RandomRotation(0.25, seed=2),
        ]
    )
    plain = _batches(make_dataset(images, np.ones(16), batch_size=16, training=True, seed=5))
    augmented = _batches(
        make_dataset(
            images, np.ones(16), batch_size=16, training=True, seed=5, augmentation=augmentation
        )
    )
    (xp, yp), (xa, ya) = plain[0], augmented[0]
    assert xa.shape == xp.shape == (16, 24, 24, 3) and xa.dtype == np.float32
    np.testing.assert_array_equal(ya, yp)
    assert np.abs(xa - xp).mean() > 5
    assert 0.0 <= xa.min() and xa.max() <= 255.0 + 1e-3
    # without training the augmentation is not applied
    evaluation = _batches(
        make_dataset(images, np.ones(16), batch_size=16, augmentation=augmentation)
    )
    np.testing.assert_array_equal(evaluation[0][0], images.astype(np.float32))


def test_make_dataset_rejects_bad_input():
    images = _pattern_images(4)
    with pytest.raises(ValueError, match="uint8"):
        make_dataset(images.astype(np.float32), None, batch_size=2)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        make_dataset(images, [0, 1, 0], batch_size=2)
    with pytest.raises(ValueError, match=r"\(N, S, S, 3\)"):
        make_dataset(images[..., 0], None, batch_size=2)


def test_epochs_and_folds_decode_nothing_after_the_first_get(tiny_records, data_config):
    config = dataclasses.replace(data_config, image_size=32, aspect="pad")
    cache = ImageCache(progress=False)
    ds = dataset_from_records(cache, tiny_records, config, batch_size=8, training=True, seed=0)
    assert cache.decode_count == len(tiny_records)
    for _ in range(2):  # two epochs
        n = sum(len(y) for _, y in ds)
        assert n == len(tiny_records)
    fold = tiny_records.iloc[::2]
    eval_ds = dataset_from_records(cache, fold, config, batch_size=8, training=False)
    x = np.concatenate([b.numpy() for b, _ in eval_ds])
    assert cache.decode_count == len(tiny_records)
    np.testing.assert_array_equal(x, cache.get(fold, 32, "pad").astype(np.float32))


@pytest.mark.real_data
def test_real_tiff_source_through_the_pipeline(real_collection):
    records = real_collection.records
    tiffs = records[records["source"] == "all_idb2"].iloc[:40]
    cache = ImageCache(progress=False)
    images = cache.get(tiffs, 32)
    assert images.shape == (40, 32, 32, 3) and images.std() > 5
    x, y = next(iter(make_dataset(images, tiffs["label"], batch_size=40)))
    assert x.shape == (40, 32, 32, 3)
    np.testing.assert_array_equal(y.numpy(), tiffs["label"].to_numpy(np.float32))


def test_data_layer_imports_without_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, leukdx.data, leukdx.data.inspect, leukdx.data.pipeline; "
        "sys.exit('tensorflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
