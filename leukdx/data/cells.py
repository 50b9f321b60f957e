"""Nucleus-centred cell crops: every image, whatever its source, as crops of one cell each.

Sources differ in scale and framing: ALL-IDB1 holds whole 2592 x 1944 fields with dozens of
cells, taleqani_all 224-px multi-cell fields, BCCD 640 x 480 fields around one white cell, the
others single-cell crops at different magnifications. ``data.crop: cell`` brings them all to one
framing: a square window around each white-blood-cell nucleus whose side is ``data.cell.scale``
times the nucleus' diameter, resized to ``data.image_size``. A nucleus then fills about
``1 / scale`` of the crop's side in every source.

**Detection** (:func:`find_nuclei`) works at a working resolution (longest side
:data:`WORKING_PX`; big JPEGs decode there directly in Pillow's draft mode):

1. haematoxylin optical density (:func:`skimage.color.rgb2hed`, channel 0); near-black pixels
   (scale bars, burned-in text) count as background, since their density is not stain;
2. Otsu threshold; while the mask covers more than :data:`MAX_COVER` of the image (a field
   without white cells, or red cells taking up haematoxylin in a pale smear) Otsu again on the
   pixels above the last threshold, at most :data:`MAX_RETHRESHOLDS` times. Except when the
   mask is one compact nucleus (its largest component holds at least half of it, with a
   solidity of at least :data:`COMPACT_SOLIDITY`): a blast filling a single-cell crop covers
   more than 20 % by itself, and re-thresholding it would keep only its darkest rim (on
   ALL-IDB2 this moved the largest crop off the labelled centre cell in 37 of 260 images;
   red cells picked up in a field form a loose mask, largest share <= 0.45, solidity <= 0.65);
3. morphological opening with a disk of radius 2, connected components of at least
   :data:`MIN_AREA_FRACTION` of the image whose mean density exceeds the image's median by
   :data:`MIN_CONTRAST` (so the noise of a blank field is no nucleus; real nuclei of the seven
   sources are at least 0.013 above, the noise of a blank field at most 0.005), largest
   first, at most ``max_cells``.

**Crops** (:func:`cell_boxes`, :func:`crop_cells`, :func:`load_cells`): a square of side
``scale`` x the nucleus' equivalent diameter centred on its centroid, reflect-padded where it
leaves the image (no black borders), resized to ``size``. An image where no nucleus is found
gives one crop: the whole image, resized (stretched) to ``size``.

**Scale.** ``data.cell.scale_by: nucleus`` (the default) sizes each window by its own nucleus,
so every nucleus fills the same share of its crop whatever the cell type: size differences are
gone. ``red_cell`` sizes every window of an image by the image's red-cell diameter
(:func:`red_cell_diameter`; ``data.cell.scale`` then counts red-cell diameters): the
microscope's magnification still cancels, but a blast's nucleus (about two red cells across)
fills twice the share of its crop that a small lymphocyte's (about one) does - the size
difference haematologists read first. Where an image shows no measurable red cells (a tight
single-cell crop) its windows fall back to the nucleus rule, and so does each window whose
nucleus the measurement would make smaller than 0.6 or larger than 3 red cells across
(:data:`NUCLEUS_TO_RED_CELL_RANGE`: a clump of touching nuclei, or a ruler that measured
something else).

**Training and testing.** Training uses the crop of the **largest** nucleus of each image with
the image's label: one row per image, so splits and groups are unchanged. Testing scores every
crop of an image and aggregates them into one image-level probability (``data.cell.aggregate``,
default ``max``: a field is leukaemic if any of its cells is a blast; ``mean`` and ``topk`` as
for tiles, :func:`leukdx.data.tiles.aggregate_tile_probs`).

**The label rule.** An image's label is a statement about the image: ALL-IDB1's ``_1`` says
"at least one blast is present", ALL-IDB2's says what the centre cell is. The largest nucleus of
a single-cell crop is its labelled cell, and in a leukaemic field the largest nuclei are mostly
blasts; but a smaller cell of a leukaemic field may be a normal lymphocyte, so a non-largest
crop is **never** given its image's label for training. Those crops are only scored at test.

Example:
    >>> crops = load_cells("Im052_1.jpg", 224)            # (n, 224, 224, 3), largest first
    >>> nuclei = find_nuclei(rgb)                          # [Nucleus(row, col, diameter, area)]
    >>> boxes = cell_boxes(nuclei, 2.2)                    # (n, 4) float (top, left, bottom, right)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from leukdx.data.decode import _decode, _draft, _resize_pil, open_image

__all__ = [
    "CELL_SCALE_BY",
    "NUCLEUS_TO_RED_CELL_RANGE",
    "COMPACT_SOLIDITY",
    "MAX_COVER",
    "MAX_RETHRESHOLDS",
    "MIN_AREA_FRACTION",
    "MIN_CONTRAST",
    "MIN_RED_CONTRAST",
    "MIN_RED_COVER",
    "WORKING_PX",
    "Nucleus",
    "cell_boxes",
    "crop_cells",
    "find_nuclei",
    "haematoxylin",
    "image_red_cell_diameter",
    "load_cells",
    "nucleus_mask",
    "optical_density",
    "plausible_ruler",
    "window_sides",
    "red_cell_diameter",
    "reflect_crop",
    "working_picture",
]

#: Plausible nucleus / red-cell diameter ratios of a white cell (a small lymphocyte's nucleus
#: is about one red cell across, a large blast's or monocyte's up to about three): a ruler that
#: puts the largest nucleus of an image outside this range has measured something else.
NUCLEUS_TO_RED_CELL_RANGE: tuple[float, float] = (0.6, 3.0)
#: What a cell window's side is measured in (``data.cell.scale_by``).
CELL_SCALE_BY: tuple[str, ...] = ("nucleus", "red_cell")
#: Longest side of the picture nuclei are detected on (larger images are reduced first).
WORKING_PX = 512
#: A nucleus mask covering more than this share of the image is re-thresholded.
MAX_COVER = 0.20
#: At most this many re-thresholds on the pixels above the previous threshold.
MAX_RETHRESHOLDS = 4
#: Smallest nucleus, as a share of the image area (0.08 %).
MIN_AREA_FRACTION = 0.0008
#: Smallest mean haematoxylin density of a nucleus above the image's median (OD units of
#: ``rgb2hed``).
MIN_CONTRAST = 0.01
#: A mask whose largest component is at least this solid (area / convex area) and holds at
#: least half of the mask is one nucleus, not red cells, and is not re-thresholded.
COMPACT_SOLIDITY = 0.75
#: Red cells covering less than this share of the image leave nothing to measure with.
MIN_RED_COVER = 0.05
#: Smallest optical-density step (summed over R, G, B) between red cells and background; a
#: smaller Otsu split is the background's noise.
MIN_RED_CONTRAST = 0.1
# Pixels whose brightest channel is below this are ink (scale bars, labels), not stain.
_INK_LEVEL = 40


@dataclass(frozen=True)
class Nucleus:
    """One detected nucleus, in the pixel coordinates of the image it was found in.

    Attributes:
        row: centroid row.
        col: centroid column.
        diameter: equivalent diameter (of the disk with the same area).
        area: area in pixels.
    """

    row: float
    col: float
    diameter: float
    area: float

    def scaled(self, factor_y: float, factor_x: float) -> Nucleus:
        """The same nucleus in an image resized by ``factor_y`` x ``factor_x``."""
        linear = math.sqrt(factor_y * factor_x)
        return Nucleus(
            self.row * factor_y, self.col * factor_x, self.diameter * linear,
            self.area * factor_y * factor_x,
        )


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density of the three channels (0 for white, large for dark stain).

    Args:
        rgb: ``(..., 3)`` ``uint8`` pixels.

    Returns:
        float32 array of ``rgb.shape[:-1]``: ``-sum(log(max(v, 1) / 255))`` over R, G, B.
    """
    x = np.maximum(np.asarray(rgb, np.float32), 1.0) / 255.0
    return -np.log(x).sum(axis=-1)


