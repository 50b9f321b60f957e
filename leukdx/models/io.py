"""Loading trained leukdx models: the one place that opens a ``.keras`` file or a run folder.

Training (:mod:`leukdx.train`), prediction (:mod:`leukdx.predict`), export
(:mod:`leukdx.export`), Grad-CAM (:mod:`leukdx.explain`) and feature extraction
(:mod:`leukdx.features.extract`) all load models through here, so safe mode, the error messages
and the ``jit_compile`` rule are the same everywhere.

Example:
    >>> from leukdx.models.io import load_keras_model
    >>> loaded = load_keras_model("runs/demo")      # model + config.yaml of the run
    >>> loaded.image_size, loaded.threshold
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukdx.config import Config, load_config
from leukdx.errors import ModelFileError, UnsafeModelError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "SAVED_MODEL_DIR",
    "SAVED_MODEL_FILE",
    "LoadedModel",
    "find_saved_model",
    "load_keras_model",
    "load_model",
]

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_DIR = "savedmodel"  # the SavedModel's folder inside an export folder

RUN_INFO_FILE = "run.json"  # leukdx.train.RUN_FILE (not imported: keeps this module light)
DEFAULT_THRESHOLD = 0.5
DEFAULT_ASPECT = "stretch"


def load_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """Load a ``.keras`` model with ``safe_mode=True`` (no arbitrary code is run).

    leukdx's custom layers (backbone preprocessing, LRN, augmentation layers) are registered
    when their modules are imported, which this function does first.

    Args:
        path: a ``.keras`` file or a run folder containing ``model.keras``.
        compile: also restore the optimizer and loss (needed only to continue training).

    Returns:
        The Keras model, with ``jit_compile`` set by the same rule as training
        (:func:`leukdx.precision.resolve_jit_compile`).

    Raises:
        FileNotFoundError: the file does not exist.
        ModelFileError: the file is not a readable ``.keras`` archive or does not describe a
            model Keras can rebuild from registered layers.
        UnsafeModelError: the file holds code (a ``Lambda`` layer, an arbitrary callable)
            that safe mode refuses to run.
    """
    import keras

    import leukdx.data.augment  # noqa: F401  (registers augmentation layers)
    import leukdx.models  # noqa: F401  (registers model layers)
    from leukdx.precision import resolve_jit_compile

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"No model at {path}: give a .keras file or a run folder made by `leukdx train`."
        )
    # Keras reports a file that is not a zip archive as "File not found"; say what it is.
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path} is not a Keras .keras file (a zip archive): it is truncated, corrupt or "
            "another format. Give the model.keras of a run folder made by `leukdx train`."
        )
    try:
        model = keras.models.load_model(path, compile=compile, safe_mode=True)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if "safe_mode" in reason or "unsafe" in reason.lower() or "lambda" in reason.lower():
            raise UnsafeModelError(
                f"Refusing to load '{path}': it contains code (such as a Lambda layer) that "
                "would run when the file is opened. leukdx loads models in Keras safe mode "
                "only; leukdx models never need Lambda layers, so rebuild the model with "
                "registered layers instead."
            ) from exc
        first_sentence = reason.split(". ")[0][:200]
        raise ModelFileError(
            f"Cannot load '{path}' as a leukdx model ({type(exc).__name__}: {first_sentence}). "
            "It was not saved by leukdx, or names layers or functions leukdx does not "
            "register; give the model.keras of a run folder made by `leukdx train`."
        ) from exc
    jit_compile = resolve_jit_compile("auto")
    if jit_compile != "auto":  # on a GPU Keras' own default already decides per model
        model.jit_compile = jit_compile
    return model


@dataclass
class LoadedModel:
    """A Keras model together with the run it came from.

    Attributes:
        model: the Keras model (input float32 [0, 255] images, output (B, 1) P(leukaemia)).
        config: the run's config, or ``None`` when the model came without one.
        run_dir: the run folder, or ``None``.
        model_path: the ``.keras`` file, or ``None`` for an in-memory model.
    """

    model: keras.Model
    config: Config | None = None
    run_dir: Path | None = None
    model_path: Path | None = None

    @property
    def image_size(self) -> int:
        """Side of the square input: the model's own input size, else ``data.image_size``."""
        shape = tuple(self.model.input_shape)
        if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
            return int(shape[1])
        if self.config is not None:
            return int(self.config.data.image_size)
        raise ValueError(
            f"The model's input shape {shape} has no fixed square size and no config.yaml "
            "says which size it was trained at; use the run folder instead of the bare model."
        )

    @property
    def aspect(self) -> str:
        """``stretch`` or ``pad``, as the training images were resized (``data.aspect``)."""
        return self.config.data.aspect if self.config is not None else DEFAULT_ASPECT

    @property
    def threshold(self) -> float:
        """Probability at or above which an image is called leukaemia: the threshold the run
        calibrated on a withheld source (``train.calibrate``, in its ``run.json``), else
        ``train.threshold``, else 0.5."""
        calibrated = self.calibration.get("threshold")
        if calibrated is not None:
            return float(calibrated)
        return float(self.config.train.threshold) if self.config is not None else DEFAULT_THRESHOLD

    @property
    def calibration(self) -> dict[str, Any]:
        """The ``calibration`` entry of the run's ``run.json`` (empty when there is none)."""
        import json

        if self.run_dir is None or not (Path(self.run_dir) / RUN_INFO_FILE).is_file():
            return {}
        try:
            info = json.loads((Path(self.run_dir) / RUN_INFO_FILE).read_text())
        except (OSError, ValueError):
            return {}
        entry = info.get("calibration") if isinstance(info, dict) else None
        return dict(entry) if isinstance(entry, dict) else {}


