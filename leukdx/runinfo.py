"""Facts about the environment a run happened in, for ``run.json`` and benchmark tables.

Software versions, the device a model trained on, and an atomic JSON writer. TensorFlow is
imported only inside the functions that ask it about devices, so importing this module is cheap.

Example:
    >>> from leukdx.runinfo import software_versions, write_json_atomic
    >>> sorted(software_versions())[:2]
    ['keras', 'leukdx']
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from leukdx.io import atomic_write_json

__all__ = ["cpu_model", "device_info", "read_json", "software_versions", "write_json_atomic"]


def software_versions() -> dict[str, str]:
    """Versions of leukdx, Python, TensorFlow, Keras and NumPy.

    A package that is not installed is reported as ``"missing"`` rather than raising, so a
    run record can always be written.

    Returns:
        Mapping of package name to version string.
    """
    import importlib.metadata

    from leukdx import __version__

    versions = {"leukdx": __version__, "python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def device_info() -> dict[str, Any]:
    """The hardware TensorFlow sees: CPU model and core count, GPU names.

    Returns:
        ``{"cpu": str, "cpu_count": int, "gpus": [str, ...], "platform": str}``.
    """
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):
            details = {}
        gpus.append(str(details.get("device_name", gpu.name)))
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "gpus": gpus,
        "platform": platform.platform(),
    }


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON so that readers never see a half-written file.

    Goes through :func:`leukdx.io.atomic_write_json`, so a run killed mid-write leaves either
    the old file or the new one, and the file has the usual permissions (``0644`` under the
    default umask), like every other output.

    Args:
        data: JSON-serialisable mapping (NumPy values and NaN are converted).
        path: destination file.

    Returns:
        The destination path.
    """
    return atomic_write_json(data, path)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """Read a JSON object, or ``None`` when the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
