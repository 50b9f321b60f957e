"""Tests of leukdx.export: SavedModel signatures, TFLite, model card, resize agreement.

One small model (AlexNet + mDFT head at 67 px, random weights, which contains both of leukdx's
custom layers ``Preprocess`` and ``LocalResponseNormalization``) is exported once per module.
Its output layer is rescaled so that the probabilities spread over (0, 1) across images
(logit standard deviation 2): a random network's outputs otherwise all sit near 0.5 and any
difference would look small.

Tolerances, in probability (P(leukaemia)):

* ``EXACT_TOL = 1e-5``: same pixels through the same graph (SavedModel with images already at
  the model's size, float TFLite); only float round-off differs.
* ``QUANT_TOL = 0.1``: dynamic-range quantised TFLite (int8 weights).
* ``RESIZE_TOL = 0.02``: images of other sizes, resized inside the graph
  (``tf.image.resize`` bicubic + antialias) instead of by Pillow as in training. The two
  resizes differ by about 0.1-1 grey level on average (``RESIZE_PIXEL_TOL``); with a logit
  spread of 2 across images this moves probabilities by a few 1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from leukdx.config import (
    Config,
    DataConfig,
    HeadConfig,
    ModelConfig,
    TrainConfig,
    save_config,
)
from leukdx.data.decode import load_image, read_image, resize_image
from leukdx.runinfo import write_json_atomic

SIZE = 67  # AlexNet's smallest input
THRESHOLD = 0.4  # not 0.5, so the labels prove the run's threshold is used
EXACT_TOL = 1e-5
QUANT_TOL = 0.1
RESIZE_TOL = 0.02
RESIZE_PIXEL_TOL = 1.5  # mean absolute grey-level difference between the two resizes

# A server with TensorFlow and without leukdx: any attempt to import leukdx fails.
CLIENT = r"""
import importlib.abc, json, sys