def _load_keras_file(path: Path) -> keras.Model:
    """Load with safe mode through :func:`load_model`.

    Raises:
        UnsafeModelError: the file holds code that safe mode refuses to run.
        ModelFileError: the file is corrupt, not a ``.keras`` archive, or not a leukdx model.
    """
    return load_model(path)


def load_keras_model(source: Any) -> LoadedModel:
    """Resolve a run folder, ``.keras`` file or in-memory model to a :class:`LoadedModel`.

    Args:
        source: a ``keras.Model``, a ``.keras`` file, or a run folder holding ``model.keras``
            (its ``config.yaml`` is read too; a ``config.yaml`` beside a ``.keras`` file is
            also used).

    Returns:
        The model with its config (``None`` when there is none).

    Raises:
        FileNotFoundError: the path does not exist or holds no ``model.keras``.
        ValueError: the path is a SavedModel (use :func:`load_predictor` for those).
        UnsafeModelError: the file contains code that safe mode refuses to run.
        ModelFileError: the file is corrupt, not a ``.keras`` archive, or not a leukdx model.
    """
    if not isinstance(source, (str, os.PathLike)):
        if not hasattr(source, "predict"):
            raise TypeError(
                f"Expected a keras.Model, a .keras file or a run folder, got {type(source)!r}."
            )
        return LoadedModel(model=source)
    path = Path(source)
    if path.is_dir():
        run_dir, model_path = path, path / MODEL_FILE
        if not model_path.is_file() and find_saved_model(path) is not None:
            raise ValueError(
                f"'{path}' is a TensorFlow SavedModel, which has no Keras layers to load or "
                "explain; give the run folder or the .keras file it was exported from."
            )
        if not model_path.is_file():
            raise FileNotFoundError(
                f"'{path}' is a folder without {MODEL_FILE}: give a run folder made by "
                "`leukdx train` or a .keras file."
            )
    elif path.is_file():
        run_dir, model_path = path.parent, path
    else:
        raise FileNotFoundError(f"No model at '{path}': the path does not exist.")
    config_path = run_dir / CONFIG_FILE
    config = load_config(config_path) if config_path.is_file() else None
    model = _load_keras_file(model_path)
    return LoadedModel(
        model=model,
        config=config,
        run_dir=run_dir if config is not None else None,
        model_path=model_path,
    )


def find_saved_model(path: str | os.PathLike) -> Path | None:
    """The SavedModel folder at ``path`` (itself, or its ``savedmodel/``), or ``None``."""
    path = Path(path)
    if not path.is_dir():
        return None
    for folder in (path, path / SAVED_MODEL_DIR):
        if (folder / SAVED_MODEL_FILE).is_file():
            return folder
    return None
