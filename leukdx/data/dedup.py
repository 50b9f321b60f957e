"""Content and perceptual hashes → groups that a split never cuts.

Two images belong to the same **group** when they are byte-identical (same sha256), near
duplicates (16x16 difference hashes within a Hamming distance: a re-encoded or resized copy),
**re-crops** (two crops of the same picture shifted by some pixels, found by
:func:`recrop_pairs`), share a manifest ``group`` (a patient, or the augmented copies of one
original), or one is the ``origin`` of the other. Groups are the connected components of these
links (union-find), so "A ~ B and B ~ C" puts A, B and C together even when A and C are far
apart.

The difference hash (dHash) follows the usual definition (as in the ``imagehash`` package):
grayscale, resize to ``(hash_size + 1) x hash_size`` with an antialiasing filter, and set a bit
where a pixel is brighter than its right neighbour. It survives re-encoding, resizing and small
crops, but not flips or rotations, and it misses re-crops shifted by a few percent of the
image: ALL-IDB2's overlapping re-crops (Im222/256, Im224/258, Im225/259, Im227/260) are 32-95
bits apart. :func:`recrop_pairs` finds those by matching overlapping content (see there).

Example:
    >>> groups = assign_groups(records, max_distance=12)
    >>> records["group"] = groups
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import fft as scipy_fft

__all__ = [
    "UnionFind",
    "assign_groups",
    "bits_to_hex",
    "dhash",
    "dhash_hex",
    "duplicate_pairs",
    "group_id",
    "hamming_matrix",
    "hex_to_bits",
    "mixed_label_groups",
    "near_pairs",
    "near_pairs_between",
    "overlap_similarity",
    "recrop_candidates",
    "recrop_pairs",
    "recrop_thumbnail",
    "sha256_bytes",
    "sha256_file",
]

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def dhash(img: Image.Image | np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hash of an image.

    Args:
        img: a Pillow image (any mode) or an ``(H, W)`` / ``(H, W, 3)`` ``uint8`` array.
        hash_size: the hash is ``hash_size * hash_size`` bits.

    Returns:
        Flat ``bool`` array of ``hash_size**2`` bits, row-major.

    Example:
        >>> bits = dhash(np.zeros((64, 64, 3), np.uint8))
        >>> bits.shape
        (256,)
    """
    if isinstance(img, np.ndarray):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            raise ValueError(f"dhash expects uint8 pixels, got {arr.dtype}.")
        img = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    if img.mode != "L":
        if img.mode.startswith("I") or img.mode == "F":
            from leukdx.data.decode import to_rgb  # 16-bit scaling rules live in decode

            img = to_rgb(img)
        img = img.convert("L")
    small = img.resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS)
    pixels = np.asarray(small, dtype=np.int16)
    return (pixels[:, 1:] > pixels[:, :-1]).reshape(-1)


def bits_to_hex(bits: np.ndarray) -> str:
    """Pack a bool bit vector (length divisible by 8) into a hex string."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def hex_to_bits(text: str) -> np.ndarray:
    """Inverse of :func:`bits_to_hex`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8)).astype(bool)


def dhash_hex(img: Image.Image | np.ndarray, hash_size: int = 16) -> str:
    """:func:`dhash` as a hex string (64 characters for 16x16)."""
    return bits_to_hex(dhash(img, hash_size))


def _as_bit_matrix(hashes: Sequence[str] | np.ndarray) -> np.ndarray:
    if isinstance(hashes, np.ndarray) and hashes.dtype == bool:
        return hashes if hashes.ndim == 2 else hashes.reshape(len(hashes), -1)
    rows = [hex_to_bits(h) for h in hashes]
    if not rows:
        return np.zeros((0, 0), bool)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"dHashes of different lengths: {sorted(lengths)} bits.")
    return np.stack(rows)


