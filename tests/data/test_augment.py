"""Augmentation presets: shapes, ranges, training switch, Loey's operation grids, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")

from leukdx.data.augment import (  # noqa: E402
    LoeyAugmentation,
    RandomAffine,
    build_augmentation,
    list_augmentations,
    sample_pixel_shifts,
    sample_step_angles,
)

SIZE = 48


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    """Smooth, non-symmetric float32 images in [0, 255] (so any geometric change shows)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    base = np.stack([xx * 5.0, yy * 5.0, (xx + 2 * yy) * 1.7], axis=-1)
    imgs = base[None] + rng.uniform(0, 15, (6, SIZE, SIZE, 3))
    return np.clip(imgs, 0, 255).astype(np.float32)


def _dot_image(size: int, y: int, x: int) -> np.ndarray:
    img = np.zeros((1, size, size, 3), np.float32)
    img[0, y, x] = 255.0
    return img


def _peak(img: np.ndarray) -> tuple[int, int]:
    channel = np.asarray(img)[..., 0]
    return tuple(int(v) for v in np.unravel_index(np.argmax(channel), channel.shape))


def test_registry_lists_presets_and_none_builds_nothing():
    assert {"leuknet", "loey", "none"} <= set(list_augmentations())
    assert build_augmentation("none", SIZE) is None


def test_unknown_preset_error_names_the_choices():
    with pytest.raises(ValueError, match="augment.preset.*leuknet.*loey"):
        build_augmentation("mixup", SIZE)


@pytest.mark.parametrize("preset", ["leuknet", "loey"])
def test_preset_changes_pixels_but_keeps_shape_dtype_and_range(preset, batch):
    aug = build_augmentation(preset, SIZE, seed=1)
    out = np.asarray(aug(batch, training=True))
    assert out.shape == batch.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = [not np.allclose(out[i], batch[i]) for i in range(len(batch))]
    assert sum(changed) >= len(batch) - 1  # leuknet could, in theory, draw a near-identity


@pytest.mark.parametrize("preset", ["leuknet", "loey"])
def test_preset_is_identity_at_inference(preset, batch):
    aug = build_augmentation(preset, SIZE, seed=1)
    np.testing.assert_array_equal(np.asarray(aug(batch, training=False)), batch)


@pytest.mark.parametrize("preset", ["leuknet", "loey"])
def test_inside_a_model_predict_is_identity_and_survives_save_load(preset, batch, tmp_path):
    aug = build_augmentation(preset, SIZE, seed=1)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, aug(inputs))
    np.testing.assert_allclose(model.predict(batch, verbose=0), batch)
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), batch)
    assert type(loaded.layers[-1].layers[0]) is type(aug.layers[0])


@pytest.mark.parametrize("preset", ["leuknet", "loey"])
def test_same_seed_same_augmentation_different_seed_different(preset, batch):
    first = np.asarray(build_augmentation(preset, SIZE, seed=7)(batch, training=True))
    again = np.asarray(build_augmentation(preset, SIZE, seed=7)(batch, training=True))
    other = np.asarray(build_augmentation(preset, SIZE, seed=8)(batch, training=True))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_successive_calls_draw_new_transforms(batch):
    aug = build_augmentation("loey", SIZE, seed=3)
    a = np.asarray(aug(batch, training=True))
    b = np.asarray(aug(batch, training=True))
    assert not np.array_equal(a, b)


def test_works_inside_tf_data_map(batch):
    import tensorflow as tf

    aug = build_augmentation("leuknet", SIZE, seed=0)
    ds = tf.data.Dataset.from_tensor_slices(batch).batch(3).map(lambda x: aug(x, training=True))
    out = np.concatenate([b.numpy() for b in ds])
    assert out.shape == batch.shape
    assert not np.allclose(out, batch)


# --------------------------------------------------------------------------- Loey samplers


def test_rotation_angles_lie_on_the_five_degree_grid_and_cover_it():
    angles = np.asarray(sample_step_angles(4000, seed=11))
    magnitudes = np.abs(angles)
    grid = set(range(25, 126, 5))
    assert set(np.round(magnitudes).astype(int).tolist()) == grid  # every step occurs, no other
    np.testing.assert_array_equal(magnitudes, np.round(magnitudes))
    assert (angles > 0).mean() == pytest.approx(0.5, abs=0.05)  # left and right


