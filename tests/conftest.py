"""Shared test fixtures.

Real-data tests read ``../shared/data`` (or ``$LEUKDX_SHARED_DATA``). When the folder is absent
they skip with a reason; when ``LEUKDX_REQUIRE_REAL_DATA=1`` (set by ``.ci/run``) its absence is
an error instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LEUKDX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
REQUIRE_REAL_DATA = os.environ.get("LEUKDX_REQUIRE_REAL_DATA") == "1"


def pytest_collection_modifyitems(config, items):
    if SHARED_DATA.is_dir():
        return
    if REQUIRE_REAL_DATA:
        raise pytest.UsageError(
            f"LEUKDX_REQUIRE_REAL_DATA=1 but the real data folder {SHARED_DATA} is missing; "
            "put ../shared/data beside the repository or set LEUKDX_SHARED_DATA."
        )
    skip = pytest.mark.skip(
        reason=f"real data folder {SHARED_DATA} not found (set LEUKDX_SHARED_DATA to run these)"
    )
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real multi-source collection (tests using it are marked real_data)."""
    return SHARED_DATA


def _blob_image(rng: np.random.Generator, size: int, leukemia: bool, tint: tuple[int, int, int]):
    """A tiny smear-like picture: background tint plus dark discs (more/larger when leukaemia)."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.ones((size, size, 3), np.float32) * np.array(tint, np.float32)
    n = rng.integers(3, 6) if leukemia else rng.integers(1, 3)
    for _ in range(n):
        cy, cx = rng.integers(0, size, 2)
        r = size * (0.18 if leukemia else 0.1)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[mask] = img[mask] * 0.3 + np.array([90, 40, 140]) * 0.7
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_collection(tmp_path: Path) -> Path:
    """A collection of 3 small sources (folders layout), 6 images per class, distinct tints."""
    rng = np.random.default_rng(0)
    root = tmp_path / "collection"
    tints = {"src_a": (235, 200, 210), "src_b": (200, 215, 240), "src_c": (230, 230, 190)}
    for source, tint in tints.items():
        for cls, leuk in (("healthy", False), ("leukemia", True)):
            folder = root / source / cls
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(_blob_image(rng, 48, leuk, tint)).save(folder / f"{cls}_{i}.png")
    return root
