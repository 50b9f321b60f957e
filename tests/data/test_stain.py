"""Tests of leukdx.data.stain: Reinhard and Macenko stain normalisation to training references."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2lab

from leukdx.data.stain import (
    StainReference,
    fit_stain_reference,
    normalize_fold,
    normalize_images,
)

# Two stain matrices (columns: basic/nuclear stain, acidic/eosin stain; optical density per RGB)
_STAINS_A = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
_STAINS_B = np.array([[0.45, 0.20], [0.80, 0.80], [0.40, 0.55]])


def _smear(rng: np.random.Generator, stains: np.ndarray, size: int = 48) -> np.ndarray:
    """A two-stain picture by Beer-Lambert: nuclei (stain 0) and cytoplasm blobs (stain 1)."""
    stains = stains / np.linalg.norm(stains, axis=0)
    yy, xx = np.mgrid[0:size, 0:size]
    conc = np.zeros((2, size, size))
    for channel, count, radius, amount in ((0, 6, (4, 9), (0.6, 1.2)), (1, 12, (3, 6), (0.3, 0.6))):
        for _ in range(count):
            cy, cx = rng.integers(0, size, 2)
            r = rng.uniform(*radius)
            conc[channel][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += rng.uniform(*amount)
    od = np.einsum("cs,shw->hwc", stains, conc)
    img = 240 * np.exp(-od) + rng.normal(0, 1, od.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _tinted(rng: np.random.Generator, n: int, tint, size: int = 32) -> np.ndarray:
    """``n`` noisy images around an RGB tint, with darker discs."""
    imgs = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.ones((size, size, 3)) * np.asarray(tint, float)
        cy, cx = rng.integers(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 40] *= 0.45
        imgs[i] = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return imgs


def _lab_mean(images: np.ndarray) -> np.ndarray:
    return rgb2lab(images).reshape(-1, 3).mean(axis=0)


# ----------------------------------------------------------------------------- Reinhard


def test_reinhard_to_own_reference_is_near_identity():
    img = _tinted(np.random.default_rng(0), 1, (220, 170, 200))[0]
    ref = fit_stain_reference(img[None], "reinhard")
    out = normalize_images(img, ref)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).max() <= 1


def test_reinhard_gives_every_image_the_reference_lab_statistics():
    rng = np.random.default_rng(1)
    train = _tinted(rng, 5, (230, 180, 210))
    other = _tinted(rng, 4, (170, 200, 240))
    ref = fit_stain_reference(train, "reinhard")
    out = normalize_images(other, ref)
    for img in out:
        lab = rgb2lab(img).reshape(-1, 3)
        np.testing.assert_allclose(lab.mean(axis=0), ref.values["lab_mean"], atol=1.0)
        np.testing.assert_allclose(lab.std(axis=0), ref.values["lab_std"], rtol=0.08, atol=0.5)
    before = np.linalg.norm(_lab_mean(other) - _lab_mean(train))
    after = np.linalg.norm(_lab_mean(out) - _lab_mean(train))
    assert after < 0.1 * before


def test_reinhard_agrees_with_torchstain():
    from torchstain.numpy.normalizers import NumpyReinhardNormalizer

    rng = np.random.default_rng(2)
    target, source = _smear(rng, _STAINS_A), _smear(rng, _STAINS_B)
    theirs = NumpyReinhardNormalizer()
    theirs.fit(target)
    expected = theirs.normalize(source)
    ours = normalize_images(source, fit_stain_reference(target[None], "reinhard"))
    # torchstain truncates to uint8 and uses OpenCV's LAB constants; a level or two apart
    assert np.abs(ours.astype(int) - expected).mean() < 1.0
    assert np.abs(ours.astype(int) - expected).max() <= 3


def test_reference_weights_each_source_equally_when_sources_are_given():
    rng = np.random.default_rng(3)
    many = _tinted(rng, 9, (230, 170, 200))
    one = _tinted(rng, 1, (160, 200, 240))
    images = np.concatenate([many, one])
    sources = ["big"] * 9 + ["small"]
    pooled = fit_stain_reference(images, "reinhard")
    balanced = fit_stain_reference(images, "reinhard", sources=sources)
    per_source = [fit_stain_reference(x, "reinhard").values["lab_mean"] for x in (many, one)]
    np.testing.assert_allclose(balanced.values["lab_mean"], np.mean(per_source, axis=0), atol=1e-6)
    assert not np.allclose(pooled.values["lab_mean"], balanced.values["lab_mean"], atol=0.5)
    assert balanced.sources == ("big", "small") and balanced.n_images == 10


# ----------------------------------------------------------------------------- Macenko


def test_macenko_to_own_reference_is_near_identity():
    img = _smear(np.random.default_rng(4), _STAINS_A)
    ref = fit_stain_reference(img[None], "macenko")
    out = normalize_images(img, ref)
    assert np.abs(out.astype(int) - img).mean() < 1.5


def test_macenko_reference_matches_torchstain_fit():
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    from leukdx.data.stain import _to_standard_white

    img = _smear(np.random.default_rng(5), _STAINS_A)
    ref = fit_stain_reference(img[None], "macenko")
    theirs = NumpyMacenkoNormalizer()
    theirs.fit(_to_standard_white(img))
    # one 48 x 48 image is below the pixel budget: every pixel is used, as torchstain does
    np.testing.assert_allclose(ref.values["stain_matrix"], theirs.HERef, atol=1e-9)
    np.testing.assert_allclose(ref.values["max_concentrations"], theirs.maxCRef, rtol=1e-9)


def test_macenko_keeps_a_blank_image_unchanged():
    rng = np.random.default_rng(6)
    ref = fit_stain_reference(np.stack([_smear(rng, _STAINS_A) for _ in range(2)]), "macenko")
    blank = np.full((1, 48, 48, 3), 250, np.uint8)
    blank[0, 0, 0] = 240
    smear = _smear(rng, _STAINS_B)[None]
    out = normalize_images(np.concatenate([blank, smear]), ref)
    np.testing.assert_array_equal(out[0], blank[0])
    assert not np.array_equal(out[1], smear[0])


def test_macenko_without_stained_training_pixels_is_a_clear_error():
    with pytest.raises(ValueError, match="stained pixels.*data.stain_normalize"):
        fit_stain_reference(np.full((2, 16, 16, 3), 250, np.uint8), "macenko")


# ----------------------------------------------------------------------------- folds


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_fold_reference_comes_from_training_images_only(method):
    rng = np.random.default_rng(7)
    train = np.stack([_smear(rng, _STAINS_A) for _ in range(3)])
    test_1 = np.stack([_smear(rng, _STAINS_B) for _ in range(2)])
    test_2 = 255 - test_1
    train_n, test_n, ref = normalize_fold(train, test_1, method, seed=3)
    _, _, ref_other_test = normalize_fold(train, test_2, method, seed=3)
    alone = fit_stain_reference(train, method, seed=3)
    assert ref.fingerprint == ref_other_test.fingerprint == alone.fingerprint
    with_test = fit_stain_reference(np.concatenate([train, test_1]), method, seed=3)
    assert with_test.fingerprint != ref.fingerprint
    np.testing.assert_array_equal(test_n, normalize_images(test_1, alone))
    np.testing.assert_array_equal(train_n, normalize_images(train, alone))


def test_fold_without_normalisation_returns_copies_and_no_reference():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    train, test, ref = normalize_fold(images, images, "none")
    assert ref is None and train is not images
    np.testing.assert_array_equal(train, images)


def test_workers_give_the_same_result():
    rng = np.random.default_rng(8)
    images = _tinted(rng, 70, (220, 180, 205), size=16)  # more than one chunk of 64
    ref = fit_stain_reference(images[:5], "reinhard")
    np.testing.assert_array_equal(
        normalize_images(images, ref, workers=1), normalize_images(images, ref, workers=2)
    )


def test_reference_round_trips_through_json(tmp_path):
    ref = fit_stain_reference(_smear(np.random.default_rng(9), _STAINS_A)[None], "macenko")
    loaded = StainReference.load(ref.save(tmp_path / "stain_reference.json"))
    assert loaded.fingerprint == ref.fingerprint and loaded.method == "macenko"


def test_bad_arguments_are_clear_errors():
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="'vahadane'.*data.stain_normalize"):
        fit_stain_reference(images, "vahadane")
    with pytest.raises(ValueError, match="zero images"):
        fit_stain_reference(images[:0], "reinhard")
    with pytest.raises(ValueError, match=r"uint8 RGB images of shape \(N, H, W, 3\)"):
        fit_stain_reference(images.astype(np.float32), "reinhard")
    with pytest.raises(ValueError, match="1 images but 2 source names"):
        fit_stain_reference(images, "reinhard", sources=["a", "b"])


# ----------------------------------------------------------------------------- real data


@pytest.mark.real_data
@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_real_reference_of_one_source_moves_another_towards_it(real_collection, method):
    from leukdx.data.pipeline import ImageCache

    records = real_collection.records
    cache = ImageCache(progress=False)

    def sample(source: str):
        rows = records[records["source"] == source]
        return cache.get(rows.iloc[:: max(1, len(rows) // 12)].iloc[:12], 64)

    source_a, source_b = sample("all_idb2"), sample("taleqani_all")
    ref = fit_stain_reference(source_a, method)
    moved = normalize_images(source_b, ref)
    before = np.linalg.norm(_lab_mean(source_b) - _lab_mean(source_a))
    after = np.linalg.norm(_lab_mean(moved) - _lab_mean(source_a))
    assert after < 0.6 * before, (before, after)
    # normalising a source to its own reference changes it far less than the other source
    own_change = np.abs(normalize_images(source_a, ref).astype(int) - source_a).mean()
    other_change = np.abs(moved.astype(int) - source_b).mean()
    assert own_change < 0.5 * other_change, (own_change, other_change)
