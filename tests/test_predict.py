"""Tests of leukdx.predict: batch prediction over files and folders, model kinds, safe mode."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukdx.config import Config, DataConfig, HeadConfig, ModelConfig, TrainConfig, save_config
from leukdx.data.decode import load_image
from leukdx.runinfo import write_json_atomic

SIZE = 67  # AlexNet's smallest input: a small, quick model


def smear(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth smear-like RGB image (tinted background, dark discs)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.ones((height, width, 3)) * rng.uniform(170, 245, 3)
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (rng.uniform(0.1, 0.3) * min(height, width)) ** 2
        img[mask] = img[mask] * 0.3 + rng.uniform(30, 150, 3) * 0.7
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A minimal run folder: config.yaml (threshold 0.45), model.keras, run.json."""
    import keras

    from leukdx.models import build_model

    folder = tmp_path_factory.mktemp("run")
    cfg = Config(
        name="predict-test",
        data=DataConfig(image_size=SIZE),
        model=ModelConfig(backbone="alexnet", strategy="mdft", weights="none",
                          head=HeadConfig(units=[8])),
        train=TrainConfig(threshold=0.45),
    )
    keras.utils.set_random_seed(5)
    build_model(cfg.model, SIZE).save(folder / "model.keras")
    save_config(cfg, folder / "config.yaml")
    write_json_atomic({"status": "finished"}, folder / "run.json")
    return folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Good images (PNG, TIFF, JPEG, grayscale BMP), a truncated JPEG, a text file named
    .png, an empty PNG, a manifest and a hidden file."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("smears")
    (root / "sub").mkdir()
    Image.fromarray(smear(rng, 80, 100)).save(root / "a.png")
    Image.fromarray(smear(rng, 120, 90)).save(root / "b.tif")
    Image.fromarray(smear(rng, 200, 150)).save(root / "sub" / "c.jpg", quality=92)
    Image.fromarray(smear(rng, 64, 64)[..., 0]).save(root / "sub" / "d_gray.bmp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    (root / "sub" / "notes.png").write_text("a text file with an image extension")
    (root / "empty.png").write_bytes(b"")
    (root / "MANIFEST.csv").write_text("file,label\na.png,0\n")
    Image.fromarray(smear(rng, 50, 50)).save(root / ".hidden.png")
    return root


GOOD = ["a.png", "b.tif", "sub/c.jpg", "sub/d_gray.bmp"]


def keras_probs(run_dir: Path, root: Path, names: list[str]) -> np.ndarray:
    from leukdx.train import load_model

    model = load_model(run_dir)
    x = np.stack([load_image(root / n, SIZE) for n in names]).astype("float32")
    return model.predict(x, verbose=0).reshape(-1)


def test_folder_with_corrupt_files_keeps_good_rows(run_dir, image_folder, tmp_path):
    from leukdx.predict import predict_paths

    csv = tmp_path / "out" / "predictions.csv"
    result = predict_paths(run_dir, [image_folder], out=csv, batch_size=3, progress=False)

    assert result.csv_path == csv and csv.is_file()
    table = pd.read_csv(csv)
    assert list(table.columns) == ["path", "probability", "label"]
    rel = [str(Path(p).relative_to(image_folder)) for p in table["path"]]
    assert sorted(rel) == sorted(GOOD)
    assert result.n_predicted == 4
    pd.testing.assert_frame_equal(table, result.table, check_dtype=False)

    skipped = {Path(p).name: reason for p, reason in result.skipped}
    assert set(skipped) == {"broken.jpg", "notes.png", "empty.png"}
    assert "empty" in skipped["empty.png"]
    assert "truncated or corrupt" in skipped["broken.jpg"]
    assert "not a recognised image" in skipped["notes.png"]

    want = keras_probs(run_dir, image_folder, rel)
    assert np.abs(table["probability"].to_numpy() - want).max() <= 1e-6
    # The run's threshold (0.45), not 0.5, decides the label.
    assert table["label"].tolist() == (table["probability"] >= 0.45).astype(int).tolist()


def test_model_kinds_give_the_same_probabilities(run_dir, image_folder, tmp_path):
    import keras

    from leukdx.export import ServingSpec, export_savedmodel
    from leukdx.predict import load_keras_model, predict_paths

    files = [image_folder / n for n in GOOD]
    by_run = predict_paths(run_dir, files, out=None, progress=False)
    by_file = predict_paths(run_dir / "model.keras", files, out=None, progress=False)
    loaded = load_keras_model(run_dir)
    by_object = predict_paths(loaded.model, files, out=None, progress=False)
    export_dir = tmp_path / "export"
    export_savedmodel(loaded.model, export_dir / "savedmodel",
                      ServingSpec(SIZE, "stretch", loaded.threshold))
    by_export_folder = predict_paths(export_dir, files, out=None, progress=False)
    by_saved_model = predict_paths(export_dir / "savedmodel", files, out=None, progress=False)
    # A SavedModel leukdx did not write (no metadata, float32 input of fixed size).
    plain = tmp_path / "plain"
    loaded.model.export(str(plain), verbose=False)
    by_plain = predict_paths(plain, files, out=None, progress=False)

    want = by_run.table["probability"].to_numpy()
    assert by_run.table["path"].tolist() == [str(f) for f in files]
    assert np.abs(by_file.table["probability"].to_numpy() - want).max() <= 1e-6
    assert np.abs(by_object.table["probability"].to_numpy() - want).max() <= 1e-6
    for other in (by_export_folder, by_saved_model, by_plain):
        assert np.abs(other.table["probability"].to_numpy() - want).max() <= 1e-5
    # The SavedModel carries the run's threshold; a bare Keras object uses 0.5.
    assert by_saved_model.table["label"].tolist() == by_run.table["label"].tolist()
    assert by_object.table["label"].tolist() == (want >= 0.5).astype(int).tolist()
    assert isinstance(loaded.model, keras.Model)
    with pytest.raises(ValueError, match="SavedModel"):  # no Keras layers to load from it
        load_keras_model(export_dir / "savedmodel")


def test_threshold_argument_overrides_the_run(run_dir, image_folder):
    from leukdx.predict import predict_paths

    files = [image_folder / n for n in GOOD]
    base = predict_paths(run_dir, files, out=None, progress=False).table["probability"]
    cut = float(np.median(base))
    result = predict_paths(run_dir, files, out=None, threshold=cut, progress=False)
    assert result.table["label"].tolist() == (base >= cut).astype(int).tolist()
    assert 0 < result.table["label"].sum() < len(files)
    with pytest.raises(ValueError, match="threshold"):
        predict_paths(run_dir, files, out=None, threshold=1.5, progress=False)


def test_missing_path_is_an_error_naming_it(run_dir, tmp_path):
    from leukdx.predict import predict_paths

    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        predict_paths(run_dir, [tmp_path / "nowhere.png"], out=None, progress=False)
    with pytest.raises(FileNotFoundError, match="no-model"):
        predict_paths(tmp_path / "no-model", [tmp_path], out=None, progress=False)


def test_collect_image_paths_order_and_filters(image_folder):
    from leukdx.predict import collect_image_paths

    found = collect_image_paths([image_folder, image_folder / "a.png", image_folder / "MANIFEST.csv"])
    rel = [str(p.relative_to(image_folder)) for p in found]
    # Folder contents sorted; no hidden or non-image files from folders; duplicates once;
    # a file named explicitly is taken even if it is not an image (then reported as skipped).
    assert rel == sorted(["a.png", "b.tif", "broken.jpg", "empty.png", "sub/c.jpg",
                          "sub/d_gray.bmp", "sub/notes.png"]) + ["MANIFEST.csv"]


def test_safe_mode_refuses_a_lambda_layer(tmp_path, image_folder, monkeypatch):
    import keras

    from leukdx.predict import UnsafeModelError, load_keras_model, predict_paths

    # The lambda's code touches a marker file: if loading ran it, the marker would exist.
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("LEUKDX_TEST_MARKER", str(marker))
    inputs = keras.Input((SIZE, SIZE, 3))
    outputs = keras.layers.Lambda(
        lambda x: __import__("pathlib").Path(
            __import__("os").environ["LEUKDX_TEST_MARKER"]
        ).touch() or x[:, :1, :1, 0]
    )(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once

    with pytest.raises(UnsafeModelError, match="Lambda") as info:
        load_keras_model(path)
    assert "safe_mode" in str(info.value.__cause__)
    with pytest.raises(UnsafeModelError):
        predict_paths(path, [image_folder / "a.png"], out=None, progress=False)
    assert not marker.exists()


def test_prediction_makes_no_network_call(run_dir, image_folder, monkeypatch):
    from leukdx.predict import predict_paths

    def refuse(*args, **kwargs):
        raise AssertionError("leukdx tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = predict_paths(run_dir, [image_folder / "a.png"], out=None, progress=False)
    assert result.n_predicted == 1
