"""Cell-scale views of whole-field images: centre crops, tiles and tile-to-image aggregation.

Sources differ in scale: an ALL-IDB1 image is a whole 2592 x 1944 microscope field holding
dozens of cells, while ALL-IDB2, PBC, JTSC and CellaVision images are single-cell crops. Resized
to 224 px, a cell of a whole field is a few pixels wide, so a model trained on crops sees a
different object at test. Two ways to bring whole fields to cell scale at load time:

**Centre crop** (``data.crop: center``, ``data.crop_fraction: f``, ``data.crop_sources``): keep
the central ``f`` of each side of the listed sources' images (``f * f`` of the area) before
resizing. The crop keeps the image's label, like a resize does; on a leukaemic field the crop
may miss every blast, so prefer small crops only for sources whose label describes the centre
(ALL-IDB2's label is that of its centre cell) or accept the label noise knowingly.

**Tiles** (``data.tile.sources``, ``size_px``, ``stride_px``): cut each image of the listed
sources into square tiles of ``size_px`` original pixels (the last row and column are aligned
with the image edge, so the whole field is covered), each resized to ``data.image_size``. At
test and inference the model scores every tile and :func:`aggregate_tile_probs` turns the tile
probabilities into **one prediction per original image** (``mean``, ``max`` or ``topk``: the
mean of the ``k`` highest). Records keep one row per original image; tiles live under it
(``tile_owner`` maps each tile to its row), so splits, groups and metrics are unchanged.

**The label rule.** An image's label is a statement about the whole field: ALL-IDB1's ``_1``
means "at least one blast is present, from an ALL patient". A tile of a leukaemic field can
hold only normal cells (or only red cells), so a tile does **not** inherit the field's label:
by default tiles are used only at test/inference (aggregated back to the field), and training
keeps the whole, resized field with its image-level label. Training on tiles labelled with their
field's label (``data.tile.label_tiles: true``) is an explicit opt-in that accepts this label
noise (multiple-instance style), and tiles of one image always stay in that image's group.

Example:
    >>> tiles = tile_image(field, 256)                      # (T, 256, 256, 3)
    >>> owner = np.zeros(len(tiles), int)
    >>> aggregate_tile_probs(model_probs, owner, "topk", k=3)  # one probability
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "TILE_AGGREGATIONS",
    "FoldImages",
    "aggregate_tile_probs",
    "center_crop",
    "center_crop_box",
    "tile_boxes",
    "tile_count",
    "tile_image",
]

TILE_AGGREGATIONS: tuple[str, ...] = ("mean", "max", "topk")


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"Centre-crop fraction is {fraction}; it must be in (0, 1] (data.crop_fraction)."
        )
    return fraction


def center_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` of the central ``fraction`` of each side.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        fraction: kept share of each side, in (0, 1]; ``1`` keeps the whole image.

    Returns:
        Integer pixel box, at least 1 x 1, centred (odd margins put the extra pixel last).

    Example:
        >>> center_crop_box(1944, 2592, 0.5)
        (486, 648, 1458, 1944)
    """
    fraction = _check_fraction(fraction)
    crop_h = max(1, round(height * fraction))
    crop_w = max(1, round(width * fraction))
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return top, left, top + crop_h, left + crop_w


def center_crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """The central ``fraction`` of each side of ``img`` (``(H, W[, C])`` array).

    Example:
        >>> center_crop(np.zeros((100, 200, 3), np.uint8), 0.5).shape
        (50, 100, 3)
    """
    arr = np.asarray(img)
    top, left, bottom, right = center_crop_box(arr.shape[0], arr.shape[1], fraction)
    return arr[top:bottom, left:right]


