"""Same seed, same numbers: the augmented training stream and whole evaluations are
reproducible, whatever the tf.data thread count or batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukdx.data.augment import build_augmentation
from leukdx.data.pipeline import make_dataset
from leukdx.evaluation.runner import FoldOutput

SIZE = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([xx * 7, yy * 7, (xx + yy) * 3], axis=-1)
    return np.clip(base[None] + rng.integers(0, 40, (12, SIZE, SIZE, 3)), 0, 255).astype(
        np.uint8
    )


def _stream(ds) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in ds])


def _single_threaded(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


@pytest.mark.parametrize("preset", ["leuknet", "generalise"])
def test_augmented_stream_is_identical_whatever_the_thread_count(preset, images):
    aug = build_augmentation(preset, SIZE, seed=0)
    labels = np.zeros(len(images))
    parallel = make_dataset(images, labels, batch_size=4, training=True, seed=3,
                            augmentation=aug, expand=2)
    serial = _single_threaded(make_dataset(images, labels, batch_size=4, training=True,
                                           seed=3, augmentation=aug, expand=2))
    first = _stream(parallel)
    np.testing.assert_array_equal(_stream(serial), first)
    assert np.abs(first - np.concatenate([images, images])).mean() > 1.0  # it augments


def test_a_reused_augmentation_gives_the_same_stream_for_the_same_seed(images):
    # The augmentation object keeps no state that the stream depends on: a second dataset
    # (the next fold's, a resumed run's) with the same seed sees the same pixels.
    aug = build_augmentation("leuknet_stain", SIZE, seed=0)
    labels = np.zeros(len(images))
    a = _stream(make_dataset(images, labels, batch_size=5, training=True, seed=1,
                             augmentation=aug))
    b = _stream(make_dataset(images, labels, batch_size=5, training=True, seed=1,
                             augmentation=aug))
    np.testing.assert_array_equal(a, b)
    c = _stream(make_dataset(images, labels, batch_size=5, training=True, seed=2,
                             augmentation=aug))
    assert not np.array_equal(np.sort(a, axis=0), np.sort(c, axis=0))


def test_augmented_stream_does_not_depend_on_the_batch_size(images):
    aug = build_augmentation("generalise", SIZE, seed=0)
    labels = np.zeros(len(images))
    small = _stream(make_dataset(images, labels, batch_size=3, training=True, seed=4,
                                 augmentation=aug))
    large = _stream(make_dataset(images, labels, batch_size=12, training=True, seed=4,
                                 augmentation=aug))
    np.testing.assert_allclose(small, large, atol=1e-3)


def test_each_epoch_is_augmented_anew_and_reproducibly(images):
    aug = build_augmentation("leuknet", SIZE, seed=0)
    labels = np.arange(len(images), dtype=np.float32)

    def epochs(ds):
        out = []
        for _ in range(2):
            xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
            order = np.argsort(np.concatenate(ys))
            out.append(np.concatenate(xs)[order])  # by image, whatever the shuffle
        return out

    first = epochs(make_dataset(images, labels, batch_size=4, training=True, seed=9,
                                augmentation=aug))
    again = epochs(make_dataset(images, labels, batch_size=4, training=True, seed=9,
                                augmentation=aug))
    assert not np.allclose(first[0], first[1])  # epoch 2 draws new transforms
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


class TinyCNNTrainer:
    """Trains a tiny CNN on the fold's augmented ``make_dataset`` stream (fast on a CPU)."""

    def key_fields(self, cfg):
        return {"backbone": "tiny_cnn", "strategy": "scratch", "head": "gap"}

    def fit_predict(self, cfg, train_records, train_images, test_images, seed, test_records):
        import keras

        keras.utils.set_random_seed(int(seed))
        aug = build_augmentation(cfg.augment.preset, SIZE, seed=seed)
        train_ds = make_dataset(train_images, train_records["label"].to_numpy(), batch_size=8,
                                training=True, seed=seed, augmentation=aug)
        model = keras.Sequential([
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy")
        model.fit(train_ds, epochs=3, verbose=0)
        test_ds = make_dataset(test_images, None, batch_size=8)
        probabilities = model.predict(test_ds, verbose=0).reshape(-1)
        return FoldOutput(probabilities, 0.01, 0.1)


def _evaluation_config(root: Path, tmp_path: Path):
    from leukdx.config import config_from_dict

    return config_from_dict({
        "name": "determinism",
        "seed": 5,
        "data": {"root": str(root), "image_size": SIZE, "cache_dir": str(tmp_path / "cache")},
        "augment": {"preset": "generalise"},
        "evaluate": {"protocol": "kfold", "k": 2, "runs": 1, "plots": False},
    })


def test_two_identical_evaluations_give_identical_metrics_and_predictions(
    tiny_collection, tmp_path
):
    # Augmentation was the one source of run-to-run differences (with augment.preset none
    # two evaluations were already bitwise identical): train twice, compare everything.
    from leukdx.evaluation.runner import run_evaluation

    cfg = _evaluation_config(tiny_collection, tmp_path)
    first = run_evaluation(cfg, tmp_path / "first", progress=False, trainer=TinyCNNTrainer())
    second = run_evaluation(cfg, tmp_path / "second", progress=False, trainer=TinyCNNTrainer())
    metrics = [c for c in first.columns if c in (
        "accuracy", "precision", "recall", "specificity", "f1", "mcc", "roc_auc", "pr_auc",
        "tp", "tn", "fp", "fn", "brier", "log_loss")]
    assert "roc_auc" in metrics and "accuracy" in metrics
    pd.testing.assert_frame_equal(first[metrics], second[metrics])
    predictions = sorted((tmp_path / "first" / "predictions").glob("*.csv"))
    assert predictions
    for path in predictions:
        twin = tmp_path / "second" / path.relative_to(tmp_path / "first")
        pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(twin))
    probabilities = pd.concat(pd.read_csv(p) for p in predictions)["probability"]
    assert probabilities.std() > 1e-4  # the network learnt something image-dependent
