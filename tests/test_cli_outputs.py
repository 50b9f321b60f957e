"""What the command line tells a person: quiet TensorFlow start-up, where files went, and
options of predict / explain / data tfds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.cli import _filtered_native_stderr, _native_log_to_show, main

PREAMBLE = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
            "STDERR\n")
INFO = ("I0000 00:00:1796050987.987063   15332 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.\n")
WARNING = "W0000 00:00:1796050987.99   15332 gpu_device.cc:12] Cannot dlopen some GPU libraries.\n"
ERROR = "E0000 00:00:1796050988.01   15332 cuda_dnn.cc:8] Unable to register cuDNN factory.\n"
OTHER = "Traceback: something real\n"


def test_native_log_filter_honours_tf_cpp_min_log_level():
    text = PREAMBLE + INFO + WARNING + ERROR + OTHER
    assert _native_log_to_show(text, 0) == INFO + WARNING + ERROR + OTHER
    assert _native_log_to_show(text, 1) == WARNING + ERROR + OTHER
    assert _native_log_to_show(text, 2) == ERROR + OTHER
    assert _native_log_to_show(text, 3) == OTHER  # what is not absl's is never hidden


def test_filtered_native_stderr_replays_what_matters(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    with _filtered_native_stderr():
        for line in (PREAMBLE, INFO, INFO, WARNING, OTHER):  # as C++ code writes: to fd 2
            os.write(2, line.encode())
    assert capfd.readouterr().err == WARNING + OTHER
    os.write(2, b"after\n")  # file descriptor 2 is back
    assert capfd.readouterr().err == "after\n"


@pytest.mark.slow
def test_cli_start_up_prints_no_tensorflow_banner(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "leukdx", "backbones"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "vgg16" in proc.stdout
    assert "absl::InitializeLog" not in proc.stderr
    assert "cudart_stub" not in proc.stderr and "oneDNN" not in proc.stderr


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    """A 32 px conv net saved as .keras (no run folder)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="cells_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    path = tmp_path / "tiny.keras"
    model.save(path)
    return path


def images(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"cell_{i}.png")
    return folder


def test_predict_without_out_never_overwrites(tiny_model, tmp_path, monkeypatch, capsys):
    smears = images(tmp_path / "smears")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "predictions.csv").write_text("earlier results\n")

    assert main(["predict", str(tiny_model), str(smears)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"3 images predicted -> {work / 'predictions_2.csv'}"
    assert "predictions.csv exists; writing predictions_2.csv" in captured.err
    assert (work / "predictions.csv").read_text() == "earlier results\n"
    assert len(pd.read_csv(work / "predictions_2.csv")) == 3

    assert main(["predict", str(tiny_model), str(smears), "--out", "chosen.csv"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(work / "chosen.csv"))


def test_explain_class_option(tiny_model, tmp_path):
    smears = images(tmp_path / "leukemia", n=2)
    out = tmp_path / "gradcam"
    assert main(["explain", str(tiny_model), str(smears), "--out", str(out),
                 "--class", "healthy"]) == 0
    table = pd.read_csv(out / "gradcam.csv")
    assert table["explained_class"].tolist() == ["healthy", "healthy"]
    assert table["true_label"].tolist() == [1, 1]  # from the leukemia/ folder
    with pytest.raises(SystemExit):
        main(["explain", str(tiny_model), str(smears), "--out", str(out), "--class", "blast"])


def test_data_tfds_prints_folder_and_loading_line(tmp_path, capsys):
    import tensorflow_datasets as tfds

    from leukdx.data.synth import synthesize_collection

    root = synthesize_collection(tmp_path / "coll", sources=2, per_class=2, seed=0,
                                 image_size=32)
    assert main(["data", "tfds", str(root), "--data-dir", str(tmp_path / "tfds"),
                 "--name", "demo"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    folder = (tmp_path / "tfds" / "leukdx_collection" / "demo" / "1.0.0").absolute()
    assert lines[0] == f"TFDS dataset written to {folder}"
    assert lines[1] == "splits: source_1 (4 images), source_2 (4 images)"
    assert lines[2] == f'load it with: tfds.builder_from_directory("{folder}")'
    assert tfds.builder_from_directory(str(folder)).info.splits["source_2"].num_examples == 4