def red_cell_diameter(rgb: np.ndarray, nucleus_mask: np.ndarray) -> float:
    """Typical red-cell diameter of an image, in its pixels: the ruler of ``nucleus_to_rbc``.

    1. Stained pixels (Otsu on the optical density of the pixels away from white cells) with
       their holes filled (the pale centre of a red cell) make the cell mask. The white cells
       are left out: their nuclei widened by 35 % of the largest nucleus' diameter (at least
       3 px), which also takes the granular cytoplasm around a nucleus away.
    2. The mask is mirrored outwards by a quarter of the image's shorter side, so a red cell cut
       by the frame - all of them in a tight single-cell crop - is completed by its reflection
       instead of measured as a sliver.
    3. The largest inscribed disk of each connected piece (the maximum of its distance map) is
       a red cell's radius, also when cells touch. Pieces under 2 px thick are left out; the
       answer is the **area-weighted** median over the rest, so stray specks and granules,
       however many, weigh little against whole cells.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` image.
        nucleus_mask: ``(H, W)`` bool, the white-cell nuclei (to leave out).

    Returns:
        The diameter in pixels, or NaN when red cells cover less than :data:`MIN_RED_COVER`
        of the image or are not :data:`MIN_RED_CONTRAST` darker than the background (nothing
        to measure with).

    Example:
        >>> red_cell_diameter(field_of_16px_disks, np.zeros(field.shape[:2], bool))  # doctest: +SKIP
        16.0
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, opening

    density = optical_density(rgb)
    nuclei = np.asarray(nucleus_mask, bool)
    near_white_cells = nuclei
    if nuclei.any():
        labels, count = ndi.label(nuclei)
        largest = float(np.max(ndi.sum(nuclei, labels, np.arange(1, count + 1))))
        grow = max(3, round(0.35 * 2.0 * math.sqrt(largest / math.pi)))
        # = binary dilation by disk(grow) (every pixel within grow of a nucleus pixel), in
        # one distance transform instead of a large structuring element (10x faster)
        near_white_cells = ndi.distance_transform_edt(~nuclei) <= grow
    away = density[~near_white_cells]
    if away.size < 100 or away.min() == away.max():
        return float("nan")
    threshold = threshold_otsu(away)
    if away[away > threshold].mean() - away[away <= threshold].mean() < MIN_RED_CONTRAST:
        return float("nan")  # Otsu split the background's noise: there are no red cells
    cells = ndi.binary_fill_holes(density > threshold) & ~near_white_cells
    cells = opening(cells, disk(1))
    if cells.mean() < MIN_RED_COVER:
        return float("nan")
    mirrored = np.pad(cells, max(1, min(cells.shape) // 4), mode="reflect")
    labels, count = ndi.label(mirrored)
    index = np.arange(1, count + 1)
    radii = np.asarray(ndi.maximum(ndi.distance_transform_edt(mirrored), labels, index),
                       dtype=np.float64)
    areas = np.asarray(ndi.sum(mirrored, labels, index), dtype=np.float64)
    keep = radii >= 2.0
    if not keep.any():
        return float("nan")
    order = np.argsort(radii[keep])
    weight = np.cumsum(areas[keep][order])
    median = radii[keep][order][int(np.searchsorted(weight, weight[-1] / 2.0))]
    return float(2.0 * median)


def window_sides(nuclei: list[Nucleus], scale: float, ruler: float | None = None) -> list[float]:
    """Side in pixels of each nucleus' window: ``scale`` x the ruler where
    :func:`plausible_ruler` accepts it for that nucleus, else ``scale`` x its own diameter
    (a clump of touching nuclei, or no ruler at all).

    Example:
        >>> window_sides([Nucleus(0, 0, 30.0, 707.0), Nucleus(0, 0, 200.0, 3e4)], 3.0, 20.0)
        [60.0, 600.0]
    """
    sides = []
    for n in nuclei:
        usable = plausible_ruler(n.diameter, ruler) if ruler is not None else None
        sides.append(float(scale) * (usable if usable is not None else n.diameter))
    return sides


def plausible_ruler(nucleus_diameter: float, ruler: float) -> float | None:
    """``ruler`` when it puts a nucleus of ``nucleus_diameter`` (same pixels) inside
    :data:`NUCLEUS_TO_RED_CELL_RANGE` red-cell diameters, else ``None`` (NaN included).

    Example:
        >>> plausible_ruler(40.0, 30.0), plausible_ruler(40.0, 8.0)
        (30.0, None)
    """
    if not (math.isfinite(ruler) and ruler > 0):
        return None
    low, high = NUCLEUS_TO_RED_CELL_RANGE
    return float(ruler) if low <= nucleus_diameter / ruler <= high else None


def image_red_cell_diameter(rgb: np.ndarray) -> float:
    """:func:`red_cell_diameter` of a picture, with its white-cell nuclei found as
    :func:`find_nuclei` finds them (the opened :func:`nucleus_mask`).

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` picture (at the working resolution: the opening and the
            thresholds are tuned to :data:`WORKING_PX`).

    Returns:
        The diameter in the picture's pixels, or NaN.
    """
    from skimage.morphology import disk, opening

    return red_cell_diameter(rgb, opening(nucleus_mask(rgb), disk(2)))


def _red_cell_ruler(arr: np.ndarray) -> float:
    """:func:`image_red_cell_diameter` measured at the working resolution, in ``arr``'s
    pixels (NaN when there is nothing to measure)."""
    work, ratio = working_picture(arr, WORKING_PX)
    return image_red_cell_diameter(work) / ratio


def working_picture(arr: np.ndarray, working_px: int) -> tuple[np.ndarray, float]:
    """``arr`` reduced so its longest side is at most ``working_px``, and the factor used."""
    height, width = arr.shape[:2]
    ratio = min(1.0, working_px / max(height, width))
    if ratio >= 1.0:
        return arr, 1.0
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR,
                                                  reducing_gap=3.0)), ratio


def _check_cell_settings(scale: float, max_cells: int, scale_by: str = "nucleus") -> None:
    if scale_by not in CELL_SCALE_BY:
        raise ValueError(f"Cell crop scale_by is '{scale_by}'; choose from "
                         f"{', '.join(CELL_SCALE_BY)} (data.cell.scale_by).")
    if not float(scale) >= 1.0:
        raise ValueError(
            f"Cell crop scale is {scale}; it must be at least 1 so the window holds the whole "
            "nucleus (data.cell.scale)."
        )
    if int(max_cells) < 1:
        raise ValueError(f"max_cells is {max_cells}; it must be at least 1 (data.cell.max_cells).")


def _haematoxylin_weights() -> np.ndarray:
    from skimage.color import hed_from_rgb

    return np.asarray(hed_from_rgb, dtype=np.float64)[:, 0]


# -log(max(v / 255, 1e-6)) / -log(1e-6) for every 8-bit value: rgb2hed's optical density
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin channel of ``uint8`` RGB: ``skimage.color.rgb2hed(rgb)[..., 0]``.

    The same numbers as scikit-image (to float32 precision) from a 256-entry optical-density
    table instead of a float64 log of every pixel and all three stains (2-3x faster).

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` image.

    Returns:
        ``(H, W)`` float32, non-negative.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"haematoxylin expects (H, W, 3) uint8 pixels, got {arr.dtype} "
                         f"{arr.shape}.")
    w = _haematoxylin_weights().astype(np.float32)
    out = _OD_LUT[arr[..., 0]] * w[0]
    out += _OD_LUT[arr[..., 1]] * w[1]
    out += _OD_LUT[arr[..., 2]] * w[2]
    return np.maximum(out, 0.0, out=out)


