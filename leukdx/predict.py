"""Classify image files with a trained model and write ``predictions.csv`` (``leukdx predict``).

A model is any of:

* a run folder made by ``leukdx train`` (``model.keras`` + ``config.yaml``: the image size,
  aspect handling and decision threshold come from the run's config);
* a ``.keras`` file (a ``config.yaml`` beside it is used when present; otherwise the size is
  the model's input size, the aspect ``stretch`` and the threshold 0.5);
* an exported TensorFlow SavedModel folder (recognised by its ``saved_model.pb``), or an
  export folder holding one in ``savedmodel/`` (see :mod:`leukdx.export`); its
  ``serving_default`` signature is called with ``uint8`` images;
* a ``keras.Model`` already in memory.

Images are always decoded by :mod:`leukdx.data.decode` (Pillow), the same code that decoded the
training images, so TIFF, 16-bit and CMYK files work for every kind of model, and images are
resized exactly as in training before they reach the network. A file that cannot be decoded is
reported in :attr:`PredictResult.skipped` and skipped; the rest of the batch goes on.

Loading never executes code stored in a file: ``.keras`` files are opened with Keras safe mode
(a ``Lambda`` layer is refused, see :class:`UnsafeModelError`), and nothing here touches the
network.

Example:
    >>> from leukdx.predict import predict_paths
    >>> result = predict_paths("runs/demo", ["slides/"], out="predictions.csv")
    >>> result.table.head()                                   # path, probability, label
    >>> result.skipped                                        # [(path, reason), ...]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from leukdx.data.decode import (
    IMAGE_EXTENSIONS,
    BadImageError,
    is_image_file,
    load_image,
    read_image,
)
from leukdx.errors import ModelFileError, UnsafeModelError
from leukdx.io import atomic_write_csv

if TYPE_CHECKING:  # pragma: no cover - typing only
    from leukdx.models.io import LoadedModel

__all__ = [
    "CLASS_NAMES",
    "ModelFileError",
    "PredictResult",
    "Predictor",
    "UnsafeModelError",
    "collect_image_paths",
    "default_output_path",
    "load_predictor",
    "predict_paths",
    "read_serving_metadata",
]

log = logging.getLogger(__name__)

# Model loading lives in leukdx.models.io; these names stay importable from here, and
# importing this module still does not import Keras (leukdx.models does) until one is used.
_MODEL_IO_NAMES = frozenset({
    "CONFIG_FILE", "DEFAULT_ASPECT", "DEFAULT_THRESHOLD", "MODEL_FILE", "SAVED_MODEL_DIR",
    "SAVED_MODEL_FILE", "LoadedModel", "find_saved_model", "load_keras_model",
})


def __getattr__(name: str) -> Any:
    if name in _MODEL_IO_NAMES:
        from leukdx.models import io as model_io

        return getattr(model_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Label index → class name. Probabilities are P(leukaemia), the positive class.
CLASS_NAMES: tuple[str, str] = ("healthy", "leukaemia")

# Serving facts written by leukdx.export next to the graph (TF Serving's place for extra files).
SERVING_METADATA = Path("assets.extra") / "leukdx_serving.json"



def read_serving_metadata(saved_model_dir: str | os.PathLike) -> dict[str, Any]:
    """The serving facts leukdx stored in a SavedModel (image size, aspect, threshold...).

    Returns an empty dict for a SavedModel that leukdx did not write.
    """
    path = Path(saved_model_dir) / SERVING_METADATA
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- predictors


class Predictor:
    """P(leukaemia) for batches of ``uint8`` images, whatever the model's format.

    Attributes:
        image_size: side images are resized to before prediction, or ``None`` when the model
            takes images at their own size (one at a time).
        aspect: ``stretch`` or ``pad``.
        threshold: decision threshold of the model's run (the calibrated one when the run
            set it on a withheld source, ``train.calibrate``).
        description: what was loaded (for messages and the CSV's provenance).
        preparation: the run's data steps (crop, cell windows, stain reference;
            :class:`~leukdx.data.inputs.InputPreparation`), or ``None`` when the model came
            without them (images are only resized).
        tta: the run's ``evaluate.tta`` (views averaged when ``predict_paths`` is not told).
    """

    image_size: int | None
    aspect: str
    threshold: float
    description: str
    preparation: Any = None
    tta: int = 1

    def predict(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        """P(leukaemia), shape (B,), for ``(B, H, W, 3)`` ``uint8`` images."""
        raise NotImplementedError


class _KerasPredictor(Predictor):
    def __init__(self, loaded: LoadedModel, batch_size: int):
        self.loaded = loaded
        self.image_size = loaded.image_size
        self.aspect = loaded.aspect
        self.threshold = loaded.threshold
        self.batch_size = int(batch_size)
        self.description = str(loaded.model_path or "in-memory Keras model")
        if loaded.config is not None:
            from leukdx.data.inputs import InputPreparation

            self.preparation = InputPreparation.for_run(loaded.config, loaded.run_dir,
                                                        image_size=self.image_size)
            self.tta = int(loaded.config.evaluate.tta)

    def predict(self, images: np.ndarray) -> np.ndarray:
        from leukdx.train import predict_proba

        return predict_proba(self.loaded.model, images, batch_size=self.batch_size)


class _SavedModelPredictor(Predictor):
    def __init__(self, folder: Path):
        import tensorflow as tf

        self.folder = folder
        self.description = str(folder)
        loaded = tf.saved_model.load(str(folder))
        if "serving_default" not in loaded.signatures:
            raise ValueError(
                f"The SavedModel '{folder}' has no serving_default signature; export it with "
                "`leukdx export` (or keras Model.export)."
            )
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures["serving_default"]
        _, inputs = self._fn.structured_input_signature
        if len(inputs) != 1:
            raise ValueError(
                f"The SavedModel '{folder}' serving_default signature takes {len(inputs)} "
                "inputs; one image tensor is expected."
            )
        (self._input_name, spec), = inputs.items()
        self._input_dtype = spec.dtype
        meta = read_serving_metadata(folder)
        fixed = spec.shape.rank == 4 and spec.shape[1] is not None and spec.shape[2] is not None
        if meta.get("image_size"):
            # leukdx's own export: resize with Pillow as in training, so the graph's resize is
            # skipped and the result equals the Keras model's.
            self.image_size = int(meta["image_size"])
        elif fixed:
            self.image_size = int(spec.shape[1])
        else:
            self.image_size = None
        from leukdx.models.io import DEFAULT_ASPECT, DEFAULT_THRESHOLD

        self.aspect = str(meta.get("aspect", DEFAULT_ASPECT))
        self.threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
        if meta.get("preparation"):
            # the run's crop / cell windows / stain reference, stored by leukdx export
            from leukdx.data.inputs import InputPreparation

            self.preparation = InputPreparation.from_dict(meta["preparation"])
            self.image_size = self.preparation.image_size
        self.tta = int(meta.get("tta_views", 1) or 1)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = tf.constant(np.asarray(images), dtype=self._input_dtype)
        outputs = self._fn(**{self._input_name: x})
        if "probability" in outputs:
            probs = outputs["probability"]
        elif len(outputs) == 1:
            probs = next(iter(outputs.values()))
        else:
            raise ValueError(
                f"The SavedModel '{self.folder}' returns {sorted(outputs)}; leukdx expects a "
                "'probability' output."
            )
        return np.asarray(probs, dtype=np.float64).reshape(-1)


def load_predictor(model: Any, batch_size: int = 32) -> Predictor:
    """A :class:`Predictor` for a run folder, ``.keras`` file, SavedModel or Keras model.

    Args:
        model: see the module docstring for the accepted kinds.
        batch_size: images per forward pass of a Keras model.

    Returns:
        The predictor.
    """
    from leukdx.models.io import MODEL_FILE, find_saved_model, load_keras_model

    if isinstance(model, (str, os.PathLike)):
        saved_model = find_saved_model(model)
        if saved_model is not None and not (Path(model) / MODEL_FILE).is_file():
            return _SavedModelPredictor(saved_model)
    return _KerasPredictor(load_keras_model(model), batch_size)


# --------------------------------------------------------------------------- files


def collect_image_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated list of images.

    Inside folders only files with an image extension (``IMAGE_EXTENSIONS``) are taken, so
    ``MANIFEST.csv`` or annotation files are ignored. A file named explicitly is always taken:
    if it is not an image, it is reported as skipped by :func:`predict_paths`.

    Args:
        paths: one path or several.

    Returns:
        Image paths in the order given (folders expanded in sorted order).

    Raises:
        FileNotFoundError: a given path does not exist (usually a typo).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        entry = Path(entry)
        if entry.is_dir():
            files = sorted(
                Path(root) / name
                for root, dirs, names in os.walk(entry)
                for name in names
                if is_image_file(name)
                and not any(part.startswith(".") for part in Path(root).relative_to(entry).parts)
            )
        elif entry.is_file():
            files = [entry]
        else:
            raise FileNotFoundError(f"'{entry}' does not exist: give image files or folders.")
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


def _load_one(path: Path, size: int | None, aspect: str) -> np.ndarray:
    return read_image(path) if size is None else load_image(path, size, aspect)


def _batches(items: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- prediction

DEFAULT_OUTPUT = "predictions.csv"


def default_output_path(folder: str | os.PathLike = ".") -> Path:
    """Where ``leukdx predict`` writes without ``--out``: ``predictions.csv`` in ``folder``,
    or ``predictions_2.csv``, ``predictions_3.csv``... when it exists, so that an earlier
    result is never overwritten silently.

    Args:
        folder: the folder to write in (default the current one).

    Returns:
        The first of those paths that does not exist yet.

    Example:
        >>> default_output_path("/nonexistent").name
        'predictions.csv'
    """
    first = Path(folder) / DEFAULT_OUTPUT
    candidate, n = first, 1
    while candidate.exists():
        n += 1
        candidate = first.with_name(f"{first.stem}_{n}{first.suffix}")
    return candidate


@dataclass
class PredictResult:
    """What :func:`predict_paths` produced.

    Attributes:
        csv_path: the CSV written (``None`` when ``out`` was ``None``).
        n_predicted: images classified.
        skipped: ``(path, reason)`` for each file that could not be read.
        table: the predictions, columns ``path``, ``probability`` (P(leukaemia)), ``label``
            (0 healthy, 1 leukaemia).
    """

    csv_path: Path | None
    n_predicted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def predict_paths(
    model: Any,
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike | None = "predictions.csv",
    batch_size: int = 32,
    threshold: float | None = None,
    *,
    progress: bool = True,
    workers: int | None = None,
    tta: int | None = None,
) -> PredictResult:
    """Classify image files and folders; write ``path,probability,label`` rows to a CSV.

    Args:
        model: a run folder, ``.keras`` file, SavedModel folder or ``keras.Model``.
        paths: image files and/or folders (searched recursively).
        out: CSV to write (parent folders are created); ``None`` writes nothing.
        batch_size: images decoded and classified together.
        threshold: probability at or above which the label is 1 (leukaemia); ``None`` uses
            the model's run (``train.threshold``, 0.5 without a config).
        progress: show a tqdm progress bar.
        workers: decoding threads (default: up to 4 or the CPU count).
        tta: average P(leukaemia) over this many of the 8 flips/rotations by 90 degrees
            (:mod:`leukdx.tta`; 1 = none); works for every kind of model. ``None``: the
            run's ``evaluate.tta`` (1 for a model without a run).

    Each file is prepared as the model's run prepared its training images
    (:class:`~leukdx.data.inputs.InputPreparation`: resize, centre or nucleus-centred crops,
    stain normalisation to the run's reference); a file that gives several cell crops gets one
    probability from them (``data.cell.aggregate``).

    Returns:
        A :class:`PredictResult`; unreadable files are in ``skipped``, never fatal.

    Raises:
        FileNotFoundError: the model or one of ``paths`` does not exist.
        UnsafeModelError: the model file contains code that safe mode refuses to run.

    Example:
        >>> result = predict_paths("runs/demo/model.keras", ["a.tif", "more/"], out=None)
        >>> result.n_predicted, result.skipped
    """
    from tqdm.auto import tqdm

    from leukdx.tta import check_tta, tta_average

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}.")
    files = collect_image_paths(paths)
    if not files:
        log.warning("No image files (%s) found in the given paths.", ", ".join(IMAGE_EXTENSIONS))
    predictor = load_predictor(model, batch_size=batch_size)
    tta = check_tta(predictor.tta if tta is None else tta)
    preparation = predictor.preparation
    if preparation is not None:
        load = preparation.load
    else:
        def load(path: Path) -> np.ndarray:
            return _load_one(path, predictor.image_size, predictor.aspect)[None]
    cut = float(predictor.threshold if threshold is None else threshold)
    if not 0.0 <= cut <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}.")

    rows_path: list[str] = []
    rows_prob: list[float] = []
    skipped: list[tuple[str, str]] = []
    # Models that take images at their own size (no fixed input) see one image per call.
    step = int(batch_size) if predictor.image_size is not None else 1
    n_workers = workers or min(4, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(max_workers=n_workers) as pool,
        tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar,
    ):
        for chunk in _batches(files, step):
            futures = [pool.submit(load, p) for p in chunk]
            good_paths, inputs = [], []
            for path, future in zip(chunk, futures):
                try:
                    inputs.append(future.result())
                    good_paths.append(str(path))
                except (BadImageError, OSError) as exc:
                    reason = exc.reason if isinstance(exc, BadImageError) else str(exc)
                    skipped.append((str(path), reason))
                    log.warning("Skipped %s: %s", path, reason)
            if inputs:
                probs = tta_average(predictor.predict, np.concatenate(inputs), tta)
                ends = np.cumsum([len(x) for x in inputs])
                for path_probs in np.split(np.asarray(probs, np.float64), ends[:-1]):
                    rows_prob.append(preparation.aggregate(path_probs) if preparation
                                     is not None else float(path_probs[0]))
                rows_path.extend(good_paths)
            bar.update(len(chunk))

    probabilities = np.asarray(rows_prob, dtype=np.float64)
    table = pd.DataFrame(
        {
            "path": pd.Series(rows_path, dtype=str),
            "probability": probabilities,
            "label": (probabilities >= cut).astype(int),
        }
    )
    csv_path = None
    if out is not None:
        csv_path = atomic_write_csv(out, table)
    if skipped:
        log.warning("%d of %d file(s) could not be read and were skipped.", len(skipped),
                    len(files))
    return PredictResult(csv_path, len(table), skipped, table)