def _hamming_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Hamming(x, y) = x·(1-y) + (1-x)·y; a float32 matrix product is exact for counts ≤ 2**24
    # and far faster than XOR + popcount over an (N, N, bits) array.
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    return (a @ (1.0 - b).T + (1.0 - a) @ b.T).round().astype(np.int32)


def hamming_matrix(hashes: Sequence[str] | np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances.

    Args:
        hashes: hex strings (as in ``records["dhash"]``) or an ``(N, bits)`` bool matrix.

    Returns:
        ``(N, N)`` ``int32`` matrix. Memory is N² — for very large N use :func:`near_pairs`.
    """
    bits = _as_bit_matrix(hashes)
    return _hamming_block(bits, bits)


def near_pairs(
    hashes: Sequence[str] | np.ndarray, max_distance: int, block: int = 2048
) -> Iterator[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance ≤ ``max_distance``.

    Works in row blocks so memory stays ``block x N`` whatever N is.
    """
    bits = _as_bit_matrix(hashes)
    n = len(bits)
    if max_distance < 0 or n < 2:
        return
    for start in range(0, n, block):
        dist = _hamming_block(bits[start : start + block], bits)
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if i < c:
                yield i, c, int(dist[r, c])


def near_pairs_between(
    hashes_a: Sequence[str] | np.ndarray, hashes_b: Sequence[str] | np.ndarray,
    max_distance: int, block: int = 2048,
) -> Iterator[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)``: row ``i`` of ``hashes_a`` and row ``j`` of ``hashes_b``
    within ``max_distance`` bits (e.g. a training and a test set, in row blocks of ``b``).

    Example:
        >>> next(near_pairs_between(["00ff"], ["01ff", "ff00"], max_distance=1))
        (0, 0, 1)
    """
    bits_a, bits_b = _as_bit_matrix(hashes_a), _as_bit_matrix(hashes_b)
    if max_distance < 0 or not len(bits_a) or not len(bits_b):
        return
    if bits_a.shape[1] != bits_b.shape[1]:
        raise ValueError(f"dHashes of different lengths: {bits_a.shape[1]} and "
                         f"{bits_b.shape[1]} bits; recompute them with the same hash size.")
    for start in range(0, len(bits_b), block):
        dist = _hamming_block(bits_a, bits_b[start : start + block])
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist()):
            yield r, start + c, int(dist[r, c])


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_all(self, members: Iterable[int]) -> None:
        members = list(members)
        for other in members[1:]:
            self.union(members[0], other)

    def components(self) -> list[int]:
        return [self.find(i) for i in range(len(self.parent))]


def group_id(member_sha256s: Iterable[str]) -> str:
    """Stable group id: ``"g-"`` + the first 12 hex digits of the smallest member sha256."""
    return "g-" + min(member_sha256s)[:12]


def _is_set(value) -> bool:
    return (
        value is not None
        and not (isinstance(value, float) and np.isnan(value))
        and str(value).strip() != ""
    )


def assign_groups(
    records: pd.DataFrame,
    max_distance: int,
    *,
    recrop_similarity: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> pd.Series:
    """Group ids: connected components of duplicate, near-duplicate, re-crop and declared links.

    Args:
        records: needs ``sha256``; uses ``dhash`` (hex) when present, ``group`` (a declared
            group, e.g. a manifest's patient or augmentation group — scoped per ``source`` when
            that column exists) where it is set, and ``origin`` (path of the record an
            augmented copy was made from, matched against ``path``) where it is set.
        max_distance: dHash Hamming distance at or below which images are linked; negative
            disables near-duplicate linking.
        recrop_similarity: link re-crops of one picture (:func:`recrop_pairs`, needs ``path``)
            whose overlap similarity is at least this; ``None`` skips the search.
        cache_dir: cache folder of the re-crop search.
        workers: decoding threads of the re-crop search.

    Returns:
        ``pd.Series`` of ``str`` group ids aligned with ``records.index``
        (see :func:`group_id`).
    """
    n = len(records)
    if n == 0:
        return pd.Series([], index=records.index, dtype=object, name="group")
    sha = records["sha256"].astype(str).tolist()
    uf = UnionFind(n)

    by_sha: dict[str, list[int]] = {}
    for i, h in enumerate(sha):
        by_sha.setdefault(h, []).append(i)
    for members in by_sha.values():
        uf.union_all(members)

    if "dhash" in records.columns and max_distance >= 0:
        # identical hashes first (cheap), then the pairwise search on the distinct ones
        by_hash: dict[str, list[int]] = {}
        for i, h in enumerate(records["dhash"].astype(str).tolist()):
            by_hash.setdefault(h, []).append(i)
        for members in by_hash.values():
            uf.union_all(members)
        distinct = list(by_hash)
        for a, b, _ in near_pairs(distinct, max_distance):
            uf.union(by_hash[distinct[a]][0], by_hash[distinct[b]][0])

    if recrop_similarity is not None:
        found = recrop_pairs(records, recrop_similarity, cache_dir=cache_dir, workers=workers)
        for i, j in zip(found["i"].tolist(), found["j"].tolist()):
            uf.union(i, j)

    if "group" in records.columns:
        sources = records["source"].tolist() if "source" in records.columns else [""] * n
        declared: dict[tuple[str, str], list[int]] = {}
        for i, (src, g) in enumerate(zip(sources, records["group"].tolist())):
            if _is_set(g):
                declared.setdefault((str(src), str(g)), []).append(i)
        for members in declared.values():
            uf.union_all(members)

    if "origin" in records.columns and "path" in records.columns:
        index_of = {os.path.normpath(str(p)): i for i, p in enumerate(records["path"])}
        for i, origin in enumerate(records["origin"].tolist()):
            if _is_set(origin):
                j = index_of.get(os.path.normpath(str(origin)))
                if j is not None:
                    uf.union(i, j)

    roots = uf.components()
    members_of: dict[int, list[str]] = {}
    for i, r in enumerate(roots):
        members_of.setdefault(r, []).append(sha[i])
    ids = {r: group_id(m) for r, m in members_of.items()}
    return pd.Series([ids[r] for r in roots], index=records.index, dtype=object, name="group")


def duplicate_pairs(
    records: pd.DataFrame,
    max_distance: int,
    *,
    recrop_similarity: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Every exact, near-duplicate and re-crop pair of records.

    Args:
        records: needs ``sha256`` and ``dhash``; ``path`` and ``source`` are copied when present.
        max_distance: dHash Hamming distance at or below which a pair is a near duplicate;
            negative lists exact duplicates only.
        recrop_similarity: also list re-crops (:func:`recrop_pairs`) at or above this overlap
            similarity; ``None`` skips them.
        cache_dir: cache folder of the re-crop search.
        workers: decoding threads of the re-crop search.

    Returns:
        DataFrame with columns ``i``, ``j`` (positions in ``records``, ``i < j``), ``path_a``,
        ``path_b``, ``source_a``, ``source_b``, ``distance`` (dHash bits) and ``kind``
        (``exact`` for identical bytes, ``near`` within the dHash distance, ``recrop`` for a
        re-crop found only by content matching), sorted by ``i``, ``j``.
    """
    columns = ["i", "j", "path_a", "path_b", "source_a", "source_b", "distance", "kind"]
    n = len(records)
    if n < 2:
        return pd.DataFrame(columns=columns)
    sha = records["sha256"].astype(str).to_numpy()
    paths = records["path"].astype(str).to_numpy() if "path" in records.columns else np.full(n, "")
    sources = (
        records["source"].astype(str).to_numpy() if "source" in records.columns else np.full(n, "")
    )
    found: dict[tuple[int, int], int] = {}
    by_sha: dict[str, list[int]] = {}
    for i, h in enumerate(sha):
        by_sha.setdefault(h, []).append(i)
    for members in by_sha.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                found[(members[a], members[b])] = 0
    if max_distance >= 0:
        for i, j, d in near_pairs(records["dhash"].astype(str).tolist(), max_distance):
            found.setdefault((i, j), d)
    recrops: set[tuple[int, int]] = set()
    if recrop_similarity is not None:
        bits = _as_bit_matrix(records["dhash"].astype(str).tolist())
        found_recrops = recrop_pairs(records, recrop_similarity, cache_dir=cache_dir,
                                     workers=workers)
        for i, j in zip(found_recrops["i"].tolist(), found_recrops["j"].tolist()):
            if (i, j) not in found:
                found[(i, j)] = int((bits[i] != bits[j]).sum())
                recrops.add((i, j))
    rows = [
        (
            i,
            j,
            paths[i],
            paths[j],
            sources[i],
            sources[j],
            d,
            "exact" if sha[i] == sha[j] else "recrop" if (i, j) in recrops else "near",
        )
        for (i, j), d in sorted(found.items())
    ]
    return pd.DataFrame(rows, columns=columns)


def mixed_label_groups(records: pd.DataFrame) -> list[str]:
    """Ids of groups that contain both labels (a duplicate filed under both classes)."""
    if len(records) == 0:
        return []
    counts = records.groupby("group")["label"].nunique()
    return sorted(counts[counts > 1].index.astype(str))


# --------------------------------------------------------------------------- re-crops

# Stage 1 (every image): 64x64 grayscale thumbnails; candidates are each image's nearest
# neighbours by the cosine of 8x8 block means (a blur that a shift of a few percent barely
# changes), kept when the thumbnails, aligned by phase correlation, agree over their overlap.
RECROP_THUMB_SIDE = 64
RECROP_COARSE_SIDE = 8
RECROP_NEIGHBOURS = 8
RECROP_MIN_THUMB_NCC = 0.95
# Phase-correlation peak of the thumbnails below which a pair is dropped before the overlap
# correlation (re-crops: 0.5-1.0; 98% of the candidates of unrelated images: below 0.2).
RECROP_MIN_THUMB_PEAK = 0.2
RECROP_MIN_OVERLAP = 0.5
# Stage 2 (candidates only): a patch of at most this side at full resolution.
RECROP_PATCH = 256
# Default stage-2 threshold (``data.recrop_similarity``). Re-crops of one picture share their
# pixels: 0.97-1.0 on ALL-IDB2; a JPEG re-encoding lowers it to about 0.55-0.65. Two photographs
# of the same cell (refocused, another exposure) or neighbouring fields of one slide stay below
# about 0.45, however alike they look.
DEFAULT_RECROP_SIMILARITY = 0.5
RECROP_COLUMNS = ("i", "j", "similarity", "shift_y", "shift_x")
_RECROP_CACHE = "recrops.json"
_THUMB_CACHE = "recrop_thumbs.npz"
_recrop_memo: dict[str, list] = {}


def recrop_thumbnail(img: Image.Image | np.ndarray) -> np.ndarray:
    """The 64x64 grayscale ``uint8`` thumbnail the re-crop search compares (stretched, box
    filtered).

    Args:
        img: a Pillow image (any mode) or an ``(H, W)`` / ``(H, W, 3)`` ``uint8`` array.

    Returns:
        ``(64, 64)`` ``uint8`` array.
    """
    gray = _gray(img)
    small = Image.fromarray(gray).resize(
        (RECROP_THUMB_SIDE, RECROP_THUMB_SIDE), Image.Resampling.BOX
    )
    return np.asarray(small, dtype=np.uint8)


def _gray(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, np.ndarray):
        arr = np.asarray(img)
        if arr.ndim == 2:
            return arr.astype(np.uint8)
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if img.mode != "L":
        if img.mode.startswith("I") or img.mode == "F":
            from leukdx.data.decode import to_rgb

            img = to_rgb(img)
        img = img.convert("L")
    return np.asarray(img, dtype=np.uint8)


def recrop_candidates(thumbs: np.ndarray, neighbours: int = RECROP_NEIGHBOURS,
                      block: int = 2048) -> np.ndarray:
    """Candidate pairs: each thumbnail with its ``neighbours`` most similar others.

    Similarity is the cosine of the zero-mean 8x8 block means, so the search costs one matrix
    product per row block and memory stays ``block x N``.

    Args:
        thumbs: ``(N, 64, 64)`` thumbnails (:func:`recrop_thumbnail`).
        neighbours: candidates per image.
        block: rows per matrix product.

    Returns:
        ``(M, 2)`` ``int64`` array of pairs ``i < j``, sorted, without repeats.
    """
    n = len(thumbs)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    side, f = RECROP_COARSE_SIDE, RECROP_THUMB_SIDE // RECROP_COARSE_SIDE
    coarse = np.asarray(thumbs, np.float32).reshape(n, side, f, side, f).mean((2, 4))
    coarse = coarse.reshape(n, -1)
    coarse -= coarse.mean(axis=1, keepdims=True)
    coarse /= np.linalg.norm(coarse, axis=1, keepdims=True) + 1e-6
    k = min(int(neighbours), n - 1)
    found = []
    for start in range(0, n, block):
        sims = coarse[start : start + block] @ coarse.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        i = np.repeat(rows + start, k)
        j = nearest.reshape(-1)
        found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    return np.unique(np.concatenate(found), axis=0).astype(np.int64)


def _hann(h: int, w: int) -> np.ndarray:
    return np.outer(np.hanning(h), np.hanning(w))


def _phase_peak(a: np.ndarray, b: np.ndarray) -> tuple[float, int, int]:
    """Peak of the whitened (phase) correlation of two same-shape images and its shift.

    Returns ``(peak, dy, dx)`` with ``a[y, x] ~ b[y - dy, x - dx]``; the peak is 1 for identical
    pictures and near 0 for unrelated ones.
    """
    h, w = a.shape
    win = _hann(h, w)
    fa = np.fft.rfft2((a - a.mean()) * win)
    fb = np.fft.rfft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = np.fft.irfft2(cross, s=(h, w))
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    peak = float(corr[dy, dx])
    return peak, int(dy - h if dy > h // 2 else dy), int(dx - w if dx > w // 2 else dx)


def _overlap(shape_a, shape_b, dy: int, dx: int):
    """Slices of the overlap of ``a`` and ``b`` when ``a[y, x]`` sits on ``b[y - dy, x - dx]``."""
    (ha, wa), (hb, wb) = shape_a[:2], shape_b[:2]
    y0, y1 = max(0, dy), min(ha, hb + dy)
    x0, x1 = max(0, dx), min(wa, wb + dx)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))


