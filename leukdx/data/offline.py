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
        images/<healthy|leukemia>/<stem>__aug0.<ext>   the original (the file itself when it
                                                     is neither resized nor re-formatted)
        images/<healthy|leukemia>/<stem>__aug1.<ext>   augmented copies 1 .. factor-1
        ...

Files keep their source's format (JPEG stays JPEG, PNG/TIFF/BMP stay lossless) unless
``image_format`` asks for ``png`` or ``jpeg``; ``max_size`` shrinks large fields (ALL-IDB1's
2592x1944 slides) before augmenting. Every copy is a new image: a draw that reproduces the
original or an earlier copy of it (a mirror drawn twice, say) is drawn again.

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

import hashlib
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from leukdx.config import DataConfig
from leukdx.data.decode import load_image, read_image

__all__ = ["IMAGE_FORMATS", "INDEX_FILE", "export_augmented"]

INDEX_FILE = "augmentation.csv"
IMAGES_FOLDER = "images"
CLASS_FOLDERS = ("healthy", "leukemia")  # index = label
IMAGE_FORMATS = ("source", "png", "jpeg")
# File format kept for each source extension under image_format="source" (others: PNG).
_FORMAT_OF_SUFFIX = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".tif": "tiff",
                     ".tiff": "tiff", ".bmp": "bmp"}
_SUFFIX_OF_FORMAT = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp"}
JPEG_QUALITY = 95
# Draws per copy before giving up on making it differ from its original and siblings.
MAX_DRAWS = 20


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


def _output_format(path: str, image_format: str) -> str:
    if image_format != "source":
        return image_format
    return _FORMAT_OF_SUFFIX.get(Path(path).suffix.lower(), "png")


def _encode(img: np.ndarray, file_format: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(img)
    if file_format == "jpeg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    elif file_format == "tiff":
        image.save(buffer, format="TIFF", compression="tiff_lzw")
    elif file_format == "bmp":
        image.save(buffer, format="BMP")
    else:  # level 1: a few percent larger than the default 6, several times faster on slides
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _limit_size(img: np.ndarray, max_size: int | None) -> np.ndarray:
    """Shrink so that the longer side is at most ``max_size`` (aspect kept)."""
    if max_size is None or max(img.shape[:2]) <= max_size:
        return img
    scale = max_size / max(img.shape[:2])
    width = max(1, round(img.shape[1] * scale))
    height = max(1, round(img.shape[0] * scale))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.LANCZOS))


# Pixels per augmentation call: small images go in one batch (less per-call overhead), large
# slides one copy at a time (a batch of four 2592x1944 images was slower than four calls).
_PIXELS_PER_CALL = 1 << 22