class NoLeukdx(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "leukdx" or name.startswith("leukdx."):
            raise ImportError("leukdx is not installed on this server")
        return None

sys.meta_path.insert(0, NoLeukdx())
import numpy as np
import tensorflow as tf

saved_model, requests_path, out_path = sys.argv[1:4]
model = tf.saved_model.load(saved_model)
results = {}
for req in json.load(open(requests_path)):
    fn = model.signatures[req["signature"]]
    if "npy" in req:
        out = fn(images=tf.constant(np.load(req["npy"])))
    else:
        out = fn(image_bytes=tf.constant([open(p, "rb").read() for p in req["files"]]))
    results[req["name"]] = {k: v.numpy().tolist() for k, v in out.items()}
results["signatures"] = sorted(model.signatures)
results["leukdx_modules"] = [m for m in sys.modules if m == "leukdx" or m.startswith("leukdx.")]
json.dump(results, open(out_path, "w"))
"""


def smear(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth smear-like RGB image: tinted background, dark discs, mild noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    tint = rng.uniform(170, 245, 3)
    img = np.ones((height, width, 3)) * tint
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.08, 0.25) * min(height, width)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[mask] = img[mask] * 0.3 + rng.uniform(30, 150, 3) * 0.7
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def real_files(root: Path) -> dict[str, list[Path]]:
    """A few real images: ALL-IDB2 TIFF crops and Taleqani JPEG fields, both classes."""
    pick = {}
    for source, pattern in (("all_idb2", "*.tif"), ("taleqani_all", "*.jpg")):
        files = []
        for cls in ("healthy", "leukemia"):
            files += sorted((root / source / cls).glob(pattern))[:2]
        pick[source] = files
    return pick


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory) -> dict[str, Path]:
    """Image files in the formats a client sends: PNG, JPEG, BMP, grayscale PNG, odd sizes."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("images")
    files = {}
    for i in range(4):
        files[f"png{i}"] = folder / f"smear{i}.png"
        Image.fromarray(smear(rng, 90 + 10 * i, 120)).save(files[f"png{i}"])
    files["odd"] = folder / "odd.png"  # 301 wide, 187 high
    Image.fromarray(smear(rng, 187, 301)).save(files["odd"])
    files["gray"] = folder / "gray.png"
    Image.fromarray(smear(rng, 187, 301)[..., 1]).save(files["gray"])
    files["jpeg"] = folder / "smear.jpg"
    Image.fromarray(smear(rng, 240, 320)).save(files["jpeg"], quality=90)
    files["bmp"] = folder / "smear.bmp"
    Image.fromarray(smear(rng, 120, 120)).save(files["bmp"])
    files["tiff"] = folder / "smear.tif"
    Image.fromarray(smear(rng, 80, 80)).save(files["tiff"])
    return files


def make_run(folder: Path, calibration: np.ndarray) -> Path:
    """A minimal run folder (config.yaml, model.keras, run.json) with a spread-out output."""
    import keras

    from leukdx.models import build_model

    cfg = Config(
        name="export-test",
        data=DataConfig(root=str(folder / "no-data-here"), image_size=SIZE,
                        sources=["all_idb2", "taleqani_all"]),
        model=ModelConfig(backbone="alexnet", strategy="mdft", weights="none",
                          head=HeadConfig(units=[16])),
        train=TrainConfig(threshold=THRESHOLD),
    )
    keras.utils.set_random_seed(3)
    model = build_model(cfg.model, SIZE)
    features = keras.Model(model.inputs[0], model.layers[-1].input)(
        calibration.astype("float32")
    ).numpy()
    prediction = model.get_layer("prediction")
    kernel, _ = prediction.get_weights()
    logits = features @ kernel
    scale = 2.0 / float(logits.std())
    bias = -float(logits.mean()) * scale
    prediction.set_weights([kernel * scale, np.array([bias], "float32")])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    save_config(cfg, folder / "config.yaml")
    write_json_atomic(
        {
            "status": "finished",
            "data": {"sources": ["all_idb2", "taleqani_all"],
                     "n_train": {"healthy": 11, "leukemia": 13},
                     "n_val": {"healthy": 4, "leukemia": 4}},
            "best": {"epoch": 2, "monitor": "val_loss", "val_loss": 0.61,
                     "val_accuracy": 0.75, "val_auc": 0.8},
        },
        folder / "run.json",
    )
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synthetic_files, shared_data):
    """The run folder, its Keras model and export_run's result (all formats)."""
    from leukdx.export import export_run
    from leukdx.train import load_model

    calibration = [load_image(p, SIZE) for p in synthetic_files.values()]
    if shared_data.is_dir():
        calibration += [load_image(p, SIZE) for ps in real_files(shared_data).values() for p in ps]
    run = make_run(tmp_path_factory.mktemp("run") / "run", np.stack(calibration))
    check = [synthetic_files[k] for k in ("png0", "png1", "jpeg", "bmp", "odd", "tiff")]
    result = export_run(run, formats=("savedmodel", "tflite", "keras"), images=check)
    return run, load_model(run), result


def keras_probs(model, images: np.ndarray) -> np.ndarray:
    return model.predict(np.asarray(images, "float32"), verbose=0).reshape(-1)


def run_client(saved_model: Path, requests: list[dict], workdir: Path) -> dict:
    """Run the requests in a fresh Python that has TensorFlow but cannot import leukdx."""
    req_path, out_path = workdir / "requests.json", workdir / "results.json"
    req_path.write_text(json.dumps(requests))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, str(saved_model), str(req_path), str(out_path)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out_path.read_text())


def uint8_request(name: str, images: np.ndarray, workdir: Path) -> dict:
    path = workdir / f"{name}.npy"
    np.save(path, np.asarray(images, np.uint8))
    return {"name": name, "signature": "serving_default", "npy": str(path)}


