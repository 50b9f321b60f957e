"""Tests of leukdx.features.morphology: nuclear measurements that cancel the source's scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import ConfigError, load_config, replace, validate_config
from leukdx.data.decode import BadImageError
from leukdx.features.extract import extract_features
from leukdx.features.morphology import (
    FEATURE_NAMES,
    image_morphology,
    morphology_features,
    nucleus_shape_and_chromatin,
    red_cell_diameter,
)

BACKGROUND = np.array([232, 226, 236], np.float32)
RED_CELL = np.array([214, 150, 160], np.float32)
PALLOR = np.array([226, 196, 204], np.float32)
NUCLEUS = np.array([92, 48, 140], np.float32)
CYTOPLASM = np.array([190, 190, 228], np.float32)
FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _disk(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def smear(size: int = 256, rbc: float = 28.0, nucleus: float = 40.0, *, lobed: bool = False,
          speckle: float = 0.0, seed: int = 0) -> np.ndarray:
    """A blood-smear-like image: a lattice of red cells with pale centres (diameter ``rbc``)
    around one white cell at the centre whose nucleus has diameter ``nucleus`` (three joined
    lobes with ``lobed``), chromatin speckled by ``speckle`` (0-1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.broadcast_to(BACKGROUND, (size, size, 3)).copy()
    c = size / 2
    white_r = nucleus * 0.8
    step = rbc * 1.15
    for cy in np.arange(rbc / 2, size, step):
        for cx in np.arange(rbc / 2, size, step):
            jy, jx = rng.uniform(-1.5, 1.5, 2)
            if math.hypot(cy - c, cx - c) < white_r + rbc * 0.6:
                continue
            img[_disk(yy, xx, cy + jy, cx + jx, rbc / 2)] = RED_CELL
            img[_disk(yy, xx, cy + jy, cx + jx, rbc / 6)] = PALLOR
    img[_disk(yy, xx, c, c, white_r)] = CYTOPLASM
    if lobed:  # three lobes joined by thin chromatin bridges, like a neutrophil's
        lobe_r = nucleus / 4.2
        mask = np.zeros((size, size), bool)
        for angle in (0.0, 2.1, 4.2):
            ly, lx = c + nucleus / 3 * math.sin(angle), c + nucleus / 3 * math.cos(angle)
            mask |= _disk(yy, xx, ly, lx, lobe_r)
            for t in np.linspace(0.0, 1.0, 40):
                mask |= _disk(yy, xx, c + t * (ly - c), c + t * (lx - c), 1.5)
    else:
        mask = _disk(yy, xx, c, c, nucleus / 2)
    shade = 1.0 + speckle * rng.choice([-0.55, 0.45], size=(size, size))
    img[mask] = np.clip(NUCLEUS * shade[mask, None], 0, 255)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((round(w * factor), round(h * factor)),
                                                   Image.Resampling.BILINEAR))


def test_red_cell_diameter_is_the_drawn_one_and_scales_with_the_image():
    img = smear(rbc=28.0)
    no_nuclei = np.zeros(img.shape[:2], bool)
    assert red_cell_diameter(img, no_nuclei) == pytest.approx(28.0, rel=0.15)
    assert red_cell_diameter(_resize(img, 0.5), np.zeros((128, 128), bool)) == pytest.approx(
        14.0, rel=0.2)


def test_red_cell_diameter_is_nan_without_red_cells():
    blank = np.full((96, 96, 3), 230, np.uint8)
    assert math.isnan(red_cell_diameter(blank, np.zeros((96, 96), bool)))


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_features_do_not_depend_on_magnification(factor):
    """The same cell photographed at another magnification gives the same measurements: the
    nucleus is measured against the image's own red cells, shape and chromatin at a fixed
    number of pixels per nucleus diameter."""
    img = smear(rbc=26.0, nucleus=44.0)
    base = morphology_features(img)
    other = morphology_features(_resize(img, factor))
    assert np.isfinite(base).all() and np.isfinite(other).all()
    assert other[FEATURE["nucleus_to_rbc"]] == pytest.approx(base[FEATURE["nucleus_to_rbc"]],
                                                             abs=0.15)
    for name in ("circularity", "solidity", "lobes", "rim_stained"):
        assert other[FEATURE[name]] == pytest.approx(base[FEATURE[name]], abs=0.1), name
    # near 0 the eccentricity moves like the square root of the pixel noise
    assert other[FEATURE["eccentricity"]] == pytest.approx(base[FEATURE["eccentricity"]],
                                                           abs=0.2)


def test_nucleus_to_rbc_tracks_the_true_size_ratio():
    small = morphology_features(smear(rbc=30.0, nucleus=27.0))  # a small lymphocyte
    large = morphology_features(smear(rbc=30.0, nucleus=54.0))  # a blast
    for values, ratio in ((small, 27.0 / 30.0), (large, 54.0 / 30.0)):
        assert values[FEATURE["nucleus_to_rbc"]] == pytest.approx(math.log(ratio), abs=0.2)


def test_a_lobed_nucleus_has_lobes_and_low_solidity_a_round_one_not():
    round_ = morphology_features(smear(nucleus=48.0))
    lobed = morphology_features(smear(nucleus=48.0, lobed=True))
    assert round_[FEATURE["lobes"]] == 1 and lobed[FEATURE["lobes"]] >= 2
    assert round_[FEATURE["circularity"]] > 0.8 > lobed[FEATURE["circularity"]]
    assert round_[FEATURE["solidity"]] > lobed[FEATURE["solidity"]] + 0.1
    assert round_[FEATURE["eccentricity"]] < 0.3


