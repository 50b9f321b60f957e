"""Scan a collection (or one source) into a records table: one row per image.

A **source** is one dataset folder; a **collection** is a folder whose sub-folders are sources
(``data.root``). Each source is read with one of three layouts, detected automatically (or set
with ``data.layout`` / ``data.layouts.<source>``):

``folders``
    class sub-folders, e.g. ``healthy/`` and ``leukemia/`` (names from ``data.class_aliases``,
    case-insensitive; images may sit in nested folders below a class folder).
``allidb``
    the ALL-IDB file-name rule: ``Im001_1.jpg`` is leukaemia, ``Im131_0.tif`` healthy
    (auto-detected when every image is named ``ImNNN_Y``; when the layout is set explicitly,
    any name ending in ``_0`` / ``_1`` counts).
``manifest``
    a CSV file (``data.manifest``) with columns ``path,label[,group][,origin]``; ``label`` is
    ``0``/``1`` or a class name, ``group`` ties images that must stay together (a patient, the
    augmented copies of one original) and ``origin`` names the file a copy was made from.
    An optional ``copy`` column (0: original, 1, 2, ...: augmented copy) marks augmented
    copies, which splits use as training data only (records column ``augmented``); without
    it, a file with an ``origin`` named ``<stem>__augK`` (K > 0, as ``leukdx data augment``
    writes) is a copy.

Auto-detection tries them in that order: class sub-folders win, and a manifest only counts
when it has a ``path`` column (so a descriptive ``MANIFEST.csv`` with other columns beside
class folders is ignored). Hidden files, the manifest and non-image extensions are ignored.

Each file is hashed (sha256 of the bytes, 16x16 dHash of the pixels) and its size and format
recorded; the results are cached in ``<data.cache_dir>/scan.csv`` keyed by path, size and
modification time, so loading the same collection again reads no pixels. Groups (the unit a
split never cuts) are then assigned over the whole collection (:mod:`leukdx.data.dedup`).

Example:
    >>> from leukdx.config import DataConfig
    >>> coll = load_collection("../shared/data", DataConfig(near_duplicate_distance=12))
    >>> coll.records.groupby(["source", "label"]).size()
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukdx.config import DataConfig
from leukdx.data.decode import IMAGE_EXTENSIONS, BadImageError, is_image_file, load_preview
from leukdx.data.dedup import assign_groups, dhash_hex, mixed_label_groups, sha256_bytes
from leukdx.errors import DataError
from leukdx.io import atomic_write_csv

__all__ = [
    "COLUMNS",
    "LAYOUTS",
    "Collection",
    "SourceFile",
    "DataError",
    "DataWarning",
    "class_alias_map",
    "check_source_settings",
    "data_fingerprint",
    "detect_layout",
    "expand_to_tiles",
    "list_source_files",
    "load_collection",
    "require_two_classes",
    "with_config",
]

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "path",
    "label",
    "source",
    "group",
    "sha256",
    "dhash",
    "width",
    "height",
    "format",
    "augmented",
)
LAYOUTS: tuple[str, ...] = ("folders", "allidb", "manifest")
LABEL_NAMES = {0: "healthy", 1: "leukaemia"}

# ALL-IDB naming: ImXXX_Y.ext with Y = 1 (blast / ALL patient) or 0 (healthy). Auto-detection
# asks for the strict ImNNN_Y form (a generic "cell_1.png" must not silently become a label);
# a source set to the allidb layout accepts any name ending in _0 / _1.
_ALLIDB_STRICT = re.compile(r"^im\d+_[01]$", re.IGNORECASE)
_ALLIDB_STEM = re.compile(r"^.+_([01])$")
_SCAN_COLUMNS = ["path", "size", "mtime_ns", "sha256", "dhash", "width", "height", "format"]
_SCAN_FILE = "scan.csv"
_PREVIEW_SIDE = 128  # dHash preview resolution (JPEG draft scale), see decode.load_preview


class DataWarning(UserWarning):
    """Something in the data deserves attention but does not stop loading."""


@dataclass
class Collection:
    """A scanned collection.

    Attributes:
        records: one row per image, columns :data:`COLUMNS` (path, label, source, group,
            sha256, dhash, width, height, format, augmented), sorted by source then path.
        skipped: ``(path, reason)`` of unreadable files skipped under
            ``data.on_bad_image: skip``.
        layouts: source → layout used (``folders``, ``allidb``, ``manifest``; merged sources
            with different layouts show them joined by ``+``).
        root: the folder that was loaded.
    """

    records: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=Path)

    @property
    def fingerprint(self) -> str:
        """sha1 over the sorted (sha256, label) pairs: same images and labels, same value."""
        return data_fingerprint(self.records)

    @property
    def sources(self) -> list[str]:
        """Source names, sorted."""
        return sorted(self.records["source"].unique().tolist())

    def __len__(self) -> int:
        return len(self.records)


def data_fingerprint(records: pd.DataFrame) -> str:
    """sha1 hex of the sorted ``sha256:label`` lines of ``records`` (order-independent)."""
    lines = sorted(f"{s}:{int(lab)}" for s, lab in zip(records["sha256"], records["label"]))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def require_two_classes(records: pd.DataFrame, what: str) -> None:
    """Raise :class:`DataError` unless ``records`` holds both healthy and leukaemia images.

    Args:
        records: a records table (or a subset of one).
        what: what the records are for, used in the message (e.g. ``"test fold 'bccd'"``).

    Raises:
        DataError: naming the sources involved and what to do.
    """
    labels = set(records["label"].astype(int).tolist()) if len(records) else set()
    if labels >= {0, 1}:
        return
    sources = sorted(records["source"].astype(str).unique()) if len(records) else []
    where = f" (sources: {', '.join(sources)})" if sources else ""
    if not labels:
        raise DataError(f"{what} has no images{where}. Check data.root and data.sources.")
    (present,) = labels
    missing = LABEL_NAMES[1 - present]
    raise DataError(
        f"{what} needs both classes but has only {LABEL_NAMES[present]} images{where}. "
        f"Add a source with {missing} images, or choose sources that have both classes "
        "(data.sources, evaluate.test_sources / evaluate.train_sources)."
    )


# --------------------------------------------------------------------------- class names


def class_alias_map(data_config: DataConfig) -> dict[str, int]:
    """Lower-case class-folder name → label, from ``data.class_aliases``."""
    label_of_key = {"healthy": 0, "normal": 0, "0": 0, "leukemia": 1, "leukaemia": 1, "1": 1}
    mapping: dict[str, int] = {}
    for key, names in data_config.class_aliases.items():
        label = label_of_key.get(str(key).lower())
        if label is None:
            raise DataError(
                f"data.class_aliases has key '{key}'; its keys must be 'healthy' and 'leukemia'."
            )
        for name in [key, *names]:
            name = str(name).strip().lower()
            if mapping.get(name, label) != label:
                raise DataError(
                    f"data.class_aliases lists '{name}' under both classes; keep it in one."
                )
            mapping[name] = label
    return mapping


def _label_from_text(text: str, aliases: dict[str, int]) -> int | None:
    text = str(text).strip().lower()
    if text in ("0", "1"):
        return int(text)
    if text in ("0.0", "1.0"):
        return int(float(text))
    return aliases.get(text)


# --------------------------------------------------------------------------- file listing


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """Visible image files under ``folder`` (hidden folders are not entered)."""
    found: list[Path] = []
    if not recursive:
        return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
    return sorted(found)


def _find_manifest(folder: Path, name: str) -> Path | None:
    exact = folder / name
    if exact.is_file():
        return exact
    lowered = name.lower()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.lower() == lowered:
            return p
    return None


def _manifest_columns(path: Path) -> list[str]:
    try:
        header = pd.read_csv(path, nrows=0, dtype=str)
    except Exception:  # not a CSV at all: not a manifest
        return []
    return [str(c).strip().lower() for c in header.columns]


def _has_manifest(folder: Path, data_config: DataConfig) -> bool:
    found = _find_manifest(folder, data_config.manifest)
    return found is not None and "path" in _manifest_columns(found)


def _class_dirs(folder: Path, aliases: dict[str, int]) -> list[Path]:
    return [d for d in _subdirs(folder) if d.name.lower() in aliases]


def _looks_like_source(folder: Path, data_config: DataConfig) -> bool:
    """A folder is one source (not a collection) if it has class folders, a manifest or images."""
    aliases = class_alias_map(data_config)
    return (
        bool(_class_dirs(folder, aliases))
        or _has_manifest(folder, data_config)
        or bool(_images_in(folder, recursive=False))
    )


def detect_layout(folder: str | os.PathLike, data_config: DataConfig | None = None) -> str:
    """The layout of one source folder: ``folders``, ``manifest`` or ``allidb``.

    Raises:
        DataError: the folder has no images, or fits no layout (the message lists what each
            layout expects and how to set one).
    """
    data_config = data_config or DataConfig()
    folder = Path(folder)
    if _class_dirs(folder, class_alias_map(data_config)):
        return "folders"
    if _has_manifest(folder, data_config):
        return "manifest"
    images = _images_in(folder, recursive=True)
    if not images:
        raise _empty_source_error(folder)
    if all(_ALLIDB_STRICT.match(p.stem) for p in images):
        return "allidb"
    names = sorted({n for names in data_config.class_aliases.values() for n in names})
    raise DataError(
        f"Cannot tell the layout of source folder '{folder}'. Expected class sub-folders "
        f"(named one of: {', '.join(names)}; see data.class_aliases), ALL-IDB file names "
        f"(ImNNN_1 leukaemia, ImNNN_0 healthy), or a manifest '{data_config.manifest}' with columns "
        f"path,label[,group]. Arrange the folder so, or set data.layouts.{folder.name}."
    )


def _empty_source_error(folder: Path) -> DataError:
    return DataError(
        f"Source folder '{folder}' contains no images ({', '.join(IMAGE_EXTENSIONS)}). "
        "Add images, remove the folder, or leave it out with data.sources."
    )


@dataclass
class SourceFile:
    """One image listed by a layout, before scanning: its label and declared group/origin."""

    path: str
    label: int
    source: str
    group: str | None = None
    origin: str | None = None
    augmented: bool = False


def _list_folders(folder: Path, source: str, data_config: DataConfig) -> list[SourceFile]:
    aliases = class_alias_map(data_config)
    subdirs = _subdirs(folder)
    if not subdirs:
        if _images_in(folder, recursive=False):
            raise DataError(
                f"Source '{source}' ({folder}) uses the folders layout but has no class "
                "sub-folders. Put images in healthy/ and leukemia/ sub-folders, or set "
                f"data.layouts.{source} to allidb or manifest."
            )
        raise _empty_source_error(folder)
    items: list[SourceFile] = []
    for sub in subdirs:
        label = aliases.get(sub.name.lower())
        if label is None:
            raise DataError(
                f"Source '{source}': folder '{sub}' is not a class folder. Class folders are "
                f"named (case-insensitive) {', '.join(sorted(aliases))}. Rename or move it, "
                "or add its name to data.class_aliases."
            )
        images = _images_in(sub, recursive=True)
        if not images:
            raise DataError(
                f"Class folder '{sub}' of source '{source}' contains no images "
                f"({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the empty folder."
            )
        items.extend(SourceFile(str(p), label, source) for p in images)
    loose = _images_in(folder, recursive=False)
    if loose:
        warnings.warn(
            f"Source '{source}': {len(loose)} image(s) directly in {folder} are outside the "
            f"class folders and are ignored (e.g. {loose[0].name}).",
            DataWarning,
            stacklevel=3,
        )
    return items


def _list_allidb(folder: Path, source: str) -> list[SourceFile]:
    images = _images_in(folder, recursive=True)
    if not images:
        raise _empty_source_error(folder)
    items = []
    for p in images:
        match = _ALLIDB_STEM.match(p.stem)
        if match is None:
            raise DataError(
                f"Source '{source}' uses the allidb layout, but '{p}' does not end in _0 "
                "(healthy) or _1 (leukaemia) before its extension. Rename it, move it out, or "
                f"choose another layout with data.layouts.{source}."
            )
        items.append(SourceFile(str(p), int(match.group(1)), source))
    return items


def _list_manifest(folder: Path, source: str, data_config: DataConfig) -> list[SourceFile]:
    manifest = _find_manifest(folder, data_config.manifest)
    if manifest is None:
        raise DataError(
            f"Source '{source}' uses the manifest layout but '{folder / data_config.manifest}' "
            "does not exist. Create it (columns path,label[,group]) or set data.manifest."
        )
    try:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"Manifest '{manifest}' is not a readable CSV file: {exc}") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(
            f"Manifest '{manifest}' lacks column(s) {', '.join(missing)}; it needs "
            f"path,label[,group] (found: {', '.join(table.columns)})."
        )
    if table.empty:
        raise DataError(f"Manifest '{manifest}' of source '{source}' lists no images.")
    aliases = class_alias_map(data_config)
    items: list[SourceFile] = []
    seen: set[str] = set()
    for row_number, row in enumerate(table.to_dict("records"), start=2):  # line 1 = header
        rel = str(row["path"]).strip()
        path = Path(rel) if os.path.isabs(rel) else folder / rel
        where = f"Manifest '{manifest}' line {row_number}"
        if not rel or not path.is_file():
            raise DataError(f"{where}: image '{rel}' not found (looked at {path}). Fix the path.")
        label = _label_from_text(row["label"], aliases)
        if label is None:
            raise DataError(
                f"{where}: label '{row['label']}' is neither 0/1 nor a class name "
                f"({', '.join(sorted(aliases))}; see data.class_aliases)."
            )
        key = os.path.normpath(str(path))
        if key in seen:
            raise DataError(f"{where}: '{rel}' is listed twice. Keep one row per image.")
        seen.add(key)
        origin = str(row.get("origin", "") or "").strip() or None
        if origin is not None and not os.path.isabs(origin):
            origin = str(folder / origin)
        group = str(row.get("group", "") or "").strip() or None
        augmented = _is_augmented_copy(row, path, origin)
        items.append(SourceFile(str(path), label, source, group, origin, augmented))
    return items


# `leukdx data augment` names the original `<stem>__aug0` and its copies `__aug1`, `__aug2`, ...
_AUGMENTED_STEM = re.compile(r"__aug(\d+)$")


def _is_augmented_copy(row: dict, path: Path, origin: str | None) -> bool:
    """An offline augmented copy (test sets hold originals only): the manifest's ``copy``
    column is above 0, or, without that column, a file with an ``origin`` named ``__augK``
    with K above 0."""
    copy = str(row.get("copy", "") or "").strip()
    if copy:
        try:
            return float(copy) > 0
        except ValueError:
            raise DataError(
                f"Manifest column 'copy' of '{path}' is '{copy}'; it must be 0 for an "
                "original or the number of an augmented copy."
            ) from None
    match = _AUGMENTED_STEM.search(path.stem)
    return origin is not None and match is not None and int(match.group(1)) > 0


def list_source_files(
    folder: str | os.PathLike, source: str, layout: str, data_config: DataConfig
) -> list[SourceFile]:
    """The images of one source with their labels (and manifest group/origin), sorted."""
    folder = Path(folder)
    if layout == "folders":
        return _list_folders(folder, source, data_config)
    if layout == "allidb":
        return _list_allidb(folder, source)
    if layout == "manifest":
        return _list_manifest(folder, source, data_config)
    raise DataError(f"Unknown layout '{layout}' for source '{source}'; choose one of {LAYOUTS}.")


# --------------------------------------------------------------------------- scan + cache


def _scan_one(path: str) -> tuple[str, str, int, int, str]:
    """(sha256, dhash hex, width, height, format) of one file; BadImageError when unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadImageError(path, f"the file cannot be read ({exc})") from exc
    preview, fmt, width, height = load_preview(data, path, min_side=_PREVIEW_SIDE)
    return sha256_bytes(data), dhash_hex(preview), width, height, fmt