@pytest.fixture(scope="module")
def client(exported, synthetic_files, shared_data, tmp_path_factory):
    """One TensorFlow-only client process answering every request of the tests below.

    Synthetic inputs always; real ALL-IDB2 TIFF crops and Taleqani JPEGs when the shared data
    is present. Returns ``(results, inputs)``.
    """
    run, _, _ = exported
    workdir = tmp_path_factory.mktemp("client")
    files = synthetic_files
    inputs = {
        "at_size": np.stack([load_image(files[f"png{i}"], SIZE) for i in range(4)]),
        "odd": read_image(files["odd"])[None],  # (1, 187, 301, 3)
        "gray3": np.repeat(np.asarray(Image.open(files["gray"]))[None, ..., None], 3, axis=-1),
        "byte_files": [files["png0"], files["jpeg"], files["bmp"], files["gray"], files["odd"]],
    }
    requests = [uint8_request(name, inputs[name], workdir) for name in ("at_size", "odd", "gray3")]
    requests.append({"name": "bytes", "signature": "serve_bytes",
                     "files": [str(p) for p in inputs["byte_files"]]})
    if shared_data.is_dir():
        real = real_files(shared_data)
        inputs["tiffs"], inputs["jpegs"] = real["all_idb2"], real["taleqani_all"]
        inputs["tiff_at_size"] = np.stack([load_image(p, SIZE) for p in inputs["tiffs"]])
        requests.append(uint8_request("tiff_at_size", inputs["tiff_at_size"], workdir))
        # TIFF is decoded by the client (Pillow) and sent as uint8 at its own size (257 px).
        for i, path in enumerate(inputs["tiffs"]):
            requests.append(uint8_request(f"tiff_{i}", read_image(path)[None], workdir))
        requests.append({"name": "jpeg_bytes", "signature": "serve_bytes",
                         "files": [str(p) for p in inputs["jpegs"]]})
    return run_client(run / "export" / "savedmodel", requests, workdir), inputs


def test_savedmodel_client_without_leukdx_matches_keras(exported, client):
    _, model, _ = exported
    out, inputs = client

    assert out["leukdx_modules"] == []
    assert out["signatures"] == ["serve_bytes", "serve_fixed", "serving_default"]
    # Same pixels: the graph equals the Keras model.
    want = keras_probs(model, inputs["at_size"])
    got = np.array(out["at_size"]["probability"])
    assert np.abs(got - want).max() <= EXACT_TOL
    assert out["at_size"]["label"] == (got >= THRESHOLD).astype(int).tolist()
    assert want.std() > 0.05  # the comparison is not between near-constant outputs
    # Odd size and grayscale: resized inside the graph, compared with leukdx's Pillow path.
    assert inputs["odd"].shape == (1, 187, 301, 3)
    byte_files = inputs["byte_files"]
    odd_file, gray_file = byte_files[4], byte_files[3]
    want_odd = keras_probs(model, load_image(odd_file, SIZE)[None])
    assert abs(out["odd"]["probability"][0] - want_odd[0]) <= RESIZE_TOL
    want_gray = keras_probs(model, load_image(gray_file, SIZE)[None])
    assert abs(out["gray3"]["probability"][0] - want_gray[0]) <= RESIZE_TOL
    # Encoded files of several formats and sizes, one batch.
    want_bytes = keras_probs(model, np.stack([load_image(p, SIZE) for p in byte_files]))
    got_bytes = np.array(out["bytes"]["probability"])
    assert np.abs(got_bytes - want_bytes).max() <= RESIZE_TOL
    assert out["bytes"]["label"] == (got_bytes >= THRESHOLD).astype(int).tolist()
    # A grayscale PNG decoded with 3 channels is the same input as 3 identical channels.
    assert got_bytes[3] == pytest.approx(out["gray3"]["probability"][0], abs=1e-6)
    assert got_bytes[4] == pytest.approx(out["odd"]["probability"][0], abs=1e-6)


@pytest.mark.real_data
def test_savedmodel_round_trip_on_real_images(exported, client, shared_data):
    _, model, _ = exported
    out, inputs = client
    assert shared_data.is_dir() and inputs["tiffs"] and inputs["jpegs"]

    assert out["leukdx_modules"] == []
    want = keras_probs(model, inputs["tiff_at_size"])
    assert np.abs(np.array(out["tiff_at_size"]["probability"]) - want).max() <= EXACT_TOL
    got_full = np.array([out[f"tiff_{i}"]["probability"][0] for i in range(len(inputs["tiffs"]))])
    assert np.abs(got_full - want).max() <= RESIZE_TOL
    want_jpeg = keras_probs(model, np.stack([load_image(p, SIZE) for p in inputs["jpegs"]]))
    assert np.abs(np.array(out["jpeg_bytes"]["probability"]) - want_jpeg).max() <= RESIZE_TOL


def test_tiff_bytes_are_rejected_by_serve_bytes(exported, synthetic_files):
    import tensorflow as tf

    run, _, _ = exported
    loaded = tf.saved_model.load(str(run / "export" / "savedmodel"))
    data = tf.constant([synthetic_files["tiff"].read_bytes()])
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?i)unknown image file format"):
        loaded.signatures["serve_bytes"](image_bytes=data)