@settings(max_examples=15, deadline=None)
@given(low=st.integers(0, 30), width=st.integers(0, 20), seed=st.integers(0, 2**20))
def test_pixel_shifts_are_whole_pixels_within_bounds(low, width, seed):
    shifts = np.asarray(sample_pixel_shifts(200, seed, low, low + width))
    magnitudes = np.abs(shifts)
    assert magnitudes.min() >= low and magnitudes.max() <= low + width
    np.testing.assert_array_equal(shifts, np.round(shifts))


def test_bad_rotation_grid_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        sample_step_angles(3, 0, 25, 127, 5)


# --------------------------------------------------------------------------- Loey geometry


def test_loey_translation_moves_content_by_15_to_25_pixels_on_each_axis():
    size, y0, x0 = 227, 113, 113  # the paper's frame: distances are exact pixels
    layer = LoeyAugmentation(operations=("translate",), seed=5)
    for _ in range(12):
        y, x = _peak(layer(_dot_image(size, y0, x0), training=True)[0])
        assert 15 <= abs(y - y0) <= 25
        assert 15 <= abs(x - x0) <= 25


def test_loey_translation_scales_with_image_size():
    size, y0, x0 = 454, 227, 227  # twice the reference size: twice the distance
    layer = LoeyAugmentation(operations=("translate",), seed=2)
    for _ in range(6):
        y, x = _peak(layer(_dot_image(size, y0, x0), training=True)[0])
        assert 30 <= abs(y - y0) <= 50 and 30 <= abs(x - x0) <= 50


def test_loey_mirror_is_an_exact_left_right_flip(batch):
    out = np.asarray(LoeyAugmentation(operations=("mirror",), seed=0)(batch, training=True))
    np.testing.assert_allclose(out, batch[:, :, ::-1], atol=1e-3)


def test_loey_rotation_turns_content_by_a_grid_angle():
    size, centre = 101, 50
    layer = LoeyAugmentation(operations=("rotate",), seed=9)
    for _ in range(10):
        y, x = _peak(layer(_dot_image(size, centre, centre + 40), training=True)[0])
        angle = np.degrees(np.arctan2(-(y - centre), x - centre))  # counter-clockwise on screen
        magnitude = abs(angle)
        assert 23 <= magnitude <= 127
        assert abs(magnitude - 5 * round(magnitude / 5)) <= 2.0  # near a 5-degree step


def test_loey_picks_one_operation_per_image(batch):
    # A mirrored output is an exact mirror (nothing else was applied to it); about a third of
    # the images are mirrored; no image comes out unchanged (identity is not an operation).
    layer = LoeyAugmentation(seed=4)
    out = np.asarray(layer(np.repeat(batch[:1], 30, axis=0), training=True))
    mirrored = [np.allclose(o, batch[0, :, ::-1], atol=1e-3) for o in out]
    assert 3 <= sum(mirrored) <= 20
    assert not any(np.allclose(o, batch[0], atol=1e-3) for o in out)
    others = out[~np.array(mirrored)]
    assert all(np.abs(o - batch[0, :, ::-1]).mean() > 5.0 for o in others)


def test_loey_rejects_unknown_operation():
    with pytest.raises(ValueError, match="subset"):
        LoeyAugmentation(operations=("shear",))


# --------------------------------------------------------------------------- LeukNet geometry


def test_random_affine_flip_only_gives_exact_mirrors(batch):
    layer = RandomAffine(horizontal_flip=True, seed=0)
    out = np.asarray(layer(np.repeat(batch[:1], 20, axis=0), training=True))
    same = [np.allclose(o, batch[0], atol=1e-3) for o in out]
    flipped = [np.allclose(o, batch[0, :, ::-1], atol=1e-3) for o in out]
    assert all(s or f for s, f in zip(same, flipped))
    assert 0 < sum(flipped) < 20


def test_random_affine_rotation_stays_within_range():
    size, centre = 101, 50
    layer = RandomAffine(rotation_range=40.0, seed=1)
    angles = []
    for _ in range(15):
        y, x = _peak(layer(_dot_image(size, centre, centre + 40), training=True)[0])
        angles.append(np.degrees(np.arctan2(-(y - centre), x - centre)))
    assert max(abs(a) for a in angles) <= 42.0
    assert max(abs(a) for a in angles) > 10.0  # it does rotate


def test_leuknet_reflect_fill_leaves_no_black_border(batch):
    out = np.asarray(build_augmentation("leuknet", SIZE, seed=2)(batch + 50.0, training=True))
    assert out.min() > 0.0  # reflection never introduces the zero fill Loey's preset uses