def _thumb_alignments(thumbs: np.ndarray, pairs: np.ndarray,
                      batch: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pair of thumbnails: the shift found by phase correlation, the normalised
    cross-correlation over the overlap at that shift, and the overlap's share of the image.

    Vectorised over batches of pairs (one FFT per thumbnail, one inverse FFT per pair).

    Returns:
        ``(shifts (M, 2) int, ncc (M,), overlap (M,))``; ``a[y, x] ~ b[y - dy, x - dx]``.
    """
    n_pairs = len(pairs)
    shifts = np.zeros((n_pairs, 2), np.int64)
    ncc = np.zeros(n_pairs)
    overlap = np.zeros(n_pairs)
    if n_pairs == 0:
        return shifts, ncc, overlap
    t = np.asarray(thumbs, np.float32)
    side = t.shape[1]
    # single precision (scipy keeps float32 as complex64): half the memory traffic of numpy's
    # complex128, and a 64x64 correlation peak needs no more
    window = _hann(side, side).astype(np.float32)
    spectra = scipy_fft.rfft2((t - t.mean(axis=(1, 2), keepdims=True)) * window)
    grid = np.arange(side)
    for start in range(0, n_pairs, batch):
        i, j = pairs[start : start + batch, 0], pairs[start : start + batch, 1]
        cross = spectra[i] * np.conj(spectra[j])
        cross /= np.maximum(np.abs(cross), np.float32(1e-12))
        corr = scipy_fft.irfft2(cross, s=(side, side))
        flat = corr.reshape(len(i), -1).argmax(axis=1)
        sl = np.arange(start, start + len(i))
        # only pairs whose thumbnails share some detail are worth the overlap correlation
        strong = corr.reshape(len(i), -1)[np.arange(len(i)), flat] >= RECROP_MIN_THUMB_PEAK
        i, j, flat, sl = i[strong], j[strong], flat[strong], sl[strong]
        if not len(i):
            continue
        dy, dx = np.divmod(flat, side)
        dy = np.where(dy > side // 2, dy - side, dy)
        dx = np.where(dx > side // 2, dx - side, dx)
        # b shifted onto a: b[y - dy, x - dx] where that pixel exists
        ys = grid[None, :] - dy[:, None]
        xs = grid[None, :] - dx[:, None]
        valid = ((ys >= 0) & (ys < side))[:, :, None] & ((xs >= 0) & (xs < side))[:, None, :]
        b = t[j[:, None, None], np.clip(ys, 0, side - 1)[:, :, None],
              np.clip(xs, 0, side - 1)[:, None, :]]
        a = t[i]
        count = valid.sum(axis=(1, 2))
        mean_a = (a * valid).sum(axis=(1, 2)) / count
        mean_b = (b * valid).sum(axis=(1, 2)) / count
        za = (a - mean_a[:, None, None]) * valid
        zb = (b - mean_b[:, None, None]) * valid
        denom = np.sqrt((za**2).sum(axis=(1, 2)) * (zb**2).sum(axis=(1, 2)))
        ncc[sl] = np.where(denom > 0, (za * zb).sum(axis=(1, 2)) / np.maximum(denom, 1e-12), 0.0)
        overlap[sl] = count / (side * side)
        shifts[sl, 0], shifts[sl, 1] = dy, dx
    return shifts, ncc, overlap


def overlap_similarity(a: np.ndarray, b: np.ndarray, shift: tuple[int, int] = (0, 0),
                       patch: int = RECROP_PATCH, max_steps: int = 3) -> tuple[float, int, int]:
    """How much two full-resolution images share the same pixels once aligned.

    Starting from an approximate ``shift``, a patch of at most ``patch`` pixels at the centre
    of the overlap is cut from both and aligned by phase correlation (whitened cross-power
    spectrum), until the residual shift is zero. The peak of that correlation is the
    similarity: 1 for the same pixels (a re-crop), about 0.55-0.65 after JPEG re-encoding, and
    below about 0.45 for two photographs of the same cell or for different pictures, because
    whitening weighs the fine detail that only a shared picture reproduces.

    Args:
        a: ``(H, W)`` grayscale image.
        b: ``(H', W')`` grayscale image at the same pixel scale.
        shift: ``(dy, dx)`` first guess, ``a[y, x] ~ b[y - dy, x - dx]``.
        patch: largest patch side compared.
        max_steps: alignment refinements.

    Returns:
        ``(similarity, dy, dx)`` with the refined shift.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> big = rng.integers(0, 255, (120, 120)).astype(np.uint8)
        >>> round(overlap_similarity(big[5:105, 0:100], big[0:100, 3:103])[0], 3)
        1.0
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    dy, dx = int(shift[0]), int(shift[1])
    peak = 0.0
    for _ in range(max(1, int(max_steps))):
        spans = _overlap(a.shape, b.shape, dy, dx)
        if spans is None:
            return 0.0, dy, dx
        (ya, xa), _ = spans
        ph, pw = min(patch, ya.stop - ya.start), min(patch, xa.stop - xa.start)
        if min(ph, pw) < 8:
            return 0.0, dy, dx
        top = (ya.start + ya.stop - ph) // 2
        left = (xa.start + xa.stop - pw) // 2
        pa = a[top : top + ph, left : left + pw]
        pb = b[top - dy : top - dy + ph, left - dx : left - dx + pw]
        peak, ry, rx = _phase_peak(pa, pb)
        if ry == 0 and rx == 0:
            break
        dy, dx = dy + ry, dx + rx
    return peak, dy, dx


def _load_gray(path: str, preview: bool) -> np.ndarray:
    from leukdx.data.decode import load_preview, read_image

    if preview:
        gray, _, _, _ = load_preview(path, min_side=2 * RECROP_THUMB_SIDE)
        return recrop_thumbnail(gray)
    return _gray(read_image(path))


def _map_threads(fn, items: list, workers: int | None) -> list:
    if len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(workers or os.cpu_count() or 1, 8))) as pool:
        return list(pool.map(fn, items))