def test_tflite_float_and_quantised_within_tolerance(exported, synthetic_files):
    from leukdx.export import load_tflite_interpreter, run_tflite

    run, model, _ = exported
    images = np.stack([load_image(p, SIZE) for p in synthetic_files.values()])
    want = keras_probs(model, images)
    export_dir = run / "export"
    for name, tol in (("model.tflite", EXACT_TOL), ("model_quant.tflite", QUANT_TOL)):
        interpreter = load_tflite_interpreter(export_dir / name)
        (spec,) = interpreter.get_signature_runner("serve_fixed").get_input_details().values()
        assert list(spec["shape"]) == [1, SIZE, SIZE, 3]
        assert spec["dtype"] == np.uint8
        got = run_tflite(interpreter, images)
        assert np.abs(got - want).max() <= tol, name
        # What a user sees must not change either: each image keeps the class Keras gives it
        # at the run's threshold (the images fall on both sides of it, so this can fail).
        assert (want >= THRESHOLD).any() and (want < THRESHOLD).any()
        np.testing.assert_array_equal(got >= THRESHOLD, want >= THRESHOLD, err_msg=name)
    quant, full = (export_dir / "model_quant.tflite").stat(), (export_dir / "model.tflite").stat()
    assert quant.st_size < 0.4 * full.st_size  # int8 weights


def test_export_result_card_and_checks(exported):
    from leukdx.predict import load_keras_model

    run, model, result = exported
    out = run / "export"  # the default folder
    assert result.out_dir == out
    names = {p.name for p in result}
    assert names == {"savedmodel", "model.tflite", "model_quant.tflite", "model.keras",
                     "config.yaml", "model_card.json", "model_card.md"}
    assert all(p.exists() for p in result)

    card = json.loads((out / "model_card.json").read_text())
    assert card["model"]["backbone"] == "alexnet" and card["model"]["strategy"] == "mdft"
    assert card["model"]["head"]["dense_units"] == [16]
    assert card["model"]["input"]["image_size"] == SIZE
    assert "caffe" in card["model"]["input"]["preprocessing"]
    assert card["model"]["output"]["threshold"] == THRESHOLD
    assert card["model"]["output"]["class_names"] == {"0": "healthy", "1": "leukaemia"}
    assert card["training"]["sources"] == ["all_idb2", "taleqani_all"]
    assert card["training"]["n_train"] == {"healthy": 11, "leukemia": 13}
    assert card["evaluation"]["validation"]["metrics"]["val_accuracy"] == 0.75
    assert "not a medical device" in card["intended_use"].lower()
    assert any("LODO" in text for text in card["limitations"])
    assert set(card["exports"]["savedmodel"]["signatures"]) == {
        "serving_default", "serve_bytes", "serve_fixed"}
    assert "tf.saved_model.load" in card["client_examples"]["python_savedmodel"]

    checks = {c["check"]: c for c in result.checks}
    assert checks == {c["check"]: c for c in card["export_checks"]["results"]}
    for name, tol in (("savedmodel_uint8_model_size", EXACT_TOL), ("tflite", EXACT_TOL),
                      ("tflite_quant", QUANT_TOL)):
        assert checks[name]["n_images"] == 6
        assert checks[name]["max_abs_diff"] <= tol and checks[name]["passed"] is True
        assert checks[name]["label_agreement"] == 1.0, name
    # 5 of the 6 check files are JPEG/PNG/BMP: the TIFF is not sent as bytes.
    assert checks["savedmodel_bytes"]["n_images"] == 5
    assert checks["savedmodel_bytes"]["max_abs_diff"] <= RESIZE_TOL
    assert checks["resize_pixels"]["mean_abs_diff"] <= RESIZE_PIXEL_TOL

    markdown = (out / "model_card.md").read_text()
    for text in ("alexnet", "serve_bytes", "Research use only", "model_quant.tflite",
                 f"{THRESHOLD}"):
        assert text in markdown
    # The copied .keras file is the run's model, loads in safe mode, and finds the run's
    # config (threshold) beside it.
    copied = load_keras_model(out / "model.keras")
    assert copied.threshold == THRESHOLD
    copy = copied.model
    x = np.full((1, SIZE, SIZE, 3), 120.0, "float32")
    assert keras_probs(copy, x) == pytest.approx(keras_probs(model, x), abs=1e-7)
    assert "ok" in result.summary()


