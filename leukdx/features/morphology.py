"""Nuclear morphology features: what a haematologist looks at, measured without a network.

A lymphoblast differs from the mature white cells of a healthy smear in ways a microscopist
names (Bain, *Blood Cells: A Practical Guide*, 5th ed., ch. 3; the FAB criteria, Bennett et al.
1976): it is **large** (a nucleus well over one red-cell diameter, where a small lymphocyte's
is about one), its nucleus is **round or indented but not lobed** (unlike neutrophils and
eosinophils), its chromatin is **fine and even** (a mature lymphocyte's is dense and clumped),
and its cytoplasm is **scant**. ``features.extractor: morphology`` turns each image into these
measurements of its largest white-cell nucleus, so the classic classifiers of
:mod:`leukdx.features.classifiers` can be evaluated on them under every protocol, LODO included.

Every feature is free of the source's scale, framing and stain strength by construction, which
is why they are candidates for transfer to a lab never seen (the point of LeukNet's LODO):

======================  ====================================================================
``nucleus_to_rbc``      log of the nucleus' equivalent diameter over the typical red-cell
                        diameter of the same image
                        (:func:`leukdx.data.cells.red_cell_diameter`): the image's own red
                        cells are the ruler, so the magnification cancels. NaN when red cells
                        cover under 5 % of the image, or when the ratio falls outside 0.6-3
                        (:data:`leukdx.data.cells.NUCLEUS_TO_RED_CELL_RANGE`).
``circularity``         4 pi area / perimeter^2 of the nucleus (1 for a disk).
``solidity``            nucleus area / its convex hull's area (lobed nuclei are low).
``eccentricity``        of the ellipse with the nucleus' second moments (0 for a disk).
``lobes``               connected pieces left after eroding the nucleus by 12 % of its
                        diameter (1 for a round nucleus, 2-5 for a segmented one).
``chromatin_cv``        coefficient of variation of the haematoxylin density inside the
                        nucleus (clumped chromatin is high).
``chromatin_texture``   mean absolute Laplacian of the (sigma 1 px smoothed) density inside the
                        nucleus over its mean density, at a fixed number of pixels per nucleus
                        diameter (fine texture is low).
``nucleus_contrast``    mean nucleus density over the median density of the other stained
                        pixels of the window (cytoplasm, red cells): stain strength cancels.
``rim_stained``         share of a ring 25 % of a diameter wide around the nucleus that is
                        stained (a thin rim of cytoplasm is low).
======================  ====================================================================

The nucleus is the largest one :func:`leukdx.data.cells.find_nuclei` detects (the labelled
cell of a single-cell crop; in a field, the largest white cell). Shape and chromatin are measured
on a window of :data:`WINDOW_SCALE` nucleus diameters cut from the full-resolution image and
resized to :data:`CANONICAL_PX` pixels, so every nucleus is measured at the same number of
pixels per diameter whatever the source's magnification. An image without a detectable nucleus
gets NaN everywhere (:func:`morphology_features`); classifiers that cannot take NaN get the
training fold's column medians instead (:class:`leukdx.features.evaluate.FeatureTrainer`).

This module is TensorFlow-free and pure apart from reading image files.

Example:
    >>> from leukdx.features.morphology import FEATURE_NAMES, image_morphology
    >>> values = image_morphology("../shared/data/all_idb2/leukemia/Im001_1.tif")  # doctest: +SKIP
    >>> dict(zip(FEATURE_NAMES, values.round(2)))                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "CANONICAL_PX",
    "FEATURE_NAMES",
    "WINDOW_SCALE",
    "image_morphology",
    "measurement_fingerprint",
    "morphology_table",
    "morphology_features",
    "nucleus_shape_and_chromatin",
]

#: Names of the feature columns, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "nucleus_to_rbc", "circularity", "solidity", "eccentricity", "lobes", "chromatin_cv",
    "chromatin_texture", "nucleus_contrast", "rim_stained",
)
#: Side of the measurement window in nucleus diameters.
WINDOW_SCALE = 3.0
#: Side in pixels the window is resized to (a nucleus spans CANONICAL_PX / WINDOW_SCALE px).
CANONICAL_PX = 144
# Erosion radius of the lobe count, in nucleus diameters.
_LOBE_EROSION = 0.12
# Width of the ring around the nucleus, in nucleus diameters.
_RIM_WIDTH = 0.25


def measurement_fingerprint() -> str:
    """What identifies the measurements: a hash of this module's and the nucleus detector's
    source code (:mod:`leukdx.data.cells`). It is part of the feature cache key, so features
    measured by other code are measured again, never read back.

    Example:
        >>> measurement_fingerprint().startswith("morphology:")
        True
    """
    import hashlib
    import inspect
    import sys

    from leukdx.data import cells

    code = inspect.getsource(sys.modules[__name__]) + inspect.getsource(cells)
    return "morphology:" + hashlib.sha1(code.encode()).hexdigest()[:16]


def nucleus_shape_and_chromatin(window: np.ndarray) -> np.ndarray | None:
    """Shape and chromatin features of the nucleus at the centre of a square window.

    Args:
        window: ``(S, S, 3)`` ``uint8`` crop centred on a nucleus (the canonical window).

    Returns:
        float64 array of the :data:`FEATURE_NAMES` after ``nucleus_to_rbc`` (8 values), or
        ``None`` when the window holds no stained object.

    Example:
        >>> disk_window = ...  # a dark disk on a white background
        >>> nucleus_shape_and_chromatin(disk_window)[0]  # circularity  # doctest: +SKIP
        0.98
    """
    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening

    from leukdx.data.cells import haematoxylin, optical_density

    arr = np.ascontiguousarray(window)
    density = haematoxylin(arr).astype(np.float64)
    if density.min() == density.max():
        return None
    mask = opening(density > threshold_otsu(density), disk(2))
    labels = label(mask)
    if labels.max() == 0:
        return None
    h, w = labels.shape
    centre = labels[h // 2 - 3:h // 2 + 4, w // 2 - 3:w // 2 + 4].ravel()
    centre = centre[centre > 0]
    if centre.size:
        keep = int(np.bincount(centre).argmax())
    else:  # no object under the centre: the largest one
        keep = max(regionprops(labels), key=lambda r: r.area).label
    nucleus = ndi.binary_fill_holes(labels == keep)
    region = regionprops(nucleus.astype(np.uint8))[0]
    diameter = float(region.equivalent_diameter_area)
    circularity = 4.0 * math.pi * region.area / max(float(region.perimeter), 1.0) ** 2
    eroded = ndi.binary_erosion(nucleus, structure=disk(max(1, int(_LOBE_EROSION * diameter))))
    lobes = float(max(label(eroded).max(), 1))
    inside = density[nucleus]
    mean_density = float(inside.mean())
    chromatin_cv = float(inside.std() / (mean_density + 1e-6))
    laplacian = np.abs(ndi.laplace(gaussian(density, sigma=1.0)))
    texture = float(laplacian[nucleus].mean() / (mean_density + 1e-6))
    total = optical_density(arr)
    stained = total > threshold_otsu(total) if total.min() != total.max() else np.zeros_like(nucleus)
    others = stained & ~nucleus
    contrast = mean_density / (float(np.median(density[others])) + 1e-3) if others.any() else 1.0
    ring = ndi.binary_dilation(nucleus, iterations=max(1, int(_RIM_WIDTH * diameter))) & ~nucleus
    rim = float(stained[ring].mean()) if ring.any() else 0.0
    return np.array([min(circularity, 1.0), float(region.solidity), float(region.eccentricity),
                     lobes, chromatin_cv, texture, contrast, rim], dtype=np.float64)


def morphology_features(rgb: np.ndarray, *, working_px: int | None = None) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of an image's largest white-cell nucleus.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` image at full resolution.
        working_px: longest side of the detection picture (default
            :data:`leukdx.data.cells.WORKING_PX`).

    Returns:
        ``(len(FEATURE_NAMES),)`` float64; all NaN when no nucleus is found, and
        ``nucleus_to_rbc`` NaN when the red cells cannot be measured.

    Example:
        >>> morphology_features(np.full((64, 64, 3), 230, np.uint8))
        array([nan, nan, nan, nan, nan, nan, nan, nan, nan])
    """
    from leukdx.data.cells import (
        WORKING_PX,
        cell_boxes,
        find_nuclei,
        image_red_cell_diameter,
        plausible_ruler,
        reflect_crop,
        working_picture,
    )

    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"morphology_features expects (H, W, 3) uint8 pixels, got {arr.dtype} "
                         f"{arr.shape}.")
    out = np.full(len(FEATURE_NAMES), np.nan)
    limit = int(working_px or WORKING_PX)
    work, ratio = working_picture(arr, limit)
    nuclei = find_nuclei(work, max_cells=1, working_px=limit)
    if not nuclei:
        return out
    nucleus = nuclei[0]
    box = cell_boxes([nucleus], WINDOW_SCALE)[0] / ratio
    window = np.asarray(Image.fromarray(reflect_crop(arr, tuple(box))).resize(
        (CANONICAL_PX, CANONICAL_PX), Image.Resampling.BILINEAR))
    shape = nucleus_shape_and_chromatin(window)
    if shape is None:
        return out
    out[1:] = shape
    rbc = plausible_ruler(nucleus.diameter, image_red_cell_diameter(work))
    if rbc is not None:
        out[0] = math.log(nucleus.diameter / rbc)
    return out


def image_morphology(path: str | os.PathLike) -> np.ndarray:
    """:func:`morphology_features` of an image file (decoded in full, first frame, RGB).

    Raises:
        BadImageError: empty, truncated or non-image file (names the file).
    """
    from leukdx.data.decode import read_image

    return morphology_features(read_image(path))


def morphology_table(paths: Sequence[str | os.PathLike], *, progress: bool = True) -> np.ndarray:
    """:func:`image_morphology` of many files, ``(N, len(FEATURE_NAMES))`` float32.

    Args:
        paths: image files.
        progress: a tqdm bar (off when stderr is not a terminal).
    """
    from tqdm.auto import tqdm

    rows = [image_morphology(p) for p in tqdm(list(paths), desc="morphology", unit="image",
                                                disable=None if progress else True)]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURE_NAMES))
