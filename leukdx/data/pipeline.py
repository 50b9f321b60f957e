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

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leukdx.config import DataConfig
from leukdx.data.decode import ASPECTS, load_image
from leukdx.data.dedup import sha256_file

__all__ = ["ImageCache", "dataset_from_records", "make_dataset"]

log = logging.getLogger(__name__)


class ImageCache:
    """Decoded, resized images keyed by (sha256, size, aspect), in memory and optionally on disk.

    One cache serves a whole experiment: every fold, epoch and run asks it for arrays, and
    only images it has never seen at that size are decoded.

    Args:
        disk_dir: folder for ``.npy`` files (``<sha256>_<size>_<aspect>.npy``) that survive the
            process; ``None`` keeps the cache in memory only.
        workers: decoding threads (Pillow releases the GIL while decoding); ``None`` uses the
            CPU count.
        progress: show a progress bar while decoding (only on a terminal).

    Attributes:
        decode_count: images actually decoded from their files (memory and disk hits excluded).
        disk_hits: images loaded from ``disk_dir``.

    Example:
        >>> cache = ImageCache(disk_dir=".leukdx_cache/images")
        >>> x = cache.get(records, 64, aspect="pad")
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
        self.disk_hits = 0
        self._memory: dict[tuple[str, int, str], np.ndarray] = {}
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

    def _disk_path(self, key: tuple[str, int, str]) -> Path:
        sha, size, aspect = key
        assert self.disk_dir is not None
        return self.disk_dir / f"{sha}_{size}_{aspect}.npy"

    def _load_disk(self, key: tuple[str, int, str]) -> np.ndarray | None:
        path = self._disk_path(key)
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:  # damaged file: decode again and overwrite it
            log.warning("Ignoring damaged image cache file %s (%s)", path, exc)
            return None
        size = key[1]
        if arr.shape != (size, size, 3) or arr.dtype != np.uint8:
            return None
        return arr

    def _save_disk(self, key: tuple[str, int, str], arr: np.ndarray) -> None:
        path = self._disk_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".img-", suffix=".npy")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError as exc:
            log.warning("Could not write image cache file %s (%s)", path, exc)

    def _decode(self, path: str, key: tuple[str, int, str]) -> np.ndarray:
        arr = load_image(path, key[1], key[2])
        with self._lock:
            self.decode_count += 1
        if self.disk_dir is not None:
            self._save_disk(key, arr)
        return arr

    def get(self, records: pd.DataFrame, size: int, aspect: str = "stretch") -> np.ndarray:
        """Images of ``records`` at ``size`` x ``size``, aligned with its rows.

        Args:
            records: needs ``path``; ``sha256`` is used as the key (computed from the file when
                the column is missing).
            size: side in pixels.
            aspect: ``stretch`` or ``pad`` (see :func:`leukdx.data.decode.resize_image`).

        Returns:
            ``(len(records), size, size, 3)`` ``uint8`` array (a new array; the cache keeps
            its own copies).

        Raises:
            BadImageError: a file cannot be decoded.
        """
        if aspect not in ASPECTS:
            raise ValueError(f"aspect is {aspect!r}; choose one of {', '.join(ASPECTS)}.")
        size = int(size)
        paths = records["path"].astype(str).tolist()
        if "sha256" in records.columns:
            hashes = records["sha256"].astype(str).tolist()
        else:
            hashes = [sha256_file(p) for p in paths]
        keys = [(h, size, aspect) for h in hashes]

        missing: dict[tuple[str, int, str], str] = {}
        for key, path in zip(keys, paths):
            if key not in self._memory and key not in missing:
                missing[key] = path
        if missing and self.disk_dir is not None:
            for key in list(missing):
                arr = self._load_disk(key)
                if arr is not None:
                    self._memory[key] = arr
                    self.disk_hits += 1
                    del missing[key]
        if missing:
            self._decode_all(missing)

        out = np.empty((len(keys), size, size, 3), np.uint8)
        for i, key in enumerate(keys):
            out[i] = self._memory[key]
        return out

    def _decode_all(self, missing: dict[tuple[str, int, str], str]) -> None:
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
                for key, path in jobs:
                    self._memory[key] = self._decode(path, key)
                    bar.update(1)
                return
            with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
                # map keeps order and re-raises the first BadImageError here
                for (key, _), arr in zip(
                    jobs, pool.map(lambda kp: self._decode(kp[1], kp[0]), jobs)
                ):
                    self._memory[key] = arr
                    bar.update(1)
        finally:
            bar.close()


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
        # in before any parallel map, so every example's seed is fixed whatever runs it.
        stream = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        indices = tf.data.Dataset.zip(indices, stream).map(
            lambda i, r: (i, tf.stack([r, i]))
        )
    indices = indices.batch(batch_size)

    def gather(idx, seeds=None):
        x = tf.cast(tf.gather(images_t, idx), tf.float32)
        if augment:
            from leukdx.data.augment import apply_augmentation

            x = apply_augmentation(augmentation, x, seeds)
        if labels_t is None:
            return x
        return x, tf.gather(labels_t, idx)

    ds = indices.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
