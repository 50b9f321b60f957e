"""Offline augmentation: write augmented copies of a collection to disk.

Loey et al. (2020, §3.1.1) enlarged 564 images to 2,820 before training: every original plus
four augmented copies, i.e. a **factor of 5 counted per original, the original included**.
:func:`export_augmented` does the same with any preset of :mod:`leukdx.data.augment` and writes a
collection that :func:`leukdx.data.records.load_collection` reads back with its groups intact::

    OUT/
      augmentation.csv                         every file: path (relative to OUT), label, group,
                                               source, origin (the original file), copy
      README.md
      <source>/
        manifest.csv                           path (relative to the source), label, group, origin
        images/<healthy|leukemia>/<stem>__aug0.png   the original (decoded, re-encoded as PNG)
        images/<healthy|leukemia>/<stem>__aug1.png   augmented copies 1 .. factor-1
        ...

The ``group`` of every copy is the group of its original (itself already joining exact and
near-duplicate originals), so a grouped split never puts an original on one side and one of its
copies on the other — the leak that makes augmented-then-split accuracies look perfect.

Why ``images/`` and ``augmentation.csv``: the records loader prefers class folders to a manifest
when both sit directly in a source folder (the class folders would win and the groups would be
lost), and a ``manifest.csv`` at the collection root would turn the whole folder into one source.

Example:
    >>> from leukdx.data.offline import export_augmented
    >>> out = export_augmented("../shared/data", "augmented", preset="loey", factor=5, seed=0)
    >>> from leukdx.data.records import load_collection
    >>> coll = load_collection(out)          # manifest layout, copies grouped with originals
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from leukdx.config import DataConfig
from leukdx.data.decode import load_image, read_image

__all__ = ["INDEX_FILE", "export_augmented"]

INDEX_FILE = "augmentation.csv"
IMAGES_FOLDER = "images"
CLASS_FOLDERS = ("healthy", "leukemia")  # index = label


def _input_records(
    collection_root_or_records, data_config: DataConfig
) -> tuple[pd.DataFrame, Path]:
    """Records table and the folder they come from (a folder, a Collection or a DataFrame)."""
    from leukdx.data.records import Collection, load_collection

    if isinstance(collection_root_or_records, pd.DataFrame):
        records = collection_root_or_records
        root = None
    elif isinstance(collection_root_or_records, Collection):
        records, root = collection_root_or_records.records, collection_root_or_records.root
    else:
        collection = load_collection(collection_root_or_records, data_config)
        records, root = collection.records, collection.root
    missing = [c for c in ("path", "label", "source") if c not in records.columns]
    if missing:
        raise ValueError(
            f"The records to augment lack column(s) {', '.join(missing)}; pass a collection "
            "folder or the records of leukdx.data.records.load_collection."
        )
    if records.empty:
        raise ValueError("There are no records to augment.")
    bad = sorted(set(records["label"].tolist()) - {0, 1})
    if bad:
        raise ValueError(f"Labels must be 0 (healthy) or 1 (leukaemia); found {bad}.")
    if root is None:  # the deepest folder holding every input image
        root = Path(os.path.commonpath([str(Path(p).absolute().parent) for p in records["path"]]))
    return records.reset_index(drop=True), Path(root).absolute()


def _check_output(out: Path, input_root: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"'{out}' exists and is not a folder; choose another output.")
    resolved, input_resolved = out.resolve(), input_root.resolve()
    if resolved == input_resolved or input_resolved in resolved.parents:
        raise ValueError(
            f"The output folder '{out}' lies inside the input collection '{input_root}'; write "
            "the augmented collection outside it (it would be read as another source)."
        )
    if resolved in input_resolved.parents:
        raise ValueError(
            f"The output folder '{out}' contains the input collection '{input_root}'; write "
            "the augmented collection outside it."
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"'{out}' is not empty. Choose an empty or new folder, or pass overwrite=True "
            "(--overwrite) to write into it."
        )


def _stems(records: pd.DataFrame) -> list[str]:
    """File stems for the copies, unique within each (source, class) folder."""
    stems = [Path(p).stem for p in records["path"]]
    keys = list(zip(records["source"].astype(str), records["label"].astype(int), stems))
    counts: dict[tuple, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    out = []
    for i, (key, stem) in enumerate(zip(keys, stems)):
        if counts[key] > 1:  # same stem in different sub-folders or formats: disambiguate
            tag = str(records["sha256"].iloc[i])[:10] if "sha256" in records.columns else str(i)
            stem = f"{stem}-{tag}"
        out.append(stem)
    return out


def _png_bytes(img: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # level 1: a few percent larger than the default 6 and several times faster on big slides
    Image.fromarray(img).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# Pixels per augmentation call: small images go in one batch (less per-call overhead), large
# slides one copy at a time (a batch of four 2592x1944 images was slower than four calls).
_PIXELS_PER_CALL = 1 << 22


def _augment_copies(layers, img: np.ndarray, copies: int) -> list[np.ndarray]:
    """``copies`` augmented versions of one uint8 image, as uint8 ``(H, W, 3)`` arrays."""
    per_call = max(1, _PIXELS_PER_CALL // (img.shape[0] * img.shape[1]))
    out: list[np.ndarray] = []
    while len(out) < copies:
        n = min(per_call, copies - len(out))
        batch = np.repeat(img[None].astype(np.float32), n, axis=0)
        for layer in layers:  # layer by layer: images keep their own size, no fixed input shape
            batch = layer(batch, training=True)
        out.extend(np.clip(np.rint(np.asarray(batch)), 0, 255).astype(np.uint8))
    return out


def export_augmented(
    collection_root_or_records,
    out: str | os.PathLike,
    preset: str = "loey",
    factor: int = 5,
    seed: int = 0,
    data_config: DataConfig | None = None,
    image_size: int | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Materialise ``factor`` images per original (the original included) on disk.

    Args:
        collection_root_or_records: a collection or source folder (read with
            ``load_collection(root, data_config)``), a ``Collection``, or a records table with
            at least ``path``, ``label``, ``source`` (``group`` and ``sha256`` are used when
            present).
        out: output folder (created; must be empty or absent unless ``overwrite``).
        preset: augmentation preset (:func:`leukdx.data.augment.build_augmentation`), e.g.
            ``loey`` or ``leuknet``; ``none`` only re-encodes the originals (``factor`` 1).
        factor: images written per original, the original included: Loey et al.'s
            564 → 2,820 is ``factor=5`` (the original and four augmented copies).
        seed: seed of the augmentation; the same inputs and seed write the same files.
        data_config: data settings for loading a folder (layouts, sources, ...) and the
            ``aspect`` used with ``image_size``; the manifest file name is ``data.manifest``.
        image_size: resize every original to this square size first (Loey: 227); ``None``
            keeps each image's own size.
        overwrite: allow writing into a non-empty folder.
        progress: show a progress bar.

    Returns:
        The output collection folder.

    Raises:
        ValueError: bad factor/preset, records without the needed columns, output inside the
            input collection.
        FileExistsError: ``out`` is not empty and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

    from leukdx.data.augment import build_augmentation

    data_config = data_config or DataConfig()
    factor = int(factor)
    if factor < 1:
        raise ValueError(
            f"factor (images per original, original included) must be >= 1, got {factor}."
        )
    if preset == "none" and factor != 1:
        raise ValueError("preset 'none' makes no copies; use factor=1 or choose a preset.")
    if image_size is not None and int(image_size) < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    records, input_root = _input_records(collection_root_or_records, data_config)
    out = Path(out)
    _check_output(out, input_root, overwrite)

    augmentation = None
    if factor > 1:
        augmentation = build_augmentation(preset, int(image_size or 224), seed=seed)
    layers = augmentation.layers if augmentation is not None else []

    # an original without a group is its own group (named by its path)
    declared = records["group"] if "group" in records.columns else [None] * len(records)
    groups = [
        str(g) if g is not None and not pd.isna(g) and str(g).strip() else str(Path(p).absolute())
        for g, p in zip(declared, records["path"])
    ]
    stems = _stems(records)
    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(records), desc=f"Augmenting ({preset} x{factor})", unit="img",
               disable=None if progress else True, file=sys.stderr, leave=False)
    with bar:
        for i, rec in enumerate(records.itertuples(index=False)):
            source, label = str(rec.source), int(rec.label)
            if image_size is None:
                original = read_image(rec.path)
            else:
                original = load_image(rec.path, int(image_size), data_config.aspect)
            images = [original]
            if factor > 1:
                images.extend(_augment_copies(layers, original, factor - 1))
            folder = out / source / IMAGES_FOLDER / CLASS_FOLDERS[label]
            folder.mkdir(parents=True, exist_ok=True)
            for k, img in enumerate(images):
                name = f"{stems[i]}__aug{k}.png"
                (folder / name).write_bytes(_png_bytes(img))
                rows.append({
                    "path": f"{source}/{IMAGES_FOLDER}/{CLASS_FOLDERS[label]}/{name}",
                    "label": label,
                    "group": groups[i],
                    "source": source,
                    "origin": str(Path(rec.path).absolute()),
                    "copy": k,
                })
            bar.update(1)

    index = pd.DataFrame(rows, columns=["path", "label", "group", "source", "origin", "copy"])
    index.to_csv(out / INDEX_FILE, index=False)
    for source, part in index.groupby("source", sort=True):
        manifest = part[["path", "label", "group", "origin"]].copy()
        prefix = f"{source}/"
        manifest["path"] = manifest["path"].str.slice(len(prefix))
        manifest.to_csv(out / str(source) / data_config.manifest, index=False)
    (out / "README.md").write_text(
        "# Augmented collection (leukdx)\n\n"
        f"Written by leukdx.data.offline.export_augmented(preset={preset!r}, factor={factor}, "
        f"seed={seed}, image_size={image_size}).\n"
        f"{len(records)} originals -> {len(index)} images ({factor} per original, "
        "`__aug0` is the original).\n"
        "Each source folder has a manifest (path,label,group,origin): copies share their "
        "original's group, so grouped splits keep them together. Load it with "
        "`load_collection(OUT)`.\n"
    )
    return out
