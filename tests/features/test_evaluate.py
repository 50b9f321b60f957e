"""Tests of leukdx.features.evaluate: classifiers through the evaluation runner, reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits

from leukdx.config import ConfigError, load_config, replace
from leukdx.evaluation.ledger import FOLD_COLUMNS
from leukdx.evaluation.runner import ResultsFolderError
from leukdx.features import evaluate as feature_evaluate
from leukdx.features import extract
from leukdx.features.evaluate import (
    FeatureTrainer,
    run_feature_evaluation,
)
from leukdx.features.extract import FeatureSet, FeatureSource

REPO = Path(__file__).resolve().parents[2]
TABLE1_ROWS = ["DT", "LD", "SVM-Linear", "SVM-Gaussian", "SVM-Cubic", "K-NN"]
LOEY_STRATEGIES = ["features:" + n for n in
                   ("tree", "lda", "svm_linear", "svm_rbf", "svm_cubic", "knn1")]


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _table_rows(markdown: str) -> list[str]:
    """First cells of the body rows of a Markdown table (block headers excluded)."""
    cells = [line.split("|")[1].strip() for line in markdown.splitlines()
             if line.startswith("| ") and not line.startswith("| **")]
    return [c for c in cells if c not in ("Approach",)]


def _label_features(monkeypatch) -> None:
    """Replace the network by features that encode each image's label (no TensorFlow)."""

    def fake(cfg, records, *, image_cache=None, cache_dir=None):
        labels = records["label"].to_numpy().astype(np.float32)
        noise = np.random.default_rng(0).normal(scale=0.05, size=(len(records), 3))
        features = np.c_[labels, 1 - labels, noise].astype(np.float32)
        layer = "pool" if cfg.features.layer == "auto" else cfg.features.layer
        source = FeatureSource(kind="backbone", name="toy", backbone="toy", layer=layer,
                               image_size=cfg.data.image_size, aspect=cfg.data.aspect)
        return FeatureSet(features, layer, source, "k", Path("unused.npz"))

    monkeypatch.setattr(feature_evaluate, "extract_features", fake)


def _tiny_config(tiny_collection: Path, tmp_path: Path, **overrides):
    settings = {
        "task": "features", "data.root": str(tiny_collection), "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "scan"), "features.cache_dir": str(tmp_path / "f"),
        "features.tsne": False, "evaluate.plots": False,
        "features.classifiers": ["knn1", "logreg"], "evaluate.protocol": "lodo",
    }
    settings.update(overrides)
    return replace(load_config(None), settings)


def test_classifier_rows_use_the_runner_and_map_test_images_to_their_features(
    tiny_collection, tmp_path, monkeypatch
):
    _label_features(monkeypatch)
    cfg = _tiny_config(tiny_collection, tmp_path)
    out = tmp_path / "out"
    folds = run_feature_evaluation(cfg, out, progress=False)

    assert _header(out / "folds.csv")[: len(FOLD_COLUMNS)] == list(FOLD_COLUMNS)
    assert folds["strategy"].unique().tolist() == ["features:knn1", "features:logreg"]
    assert set(folds["head"]) == {"pool"} and set(folds["backbone"]) == {"toy"}
    assert sorted(folds["test_source"].unique()) == ["src_a", "src_b", "src_c"]
    assert (folds["protocol"] == "lodo").all() and len(folds) == 6
    # the features are the labels: any mix-up of test images and feature rows would show
    assert (folds["accuracy"] == 1.0).all()
    assert (folds["n_test"] == 12).all() and (folds["n_train"] == 24).all()
    assert ((folds["tp"] + folds["tn"] + folds["fp"] + folds["fn"]) == folds["n_test"]).all()
    assert (folds["train_seconds"] >= 0).all()

    summary = (out / "summary.md").read_text()
    assert _table_rows(summary) == ["K-NN", "LogReg"] * 3  # one block per test source
    table10 = pd.read_csv(out / "feature_space.csv")
    assert table10["test_source"].tolist() == ["src_a", "src_b", "src_c"]
    assert (table10["lodo_accuracy"] == 1.0).all()
    confound = json.loads((out / "source_confound.json").read_text())["reports"][0]
    assert confound["class_accuracy"] == pytest.approx(1.0)
    assert confound["features"] == "toy:pool"


