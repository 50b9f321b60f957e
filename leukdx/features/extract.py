"""Deep features: the activations of one layer of a network, cached on disk.

Two kinds of network give features (Loey et al. 2020 model 1; LeukNet §4.3):

- a registered **backbone** with its original dense top where it has one (``features.model``
  unset): built through :func:`leukdx.models.build_model` with strategy ``dft``, which keeps the
  original dense layers (AlexNet fc6/fc7, VGG fc1/fc2) and only adds the sigmoid output. The
  forward pass is the same for every strategy that keeps the top, so ``model.strategy`` does not
  matter here. ``features.layer: auto`` is the backbone's ``feature_layer`` (AlexNet ``fc7``,
  4096-d, as in Loey et al.; the pooled output of GAP backbones). Weights come from
  ``model.weights`` (``none`` gives a randomly initialised network, seeded by ``seed``).
- a **trained model** (``features.model``: a run folder made by ``leukdx train``, or a
  ``.keras`` file). ``auto`` is the last layer before the classifier, e.g. the 256-d
  ``head_dense_2`` of an mDFT VGG-16 (LeukNet Table 10). A run folder's ``config.yaml`` supplies
  the image size and aspect the model was trained with.

Without a network, ``features.extractor: morphology`` measures the largest white-cell nucleus
of each image instead (:mod:`leukdx.features.morphology`; 9 numbers, no ``layer``); its cache
key hashes the measuring code.

Activations are cached as ``<features.cache_dir>/<name>_<key>.npz``, where the key hashes the
model fingerprint (backbone, weights file hash, seed and leukdx version; or the model file's
sha256), the layer, the image size and aspect, and the data fingerprint (the set of image
sha256s). The file stores the features with the sha256 of each row, so any records table made
of the same images - in any order - is served from it without running the network. Writes are
atomic (:func:`leukdx.io.atomic_output`).

TensorFlow/Keras are imported inside the functions that run the network.

Example:
    >>> from leukdx.config import load_config
    >>> from leukdx.data.records import load_collection
    >>> cfg = load_config("configs/loey_features.yaml", ["data.image_size=67"])
    >>> records = load_collection(cfg.data.root, cfg.data).records
    >>> fs = extract_features(cfg, records)              # doctest: +SKIP
    >>> fs.features.shape, fs.layer                       # doctest: +SKIP
    ((1884, 4096), 'fc7')
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from leukdx import __version__
from leukdx.config import Config, ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras

    from leukdx.data.pipeline import ImageCache

__all__ = [
    "FeatureSet",
    "FeatureSource",
    "build_extractor",
    "extract_features",
    "feature_cache_key",
    "feature_source",
    "resolve_layer",
    "run_training_sources",
]

log = logging.getLogger(__name__)

# Layers that pass their input through unchanged at inference; "auto" looks past them.
_PASS_THROUGH = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "ActivityRegularization",
)
# Images per forward pass when extracting.
EXTRACT_BATCH_SIZE = 32


@dataclass(frozen=True)
class FeatureSource:
    """Which network, layer and input the features come from (everything the cache key needs).

    Attributes:
        kind: ``backbone`` (a registered backbone with its original top), ``model`` (a
            trained model file) or ``morphology`` (measured nuclear morphology, no network).
        name: short name for tables and file names: the backbone name, or the run folder /
            model file name.
        backbone: registered backbone name (of the trained run when known, else ``""``).
        layer: requested layer (``auto`` or a layer name).
        image_size: input side in pixels.
        aspect: ``stretch`` or ``pad``.
        weights: ``model.weights`` (backbone kind) or ``""``.
        model_path: the ``.keras`` file (model kind) or ``None``.
        fingerprint: what identifies the network's parameters (weights-file or model-file
            sha256, or the seed of a randomly initialised network).
        trained_on: the sources a trained run learnt from (``data.sources`` of its
            ``run.json``), ``None`` when not known (a bare ``.keras`` file, or a backbone,
            whose ImageNet or random weights saw no blood images). Features of a network that
            was trained on a test source are not an unseen-dataset result for that source
            (:func:`leukdx.features.analysis.extractor_leak`).
    """

    kind: str
    name: str
    backbone: str
    layer: str
    image_size: int
    aspect: str
    weights: str = ""
    model_path: Path | None = None
    fingerprint: str = ""
    trained_on: tuple[str, ...] | None = None


@dataclass
class FeatureSet:
    """Features of a records table, one row per record.

    Attributes:
        features: (N, D) float32 array aligned with the records rows.
        layer: the resolved layer name (``auto`` replaced by the real name).
        source: where the features come from.
        key: the cache key.
        path: the cache file.
        from_cache: True when read from the cache (the network did not run).
    """

    features: np.ndarray
    layer: str
    source: FeatureSource
    key: str
    path: Path
    from_cache: bool = False

    @property
    def name(self) -> str:
        """``<source name>:<layer>``, e.g. ``alexnet:fc7`` or ``mdft_run:head_dense_2``."""
        return f"{self.source.name}:{self.layer}"

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.features.shape[1])


def _sha256_file(path: Path) -> str:
    from leukdx.data.dedup import sha256_file

    return sha256_file(path)


def _model_file(path_text: str) -> tuple[Path, Path | None]:
    """(the .keras file, the run folder or None) of ``features.model``."""
    from leukdx.models.io import MODEL_FILE

    path = Path(path_text).expanduser()
    if path.is_dir():
        run_dir, path = path, path / MODEL_FILE
    else:
        run_dir = None
    if not path.is_file():
        raise FileNotFoundError(
            f"features.model is '{path_text}', but there is no model at {path}. Give a run "
            "folder made by `leukdx train` (with model.keras) or a .keras file."
        )
    return path, run_dir


def feature_source(cfg: Config) -> FeatureSource:
    """The :class:`FeatureSource` a config asks for, without building any network.

    Args:
        cfg: the experiment config (``features``, ``model``, ``data`` and ``seed`` are read).

    Returns:
        The feature source.

    Raises:
        FileNotFoundError: ``features.model`` or a ``model.weights`` file does not exist.
    """
    layer = cfg.features.layer or "auto"
    if cfg.features.extractor == "morphology":
        from leukdx.features.morphology import measurement_fingerprint

        # no network: the measuring code is the fingerprint, so an edit of it can never serve
        # stale features; images are read from their files at full resolution (image_size and
        # aspect do not apply)
        return FeatureSource(
            kind="morphology", name="morphology", backbone="", layer="nucleus", image_size=0,
            aspect="original", fingerprint=measurement_fingerprint(),
        )
    if cfg.features.model:
        from leukdx.models.io import CONFIG_FILE

        model_path, run_dir = _model_file(cfg.features.model)
        size, aspect, backbone = cfg.data.image_size, cfg.data.aspect, ""
        if run_dir is not None and (run_dir / CONFIG_FILE).is_file():
            # A trained model must see images prepared the way it was trained.
            saved = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
            data = saved.get("data") or {}
            size = int(data.get("image_size", size))
            aspect = str(data.get("aspect", aspect))
            backbone = str((saved.get("model") or {}).get("backbone", ""))
            if size != cfg.data.image_size or aspect != cfg.data.aspect:
                log.info("Using the run's input settings for %s: %d px, aspect %s",
                         run_dir, size, aspect)
        name = (run_dir.name if run_dir is not None else model_path.stem) or "model"
        return FeatureSource(
            kind="model", name=name, backbone=backbone, layer=layer, image_size=size,
            aspect=aspect, model_path=model_path.absolute(),
            fingerprint=f"model-sha256:{_sha256_file(model_path)}",
            trained_on=run_training_sources(run_dir) if run_dir is not None else None,
        )
    weights = str(cfg.model.weights)
    if weights.lower() == "none":
        # A randomly initialised network is fixed by the seed (and the architecture code).
        fingerprint = f"random-init:seed={cfg.seed}:leukdx={__version__}"
    elif weights.lower() == "imagenet":
        fingerprint = f"imagenet:leukdx={__version__}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"model.weights is '{weights}', which is neither 'imagenet', 'none' nor an "
                "existing weights file."
            )
        fingerprint = f"weights-sha256:{_sha256_file(path)}:leukdx={__version__}"
    return FeatureSource(
        kind="backbone", name=cfg.model.backbone, backbone=cfg.model.backbone, layer=layer,
        image_size=cfg.data.image_size, aspect=cfg.data.aspect, weights=weights,
        fingerprint=fingerprint,
    )


def run_training_sources(run_dir: str | os.PathLike) -> tuple[str, ...] | None:
    """The sources a ``leukdx train`` run learnt from (``data.sources`` of its ``run.json``).

    Args:
        run_dir: a run folder.

    Returns:
        The sorted source names, or ``None`` when the folder has no readable ``run.json`` with
        that entry (a warning names the folder: leakage into test sources cannot be checked).

    Example:
        >>> run_training_sources("runs/vgg16_mdft")            # doctest: +SKIP
        ('bccd', 'cellavision_zheng', 'jtsc', 'pbc', 'taleqani_all')
    """
    from leukdx.train import RUN_FILE

    path = Path(run_dir) / RUN_FILE
    try:
        info = json.loads(path.read_text())
        sources = info["data"]["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s has no readable data.sources: cannot check that the run's training "
                    "sources exclude the test sources.", path)
        return None
    return tuple(sorted(str(s) for s in sources))


def _images_fingerprint(records: pd.DataFrame) -> str:
    """sha1 of the sorted distinct image sha256s (the rows' order does not matter)."""
    if "sha256" not in records.columns:
        raise ValueError("records lacks the 'sha256' column; load it with load_collection.")
    hashes = sorted(set(records["sha256"].astype(str)))
    return hashlib.sha1("\n".join(hashes).encode()).hexdigest()


def feature_cache_key(source: FeatureSource, records: pd.DataFrame) -> str:
    """The cache key of ``source``'s features of ``records`` (sha1 hex).

    Args:
        source: the feature source.
        records: the records table (its ``sha256`` column).

    Returns:
        40 hex characters; equal keys mean identical features.
    """
    payload = {
        "kind": source.kind,
        "backbone": source.backbone if source.kind == "backbone" else "",
        "fingerprint": source.fingerprint,
        "layer": source.layer,
        "image_size": int(source.image_size),
        "aspect": source.aspect,
        "data": _images_fingerprint(records),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_path(cache_dir: Path, source: FeatureSource, key: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{source.name}_{source.layer}")
    return cache_dir / f"{stem}_{key[:20]}.npz"


def resolve_layer(model: keras.Model, layer: str, preferred: str | None = None) -> str:
    """The name of the feature layer of ``model``.

    Args:
        model: a Keras model.
        layer: a layer name, or ``auto``.
        preferred: the name ``auto`` means when the model has such a layer (a backbone's
            ``feature_layer``).

    Returns:
        A layer name of ``model``. ``auto`` without ``preferred`` is the last layer before the
        classifier: walking back from the output, layers whose output has a single unit (the
        classifier) and inference-time pass-through layers (dropout, noise) are skipped.

    Raises:
        ConfigError: the named layer does not exist (the message lists candidates).
    """
    names = [lyr.name for lyr in model.layers]
    if layer != "auto":
        if layer not in names:
            dense = [lyr.name for lyr in model.layers if len(_output_shape(lyr)) == 2]
            raise ConfigError(
                f"features.layer is '{layer}', which is not a layer of the model '{model.name}'. "
                f"Layers with vector outputs: {', '.join(dense) or 'none'}; or use 'auto'."
            )
        return layer
    if preferred and preferred in names:
        return preferred
    for lyr in reversed(model.layers):
        shape = _output_shape(lyr)
        if not shape or shape[-1] in (1, None) or type(lyr).__name__ in _PASS_THROUGH:
            continue
        if type(lyr).__name__ == "InputLayer":
            break
        return lyr.name
    raise ConfigError(
        f"features.layer: auto found no feature layer in the model '{model.name}'; name one."
    )


def _output_shape(layer: Any) -> tuple:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return ()
    return tuple(shape)


def build_extractor(source: FeatureSource, seed: int = 0) -> tuple[keras.Model, str]:
    """Build (or load) the network of ``source``, cut at its feature layer.

    Args:
        source: from :func:`feature_source`.
        seed: seeds Keras before building, so a network with ``weights: none`` is the same
            every time.

    Returns:
        ``(extractor, layer_name)``: a model mapping float32 [0, 255] images (B, S, S, 3) to
        the layer's activations, and the resolved layer name.

    Raises:
        ConfigError: unknown layer; the trained model's input size differs from the images.
    """
    import keras

    if source.kind == "model":
        from leukdx.models.io import load_model

        model = load_model(source.model_path)
        preferred = None
    else:
        from leukdx.config import ModelConfig
        from leukdx.models import build_model, get_backbone

        spec = get_backbone(source.backbone)
        keras.utils.set_random_seed(int(seed))
        model_config = ModelConfig(backbone=source.backbone, strategy="dft", weights=source.weights)
        model = build_model(model_config, int(source.image_size))
        preferred = getattr(spec, "feature_layer", None)
    size = model.input_shape[1] if model.input_shape and len(model.input_shape) == 4 else None
    if size is not None and int(size) != int(source.image_size):
        raise ConfigError(
            f"The model '{source.name}' takes {size} px images but data.image_size is "
            f"{source.image_size}; set data.image_size={size}."
        )
    layer = resolve_layer(model, source.layer, preferred)
    extractor = keras.Model(model.inputs, model.get_layer(layer).output, name=f"features_{layer}")
    return extractor, layer


def _forward(extractor: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Activations of ``extractor`` for uint8 images, flattened to (N, D) float32."""
    from leukdx.data.pipeline import make_dataset

    dataset = make_dataset(images, batch_size=int(batch_size))
    out = np.asarray(extractor.predict(dataset, verbose=0), dtype=np.float32)
    return out.reshape(len(images), -1)


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    from leukdx.io import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _read_cache(path: Path, records: pd.DataFrame) -> tuple[np.ndarray, str] | None:
    """Cached features reordered to ``records`` rows, or None when unusable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            features = data["features"]
            hashes = data["sha256"].astype(str)
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("Ignoring damaged feature cache %s (%s); extracting again.", path, exc)
        return None
    row_of = {h: i for i, h in enumerate(hashes)}
    wanted = records["sha256"].astype(str).tolist()
    if any(h not in row_of for h in wanted) or features.ndim != 2:
        log.warning("Feature cache %s does not cover these images; extracting again.", path)
        return None
    return features[[row_of[h] for h in wanted]], str(meta["layer"])


def extract_features(
    cfg: Config,
    records: pd.DataFrame,
    *,
    image_cache: ImageCache | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> FeatureSet:
    """Features of every record from the network and layer the config names, cached.

    A cached result is returned without building or running the network.

    Args:
        cfg: the experiment config (``features.layer``, ``features.model``,
            ``features.cache_dir``, ``model.backbone``/``model.weights``, ``data.image_size``,
            ``data.aspect``, ``seed``).
        records: the records table; the features are aligned with its rows.
        image_cache: decoded images shared with the rest of the experiment; one is made from
            ``cfg.data`` when ``None``.
        cache_dir: overrides ``features.cache_dir``.

    Returns:
        The :class:`FeatureSet`.

    Raises:
        ConfigError: unknown layer, or an input size the model does not take.
        FileNotFoundError: a missing model or weights file.
        ValueError: an empty records table.
    """
    if len(records) == 0:
        raise ValueError("extract_features: the records table is empty.")
    source = feature_source(cfg)
    key = feature_cache_key(source, records)
    folder = Path(cache_dir if cache_dir is not None else cfg.features.cache_dir)
    path = _cache_path(folder, source, key)
    cached = _read_cache(path, records)
    if cached is not None:
        features, layer = cached
        log.info("Features %s:%s read from %s", source.name, layer, path)
        return FeatureSet(features, layer, source, key, path, from_cache=True)

    # Distinct images only: duplicates (same sha256) share one row of the cache file.
    unique = records.drop_duplicates("sha256")
    if source.kind == "morphology":
        from leukdx.features.morphology import morphology_table

        log.info("Measuring the nuclear morphology of %d images", len(unique))
        layer = source.layer
        features = morphology_table(unique["path"].astype(str).tolist())
    else:
        if image_cache is None:
            from leukdx.data.pipeline import ImageCache

            image_cache = ImageCache.from_config(cfg.data)
        images = image_cache.get(unique, source.image_size, source.aspect)
        extractor, layer = build_extractor(source, seed=cfg.seed)
        log.info("Extracting %s:%s features of %d images at %d px", source.name, layer,
                 len(unique), source.image_size)
        features = _forward(extractor, images, EXTRACT_BATCH_SIZE)
    meta = {
        "layer": layer, "source": dataclasses.asdict(source) | {"model_path": str(source.model_path)},
        "key": key, "leukdx": __version__,
    }
    _write_npz_atomic(
        # fixed-width unicode, not object, arrays: the file must load with allow_pickle=False
        path, features=features, sha256=np.asarray(unique["sha256"].astype(str).tolist(), dtype=str),
        meta=np.array(json.dumps(meta)),
    )
    row_of = {h: i for i, h in enumerate(unique["sha256"].astype(str))}
    aligned = features[[row_of[h] for h in records["sha256"].astype(str)]]
    return FeatureSet(aligned, layer, source, key, path, from_cache=False)
