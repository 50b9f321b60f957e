"""Synthetic blood-smear pictures with known red-cell and nucleus sizes (shared by the tests of
leukdx.data.cells and leukdx.features.morphology)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

BACKGROUND = np.array([232, 226, 236], np.float32)
RED_CELL = np.array([214, 150, 160], np.float32)
PALLOR = np.array([226, 196, 204], np.float32)
NUCLEUS = np.array([92, 48, 140], np.float32)
CYTOPLASM = np.array([190, 190, 228], np.float32)


def disk_mask(yy, xx, cy, cx, r):
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def smear(size: int = 256, rbc: float = 28.0, nucleus: float = 40.0, *, lobed: bool = False,
          speckle: float = 0.0, seed: int = 0, red_cells: bool = True) -> np.ndarray:
    """A blood-smear-like image: a lattice of red cells with pale centres (diameter ``rbc``)
    around one white cell at the centre whose nucleus has diameter ``nucleus`` (three joined
    lobes with ``lobed``), chromatin speckled by ``speckle`` (0-1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.broadcast_to(BACKGROUND, (size, size, 3)).copy()
    c = size / 2
    white_r = nucleus * 0.8
    step = rbc * 1.15
    for cy in np.arange(rbc / 2, size, step):
        for cx in np.arange(rbc / 2, size, step):
            jy, jx = rng.uniform(-1.5, 1.5, 2)
            if not red_cells or math.hypot(cy - c, cx - c) < white_r + rbc * 0.6:
                continue
            img[disk_mask(yy, xx, cy + jy, cx + jx, rbc / 2)] = RED_CELL
            img[disk_mask(yy, xx, cy + jy, cx + jx, rbc / 6)] = PALLOR
    img[disk_mask(yy, xx, c, c, white_r)] = CYTOPLASM
    if lobed:  # three lobes joined by thin chromatin bridges, like a neutrophil's
        lobe_r = nucleus / 4.2
        mask = np.zeros((size, size), bool)
        for angle in (0.0, 2.1, 4.2):
            ly, lx = c + nucleus / 3 * math.sin(angle), c + nucleus / 3 * math.cos(angle)
            mask |= disk_mask(yy, xx, ly, lx, lobe_r)
            for t in np.linspace(0.0, 1.0, 40):
                mask |= disk_mask(yy, xx, c + t * (ly - c), c + t * (lx - c), 1.5)
    else:
        mask = disk_mask(yy, xx, c, c, nucleus / 2)
    shade = 1.0 + speckle * rng.choice([-0.55, 0.45], size=(size, size))
    img[mask] = np.clip(NUCLEUS * shade[mask, None], 0, 255)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def nuclei(img: np.ndarray) -> np.ndarray:
    """The white-cell nucleus mask the feature extractor hands the red-cell ruler."""
    from skimage.morphology import disk, opening

    from leukdx.data.cells import _mask_of, _stain_density

    return opening(_mask_of(_stain_density(img)), disk(2))


def resized(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((round(w * factor), round(h * factor)),
                                                   Image.Resampling.BILINEAR))