def test_export_rejects_unknown_format(exported):
    from leukdx.export import export_run

    run, _, _ = exported
    with pytest.raises(ValueError, match="onnx.*savedmodel, tflite, keras"):
        export_run(run, formats=("onnx",))


def test_export_steps_show_on_a_progress_bar(exported, synthetic_files, tmp_path,
                                             monkeypatch):
    import tqdm.auto

    from leukdx.export import export_run

    bars = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            self.kwargs, self.updates, self.postfixes = kwargs, 0, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def set_postfix_str(self, text):
            self.postfixes.append(text)

        def update(self, n=1):
            self.updates += n

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    run, _, _ = exported
    export_run(run, formats=("keras",), out=tmp_path / "keras_only",
               images=[synthetic_files["png0"]], progress=True)
    (bar,) = bars
    assert bar.kwargs["desc"] == "export" and bar.kwargs["disable"] is None
    assert bar.kwargs["total"] == bar.updates == 3
    assert bar.postfixes == ["Keras reference", "model.keras", "model card"]


def test_evaluation_summary_goes_into_the_card(exported, tmp_path):
    import pandas as pd

    from leukdx.export import ServingSpec
    from leukdx.modelcard import build_model_card, render_markdown
    from leukdx.predict import load_keras_model

    run, _, _ = exported
    summary = pd.DataFrame(
        {"backbone": ["alexnet", "vgg16"], "strategy": ["mdft", "mdft"],
         "protocol": ["lodo", "lodo"], "test_source": ["all_idb2", "all_idb2"], "n": [5, 5],
         "accuracy_mean": [0.61, 0.9], "accuracy_std": [0.04, 0.01]}
    )
    (tmp_path / "summary.csv").write_text(summary.to_csv(index=False))
    card = build_model_card(load_keras_model(run), ServingSpec(SIZE, "stretch", THRESHOLD),
                            evaluation=tmp_path)
    rows = card["evaluation"]["cross_dataset"]["rows"]
    assert [r["accuracy_mean"] for r in rows] == [0.61]  # this model's configuration only
    assert "0.6100 ± 0.0400" in render_markdown(card)
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        build_model_card(load_keras_model(run), ServingSpec(SIZE), evaluation=tmp_path / "x")


@settings(max_examples=20, deadline=None)
@given(
    height=st.integers(20, 400),
    width=st.integers(20, 400),
    size=st.sampled_from([32, 67, 224]),
    aspect=st.sampled_from(["stretch", "pad"]),
    seed=st.integers(0, 2**16),
)
def test_graph_resize_matches_leukdx_resize(height, width, size, aspect, seed):
    import tensorflow as tf

    from leukdx.export import ServingSpec, resize_in_graph

    image = smear(np.random.default_rng(seed), height, width)
    want = resize_image(image, size, aspect).astype(np.float32)
    got = resize_in_graph(tf.constant(image[None], tf.float32), ServingSpec(size, aspect))[0]
    got = got.numpy()
    assert got.shape == (size, size, 3)
    assert got.min() >= 0 and got.max() <= 255 and np.array_equal(got, np.round(got))
    assert np.abs(got - want).mean() <= RESIZE_PIXEL_TOL
    if aspect == "pad":  # same padding geometry: the black border is where Pillow puts it
        assert np.array_equal(want.sum(-1) == 0, got.sum(-1) == 0)
    if (height, width) == (size, size):
        assert np.array_equal(got, image)


def test_mixed_precision_model_exports_in_float32(tmp_path):
    import keras

    from leukdx.export import (
        ServingSpec,
        as_float32,
        export_savedmodel,
        export_tflite,
        load_tflite_interpreter,
        run_tflite,
    )
    from leukdx.models import build_model

    keras.utils.set_random_seed(4)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_model(ModelConfig(backbone="alexnet", strategy="mdft", weights="none",
                                        head=HeadConfig(units=[4])), SIZE)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model = as_float32(mixed)
    assert model is not mixed and as_float32(model) is model
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    images = np.stack([smear(np.random.default_rng(i), SIZE, SIZE) for i in range(3)])
    want = keras_probs(model, images)
    assert np.abs(want - keras_probs(mixed, images)).max() < 0.02  # bfloat16 round-off only
    # TFLite has no bfloat16 kernels: converting the float32 clone works and matches it.
    saved = export_savedmodel(model, tmp_path / "sm", ServingSpec(SIZE))
    tflite = export_tflite(saved, tmp_path / "m.tflite")
    assert np.abs(run_tflite(load_tflite_interpreter(tflite), images) - want).max() <= EXACT_TOL


