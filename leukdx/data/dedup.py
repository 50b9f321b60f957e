"""Content and perceptual hashes → groups that a split never cuts.

Two images belong to the same **group** when they are byte-identical (same sha256), near
duplicates (16x16 difference hashes within a Hamming distance, e.g. overlapping re-crops of
one cell or a re-encoded copy), share a manifest ``group`` (a patient, or the augmented copies
of one original), or one is the ``origin`` of the other. Groups are the connected components of
these links (union-find), so "A ~ B and B ~ C" puts A, B and C together even when A and C are
far apart.

The difference hash (dHash) follows the usual definition (as in the ``imagehash`` package):
grayscale, resize to ``(hash_size + 1) x hash_size`` with an antialiasing filter, and set a bit
where a pixel is brighter than its right neighbour. It survives re-encoding, resizing and small
crops, but not flips or rotations.

Example:
    >>> groups = assign_groups(records, max_distance=12)
    >>> records["group"] = groups
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

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


def assign_groups(records: pd.DataFrame, max_distance: int) -> pd.Series:
    """Group ids: connected components of duplicate, near-duplicate and declared links.

    Args:
        records: needs ``sha256``; uses ``dhash`` (hex) when present, ``group`` (a declared
            group, e.g. a manifest's patient or augmentation group — scoped per ``source`` when
            that column exists) where it is set, and ``origin`` (path of the record an
            augmented copy was made from, matched against ``path``) where it is set.
        max_distance: dHash Hamming distance at or below which images are linked; negative
            disables near-duplicate linking.

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


def duplicate_pairs(records: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Every exact and near-duplicate pair of records.

    Args:
        records: needs ``sha256`` and ``dhash``; ``path`` and ``source`` are copied when present.
        max_distance: dHash Hamming distance at or below which a pair is a near duplicate;
            negative lists exact duplicates only.

    Returns:
        DataFrame with columns ``i``, ``j`` (positions in ``records``, ``i < j``), ``path_a``,
        ``path_b``, ``source_a``, ``source_b``, ``distance`` (dHash bits) and ``kind``
        (``exact`` for identical bytes, ``near`` otherwise), sorted by ``i``, ``j``.
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
    rows = [
        (
            i,
            j,
            paths[i],
            paths[j],
            sources[i],
            sources[j],
            d,
            "exact" if sha[i] == sha[j] else "near",
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