class _ScanCache:
    """``scan.csv``: per-file scan results keyed by absolute path, size and mtime."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.file = Path(cache_dir) / _SCAN_FILE if cache_dir else None
        self.table: dict[str, tuple] = {}
        self.dirty = False
        if self.file is not None and self.file.is_file():
            try:
                df = pd.read_csv(self.file, dtype={"sha256": str, "dhash": str, "format": str})
                if list(df.columns) == _SCAN_COLUMNS:
                    for row in df.itertuples(index=False):
                        self.table[row.path] = (
                            int(row.size),
                            int(row.mtime_ns),
                            row.sha256,
                            row.dhash,
                            int(row.width),
                            int(row.height),
                            row.format,
                        )
            except Exception as exc:  # a damaged cache only costs a rescan
                log.warning("Ignoring unreadable scan cache %s (%s)", self.file, exc)

    def get(self, path: str, size: int, mtime_ns: int):
        hit = self.table.get(path)
        if hit is not None and hit[0] == size and hit[1] == mtime_ns:
            return hit[2:]
        return None

    def put(self, path: str, size: int, mtime_ns: int, result: tuple) -> None:
        self.table[path] = (size, mtime_ns, *result)
        self.dirty = True

    def save(self) -> None:
        if self.file is None or not self.dirty:
            return
        rows = [(p, *v) for p, v in sorted(self.table.items()) if os.path.exists(p)]
        df = pd.DataFrame(rows, columns=_SCAN_COLUMNS)
        try:
            atomic_write_csv(self.file, df)  # readers see the old or the new table
        except OSError as exc:
            log.warning("Could not write scan cache %s (%s)", self.file, exc)


def _progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    # disable=None lets tqdm switch itself off when stderr is not a terminal (logs, CI)
    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        disable=None if progress else True,
        file=sys.stderr,
        leave=False,
    )


def _scan_files(
    paths: list[str], data_config: DataConfig, progress: bool
) -> tuple[dict[str, tuple], dict[str, str]]:
    """Scan results per path, and the reason per unreadable path."""
    cache = _ScanCache(data_config.cache_dir)
    results: dict[str, tuple] = {}
    bad: dict[str, str] = {}
    todo: list[tuple[str, int, int]] = []
    for path in paths:
        st = os.stat(path)
        hit = cache.get(path, st.st_size, st.st_mtime_ns)
        if hit is not None:
            results[path] = hit
        else:
            todo.append((path, st.st_size, st.st_mtime_ns))
    if todo:
        workers = data_config.workers or os.cpu_count() or 1
        with (
            _progress_bar(len(todo), "Scanning images", progress) as bar,
            ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool,
        ):
            futures = {pool.submit(_scan_one, p): (p, size, mtime) for p, size, mtime in todo}
            for future in as_completed(futures):
                path, size, mtime = futures[future]
                try:
                    result = future.result()
                except BadImageError as exc:
                    bad[path] = exc.reason
                else:
                    results[path] = result
                    cache.put(path, size, mtime, result)
                bar.update(1)
        cache.save()
    return results, bad


# --------------------------------------------------------------------------- collection


def _source_folders(root: Path, data_config: DataConfig) -> list[tuple[str, Path]]:
    if _looks_like_source(root, data_config):
        return [(root.name, root)]
    folders = _subdirs(root)
    if not folders:
        raise DataError(
            f"'{root}' contains neither source folders nor images. Point data.root at a "
            "collection (one sub-folder per source) or at a single source folder."
        )
    available = {f.name for f in folders}
    merged_names = set(data_config.merge_sources)
    for target, members in data_config.merge_sources.items():
        unknown = [m for m in members if m not in available]
        if unknown:
            raise DataError(
                f"data.merge_sources.{target} lists {', '.join(unknown)}, not found in {root} "
                f"(sources: {', '.join(sorted(available))})."
            )
    if data_config.sources is not None:
        unknown = [s for s in data_config.sources if s not in available | merged_names]
        if unknown:
            raise DataError(
                f"data.sources lists {', '.join(unknown)}, not found in {root}. "
                f"Available sources: {', '.join(sorted(available | merged_names))}."
            )
        wanted = set(data_config.sources)
        merged_into = _merge_map(data_config)
        folders = [f for f in folders if f.name in wanted or merged_into.get(f.name) in wanted]
    return [(f.name, f) for f in folders]


def _merge_map(data_config: DataConfig) -> dict[str, str]:
    """Folder name → merged source name."""
    mapping: dict[str, str] = {}
    for target, members in data_config.merge_sources.items():
        for member in members:
            if member in mapping and mapping[member] != target:
                raise DataError(
                    f"data.merge_sources puts '{member}' into both '{mapping[member]}' and "
                    f"'{target}'; list it once."
                )
            mapping[member] = target
    return mapping


def _subsample(records: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` images per (source, label), drawn as whole groups."""
    keep: list[int] = []
    for (source, label), cell in records.groupby(["source", "label"], sort=True):
        if len(cell) <= max_per_class:
            keep.extend(cell.index)
            continue
        # per-cell seed: the draw in one source does not depend on which other sources exist
        rng = np.random.default_rng([seed, zlib.crc32(str(source).encode()), int(label)])
        by_group = {g: list(idx) for g, idx in cell.groupby("group", sort=True).groups.items()}
        names = sorted(by_group)
        count = 0
        for k in rng.permutation(len(names)):
            members = by_group[names[k]]
            if count + len(members) <= max_per_class:
                keep.extend(members)
                count += len(members)
            if count >= max_per_class:
                break
    return records.loc[sorted(keep)]