def _positions(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis; the last tile ends at the edge (full coverage)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_boxes(height: int, width: int, tile: int, stride: int | None = None) -> np.ndarray:
    """Boxes of the square tiles that cover an image, row by row.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        tile: tile side in pixels; an image smaller than that in one dimension gets tiles of
            its smaller side (still square).
        stride: step between tiles; ``None`` means ``tile`` (no overlap). The last row and
            column are moved back to end at the image edge, so they may overlap the previous
            ones.

    Returns:
        ``(T, 4)`` int array of ``(top, left, bottom, right)``.

    Raises:
        ValueError: tile or stride below 1.

    Example:
        >>> tile_boxes(1944, 2592, 648).shape   # 3 rows x 4 columns
        (12, 4)
    """
    tile = int(tile)
    stride = tile if stride is None else int(stride)
    if tile < 1 or stride < 1:
        raise ValueError(
            f"Tile size {tile} and stride {stride} must be at least 1 pixel "
            "(data.tile.size_px, data.tile.stride_px)."
        )
    side = min(tile, int(height), int(width))
    step = max(1, round(stride * side / tile)) if side < tile else stride
    boxes = [
        (top, left, top + side, left + side)
        for top in _positions(int(height), side, step)
        for left in _positions(int(width), side, step)
    ]
    return np.asarray(boxes, dtype=np.int64)


def tile_image(img: np.ndarray, tile: int, stride: int | None = None) -> np.ndarray:
    """Cut an image into square tiles (see :func:`tile_boxes` for the layout).

    Args:
        img: ``(H, W, 3)`` array.
        tile: tile side in pixels.
        stride: step between tiles (``None``: ``tile``).

    Returns:
        ``(T, t, t, 3)`` array of tiles (``t = min(tile, H, W)``), row by row.

    Example:
        >>> tile_image(np.zeros((1944, 2592, 3), np.uint8), 648).shape
        (12, 648, 648, 3)
    """
    arr = np.asarray(img)
    boxes = tile_boxes(arr.shape[0], arr.shape[1], tile, stride)
    return np.stack([arr[t:b, left:r] for t, left, b, r in boxes])


def aggregate_tile_probs(
    probs: np.ndarray,
    tile_owner: np.ndarray,
    how: str = "mean",
    *,
    k: int = 3,
    n_images: int | None = None,
) -> np.ndarray:
    """One probability per image from the probabilities of its tiles.

    Args:
        probs: ``(T,)`` P(leukaemia) of each tile.
        tile_owner: ``(T,)`` index of the image each tile was cut from (0 .. n_images - 1).
        how: ``mean`` (average tile), ``max`` (the most suspicious tile decides; one blast is
            enough for a leukaemic field, but so is one false alarm) or ``topk`` (mean of the
            ``k`` highest tiles, between the two).
        k: tiles averaged by ``topk`` (fewer when an image has fewer tiles).
        n_images: number of images; default ``max(tile_owner) + 1``.

    Returns:
        ``(n_images,)`` float64 probabilities.

    Raises:
        ValueError: unknown ``how``, mismatched lengths, or an image without tiles.

    Example:
        >>> aggregate_tile_probs(np.array([0.1, 0.9, 0.2]), np.array([0, 0, 1]), "max")
        array([0.9, 0.2])
    """
    if how not in TILE_AGGREGATIONS:
        raise ValueError(
            f"Tile aggregation is {how!r}; choose one of {', '.join(TILE_AGGREGATIONS)} "
            "(data.tile.aggregate)."
        )
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    owner = np.asarray(tile_owner).reshape(-1).astype(np.int64)
    if len(probs) != len(owner):
        raise ValueError(f"{len(probs)} tile probabilities but {len(owner)} tile owners.")
    if len(owner) and owner.min() < 0:
        raise ValueError("tile_owner holds a negative image index.")
    n = int(owner.max()) + 1 if n_images is None and len(owner) else int(n_images or 0)
    counts = np.bincount(owner, minlength=n)[:n] if len(owner) else np.zeros(n, np.int64)
    if len(owner) and owner.max() >= n:
        raise ValueError(f"tile_owner refers to image {owner.max()} but n_images is {n}.")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"Image(s) {missing} have no tiles; every image needs at least one.")
    if how == "mean":
        return np.bincount(owner, weights=probs, minlength=n) / counts
    if how == "max":
        out = np.full(n, -np.inf)
        np.maximum.at(out, owner, probs)
        return out
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k} (data.tile.top_k).")
    out = np.empty(n)
    order = np.lexsort((-probs, owner))  # by image, highest probability first
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for i in range(n):
        take = order[starts[i] : starts[i] + min(k, counts[i])]
        out[i] = probs[take].mean()
    return out