def test_clumped_chromatin_is_more_variable_and_textured_than_fine():
    fine = morphology_features(smear(speckle=0.0))
    clumped = morphology_features(smear(speckle=0.8))
    assert clumped[FEATURE["chromatin_cv"]] > 2 * fine[FEATURE["chromatin_cv"]]
    assert clumped[FEATURE["chromatin_texture"]] > 2 * fine[FEATURE["chromatin_texture"]]


def test_stain_strength_cancels_in_the_contrast_and_shape_features():
    img = smear()
    pale = (255 - (255 - img.astype(np.float32)) * 0.7).astype(np.uint8)  # weaker stain
    a, b = morphology_features(img), morphology_features(pale)
    for name in ("nucleus_to_rbc", "circularity", "solidity", "lobes"):
        assert b[FEATURE[name]] == pytest.approx(a[FEATURE[name]], abs=0.1), name
    # the density ratio moves far less than the densities themselves (-30 % stain)
    assert b[FEATURE["nucleus_contrast"]] == pytest.approx(a[FEATURE["nucleus_contrast"]],
                                                           rel=0.25)


def test_an_image_without_a_nucleus_is_all_nan_and_bad_input_is_refused(tmp_path):
    assert np.isnan(morphology_features(np.full((64, 64, 3), 230, np.uint8))).all()
    assert nucleus_shape_and_chromatin(np.full((32, 32, 3), 200, np.uint8)) is None
    with pytest.raises(ValueError, match="uint8"):
        morphology_features(np.zeros((8, 8), np.float32))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        image_morphology(broken)


def test_a_tight_crop_without_red_cells_keeps_its_shape_features():
    img = smear(size=256, nucleus=60.0)[74:182, 74:182]  # only cut red cells remain
    values = morphology_features(img)
    assert math.isnan(values[FEATURE["nucleus_to_rbc"]])
    assert np.isfinite(values[1:]).all()


def _morphology_config(root: Path, tmp_path: Path, **overrides):
    settings = {"task": "features", "data.root": str(root),
                "data.cache_dir": str(tmp_path / "scan"),
                "features.cache_dir": str(tmp_path / "features"),
                "features.extractor": "morphology", "features.classifiers": ["hgb"]}
    settings.update(overrides)
    return replace(load_config(None), settings)


def test_extract_features_measures_once_then_reads_the_cache(tmp_path, monkeypatch):
    root = tmp_path / "collection"
    for cls, nucleus in (("healthy", 26.0), ("leukemia", 52.0)):
        (root / "lab" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(smear(nucleus=nucleus, seed=i)).save(root / "lab" / cls / f"{i}.png")
    from leukdx.data.records import load_collection

    cfg = _morphology_config(root, tmp_path)
    records = load_collection(root, cfg.data, progress=False).records
    first = extract_features(cfg, records)
    assert first.features.shape == (4, len(FEATURE_NAMES)) and not first.from_cache
    assert first.name == "morphology:nucleus"
    big = records["label"].to_numpy() == 1
    ratio = first.features[:, FEATURE["nucleus_to_rbc"]]
    assert ratio[big].min() > ratio[~big].max()  # the blasts' nuclei are the larger ones

    import leukdx.features.morphology as morphology

    monkeypatch.setattr(morphology, "image_morphology",
                        lambda path: pytest.fail("measured again instead of the cache"))
    second = extract_features(cfg, records.iloc[::-1].reset_index(drop=True))
    assert second.from_cache
    np.testing.assert_array_equal(second.features, first.features[::-1])


def test_extractor_settings_are_checked():
    with pytest.raises(ConfigError, match="features.extractor"):
        validate_config(replace(load_config(None), {"features.extractor": "morphologie"}))
    with pytest.raises(ConfigError, match="features.model"):
        validate_config(replace(load_config(None), {"features.extractor": "morphology",
                                                    "features.model": "runs/x"}))


@pytest.mark.real_data
def test_on_real_fields_blast_nuclei_measure_larger_than_normal_ones(shared_data):
    """ALL-IDB1 fields (same microscope for both classes): the largest nucleus of a leukaemic
    field, measured against its red cells, is larger than that of a healthy field, and halving
    the field's resolution leaves the measurement where it was."""
    rows = []
    for cls in ("healthy", "leukemia"):
        for path in sorted((shared_data / "all_idb1" / cls).glob("*.jpg"))[:4]:
            with Image.open(path) as im:
                im.draft("RGB", (im.width // 2, im.height // 2))
                full = np.asarray(im.convert("RGB"))
            values = morphology_features(full)
            half = morphology_features(_resize(full, 0.5))
            rows.append({"cls": cls, "ratio": values[0], "half": half[0]})
    table = pd.DataFrame(rows)
    assert table["ratio"].notna().all()
    assert (table["ratio"] - table["half"]).abs().max() < 0.2
    by_class = table.groupby("cls")["ratio"]
    assert by_class.min()["leukemia"] > by_class.max()["healthy"]


def test_the_cache_key_changes_with_the_measuring_code(tmp_path, monkeypatch):
    """Features measured by other code are never read back as these (a stale cache)."""
    import inspect

    import leukdx.features.morphology as morphology
    from leukdx.features.extract import feature_cache_key, feature_source

    cfg = _morphology_config(tmp_path, tmp_path)
    records = pd.DataFrame({"sha256": ["a" * 64]})
    before = feature_cache_key(feature_source(cfg), records)
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda obj: real(obj) + (
        "# edited" if obj is morphology else ""))
    assert feature_cache_key(feature_source(cfg), records) != before