def load_collection(
    root: str | os.PathLike,
    data_config: DataConfig | None = None,
    *,
    progress: bool = True,
    seed: int = 0,
) -> Collection:
    """Scan a collection (or a single source) into a :class:`Collection`.

    Args:
        root: a folder of sources, or one source folder.
        data_config: ``data`` section of the config (layouts, aliases, subset, merging,
            bad-image policy, cache folder, near-duplicate distance, workers). Defaults apply
            when ``None``; ``data.cache_dir`` empty disables the scan cache.
        progress: show a progress bar while hashing (only on a terminal).
        seed: seed of the ``data.max_per_class`` subsample.

    Returns:
        The collection: records (columns :data:`COLUMNS`), skipped files, layouts, root.

    Raises:
        DataError: missing root, empty source or class folder, unknown class folder,
            undetectable layout, bad manifest, unknown source names in the config.
        BadImageError: an unreadable image under ``data.on_bad_image: error``.

    Example:
        >>> coll = load_collection("../shared/data", DataConfig(sources=["bccd"]))
        >>> coll.records["label"].unique().tolist()
        [0]
    """
    data_config = data_config or DataConfig()
    root_path = Path(root).expanduser().absolute()
    if not root_path.is_dir():
        raise DataError(
            f"Data folder '{root_path}' does not exist or is not a folder. Set data.root "
            "(or pass the folder on the command line)."
        )

    items: list[SourceFile] = []
    layouts: dict[str, str] = {}
    for name, folder in _source_folders(root_path, data_config):
        layout = data_config.layouts.get(name, data_config.layout)
        if layout == "auto":
            layout = detect_layout(folder, data_config)
        layouts[name] = layout
        items.extend(list_source_files(folder, name, layout, data_config))

    scanned, bad = _scan_files([it.path for it in items], data_config, progress)
    skipped = sorted(bad.items())
    if skipped:
        if data_config.on_bad_image == "error":
            path, reason = skipped[0]
            if len(skipped) > 1:
                reason += f" ({len(skipped) - 1} more unreadable file(s) in this collection)"
            raise BadImageError(path, reason)
        listing = "\n".join(f"  {p}: {r}" for p, r in skipped)
        warnings.warn(
            f"Skipped {len(skipped)} unreadable image(s) (data.on_bad_image: skip):\n{listing}",
            DataWarning,
            stacklevel=2,
        )

    rows: list[dict[str, Any]] = []
    for it in items:
        if it.path not in scanned:
            continue
        sha, dh, width, height, fmt = scanned[it.path]
        rows.append(
            {
                "path": it.path,
                "label": it.label,
                "source": it.source,
                "group": it.group,
                "sha256": sha,
                "dhash": dh,
                "width": width,
                "height": height,
                "format": fmt,
                "origin": it.origin,
                "augmented": it.augmented,
            }
        )
    if not rows:
        raise DataError(f"No readable images in '{root_path}' ({len(skipped)} skipped).")
    records = pd.DataFrame(rows)
    records["group"] = assign_groups(
        records,
        data_config.near_duplicate_distance,
        recrop_similarity=data_config.recrop_similarity,
        cache_dir=data_config.cache_dir or None,
        workers=data_config.workers,
    )
    records = records.drop(columns=["origin"])

    mixed = mixed_label_groups(records)
    if mixed:
        examples = "; ".join(
            ", ".join(records.loc[records["group"] == g, "path"].map(_short).tolist())
            for g in mixed[:5]
        )
        warnings.warn(
            f"{len(mixed)} group(s) contain both healthy and leukaemia images (duplicates filed "
            f"under both classes?): {examples}. Check these labels.",
            DataWarning,
            stacklevel=2,
        )

    merged_into = _merge_map(data_config)
    if merged_into:
        records["source"] = records["source"].map(lambda s: merged_into.get(s, s))
        combined: dict[str, list[str]] = {}
        for name, layout in layouts.items():
            combined.setdefault(merged_into.get(name, name), []).append(layout)
        layouts = {s: "+".join(sorted(set(v))) for s, v in combined.items()}

    if data_config.max_per_class is not None:
        if data_config.max_per_class < 1:
            raise DataError("data.max_per_class must be at least 1 (or null for all images).")
        records = _subsample(records, data_config.max_per_class, seed)

    records = records.sort_values(["source", "path"], kind="stable").reset_index(drop=True)
    records = records[list(COLUMNS)].astype(
        {"label": "int64", "width": "int64", "height": "int64", "augmented": bool}
    )
    check_source_settings(records, data_config)
    log.info("Loaded %d images from %d source(s) in %s", len(records), len(layouts), root_path)
    return Collection(
        records=records, skipped=skipped, layouts=dict(sorted(layouts.items())), root=root_path
    )


