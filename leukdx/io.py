"""Atomic file writes: a reader sees the old file or the complete new one, never half of one.

Every writer goes through :func:`atomic_output`: the content is written to a temporary file in
the destination's folder (so ``os.replace`` stays on one file system, where it is atomic) and
then moved over the destination. The temporary file is created with mode ``0o666`` minus the
process umask, exactly like ``open(path, "w")`` (``tempfile.mkstemp`` would make it ``0600``,
leaving ``run.json`` unreadable to the group while every other output is ``0644``).

No TensorFlow.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write_json({"epoch": 0}, folder / "run.json").name
    'run.json'
    >>> (folder / "run.json").read_text()
    '{\\n  "epoch": 0\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "json_safe",
]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write to; it replaces ``path`` when the block ends without error.

    For writers that want a file name (``Figure.savefig``, ``DataFrame.to_csv``,
    ``numpy.save``). The temporary file exists (empty, normal permissions) when the block
    starts and keeps the destination's suffix, so writers that pick a format from the suffix
    still work. On an error it is removed and ``path`` is left as it was.

    Args:
        path: the destination file; its folder is created.

    Yields:
        The temporary path (``.<name>.<random>.tmp<suffix>`` beside ``path``).

    Example:
        >>> with atomic_output(folder / "curves.png") as tmp:     # doctest: +SKIP
        ...     figure.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    # 0o666 is filtered by the umask like any open(..., "w"); O_EXCL never reuses a file.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: destination file (its folder is created).
        data: the bytes.

    Returns:
        The destination path.
    """
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Args:
        path: destination file (its folder is created).
        text: the content.
        encoding: text encoding.

    Returns:
        The destination path.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def json_safe(value: Any) -> Any:
    """NumPy scalars/arrays to plain Python, paths to strings, NaN/inf to ``None``
    (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def atomic_write_json(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """Write ``data`` as indented JSON (see :func:`json_safe`) atomically.

    Args:
        data: JSON-serialisable data; NumPy values, paths and NaN are converted.
        path: destination file (its folder is created).
        indent: JSON indentation.

    Returns:
        The destination path.
    """
    text = json.dumps(json_safe(data), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str | os.PathLike, table: Any, **to_csv: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given).

    Args:
        path: destination file (its folder is created).
        table: a ``pandas.DataFrame``.
        **to_csv: further ``DataFrame.to_csv`` arguments.

    Returns:
        The destination path.
    """
    to_csv.setdefault("index", False)
    return atomic_write_text(path, table.to_csv(**to_csv))
