"""Tests of leukdx.features.morphology: nuclear measurements that cancel the source's scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from smears import nuclei, resized, smear

from leukdx.config import ConfigError, load_config, replace, validate_config
from leukdx.data.cells import red_cell_diameter
from leukdx.data.decode import BadImageError
from leukdx.features.extract import extract_features
from leukdx.features.morphology import (
    FEATURE_NAMES,
    image_morphology,
    morphology_features,
    nucleus_shape_and_chromatin,
)

FEATURE = {name: i for i, name in enumerate(FEATURE_NAMES)}


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_features_do_not_depend_on_magnification(factor):
    """The same cell photographed at another magnification gives the same measurements: the
    nucleus is measured against the image's own red cells, shape and chromatin at a fixed
    number of pixels per nucleus diameter."""
    img = smear(rbc=26.0, nucleus=44.0)
    base = morphology_features(img)
    other = morphology_features(resized(img, factor))
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


def test_a_white_cell_without_red_cells_keeps_its_shape_features():
    img = smear(size=160, nucleus=60.0, red_cells=False)
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
            half = morphology_features(resized(full, 0.5))
            rows.append({"cls": cls, "ratio": values[0], "half": half[0]})
    table = pd.DataFrame(rows)
    # a leukaemic field's largest "nucleus" may be a clump of touching blasts, over three red
    # cells across: no single nucleus, so not measured (NaN); healthy fields are all measured
    healthy = table[table["cls"] == "healthy"]
    assert healthy["ratio"].notna().all()
    assert table.loc[table["cls"] == "leukemia", "ratio"].notna().sum() >= 2
    table = table.dropna()
    # one microscope and magnification: the red-cell ruler reads the same on every field
    with Image.open(sorted((shared_data / "all_idb1" / "healthy").glob("*.jpg"))[0]) as im:
        im.draft("RGB", (im.width // 4, im.height // 4))
        first = np.asarray(im.convert("RGB"))
    diameters = []
    for path in sorted((shared_data / "all_idb1").glob("*/*.jpg")):
        with Image.open(path) as im:
            im.draft("RGB", (first.shape[1], first.shape[0]))
            rgb = np.asarray(im.convert("RGB"))
        diameters.append(red_cell_diameter(rgb, nuclei(rgb)))
    assert np.std(diameters) / np.mean(diameters) < 0.1
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


def test_rows_measured_by_other_code_are_refused_not_reused(tiny_collection, tmp_path,
                                                            monkeypatch):
    """A results folder whose morphology rows came from other measuring code is refused
    (the message says why); ``force`` keeps the old ledger aside and measures again."""
    import leukdx.features.morphology as morphology
    from leukdx.evaluation.runner import ResultsFolderError
    from leukdx.features.evaluate import run_feature_evaluation

    cfg = replace(_morphology_config(tiny_collection, tmp_path), {
        "data.image_size": 32, "features.tsne": False, "evaluate.plots": False,
        "evaluate.protocol": "lodo"})
    out = tmp_path / "out"
    first = run_feature_evaluation(cfg, out, progress=False)
    assert len(first) == 3 and set(first["strategy"]) == {"features:hgb"}
    again = run_feature_evaluation(cfg, out, progress=False)  # same code: resumed as it is
    assert again["config_hash"].tolist() == first["config_hash"].tolist()

    monkeypatch.setattr(morphology, "measurement_fingerprint", lambda: "morphology:edited")
    with pytest.raises(ResultsFolderError, match="fold inputs"):
        run_feature_evaluation(cfg, out, progress=False)
    redone = run_feature_evaluation(cfg, out, progress=False, force=True)
    assert len(redone) == 3
    assert not set(redone["config_hash"]) & set(first["config_hash"])
    assert list(out.glob("folds.*.csv"))  # the old ledger is kept aside