def _cached_thumbnails(shas: list[str], paths: list[str], cache_dir: str | None,
                       workers: int | None) -> np.ndarray:
    """Thumbnails of the distinct images, read from ``<cache_dir>/recrop_thumbs.npz`` when
    there (content-addressed by sha256, so moved or renamed files are not decoded again)."""
    known: dict[str, np.ndarray] = {}
    file = Path(cache_dir) / _THUMB_CACHE if cache_dir else None
    if file is not None and file.is_file():
        try:
            with np.load(file, allow_pickle=False) as data:
                known = dict(zip(data["sha256"].astype(str).tolist(), data["thumbs"]))
        except (OSError, ValueError, KeyError):  # a damaged cache only costs decoding again
            known = {}
    missing = [k for k, sha in enumerate(shas) if sha not in known]
    made = _map_threads(lambda k: _load_gray(paths[k], preview=True), missing, workers)
    for k, thumb in zip(missing, made):
        known[shas[k]] = thumb
    if file is not None and missing:
        _save_npz(file, sha256=np.asarray(list(known), dtype=str),
                  thumbs=np.stack(list(known.values())).astype(np.uint8))
    if not shas:
        return np.zeros((0, RECROP_THUMB_SIDE, RECROP_THUMB_SIDE), np.uint8)
    return np.stack([known[sha] for sha in shas])


