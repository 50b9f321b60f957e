"""Stain and colour augmentation: each layer's range, dtype and seeding, and on real smears
that it does what it claims (measured with scikit-image where it has the measure)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from leukdx.data.augment import (
    RandomBlurSharpen,
    RandomColorJitter,
    RandomGrayscale,
    RandomHEDJitter,
    RandomJPEGQuality,
    RandStainNA,
    build_augmentation,
    example_seeds,
    fit_augmentation,
    hed_jitter,
    lab_statistics,
    lab_to_rgb,
    rgb_to_hed,
    rgb_to_lab,
)

SIZE = 48
# skimage.color.rgb2hed divides natural-log optical density by -ln(1e-6)
SKIMAGE_OD_UNIT = -math.log(1e-6)


@pytest.fixture(scope="module")
def smooth_batch() -> np.ndarray:
    """Synthetic smear-like float32 images in [0, 255] (no real data needed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    imgs = np.empty((6, SIZE, SIZE, 3), np.float32)
    for i in range(6):
        cy, cx = rng.uniform(12, 36, 2)
        cell = ((yy - cy) ** 2 + (xx - cx) ** 2) < 100
        imgs[i] = np.array([230, 200, 215], np.float32)
        imgs[i][cell] = np.array([110, 60, 150], np.float32)
    imgs += rng.normal(0, 8, imgs.shape).astype(np.float32)
    return np.clip(imgs, 0, 255)


@pytest.fixture(scope="module")
def real_images(shared_data: Path) -> np.ndarray:
    """Three images of every real source (stretched to 64 px), uint8 (N, 64, 64, 3)."""
    from leukdx.data.decode import load_image

    if not shared_data.is_dir():
        pytest.skip(f"real data folder {shared_data} not found")
    paths = []
    for source in sorted(p for p in shared_data.iterdir() if p.is_dir()):
        files = sorted(f for f in source.rglob("*") if f.suffix.lower() in
                       {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
        paths += files[:: max(1, len(files) // 3)][:3]
    assert len(paths) >= 15
    return np.stack([load_image(p, 64) for p in paths])


LAYERS = {
    "hed": lambda: RandomHEDJitter(scale=0.1, bias=0.1),
    "colour": lambda: RandomColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
    "grayscale": lambda: RandomGrayscale(probability=0.5),
    "blur_sharpen": lambda: RandomBlurSharpen(probability=1.0),
    "jpeg": lambda: RandomJPEGQuality(quality_range=(20, 60), probability=1.0),
    "randstainna": lambda: RandStainNA(statistics={
        "mean_mean": [70.0, 10.0, -8.0], "mean_std": [6.0, 4.0, 4.0],
        "std_mean": [12.0, 8.0, 6.0], "std_std": [3.0, 2.0, 2.0]}),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_keeps_shape_dtype_range_and_is_seeded_per_example(name, smooth_batch):
    layer = LAYERS[name]()
    seeds = example_seeds(1, 0, range(len(smooth_batch)))
    out = np.asarray(layer(smooth_batch, training=True, seeds=seeds))
    assert out.shape == smooth_batch.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(
        out, np.asarray(layer(smooth_batch, training=True, seeds=seeds))
    )
    other = np.asarray(layer(smooth_batch, training=True, seeds=example_seeds(2, 0, range(6))))
    assert not np.array_equal(out, other)
    np.testing.assert_array_equal(np.asarray(layer(smooth_batch, training=False)), smooth_batch)
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_layers_reject_bad_settings():
    with pytest.raises(ValueError, match="probability"):
        RandomGrayscale(probability=1.5)
    with pytest.raises(ValueError, match="quality_range"):
        RandomJPEGQuality(quality_range=(0, 50))
    with pytest.raises(ValueError, match="hue"):
        RandomColorJitter(hue=0.7)
    with pytest.raises(ValueError, match="lab_statistics"):
        RandStainNA(statistics={"mean_mean": [0, 0, 0]})


def test_unfitted_randstainna_says_how_to_fit_it(smooth_batch):
    with pytest.raises(ValueError, match="fit_augmentation"):
        RandStainNA()(smooth_batch, training=True)


# --------------------------------------------------------------------------- on real smears


@pytest.mark.real_data
def test_hed_conversion_matches_skimage_rgb2hed_and_hed2rgb(real_images):
    from skimage.color import hed2rgb, rgb2hed

    x = real_images.astype(np.float32)
    ours = np.asarray(rgb_to_hed(x))
    theirs = np.stack([rgb2hed(img) for img in real_images]) * SKIMAGE_OD_UNIT
    np.testing.assert_allclose(np.maximum(ours, 0.0), theirs, atol=1e-3)
    # back again: skimage's hed2rgb of its own (clipped) stains vs ours of the same stains
    back = np.stack([hed2rgb(h / SKIMAGE_OD_UNIT) for h in theirs]) * 255.0
    from leukdx.data.augment import hed_to_rgb

    np.testing.assert_allclose(np.asarray(hed_to_rgb(theirs)), back, atol=0.05)


@pytest.mark.real_data
def test_hed_jitter_identity_setting_reproduces_the_input(real_images):
    x = real_images.astype(np.float32)
    layer = RandomHEDJitter(scale=0.0, bias=0.0)
    out = np.asarray(layer(x, training=True, seeds=example_seeds(0, 0, range(len(x)))))
    np.testing.assert_allclose(out, x, atol=0.05)


@pytest.mark.real_data
def test_hed_jitter_equals_skimage_pipeline_and_moves_stains_as_asked(real_images):
    from skimage.color import hed2rgb, rgb2hed

    x = real_images.astype(np.float32)
    n = len(x)
    alpha = np.tile([1.3, 0.8, 1.0], (n, 1)).astype(np.float32)
    beta = np.tile([0.0, 0.0, 0.05], (n, 1)).astype(np.float32)
    ours = np.asarray(hed_jitter(x, alpha, beta))
    # Reference: skimage's stains (natural OD), scaled and shifted, skimage back to RGB.
    # skimage clips negative stains at 0, so compare where no stain of the input is negative.
    hed = np.stack([rgb2hed(img) for img in real_images]) * SKIMAGE_OD_UNIT
    ref = np.stack([hed2rgb((h * alpha[0] + beta[0]) / SKIMAGE_OD_UNIT) for h in hed]) * 255
    unclipped = (np.asarray(rgb_to_hed(x)) > 0).all(axis=-1)
    assert unclipped.mean() > 0.2
    np.testing.assert_allclose(ours[unclipped], ref[unclipped], atol=0.1)
    # measured by skimage: more haematoxylin, less eosin in every image
    before = np.stack([rgb2hed(img / 255.0) for img in x]).mean(axis=(1, 2))
    after = np.stack([rgb2hed(img / 255.0) for img in ours]).mean(axis=(1, 2))
    assert (after[:, 0] > before[:, 0]).all()
    assert (after[:, 1] < before[:, 1]).all()


@pytest.mark.real_data
def test_random_hed_jitter_changes_stain_densities_within_its_range(real_images):
    from skimage.color import rgb2hed

    x = np.repeat(real_images[:6].astype(np.float32), 10, axis=0)
    layer = RandomHEDJitter(scale=0.1, bias=0.0)
    out = np.asarray(layer(x, training=True, seeds=example_seeds(3, 0, range(len(x)))))
    h_before = np.array([rgb2hed(img / 255.0)[..., 0].mean() for img in x])
    h_after = np.array([rgb2hed(img / 255.0)[..., 0].mean() for img in out])
    ratio = h_after / h_before
    assert ratio.min() > 0.85 and ratio.max() < 1.15  # +-10 % (plus rounding near 0)
    assert ratio.std() > 0.02  # and it does vary


@pytest.mark.real_data
def test_grayscale_has_equal_channels_at_the_asked_rate(real_images):
    x = np.repeat(real_images.astype(np.float32), 10, axis=0)
    out = np.asarray(RandomGrayscale(probability=0.2)(
        x, training=True, seeds=example_seeds(0, 0, range(len(x)))))
    grey = np.array([np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2])
                     for o in out])
    unchanged = np.array([np.array_equal(o, i) for o, i in zip(out, x)])
    assert (grey | unchanged).all()
    assert 0.1 < grey.mean() < 0.3


def _high_frequency_energy(images: np.ndarray) -> np.ndarray:
    lap = (4 * images[:, 1:-1, 1:-1] - images[:, :-2, 1:-1] - images[:, 2:, 1:-1]
           - images[:, 1:-1, :-2] - images[:, 1:-1, 2:])
    return (lap**2).mean(axis=(1, 2, 3))


@pytest.mark.real_data
def test_blur_lowers_and_sharpening_raises_high_frequency_energy(real_images):
    x = real_images.astype(np.float32)
    seeds = example_seeds(0, 0, range(len(x)))
    blurred = np.asarray(RandomBlurSharpen(blur=1.0, sharpen=0.0, probability=1.0)(
        x, training=True, seeds=seeds))
    sharpened = np.asarray(RandomBlurSharpen(blur=0.0, sharpen=1.0, probability=1.0)(
        x, training=True, seeds=seeds))
    base = _high_frequency_energy(x)
    assert (_high_frequency_energy(blurred) < base).all()
    assert (_high_frequency_energy(sharpened) > base).all()


@pytest.mark.real_data
def test_jpeg_noise_changes_pixels_but_keeps_the_mean(real_images):
    x = real_images.astype(np.float32)
    out = np.asarray(RandomJPEGQuality(quality_range=(20, 20), probability=1.0)(
        x, training=True, seeds=example_seeds(0, 0, range(len(x)))))
    assert (np.abs(out - x).mean(axis=(1, 2, 3)) > 0.5).all()
    # a few grey levels at most (JPEG's chroma subsampling darkens bright fields slightly)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=0.015)


@pytest.mark.real_data
def test_colour_jitter_brightness_scales_the_mean_within_range(real_images):
    x = np.repeat(real_images[:5].astype(np.float32), 8, axis=0)
    layer = RandomColorJitter(brightness=0.2, contrast=0.0, saturation=0.0, hue=0.0)
    out = np.asarray(layer(x, training=True, seeds=example_seeds(0, 0, range(len(x)))))
    ratio = out.mean(axis=(1, 2, 3)) / x.mean(axis=(1, 2, 3))
    assert ratio.min() >= 0.79 and ratio.max() <= 1.2
    assert ratio.std() > 0.03


@pytest.mark.real_data
def test_colour_jitter_saturation_and_hue_change_hsv_as_asked(real_images):
    import tensorflow as tf

    x = real_images.astype(np.float32)
    seeds = example_seeds(0, 0, range(len(x)))
    hsv = tf.image.rgb_to_hsv(x / 255.0).numpy()
    sat = RandomColorJitter(brightness=0.0, contrast=0.0, saturation=0.3, hue=0.0)
    s_out = tf.image.rgb_to_hsv(np.asarray(sat(x, training=True, seeds=seeds)) / 255.0).numpy()
    s_ratio = s_out[..., 1].mean(axis=(1, 2)) / hsv[..., 1].mean(axis=(1, 2))
    assert s_ratio.min() > 0.6 and s_ratio.max() < 1.4 and s_ratio.std() > 0.05
    hue = RandomColorJitter(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.1)
    h_out = tf.image.rgb_to_hsv(np.asarray(hue(x, training=True, seeds=seeds)) / 255.0).numpy()
    turned_rgb = np.asarray(hue(x, training=True, seeds=seeds))
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    unclipped = ((turned_rgb > 0.5) & (turned_rgb < 254.5)).all(axis=-1)
    np.testing.assert_allclose((turned_rgb @ luma)[unclipped], (x @ luma)[unclipped], atol=0.5)
    coloured = hsv[..., 1] > 0.15  # hue is meaningful only where there is colour
    turned = np.abs(np.angle(np.exp(2j * np.pi * (h_out[..., 0] - hsv[..., 0]))))[coloured]
    assert np.median(turned) > 0.01 and np.percentile(turned, 90) <= 2 * np.pi * 0.1 + 0.1


@pytest.mark.real_data
def test_lab_conversion_matches_skimage(real_images):
    from skimage.color import rgb2lab

    x = real_images.astype(np.float32)
    ours = np.asarray(rgb_to_lab(x))
    theirs = np.stack([rgb2lab(img) for img in real_images])
    np.testing.assert_allclose(ours, theirs, atol=0.05)
    np.testing.assert_allclose(np.asarray(lab_to_rgb(ours)), x, atol=0.1)


@pytest.mark.real_data
def test_randstainna_draws_styles_from_the_training_statistics(real_images):
    from skimage.color import rgb2lab

    stats = lab_statistics(real_images)
    assert set(stats) == {"mean_mean", "mean_std", "std_mean", "std_std"}
    x = np.repeat(real_images.astype(np.float32), 4, axis=0)
    seeds = example_seeds(0, 0, range(len(x)))
    # spread 0: every image gets the mean style
    flat = np.asarray(RandStainNA(statistics=stats, spread=0.0)(x, training=True, seeds=seeds))
    lab_means = np.stack([rgb2lab(img / 255.0).reshape(-1, 3).mean(axis=0) for img in flat])
    np.testing.assert_allclose(lab_means.mean(axis=0), stats["mean_mean"], atol=3.0)
    assert (lab_means.std(axis=0) < 0.5 * np.array(stats["mean_std"])).all()
    # spread 1: the image means spread about as much as the sources' do
    varied = np.asarray(RandStainNA(statistics=stats)(x, training=True, seeds=seeds))
    spread = np.stack([rgb2lab(img / 255.0).reshape(-1, 3).mean(axis=0)
                       for img in varied]).std(axis=0)
    assert (spread > 0.5 * np.array(stats["mean_std"])).all()


@pytest.mark.real_data
def test_randstainna_preset_is_fitted_on_the_fold_training_images_only(real_images):
    from leukdx.data.pipeline import make_dataset

    first, second = real_images[:8], real_images[-8:]
    aug = build_augmentation("randstainna", 64, seed=0)
    layer = aug.layers[-1]

    def fitted_to(images):
        expected = lab_statistics(images)
        return all(layer.statistics[k] == pytest.approx(expected[k]) for k in expected)

    make_dataset(first, np.zeros(8), batch_size=4, training=True, augmentation=aug)
    assert fitted_to(first) and not fitted_to(second)
    make_dataset(second, np.zeros(8), batch_size=4, training=True, augmentation=aug)
    assert fitted_to(second)
    make_dataset(first, np.zeros(8), batch_size=4, training=False, augmentation=aug)
    assert fitted_to(second)  # evaluation data never fits anything
    assert fit_augmentation(None, first) == 0
