"""TFDS builders for the public blood-smear sets the two papers use (manual download, offline).

None of these sets may be downloaded automatically (request forms, licence pages, portals), so
every builder reads a folder the user fills: download the set, unpack it, and pass the folder as
the manual folder::

    import tensorflow_datasets as tfds
    import leukdx.data.tfds  # registers the builders

    ds = tfds.load(
        "leukdx_all_idb2", split="train", data_dir="~/tensorflow_datasets", try_gcs=False,
        download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
            manual_dir="/data/ALL_IDB2")},
    )

Labels follow each dataset's own rule: ALL-IDB from the ``_1``/``_0`` file-name suffix, C-NMC
from its ``all``/``hem`` folders and label CSV, BCCD and PBC are healthy donors only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from leukdx.data.decode import is_image_file
from leukdx.data.dedup import assign_groups, sha256_file
from leukdx.data.records import DataError
from leukdx.data.tfds.core import LeukdxBuilder, load_records

__all__ = [
    "LeukdxAllIdb1",
    "LeukdxAllIdb2",
    "LeukdxBccd",
    "LeukdxCnmc2019",
    "LeukdxPbc",
    "healthy_records",
]

_LABELS_NOTE = "Labels: 0 = healthy, 1 = leukaemia."


def _first_existing(manual_dir: Path, candidates: tuple[str, ...]) -> Path:
    """The first candidate sub-folder (official layouts) that exists, else ``manual_dir``."""
    for rel in candidates:
        folder = manual_dir / rel
        if folder.is_dir():
            return folder
    return manual_dir


def healthy_records(folder: Path, source: str) -> pd.DataFrame:
    """Every image under ``folder`` (recursively) as a healthy record of ``source``.

    For healthy-donor sets whose folders name cell types, not classes (BCCD, PBC). Identical
    files share a group.
    """
    paths = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in
                                                         p.relative_to(folder).parts)
    )
    records = pd.DataFrame({
        "path": [str(p) for p in paths],
        "label": 0,
        "source": source,
        "sha256": [sha256_file(p) for p in paths],
    })
    records["group"] = assign_groups(records, max_distance=-1) if len(records) else []
    return records


class _AllIdb(LeukdxBuilder, skip_registration=True):
    """ALL-IDB: the label is the file-name suffix ``_1`` (blast, ALL patient) / ``_0``."""

    SOURCE = ""
    SUBFOLDERS: tuple[str, ...] = ()
    HOMEPAGE = "https://scotti.di.unimi.it/all/"
    CITATION = """@inproceedings{labati2011allidb,
  title={ALL-IDB: The acute lymphoblastic leukemia image database for image processing},
  author={Labati, Ruggero Donida and Piuri, Vincenzo and Scotti, Fabio},
  booktitle={18th IEEE International Conference on Image Processing (ICIP)},
  pages={2045--2048}, year={2011}}"""

    def split_records(self, manual_dir: Path):
        folder = _first_existing(manual_dir, self.SUBFOLDERS)
        records = load_records(folder, layout="allidb")
        records["source"] = self.SOURCE
        return {"train": records}


class LeukdxAllIdb1(_AllIdb):
    """ALL-IDB1: 108 whole-field JPEG images (59 healthy, 49 leukaemia)."""

    name = "leukdx_all_idb1"
    SOURCE = "all_idb1"
    SUBFOLDERS = ("ALL_IDB1/im", "im")
    DESCRIPTION = (
        "ALL-IDB1 (Labati, Piuri and Scotti 2011): 108 peripheral blood smear fields "
        "(2592x1944 or 1712x1368 JPEG) from healthy donors and acute lymphoblastic leukaemia "
        f"patients. {_LABELS_NOTE} Groups join identical and near-duplicate images."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ALL-IDB is distributed by the University of Milan after a request form:
https://scotti.di.unimi.it/all/ (research use; cite Labati et al., ICIP 2011).
Unpack it and pass as manual_dir either the ALL_IDB1 folder (with im/ImXXX_Y.jpg), its im/
folder, or their parent. Any folder whose images are named ImXXX_1 (leukaemia) / ImXXX_0
(healthy), e.g. sorted into healthy/ and leukemia/ sub-folders, works too."""