def _save_npz(file: Path, **arrays: np.ndarray) -> None:
    from leukdx.io import atomic_output

    try:
        with atomic_output(file) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError:  # the cache is an optimisation; a read-only folder only costs time
        pass


def _find_recrops(shas: list[str], paths: list[str], min_similarity: float, cache_dir: str | None,
                  workers: int | None) -> list[tuple[int, int, float, int, int]]:
    thumbs = _cached_thumbnails(shas, paths, cache_dir, workers)
    candidates = recrop_candidates(thumbs)
    shifts, ncc, overlap = _thumb_alignments(thumbs, candidates)
    keep = (ncc >= RECROP_MIN_THUMB_NCC) & (overlap >= RECROP_MIN_OVERLAP)
    survivors = [(int(i), int(j), int(dy), int(dx))
                 for (i, j), (dy, dx) in zip(candidates[keep], shifts[keep])]
    needed = sorted({k for i, j, _, _ in survivors for k in (i, j)})
    full = dict(zip(needed, _map_threads(lambda k: _load_gray(paths[k], False), needed, workers)))
    found = []
    for i, j, dy, dx in survivors:
        a, b = full[i], full[j]
        # the thumbnail shift in full-resolution pixels of a
        guess = (round(dy * a.shape[0] / RECROP_THUMB_SIDE),
                 round(dx * a.shape[1] / RECROP_THUMB_SIDE))
        similarity, fy, fx = overlap_similarity(a, b, guess)
        if similarity >= min_similarity:
            found.append((i, j, similarity, fy, fx))
    return found


