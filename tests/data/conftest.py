"""Fixtures of the data-layer tests.

The real collection is scanned once per test session (``real_collection``) into a session
temporary scan cache, so every real-data test after the first reads no pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukdx.config import DataConfig


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory) -> Path:
    """Scan-cache folder shared by the real-data tests of one session."""
    return tmp_path_factory.mktemp("real_scan_cache")


@pytest.fixture(scope="session")
def real_config(real_cache_dir: Path) -> DataConfig:
    """Default data settings with the session scan cache."""
    return DataConfig(cache_dir=str(real_cache_dir))


@pytest.fixture(scope="session")
def real_collection(shared_data: Path, real_config: DataConfig):
    """The real multi-source collection, loaded once (use only from real_data tests)."""
    from leukdx.data.records import load_collection

    return load_collection(shared_data, real_config, progress=False)


@pytest.fixture
def data_config(tmp_path: Path) -> DataConfig:
    """Default data settings with a private scan cache."""
    return DataConfig(cache_dir=str(tmp_path / "cache"))


def _save_noise(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def noise_image():
    """``noise_image(path, seed, size=(w, h))`` writes a random RGB image (distinct per seed;
    format from the extension) and returns its path."""
    return _save_noise
