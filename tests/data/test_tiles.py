"""Tests of leukdx.data.tiles: centre crops, tile layout and tile-to-image aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukdx.data.tiles import (
    FoldImages,
    aggregate_tile_probs,
    center_crop,
    center_crop_box,
    tile_boxes,
    tile_count,
    tile_image,
)


@pytest.mark.parametrize(
    ("height", "width", "tile", "stride"),
    [(1944, 2592, 256, None), (1944, 2592, 257, 200), (100, 130, 40, 30), (64, 64, 64, None),
     (30, 200, 50, None), (257, 257, 100, 100)],
)
def test_tiles_cover_the_image_with_equal_squares_inside_it(height, width, tile, stride):
    boxes = tile_boxes(height, width, tile, stride)
    side = min(tile, height, width)
    covered = np.zeros((height, width), bool)
    for top, left, bottom, right in boxes:
        assert bottom - top == side and right - left == side
        assert 0 <= top and 0 <= left and bottom <= height and right <= width
        covered[top:bottom, left:right] = True
    assert covered.all()
    assert len(boxes) == tile_count(height, width, tile, stride)
    # rows and columns step by the stride except the last, which ends at the edge
    tops = sorted({int(b[0]) for b in boxes})
    step = stride or tile
    if side == tile and len(tops) > 2:
        assert all(b - a == step for a, b in zip(tops[:-2], tops[1:-1]))
    assert tops[-1] + side == height


def test_non_overlapping_tiles_of_an_all_idb1_field():
    boxes = tile_boxes(1944, 2592, 648)
    assert boxes.tolist()[:2] == [[0, 0, 648, 648], [0, 648, 648, 1296]]
    assert len(boxes) == 3 * 4


def test_tile_image_cuts_the_boxes_row_by_row():
    img = np.arange(50 * 70 * 3, dtype=np.int64).reshape(50, 70, 3)
    tiles = tile_image(img, 20, 15)
    boxes = tile_boxes(50, 70, 20, 15)
    assert tiles.shape == (len(boxes), 20, 20, 3)
    for tile, (top, left, bottom, right) in zip(tiles, boxes):
        np.testing.assert_array_equal(tile, img[top:bottom, left:right])


def test_bad_tile_settings_are_clear_errors():
    with pytest.raises(ValueError, match="data.tile.size_px"):
        tile_boxes(10, 10, 0)
    with pytest.raises(ValueError, match="data.tile.stride_px"):
        tile_boxes(10, 10, 4, 0)


def test_center_crop_keeps_the_central_share_of_each_side():
    assert center_crop_box(1944, 2592, 0.5) == (486, 648, 1458, 1944)
    assert center_crop_box(11, 11, 1.0) == (0, 0, 11, 11)
    img = np.arange(10 * 20).reshape(10, 20)
    crop = center_crop(img, 0.5)
    assert crop.shape == (5, 10)
    np.testing.assert_array_equal(crop, img[2:7, 5:15])
    assert center_crop_box(3, 3, 0.01) == (1, 1, 2, 2)  # never empty
    with pytest.raises(ValueError, match="data.crop_fraction"):
        center_crop_box(10, 10, 0.0)
    with pytest.raises(ValueError, match="data.crop_fraction"):
        center_crop_box(10, 10, 1.5)


# ----------------------------------------------------------------------------- aggregation


def _reference_aggregate(probs, owner, how, k):
    out = []
    for image in range(owner.max() + 1):
        mine = np.sort(probs[owner == image])[::-1]
        out.append({"mean": mine.mean(), "max": mine[0], "topk": mine[:k].mean()}[how])
    return np.asarray(out)


@pytest.mark.parametrize("how", ["mean", "max", "topk"])
def test_aggregation_gives_one_probability_per_image(how):
    rng = np.random.default_rng(0)
    owner = rng.permutation(np.repeat(np.arange(5), [1, 2, 3, 7, 4]))
    probs = rng.random(len(owner))
    got = aggregate_tile_probs(probs, owner, how, k=3)
    np.testing.assert_allclose(got, _reference_aggregate(probs, owner, how, 3))


def test_one_leukaemic_tile_decides_max_but_not_mean():
    owner = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.array([0.05, 0.1, 0.95, 0.1, 0.1, 0.1, 0.2, 0.1])
    np.testing.assert_allclose(aggregate_tile_probs(probs, owner, "max"), [0.95, 0.2])
    np.testing.assert_allclose(aggregate_tile_probs(probs, owner, "mean"), [0.3, 0.125])
    np.testing.assert_allclose(aggregate_tile_probs(probs, owner, "topk", k=2), [0.525, 0.15])


def test_aggregation_errors():
    with pytest.raises(ValueError, match="'median'.*data.tile.aggregate"):
        aggregate_tile_probs(np.ones(2), np.zeros(2), "median")
    with pytest.raises(ValueError, match=r"Image\(s\) \[1\] have no tiles"):
        aggregate_tile_probs(np.ones(2), np.array([0, 2]), "mean")
    with pytest.raises(ValueError, match="3 tile probabilities but 2 tile owners"):
        aggregate_tile_probs(np.ones(3), np.zeros(2), "mean")


def test_fold_images_put_tile_scores_back_on_their_records():
    test = np.zeros((3, 4, 4, 3), np.uint8)
    tiles = np.zeros((4, 4, 4, 3), np.uint8)
    fold = FoldImages(
        train=test, train_records=pd.DataFrame({"label": [0, 1, 0]}), test=test,
        tiles=tiles, tile_owner=np.array([0, 0, 2, 2]), aggregate="max",
    )
    assert fold.test_inputs.shape == (7, 4, 4, 3)
    assert fold.tiled.tolist() == [True, False, True]
    whole = [0.5, 0.6, 0.7]
    per_tile = [0.1, 0.9, 0.2, 0.3]
    np.testing.assert_allclose(fold.test_probabilities(whole + per_tile), [0.9, 0.6, 0.3])
    with pytest.raises(ValueError, match="Expected 7 probabilities"):
        fold.test_probabilities(whole)


# ----------------------------------------------------------------------------- settings


def test_crop_tile_and_stain_settings_are_validated():
    from leukdx.config import ConfigError, load_config

    cfg = load_config(overrides=["data.tile.sources=[all_idb1]", "data.tile.aggregate=topk",
                                 "data.stain_normalize=macenko", "data.crop=center"])
    assert cfg.data.tile.sources == ["all_idb1"] and cfg.data.tile.aggregate == "topk"
    assert cfg.data.tile.label_tiles is False and cfg.data.crop_fraction == 0.5
    for override, message in [
        ("data.tile.aggregate=median", "'data.tile.aggregate' is 'median'"),
        ("data.stain_normalize=vahadane", "'data.stain_normalize' is 'vahadane'"),
        ("data.crop=random", "'data.crop' is 'random'"),
        ("data.crop_fraction=1.5", "'data.crop_fraction' is 1.5"),
        ("data.tile.size_px=0", "'data.tile.size_px' must be at least 1"),
        ("data.tile.stride_px=0", "'data.tile.stride_px' must be at least 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(overrides=[override])