@pytest.mark.real_data
def test_check_images_default_to_the_runs_sources(shared_data, tmp_path):
    from leukdx.export import TF_DECODABLE, check_images
    from leukdx.predict import LoadedModel

    cfg = Config(data=DataConfig(root=str(shared_data), image_size=SIZE))
    write_json_atomic({"data": {"sources": ["all_idb2", "taleqani_all"]}}, tmp_path / "run.json")
    loaded = LoadedModel(model=None, config=cfg, run_dir=tmp_path)
    paths, description = check_images(loaded, None, n=8)

    assert len(paths) == 8 and len(set(paths)) == 8
    assert {p.relative_to(shared_data).parts[0] for p in paths} == {"all_idb2", "taleqani_all"}
    assert {p.parent.name for p in paths} == {"healthy", "leukemia"}  # spread over the sorted files
    # Half are files TensorFlow can decode, so the bytes signature is measured too.
    assert sum(p.suffix.lower() in TF_DECODABLE for p in paths) == 4
    assert str(shared_data) in description
    # Without a reachable data root there is nothing to check on, and the card says so.
    cfg.data.root = str(tmp_path / "missing")
    assert check_images(loaded, None, n=8)[0] == []


def test_cli_export_results_attaches_cross_dataset_results(tmp_path, synthetic_files, capsys):
    """`leukdx export RUN --results DIR` puts the LODO summary into the card; without it the
    card says that only validation metrics are known. Card files get ordinary permissions."""
    import pandas as pd

    from leukdx.cli import main

    calibration = np.stack([load_image(p, SIZE) for p in synthetic_files.values()])
    run = make_run(tmp_path / "run", calibration)
    results = tmp_path / "results" / "lodo_alexnet"
    results.mkdir(parents=True)
    pd.DataFrame(
        {"backbone": ["alexnet"] * 2, "strategy": ["mdft"] * 2, "protocol": ["lodo"] * 2,
         "test_source": ["all_idb2", "taleqani_all"], "n": [3, 3],
         "accuracy_mean": [0.61, 0.55], "accuracy_std": [0.04, 0.02],
         "mcc_mean": [0.2, 0.1], "mcc_std": [0.05, 0.03]}
    ).to_csv(results / "summary.csv", index=False)

    plain, attached = tmp_path / "plain", tmp_path / "attached"
    assert main(["export", str(run), "--format", "keras", "--out", str(plain)]) == 0
    assert "validation metrics only" in capsys.readouterr().out
    assert main(["export", str(run), "--format", "keras", "--out", str(attached),
                 "--results", str(results)]) == 0
    assert f"cross-dataset results from {results / 'summary.csv'}" in capsys.readouterr().out

    card = json.loads((attached / "model_card.json").read_text())
    cross = card["evaluation"]["cross_dataset"]
    assert cross["protocols"] == ["lodo"]
    assert [(r["test_source"], r["accuracy_mean"]) for r in cross["rows"]] == [
        ("all_idb2", 0.61), ("taleqani_all", 0.55)]
    markdown = (attached / "model_card.md").read_text()
    assert "Cross-dataset results (lodo)" in markdown and "0.6100 ± 0.0400" in markdown
    assert "epoch 2 (from 0, as in history.csv)" in markdown

    without = json.loads((plain / "model_card.json").read_text())["evaluation"]
    assert "cross_dataset" not in without
    assert "--results results/NAME" in without["note"]
    assert "No cross-dataset results" in (plain / "model_card.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model_card.json", "model_card.md"):
        assert (attached / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert main(["export", str(run), "--format", "keras", "--out", str(plain),
                 "--results", str(tmp_path / "nowhere")]) == 2
    assert "No summary.csv at" in capsys.readouterr().err
