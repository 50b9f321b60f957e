"""Records → decoded image arrays (cached once per experiment) → batched ``tf.data`` pipelines.

Decoding is the expensive, repeated part of an experiment: every fold, epoch and run of a
cross-dataset evaluation sees the same images at the same size. :class:`ImageCache` decodes
each image once per (size, aspect) — keyed by the file's sha256, so exact duplicates decode
once too — and hands out ``uint8`` arrays aligned with any records subset. :func:`make_dataset`
turns such an array into a shuffled, augmented, batched ``tf.data.Dataset``.

TensorFlow is imported inside :func:`make_dataset` only, so caching and decoding work (and
test) without it.

Example:
    >>> cache = ImageCache()
    >>> images = cache.get(records, 224)                  # (N, 224, 224, 3) uint8
    >>> ds = make_dataset(images, records["label"], batch_size=32, training=True, seed=1)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leukdx.config import DataConfig
from leukdx.data.decode import ASPECTS, load_image, load_tiles
from leukdx.data.dedup import sha256_file
from leukdx.io import atomic_output

if TYPE_CHECKING:
    from leukdx.data.stain import StainReference
    from leukdx.data.tiles import FoldImages

__all__ = ["ImageCache", "dataset_from_records", "make_dataset"]

log = logging.getLogger(__name__)


# (sha256, size, aspect, variant): variant is "" for the plain decode, else tags such as
# "c0.5" (centre crop), "t256s256" (tiles), "n2.2m8" (nucleus-centred crops) and
# "s<reference fingerprint>" (stain) joined by "+".
_Key = tuple[str, int, str, str]
_TILES = "tiles"  # the aspect slot of tile keys: a stack of tiles, not one image
_CELLS = "cells"  # the aspect slot of nucleus-centred crops: a stack, largest nucleus first


def _join_tags(*tags: str) -> str:
    return "+".join(t for t in tags if t)


class ImageCache:
    """Decoded, resized images keyed by content and decode settings, in memory and on disk.

    One cache serves a whole experiment: every fold, epoch and run asks it for arrays, and
    only images it has never seen with those settings are decoded. The key is the file's
    sha256, the size, the aspect and a *variant* naming everything else that changes the
    pixels: a centre crop (``c<fraction>``), tiling (``t<size>s<stride>``), nucleus-centred
    crops (``n<scale>m<max_cells>``) and a stain
    normalisation (``s<reference fingerprint>``), so a crop, a tiling or a fold's stain
    reference never returns another setting's pixels, and each image is normalised once per
    reference.

    Args:
        disk_dir: folder for ``.npy`` files (``<sha256>_<size>_<aspect>[_<variant>].npy``)
            that survive the process; ``None`` keeps the cache in memory only.
        workers: decoding and normalising threads (Pillow and NumPy release the GIL);
            ``None`` uses the CPU count.
        progress: show a progress bar while decoding (only on a terminal).

    Attributes:
        decode_count: files actually decoded (memory and disk hits excluded); a tiled file
            counts once.
        normalize_count: images (or tile stacks) stain-normalised (hits excluded).
        disk_hits: arrays loaded from ``disk_dir``.

    Example:
        >>> cache = ImageCache(disk_dir=".leukdx_cache/images")
        >>> x = cache.get(records, 64, aspect="pad")
        >>> fold = cache.fold_images(train_records, test_records, cfg.data)
    """

    def __init__(
        self,
        disk_dir: str | os.PathLike | None = None,
        workers: int | None = None,
        *,
        progress: bool = True,
    ):
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress
        self.decode_count = 0
        self.normalize_count = 0
        self.disk_hits = 0
        self._memory: dict[_Key, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, data_config: DataConfig, *, progress: bool = True) -> ImageCache:
        """The cache ``data.cache`` asks for: memory only, or ``<data.cache_dir>/images``."""
        disk_dir = Path(data_config.cache_dir) / "images" if data_config.cache == "disk" else None
        return cls(disk_dir=disk_dir, workers=data_config.workers, progress=progress)

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        """Drop the in-memory arrays (the disk cache stays)."""
        with self._lock:
            self._memory.clear()

    # ------------------------------------------------------------------ storage

    def _disk_path(self, key: _Key) -> Path:
        sha, size, aspect, variant = key
        assert self.disk_dir is not None
        suffix = f"_{variant}" if variant else ""
        return self.disk_dir / f"{sha}_{size}_{aspect}{suffix}.npy"

    def _load_disk(self, key: _Key) -> np.ndarray | None:
        path = self._disk_path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # damaged file: decode again and overwrite it
            log.warning("Ignoring damaged image cache file %s (%s)", path, exc)
            return None
        size = key[1]
        ndim = 4 if key[2] in (_TILES, _CELLS) else 3
        if arr.ndim != ndim or arr.shape[-3:] != (size, size, 3) or arr.dtype != np.uint8:
            return None
        return arr

    def _save_disk(self, key: _Key, arr: np.ndarray) -> None:
        path = self._disk_path(key)
        try:
            # atomic: a concurrent reader never sees half a file
            with atomic_output(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        except OSError as exc:
            log.warning("Could not write image cache file %s (%s)", path, exc)

    def _from_disk(self, missing: dict[_Key, Any]) -> None:
        """Move the keys found on disk from ``missing`` into memory."""
        if self.disk_dir is None:
            return
        for key in list(missing):
            arr = self._load_disk(key)
            if arr is not None:
                self._memory[key] = arr
                self.disk_hits += 1
                del missing[key]

    def _store(self, key: _Key, arr: np.ndarray) -> None:
        self._memory[key] = arr
        if self.disk_dir is not None:
            self._save_disk(key, arr)

    # ------------------------------------------------------------------ decoding

    def _ensure_decoded(self, jobs: dict[_Key, Callable[[], np.ndarray]]) -> None:
        """Decode (or load from disk) every key of ``jobs`` not yet in memory."""
        missing = {k: job for k, job in jobs.items() if k not in self._memory}
        self._from_disk(missing)
        if missing:
            self._decode_all(missing)

    def _decode(self, key: _Key, job: Callable[[], np.ndarray]) -> np.ndarray:
        arr = job()
        with self._lock:
            self.decode_count += 1
        if self.disk_dir is not None:
            self._save_disk(key, arr)
        return arr

    def _decode_all(self, missing: dict[_Key, Callable[[], np.ndarray]]) -> None:
        from tqdm.auto import tqdm

        jobs = list(missing.items())
        desc = f"Decoding images ({jobs[0][0][1]} px)"
        bar = tqdm(
            total=len(jobs),
            desc=desc,
            unit="img",
            disable=None if self.progress else True,
            leave=False,
        )
        try:
            if self.workers == 1 or len(jobs) == 1:
                for key, job in jobs:
                    self._memory[key] = self._decode(key, job)
                    bar.update(1)
                return
            with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
                # map keeps order and re-raises the first BadImageError here
                for (key, _), arr in zip(jobs, pool.map(lambda kj: self._decode(*kj), jobs)):
                    self._memory[key] = arr
                    bar.update(1)
        finally:
            bar.close()

    def _stain_keys(self, keys: list[_Key], stain: StainReference) -> list[_Key]:
        """Keys of the normalised arrays; normalises (once) those not cached yet."""
        tag = f"s{stain.fingerprint[:16]}"
        out = [(sha, size, aspect, _join_tags(variant, tag)) for sha, size, aspect, variant in keys]
        missing = {nk: k for k, nk in zip(keys, out) if nk not in self._memory}
        self._from_disk(missing)
        if not missing:
            return out
        from leukdx.data.stain import normalize_images

        by_shape: dict[tuple[int, ...], list[tuple[_Key, _Key]]] = {}
        for new_key, base_key in missing.items():
            by_shape.setdefault(self._memory[base_key].shape, []).append((new_key, base_key))
        for shape, pairs in by_shape.items():
            if len(shape) == 3:  # single images: normalise them as one batch
                batch = np.stack([self._memory[b] for _, b in pairs])
                normalised = normalize_images(batch, stain, workers=self.workers)
                for (new_key, _), arr in zip(pairs, normalised):
                    self._store(new_key, arr)
            else:  # tile stacks: one batch per image
                for new_key, base_key in pairs:
                    stack = self._memory[base_key]
                    self._store(new_key, normalize_images(stack, stain, workers=self.workers))
        self.normalize_count += len(missing)
        return out

    # ------------------------------------------------------------------ public

    @staticmethod
    def _hashes(records: pd.DataFrame) -> tuple[list[str], list[str]]:
        paths = records["path"].astype(str).tolist()
        if "sha256" in records.columns:
            return paths, records["sha256"].astype(str).tolist()
        return paths, [sha256_file(p) for p in paths]

    def get(
        self,
        records: pd.DataFrame,
        size: int,
        aspect: str = "stretch",
        *,
        crop_fraction: float | None = None,
        crop_sources: Sequence[str] | None = None,
        stain: StainReference | None = None,
    ) -> np.ndarray:
        """Images of ``records`` at ``size`` x ``size``, aligned with its rows.

        Args:
            records: needs ``path``; ``sha256`` is used as the key (computed from the file when
                the column is missing); ``source`` when ``crop_sources`` is given.
            size: side in pixels.
            aspect: ``stretch`` or ``pad`` (see :func:`leukdx.data.decode.resize_image`).
            crop_fraction: centre-crop each image to this share of each side before resizing
                (``data.crop: center``); ``None`` for no crop.
            crop_sources: crop only images of these sources (``None``: every image).
            stain: a stain reference fitted on the fold's training images
                (:func:`leukdx.data.stain.fit_stain_reference`); the images are normalised
                to it after the resize, once per image and reference.

        Returns:
            ``(len(records), size, size, 3)`` ``uint8`` array (a new array; the cache keeps
            its own copies).

        Raises:
            BadImageError: a file cannot be decoded.
        """
        if aspect not in ASPECTS:
            raise ValueError(f"aspect is {aspect!r}; choose one of {', '.join(ASPECTS)}.")
        size = int(size)
        paths, hashes = self._hashes(records)
        crops: list[float | None] = [crop_fraction] * len(paths)
        if crop_fraction is not None and crop_sources is not None:
            wanted = {str(s) for s in crop_sources}
            crops = [crop_fraction if str(s) in wanted else None for s in records["source"]]
        keys: list[_Key] = [
            (h, size, aspect, f"c{c:g}" if c is not None else "") for h, c in zip(hashes, crops)
        ]
        jobs: dict[_Key, Callable[[], np.ndarray]] = {}
        for key, path, crop in zip(keys, paths, crops):
            if key not in jobs:
                jobs[key] = functools.partial(load_image, path, size, aspect, crop_fraction=crop)
        self._ensure_decoded(jobs)
        if stain is not None:
            keys = self._stain_keys(keys, stain)

        out = np.empty((len(keys), size, size, 3), np.uint8)
        for i, key in enumerate(keys):
            out[i] = self._memory[key]
        return out

    def get_tiles(
        self,
        records: pd.DataFrame,
        size: int,
        tile_px: int,
        stride_px: int | None = None,
        *,
        stain: StainReference | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every image of ``records`` cut into tiles (:func:`leukdx.data.decode.load_tiles`).

        Tiles are for test and inference, aggregated back to one prediction per image with
        :func:`leukdx.data.tiles.aggregate_tile_probs`; a tile does not inherit its image's
        label (the label rule is in :mod:`leukdx.data.tiles`).

        Args:
            records: the images to tile (``path``, optionally ``sha256``).
            size: side of each output tile in pixels.
            tile_px: tile side in the file's own pixels.
            stride_px: step between tiles (``None``: ``tile_px``).
            stain: a training-only stain reference applied to every tile, as in :meth:`get`.

        Returns:
            ``(tiles, tile_owner)``: ``(T, size, size, 3)`` ``uint8`` tiles of all images in
            row order, and ``(T,)`` the row position in ``records`` each tile belongs to.
        """
        size, tile_px = int(size), int(tile_px)
        stride_px = tile_px if stride_px is None else int(stride_px)
        paths, hashes = self._hashes(records)
        tag = f"t{tile_px}s{stride_px}"
        keys: list[_Key] = [(h, size, _TILES, tag) for h in hashes]
        jobs = {
            key: functools.partial(load_tiles, path, size, tile_px, stride_px)
            for key, path in zip(keys, paths)
        }
        return self._stacked(keys, jobs, size, stain)

    def _stacked(self, keys, jobs, size: int, stain) -> tuple[np.ndarray, np.ndarray]:
        """Several arrays per image (tiles, cell crops) decoded once, stain-normalised when
        asked, concatenated in row order with the row position each belongs to."""
        self._ensure_decoded(jobs)
        if stain is not None:
            keys = self._stain_keys(keys, stain)
        stacks = [self._memory[key] for key in keys]
        if not stacks:
            return np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64)
        owner = np.repeat(np.arange(len(stacks)), [len(s) for s in stacks])
        return np.concatenate(stacks), owner

    def get_cells(
        self,
        records: pd.DataFrame,
        size: int,
        scale: float = 2.2,
        max_cells: int = 8,
        *,
        stain: StainReference | None = None,
        scale_by: str = "nucleus",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nucleus-centred crops of every image (:func:`leukdx.data.cells.load_cells`).

        Each image gives one to ``max_cells`` crops, largest nucleus first (the whole image
        when no nucleus is found); detection runs once per image and setting, in the worker
        pool, and is cached like any other variant. Only the first crop of an image may train
        with its label (the label rule is in :mod:`leukdx.data.cells`).

        Args:
            records: the images (``path``, optionally ``sha256``).
            size: side of each crop in pixels.
            scale: crop side in nucleus diameters (``data.cell.scale``).
            max_cells: crops per image at most (``data.cell.max_cells``).
            stain: a training-only stain reference applied to every crop, as in :meth:`get`.
            scale_by: ``nucleus`` or ``red_cell`` (``data.cell.scale_by``): what ``scale``
                counts.

        Returns:
            ``(crops, owner)``: ``(C, size, size, 3)`` ``uint8`` crops of all images in row
            order, each image's largest nucleus first, and ``(C,)`` the row position in
            ``records`` each crop belongs to.

        Example:
            >>> crops, owner = cache.get_cells(records, 224)
            >>> largest = crops[np.r_[0, np.flatnonzero(np.diff(owner)) + 1]]
        """
        from leukdx.data.cells import load_cells

        size, max_cells = int(size), int(max_cells)
        paths, hashes = self._hashes(records)
        # the nucleus rule keeps its old tag, so crops cached before scale_by existed stay valid
        tag = f"n{float(scale):g}m{max_cells}" + ("" if scale_by == "nucleus" else f"-{scale_by}")
        keys: list[_Key] = [(h, size, _CELLS, tag) for h in hashes]
        jobs = {
            key: functools.partial(load_cells, path, size, scale=scale, max_cells=max_cells,
                                   scale_by=scale_by)
            for key, path in zip(keys, paths)
        }
        return self._stacked(keys, jobs, size, stain)

    def fold_images(
        self,
        train_records: pd.DataFrame,
        test_records: pd.DataFrame,
        data_config: DataConfig,
        *,
        seed: int = 0,
    ) -> FoldImages:
        """The arrays of one fold under ``data.crop``, ``data.tile`` and ``data.stain_normalize``.

        1. Training and test images are decoded at ``data.image_size`` / ``data.aspect``,
           centre-cropped where ``data.crop`` says so. With ``data.crop: cell`` an image of
           ``data.crop_sources`` (all when ``None``) is replaced by the crop of its largest
           nucleus, in training (with the image's label) and in ``test``.
        2. With ``data.tile.label_tiles`` (opt-in), training images of ``data.tile.sources``
           are replaced by their tiles, each with its image's label and group.
        3. With ``data.stain_normalize``, a reference is fitted on the **training inputs only**
           (each training source weighted equally) and applied to training and test images
           and tiles. Test images never influence it.
        4. Test images of ``data.tile.sources`` are also cut into tiles; the model scores
           :attr:`FoldImages.test_inputs` and :meth:`FoldImages.test_probabilities` turns
           that into one probability per test record (``data.tile.aggregate``).
        5. With ``data.crop: cell``, the other nuclei's crops of test images are scored too
           (:attr:`FoldImages.cells`) and aggregated with the largest one
           (``data.cell.aggregate``, default ``max``); they are never trained on.

        Args:
            train_records: the fold's training rows.
            test_records: the fold's test rows (``label`` is not needed).
            data_config: the ``data`` settings.
            seed: seed of the Macenko pixel sample.

        Returns:
            :class:`~leukdx.data.tiles.FoldImages`.

        Example:
            >>> fold = cache.fold_images(train_records, test_records, cfg.data)
            >>> model.fit(fold.train, fold.train_records["label"])
            >>> probs = fold.test_probabilities(model.predict(fold.test_inputs))
        """
        from leukdx.data.records import expand_to_tiles
        from leukdx.data.stain import fit_stain_reference
        from leukdx.data.tiles import FoldImages

        d = data_config
        size, aspect, tile, cell = d.image_size, d.aspect, d.tile, d.cell
        crop = {
            "crop_fraction": d.crop_fraction if d.crop == "center" else None,
            "crop_sources": d.crop_sources,
        }
        tiled_sources = {str(s) for s in tile.sources}
        empty = np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64)

        def cell_cropped(records: pd.DataFrame) -> np.ndarray:
            if d.crop != "cell":
                return np.zeros(len(records), bool)
            if d.crop_sources is None:
                mask = np.ones(len(records), bool)
            else:
                mask = records["source"].astype(str).isin(map(str, d.crop_sources)).to_numpy()
            both = sorted(set(records["source"].astype(str)[mask]) & tiled_sources)
            if both:
                raise ValueError(
                    f"data.crop: cell and data.tile.sources both apply to {', '.join(both)}; "
                    "list the cell-cropped sources in data.crop_sources without the tiled ones."
                )
            return mask

        def images_of(records: pd.DataFrame, stain=None):
            """Whole (or centre-cropped) images, largest-nucleus crops where cell-cropped,
            and the other crops with their record positions."""
            celled = cell_cropped(records)
            if not celled.any():
                return self.get(records, size, aspect, stain=stain, **crop), *empty
            images = np.empty((len(records), size, size, 3), np.uint8)
            if not celled.all():
                images[~celled] = self.get(records[~celled], size, aspect, stain=stain, **crop)
            crops, local_owner = self.get_cells(
                records[celled], size, cell.scale, cell.max_cells, stain=stain,
                scale_by=cell.scale_by,
            )
            first = np.r_[True, local_owner[1:] != local_owner[:-1]]
            images[celled] = crops[first]
            return images, crops[~first], np.flatnonzero(celled)[local_owner[~first]]

        def training_inputs(stain=None) -> tuple[np.ndarray, pd.DataFrame]:
            images = images_of(train_records, stain)[0]
            if not (tile.label_tiles and tiled_sources):
                return images, train_records
            tiled = train_records["source"].astype(str).isin(tiled_sources).to_numpy()
            if not tiled.any():
                return images, train_records
            tiles, owner = self.get_tiles(
                train_records[tiled], size, tile.size_px, tile.stride_px, stain=stain
            )
            rows = pd.concat(
                [train_records[~tiled], expand_to_tiles(train_records[tiled], owner)],
                ignore_index=True,
            )
            return np.concatenate([images[~tiled], tiles]), rows

        train, train_rows = training_inputs()
        reference = None
        if d.stain_normalize != "none":
            reference = fit_stain_reference(
                train, d.stain_normalize, sources=train_rows["source"].astype(str), seed=seed
            )
            train, train_rows = training_inputs(reference)
        test, cells, cell_owner = images_of(test_records, reference)
        test_tiled = test_records["source"].astype(str).isin(tiled_sources).to_numpy()
        if test_tiled.any():
            tiles, local_owner = self.get_tiles(
                test_records[test_tiled], size, tile.size_px, tile.stride_px, stain=reference
            )
            owner = np.flatnonzero(test_tiled)[local_owner]
        else:
            tiles, owner = empty
        return FoldImages(
            train=train,
            train_records=train_rows,
            test=test,
            tiles=tiles,
            tile_owner=owner,
            stain_reference=reference,
            aggregate=tile.aggregate,
            top_k=tile.top_k,
            cells=cells,
            cell_owner=cell_owner,
            cell_aggregate=cell.aggregate,
            cell_top_k=cell.top_k,
        )


def make_dataset(
    images: np.ndarray,
    labels: Sequence[float] | np.ndarray | pd.Series | None = None,
    *,
    batch_size: int,
    training: bool = False,
    seed: int = 0,
    augmentation: Any = None,
    expand: int = 1,
):
    """A batched ``tf.data.Dataset`` over in-memory ``uint8`` images.

    Args:
        images: ``(N, S, S, 3)`` ``uint8`` (e.g. from :meth:`ImageCache.get`).
        labels: ``N`` labels (0 healthy, 1 leukaemia) or ``None`` for an images-only dataset.
        batch_size: images per batch (the last batch may be smaller).
        training: shuffle (seeded, a new order every iteration), repeat ``expand`` passes
            and augment. Otherwise the order is kept and nothing is augmented.
        seed: run seed of the shuffle and of the augmentation; the same seed gives the same
            sequence of batches, augmented pixels included.
        augmentation: a preset of :mod:`leukdx.data.augment` (or any Keras layer /
            ``Sequential``) applied to whole float32 batches (training only); ``None`` for
            none. Its data-dependent layers (``RandStainNA``) are fitted on ``images`` first.
        expand: passes over the data per iteration (LeukNet's enlarged training set: each
            pass is differently shuffled and augmented).

    Returns:
        Dataset of ``(images float32 (B, S, S, 3) in [0, 255], labels float32 (B,))``, or of
        images alone when ``labels`` is ``None``; prefetched.

    Determinism: each training example carries a stateless seed pair derived from (``seed``,
    epoch, its row index) — a seeded random stream that is re-drawn every iteration exactly as
    the reshuffle is, zipped with the index before batching — and the augmentation draws from
    it (:func:`leukdx.data.augment.apply_augmentation`). The augmented stream therefore does not
    depend on ``tf.data``'s thread count, on the order of parallel map calls or on the batch
    size.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, S, S, 3), got shape {images.shape}.")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (as ImageCache returns), got {images.dtype}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if expand < 1:
        raise ValueError(f"expand must be at least 1, got {expand}.")
    n = len(images)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{n} images but {len(labels)} labels.")

    # The images live once in TensorFlow memory as uint8 and the dataset is built over row
    # *indices*: shuffling moves integers, not pictures (a shuffle buffer of images would hold
    # a second full copy), and each batch is one gather followed by the float32 cast, so the
    # 4x larger float copy only ever exists one batch at a time. The array is a captured input
    # of the map function, not a constant serialised into the graph (no 2 GB GraphDef limit).
    images_t = tf.constant(images)
    labels_t = tf.constant(labels) if labels is not None else None

    augment = training and augmentation is not None
    if augment:
        from leukdx.data.augment import fit_augmentation

        fit_augmentation(augmentation, images)  # fold-specific statistics: training rows only

    indices = tf.data.Dataset.range(n)
    if training:
        indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        if expand > 1:
            indices = indices.repeat(expand)
    if augment:
        # One stateless seed pair per example: (stream value, row index). The stream is a
        # function of the seed and of the iteration (epoch), like the reshuffle, and is zipped
        # in before any parallel map, so every example's seed is fixed whatever runs it. The
        # pair is stacked per batch, not per example: no per-element function call.
        stream = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        indices = tf.data.Dataset.zip(indices, stream)
    indices = indices.batch(batch_size)

    def gather(idx, stream_values=None):
        x = tf.cast(tf.gather(images_t, idx), tf.float32)
        if augment:
            from leukdx.data.augment import apply_augmentation

            seeds = tf.stack([stream_values, idx], axis=1)
            x = apply_augmentation(augmentation, x, seeds)
        if labels_t is None:
            return x
        return x, tf.gather(labels_t, idx)

    ds = indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    # Parallelism comes from batches in flight, not from threads inside one batch's ops: a
    # multi-threaded gather or warp preempts both halves of the training step's own threads
    # on a small machine (input_bound on 2 cores: pipeline / in-memory 1.05 -> 1.03).
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def dataset_from_records(
    cache: ImageCache,
    records: pd.DataFrame,
    data_config: DataConfig,
    *,
    batch_size: int,
    training: bool,
    seed: int = 0,
    augmentation: Any = None,
    expand: int = 1,
):
    """:func:`make_dataset` over ``records`` at ``data.image_size`` / ``data.aspect``.

    Args:
        cache: the experiment's image cache (decodes each image at most once).
        records: rows to serve, in this order when ``training`` is false.
        data_config: supplies ``image_size`` and ``aspect``.
        batch_size, training, seed, augmentation, expand: as in :func:`make_dataset`.

    Returns:
        ``tf.data.Dataset`` of ``(float32 images, float32 labels)``.
    """
    images = cache.get(records, data_config.image_size, data_config.aspect)
    labels = records["label"].to_numpy(dtype=np.float32)
    return make_dataset(
        images,
        labels,
        batch_size=batch_size,
        training=training,
        seed=seed,
        augmentation=augmentation,
        expand=expand,
    )
