"""The errors leukdx raises for problems the user can fix.

Every one derives from :class:`LeukdxError`. The ``leukdx`` command prints such an error as one
line, ``leukdx: error: <message>``, and exits with status 2 (``-v`` shows the traceback); any
other exception is a bug and keeps its traceback. Each message names the file or setting at
fault and what to do about it.

Each class also derives from the built-in exception it replaced (``ValueError``,
``RuntimeError``, ...), so ``except ValueError`` written against older leukdx still catches it,
and each is importable from the module that raises it (``leukdx.config.ConfigError``,
``leukdx.data.records.DataError``, ``leukdx.train.RunFolderError``, ...).

Example:
    >>> from leukdx.errors import ConfigError, LeukdxError
    >>> issubclass(ConfigError, LeukdxError) and issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "LeakageError",
    "LedgerError",
    "LeukdxError",
    "ModelFileError",
    "OutputExistsError",
    "RunFolderError",
    "UnknownBackboneError",
    "UnsafeModelError",
    "WeightsUnavailableError",
]


class LeukdxError(Exception):
    """Base of every error whose message tells the user what to change."""


class ConfigError(LeukdxError, ValueError):
    """A configuration key or value is invalid; the message says which and what to do."""


class UnknownBackboneError(ConfigError):
    """``model.backbone`` names no registered backbone."""


class DataError(LeukdxError, ValueError):
    """The data on disk cannot be used as configured; the message names the folder/file."""


class WeightsUnavailableError(LeukdxError, RuntimeError):
    """Pretrained weights cannot be had or read; the message says what to download or set."""


class ModelFileError(LeukdxError, ValueError):
    """A model file cannot be loaded (missing, corrupt, not a model, or not leukdx's)."""


class UnsafeModelError(ModelFileError):
    """A ``.keras`` file holds code (e.g. a ``Lambda`` layer) that safe mode will not run."""


class RunFolderError(LeukdxError, RuntimeError):
    """The output folder holds a different run; the message says how to proceed."""


class OutputExistsError(LeukdxError, FileExistsError):
    """An output folder already holds files that the command would not overwrite."""


class LedgerError(LeukdxError, ValueError):
    """A ledger row is malformed or duplicates a finished fold."""


class LeakageError(LeukdxError, AssertionError):
    """A training and a test set share images; the message names the split and examples."""