def _augment_copies(augmentation, img: np.ndarray, seeds: np.ndarray) -> list[np.ndarray]:
    """One augmented uint8 copy of ``img`` per row of ``seeds`` (stateless, deterministic)."""
    from leukdx.data.augment import apply_augmentation

    per_call = max(1, _PIXELS_PER_CALL // (img.shape[0] * img.shape[1]))
    out: list[np.ndarray] = []
    while len(out) < len(seeds):
        part = seeds[len(out): len(out) + per_call]
        batch = np.repeat(img[None].astype(np.float32), len(part), axis=0)
        # layer by layer (inside apply_augmentation): images keep their own size
        augmented = apply_augmentation(augmentation, batch, part)
        out.extend(np.clip(np.rint(np.asarray(augmented)), 0, 255).astype(np.uint8))
    return out


def _distinct_copies(augmentation, original: np.ndarray, copies: int, seed: int, index: int,
                     factor: int, path: str) -> list[np.ndarray]:
    """``copies`` augmented images, all different from ``original`` and from each other.

    Copy ``k`` of original ``index`` is drawn with the seed pair of (seed, draw, index *
    factor + k); a copy equal to the original or to an earlier copy is drawn again (next draw).
    """
    from leukdx.data.augment import example_seeds

    seen = {hashlib.sha256(original.tobytes()).digest()}
    result: dict[int, np.ndarray] = {}
    pending = list(range(1, copies + 1))
    for draw in range(MAX_DRAWS):
        if not pending:
            break
        seeds = example_seeds(seed, draw, [index * factor + k for k in pending])
        still = []
        for k, img in zip(pending, _augment_copies(augmentation, original, seeds)):
            digest = hashlib.sha256(img.tobytes()).digest()
            if digest in seen:
                still.append(k)
            else:
                seen.add(digest)
                result[k] = img
        pending = still
    if pending:
        raise ValueError(
            f"Could not make {copies} distinct augmented copies of '{path}' in {MAX_DRAWS} "
            "draws each (the preset repeats itself on this image); lower factor (--factor) or "
            "choose a preset with more variety."
        )
    return [result[k] for k in range(1, copies + 1)]


def export_augmented(
    collection_root_or_records,
    out: str | os.PathLike,
    preset: str = "loey",
    factor: int = 5,
    seed: int = 0,
    data_config: DataConfig | None = None,
    image_size: int | None = None,
    *,
    image_format: str = "source",
    max_size: int | None = None,
    strength: float = 1.0,
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
            ``randstainna`` is fitted on the exported originals.
        factor: images written per original, the original included: Loey et al.'s
            564 → 2,820 is ``factor=5`` (the original and four augmented copies).
        seed: seed of the augmentation; the same inputs and seed write the same files.
        data_config: data settings for loading a folder (layouts, sources, ...) and the
            ``aspect`` used with ``image_size``; the manifest file name is ``data.manifest``.
        image_size: resize every original to this square size first (Loey: 227); ``None``
            keeps each image's own size.
        image_format: ``source`` (each file keeps its format: JPEG stays JPEG at quality 95,
            PNG/TIFF/BMP stay lossless), ``png`` or ``jpeg``.
        max_size: shrink originals whose longer side exceeds this many pixels (aspect kept)
            before augmenting; ``None`` keeps full resolution.
        strength: ``augment.strength`` of the non-paper presets.
        overwrite: allow writing into a non-empty folder.
        progress: show a progress bar (on stderr, also when it is not a terminal).

    Returns:
        The output collection folder.

    Raises:
        ValueError: bad factor/preset/format/size, records without the needed columns, output
            inside the input collection, or a preset that cannot make ``factor - 1`` distinct
            copies of an image.
        FileExistsError: ``out`` is not empty and ``overwrite`` is false.
    """
    from tqdm.auto import tqdm

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
    if image_format not in IMAGE_FORMATS:
        raise ValueError(
            f"image format '{image_format}' (--format) is not one of {', '.join(IMAGE_FORMATS)}."
        )
    if max_size is not None and int(max_size) < 1:
        raise ValueError(f"max_size (--max-size) must be a positive number of pixels, got "
                         f"{max_size}.")
    records, input_root = _input_records(collection_root_or_records, data_config)
    out = Path(out)
    _check_output(out, input_root, overwrite)

    # The bar starts before TensorFlow loads, so a long export shows life from the start.
    bar = tqdm(total=len(records) * factor, desc=f"Augmenting ({preset} x{factor})",
               unit="img", disable=not progress, file=sys.stderr, leave=False, mininterval=0.5)

    def load(path: str) -> np.ndarray:
        if image_size is not None:
            return load_image(path, int(image_size), data_config.aspect)
        return _limit_size(read_image(path), max_size)

    augmentation = None
    if factor > 1:
        from leukdx.data.augment import build_augmentation, fit_augmentation

        bar.set_postfix_str("building the augmentation")
        augmentation = build_augmentation(preset, int(image_size or 224), seed=seed,
                                          strength=strength)
        if any(getattr(layer, "fit_on_training", False) for layer in augmentation.layers):
            bar.set_postfix_str("fitting stain statistics")
            fit_augmentation(augmentation, [load(p) for p in records["path"]])
        bar.set_postfix_str("")

    # an original without a group is its own group (named by its path)
    declared = records["group"] if "group" in records.columns else [None] * len(records)
    groups = [
        str(g) if g is not None and not pd.isna(g) and str(g).strip() else str(Path(p).absolute())
        for g, p in zip(declared, records["path"])
    ]
    stems = _stems(records)
    rows: list[dict] = []
    out.mkdir(parents=True, exist_ok=True)
    with bar:
        for i, rec in enumerate(records.itertuples(index=False)):
            source, label, path = str(rec.source), int(rec.label), str(rec.path)
            file_format = _output_format(path, image_format)
            suffix = _SUFFIX_OF_FORMAT[file_format]
            original = load(path)
            folder = out / source / IMAGES_FOLDER / CLASS_FOLDERS[label]
            folder.mkdir(parents=True, exist_ok=True)
            copies = []
            if factor > 1:
                copies = _distinct_copies(augmentation, original, factor - 1, seed, i, factor,
                                          path)
            unchanged = (image_size is None and file_format == _output_format(path, "source")
                         and max(original.shape[:2]) == max(read_image_size(path)))
            for k, img in enumerate([original, *copies]):
                name = f"{stems[i]}__aug{k}{suffix}"
                if k == 0 and unchanged:
                    shutil.copyfile(path, folder / name)  # the original, byte for byte
                else:
                    (folder / name).write_bytes(_encode(img, file_format))
                rows.append({
                    "path": f"{source}/{IMAGES_FOLDER}/{CLASS_FOLDERS[label]}/{name}",
                    "label": label,
                    "group": groups[i],
                    "source": source,
                    "origin": str(Path(path).absolute()),
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
        f"seed={seed}, image_size={image_size}, image_format={image_format!r}, "
        f"max_size={max_size}, strength={strength}).\n"
        f"{len(records)} originals -> {len(index)} images ({factor} per original, "
        "`__aug0` is the original; no copy repeats the original or another copy).\n"
        "Each source folder has a manifest (path,label,group,origin): copies share their "
        "original's group, so grouped splits keep them together. Load it with "
        "`load_collection(OUT)`.\n"
    )
    return out


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no decoding)."""
    with Image.open(path) as image:
        return image.height, image.width
