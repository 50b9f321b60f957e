"""Augmentation presets: shapes, ranges, training switch, Loey's operation grids, seeding,
ImageDataGenerator equivalence, per-example stateless seeds, scale jitter."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leukdx.data.augment import (  # noqa: E402
    LEUKNET_AFFINE,
    LoeyAugmentation,
    RandomAffine,
    RandomFlipRot90,
    RandomResizedCrop,
    apply_affine,
    apply_augmentation,
    build_augmentation,
    example_seeds,
    fit_augmentation,
    idg_affine_matrices,
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


NEW_PRESETS = ["stain", "leuknet_stain", "generalise", "randstainna"]
ALL_PRESETS = ["leuknet", "loey", *NEW_PRESETS]


def _build(preset, seed=1, strength=1.0, batch=None):
    aug = build_augmentation(preset, SIZE, seed=seed, strength=strength)
    if batch is not None:
        fit_augmentation(aug, batch.astype(np.uint8))  # RandStainNA needs statistics
    return aug


def test_registry_lists_presets_and_none_builds_nothing():
    assert {"leuknet", "loey", "none", *NEW_PRESETS} <= set(list_augmentations())
    assert build_augmentation("none", SIZE) is None


def test_config_accepts_exactly_the_registered_presets():
    from leukdx.config import CHOICES

    assert set(CHOICES["augment.preset"]) == set(list_augmentations())


def test_unknown_preset_error_names_the_choices():
    with pytest.raises(ValueError, match="augment.preset.*leuknet.*loey"):
        build_augmentation("mixup", SIZE)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_changes_pixels_but_keeps_shape_dtype_and_range(preset, batch):
    aug = _build(preset, batch=batch)
    out = np.asarray(aug(batch, training=True))
    assert out.shape == batch.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = [not np.allclose(out[i], batch[i]) for i in range(len(batch))]
    assert sum(changed) >= len(batch) - 1  # leuknet could, in theory, draw a near-identity


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_preset_is_identity_at_inference(preset, batch):
    aug = _build(preset, batch=batch)
    np.testing.assert_array_equal(np.asarray(aug(batch, training=False)), batch)


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_inside_a_model_predict_is_identity_and_survives_save_load(preset, batch, tmp_path):
    aug = _build(preset, batch=batch)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, aug(inputs))
    np.testing.assert_allclose(model.predict(batch, verbose=0), batch)
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(batch, verbose=0), batch)
    assert [type(x) for x in loaded.layers[-1].layers] == [type(x) for x in aug.layers]
    assert loaded.layers[-1].layers[-1].get_config() == aug.layers[-1].get_config()


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_same_seed_same_augmentation_different_seed_different(preset, batch):
    first = np.asarray(_build(preset, 7, batch=batch)(batch, training=True))
    again = np.asarray(_build(preset, 7, batch=batch)(batch, training=True))
    other = np.asarray(_build(preset, 8, batch=batch)(batch, training=True))
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


# --------------------------------------------------------------------------- per-example seeds


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_example_seeds_fix_each_images_transform_whatever_its_batch(preset, batch):
    aug = _build(preset, batch=batch)
    seeds = example_seeds(5, 0, range(len(batch)))
    whole = np.asarray(apply_augmentation(aug, batch, seeds))
    again = np.asarray(apply_augmentation(aug, batch, seeds))
    np.testing.assert_array_equal(whole, again)
    # the same image with the same seed pair, in another batch and position: same pixels
    reordered = [4, 1, 5]
    part = np.asarray(apply_augmentation(aug, batch[reordered], seeds[reordered]))
    np.testing.assert_allclose(part, whole[reordered], atol=1e-3)
    other = np.asarray(apply_augmentation(aug, batch, example_seeds(6, 0, range(len(batch)))))
    assert not np.allclose(other, whole, atol=1e-3)
    next_epoch = np.asarray(apply_augmentation(aug, batch, example_seeds(5, 1, range(6))))
    assert not np.allclose(next_epoch, whole, atol=1e-3)


def test_stateless_layers_do_not_touch_their_generator_when_given_seeds(batch):
    layer = RandomAffine(rotation_range=30, seed=0)
    state = np.asarray(layer.seed_generator.state.value).copy()
    layer(batch, training=True, seeds=example_seeds(0, 0, range(len(batch))))
    np.testing.assert_array_equal(np.asarray(layer.seed_generator.state.value), state)


def test_example_seeds_rejects_bad_indices():
    with pytest.raises(ValueError, match="indices"):
        example_seeds(0, 0, [-1])


def test_strength_zero_makes_stain_the_identity_and_scales_generalise(batch):
    seeds = example_seeds(3, 0, range(len(batch)))
    still = np.asarray(apply_augmentation(_build("stain", strength=0.0), batch, seeds))
    np.testing.assert_allclose(still, batch, atol=0.05)

    def change(strength):
        aug = _build("stain", strength=strength)
        return np.abs(np.asarray(apply_augmentation(aug, batch, seeds)) - batch).mean()

    assert 0.0 < change(0.5) < change(1.0) < change(2.0)
    with pytest.raises(ValueError, match="augment.strength"):
        build_augmentation("generalise", SIZE, strength=-1.0)


# --------------------------------------------------------------------------- ImageDataGenerator


def _grid_image(size: int = 48) -> np.ndarray:
    """A checkerboard with ramps: every shift, turn, shear and zoom changes it."""
    yy, xx = np.mgrid[0:size, 0:size]
    checker = ((yy // 6 + xx // 6) % 2) * 180.0 + 30.0
    return np.stack([checker, xx * 5.0, yy * 5.0], axis=-1).astype(np.float32)


@pytest.mark.parametrize(
    "params",
    [
        {"theta": 25.0},
        {"tx": 5.0, "ty": -7.0},
        {"shear": 20.0},
        {"zx": 0.8, "zy": 1.25},
        {"theta": 30.0, "tx": 4.0, "ty": -6.0, "shear": 15.0, "zx": 0.85, "zy": 1.15},
        {"theta": -20.0, "tx": 3.0, "zx": 1.1, "flip_horizontal": True, "flip_vertical": True},
    ],
)
def test_affine_map_equals_image_data_generator_apply_transform(params):
    from tf_keras.preprocessing.image import ImageDataGenerator

    img = _grid_image()
    expected = ImageDataGenerator(fill_mode="reflect").apply_transform(img, dict(params))
    tensors = {k: np.array([v]) for k, v in params.items()}
    ours = np.asarray(apply_affine(img[None], idg_affine_matrices(48, 48, **tensors)))[0]
    assert np.abs(expected - img).max() > 50  # the transform does something
    np.testing.assert_allclose(ours, expected, atol=0.01)


def test_random_affine_draws_ranges_like_the_generator():
    # Rotation only, large dot far from the centre: the angles RandomAffine draws are uniform
    # in +-rotation_range, like ImageDataGenerator.get_random_transform's.
    layer = RandomAffine(**{**LEUKNET_AFFINE, "horizontal_flip": False, "vertical_flip": False,
                            "width_shift_range": 0.0, "height_shift_range": 0.0,
                            "zoom_range": 0.0, "shear_range": 0.0})
    size, centre = 101, 50
    dots = np.repeat(_dot_image(size, centre, centre + 40), 60, axis=0)
    out = np.asarray(layer(dots, training=True, seeds=example_seeds(1, 0, range(60))))
    angles = []
    for o in out:
        y, x = _peak(o)
        angles.append(np.degrees(np.arctan2(-(y - centre), x - centre)))
    angles = np.array(angles)
    assert np.abs(angles).max() <= 42.0
    assert (angles > 20).any() and (angles < -20).any()


# --------------------------------------------------------------------------- scale jitter


def _gradient_energy(images: np.ndarray) -> np.ndarray:
    gy = np.diff(images, axis=1)[:, :, :-1]
    gx = np.diff(images, axis=2)[:, :-1, :]
    return np.sqrt(gx**2 + gy**2).mean(axis=(1, 2, 3))


def test_random_resized_crop_zoom_in_enlarges_and_zoom_out_shrinks_content():
    img = np.repeat(_grid_image(64)[None], 8, axis=0)
    seeds = example_seeds(2, 0, range(8))
    zoom_in = np.asarray(RandomResizedCrop(scale_range=(0.5, 0.5), aspect_jitter=0.0)(
        img, training=True, seeds=seeds))
    zoom_out = np.asarray(RandomResizedCrop(scale_range=(1.6, 1.6), aspect_jitter=0.0)(
        img, training=True, seeds=seeds))
    base = _gradient_energy(img)
    # a 2x enlargement halves the edges per pixel; shrinking crowds more edges in
    assert (_gradient_energy(zoom_in) < 0.7 * base).all()
    assert (_gradient_energy(zoom_out) > 1.2 * base).all()
    # checker squares of 6 px become 12 px: the crop is a window of the original, enlarged
    assert zoom_in.min() >= 0 and zoom_out.max() <= 255


def test_random_resized_crop_keeps_the_window_inside_the_image():
    # A 64 px image, window half its side: every output pixel comes from the image, so with a
    # constant fill of -1 nothing of the fill shows.
    img = np.repeat(_grid_image(64)[None], 12, axis=0)
    layer = RandomResizedCrop(scale_range=(0.5, 0.9), aspect_jitter=0.1, fill_mode="constant",
                              fill_value=0.0)
    out = np.asarray(layer(img + 10.0, training=True, seeds=example_seeds(4, 0, range(12))))
    assert out.min() >= 9.0


def test_random_resized_crop_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale_range"):
        RandomResizedCrop(scale_range=(0.0, 1.0))


def test_flip_rot90_gives_each_of_the_eight_exact_symmetries(batch):
    img = batch[:1]
    out = np.asarray(RandomFlipRot90()(np.repeat(img, 80, axis=0), training=True,
                                       seeds=example_seeds(0, 0, range(80))))
    candidates = []
    base = img[0]
    for k in range(4):
        rotated = np.rot90(base, k)
        candidates += [rotated, rotated[:, ::-1]]
    hits = [next(i for i, c in enumerate(candidates) if np.array_equal(o, c)) for o in out]
    assert set(hits) == set(range(8))


@pytest.mark.parametrize("height, width", [(48, 48), (40, 56)])
def test_fused_reflect_warp_equals_tensorflows_projective_transform(height, width):
    """The XLA warp behind ``fill_mode="reflect"`` (bilinear) samples exactly as
    ``ImageProjectiveTransformV3``, also far outside the image (several reflections)."""
    import tensorflow as tf

    rng = np.random.default_rng(height + width)
    images = rng.uniform(0, 255, (8, height, width, 3)).astype(np.float32)
    n = len(images)
    transforms = np.array(idg_affine_matrices(
        height, width,
        theta=rng.uniform(-180, 180, n), tx=rng.uniform(-90, 90, n),
        ty=rng.uniform(-90, 90, n), shear=rng.uniform(-30, 30, n),
        zx=rng.uniform(0.5, 3.5, n), zy=rng.uniform(0.5, 3.5, n),
        flip_horizontal=rng.uniform(size=n) < 0.5,
    ))
    transforms[0, 6:] = [1e-3, -2e-3]  # a projective (non-affine) map as well
    from leukdx.data.augment.geometry import _warp_bilinear_reflect

    def kernel(interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=[height, width],
            fill_value=0.0, interpolation=interpolation, fill_mode="REFLECT",
        ).numpy()

    fused = np.asarray(_warp_bilinear_reflect(images, transforms))
    np.testing.assert_allclose(fused, kernel("BILINEAR"), atol=0.05)
    # apply_affine takes the fused path for bilinear + reflect ...
    np.testing.assert_array_equal(np.asarray(apply_affine(images, transforms, "reflect")),
                                  np.clip(fused, 0, 255))
    # ... and TensorFlow's kernel for the other modes
    nearest = np.asarray(apply_affine(images, transforms, "reflect", interpolation="nearest"))
    np.testing.assert_array_equal(nearest, np.clip(kernel("NEAREST"), 0, 255))
