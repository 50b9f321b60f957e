"""Where a backbone's pretrained weights come from, and loading them into layers.

``model.weights`` is ``imagenet``, ``none`` or the path of a local weights file.

- ``imagenet``: the Keras Applications file, taken from the Keras cache
  (``$KERAS_HOME/models`` or ``~/.keras/models``) when it is there. Otherwise the download
  host is probed (a 3 s socket connect) and, when it cannot be reached, a
  :class:`WeightsUnavailableError` says at once which file to fetch from which URL and where
  to put it, instead of letting a download hang on an offline machine.
- ``none``: random initialisation.
- a path: a legacy Keras ``.h5``/``.hdf5`` weights file (e.g. the Keras Applications
  ``*_notop.h5``; layers are matched in topological order, as Keras does; a file that also
  holds the original dense layers, e.g. ``fc1``/``fc2`` or ``fc6``/``fc7``, fills them by
  name) or a Keras 3 ``.weights.h5`` saved from a backbone built by
  :meth:`leukdx.models.BackboneSpec.build`.

Example:
    >>> from leukdx.models import get_backbone
    >>> from leukdx.models.weights import resolve_weights
    >>> resolve_weights(get_backbone("vgg16"), "none") is None
    True
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leukdx.errors import WeightsUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    from leukdx.models.backbones import BackboneSpec

__all__ = [
    "IMAGENET_HOST",
    "PRETRAIN_INFO",
    "WEIGHT_FILE_SUFFIXES",
    "WeightsFile",
    "WeightsUnavailableError",
    "check_pretrain_info",
    "keras_models_dir",
    "load_pretrained",
    "network_available",
    "normalize_weights",
    "resolve_weights",
]

IMAGENET_HOST = "storage.googleapis.com"
WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".hdf5")
_NO_WEIGHTS = {"none", "null", "random", ""}


@dataclass(frozen=True)
class WeightsFile:
    """A downloadable weights file of Keras Applications.

    Args:
        fname: file name in the Keras cache (``<keras home>/models/<fname>``).
        url: where Keras downloads it from.
        md5: its MD5 hash (checked after a download).
    """

    fname: str
    url: str
    md5: str | None = None


def normalize_weights(weights: str | os.PathLike | None) -> str | None:
    """``None`` for random initialisation, ``"imagenet"``, or the weights path as a string."""
    if weights is None:
        return None
    text = str(weights).strip()
    if text.lower() in _NO_WEIGHTS:
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    return text


def keras_models_dir() -> Path:
    """The folder where Keras caches downloaded application weights.

    ``$KERAS_HOME/models`` when ``KERAS_HOME`` is set (read now, not at import), else
    ``~/.keras/models`` (``/tmp/.keras/models`` when the home folder is not writable, as Keras
    does).
    """
    home = os.environ.get("KERAS_HOME")
    if home:
        return Path(home).expanduser() / "models"
    base = Path.home()
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir())
    return base / ".keras" / "models"


def network_available(host: str = IMAGENET_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable_message(spec: BackboneSpec, file: WeightsFile, folder: Path) -> str:
    return (
        f"ImageNet weights for backbone '{spec.name}' are not in the Keras cache and "
        f"{IMAGENET_HOST} cannot be reached (no internet?).\n"
        f"  Either download {file.url}\n"
        f"  and save it as {folder / file.fname}\n"
        f"  (the Keras cache; set KERAS_HOME to use another folder), or pass the file's path "
        f"as model.weights (e.g. --set model.weights={folder / file.fname}),\n"
        f"  or train from random initialisation with model.weights: none."
    )


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | None,
                    include_top: bool = False) -> str | None:
    """Turn a ``model.weights`` setting into a local file path (or ``None`` for random).

    Args:
        spec: the backbone.
        weights: ``imagenet``, ``none``/``None`` or a path to a weights file.
        include_top: for ``imagenet``, the file that also holds the original dense layers
            (e.g. VGG16's fc1/fc2) instead of the ``_notop`` file.

    Returns:
        The path of an existing weights file, or ``None`` for random initialisation.

    Raises:
        WeightsUnavailableError: the backbone has no ImageNet weights (AlexNet), the ImageNet
            file is neither cached nor downloadable, or a local path does not exist or is not
            a weights file.
    """
    value = normalize_weights(weights)
    if value is None:
        return None
    if value == "imagenet":
        return _imagenet_file(spec, include_top)
    path = Path(value).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model.weights is {value!r}, but no such file exists. Give the path of a weights "
            f"file ({', '.join(WEIGHT_FILE_SUFFIXES)}), 'imagenet' or 'none'."
        )
    if not path.name.lower().endswith(WEIGHT_FILE_SUFFIXES):
        raise WeightsUnavailableError(
            f"model.weights file {path} is not a Keras weights file; expected a name ending "
            f"in {', '.join(WEIGHT_FILE_SUFFIXES)} (e.g. a Keras Applications *_notop.h5 or a "
            f".weights.h5 saved by Keras)."
        )
    return str(path.resolve())


def _imagenet_file(spec: BackboneSpec, include_top: bool) -> str:
    file = spec.imagenet_top if include_top else spec.imagenet_notop
    if file is None:
        raise WeightsUnavailableError(
            f"Backbone '{spec.name}' has no ImageNet weights in Keras Applications, so "
            f"model.weights: imagenet cannot be used with it. Set model.weights to the path of "
            f"a local weights file (a Keras .h5 whose weighted layers match "
            f"{', '.join(spec.blocks)}"
            + (f" [and {', '.join(spec.dense_top_names)}]" if spec.dense_top_names else "")
            + ", or a .weights.h5 saved from leukdx) or to none (random initialisation)."
        )
    folder = keras_models_dir()
    cached = folder / file.fname
    if cached.is_file():
        return str(cached)
    if not network_available():
        raise WeightsUnavailableError(_unavailable_message(spec, file, folder))
    import keras

    try:
        return keras.utils.get_file(
            file.fname, file.url, cache_subdir="models", cache_dir=str(folder.parent),
            file_hash=file.md5,
        )
    except Exception as exc:  # a half-finished download, a proxy error, a bad hash, ...
        raise WeightsUnavailableError(
            _unavailable_message(spec, file, folder) + f"\n  (download failed: {exc})"
        ) from exc


# File that ``leukdx pretrain`` writes beside its ``backbone.weights.h5``.
PRETRAIN_INFO = "pretrain.json"


def check_pretrain_info(path: str | os.PathLike, backbone: str, norm: str) -> None:
    """Refuse weights from ``leukdx pretrain`` that were trained for another backbone or norm.

    Reads the ``pretrain.json`` beside ``path``, if there is one (other files pass).

    Raises:
        ConfigError: its ``backbone`` or ``norm`` differs from ``backbone`` / ``norm``.
    """
    import json

    from leukdx.errors import ConfigError

    info_path = Path(path).parent / PRETRAIN_INFO
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return
    for key, value in (("backbone", backbone), ("norm", norm)):
        saved = info.get(key, value)
        if saved != value:
            raise ConfigError(
                f"model.weights {path} was pretrained with model.{key}={saved} (see {info_path}), "
                f"but this config has model.{key}={value}; set model.{key}: {saved} or "
                f"pretrain again with model.{key}={value}."
            )


# --------------------------------------------------------------------------- loading


def load_pretrained(base_layers: Sequence[Any], path: str | os.PathLike,
                    top_layers: Sequence[Any] = (), *, spec: BackboneSpec | None = None,
                    input_shape: tuple[int, int, int] | None = None,
                    norm: str = "batch") -> list[str]:
    """Load a weights file into a backbone's layers (and optionally its original dense layers).

    Args:
        base_layers: the convolutional base's layers in topological order (InputLayer
            excluded), e.g. from a model built by :meth:`BackboneSpec.build`.
        path: a legacy ``.h5``/``.hdf5`` or a Keras 3 ``.weights.h5`` file.
        top_layers: dense layers after the base (e.g. ``fc1``, ``fc2``) to fill by name from
            a legacy ``.h5`` that holds them.
        spec: the backbone; needed for ``.weights.h5`` files (a fresh base is built from it,
            loaded with Keras, and copied over).
        input_shape: input shape of that fresh base.
        norm: ``model.norm`` of that fresh base (``batch``, ``group`` or ``layer``).

    Returns:
        Names of the ``top_layers`` that received weights.

    Raises:
        WeightsUnavailableError: the file is not a readable HDF5 file (truncated, corrupt or
            another format), or does not match the backbone (layer count or shapes), naming
            the file and the first mismatch.
    """
    path = Path(path)
    _check_readable_hdf5(path)
    weighted = [layer for layer in base_layers if layer.weights]
    if path.name.lower().endswith(".weights.h5"):
        if spec is None or input_shape is None:
            raise ValueError("Loading a .weights.h5 file needs the backbone spec and input shape.")
        fresh = spec.build(input_shape, weights=None, norm=norm)
        try:
            fresh.load_weights(str(path))
        except OSError as exc:  # h5py could not read the data: the file is damaged
            raise WeightsUnavailableError(_corrupt_message(path, exc)) from exc
        except Exception as exc:
            raise WeightsUnavailableError(
                f"Weights file {path} does not fit backbone '{spec.name}' ({exc}). A .weights.h5 "
                f"must be saved from the convolutional base, e.g. "
                f"get_backbone('{spec.name}').build(shape).save_weights(path)."
            ) from exc
        source = [(layer.name, layer.get_weights()) for layer in fresh.layers if layer.weights]
        _assign_in_order(weighted, source, path)
        return []
    entries = _read_legacy_h5(path)
    if len(entries) < len(weighted):
        raise WeightsUnavailableError(
            f"Weights file {path} holds {len(entries)} layers with weights, but the backbone "
            f"has {len(weighted)}; it is not a weights file of this backbone."
        )
    _assign_in_order(weighted, entries[: len(weighted)], path)
    remaining = {name: values for name, values in entries[len(weighted):]}
    loaded = []
    for layer in top_layers:
        if layer.name in remaining:
            _set_layer_weights(layer, remaining[layer.name], layer.name, path)
            loaded.append(layer.name)
    return loaded


def _corrupt_message(path: Path, exc: BaseException | None = None) -> str:
    detail = f" ({' '.join(str(exc).split())[:200]})" if exc is not None else ""
    return (
        f"Weights file {path} cannot be read as HDF5{detail}: it is truncated, corrupt or "
        "another format (an interrupted download?). Download or save it again, or set "
        "model.weights to another file or none."
    )


def _check_readable_hdf5(path: Path) -> None:
    """Raise a WeightsUnavailableError when ``path`` is not an HDF5 file h5py can open."""
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as exc:
        raise WeightsUnavailableError(_corrupt_message(path, exc)) from exc


def _assign_in_order(layers: Sequence[Any], source: Sequence[tuple[str, list]], path: Path) -> None:
    if len(source) != len(layers):
        raise WeightsUnavailableError(
            f"Weights file {path} holds {len(source)} layers with weights, but the backbone "
            f"has {len(layers)}; it is not a weights file of this backbone."
        )
    for layer, (source_name, values) in zip(layers, source):
        _set_layer_weights(layer, values, source_name, path)


def _set_layer_weights(layer: Any, values: list, source_name: str, path: Path) -> None:
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(v.shape) for v in values]
    if expected != got:
        raise WeightsUnavailableError(
            f"Weights file {path}: layer '{source_name}' has weight shapes {got}, but layer "
            f"'{layer.name}' of the model expects {expected}. The file belongs to another "
            f"network or input size."
        )
    layer.set_weights(values)


def _read_legacy_h5(path: Path) -> list[tuple[str, list]]:
    """(layer name, arrays) of every layer with weights in a Keras 2 style weights file."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise WeightsUnavailableError(
                    f"Weights file {path} is an HDF5 file without Keras layer names; save it "
                    f"with Keras (a legacy .h5) or as a .weights.h5."
                )
            entries = []
            for raw in group.attrs["layer_names"]:
                name = raw.decode("utf8") if isinstance(raw, bytes) else str(raw)
                layer_group = group[name]
                weight_names = [
                    w.decode("utf8") if isinstance(w, bytes) else str(w)
                    for w in layer_group.attrs.get("weight_names", [])
                ]
                if weight_names:
                    entries.append((name, [np.asarray(layer_group[w]) for w in weight_names]))
            return entries
    except OSError as exc:
        raise WeightsUnavailableError(f"Cannot read weights file {path}: {exc}") from exc
