"""What every leukdx TFDS builder shares: features, image encoding and the example generator.

A builder only decides *which* files belong to which split and with which label (the
dataset's own rules); :class:`LeukdxBuilder` turns those records into TFRecord examples with the
same features everywhere:

``image``
    encoded image, decoded by TFDS to ``uint8`` ``(H, W, 3)``. RGB JPEG and PNG files are stored
    byte for byte; everything else (TIFF, BMP, 16-bit, CMYK, palette, grey) is decoded with
    :func:`leukdx.data.decode.read_image` and stored as PNG, which TensorFlow can decode.
``label``
    ``ClassLabel(names=["healthy", "leukemia"])``: 0 = healthy, 1 = leukaemia.
``source``, ``file_name``, ``group``
    the source name, the file's path relative to the manual folder, and the group (patient,
    or duplicate cluster) a split should never cut.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pandas as pd
import tensorflow_datasets as tfds
from PIL import Image

from leukdx.config import DataConfig
from leukdx.data.decode import BadImageError, open_image, read_image

__all__ = [
    "LABEL_NAMES",
    "LeukdxBuilder",
    "encode_image",
    "features",
    "generate_examples",
    "load_records",
    "split_name",
]

LABEL_NAMES = ("healthy", "leukemia")
_PASSTHROUGH = {"JPEG", "PNG"}  # formats tf.image.decode_image reads as they are


def features() -> tfds.features.FeaturesDict:
    """The feature dictionary of every leukdx dataset."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        "source": tfds.features.Text(),
        "file_name": tfds.features.Text(),
        "group": tfds.features.Text(),
    })


def encode_image(path: str | os.PathLike) -> bytes:
    """Bytes for the ``image`` feature: the file itself if TensorFlow decodes it to 8-bit RGB,
    otherwise a PNG of :func:`~leukdx.data.decode.read_image` (e.g. ALL-IDB2's TIFFs)."""
    data = Path(path).read_bytes()
    with open_image(data, path) as im:
        if im.format in _PASSTHROUGH and im.mode == "RGB":
            try:
                im.load()  # a truncated file must fail here, not when the dataset is read
            except Exception as exc:
                raise BadImageError(path, f"decoding failed ({exc})") from exc
            return data
    buffer = io.BytesIO()
    Image.fromarray(read_image(path)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def split_name(text: str) -> str:
    """A valid TFDS split name for a source name (letters, digits and underscores)."""
    name = "".join(c if c.isalnum() else "_" for c in str(text)).strip("_").lower()
    if not name or name[0].isdigit():
        name = f"s_{name}"
    return name


def load_records(
    folder: str | os.PathLike, data_config: DataConfig | None = None, **changes
) -> pd.DataFrame:
    """Records of a folder via :func:`leukdx.data.records.load_collection`, without writing a
    scan cache into the working folder (builders run anywhere)."""
    from dataclasses import replace

    from leukdx.data.records import load_collection

    config = replace(data_config or DataConfig(cache_dir=""), **changes)
    return load_collection(folder, config, progress=False).records


def generate_examples(
    records: pd.DataFrame, manual_dir: str | os.PathLike
) -> Iterator[tuple[str, dict]]:
    """``(key, example)`` pairs of a records table (columns path, label, source, group).

    Keys and ``file_name`` are paths relative to ``manual_dir``, so a build does not depend on
    where the data lives.
    """
    root = os.path.abspath(manual_dir)
    for rec in records.itertuples(index=False):
        path = os.path.abspath(rec.path)
        rel = os.path.relpath(path, root) if path.startswith(root + os.sep) else path
        rel = rel.replace(os.sep, "/")
        yield rel, {
            "image": encode_image(path),
            "label": int(rec.label),
            "source": str(rec.source),
            "file_name": rel,
            "group": str(rec.group),
        }


class LeukdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the leukdx builders: subclasses implement :meth:`split_records`.

    Class attributes a subclass sets: ``name``, ``VERSION``, ``MANUAL_DOWNLOAD_INSTRUCTIONS``,
    ``DESCRIPTION``, ``HOMEPAGE``, ``CITATION``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    def split_records(self, manual_dir: Path) -> Mapping[str, pd.DataFrame]:
        """Split name → records (path, label, source, group) found in ``manual_dir``."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=features(),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = Path(dl_manager.manual_dir)
        if not manual_dir.is_dir():
            raise FileNotFoundError(
                f"Manual folder '{manual_dir}' for {self.name} does not exist.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        splits = self.split_records(manual_dir)
        empty = [name for name, recs in splits.items() if len(recs) == 0]
        if not splits or empty:
            raise FileNotFoundError(
                f"No images for split(s) {', '.join(empty) or 'any'} of {self.name} in "
                f"'{manual_dir}'.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        return {
            name: self._generate_examples(records, manual_dir)
            for name, records in splits.items()
        }

    def _generate_examples(self, records: pd.DataFrame, manual_dir: Path):
        yield from generate_examples(records, manual_dir)