def check_source_settings(records: pd.DataFrame, data_config: DataConfig) -> None:
    """Check that ``data.tile.sources`` and ``data.crop_sources`` name loaded sources.

    A misspelt name would silently tile or crop nothing, so it stops loading. A name left out
    by ``data.sources`` only warns (the subset may be deliberate).

    Args:
        records: the loaded records (after merging sources).
        data_config: the ``data`` settings.

    Raises:
        DataError: a listed source is not in the collection.
    """
    loaded = set(records["source"].astype(str))
    settings = [("data.tile.sources", data_config.tile.sources)]
    if data_config.crop == "center" and data_config.crop_sources is not None:
        settings.append(("data.crop_sources", data_config.crop_sources))
    for key, names in settings:
        unknown = [str(n) for n in names if str(n) not in loaded]
        if not unknown:
            continue
        message = (
            f"{key} lists {', '.join(unknown)}, not among the loaded sources "
            f"({', '.join(sorted(loaded))})."
        )
        if data_config.sources is None:
            raise DataError(message + " Fix the name or remove it.")
        warnings.warn(message + " They are left out by data.sources.", DataWarning, stacklevel=3)


def expand_to_tiles(records: pd.DataFrame, tile_owner: np.ndarray) -> pd.DataFrame:
    """One row per tile: a copy of the row of the image the tile was cut from.

    Tiles keep their image's ``group`` (so a split never separates tiles of one image) and
    its ``label``. Giving a tile its image's label is only right when the label describes
    every part of the image; see :mod:`leukdx.data.tiles` for the label rule and
    ``data.tile.label_tiles``.

    Args:
        records: the images that were tiled.
        tile_owner: ``(T,)`` position in ``records`` of each tile's image.

    Returns:
        ``T`` rows with the columns of ``records`` plus ``tile`` (the tile's number within its
        image), index reset.

    Example:
        >>> tiles, owner = cache.get_tiles(records, 96, 256)
        >>> expand_to_tiles(records, owner)[["path", "tile", "label"]].head(2)
    """
    owner = np.asarray(tile_owner, dtype=np.int64).reshape(-1)
    if len(owner) and (owner.min() < 0 or owner.max() >= len(records)):
        raise ValueError(f"tile_owner refers to rows outside the {len(records)} records.")
    out = records.iloc[owner].reset_index(drop=True)
    # number tiles 0, 1, ... within each image, in the order they come
    out["tile"] = pd.Series(owner).groupby(owner).cumcount().to_numpy()
    return out


def _short(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def with_config(data_config: DataConfig | None, **changes: Any) -> DataConfig:
    """A copy of ``data_config`` (or the defaults) with some fields changed."""
    return replace(data_config or DataConfig(), **changes)