class LeukdxAllIdb2(_AllIdb):
    """ALL-IDB2: 260 single-cell TIFF crops (130 healthy, 130 leukaemia)."""

    name = "leukdx_all_idb2"
    SOURCE = "all_idb2"
    SUBFOLDERS = ("ALL_IDB2/img", "img")
    DESCRIPTION = (
        "ALL-IDB2 (Labati, Piuri and Scotti 2011): 260 single-cell 257x257 TIFF crops cut from "
        "the ALL-IDB1 slides; the label says whether the centre cell is a blast. "
        f"{_LABELS_NOTE} Groups join identical and overlapping re-crops."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ALL-IDB is distributed by the University of Milan after a request form:
https://scotti.di.unimi.it/all/ (research use; cite Labati et al., ICIP 2011).
Unpack it and pass as manual_dir either the ALL_IDB2 folder (with img/ImXXX_Y.tif), its img/
folder, or their parent. Any folder whose images are named ImXXX_1 (leukaemia) / ImXXX_0
(healthy), e.g. sorted into healthy/ and leukemia/ sub-folders, works too."""


# C-NMC file names: UID_<patient>_<image>_<cell>_<all|hem>.bmp; healthy patients start with H.
_CNMC_PATIENT = re.compile(r"^UID_([^_]+)_", re.IGNORECASE)


def _cnmc_group(file_name: str) -> str:
    match = _CNMC_PATIENT.match(Path(str(file_name)).name)
    return f"patient-{match.group(1)}" if match else f"image-{Path(str(file_name)).stem}"


class LeukdxCnmc2019(LeukdxBuilder):
    """C-NMC 2019 (ISBI challenge): segmented single-cell BMPs, split by patient."""

    name = "leukdx_c_nmc_2019"
    SOURCE = "c_nmc_2019"
    HOMEPAGE = "https://www.cancerimagingarchive.net/collection/c-nmc-2019/"
    DESCRIPTION = (
        "C-NMC 2019 (Gupta and Gupta, ISBI 2019 challenge; TCIA): segmented lymphoblasts "
        "(all) and normal B cells (hem), 450x450 BMP. 'train' holds the three training folds "
        "(label from the all/hem folder), 'validation' the preliminary-phase test set (label "
        f"from its CSV). {_LABELS_NOTE} The group is the patient (from UID_<patient>_...)."
    )
    CITATION = """@misc{gupta2019cnmc,
  title={C-NMC: Classification of Normal vs Malignant Cells in B-ALL White Blood Cancer
         Microscopic Images},
  author={Gupta, Anubha and Gupta, Ritu}, year={2019}, publisher={The Cancer Imaging Archive},
  doi={10.7937/tcia.2019.dc64i46r}}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download C-NMC 2019 from The Cancer Imaging Archive:
https://www.cancerimagingarchive.net/collection/c-nmc-2019/ (licence terms on that page).
Unpack it and pass the C-NMC_Leukemia folder as manual_dir. Expected inside (any depth):
  training_data/fold_0/{all,hem}/*.bmp, fold_1/..., fold_2/...          -> split 'train'
  .../C-NMC_test_prelim_phase_data/*.bmp and
  .../C-NMC_test_prelim_phase_data_labels.csv (Patient_ID,new_names,labels) -> 'validation'
The final-phase test images carry no labels and are not included."""

    def split_records(self, manual_dir: Path):
        splits = {"train": self._training_records(manual_dir)}
        validation = self._prelim_records(manual_dir)
        if validation is not None:
            splits["validation"] = validation
        return splits

    def _training_records(self, manual_dir: Path) -> pd.DataFrame:
        # every folder holding all/ and/or hem/ class folders is one training fold
        folds = sorted({
            d.parent for d in manual_dir.rglob("*")
            if d.is_dir() and d.name.lower() in ("all", "hem")
        })
        if not folds:
            raise DataError(
                f"No all/ or hem/ folders under '{manual_dir}'.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        aliases = {"healthy": ["hem"], "leukemia": ["all"]}
        parts = [load_records(fold, layout="folders", class_aliases=aliases) for fold in folds]
        records = pd.concat(parts, ignore_index=True)
        records["source"] = self.SOURCE
        records["group"] = [_cnmc_group(p) for p in records["path"]]
        return records

    def _prelim_records(self, manual_dir: Path) -> pd.DataFrame | None:
        csvs = sorted(
            p for p in manual_dir.rglob("*.csv")
            if "prelim" in p.name.lower() and "label" in p.name.lower()
        )
        if not csvs:
            return None
        table = pd.read_csv(csvs[0], dtype=str)
        table.columns = [c.strip().lower() for c in table.columns]
        if not {"new_names", "labels"} <= set(table.columns):
            raise DataError(
                f"'{csvs[0]}' lacks the columns new_names and labels of the C-NMC label file "
                f"(found: {', '.join(table.columns)})."
            )
        first = str(table["new_names"].iloc[0]).strip()
        folders = [d for d in [csvs[0].parent, *csvs[0].parent.rglob("*")] if d.is_dir()]
        images_dir = next((d for d in folders if (d / first).is_file()), None)
        if images_dir is None:
            raise DataError(
                f"The images listed in '{csvs[0]}' (e.g. {first}) are not next to it or in a "
                "folder below it. Keep the C-NMC_test_prelim_phase_data folder as unpacked."
            )
        paths = [images_dir / str(n).strip() for n in table["new_names"]]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) listed in '{csvs[0]}' are missing, "
                            f"e.g. '{missing[0]}'.")
        original = table["patient_id"] if "patient_id" in table.columns else table["new_names"]
        return pd.DataFrame({
            "path": [str(p) for p in paths],
            "label": table["labels"].astype(int).to_numpy(),
            "source": self.SOURCE,
            "group": [_cnmc_group(n) for n in original],
        })


class LeukdxBccd(LeukdxBuilder):
    """BCCD: 364 whole-field JPEGs (640x480) for cell detection; all treated as healthy."""

    name = "leukdx_bccd"
    SOURCE = "bccd"
    HOMEPAGE = "https://github.com/Shenggan/BCCD_Dataset"
    DESCRIPTION = (
        "BCCD (Shenggan; MIT licence): 364 640x480 blood smear fields made for RBC/WBC/"
        "platelet detection. Every image is labelled healthy: the dataset does not document "
        f"the donors' health, leukdx assumes no leukaemia. {_LABELS_NOTE}"
    )
    CITATION = """@misc{bccd,
  title={BCCD Dataset}, author={Shenggan}, year={2017},
  howpublished={\\url{https://github.com/Shenggan/BCCD_Dataset}}}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Clone or download https://github.com/Shenggan/BCCD_Dataset (MIT licence) and pass the
repository folder as manual_dir (its BCCD/JPEGImages/*.jpg are read), or any folder holding
the BCCD images. Every image is labelled healthy."""

    def split_records(self, manual_dir: Path):
        folder = _first_existing(
            manual_dir, ("BCCD/JPEGImages", "BCCD_Dataset/BCCD/JPEGImages", "JPEGImages")
        )
        return {"train": healthy_records(folder, self.SOURCE)}


class LeukdxPbc(LeukdxBuilder):
    """PBC (Acevedo et al. 2020): 17,092 single-cell JPEGs of healthy donors (CellaVision)."""

    name = "leukdx_pbc"
    SOURCE = "pbc"
    HOMEPAGE = "https://data.mendeley.com/datasets/snkd93bnjr/1"
    DESCRIPTION = (
        "PBC normal peripheral blood cells (Acevedo et al., Data in Brief 2020; Hospital Clinic "
        "Barcelona, CellaVision DM96): 360x363 single-cell JPEGs of eight cell types from "
        "donors without infection, haematological or oncological disease. All healthy. "
        f"{_LABELS_NOTE}"
    )
    CITATION = """@article{acevedo2020pbc,
  title={A dataset of microscopic peripheral blood cell images for development of automatic
         recognition systems},
  author={Acevedo, Andrea and Merino, Anna and Alf{\\'e}rez, Santiago and Molina, {\\'A}ngel and
          Bold{\\'u}, Laura and Rodellar, Jos{\\'e}},
  journal={Data in Brief}, volume={30}, pages={105474}, year={2020},
  doi={10.17632/snkd93bnjr.1}}"""
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the PBC dataset from Mendeley Data, doi:10.17632/snkd93bnjr.1
(https://data.mendeley.com/datasets/snkd93bnjr/1, CC BY 4.0), unpack it and pass the
PBC_dataset_normal_DIB folder (one sub-folder per cell type) as manual_dir. Every image is
labelled healthy."""

    def split_records(self, manual_dir: Path):
        folder = _first_existing(manual_dir, ("PBC_dataset_normal_DIB",))
        return {"train": healthy_records(folder, self.SOURCE)}
