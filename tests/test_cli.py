"""The leukdx command line, end to end on a tiny synthetic collection.

One collection drawn by ``leukdx data synth`` (2 sources x 2 classes x 6 images, 32 px) and one
1-epoch run (VGG16 + mDFT head of 8 units at 32 px, random weights) serve the whole module;
every sub-command runs on them through :func:`leukdx.cli.main`, exactly as from a shell.

Expected errors must come out as one line ``leukdx: error: ...`` with exit status 2, found
before anything is written (the output folders stay absent); ``-v`` anywhere adds the
traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from leukdx.cli import main

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
PER_CLASS = 6


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _one_line_error(capsys) -> str:
    """stderr of the last command, checked to be exactly one ``leukdx: error:`` line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("leukdx: error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def collection(workdir) -> Path:
    out = workdir / "synth"
    assert main(["data", "synth", str(out), "--sources", "2", "--per-class", str(PER_CLASS),
                 "--image-size", str(SIZE), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def config_file(workdir, collection) -> Path:
    config = {
        "name": "cli",
        "seed": 3,
        "data": {"root": str(collection), "image_size": SIZE,
                 "cache_dir": str(workdir / "cache")},
        "augment": {"preset": "none"},
        "model": {"backbone": "vgg16", "strategy": "mdft", "weights": "none",
                  "head": {"units": [8], "dropout": [0.0]}},
        "train": {"epochs": 1, "batch_size": 8, "optimizer": "adam", "learning_rate": 1e-3,
                  "validation_split": 0.25, "tensorboard": False, "verbose": 0},
        "evaluate": {"protocol": "lodo", "runs": 1, "plots": False},
        "features": {"classifiers": ["lda", "knn1"], "tsne": False,
                     "cache_dir": str(workdir / "features-cache")},
    }
    path = workdir / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def run_dir(workdir, config_file) -> Path:
    out = workdir / "run"
    assert main(["train", "-c", str(config_file), "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------- data commands


def test_synth_refuses_a_full_folder_in_one_line_and_overwrite_redraws_it(collection, capsys):
    before = _hashes(collection)
    assert len([p for p in before if p.endswith((".png", ".jpg", ".tif", ".bmp"))]) == 24
    argv = ["data", "synth", str(collection), "--sources", "2", "--per-class", str(PER_CLASS),
            "--image-size", str(SIZE), "--seed", "0"]
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert "not empty" in line and "--overwrite" in line
    assert _hashes(collection) == before
    # --overwrite exists and draws the same files again (what makes `make demo` re-runnable)
    assert main([*argv, "--overwrite"]) == 0
    assert _hashes(collection) == before


def test_make_demo_draws_its_collection_with_overwrite():
    makefile = (REPO / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "leukdx data synth demo_data" in demo and "--overwrite" in demo


def test_inspect_lists_each_source_as_csv(collection, workdir, capsys):
    capsys.readouterr()
    assert main(["data", "inspect", str(collection), "--format", "csv",
                 "--set", f"data.cache_dir={workdir / 'cache'}"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table["source"]) == ["source_1", "source_2"]
    assert list(table["n_healthy"]) == [PER_CLASS] * 2
    assert list(table["n_leukemia"]) == [PER_CLASS] * 2


def test_augment_writes_grouped_copies(collection, workdir, capsys):
    out = workdir / "augmented"
    assert main(["data", "augment", str(out), "--root", str(collection), "--preset", "loey",
                 "--factor", "2", "--set", f"data.cache_dir={workdir / 'cache'}"]) == 0
    manifests = list(out.rglob("manifest.csv"))
    assert manifests, list(out.rglob("*"))[:10]
    rows = pd.concat([pd.read_csv(m) for m in manifests])
    assert len(rows) == 2 * 24  # each original plus one augmented copy
    assert {"path", "label", "group"} <= set(rows.columns)
    assert rows.groupby("group").size().eq(2).all()  # a copy shares its original's group


def test_tfds_builds_one_split_per_source(collection, workdir, capsys):
    data_dir = workdir / "tfds"
    assert main(["data", "tfds", str(collection), "--data-dir", str(data_dir),
                 "--name", "cli"]) == 0
    (info_file,) = data_dir.rglob("dataset_info.json")
    splits = json.loads(info_file.read_text())["splits"]
    sizes = {split["name"]: sum(int(n) for n in split["shardLengths"]) for split in splits}
    assert sizes == {"source_1": 2 * PER_CLASS, "source_2": 2 * PER_CLASS}


# --------------------------------------------------------------------------- train and use


@pytest.mark.slow
def test_train_writes_a_finished_run_with_its_device_settings(run_dir):
    from leukdx.precision import gpu_available, resolve_precision

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["epochs_completed"] == 1
    assert (run_dir / "model.keras").is_file() and (run_dir / "config.yaml").is_file()
    assert info["precision"] == resolve_precision("auto")
    if not gpu_available():
        assert info["jit_compile"] is False  # XLA stays off on a CPU-only machine
    assert not (run_dir / "backup").exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(run_dir, config_file):
    before = _hashes(run_dir)
    assert main(["train", "-c", str(config_file), "--out", str(run_dir)]) == 0
    assert _hashes(run_dir) == before


@pytest.mark.slow
def test_more_epochs_on_a_finished_run_are_refused_and_the_model_kept(run_dir, config_file,
                                                                       capsys):
    before = _hashes(run_dir)
    capsys.readouterr()
    assert main(["train", "-c", str(config_file), "--out", str(run_dir),
                 "--set", "train.epochs=2"]) == 2
    line = _one_line_error(capsys)
    assert "finished 1 epochs" in line and "train.epochs is now 2" in line and "--force" in line
    assert _hashes(run_dir) == before


@pytest.mark.slow
def test_another_config_in_the_run_folder_is_refused(run_dir, config_file, capsys):
    before = _hashes(run_dir)
    capsys.readouterr()
    assert main(["train", "-c", str(config_file), "--out", str(run_dir),
                 "--set", "train.learning_rate=0.5"]) == 2
    line = _one_line_error(capsys)
    assert "train.learning_rate" in line and "--force" in line and "force=True" not in line
    assert _hashes(run_dir) == before


@pytest.mark.slow
def test_predict_writes_a_probability_per_image(run_dir, collection, workdir, capsys):
    out = workdir / "predictions.csv"
    assert main(["predict", str(run_dir), str(collection / "source_1"), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 2 * PER_CLASS
    assert table["probability"].between(0, 1).all()
    assert set(table["label"]) <= {"healthy", "leukaemia", 0, 1}


@pytest.mark.slow
def test_export_keras_copy_predicts_like_the_run(run_dir, collection, workdir):
    from leukdx.data.decode import load_image
    from leukdx.train import load_model

    out = workdir / "export"
    assert main(["export", str(run_dir), "--format", "keras", "--out", str(out),
                 "--no-quantize"]) == 0
    assert (out / "model_card.json").is_file()
    images = np.stack([load_image(p, SIZE) for p in sorted(collection.rglob("*.png"))[:4]])
    want = load_model(run_dir).predict(images.astype("float32"), verbose=0)
    got = load_model(out / "model.keras").predict(images.astype("float32"), verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_explain_writes_one_heat_map_per_image(run_dir, collection, workdir, capsys):
    from PIL import Image

    images = sorted((collection / "source_2").rglob("*.*"))[:2]
    out = workdir / "explain"
    capsys.readouterr()
    assert main(["explain", str(run_dir), *map(str, images), "--out", str(out)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert len(written) == 2 and all(p.parent == out for p in written)
    for path in written:
        with Image.open(path) as png:
            assert png.format == "PNG" and min(png.size) >= SIZE


@pytest.mark.slow
def test_evaluate_lodo_then_features_and_compare(config_file, workdir, capsys):
    results = workdir / "results"
    # one LODO fold (source_1 held out, trained on source_2) keeps this quick
    assert main(["evaluate", "-c", str(config_file), "--out", str(results),
                 "--set", "evaluate.test_sources=[source_1]"]) == 0
    folds = pd.read_csv(results / "folds.csv")
    assert list(folds["test_source"]) == ["source_1"]
    assert folds["mcc"].between(-1, 1).all()
    assert folds["n_test"].tolist() == [2 * PER_CLASS]

    features = workdir / "features"
    assert main(["features", "-c", str(config_file), "--out", str(features),
                 "--set", "evaluate.protocol=kfold", "--set", "evaluate.k=2"]) == 0
    ledger = pd.read_csv(features / "folds.csv")
    assert set(ledger["strategy"]) == {"features:lda", "features:knn1"}
    assert len(ledger) == 4  # 2 classifiers x 2 folds
    capsys.readouterr()
    assert main(["compare", str(features), str(features), "--metric", "accuracy",
                 "--where-a", "strategy=features:lda",
                 "--where-b", "strategy=features:knn1"]) == 0
    report = capsys.readouterr().out
    assert "accuracy" in report and "lda" in report and "knn1" in report


# --------------------------------------------------------------------------- errors


def _train_argv(config_file: Path, out: Path, *sets: str) -> list[str]:
    argv = ["train", "-c", str(config_file), "--out", str(out)]
    for text in sets:
        argv += ["--set", text]
    return argv


def test_unknown_backbone_is_found_before_any_image_is_read(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    # data.root does not exist: the backbone must be reported, not the missing data
    code = main(_train_argv(config_file, out, "model.backbone=vgg61",
                            f"data.root={tmp_path / 'nowhere'}"))
    line = _one_line_error(capsys)
    assert code == 2 and "vgg61" in line and "vgg16" in line
    assert not out.exists()


def test_unknown_backbone_in_an_evaluation_grid_is_found_first(config_file, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["evaluate", "-c", str(config_file), "--out", str(out),
                 "--set", f"data.root={tmp_path / 'nowhere'}",
                 "--set", "evaluate.grid={model.backbone: [vgg16, resnet5]}"])
    line = _one_line_error(capsys)
    assert code == 2 and "resnet5" in line
    assert not out.exists()


def test_too_small_image_for_the_backbone_is_found_first(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(_train_argv(config_file, out, "model.backbone=inception_v3",
                            f"data.root={tmp_path / 'nowhere'}"))
    line = _one_line_error(capsys)
    assert code == 2 and "data.image_size=32" in line and "75" in line
    assert not out.exists()


def test_imagenet_weights_offline_are_one_line(config_file, tmp_path, monkeypatch, capsys):
    from leukdx.models import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights, "network_available", lambda *a, **k: False)
    out = tmp_path / "run"
    code = main(_train_argv(config_file, out, "model.weights=imagenet"))
    line = _one_line_error(capsys)
    assert code == 2
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in line
    assert "model.weights: none" in line
    assert not out.exists()


def test_corrupt_weights_file_is_called_corrupt(config_file, tmp_path, capsys):
    bad = tmp_path / "vgg16.weights.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # HDF5 signature, then nothing
    out = tmp_path / "run"
    code = main(_train_argv(config_file, out, f"model.weights={bad}"))
    line = _one_line_error(capsys)
    assert code == 2 and str(bad) in line and "corrupt" in line
    assert "does not fit" not in line
    assert not out.exists()


def test_bad_image_stops_training_before_the_run_folder_exists(collection, config_file,
                                                                tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(collection, data)
    (data / "source_1" / "healthy" / "broken.png").write_text("not an image")
    out = tmp_path / "run"
    code = main(_train_argv(config_file, out, f"data.root={data}",
                            f"data.cache_dir={tmp_path / 'cache'}"))
    line = _one_line_error(capsys)
    assert code == 2 and "broken.png" in line
    assert not out.exists()


def test_garbage_keras_file_is_not_called_missing(tmp_path, collection, capsys):
    model = tmp_path / "model.keras"
    model.write_bytes(b"this is no zip archive" * 8)
    code = main(["predict", str(model), str(collection / "source_1"),
                 "--out", str(tmp_path / "p.csv")])
    line = _one_line_error(capsys)
    assert code == 2 and "not a Keras .keras file" in line and "not found" not in line.lower()
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_keras_file_naming_an_arbitrary_callable_is_refused(run_dir, tmp_path, collection,
                                                            capsys):
    with zipfile.ZipFile(run_dir / "model.keras") as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    output = next(layer for layer in config["config"]["layers"]
                  if layer["config"].get("activation") == "sigmoid")
    output["config"]["activation"] = {"module": "os", "class_name": "function",
                                      "config": "system", "registered_name": "function"}
    files["config.json"] = json.dumps(config).encode()
    tampered = tmp_path / "model.keras"
    with zipfile.ZipFile(tampered, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    code = main(["predict", str(tampered), str(collection / "source_1"),
                 "--out", str(tmp_path / "p.csv")])
    line = _one_line_error(capsys)
    assert code == 2 and str(tampered) in line and "leukdx" in line
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_verbose_anywhere_adds_the_traceback(config_file, tmp_path, capsys, position):
    argv = _train_argv(config_file, tmp_path / "run", "model.backbone=vgg61")
    index = {"first": 0, "middle": 3, "last": len(argv)}[position]
    argv.insert(index, "-v")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UnknownBackboneError" in err
    assert err.strip().splitlines()[-1].startswith("leukdx: error: Unknown model.backbone")


def test_config_error_is_reported_with_exit_code_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  epocs: 3\n")
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_line_error(capsys)
    assert "train.epocs" in line and "Did you mean 'epochs'" in line
    assert not (tmp_path / "run").exists()


def test_empty_source_is_reported_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "coll" / "src" / "healthy").mkdir(parents=True)
    (tmp_path / "coll" / "src" / "leukemia").mkdir(parents=True)
    code = main(["data", "inspect", str(tmp_path / "coll"),
                 "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    line = _one_line_error(capsys)
    assert code == 2 and "src" in line


def test_a_bug_keeps_its_traceback(monkeypatch):
    import leukdx.cli as cli

    def broken(args):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(cli, "cmd_backbones", broken)
    with pytest.raises(KeyError):
        main(["backbones"])


def test_backbones_lists_the_registry(capsys):
    from leukdx.models import list_backbones

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in list_backbones():
        assert name in out
    for strategy in ("sft", "dft", "msft", "mdft"):
        assert strategy in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "leukdx" in capsys.readouterr().out