def test_a_grid_of_feature_sets_gives_table10_rows_per_approach(
    tiny_collection, tmp_path, monkeypatch
):
    _label_features(monkeypatch)
    cfg = _tiny_config(tiny_collection, tmp_path, **{
        "features.classifiers": ["knn1"], "evaluate.grid": {"features.layer": ["pool", "fc"]},
    })
    out = tmp_path / "out"
    folds = run_feature_evaluation(cfg, out, progress=False)
    assert sorted(folds["head"].unique()) == ["fc", "pool"] and len(folds) == 6
    table10 = pd.read_csv(out / "feature_space.csv")
    assert table10["features"].tolist() == ["toy:pool"] * 3 + ["toy:fc"] * 3
    markdown = (out / "feature_space.md").read_text()
    assert _table_rows(markdown.split("\n\n", 2)[2]) == ["toy:pool", "toy:fc"] * 3


def test_features_folders_refuse_another_configuration_and_extend_by_classifier(
    tiny_collection, tmp_path, monkeypatch
):
    _label_features(monkeypatch)
    out = tmp_path / "out"
    first = run_feature_evaluation(
        _tiny_config(tiny_collection, tmp_path, **{"features.classifiers": ["knn1"]}), out,
        progress=False)
    assert len(first) == 3 and (out / "config.yaml").is_file()
    before = (out / "folds.csv").read_bytes()
    bigger = _tiny_config(tiny_collection, tmp_path, **{"data.image_size": 48})
    with pytest.raises(ResultsFolderError, match=r"\(data.image_size differ\)"):
        run_feature_evaluation(bigger, out, progress=False)
    assert (out / "folds.csv").read_bytes() == before
    # another classifier is another configuration of the same folder: only it is fitted
    fitted = []
    real_fit = FeatureTrainer.fit_predict

    def counting(self, cfg, *args, **kwargs):
        fitted.append(cfg.features.classifiers[0])
        return real_fit(self, cfg, *args, **kwargs)

    monkeypatch.setattr(FeatureTrainer, "fit_predict", counting)
    both = run_feature_evaluation(_tiny_config(tiny_collection, tmp_path), out, progress=False)
    assert fitted == ["logreg"] * 3 and len(both) == 6
    forced = run_feature_evaluation(bigger, out, progress=False, force=True)
    assert len(forced) == 6 and set(forced["config_hash"]).isdisjoint(set(both["config_hash"]))
    assert len(list(out.glob("folds.*.csv"))) == 1


def test_only_the_analysis_runs_without_classifiers(tiny_collection, tmp_path, monkeypatch):
    _label_features(monkeypatch)
    cfg = _tiny_config(tiny_collection, tmp_path, **{"features.classifiers": []})
    folds = run_feature_evaluation(cfg, tmp_path / "out", progress=False)
    assert folds.empty and list(folds.columns) == list(FOLD_COLUMNS)
    assert not (tmp_path / "out" / "folds.csv").exists()
    assert (tmp_path / "out" / "feature_space.md").is_file()


def test_bad_classifier_settings_are_config_errors(tiny_collection, tmp_path, monkeypatch):
    _label_features(monkeypatch)
    cfg = _tiny_config(tiny_collection, tmp_path, **{"features.classifiers": ["svm_quartic"]})
    with pytest.raises(ConfigError, match="svm_quartic"):
        run_feature_evaluation(cfg, tmp_path / "out", progress=False)
    two = _tiny_config(tiny_collection, tmp_path)
    with pytest.raises(ConfigError, match="one classifier per configuration"):
        FeatureTrainer().key_fields(two)


def test_classifier_grid_entries_are_keyed_not_folded_into_the_experiment_label():
    from leukdx.config import config_from_dict
    from leukdx.evaluation.runner import expand_grid, experiment_label

    cfg = config_from_dict({"name": "loey", "task": "features", "evaluate": {"grid": {
        "features.classifiers": [["tree"], ["knn1"]], "train.learning_rate": [0.1]}}})
    labels = {experiment_label(point) for point in expand_grid(cfg)}
    # the classifier has its own column (strategy); other grid keys stay in the label
    assert labels == {"loey [train.learning_rate=0.1]"}


