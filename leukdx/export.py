"""Ship a trained model: TensorFlow SavedModel, TFLite and ``.keras``, with a model card.

``leukdx export RUN_DIR --format savedmodel tflite keras --out DIR`` writes::

    DIR/savedmodel/              TF SavedModel for TF Serving or tf.saved_model.load
    DIR/model.tflite             float32 TFLite (fixed input size)
    DIR/model_quant.tflite       dynamic-range quantised TFLite (weights int8)
    DIR/model.keras, config.yaml copy of the run's model and config (Keras 3, needs leukdx)
    DIR/model_card.json / .md    what the model is, how it was trained and checked, its limits

A server needs **only TensorFlow** (or the TFLite runtime): the backbone preprocessing is the
model's first layer and leukdx's custom layers are traced into the graph, so loading the
SavedModel imports no leukdx code.

SavedModel signatures (all return ``{"probability": float32 (B,), "label": int32 (B,)}``,
probability = P(leukaemia), label = ``probability >= threshold`` with the run's
``train.threshold``; label 0 = healthy, 1 = leukaemia):

* ``serving_default`` - ``images``: ``uint8`` RGB, shape ``(None, None, None, 3)``; one batch
  has one height/width, any size. Resized inside the graph to the model's size. Grayscale
  images must be given as three identical channels (``np.repeat(gray[..., None], 3, -1)``).
* ``serve_bytes`` - ``image_bytes``: ``string`` ``(None,)``, encoded JPEG, PNG, BMP or GIF
  files (first frame), each of any size, grayscale or colour. **TIFF cannot be decoded by
  TensorFlow**: decode TIFF on the client (Pillow) and use ``serving_default``. Alpha channels
  are dropped (leukdx's own decoder composites them on white).
* ``serve_fixed`` - ``images``: ``uint8`` ``(None, S, S, 3)`` already at the model's size; no
  resize. This is also the signature of the TFLite files.
* ``serve_tta`` (only when exported with ``tta=True`` / ``leukdx export --tta``) - as
  ``serve_fixed``, with test-time augmentation: the probability is the mean over the 8
  flips/rotations by 90 degrees of each image (:mod:`leukdx.tta`), 8x the compute.

Data steps outside the graph. A run trained on centre crops, nucleus-centred cell crops
(``data.crop``) or stain-normalised images (``data.stain_normalize``) expects its inputs
prepared the same way; the graph only resizes. The export stores those steps (and the stain
reference) as ``preparation`` in the SavedModel's metadata (:mod:`leukdx.data.inputs`), and
``leukdx predict EXPORT_DIR`` repeats them before calling the SavedModel; a server calling the
signatures directly must send prepared images (e.g. the cell crops of
:func:`leukdx.data.cells.load_cells`, stain-normalised with
:func:`leukdx.data.stain.normalize_images`).

Resizing. leukdx trains on images resized by Pillow (bicubic, antialiased; JPEGs decoded in
Pillow's draft mode at a reduced DCT scale when much larger than the model's input). The
graph resizes with ``tf.image.resize(method="bicubic", antialias=True)``, rounded and clipped
to [0, 255] like Pillow's ``uint8`` output, and decodes JPEG with the same accurate integer
DCT as Pillow. Measured on the real sources, the two agree to a mean absolute difference of
about 0.1-0.3 grey levels for TIFF/BMP/full-scale JPEG and up to about 1 grey level where
Pillow's draft mode kicks in (JPEGs at least twice the model's size), with rare single pixels
off by up to ~30 levels. Images already at the model's size skip the resize, so they give the
Keras model's output exactly (up to float round-off, ~1e-6). The export measures both effects
on real images and writes them into the model card.

Precision: every exported format computes in float32. A model trained under a mixed policy
(``mixed_bfloat16`` is the fast choice on recent CPUs) is cloned with float32 layers and the
same weights first (:func:`as_float32`): TFLite has no bfloat16 kernels, and the card reports
how far the float32 model is from the model in its training policy (~1e-3).

TFLite: input ``uint8`` ``(1, S, S, 3)`` (the batch dimension may be resized with
``resize_tensor_input``), the same two outputs; the float model agrees with Keras to ~1e-5,
the dynamic-range quantised one to about 1e-2 (tolerance 0.1).

Example:
    >>> from leukdx.export import export_run
    >>> files = export_run("runs/demo", formats=("savedmodel", "tflite", "keras"))
    >>> files.checks                     # measured differences to the Keras model
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leukdx.data.decode import BadImageError, is_image_file, load_image, read_image
from leukdx.io import atomic_write_bytes, atomic_write_json
from leukdx.predict import (
    CLASS_NAMES,
    SAVED_MODEL_DIR,
    SERVING_METADATA,
    LoadedModel,
    collect_image_paths,
    load_keras_model,
)
from leukdx.runinfo import read_json

if TYPE_CHECKING:  # pragma: no cover - typing only
    import keras
    import tensorflow as tf

__all__ = [
    "BYTES_SIGNATURE",
    "ExportResult",
    "FIXED_SIGNATURE",
    "FORMATS",
    "SERVING_SIGNATURE",
    "TF_DECODABLE",
    "TOLERANCES",
    "TTA_SIGNATURE",
    "ServingSpec",
    "as_float32",
    "build_export_archive",
    "check_images",
    "export_run",
    "export_savedmodel",
    "export_tflite",
    "load_tflite_interpreter",
    "resize_in_graph",
    "run_tflite",
    "signature_docs",
]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("savedmodel", "tflite", "keras")
SERVING_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serve_bytes"
FIXED_SIGNATURE = "serve_fixed"
TTA_SIGNATURE = "serve_tta"
TFLITE_FILE = "model.tflite"
TFLITE_QUANT_FILE = "model_quant.tflite"
KERAS_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
# File types TensorFlow decodes (the serve_bytes signature); TIFF is not among them.
TF_DECODABLE = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

# Maximum |P_export - P_keras| accepted by the export checks. Same pixels through the same
# graph differ only by float round-off; dynamic-range quantisation stores weights in int8.
TOLERANCES: dict[str, float] = {
    "savedmodel": 1e-5,
    "tflite": 1e-5,
    "tflite_quant": 1e-1,
}


@dataclass(frozen=True)
class ServingSpec:
    """How serving inputs become model inputs.

    Attributes:
        image_size: side of the model's square input.
        aspect: ``stretch`` or ``pad`` (as in training, ``data.aspect``).
        threshold: probability at or above which the label is 1 (leukaemia).
        tta: add the ``serve_tta`` signature (test-time augmentation over 8 flips/rotations).
    """

    image_size: int
    aspect: str = "stretch"
    threshold: float = 0.5
    tta: bool = False

    def __post_init__(self):
        if self.aspect not in ("stretch", "pad"):
            raise ValueError(f"aspect is {self.aspect!r}; choose stretch or pad (data.aspect).")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}.")


class ExportResult(list):
    """The written paths (a ``list[Path]``) plus what the export measured.

    Attributes:
        out_dir: the export folder.
        card: the model card (also written as ``model_card.json``).
        checks: one dict per comparison with the Keras model (``max_abs_diff``...).
    """

    def __init__(self, paths: Iterable[Path], out_dir: Path, card: dict, checks: list[dict]):
        super().__init__(paths)
        self.out_dir = out_dir
        self.card = card
        self.checks = checks

    def summary(self) -> str:
        """Human-readable lines: files written and the measured differences."""
        lines = [f"export written to {self.out_dir}"]
        lines += [f"  {p}" for p in self]
        for check in self.checks:
            tol = check.get("tolerance")
            verdict = "" if tol is None else ("  ok" if check.get("passed") else "  FAILED")
            lines.append(
                f"  check {check['check']}: max abs diff {check['max_abs_diff']:.2e} "
                f"{check['unit']} over {check['n_images']} image(s)"
                + ("" if tol is None else f" (tolerance {tol:g})")
                + verdict
            )
        evaluation = self.card.get("evaluation", {})
        if "cross_dataset" in evaluation:
            lines.append(f"  model card: cross-dataset results from "
                         f"{evaluation['cross_dataset']['summary']}")
        else:
            lines.append("  model card: validation metrics only (add --results results/NAME "
                         "for cross-dataset results)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- graph pieces


def resize_in_graph(images: tf.Tensor, spec: ServingSpec) -> tf.Tensor:
    """Resize a float32 batch ``(B, H, W, 3)`` to ``(B, S, S, 3)`` like leukdx's Pillow resize.

    Bicubic with antialiasing (Pillow's BICUBIC filter widens with the reduction factor, as
    TF's antialias does), rounded and clipped to [0, 255] because Pillow returns ``uint8``.
    ``pad`` scales the longer side to ``S`` and centres the image on zeros, exactly as
    :func:`leukdx.data.decode.resize_image`. A batch already at ``S x S`` is returned as is.

    Args:
        images: float32 pixel values in [0, 255].
        spec: target size and aspect handling.

    Returns:
        float32 ``(B, S, S, 3)``.
    """
    import tensorflow as tf

    size = int(spec.image_size)

    def stretch():
        out = tf.image.resize(images, (size, size), method="bicubic", antialias=True)
        return tf.clip_by_value(tf.round(out), 0.0, 255.0)

    def pad():
        shape = tf.shape(images)
        height = tf.cast(shape[1], tf.float64)
        width = tf.cast(shape[2], tf.float64)
        scale = size / tf.maximum(height, width)
        # round half to even, as Python's round() in decode._target_size
        th = tf.clip_by_value(tf.cast(tf.round(height * scale), tf.int32), 1, size)
        tw = tf.clip_by_value(tf.cast(tf.round(width * scale), tf.int32), 1, size)
        out = tf.image.resize(images, tf.stack([th, tw]), method="bicubic", antialias=True)
        out = tf.clip_by_value(tf.round(out), 0.0, 255.0)
        return tf.image.pad_to_bounding_box(out, (size - th) // 2, (size - tw) // 2, size, size)

    shape = tf.shape(images)
    already = tf.logical_and(tf.equal(shape[1], size), tf.equal(shape[2], size))
    resized = tf.cond(already, lambda: images, stretch if spec.aspect == "stretch" else pad)
    return tf.ensure_shape(resized, [None, size, size, 3])


def _decode_one(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes → ``(H, W, 3)`` ``uint8``; JPEG with Pillow's (accurate) IDCT."""
    import tensorflow as tf

    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def _serving_functions(model: keras.Model, spec: ServingSpec) -> dict[str, Any]:
    """The signature functions (``tf.function`` with input signatures)."""
    import tensorflow as tf

    from leukdx.tta import MAX_TTA, dihedral_transform

    size = int(spec.image_size)
    threshold = float(spec.threshold)

    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
        probability = tf.reshape(tf.cast(model(images, training=False), tf.float32), [-1])
        label = tf.cast(probability >= threshold, tf.int32)
        return {"probability": probability, "label": label}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_default(images):
        return classify(resize_in_graph(tf.cast(images, tf.float32), spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        def one(encoded):
            image = tf.cast(_decode_one(encoded), tf.float32)[tf.newaxis]
            return resize_in_graph(image, spec)[0]

        images = tf.map_fn(
            one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)
        )
        return classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serve_fixed(images):
        return classify(tf.cast(images, tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")])
    def serve_tta(images):
        images = tf.cast(images, tf.float32)
        views = [dihedral_transform(images, i) for i in range(MAX_TTA)]
        probabilities = tf.cast(model(tf.concat(views, axis=0), training=False), tf.float32)
        probability = tf.reduce_mean(tf.reshape(probabilities, [MAX_TTA, -1]), axis=0)
        return {"probability": probability,
                "label": tf.cast(probability >= threshold, tf.int32)}

    functions = {
        SERVING_SIGNATURE: serving_default,
        BYTES_SIGNATURE: serve_bytes,
        FIXED_SIGNATURE: serve_fixed,
    }
    if spec.tta:
        functions[TTA_SIGNATURE] = serve_tta
    return functions


def signature_docs(spec: ServingSpec) -> dict[str, dict[str, Any]]:
    """Inputs and outputs of each SavedModel signature, for the model card and metadata."""
    size = int(spec.image_size)
    outputs = {
        "probability": "float32 (B,) P(leukaemia)",
        "label": f"int32 (B,) 1 if probability >= {spec.threshold:g} else 0",
    }
    docs = {
        SERVING_SIGNATURE: {
            "inputs": {"images": "uint8 (B, H, W, 3) RGB, any H and W (one size per batch)"},
            "outputs": outputs,
            "notes": f"resized inside to {size}x{size} ({spec.aspect}); grayscale must be "
            "given as 3 identical channels",
        },
        BYTES_SIGNATURE: {
            "inputs": {"image_bytes": "string (B,) encoded JPEG/PNG/BMP/GIF files"},
            "outputs": outputs,
            "notes": "decoded with 3 channels (grayscale expanded, alpha dropped); TIFF is not "
            "supported by TensorFlow: decode it on the client and use serving_default",
        },
        FIXED_SIGNATURE: {
            "inputs": {"images": f"uint8 (B, {size}, {size}, 3) RGB already at model size"},
            "outputs": outputs,
            "notes": "no resize; the TFLite files use this signature",
        },
    }
    if spec.tta:
        docs[TTA_SIGNATURE] = {
            "inputs": {"images": f"uint8 (B, {size}, {size}, 3) RGB already at model size"},
            "outputs": outputs,
            "notes": "no resize; probability averaged over the 8 flips/rotations by 90 degrees",
        }
    return docs


def _policy_name(layer: Any) -> str:
    policy = getattr(layer, "dtype_policy", None)
    return str(getattr(policy, "name", "float32"))


def as_float32(model: keras.Model) -> keras.Model:
    """The model with every layer computing in float32 (same weights).

    A model trained under ``mixed_bfloat16`` or ``mixed_float16`` keeps that policy in its
    layers; TFLite cannot convert bfloat16 operations, and float32 is the exact reference for
    serving. Variables of mixed-precision layers are float32 already, so the weights copy over
    unchanged. A float32 model is returned as is.

    Args:
        model: a Keras model.

    Returns:
        ``model`` itself, or a float32 clone of it.
    """
    import keras

    from leukdx.models.layers import nested_layers

    if all(_policy_name(layer) == "float32" for layer in nested_layers(model)):
        return model

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
    clone.set_weights(model.get_weights())
    return clone


def build_export_archive(model: keras.Model, spec: ServingSpec) -> keras.export.ExportArchive:
    """A Keras ``ExportArchive`` tracking ``model`` with leukdx's serving signatures.

    Args:
        model: a leukdx model (float32 [0, 255] input, (B, 1) sigmoid output).
        spec: serving input size, aspect and threshold.

    Returns:
        The archive; call ``.write_out(path)``.
    """
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in _serving_functions(model, spec).items():
        archive.add_endpoint(name, fn)
    return archive


def export_savedmodel(
    model: keras.Model,
    path: str | os.PathLike,
    spec: ServingSpec,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a SavedModel with the ``serving_default``, ``serve_bytes``, ``serve_fixed`` signatures.

    An existing folder at ``path`` is replaced. The serving facts (size, aspect, threshold,
    class names, signatures, plus ``metadata``) are stored as JSON in the SavedModel's
    ``assets.extra/`` folder, which TF Serving ignores and :mod:`leukdx.predict` reads.

    Args:
        model: the Keras model.
        path: output folder.
        spec: serving input size, aspect and threshold.
        metadata: extra JSON-serialisable facts (backbone, strategy...).

    Returns:
        The SavedModel folder.
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    archive = build_export_archive(model, spec)
    archive.write_out(str(path), verbose=False)
    info = {
        "format": "leukdx-serving/1",
        "image_size": int(spec.image_size),
        "aspect": spec.aspect,
        "threshold": float(spec.threshold),
        "class_names": list(CLASS_NAMES),
        "input": "uint8 RGB pixels in [0, 255]; backbone preprocessing is inside the model",
        "signatures": signature_docs(spec),
        **(metadata or {}),
    }
    atomic_write_json(info, path / SERVING_METADATA)
    return path


@contextlib.contextmanager
def _quiet_tflite():
    """Silence the deprecation warning tf.lite prints for every converter/interpreter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def export_tflite(
    saved_model_dir: str | os.PathLike, path: str | os.PathLike, quantize: bool = False
) -> Path:
    """Convert the SavedModel's fixed-size signature to a TFLite file.

    Args:
        saved_model_dir: a SavedModel written by :func:`export_savedmodel`.
        path: output ``.tflite`` file.
        quantize: dynamic-range quantisation (int8 weights, float activations): ~4x smaller,
            faster on CPU, probabilities within ~1e-2.

    Returns:
        The TFLite file.
    """
    import tensorflow as tf

    with _quiet_tflite():
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model_dir), signature_keys=[FIXED_SIGNATURE]
        )
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        content = converter.convert()
    return atomic_write_bytes(path, content)


def load_tflite_interpreter(path: str | os.PathLike):
    """A TFLite interpreter: ``ai_edge_litert`` when installed, else ``tf.lite``."""
    try:  # the maintained runtime, when present
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with _quiet_tflite():
        return Interpreter(model_path=str(path))


def run_tflite(interpreter, images: np.ndarray) -> np.ndarray:
    """P(leukaemia) from a leukdx TFLite model for ``(N, S, S, 3)`` ``uint8`` images.

    Images go one at a time through the ``serve_fixed`` signature (batch 1, the mobile case).
    """
    runner = interpreter.get_signature_runner(FIXED_SIGNATURE)
    images = np.asarray(images, dtype=np.uint8)
    return np.array(
        [float(runner(images=images[i : i + 1])["probability"][0]) for i in range(len(images))],
        dtype=np.float64,
    )


# --------------------------------------------------------------------------- check images


def _sample_evenly(items: Sequence[Path], n: int) -> list[Path]:
    if len(items) <= n:
        return list(items)
    positions = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in positions]


def _data_root(loaded: LoadedModel) -> Path | None:
    if loaded.config is None:
        return None
    root = Path(loaded.config.data.root).expanduser()
    candidates = [root] if root.is_absolute() else [Path.cwd() / root]
    if not root.is_absolute() and loaded.run_dir is not None:
        candidates.append(loaded.run_dir / root)
    return next((c for c in candidates if c.is_dir()), None)


def check_images(
    loaded: LoadedModel, images: Any = None, n: int = 8
) -> tuple[list[Path], str]:
    """Real image files to compare exported models with the Keras model on.

    Args:
        loaded: the model and its run.
        images: files/folders to use; ``None`` samples the run's training collection
            (``data.root``, restricted to the run's sources), evenly over the sorted files.
        n: at most this many images.

    Returns:
        ``(paths, description)``; ``paths`` is empty when no images can be found.
    """
    if images is not None:
        return _sample_evenly(collect_image_paths(images), n), "images given to the export"
    root = _data_root(loaded)
    if root is None:
        return [], "no images (the run's data.root was not found)"
    info = read_json(loaded.run_dir / "run.json") if loaded.run_dir is not None else None
    sources = (info or {}).get("data", {}).get("sources") or []
    merged = loaded.config.data.merge_sources if loaded.config is not None else {}
    folders = [root / member for s in sources for member in merged.get(s, [s])]
    folders = [f for f in folders if f.is_dir()] or [root]
    files: list[Path] = []
    for folder in folders:
        files += sorted(
            Path(dirpath) / name
            for dirpath, _, names in os.walk(folder)
            for name in names
            if is_image_file(name)
        )
    # Half the checks use files TensorFlow can decode, so serve_bytes is measured too.
    decodable = [f for f in files if f.suffix.lower() in TF_DECODABLE]
    others = [f for f in files if f.suffix.lower() not in TF_DECODABLE]
    chosen = _sample_evenly(decodable, (n + 1) // 2 if others else n)
    chosen += _sample_evenly(others, n - len(chosen))
    return chosen, (
        f"{len(chosen)} image(s) sampled from the training collection {root} (they may include "
        "training images: the checks measure numerical agreement, not accuracy)"
    )


def _read_checks(paths: Sequence[Path], size: int, aspect: str):
    """``(paths, model-size uint8 batch, original images)`` skipping unreadable files."""
    kept, resized, originals = [], [], []
    for path in paths:
        try:
            resized.append(load_image(path, size, aspect))
            originals.append(read_image(path))
            kept.append(path)
        except BadImageError as exc:
            log.warning("Export check skips %s: %s", path, exc.reason)
    batch = np.stack(resized) if resized else np.zeros((0, size, size, 3), np.uint8)
    return kept, batch, originals


def _comparison(name: str, artifact: str, got, want, tolerance: float | None, threshold: float):
    got = np.asarray(got, np.float64).reshape(-1)
    want = np.asarray(want, np.float64).reshape(-1)
    diff = np.abs(got - want)
    out = {
        "check": name,
        "artifact": artifact,
        "n_images": int(diff.size),
        "max_abs_diff": float(diff.max()) if diff.size else float("nan"),
        "mean_abs_diff": float(diff.mean()) if diff.size else float("nan"),
        "label_agreement": float(np.mean((got >= threshold) == (want >= threshold)))
        if diff.size
        else float("nan"),
        "unit": "probability",
        "tolerance": tolerance,
    }
    out["passed"] = None if tolerance is None else bool(diff.size and diff.max() <= tolerance)
    if tolerance is not None and not out["passed"]:
        log.warning("Export check %s: max |dP| %.3g exceeds the tolerance %g.", name,
                    out["max_abs_diff"], tolerance)
    return out


def _resize_pixel_check(batch: np.ndarray, originals: list[np.ndarray], spec: ServingSpec):
    """Grey-level difference between the graph's resize and leukdx's Pillow resize."""
    import tensorflow as tf

    diffs = []
    for want, original in zip(batch, originals):
        got = resize_in_graph(tf.constant(original[None], tf.float32), spec)[0].numpy()
        diffs.append(np.abs(got - want.astype(np.float32)))
    if not diffs:
        return None
    return {
        "check": "resize_pixels",
        "artifact": "in-graph resize vs leukdx (Pillow) resize",
        "n_images": len(diffs),
        "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
        "max_abs_diff": float(max(d.max() for d in diffs)),
        "unit": "grey levels (0-255)",
        "tolerance": None,
        "passed": None,
    }


def _savedmodel_checks(folder: Path, paths, batch, originals, reference, spec) -> list[dict]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(folder))
    fixed = loaded.signatures[SERVING_SIGNATURE]
    checks = [
        _comparison(
            "savedmodel_uint8_model_size", f"{SERVING_SIGNATURE} (images at {spec.image_size} px)",
            fixed(images=tf.constant(batch))["probability"].numpy(), reference,
            TOLERANCES["savedmodel"], spec.threshold,
        )
    ]
    # Original sizes: each image resized inside the graph (one per call, sizes differ).
    any_size = [
        float(fixed(images=tf.constant(img[None]))["probability"].numpy()[0]) for img in originals
    ]
    checks.append(
        _comparison(
            "savedmodel_uint8_original_size", f"{SERVING_SIGNATURE} (original sizes)",
            any_size, reference, None, spec.threshold,
        )
    )
    encodable = [i for i, p in enumerate(paths) if Path(p).suffix.lower() in TF_DECODABLE]
    if encodable:
        data = tf.constant([Path(paths[i]).read_bytes() for i in encodable])
        got = loaded.signatures[BYTES_SIGNATURE](image_bytes=data)["probability"].numpy()
        checks.append(
            _comparison(
                "savedmodel_bytes", f"{BYTES_SIGNATURE} (encoded files)", got,
                reference[encodable], None, spec.threshold,
            )
        )
    return checks


# --------------------------------------------------------------------------- export_run


def _normalise_formats(formats: Any) -> list[str]:
    if isinstance(formats, str):
        formats = [formats]
    chosen = []
    for name in formats:
        key = str(name).lower().replace("-", "").replace("_", "")
        key = {"tf": "savedmodel", "saved": "savedmodel", "lite": "tflite"}.get(key, key)
        if key not in FORMATS:
            raise ValueError(f"Unknown export format {name!r}; choose from {', '.join(FORMATS)}.")
        if key not in chosen:
            chosen.append(key)
    if not chosen:
        raise ValueError(f"No export format given; choose from {', '.join(FORMATS)}.")
    return chosen


def _default_out(source: Any, loaded: LoadedModel) -> Path:
    if loaded.run_dir is not None:
        return loaded.run_dir / "export"
    if loaded.model_path is not None:
        return loaded.model_path.parent / "export"
    raise ValueError(f"Give an output folder (out=...) to export an in-memory model {source!r}.")


def _reference_checks(loaded: LoadedModel, model: keras.Model, batch: np.ndarray,
                      originals: list[np.ndarray], spec: ServingSpec):
    """The float32 Keras model's probabilities on the check images (``None`` without images)
    and the checks that need no exported file: float32 vs training precision, Pillow resize."""
    if not len(batch):
        return None, []
    from leukdx.train import predict_proba

    checks: list[dict] = []
    reference = predict_proba(model, batch)
    if model is not loaded.model:
        policies = sorted({_policy_name(layer) for layer in loaded.model.layers} - {"float32"})
        checks.append(_comparison(
            "float32_vs_training_precision",
            "float32 model vs the model in its training policy (" + ", ".join(policies) + ")",
            reference, predict_proba(loaded.model, batch), None, spec.threshold,
        ))
    pixel_check = _resize_pixel_check(batch, originals, spec)
    if pixel_check is not None:
        checks.append(pixel_check)
    return reference, checks


def _export_tflite_variant(saved_dir: Path, out_dir: Path, key: str, name: str, quant: bool,
                           batch: np.ndarray, reference, spec: ServingSpec):
    """Convert one TFLite file from the SavedModel; its model-card entry and its check."""
    path = export_tflite(saved_dir, out_dir / name, quantize=quant)
    interpreter = load_tflite_interpreter(path)
    details = interpreter.get_signature_runner(FIXED_SIGNATURE).get_input_details()
    artefact = {
        "path": name,
        "bytes": path.stat().st_size,
        "quantization": "dynamic range (int8 weights)" if quant else "none (float32)",
        "signature": FIXED_SIGNATURE,
        "input": {
            k: f"{np.dtype(v['dtype']).name} {[int(s) for s in v['shape']]}"
            for k, v in details.items()
        },
        "outputs": ["probability", "label"],
    }
    checks = []
    if reference is not None:
        checks.append(_comparison(key, name, run_tflite(interpreter, batch), reference,
                                  TOLERANCES[key], spec.threshold))
    return path, artefact, checks


def _copy_keras_model(loaded: LoadedModel, model: keras.Model, out_dir: Path) -> list[Path]:
    """The ``.keras`` file (and the run's config.yaml, which `leukdx predict` reads beside it)."""
    target = out_dir / KERAS_FILE
    if loaded.model_path is not None:
        if loaded.model_path.resolve() != target.resolve():
            shutil.copyfile(loaded.model_path, target)
    else:
        model.save(target)
    written = [target]
    if loaded.run_dir is not None and (loaded.run_dir / CONFIG_FILE).is_file():
        config_copy = out_dir / CONFIG_FILE
        if (loaded.run_dir / CONFIG_FILE).resolve() != config_copy.resolve():
            shutil.copyfile(loaded.run_dir / CONFIG_FILE, config_copy)
        written.append(config_copy)
    return written


def export_run(
    run_dir_or_model: Any,
    formats: Sequence[str] | str = ("savedmodel", "tflite"),
    out: str | os.PathLike | None = None,
    quantize: bool = True,
    *,
    images: Any = None,
    evaluation: str | os.PathLike | None = None,
    n_check: int = 8,
    tta: bool = False,
    progress: bool = True,
) -> ExportResult:
    """Export a trained model for deployment and write its model card.

    Args:
        run_dir_or_model: a run folder, a ``.keras`` file or a ``keras.Model``.
        formats: any of ``savedmodel``, ``tflite``, ``keras``. TFLite is converted from the
            SavedModel (written to a temporary folder when ``savedmodel`` is not requested).
        out: export folder; default ``RUN_DIR/export``.
        quantize: with ``tflite``, also write the dynamic-range quantised model.
        images: image files/folders to measure the exported models against the Keras model
            on; default: a few images of the run's training collection.
        evaluation: an evaluation folder with ``summary.csv`` whose results go into the model
            card; default: ``summary.csv`` in the run folder or its ``evaluation/``, if any.
        n_check: at most this many check images.
        tta: add the SavedModel's ``serve_tta`` signature (mean over 8 flips/rotations).
        progress: a tqdm bar over the export steps (off when stderr is not a terminal).

    Returns:
        An :class:`ExportResult`: the written paths (SavedModel folder, TFLite files, model
        file, ``model_card.json``, ``model_card.md``) with ``.checks`` and ``.card``.

    Raises:
        FileNotFoundError: no model at ``run_dir_or_model``.
        UnsafeModelError: the model file contains code that safe mode refuses to run.
        ValueError: unknown format.
    """
    from tqdm.auto import tqdm

    from leukdx.modelcard import build_model_card, write_model_card

    chosen = _normalise_formats(formats)
    loaded = load_keras_model(run_dir_or_model)
    out_dir = Path(out) if out is not None else _default_out(run_dir_or_model, loaded)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = ServingSpec(loaded.image_size, loaded.aspect, loaded.threshold, tta=tta)
    # Exported graphs compute in float32 whatever the training precision (TFLite has no
    # bfloat16); the Keras reference of the checks is that same float32 model.
    model = as_float32(loaded.model)
    if model is not loaded.model:
        log.info("The model was trained with a mixed precision policy; exporting it in float32.")

    variants = [("tflite", TFLITE_FILE, False)] + (
        [("tflite_quant", TFLITE_QUANT_FILE, True)] if quantize else [])
    need_savedmodel = "savedmodel" in chosen or "tflite" in chosen
    steps = (2 + int(need_savedmodel) + len(variants) * int("tflite" in chosen)
             + int("keras" in chosen))
    # disable=None: tqdm switches itself off when stderr is not a terminal (logs, CI)
    bar = tqdm(total=steps, desc="export", unit="step", disable=None if progress else True)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update()

    with bar:
        check_paths, check_source = check_images(loaded, images, n_check)
        check_paths, batch, originals = _read_checks(check_paths, spec.image_size, spec.aspect)
        reference, checks = _reference_checks(loaded, model, batch, originals, spec)
        step("Keras reference")

        written: list[Path] = []
        artefacts: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="leukdx-export-") as scratch:
            saved_dir = (out_dir / SAVED_MODEL_DIR if "savedmodel" in chosen
                         else Path(scratch) / "sm")
            if need_savedmodel:
                export_savedmodel(model, saved_dir, spec, _serving_metadata(loaded))
                log.info("SavedModel written to %s", saved_dir)
                if "savedmodel" in chosen:
                    written.append(saved_dir)
                    artefacts["savedmodel"] = {
                        "path": SAVED_MODEL_DIR,
                        "signatures": signature_docs(spec),
                    }
                if reference is not None:
                    checks += _savedmodel_checks(
                        saved_dir, check_paths, batch, originals, reference, spec
                    )
                step("SavedModel")
            for key, name, quant in variants if "tflite" in chosen else ():
                path, artefacts[key], tflite_checks = _export_tflite_variant(
                    saved_dir, out_dir, key, name, quant, batch, reference, spec)
                written.append(path)
                checks += tflite_checks
                step(name)
        if "keras" in chosen:
            written += _copy_keras_model(loaded, model, out_dir)
            artefacts["keras"] = {"path": KERAS_FILE, "loads_with": "leukdx.train.load_model"}
            step(KERAS_FILE)

        for check in checks:
            log.info("Export check %s: max abs diff %.3g %s (%d images)", check["check"],
                     check["max_abs_diff"], check["unit"], check["n_images"])
        card = build_model_card(
            loaded,
            spec,
            artefacts=artefacts,
            checks=checks,
            check_images=check_source,
            evaluation=evaluation,
        )
        written += list(write_model_card(card, out_dir))
        step("model card")
    return ExportResult(written, out_dir, card, checks)


def _serving_metadata(loaded: LoadedModel) -> dict[str, Any]:
    cfg = loaded.config
    if cfg is None:
        return {}
    from leukdx.data.inputs import InputPreparation

    meta: dict[str, Any] = {"backbone": cfg.model.backbone, "strategy": cfg.model.strategy,
                            "name": cfg.name, "tta_views": int(cfg.evaluate.tta)}
    preparation = InputPreparation.for_run(cfg, loaded.run_dir, image_size=loaded.image_size)
    if not preparation.is_plain:
        # steps the graph does not do (nucleus detection, stain normalisation): stored so
        # `leukdx predict EXPORT` repeats them; a bare TF server must do them itself
        meta["preparation"] = preparation.to_dict()
    return meta
