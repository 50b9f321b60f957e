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