def _is_one_nucleus(mask: np.ndarray) -> bool:
    """True when the opened mask is dominated by one compact component (a big nucleus)."""
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening

    opened = opening(mask, disk(2))
    total = int(opened.sum())
    if total == 0:
        return False
    largest = max(regionprops(label(opened)), key=lambda r: r.area)
    return largest.area >= 0.5 * total and largest.solidity >= COMPACT_SOLIDITY


def nucleus_mask(rgb: np.ndarray) -> np.ndarray:
    """Binary mask of haematoxylin-dense pixels (steps 1-2 of the module docstring).

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` image.

    Returns:
        ``(H, W)`` bool mask before the opening; all false on a flat image.

    Example:
        >>> nucleus_mask(np.full((64, 64, 3), 230, np.uint8)).any()
        False
    """
    return _mask_of(_stain_density(rgb))


def _stain_density(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin density with ink (near-black pixels) set to background."""
    arr = np.asarray(rgb)
    density = haematoxylin(arr)
    density[arr.max(axis=-1) < _INK_LEVEL] = 0.0
    return density


def _mask_of(density: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    values = density.reshape(-1)
    if values.size == 0 or values.min() == values.max():
        return np.zeros(density.shape, bool)
    threshold = threshold_otsu(values)
    mask = density > threshold
    for _ in range(MAX_RETHRESHOLDS):
        if mask.mean() <= MAX_COVER or _is_one_nucleus(mask):
            break
        above = density[mask]
        if above.min() == above.max():
            break
        threshold = threshold_otsu(above)
        mask = density > threshold
    return mask


def find_nuclei(
    rgb: np.ndarray, *, max_cells: int = 8, working_px: int = WORKING_PX
) -> list[Nucleus]:
    """White-blood-cell nuclei of an image, largest first.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` image of any size; images whose longest side exceeds
            ``working_px`` are reduced to it for detection.
        max_cells: at most this many nuclei (the largest ones).
        working_px: longest side of the detection picture.

    Returns:
        Up to ``max_cells`` :class:`Nucleus`, by area descending, in ``rgb``'s own pixel
        coordinates; empty when none is found.

    Example:
        >>> [round(n.diameter) for n in find_nuclei(field)]
        [64, 41]
    """
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening

    arr = np.asarray(rgb)
    height, width = arr.shape[:2]
    work, _ = working_picture(arr, working_px)
    density = _stain_density(work)
    mask = opening(_mask_of(density), disk(2))
    min_area = MIN_AREA_FRACTION * mask.size
    min_density = float(np.median(density)) + MIN_CONTRAST
    regions = [
        r for r in regionprops(label(mask), intensity_image=density)
        if r.area >= min_area and r.intensity_mean >= min_density
    ]
    regions.sort(key=lambda r: (-r.area, r.centroid))
    factor_y, factor_x = height / work.shape[0], width / work.shape[1]
    return [
        Nucleus(float(r.centroid[0]), float(r.centroid[1]),
                float(r.equivalent_diameter_area), float(r.area)).scaled(factor_y, factor_x)
        for r in regions[: int(max_cells)]
    ]


def cell_boxes(nuclei: list[Nucleus], scale: float = 2.2,
               ruler: float | None = None) -> np.ndarray:
    """Square windows of side ``scale`` x diameter centred on each nucleus.

    Args:
        nuclei: from :func:`find_nuclei`.
        scale: window side in nucleus diameters (``data.cell.scale``); the nucleus fills
            about ``1 / scale`` of the side.
        ruler: when given, the side of every window whose nucleus it measures plausibly
            (:func:`plausible_ruler`) is ``scale`` x ``ruler`` pixels instead
            (``data.cell.scale_by: red_cell``: the ruler is the image's red-cell diameter,
            :func:`red_cell_diameter`), so a large nucleus fills more of its window than a
            small one.

    Returns:
        ``(n, 4)`` float64 ``(top, left, bottom, right)``; a box may reach outside the image
        (:func:`reflect_crop` mirrors the missing part).

    Example:
        >>> cell_boxes([Nucleus(100.0, 50.0, 20.0, 314.0)], 2.0)
        array([[ 80.,  30., 120.,  70.]])
    """
    _check_cell_settings(scale, 1)
    boxes = []
    for n, side in zip(nuclei, window_sides(nuclei, scale, ruler)):
        boxes.append((n.row - side / 2, n.col - side / 2, n.row + side / 2, n.col + side / 2))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices ``start .. stop - 1`` mirrored into ``0 .. length - 1`` (edge not repeated)."""
    idx = np.arange(start, stop)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= length, period - idx, idx)


def reflect_crop(img: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The pixels of ``box`` (``top, left, bottom, right``), mirrored where it leaves ``img``.

    Args:
        img: ``(H, W, C)`` array.
        box: float or int box; rounded to whole pixels, at least 1 x 1.

    Returns:
        ``(bottom - top, right - left, C)`` array (a copy).

    Example:
        >>> reflect_crop(np.arange(3)[None, :, None], (0, -2, 1, 3))[0, :, 0].tolist()
        [2, 1, 0, 1, 2]
    """
    arr = np.asarray(img)
    top, left = round(box[0]), round(box[1])
    bottom, right = max(round(box[2]), top + 1), max(round(box[3]), left + 1)
    rows = _reflect_indices(top, bottom, arr.shape[0])
    cols = _reflect_indices(left, right, arr.shape[1])
    if rows[0] == top and rows[-1] == bottom - 1 and cols[0] == left and cols[-1] == right - 1:
        return arr[top:bottom, left:right].copy()  # inside the image: a plain slice
    return arr[np.ix_(rows, cols)]


def _resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    return _resize_pil(Image.fromarray(np.ascontiguousarray(arr), "RGB"), size, "stretch")


def crop_cells(
    img: np.ndarray, size: int, *, scale: float = 2.2, max_cells: int = 8,
    scale_by: str = "nucleus",
) -> np.ndarray:
    """Nucleus-centred crops of an in-memory image, largest nucleus first.

    Args:
        img: ``(H, W, 3)`` ``uint8`` image.
        size: side of each output crop in pixels.
        scale: window side in nucleus diameters (``data.cell.scale``), or in red-cell
            diameters with ``scale_by="red_cell"``.
        max_cells: at most this many crops (``data.cell.max_cells``).
        scale_by: ``nucleus`` or ``red_cell`` (``data.cell.scale_by``, see the module
            docstring).

    Returns:
        ``(n, size, size, 3)`` ``uint8``, ``1 <= n <= max_cells``; the whole image resized
        when no nucleus is found.

    Example:
        >>> crop_cells(field, 64).shape
        (5, 64, 64, 3)
    """
    _check_cell_settings(scale, max_cells, scale_by)
    arr = np.asarray(img)
    nuclei = find_nuclei(arr, max_cells=max_cells)
    ruler = None
    if nuclei and scale_by == "red_cell":
        ruler = _red_cell_ruler(arr)
    boxes = cell_boxes(nuclei, scale, ruler)
    if len(boxes) == 0:
        return _resize_square(arr, int(size))[None]
    return np.stack([_resize_square(reflect_crop(arr, tuple(b)), int(size)) for b in boxes])


def load_cells(
    path: str | os.PathLike, size: int, *, scale: float = 2.2, max_cells: int = 8,
    scale_by: str = "nucleus",
) -> np.ndarray:
    """Read an image and return its nucleus-centred crops (:func:`crop_cells` from a file).

    A JPEG is decoded twice at most, both times in draft mode: once near :data:`WORKING_PX` to
    find the nuclei, then (only if the smallest window would otherwise have fewer than
    ``size`` pixels) at the smallest DCT scale that gives every window at least ``size``
    pixels. Other formats are decoded once, in full.

    Args:
        path: image file.
        size: side of each output crop in pixels.
        scale: window side in nucleus (or red-cell) diameters.
        max_cells: at most this many crops.
        scale_by: ``nucleus`` or ``red_cell`` (:func:`crop_cells`).

    Returns:
        ``(n, size, size, 3)`` ``uint8``, largest nucleus first; ``n == 1`` and the whole image
        resized when no nucleus is found.

    Raises:
        BadImageError: empty, truncated or non-image file.

    Example:
        >>> load_cells("Im052_1.jpg", 224).shape
        (8, 224, 224, 3)
    """
    _check_cell_settings(scale, max_cells, scale_by)
    size = int(size)
    with open_image(path) as im:
        width, height = im.size
        ratio = min(1.0, WORKING_PX / max(width, height))
        _draft(im, (math.ceil(width * ratio), math.ceil(height * ratio)), path)
        decoded = _decode(im, path)
        is_jpeg = im.format == "JPEG"
    arr = np.asarray(decoded)
    # coordinates in the file's own pixels, whatever scale the draft decoded at
    nuclei = [
        n.scaled(height / arr.shape[0], width / arr.shape[1])
        for n in find_nuclei(arr, max_cells=max_cells)
    ]
    ruler = None
    if nuclei and scale_by == "red_cell":
        # in the file's own pixels, like the nuclei
        ruler = _red_cell_ruler(arr) * math.sqrt(height / arr.shape[0] * width / arr.shape[1])
    if not nuclei:
        target = (min(width, size), min(height, size))
    else:
        smallest = min(window_sides(nuclei, scale, ruler))
        need = min(1.0, size / smallest)
        target = (math.ceil(width * need), math.ceil(height * need))
    if is_jpeg and (arr.shape[1] < target[0] or arr.shape[0] < target[1]):
        with open_image(path) as im:
            _draft(im, target, path)
            arr = np.asarray(_decode(im, path))
    if not nuclei:
        return _resize_square(arr, size)[None]
    boxes = cell_boxes(nuclei, scale, ruler)
    boxes *= np.array([arr.shape[0] / height, arr.shape[1] / width] * 2)
    return np.stack([_resize_square(reflect_crop(arr, tuple(b)), size) for b in boxes])
