"""How one image file becomes a model's inputs at prediction time: the steps training used.

A model trained on nucleus-centred crops (``data.crop: cell``), centre crops or
stain-normalised images has never seen a whole, raw image; fed one, it answers something, and
nothing says the number is wrong. :class:`InputPreparation` carries the data steps of a run -
size, aspect, crop, cell windows and their aggregation, the stain reference fitted on the run's
training images - so :mod:`leukdx.predict` (for a run folder, a ``.keras`` file with its
``config.yaml``, or a SavedModel exported by :mod:`leukdx.export`, whose metadata stores it)
prepares every file exactly as :meth:`leukdx.data.pipeline.ImageCache.fold_images` prepared the
run's images: the same functions (:func:`leukdx.data.decode.load_image`,
:func:`leukdx.data.cells.load_cells`, :func:`leukdx.data.stain.normalize_images`) on the same
settings.

Two settings of a run cannot be repeated on a file of unknown source, and a warning says so
when a run has them: ``data.crop_sources`` (the crop applied only to some training sources; at
prediction it applies to every image) and ``data.tile.sources`` (test images of those sources
were scored as tiles; at prediction every image is scored whole).

Example:
    >>> from leukdx.config import load_config
    >>> prep = InputPreparation.from_data_config(load_config("configs/lodo_generalise.yaml").data)
    >>> inputs = prep.load("field.jpg")          # (n_cells, 64, 64, 3) uint8
    >>> probability = prep.aggregate(model_probabilities_of(inputs))
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    from leukdx.config import DataConfig
    from leukdx.data.stain import StainReference

__all__ = ["STAIN_REFERENCE_FILE", "InputPreparation"]

log = logging.getLogger(__name__)

#: File of a run folder holding the stain reference fitted on its training images.
STAIN_REFERENCE_FILE = "stain_reference.json"


@dataclass(frozen=True)
class InputPreparation:
    """The data steps between an image file and a model's input batch.

    Attributes:
        image_size: side of the model's square input in pixels.
        aspect: ``stretch`` or ``pad`` (``data.aspect``).
        crop: ``none``, ``center`` or ``cell`` (``data.crop``).
        crop_fraction: the kept share of each side for ``center``.
        cell_scale: window side for ``cell`` (``data.cell.scale``).
        cell_scale_by: ``nucleus`` or ``red_cell`` (``data.cell.scale_by``).
        max_cells: crops per image at most (``data.cell.max_cells``).
        cell_aggregate: ``max``, ``mean`` or ``topk``: how an image's crops give one
            probability (``data.cell.aggregate``); ``cell_top_k`` its ``k``.
        stain: the stain reference of the run's training images, or ``None``.
    """

    image_size: int
    aspect: str = "stretch"
    crop: str = "none"
    crop_fraction: float = 1.0
    cell_scale: float = 2.2
    cell_scale_by: str = "nucleus"
    max_cells: int = 8
    cell_aggregate: str = "max"
    cell_top_k: int = 3
    stain: StainReference | None = None

    @classmethod
    def from_data_config(
        cls, data: DataConfig, *, image_size: int | None = None,
        stain: StainReference | None = None,
    ) -> InputPreparation:
        """The preparation of a run's ``data`` settings.

        Args:
            data: the run's ``data`` section.
            image_size: the model's input side, when it differs from ``data.image_size``.
            stain: the run's stain reference (required when ``data.stain_normalize`` is on).

        Raises:
            ValueError: the run normalised stains but no reference is given.
        """
        if data.stain_normalize != "none" and stain is None:
            raise ValueError(
                f"The run normalised stains (data.stain_normalize: {data.stain_normalize}) but "
                f"its {STAIN_REFERENCE_FILE} is missing; predictions on raw colours would be "
                "wrong. Give the run folder made by `leukdx train`, which holds it."
            )
        # what cannot be repeated on a file of unknown source is said, not silently changed
        if data.crop != "none" and data.crop_sources is not None:
            log.warning("The run applied data.crop: %s only to %s; at prediction the source "
                        "of a file is unknown, so it applies to every image.", data.crop,
                        ", ".join(map(str, data.crop_sources)))
        if data.tile.sources:
            log.warning("The run scored test images of %s as tiles; at prediction the source "
                        "of a file is unknown, so every image is scored whole.",
                        ", ".join(map(str, data.tile.sources)))
        return cls(
            image_size=int(image_size or data.image_size), aspect=str(data.aspect),
            crop=str(data.crop), crop_fraction=float(data.crop_fraction),
            cell_scale=float(data.cell.scale), cell_scale_by=str(data.cell.scale_by),
            max_cells=int(data.cell.max_cells), cell_aggregate=str(data.cell.aggregate),
            cell_top_k=int(data.cell.top_k), stain=stain,
        )

    @classmethod
    def for_run(cls, config: Any, run_dir: str | os.PathLike | None, *,
                image_size: int | None = None) -> InputPreparation:
        """The preparation of a run folder: its ``config.yaml`` and stain reference."""
        from leukdx.data.stain import StainReference

        stain = None
        if run_dir is not None and (Path(run_dir) / STAIN_REFERENCE_FILE).is_file():
            stain = StainReference.load(Path(run_dir) / STAIN_REFERENCE_FILE)
        return cls.from_data_config(config.data, image_size=image_size, stain=stain)

    @property
    def is_plain(self) -> bool:
        """True when a file is just resized (no crop, no stain normalisation)."""
        return self.crop == "none" and self.stain is None

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """The model inputs of one image file.

        Returns:
            ``(n, S, S, 3)`` ``uint8``: one image, or (``crop: cell``) one crop per nucleus,
            largest first (the whole image when no nucleus is found).

        Raises:
            BadImageError: the file cannot be decoded (names it).
        """
        from leukdx.data.cells import load_cells
        from leukdx.data.decode import load_image
        from leukdx.data.stain import normalize_images

        if self.crop == "cell":
            inputs = load_cells(path, self.image_size, scale=self.cell_scale,
                                max_cells=self.max_cells, scale_by=self.cell_scale_by)
        else:
            fraction = self.crop_fraction if self.crop == "center" else None
            inputs = load_image(path, self.image_size, self.aspect,
                                crop_fraction=fraction)[None]
        return normalize_images(inputs, self.stain) if self.stain is not None else inputs

    def aggregate(self, probabilities: np.ndarray) -> float:
        """One P(leukaemia) from the probabilities of one file's inputs (:meth:`load`)."""
        from leukdx.data.tiles import aggregate_tile_probs

        probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if len(probs) == 1:
            return float(probs[0])
        return float(aggregate_tile_probs(probs, np.zeros(len(probs), np.int64),
                                          self.cell_aggregate, k=self.cell_top_k)[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready), e.g. for a SavedModel's metadata."""
        return {
            "image_size": self.image_size, "aspect": self.aspect, "crop": self.crop,
            "crop_fraction": self.crop_fraction, "cell_scale": self.cell_scale,
            "cell_scale_by": self.cell_scale_by, "max_cells": self.max_cells,
            "cell_aggregate": self.cell_aggregate, "cell_top_k": self.cell_top_k,
            "stain": self.stain.to_dict() if self.stain is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputPreparation:
        """Inverse of :meth:`to_dict`."""
        from leukdx.data.stain import StainReference

        fields = dict(data)
        stain = fields.pop("stain", None)
        return cls(**fields, stain=StainReference.from_dict(stain) if stain else None)