@dataclass
class FoldImages:
    """The arrays of one fold, ready for a trainer (:meth:`ImageCache.fold_images`).

    Attributes:
        train: ``(N, S, S, 3)`` ``uint8`` training inputs (stain-normalised when configured).
        train_records: rows aligned with ``train``; the fold's training records, or, when
            ``data.tile.label_tiles`` is on, one row per training tile of the tiled sources
            (a copy of its image's row, same group and label) plus the other images.
        test: ``(M, S, S, 3)`` ``uint8`` whole test images, one per test record.
        tiles: ``(T, S, S, 3)`` ``uint8`` tiles of the test records of tiled sources.
        tile_owner: ``(T,)`` test-record index of each tile.
        stain_reference: the reference fitted on this fold's training images, or ``None``.
        aggregate: ``mean``, ``max`` or ``topk``; ``top_k``: the ``k`` of ``topk``.
        cells: ``(C, S, S, 3)`` ``uint8`` crops of the **other** nuclei of cell-cropped test
            records (``data.crop: cell``; :mod:`leukdx.data.cells`). The crop of each record's
            largest nucleus is its row of ``test`` (and of ``train``, with the record's
            label); the other crops are only scored at test, never trained on.
        cell_owner: ``(C,)`` test-record index of each crop of ``cells``.
        cell_aggregate: how a cell-cropped record's crops (its ``test`` row and its
            ``cells``) become one probability; ``cell_top_k``: the ``k`` of ``topk``.

    Example:
        >>> fold = cache.fold_images(train_records, test_records, cfg.data)
        >>> probs = model.predict(fold.test_inputs)           # M + T probabilities
        >>> per_image = fold.test_probabilities(probs)        # M probabilities
    """

    train: np.ndarray
    train_records: pd.DataFrame
    test: np.ndarray
    tiles: np.ndarray
    tile_owner: np.ndarray
    stain_reference: object | None = None
    aggregate: str = "mean"
    top_k: int = 3
    cells: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0, 3), np.uint8))
    cell_owner: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cell_aggregate: str = "max"
    cell_top_k: int = 3

    @property
    def tiled(self) -> np.ndarray:
        """``(M,)`` bool: test records whose prediction comes from their tiles."""
        mask = np.zeros(len(self.test), bool)
        mask[np.unique(self.tile_owner)] = True
        return mask

    @property
    def test_inputs(self) -> np.ndarray:
        """Test images (or largest-nucleus crops), then the tiles, then the other cell crops:
        what the model scores."""
        parts = [self.test, *(x for x in (self.tiles, self.cells) if len(x))]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def test_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """One probability per test record from the model's scores of :attr:`test_inputs`.

        Records of tiled sources get the aggregate of their tiles; records with several cell
        crops the ``cell_aggregate`` of their largest-nucleus crop (their ``test`` row) and
        their other crops; the others their own probability.

        Args:
            probs: ``(M + T + C,)`` probabilities in the order of :attr:`test_inputs`
                (``(M,)`` when there are no tiles and no extra cell crops).

        Returns:
            ``(M,)`` float64 probabilities aligned with the test records.
        """
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        m, t, c = len(self.test), len(self.tiles), len(self.cells)
        if len(probs) != m + t + c:
            raise ValueError(
                f"Expected {m + t + c} probabilities ({m} test images + {t} tiles + {c} cell "
                f"crops), got {len(probs)}."
            )
        out = probs[:m].copy()
        if c:
            owner = np.asarray(self.cell_owner, dtype=np.int64).reshape(-1)
            rows = np.unique(owner)
            local = np.searchsorted(rows, np.concatenate([rows, owner]))
            out[rows] = aggregate_tile_probs(
                np.concatenate([probs[rows], probs[m + t :]]), local, self.cell_aggregate,
                k=self.cell_top_k, n_images=len(rows),
            )
        if t:
            # aggregate over the tiled records only (owners renumbered 0 .. n_tiled - 1)
            tiled_rows = np.flatnonzero(self.tiled)
            local_owner = np.searchsorted(tiled_rows, self.tile_owner)
            out[tiled_rows] = aggregate_tile_probs(
                probs[m:], local_owner, self.aggregate, k=self.top_k, n_images=len(tiled_rows)
            )
        return out


def tile_count(height: int, width: int, tile: int, stride: int | None = None) -> int:
    """Number of tiles :func:`tile_boxes` makes for an image (without building them)."""
    tile = int(tile)
    stride = tile if stride is None else int(stride)
    side = min(tile, int(height), int(width))
    step = max(1, round(stride * side / tile)) if side < tile else stride

    def along(length: int) -> int:
        if length <= side:
            return 1
        return math.ceil((length - side) / step) + 1

    return along(int(height)) * along(int(width))
