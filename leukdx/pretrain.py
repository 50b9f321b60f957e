"""Self-supervised pretraining of a backbone without labels (SimCLR, Chen et al. 2020).

No pretrained weights can be downloaded on an offline machine, and a backbone trained from
scratch on one group of sources transfers poorly to another. SimCLR learns a representation
from the images alone: each image yields two randomly augmented views, a projection head maps
the backbone's pooled features to a small vector, and the NT-Xent loss pulls the two views of
an image together and pushes the other ``2 (B - 1)`` views of the batch away. The backbone
(without the projection head) is then fine-tuned with labels through ``model.weights``.

Views (:func:`simclr_views`, stateless TensorFlow ops, one random draw per image): a random
square crop keeping ``pretrain.crop_scale``–100 % of the side, resized back; one of the eight
flips/rotations by 90 degrees; colour jitter (brightness, contrast, saturation and per-channel
gains, which imitates stain differences); grayscale with probability 0.2.

Outputs of :func:`pretrain_backbone` in its folder:

- ``backbone.weights.h5``: the convolutional base, as ``BackboneSpec.build(...).save_weights``
  writes it; ``model.weights: <folder>/backbone.weights.h5`` loads it for fine-tuning;
- ``pretrain.json``: backbone, norm, image size, preprocessing, the sha256 of every image it
  saw, the ``pretrain`` settings and the loss of every epoch. Building a model checks its
  backbone and norm against it.

Leave-one-dataset-out: :func:`pretrain_for_fold` pretrains on one fold's training images only
(never the test source) and caches the result under a key made of those images' hashes and
the settings, so every run and grid point of a fold reuses it.

Example:
    >>> from leukdx.config import load_config
    >>> from leukdx.pretrain import pretrain_from_config
    >>> cfg = load_config("configs/demo.yaml", ["model.backbone=small_cnn", "model.weights=none"])
    >>> result = pretrain_from_config(cfg, "weights/demo_simclr")
    >>> result.weights_path
    PosixPath('weights/demo_simclr/backbone.weights.h5')
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from leukdx.config import Config, ConfigError
from leukdx.models.weights import PRETRAIN_INFO

__all__ = [
    "PRETRAIN_INFO",
    "WEIGHTS_FILE",
    "PretrainResult",
    "fold_cache_key",
    "nt_xent_loss",
    "pretrain_backbone",
    "pretrain_for_fold",
    "pretrain_from_config",
    "simclr_views",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "backbone.weights.h5"
GRAYSCALE_PROBABILITY = 0.2


@dataclass
class PretrainResult:
    """What :func:`pretrain_backbone` wrote.

    Attributes:
        weights_path: the backbone's ``.weights.h5``.
        info_path: ``pretrain.json`` beside it.
        losses: mean NT-Xent loss of each epoch.
        seconds: wall-clock training time.
        cached: the weights came from the fold cache (nothing was trained).
    """

    weights_path: Path
    info_path: Path
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False


# --------------------------------------------------------------------------- views and loss


def _uniform(seed, shape, low=0.0, high=1.0):
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def simclr_views(images, seed, crop_scale: float = 0.5):
    """One randomly augmented view of each image of a batch (stateless: same seed, same view).

    Args:
        images: float32 ``(B, S, S, 3)`` in [0, 255].
        seed: a ``(2,)`` int32 tensor (``tf.random`` stateless seed).
        crop_scale: smallest fraction of the side a crop keeps.

    Returns:
        float32 ``(B, S, S, 3)`` in [0, 255].
    """
    import tensorflow as tf

    from leukdx.tta import dihedral_transform

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), num=8)
    batch = tf.shape(images)[0]
    size = tf.shape(images)[1]
    # Random square crop, resized back to the full size.
    side = _uniform(seeds[0], [batch], crop_scale, 1.0)
    top = _uniform(seeds[1], [batch]) * (1.0 - side)
    left = _uniform(seeds[2], [batch]) * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    x = tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.stack([size, size]))
    # One of the eight symmetries of the square per image.
    choice = tf.random.stateless_uniform([batch], seed=seeds[3], maxval=8, dtype=tf.int32)
    transformed = tf.stack([dihedral_transform(x, i) for i in range(8)], axis=0)
    x = tf.gather(tf.transpose(transformed, [1, 0, 2, 3, 4]), choice, batch_dims=1)
    # Colour: brightness, contrast, saturation and per-channel gains (stain-like shifts).
    x = x / 255.0
    brightness = _uniform(seeds[4], [batch, 1, 1, 1], -0.2, 0.2)
    jitter = _uniform(seeds[5], [batch, 1, 1, 5], 0.6, 1.4)
    contrast, saturation = jitter[..., 0:1], jitter[..., 1:2]
    gains = 1.0 + (jitter[..., 2:5] - 1.0) * 0.5
    gray = tf.reduce_mean(x, axis=-1, keepdims=True)
    x = gray + (x - gray) * saturation
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * contrast + mean + brightness
    x = x * gains
    to_gray = _uniform(seeds[6], [batch, 1, 1, 1]) < GRAYSCALE_PROBABILITY
    x = tf.where(to_gray, tf.reduce_mean(x, axis=-1, keepdims=True) * tf.ones_like(x), x)
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def nt_xent_loss(z1, z2, temperature: float):
    """SimCLR's normalised-temperature cross-entropy of two batches of projections.

    Args:
        z1: ``(B, D)`` projections of the first views.
        z2: ``(B, D)`` projections of the second views (row i is image i).
        temperature: softmax temperature.

    Returns:
        Scalar mean loss over the ``2B`` views.
    """
    import tensorflow as tf

    z = tf.math.l2_normalize(tf.concat([z1, z2], axis=0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits = logits - tf.eye(2 * n) * 1e9  # a view is not its own positive or negative
    positives = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=logits))


# --------------------------------------------------------------------------- training


def _encoder(cfg: Config, size: int):
    import keras

    from leukdx.models import get_backbone
    from leukdx.models.layers import Preprocess
    from leukdx.models.strategies import SCRATCH_BN_MOMENTUM

    spec = get_backbone(cfg.model.backbone)
    base = spec.build((size, size, 3), weights=cfg.model.weights, norm=cfg.model.norm)
    for layer in base.layers:
        # Moving statistics must settle within a short run (MobileNetV3's 0.999 would not).
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, SCRATCH_BN_MOMENTUM)
    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess_mode, name="preprocess")(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(cfg.pretrain.projection_units, activation="relu",
                           name="projection_1")(x)
    x = keras.layers.Dense(cfg.pretrain.projection_dim, name="projection_2")(x)
    return spec, base, keras.Model(inputs, x, name="simclr")


def pretrain_backbone(cfg: Config, images: np.ndarray, out: str | os.PathLike,
                      hashes: Sequence[str] | None = None, *, progress: bool = True
                      ) -> PretrainResult:
    """Train ``cfg.model``'s backbone with SimCLR on ``images`` and save it into ``out``.

    Args:
        cfg: the config (``model.backbone``, ``model.norm``, ``model.weights`` as the start,
            ``pretrain.*``, ``seed``).
        images: ``(N, S, S, 3)`` uint8, unlabelled (e.g. from ``ImageCache.get``).
        out: folder for ``backbone.weights.h5`` and ``pretrain.json`` (created; files in it
            are replaced).
        hashes: sha256 of each image, recorded in ``pretrain.json``.
        progress: log the loss of each epoch.

    Returns:
        A :class:`PretrainResult`.

    Raises:
        ConfigError: fewer than 2 images (a batch needs negatives).
    """
    import keras
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, S, S, 3) squares, got shape {images.shape}.")
    if len(images) < 2:
        raise ConfigError(
            f"SimCLR pretraining needs at least 2 images (each batch contrasts its images), got "
            f"{len(images)}; check data.sources / evaluate.train_sources."
        )
    pre = cfg.pretrain
    size = int(images.shape[1])
    batch_size = min(int(pre.batch_size), len(images))
    keras.utils.set_random_seed(int(cfg.seed))
    spec, base, encoder = _encoder(cfg, size)
    optimizer = keras.optimizers.Adam(float(pre.learning_rate))
    temperature = float(pre.temperature)

    @tf.function
    def step(batch, seed):
        seeds = tf.random.experimental.stateless_split(seed, num=2)
        x = tf.cast(batch, tf.float32)
        view1 = simclr_views(x, seeds[0], pre.crop_scale)
        view2 = simclr_views(x, seeds[1], pre.crop_scale)
        with tf.GradientTape() as tape:
            z1 = encoder(view1, training=True)
            z2 = encoder(view2, training=True)
            loss = nt_xent_loss(z1, z2, temperature)
        grads = tape.gradient(loss, encoder.trainable_variables)
        optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
        return loss

    dataset = (tf.data.Dataset.from_tensor_slices(images)
               .shuffle(len(images), seed=int(cfg.seed), reshuffle_each_iteration=True)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    losses: list[float] = []
    start = time.perf_counter()
    counter = 0
    for epoch in range(int(pre.epochs)):
        total, steps = 0.0, 0
        for batch in dataset:
            seed = tf.constant([int(cfg.seed), counter], tf.int32)
            total += float(step(batch, seed))
            steps += 1
            counter += 1
        losses.append(total / max(steps, 1))
        if progress:
            log.info("pretrain epoch %d/%d: NT-Xent loss %.4f", epoch + 1, pre.epochs, losses[-1])
    seconds = time.perf_counter() - start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_FILE
    base.save_weights(str(weights_path))
    info = {
        "method": "simclr",
        "backbone": spec.name,
        "norm": cfg.model.norm,
        "image_size": size,
        "aspect": cfg.data.aspect,
        "preprocess_mode": spec.preprocess_mode,
        "start_weights": str(cfg.model.weights),
        "seed": int(cfg.seed),
        "pretrain": asdict(pre),
        "n_images": len(images),
        "image_sha256": list(hashes) if hashes is not None else None,
        "losses": losses,
        "seconds": round(seconds, 2),
        "images_per_second": round(2 * len(losses) * (len(images) // batch_size) * batch_size
                                   / max(seconds, 1e-9), 1),
    }
    info_path = out / PRETRAIN_INFO
    info_path.write_text(json.dumps(info, indent=1))
    return PretrainResult(weights_path, info_path, losses, seconds)


def fold_cache_key(cfg: Config, hashes: Sequence[str], image_size: int) -> str:
    """The cache key of a fold's pretraining: its training images and every setting used.

    Two folds (or runs, or grid points) share pretrained weights exactly when they train on
    the same set of images with the same backbone, norm, start weights, image handling,
    ``pretrain`` settings and seed.
    """
    payload = {
        "images": sorted(str(h) for h in hashes),
        "backbone": cfg.model.backbone,
        "norm": cfg.model.norm,
        "weights": str(cfg.model.weights),
        "image_size": int(image_size),
        "aspect": cfg.data.aspect,
        "pretrain": {k: v for k, v in asdict(cfg.pretrain).items() if k != "cache_dir"},
        "seed": int(cfg.seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def pretrain_for_fold(cfg: Config, train_records: pd.DataFrame, images: np.ndarray,
                      cache_dir: str | os.PathLike | None = None, *, progress: bool = True
                      ) -> Path:
    """Pretrained backbone weights for one fold, trained on its training images only.

    The evaluator calls this with the fold's training records (never the test source) and
    their images, then fine-tunes with ``model.weights`` set to the returned path. Results
    are cached in ``<cache_dir>/<key>/`` (:func:`fold_cache_key`), so each distinct training
    set is pretrained once whatever the number of runs.

    Args:
        cfg: the config of the fold's model.
        train_records: the fold's training records (``sha256`` column used for the key).
        images: their images, aligned with the rows.
        cache_dir: cache folder; ``None`` uses ``pretrain.cache_dir``.
        progress: log the loss of each epoch.

    Returns:
        Path of ``backbone.weights.h5``.

    Example:
        >>> path = pretrain_for_fold(cfg, train_records, train_images)
        >>> fold_cfg = leukdx.config.replace(cfg, {"model.weights": str(path)})
    """
    if "sha256" not in train_records.columns:
        raise ValueError("train_records needs the sha256 column (as load_collection gives).")
    if len(train_records) != len(images):
        raise ValueError(
            f"train_records has {len(train_records)} rows but images holds {len(images)}.")
    hashes = train_records["sha256"].astype(str).tolist()
    key = fold_cache_key(cfg, hashes, int(np.asarray(images).shape[1]))
    folder = Path(cache_dir if cache_dir is not None else cfg.pretrain.cache_dir) / key
    weights_path = folder / WEIGHTS_FILE
    if weights_path.is_file() and (folder / PRETRAIN_INFO).is_file():
        log.info("pretrained weights of this fold found in %s", folder)
        return weights_path
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Train into a private folder and rename it into place: a crash never leaves half a cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        pretrain_backbone(cfg, images, tmp, hashes, progress=progress)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same fold first
            if not weights_path.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return weights_path


def pretrain_from_config(cfg: Config, out: str | os.PathLike, *, progress: bool = True
                         ) -> PretrainResult:
    """``leukdx pretrain``: pretrain on the config's collection and write into ``out``.

    The images are those of ``data.root`` restricted to ``data.sources`` and, when set,
    ``evaluate.train_sources`` (labels are not used); they are decoded at ``data.image_size``.

    Raises:
        ConfigError: ``evaluate.train_sources`` names no source of the collection.
    """
    from leukdx.data.records import load_collection
    from leukdx.train import make_image_cache

    records = load_collection(cfg.data.root, cfg.data, progress=progress, seed=cfg.seed).records
    wanted = cfg.evaluate.train_sources
    if wanted:
        missing = sorted(set(wanted) - set(records["source"]))
        if missing:
            raise ConfigError(
                f"'evaluate.train_sources' names {', '.join(missing)}, which the collection at "
                f"{cfg.data.root} does not hold; sources: "
                f"{', '.join(sorted(records['source'].unique()))}."
            )
        records = records[records["source"].isin(wanted)].reset_index(drop=True)
    images = make_image_cache(cfg, progress=progress).get(records, cfg.data.image_size,
                                                           cfg.data.aspect)
    return pretrain_backbone(cfg, images, out, records["sha256"].astype(str).tolist(),
                             progress=progress)
