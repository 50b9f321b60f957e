"""TFDS builders, built offline from small manual folders (real data through symlinks)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import leukdx.data.tfds as leukdx_tfds
from leukdx.data.decode import read_image
from leukdx.data.synth import synthesize_collection
from leukdx.data.tfds.public import healthy_records


def _load(name: str, manual_dir: Path, data_dir: Path, split: str = "train"):
    return tfds.load(
        name, split=split, data_dir=str(data_dir), try_gcs=False,
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        },
    )


def _examples(ds) -> list[dict]:
    return list(tfds.as_numpy(ds))


def _link(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)


def test_builders_are_registered_under_leukdx_names():
    assert set(leukdx_tfds.PUBLIC_BUILDERS) == {
        "leukdx_all_idb1", "leukdx_all_idb2", "leukdx_c_nmc_2019", "leukdx_bccd", "leukdx_pbc",
    }
    for name in [*leukdx_tfds.PUBLIC_BUILDERS, "leukdx_collection"]:
        cls = tfds.builder_cls(name)
        assert cls.name == name and "manual_dir" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_public_builders_say_where_to_get_the_data():
    where = {
        "leukdx_all_idb1": "scotti.di.unimi.it/all",
        "leukdx_all_idb2": "scotti.di.unimi.it/all",
        "leukdx_c_nmc_2019": "cancerimagingarchive.net/collection/c-nmc-2019",
        "leukdx_bccd": "github.com/Shenggan/BCCD_Dataset",
        "leukdx_pbc": "10.17632/snkd93bnjr.1",
    }
    for name, url in where.items():
        assert url in leukdx_tfds.PUBLIC_BUILDERS[name].MANUAL_DOWNLOAD_INSTRUCTIONS


def test_importing_leukdx_data_does_not_import_tfds_or_tensorflow():
    code = (
        "import sys, leukdx.data, leukdx.data.synth, leukdx.data.offline; "
        "loaded = [m for m in ('tensorflow_datasets', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.real_data
def test_all_idb2_official_layout_labels_from_file_names(shared_data, tmp_path):
    source = shared_data / "all_idb2"
    healthy = sorted((source / "healthy").glob("*.tif"))[:5]
    leukemia = sorted((source / "leukemia").glob("*.tif"))[:4]
    manual = tmp_path / "manual"
    _link(healthy + leukemia, manual / "ALL_IDB2" / "img")  # the official flat img/ folder

    examples = _examples(_load("leukdx_all_idb2", manual, tmp_path / "tfds"))

    assert Counter(int(e["label"]) for e in examples) == {0: 5, 1: 4}
    by_name = {e["file_name"].decode(): e for e in examples}
    for original in healthy + leukemia:
        example = by_name[f"ALL_IDB2/img/{original.name}"]
        assert int(example["label"]) == int(original.stem[-1])  # the _Y suffix
        assert example["source"] == b"all_idb2"
        np.testing.assert_array_equal(example["image"], read_image(original))  # TIFF -> PNG


@pytest.mark.real_data
def test_bccd_and_pbc_are_healthy_only(shared_data, tmp_path):
    bccd_files = sorted((shared_data / "bccd" / "healthy").glob("*.jpg"))[:3]
    _link(bccd_files, tmp_path / "BCCD_Dataset" / "BCCD" / "JPEGImages")
    (tmp_path / "BCCD_Dataset" / "BCCD" / "Annotations").mkdir()
    (tmp_path / "BCCD_Dataset" / "BCCD" / "Annotations" / "a.xml").write_text("<x/>")
    bccd = _examples(_load("leukdx_bccd", tmp_path / "BCCD_Dataset", tmp_path / "tfds"))
    assert [int(e["label"]) for e in bccd] == [0, 0, 0]
    shapes = {e["image"].shape for e in bccd}
    assert shapes == {read_image(bccd_files[0]).shape}  # JPEG stored as is, decodes 480x640x3

    pbc_files = sorted((shared_data / "pbc" / "healthy").glob("*.jpg"))[:3]
    _link(pbc_files[:2], tmp_path / "PBC_dataset_normal_DIB" / "neutrophil")
    _link(pbc_files[2:], tmp_path / "PBC_dataset_normal_DIB" / "lymphocyte")
    pbc = _examples(_load("leukdx_pbc", tmp_path, tmp_path / "tfds"))
    assert sorted(int(e["label"]) for e in pbc) == [0, 0, 0]
    assert {e["source"] for e in pbc} == {b"pbc"}


def _bmp(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(path)


def test_c_nmc_labels_from_folders_and_csv_grouped_by_patient(tmp_path):
    manual = tmp_path / "C-NMC_Leukemia"
    train = manual / "training_data"
    names = {
        "fold_0/all/UID_11_1_1_all.bmp": 1, "fold_0/all/UID_11_2_1_all.bmp": 1,
        "fold_0/hem/UID_H10_1_1_hem.bmp": 0, "fold_1/all/UID_12_5_2_all.bmp": 1,
        "fold_1/hem/UID_H22_3_1_hem.bmp": 0, "fold_1/hem/UID_H22_4_1_hem.bmp": 0,
    }
    for i, rel in enumerate(names):
        _bmp(train / rel, i)
    prelim = manual / "validation_data" / "C-NMC_test_prelim_phase_data"
    for i in range(1, 4):
        _bmp(prelim / f"{i}.bmp", 100 + i)
    pd.DataFrame({
        "Patient_ID": ["UID_57_29_1_all.bmp", "UID_H40_1_1_hem.bmp", "UID_57_30_1_all.bmp"],
        "new_names": ["1.bmp", "2.bmp", "3.bmp"],
        "labels": [1, 0, 1],
    }).to_csv(manual / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv",
              index=False)

    data_dir = tmp_path / "tfds"
    train_ex = _examples(_load("leukdx_c_nmc_2019", manual, data_dir, "train"))
    val_ex = _examples(_load("leukdx_c_nmc_2019", manual, data_dir, "validation"))

    got = {e["file_name"].decode().split("/", 1)[1]: int(e["label"]) for e in train_ex}
    assert got == names
    groups = Counter(e["group"].decode() for e in train_ex)
    assert groups == {"patient-11": 2, "patient-H10": 1, "patient-12": 1, "patient-H22": 2}
    val = {e["file_name"].decode().rsplit("/", 1)[1]: e for e in val_ex}
    assert {k: int(v["label"]) for k, v in val.items()} == {"1.bmp": 1, "2.bmp": 0, "3.bmp": 1}
    assert val["1.bmp"]["group"] == val["3.bmp"]["group"] == b"patient-57"
    np.testing.assert_array_equal(val["2.bmp"]["image"], read_image(prelim / "2.bmp"))


def test_collection_builder_writes_one_split_per_source(tmp_path):
    root = synthesize_collection(tmp_path / "coll", sources=2, per_class=3, seed=0,
                                 image_size=32)
    builder = leukdx_tfds.build_tfds_collection(root, tmp_path / "tfds", name="demo")
    assert set(builder.info.splits) == {"source_1", "source_2"}
    assert builder.info.splits["source_1"].num_examples == 6
    assert builder.info.features["label"].names == ["healthy", "leukemia"]

    combined = _examples(builder.as_dataset(split="source_1+source_2"))
    assert Counter((e["source"].decode(), int(e["label"])) for e in combined) == {
        ("source_1", 0): 3, ("source_1", 1): 3, ("source_2", 0): 3, ("source_2", 1): 3,
    }
    png = next(e for e in combined if e["file_name"].decode().endswith(".png"))
    original = read_image(root / png["file_name"].decode())
    np.testing.assert_array_equal(png["image"], original)

    reread = leukdx_tfds.load_tfds_collection(builder.data_dir)  # no classes, no collection
    images, labels = next(iter(tfds.as_numpy(
        reread.as_dataset(split="source_2", as_supervised=True, batch_size=6))))
    assert images.shape[1:] == (32, 32, 3) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]

    # what `leukdx data tfds` prints: the folder and a line of Python that loads it
    folder, splits, load = leukdx_tfds.describe_tfds_dataset(builder).splitlines()
    dataset_dir = (tmp_path / "tfds" / "leukdx_collection" / "demo" / "1.0.0").absolute()
    assert folder == f"TFDS dataset written to {dataset_dir}"
    assert splits == "splits: source_1 (6 images), source_2 (6 images)"
    assert load == f'load it with: tfds.builder_from_directory("{dataset_dir}")'
    code = load.removeprefix("load it with: ")
    assert eval(code, {"tfds": tfds}).info.splits["source_1"].num_examples == 6


def test_missing_manual_folder_error_says_where_to_get_the_data(tmp_path):
    with pytest.raises(Exception, match="scotti.di.unimi.it"):
        _load("leukdx_all_idb1", tmp_path / "nowhere", tmp_path / "tfds")


def test_healthy_records_groups_identical_files(tmp_path):
    _bmp(tmp_path / "a" / "x.bmp", 1)
    _bmp(tmp_path / "b" / "y.bmp", 2)
    (tmp_path / "b" / "z.bmp").write_bytes((tmp_path / "a" / "x.bmp").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    records = healthy_records(tmp_path, "demo")
    assert len(records) == 3 and (records["label"] == 0).all()
    group = dict(zip(records["path"].map(lambda p: Path(p).name), records["group"]))
    assert group["x.bmp"] == group["z.bmp"] != group["y.bmp"]