def test_loey_preset_is_table1_setting():
    cfg = load_config(REPO / "configs" / "loey_features.yaml")
    assert cfg.task == "features" and cfg.model.backbone == "alexnet"
    assert cfg.model.weights == "none" and cfg.data.image_size == 227
    assert cfg.data.root == "../shared/data" and cfg.features.layer == "auto"
    assert cfg.features.classifiers == [s.split(":")[1] for s in LOEY_STRATEGIES]
    assert (cfg.evaluate.protocol, cfg.evaluate.k, cfg.evaluate.repeats) == ("kfold", 10, 1)
    space = load_config(REPO / "configs" / "feature_space.yaml")
    assert space.task == "features" and space.features.classifiers == []
    assert (space.features.pca_components, space.features.pca_above) == (100, 256)
    assert space.evaluate.k == 5 and space.model.backbone == "vgg16"


@pytest.mark.real_data
def test_small_real_loey_run_gives_table1_and_tsne_then_resumes(
    shared_data, tmp_path, monkeypatch
):
    cfg = load_config(REPO / "configs" / "loey_features.yaml", [
        f"data.root={shared_data}", "data.max_per_class=5", "data.image_size=67",
        f"data.cache_dir={tmp_path / 'scan'}", f"features.cache_dir={tmp_path / 'features'}",
        "evaluate.plots=false",
        "evaluate.k=3",  # the preset's 10 folds are checked above; 3 keep this test short
    ])
    out = tmp_path / "loey"
    # Single-threaded BLAS: this checks plumbing, and on a shared 2-core machine two BLAS
    # threads per process oversubscribe the cores and make small SVDs 30x slower.
    with threadpool_limits(limits=1):
        folds = run_feature_evaluation(cfg, out, progress=False)

    n_images = 35 + 15  # 7 sources x 5 healthy, 3 two-class sources x 5 leukaemia
    assert _header(out / "folds.csv")[: len(FOLD_COLUMNS)] == list(FOLD_COLUMNS)
    assert folds["strategy"].unique().tolist() == LOEY_STRATEGIES
    for _, rows in folds.groupby("strategy"):
        assert sorted(rows["fold"]) == list(range(3))
    assert set(folds["head"]) == {"fc7"} and set(folds["backbone"]) == {"alexnet"}
    assert set(folds["protocol"]) == {"kfold"}
    assert ((folds["n_train"] + folds["n_test"]) == n_images).all()
    assert folds["accuracy"].between(0, 1).all()

    summary = (out / "summary.md").read_text()
    assert _table_rows(summary) == TABLE1_ROWS
    assert "| Approach | P (%) | R (%) | A (%) | S (%) |" in summary

    table10 = pd.read_csv(out / "feature_space.csv")
    assert table10["test_source"].tolist() == ["all_idb1", "all_idb2", "taleqani_all"]
    assert (table10["features"] == "alexnet:fc7").all()
    report = json.loads((out / "source_confound.json").read_text())["reports"][0]
    assert report["n_sources"] == 7 and report["n_images"] == n_images

    tsne = out / "plots" / "tsne__alexnet_fc7__pooled.png"
    with Image.open(tsne) as im:
        im.verify()
    with Image.open(tsne) as im:
        assert im.format == "PNG"
        width, height = im.size
    assert 600 < width < 1200 and 300 < height < 600
    assert (out / "plots" / "tsne__alexnet_fc7__all_idb2.png").is_file()

    # Re-running resumes: no network is built (feature cache) and no fold is refitted (ledger).
    def forbidden(*args, **kwargs):
        raise AssertionError("the second run must not build a network or refit a fold")

    monkeypatch.setattr(extract, "build_extractor", forbidden)
    monkeypatch.setattr(FeatureTrainer, "fit_predict", forbidden)
    with threadpool_limits(limits=1):
        again = run_feature_evaluation(replace(cfg, {"features.tsne": False}), out,
                                       progress=False)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), folds.reset_index(drop=True))