def recrop_pairs(
    records: pd.DataFrame,
    min_similarity: float = DEFAULT_RECROP_SIMILARITY,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> pd.DataFrame:
    """Pairs of images that are crops of the same picture (shifted re-crops, re-encodings).

    A whole-image hash changes a lot when a crop moves by a few pixels, so re-crops are found
    by matching overlapping content instead, in two stages that keep 2,000+ images fast:

    1. every image becomes a 64x64 grayscale thumbnail; each is paired with its 8 nearest
       neighbours (cosine of 8x8 block means); a pair survives when the thumbnails, aligned by
       phase correlation, have a normalised cross-correlation of at least 0.95 over an overlap
       of at least half the image;
    2. survivors are compared at full resolution: :func:`overlap_similarity` aligns a central
       patch of their overlap and measures how much of the fine detail they share.

    Shifts up to about a tenth of the image side and different extents at the same pixel
    scale are found; copies at another resolution are left to the dHash. Images with the same
    sha256 are compared once. Thumbnails and the result are cached in ``cache_dir``
    (``recrop_thumbs.npz``, ``recrops.json``, keyed by content), so loading the same images
    again reads no pixels.

    Args:
        records: needs ``sha256`` and ``path``.
        min_similarity: :func:`overlap_similarity` at or above which a pair is a re-crop.
        cache_dir: folder of the caches; ``None`` or empty: no disk cache.
        workers: decoding threads (``None``: the CPU count, at most 8).

    Returns:
        DataFrame with columns :data:`RECROP_COLUMNS`: positions ``i < j`` in ``records`` (the
        first record of each sha256), ``similarity`` and the shift ``(shift_y, shift_x)`` in
        pixels of ``i`` (``i[y, x]`` shows ``j[y - shift_y, x - shift_x]``), sorted by ``i, j``.

    Example:
        >>> pairs = recrop_pairs(coll.records, cache_dir=".leukdx_cache")   # doctest: +SKIP
    """
    import json

    missing = [c for c in ("sha256", "path") if c not in records.columns]
    if missing:
        raise ValueError(f"recrop_pairs: records lack column(s) {', '.join(missing)}.")
    sha = records["sha256"].astype(str).tolist()
    first: dict[str, int] = {}
    for pos, h in enumerate(sha):
        first.setdefault(h, pos)
    shas = sorted(first)
    paths = [str(records["path"].iloc[first[h]]) for h in shas]
    params = [RECROP_THUMB_SIDE, RECROP_COARSE_SIDE, RECROP_NEIGHBOURS, RECROP_MIN_THUMB_NCC,
              RECROP_MIN_THUMB_PEAK, RECROP_MIN_OVERLAP, RECROP_PATCH, float(min_similarity)]
    key = hashlib.sha1(json.dumps([params, shas]).encode()).hexdigest()
    file = Path(cache_dir) / _RECROP_CACHE if cache_dir else None
    found = _recrop_memo.get(key)
    if found is None and file is not None and file.is_file():
        try:
            saved = json.loads(file.read_text())
            if saved.get("key") == key:
                found = saved["pairs"]
        except (OSError, ValueError, KeyError):
            found = None
    if found is not None and file is not None and not file.is_file():
        _write_text(file, json.dumps({"key": key, "pairs": found}))
    if found is None:
        pairs = _find_recrops(shas, paths, float(min_similarity),
                              str(cache_dir) if cache_dir else None, workers)
        found = [[shas[i], shas[j], round(s, 4), dy, dx] for i, j, s, dy, dx in pairs]
        if file is not None:
            _write_text(file, json.dumps({"key": key, "pairs": found}))
    _recrop_memo.clear()
    _recrop_memo[key] = found
    rows = []
    for sha_a, sha_b, similarity, dy, dx in found:
        i, j = first[sha_a], first[sha_b]
        if i > j:
            i, j, dy, dx = j, i, -dy, -dx
        rows.append((i, j, float(similarity), int(dy), int(dx)))
    return pd.DataFrame(sorted(rows), columns=list(RECROP_COLUMNS))


def _write_text(file: Path, text: str) -> None:
    from leukdx.io import atomic_write_text

    try:
        atomic_write_text(file, text)
    except OSError:
        pass
