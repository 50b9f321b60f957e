"""Choosing the numeric precision policy (``train.precision``).

``auto`` picks the fastest policy that is safe on the machine at hand:

- a GPU: ``mixed_float16`` (tensor cores; Keras scales the loss);
- a CPU with native bfloat16 (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``):
  ``mixed_bfloat16``, measured 1.7-1.85x faster than float32 for VGG16 training here;
- otherwise ``float32``. ``mixed_float16`` is never chosen without a GPU: on a CPU it is
  5-17x slower than float32.

Models built by :func:`leukdx.models.build_model` keep a float32 output layer under every
policy. TensorFlow and Keras are imported only when needed.

``train.jit_compile`` (XLA) follows a rule of the same kind (:func:`resolve_jit_compile`):
``auto`` is off on a CPU-only machine, where XLA measured several times slower for VGG16
training and prediction on AVX2 CPUs, and on a GPU it is left to Keras' own ``"auto"``,
which compiles with XLA unless a layer of the model does not support it.

Example:
    >>> from leukdx.precision import resolve_precision
    >>> resolve_precision("float32")
    'float32'
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = [
    "BF16_CPU_FLAGS",
    "PRECISIONS",
    "apply_precision",
    "cpu_flags",
    "cpu_supports_bf16",
    "gpu_available",
    "resolve_jit_compile",
    "resolve_precision",
]

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def gpu_available() -> bool:
    """Whether TensorFlow sees at least one GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_supports_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16)."""
    return bool(BF16_CPU_FLAGS & cpu_flags())


def resolve_precision(name: str = "auto") -> str:
    """The Keras dtype policy name for ``train.precision``.

    Args:
        name: ``auto``, ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.

    Returns:
        A policy name; ``auto`` resolves as described in the module docstring, other names
        pass through (``mixed_float16`` without a GPU with a warning).

    Raises:
        ValueError: an unknown name.
    """
    key = str(name).strip().lower()
    if key not in PRECISIONS:
        raise ValueError(
            f"train.precision is {name!r}; choose one of {', '.join(PRECISIONS)}."
        )
    if key == "auto":
        if gpu_available():
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_supports_bf16() else "float32"
    if key == "mixed_float16" and not gpu_available():
        warnings.warn(
            "train.precision=mixed_float16 without a GPU: float16 is emulated on the CPU and "
            "training is several times slower than float32; use auto, float32 or "
            "mixed_bfloat16.",
            UserWarning, stacklevel=2,
        )
    return key


def apply_precision(name: str = "auto") -> str:
    """Resolve ``name`` and make it Keras' global dtype policy.

    Layers built afterwards use it; build the model after calling this.

    Returns:
        The policy name that was set.
    """
    import keras

    policy = resolve_precision(name)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def resolve_jit_compile(value: bool | str = "auto") -> bool | str:
    """The ``jit_compile`` argument for ``model.compile`` from ``train.jit_compile``.

    Args:
        value: ``auto``, ``true``/``false`` or a bool.

    Returns:
        ``False`` for ``auto`` on a CPU-only machine; ``"auto"`` for ``auto`` with a GPU
        (Keras then compiles with XLA unless a layer does not support it, and reports what it
        chose as ``model.jit_compile`` after compiling); explicit values as bools.

    Raises:
        ValueError: anything else.

    Example:
        >>> resolve_jit_compile("false")
        False
    """
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "false"):
        return key == "true"
    if key != "auto":
        raise ValueError(f"train.jit_compile is {value!r}; choose auto, true or false.")
    return "auto" if gpu_available() else False
