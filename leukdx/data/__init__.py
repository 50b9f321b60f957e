"""Data layer: files → records (labels, sources, groups) → decoded arrays → tf.data.

Import the submodules directly (``from leukdx.data.records import load_collection``); the
names below are re-exported for convenience. Nothing here imports TensorFlow at import time.
"""

from leukdx.data.decode import (
    IMAGE_EXTENSIONS,
    BadImageError,
    load_image,
    read_image,
    resize_image,
)
from leukdx.data.pipeline import ImageCache, dataset_from_records, make_dataset
from leukdx.data.records import (
    Collection,
    DataError,
    data_fingerprint,
    load_collection,
    require_two_classes,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "Collection",
    "DataError",
    "ImageCache",
    "data_fingerprint",
    "dataset_from_records",
    "load_collection",
    "load_image",
    "make_dataset",
    "read_image",
    "require_two_classes",
    "resize_image",
]