def test_a_fold_whose_test_source_the_extractor_saw_is_refused(tmp_path):
    import json

    import pandas as pd

    from leukdx.config import config_from_dict
    from leukdx.errors import LeakageError
    from leukdx.features.evaluate import check_extractor_for_fold

    run = tmp_path / "runs" / "mdft"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": {"sources": ["all_idb1", "bccd"]}}))
    cfg = config_from_dict({"task": "features", "features": {"model": str(run)},
                            "evaluate": {"linked_sources": [["all_idb1", "all_idb2"]]}})
    for test_source in ("all_idb1", "all_idb2"):  # trained on it, or on a linked source
        with pytest.raises(LeakageError, match=f"'{test_source}'.*one extractor per test source"):
            check_extractor_for_fold(cfg, pd.DataFrame({"source": [test_source]}))
    check_extractor_for_fold(cfg, pd.DataFrame({"source": ["taleqani_all"]}))  # never seen


def test_calibrated_feature_folds_set_the_threshold_on_a_withheld_healthy_source(
    tiny_collection, tmp_path, monkeypatch
):
    """``train.calibrate: unseen_source`` with classic classifiers: one healthy-only training
    source is kept out of the fit and the threshold is the 95 % quantile of its scores."""
    rng = np.random.default_rng(1)
    for name in ("only_healthy_1", "only_healthy_2"):
        folder = tiny_collection / name / "healthy"
        folder.mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"h{i}.png")

    def noisy_label_features(cfg, records, *, image_cache=None, cache_dir=None):
        labels = records["label"].to_numpy().astype(np.float32)
        noise = np.random.default_rng(0).normal(scale=0.8, size=(len(records), 2))
        source = FeatureSource(kind="backbone", name="toy", backbone="toy", layer="pool",
                               image_size=cfg.data.image_size, aspect=cfg.data.aspect)
        return FeatureSet(np.c_[labels + noise[:, 0], noise[:, 1]].astype(np.float32), "pool",
                          source, "k", Path("unused.npz"))

    monkeypatch.setattr(feature_evaluate, "extract_features", noisy_label_features)
    cfg = _tiny_config(tiny_collection, tmp_path, **{
        "features.classifiers": ["logreg"], "train.calibrate": "unseen_source",
        "evaluate.test_sources": ["src_a"]})
    trainer = FeatureTrainer()
    records = trainer.records(cfg)
    test = records[records["source"] == "src_a"]
    train = records[records["source"] != "src_a"]
    seen_fits = []
    original = feature_evaluate.build_classifier

    def recording(name, seed=0):
        classifier = original(name, seed)
        fit = classifier.fit
        classifier.fit = lambda X, y: (seen_fits.append(len(X)), fit(X, y))[1]
        return classifier

    monkeypatch.setattr(feature_evaluate, "build_classifier", recording)
    output = trainer.fit_predict(cfg, train, None, None, 3, test)
    withheld = output.extra_columns["calibration_source"]
    assert withheld in {"only_healthy_1", "only_healthy_2"}
    n_withheld = int((train["source"] == withheld).sum())
    assert seen_fits == [len(train) - n_withheld] and output.n_fit == len(train) - n_withheld
    # the threshold is the 95 % quantile of the withheld source's scores under the same model
    features = trainer.feature_set(cfg).features
    rows = records.index[records["source"] == withheld]
    model = original("logreg", 3).fit(
        features[train.index[train["source"] != withheld]],
        train.loc[train["source"] != withheld, "label"].to_numpy().astype(int))
    expected = np.quantile(model.predict_proba(features[rows])[:, 1], 0.95)
    assert output.extra_columns["threshold"] == pytest.approx(expected)
    assert 0.0 < output.extra_columns["threshold"] < 1.0

    plain = trainer.fit_predict(replace(cfg, {"train.calibrate": "none"}), train, None, None, 3,
                                test)
    assert "threshold" not in (plain.extra_columns or {}) and plain.n_fit == len(train)
