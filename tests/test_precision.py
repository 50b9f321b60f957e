"""Tests of leukdx.precision: choosing and applying the dtype policy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from leukdx import precision
from leukdx.config import ModelConfig
from leukdx.precision import apply_precision, cpu_flags, resolve_precision


@pytest.fixture(autouse=True)
def restore_policy():
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine with or without a GPU and bfloat16 CPU flags."""

    def set_machine(gpu: bool, flags: set[str]):
        monkeypatch.setattr(precision, "gpu_available", lambda: gpu)
        monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset(flags))

    return set_machine


@pytest.mark.parametrize(
    ("gpu", "flags", "expected"),
    [
        (True, {"avx512_bf16"}, "mixed_float16"),
        (True, set(), "mixed_float16"),
        (False, {"avx512f", "avx512_bf16"}, "mixed_bfloat16"),
        (False, {"amx_bf16", "amx_tile"}, "mixed_bfloat16"),
        (False, {"avx2", "avx512f"}, "float32"),
        (False, set(), "float32"),
    ],
)
def test_auto_picks_the_fastest_safe_policy(machine, gpu, flags, expected):
    machine(gpu, flags)
    assert resolve_precision("auto") == expected


@pytest.mark.parametrize("name", ["float32", "mixed_bfloat16", "Float32"])
def test_explicit_names_pass_through(machine, name):
    machine(False, set())
    assert resolve_precision(name) == name.lower()


def test_mixed_float16_without_gpu_warns_but_passes(machine):
    machine(False, {"avx512_bf16"})
    with pytest.warns(UserWarning, match="slower"):
        assert resolve_precision("mixed_float16") == "mixed_float16"


def test_unknown_precision_names_the_setting():
    with pytest.raises(ValueError, match="train.precision"):
        resolve_precision("half")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu sse avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_apply_precision_sets_the_global_policy(machine):
    machine(False, {"avx512_bf16"})
    assert apply_precision("auto") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert apply_precision("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_model_output_is_float32_under_mixed_policies(policy):
    from leukdx.models import build_model

    keras.mixed_precision.set_global_policy(policy)
    model = build_model(ModelConfig(backbone="alexnet", strategy="mdft", weights="none"), 67)
    assert model.get_layer("conv1").compute_dtype == policy.split("_")[1]
    out = model(np.full((1, 67, 67, 3), 128.0, "float32"), training=False)
    assert out.dtype == "float32" and out.shape == (1, 1)
    assert 0.0 <= float(np.asarray(out)[0, 0]) <= 1.0


def test_auto_on_this_machine_follows_its_gpu_and_cpu_flags():
    """No pretending: the real machine's devices and /proc/cpuinfo decide."""
    import tensorflow as tf

    from leukdx.precision import BF16_CPU_FLAGS, gpu_available, resolve_jit_compile

    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    assert gpu_available() is has_gpu
    if has_gpu:
        assert resolve_precision("auto") == "mixed_float16"
        assert resolve_jit_compile("auto") == "auto"
    else:
        bf16 = bool(BF16_CPU_FLAGS & cpu_flags())
        assert resolve_precision("auto") == ("mixed_bfloat16" if bf16 else "float32")
        assert resolve_jit_compile("auto") is False


@pytest.mark.parametrize(
    ("value", "gpu", "expected"),
    [
        ("auto", False, False),   # XLA measured several times slower on CPU
        ("auto", True, "auto"),   # on a GPU Keras decides per model
        ("true", False, True),
        ("TRUE", True, True),
        (True, False, True),
        ("false", True, False),
        (False, True, False),
    ],
)
def test_resolve_jit_compile(machine, value, gpu, expected):
    from leukdx.precision import resolve_jit_compile

    machine(gpu, set())
    assert resolve_jit_compile(value) == expected
    assert type(resolve_jit_compile(value)) is type(expected)


def test_unknown_jit_compile_names_the_setting():
    from leukdx.precision import resolve_jit_compile

    with pytest.raises(ValueError, match="train.jit_compile"):
        resolve_jit_compile("sometimes")


@pytest.mark.parametrize(("setting", "expected"), [("auto", False), (True, True), (False, False)])
def test_compiled_model_uses_the_resolved_jit_compile(machine, setting, expected):
    from leukdx.config import TrainConfig
    from leukdx.train import compile_model

    machine(False, set())
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, TrainConfig(jit_compile=setting, optimizer="adam"))
    assert model.jit_compile is expected
