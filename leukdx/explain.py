"""Grad-CAM heat-maps: which parts of a smear drove a prediction (``leukdx explain``).

Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization") weights each channel ``k`` of the last convolutional map ``A``
by the spatial mean of the gradient of the class score ``y`` with respect to it,
``alpha_k = mean_ij dy/dA_ij^k``, and keeps the positive part of the weighted sum,
``ReLU(sum_k alpha_k A^k)``. LeukNet (Vogado et al. 2021, Figures 6 and 9) shows such maps
over the smear images.

The class score is the logit of the final sigmoid, not the probability: a confident model's
sigmoid saturates and its gradient vanishes, while the logit's does not (the normalised map is
otherwise the same, since the sigmoid is monotonic). For the healthy class the score is the
negative logit.

The convolutional map is the backbone's ``last_conv_layer`` (:mod:`leukdx.models.backbones`),
found anywhere in the model: directly in it (leukdx builds its backbones into the model's own
graph) or inside a nested backbone model.

Example:
    >>> from leukdx.explain import explain_paths, grad_cam
    >>> heatmaps = grad_cam(model, images)             # (B, h, w) in [0, 1]
    >>> pngs = explain_paths("runs/demo", ["smears/"], out="gradcam")
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from leukdx.data.decode import BadImageError, load_image, read_image
from leukdx.models.io import LoadedModel, load_keras_model
from leukdx.predict import CLASS_NAMES, collect_image_paths

__all__ = [
    "EXPLANATIONS_CSV",
    "explain_paths",
    "find_last_conv_layer",
    "grad_cam",
    "gradcam_figure",
    "label_from_path",
    "overlay_heatmap",
    "parse_target",
]

log = logging.getLogger(__name__)

EXPLANATIONS_CSV = "gradcam.csv"
# Longest side of the saved overlays: whole-slide fields (2592 px) are shown reduced.
MAX_OVERLAY_SIDE = 768


# --------------------------------------------------------------------------- finding layers


def _children(layer: Any) -> list[Any]:
    """Sub-layers of a nested model (empty for an ordinary layer)."""
    import keras

    return list(layer.layers) if isinstance(layer, keras.Model) else []


def _layer_path(model: Any, name: str) -> list[Any] | None:
    """``[model, nested_model, ..., layer]`` for the layer called ``name``, or ``None``."""
    for layer in model.layers:
        if layer.name == name:
            return [model, layer]
        if _children(layer):
            inner = _layer_path(layer, name)
            if inner is not None:
                return [model] + inner
    return None


def _is_spatial(layer: Any) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4 and shape[1] is not None and shape[1] >= 1


def _flat_layers(model: Any) -> list[Any]:
    """Every layer in topological order, nested models expanded in place."""
    out = []
    for layer in model.layers:
        out += _flat_layers(layer) if _children(layer) else [layer]
    return out


def find_last_conv_layer(model: Any, backbone: str | None = None) -> str:
    """Name of the layer Grad-CAM should use.

    In order: the backbone's registered ``last_conv_layer`` (``backbone`` given, or read from
    the ``<backbone>_<strategy>`` name leukdx gives its models); else the deepest layer that
    is some registered backbone's ``last_conv_layer``; else the last layer (nested models
    included) with a 4-D output that is not a pooling layer.

    Args:
        model: a Keras model.
        backbone: the model's backbone name (``model.backbone``), when known.

    Returns:
        The layer name.

    Raises:
        ValueError: the model has no convolutional map.
    """
    from leukdx.models import get_backbone, list_backbones, model_backbone

    if backbone is None:
        try:
            backbone = model_backbone(model).name
        except ValueError:
            backbone = None
    if backbone is not None:
        name = get_backbone(backbone).last_conv_layer
        if _layer_path(model, name) is not None:
            return name

    layers = _flat_layers(model)
    position = {layer.name: i for i, layer in enumerate(layers)}
    registered = {get_backbone(b).last_conv_layer for b in list_backbones()}
    present = [name for name in registered if name in position]
    if present:
        # e.g. VGG19 also has VGG16's block5_conv3: the deepest one is the last conv map
        return max(present, key=position.__getitem__)

    spatial = [
        layer for layer in layers
        if _is_spatial(layer) and "pool" not in type(layer).__name__.lower()
    ]
    if not spatial:
        raise ValueError(
            "The model has no layer with a spatial (4-D) output, so Grad-CAM has nothing to "
            "weight; pass layer_name= explicitly."
        )
    return spatial[-1].name


# --------------------------------------------------------------------------- the tap model


def _logit_of(final: Any, x: Any):
    """The final layer's output as a logit: undo a sigmoid where the model ends in one."""
    import keras
    from keras import ops

    activation = getattr(final, "activation", None)
    is_sigmoid = activation is keras.activations.sigmoid or getattr(
        activation, "__name__", ""
    ) == "sigmoid"
    if isinstance(final, keras.layers.Dense) and is_sigmoid:
        kernel = ops.cast(final.kernel, "float32")
        z = ops.matmul(ops.cast(x, "float32"), kernel)
        if final.use_bias:
            z = z + ops.cast(final.bias, "float32")
        return z
    if isinstance(final, keras.layers.Activation) and is_sigmoid:
        return ops.cast(x, "float32")
    # No sigmoid to undo (a custom head): its output is a monotonic score all the same.
    return ops.cast(final(x, training=False), "float32")


def _single(inputs: list[Any]) -> Any:
    """One input as a tensor, not a one-element list (Keras warns when a call's structure
    differs from the model's)."""
    return inputs[0] if len(inputs) == 1 else inputs


def _tapped(model: Any, path: list[Any], top: bool) -> Any:
    """A functional model, sharing ``model``'s weights, whose outputs are the map of
    ``path[-1]`` and the input of the final layer (``top``) or ``model``'s output (nested).

    The model's graph is re-run with the same layers (``clone_model`` with an identity
    ``clone_function``); a ``call_function`` records the tensors Grad-CAM needs and, when the
    layer lives in a nested model, swaps that model for a tapped copy of it (recursively).
    """
    import keras

    target = path[1]
    final = model.layers[-1]
    inner = _tapped(target, path[1:], top=False) if len(path) > 2 else None
    record: dict[str, Any] = {}

    def call_function(layer, *args, **kwargs):
        if top and layer is final:
            record["penultimate"] = args[0]
        if layer is target and inner is not None:
            record["conv"], out = inner(*args, **kwargs)
            return out
        out = layer(*args, **kwargs)
        if layer is target:
            record["conv"] = out
        return out

    if isinstance(model, keras.Sequential):  # a chain: call the layers in order
        reference = model.inputs[0]
        inputs = keras.Input(batch_shape=reference.shape, dtype=reference.dtype)
        x = inputs
        for layer in model.layers:
            x = call_function(layer, x)
        outputs = x
    else:
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call_function
        )
        inputs, outputs = _single(clone.inputs), clone.outputs[0]
    if "conv" not in record:
        raise ValueError(f"Layer '{target.name}' is not on the path to the model's output.")
    return keras.Model(inputs, [record["conv"], record["penultimate"] if top else outputs])


# Tapped models already built: building one re-runs the graph, so explain_paths builds it once.
_TAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tap_function(model: Any, layer_name: str):
    """``f(images) -> (conv_map, logit)`` sharing the model's weights."""
    taps = _TAPS.setdefault(model, {})
    if layer_name not in taps:
        path = _layer_path(model, layer_name)
        if path is None:
            raise ValueError(
                f"Layer '{layer_name}' is not in the model (nested models searched too)."
            )
        tap = _tapped(model, path, top=True)
        final = model.layers[-1]

        def run(images):
            conv, penultimate = tap(images, training=False)
            return conv, _logit_of(final, penultimate)

        taps[layer_name] = run
    return taps[layer_name]


# --------------------------------------------------------------------------- Grad-CAM


def grad_cam(
    model: Any,
    image_batch: np.ndarray,
    layer_name: str | None = None,
    target: int | None = None,
) -> np.ndarray:
    """Grad-CAM heat-maps for a batch of images.

    Args:
        model: a leukdx Keras model (float32 [0, 255] input, (B, 1) sigmoid output).
        image_batch: ``(B, S, S, 3)`` images at the model's input size, values in [0, 255].
        layer_name: convolutional layer to explain; default :func:`find_last_conv_layer`.
        target: class to explain, 1 (leukaemia) or 0 (healthy); ``None`` explains each
            image's predicted class (probability >= 0.5).

    Returns:
        float32 ``(B, h, w)`` heat-maps in [0, 1] at the layer's resolution (each map divided
        by its maximum; all zeros where no location supports the class).

    Example:
        >>> maps = grad_cam(model, images[:4], target=1)
        >>> maps.shape                                       # (4, 7, 7) for VGG16 at 224 px
    """
    import tensorflow as tf

    if target not in (None, 0, 1):
        raise ValueError(f"target must be 0 (healthy), 1 (leukaemia) or None, got {target!r}.")
    images = np.asarray(image_batch, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"image_batch must be (B, H, W, 3), got shape {images.shape}.")
    layer_name = layer_name or find_last_conv_layer(model)
    run = _tap_function(model, layer_name)

    x = tf.constant(images)
    with tf.GradientTape() as tape:
        conv, logit = run(x)
        tape.watch(conv)
        logit = tf.reshape(tf.cast(logit, tf.float32), [-1])
        if target is None:
            sign = tf.where(logit >= 0.0, 1.0, -1.0)  # logit >= 0  <=>  probability >= 0.5
        else:
            sign = tf.fill(tf.shape(logit), 1.0 if target == 1 else -1.0)
        score = tf.reduce_sum(sign * logit)  # images are independent: one backward pass
    grads = tape.gradient(score, conv)
    if grads is None:
        raise ValueError(f"The output does not depend on layer '{layer_name}'.")
    grads, conv = tf.cast(grads, tf.float32), tf.cast(conv, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # alpha_k per image
    cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
    return np.clip(np.nan_to_num(cam), 0.0, 1.0).astype(np.float32)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Blend a [0, 1] heat-map (any size, stretched to the image) over an RGB image, jet colours.

    Args:
        image: ``(H, W, 3)`` ``uint8``.
        heatmap: ``(h, w)`` values in [0, 1].
        alpha: weight of the colour map (0 = image only).

    Returns:
        ``(H, W, 3)`` ``uint8``.
    """
    from matplotlib import colormaps

    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    field = Image.fromarray(np.asarray(heatmap, dtype=np.float32))  # mode F
    field = np.asarray(field.resize((width, height), Image.Resampling.BILINEAR))
    colours = colormaps["jet"](np.clip(field, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended, 0, 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- figures

# Below this many cells on a side the heat-map is a coarse grid, and the figure says so.
MIN_MAP_SIDE = 4
# How ``--class`` names the explained class: a label, or None for each image's prediction.
TARGETS: dict[str, int | None] = {"leukaemia": 1, "leukemia": 1, "healthy": 0, "predicted": None}


def parse_target(name: str | int | None) -> int | None:
    """The class to explain from its name (``leukaemia``, ``healthy`` or ``predicted``).

    Args:
        name: a name of :data:`TARGETS`, a label 0/1, or ``None`` (predicted).

    Returns:
        1, 0, or ``None`` for each image's predicted class.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    if name is None or name in (0, 1):
        return name
    key = str(name).strip().lower()
    if key not in TARGETS:
        raise ValueError(
            f"Unknown class to explain '{name}'; choose leukaemia, healthy or predicted."
        )
    return TARGETS[key]


def label_from_path(path: str | os.PathLike, aliases: dict[str, int] | None = None) -> int | None:
    """The true label an image's path states, when it states one.

    Read from the nearest parent folder named like a class (``healthy/``, ``leukemia/``, or a
    ``data.class_aliases`` name), else from an ALL-IDB file name ending in ``_0``/``_1``.

    Args:
        path: the image file.
        aliases: lower-case folder name → label (:func:`leukdx.data.records.class_alias_map`);
            default the names of the default ``data`` settings.

    Returns:
        0 (healthy), 1 (leukaemia) or ``None`` when the path does not tell.
    """
    from leukdx.config import DataConfig
    from leukdx.data.records import class_alias_map

    if aliases is None:
        aliases = class_alias_map(DataConfig())
    path = Path(path)
    for folder in path.parents:
        name = folder.name.strip().lower()
        if name and not name.isdigit() and name in aliases:
            return int(aliases[name])
    match = re.match(r"^.+_([01])$", path.stem)
    return int(match.group(1)) if match else None


def gradcam_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    probability: float,
    explained_class: int,
    true_label: int | None = None,
    name: str = "",
    layer: str = "",
    map_shape: tuple[int, int] | None = None,
    input_size: int | None = None,
    threshold: float = 0.5,
    alpha: float = 0.4,
):
    """The original image beside its Grad-CAM overlay, with a colour bar and the prediction.

    Laid out like keras.io's Grad-CAM example (jet colours blended over the image at
    ``alpha``). The title gives P(leukaemia), the predicted class and, when known, the true
    one; the overlay's title names the explained class and the layer. When the layer's map
    has fewer than :data:`MIN_MAP_SIDE` cells on a side (e.g. 2 x 2 at 32 px) a note under
    the panels says that the map is too coarse to localise anything.

    Args:
        image: ``(H, W, 3)`` ``uint8`` image as shown.
        heatmap: ``(h, w)`` values in [0, 1] covering ``image``.
        probability: the model's P(leukaemia) for the image.
        explained_class: 1 leukaemia or 0 healthy: whose evidence the map shows.
        true_label: 0/1 when known.
        name: the image's name, for the title.
        layer: the convolutional layer explained.
        map_shape: the layer's full map size ``(h, w)``; default ``heatmap.shape``.
        input_size: the model's input side in pixels, for the coarse-map note.
        threshold: probability at or above which the prediction is leukaemia.
        alpha: weight of the colour map in the blend.

    Returns:
        A Matplotlib figure with two image panels and a colour bar.

    Example:
        >>> fig = gradcam_figure(image, maps[0], probability=0.83, explained_class=1,
        ...                      true_label=1, name="cell.png", layer="conv5")  # doctest: +SKIP
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    panel = 4.0
    fig = Figure(figsize=(2 * panel + 1.2, panel * height / width + 1.3), dpi=120,
                 layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.imshow(image)
    left.set_title("original")
    right.imshow(overlay_heatmap(image, heatmap, alpha))
    right.set_title(f"Grad-CAM: evidence for {CLASS_NAMES[explained_class]}"
                    + (f"\nlayer {layer}" if layer else ""), fontsize=9)
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    colourbar = fig.colorbar(
        ScalarMappable(norm=Normalize(0.0, 1.0), cmap=colormaps["jet"]), ax=right,
        fraction=0.046, pad=0.02,
    )
    colourbar.set_label("relative importance (1 = strongest)")
    predicted = CLASS_NAMES[int(probability >= threshold)]
    title = f"{name}: " if name else ""
    title += f"P(leukaemia) = {probability:.3f} → predicted {predicted}"
    if true_label is not None:
        title += f"; true: {CLASS_NAMES[int(true_label)]}"
    fig.suptitle(title, fontsize=10)
    h, w = map_shape or tuple(np.asarray(heatmap).shape[:2])
    if min(h, w) < MIN_MAP_SIDE:
        at = f" at {input_size} px input" if input_size else ""
        fig.supxlabel(
            f"Note: layer {layer or 'explained'} has only a {h} × {w} map{at}, so the heat-map "
            "is a coarse grid, not a localisation; train at a larger data.image_size for "
            "finer maps.", fontsize=8, color="darkred",
        )
    return fig


# --------------------------------------------------------------------------- files


def _display_image(original: np.ndarray, heatmap: np.ndarray, aspect: str, size: int):
    """The original image (reduced to MAX_OVERLAY_SIDE) and the heat-map part covering it."""
    height, width = original.shape[:2]
    if aspect == "pad":
        # The model saw the image centred on a padded square: keep the part over the image.
        scale = size / max(height, width)
        th, tw = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (size - th) / 2 / size, (size - tw) / 2 / size
        h, w = heatmap.shape
        r0, r1 = int(np.floor(top * h)), int(np.ceil((top + th / size) * h))
        c0, c1 = int(np.floor(left * w)), int(np.ceil((left + tw / size) * w))
        heatmap = heatmap[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)]
    reduce = max(height, width) / MAX_OVERLAY_SIDE
    if reduce > 1:
        new = (max(1, round(width / reduce)), max(1, round(height / reduce)))
        original = np.asarray(Image.fromarray(original).resize(new, Image.Resampling.BICUBIC))
    return original, heatmap


def _unique_name(path: Path, used: set[str]) -> str:
    stem = path.stem
    name, n = f"{stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_gradcam.png"
    used.add(name)
    return name


def explain_paths(
    model: Any,
    images: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    layer_name: str | None = None,
    target: int | str | None = None,
    labels: Mapping[str, int] | None = None,
    batch_size: int = 8,
    alpha: float = 0.4,
) -> list[Path]:
    """Write a Grad-CAM figure PNG per image, plus ``gradcam.csv`` listing them.

    Each PNG (:func:`gradcam_figure`) shows the original image (longest side at most 768 px)
    beside the heat-map of the explained class blended over it in the jet colour map (red =
    strongest support), a colour bar, and P(leukaemia) with the true label when known.

    Args:
        model: a run folder, ``.keras`` file or Keras model (a SavedModel has no layers to
            explain).
        images: image files and/or folders (searched recursively).
        out: output folder (created).
        layer_name: convolutional layer; default the backbone's ``last_conv_layer``.
        target: ``"leukaemia"``/1, ``"healthy"``/0, or ``"predicted"``/``None`` for the
            predicted class of each image.
        labels: true label per image path (``str(path)``); without an entry the label is read
            from the path (:func:`label_from_path`), else shown as unknown.
        batch_size: images per Grad-CAM pass.
        alpha: weight of the colour map in the blend.

    Returns:
        The PNG paths, in the order of the images (unreadable files are skipped and logged).

    Example:
        >>> explain_paths("runs/demo", ["smears/"], "gradcam", target="leukaemia")  # doctest: +SKIP
    """
    import keras

    from leukdx.data.records import class_alias_map
    from leukdx.io import atomic_write_csv
    from leukdx.plots import save_figure

    target = parse_target(target)
    loaded: LoadedModel = load_keras_model(model)
    backbone = loaded.config.model.backbone if loaded.config is not None else None
    layer_name = layer_name or find_last_conv_layer(loaded.model, backbone)
    size, aspect = loaded.image_size, loaded.aspect
    aliases = class_alias_map(loaded.config.data) if loaded.config is not None else None
    files = collect_image_paths(images)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    rows: list[dict[str, Any]] = []
    used: set[str] = set()
    for start in range(0, len(files), int(batch_size)):
        chunk: Sequence[Path] = files[start : start + int(batch_size)]
        kept, batch = [], []
        for path in chunk:
            try:
                batch.append(load_image(path, size, aspect))
                kept.append(path)
            except BadImageError as exc:
                log.warning("Skipped %s: %s", path, exc.reason)
        if not batch:
            continue
        x = np.stack(batch)
        # An eager call: model.predict would retrace for every differently sized batch.
        probabilities = np.asarray(
            keras.ops.convert_to_numpy(loaded.model(x.astype(np.float32), training=False)),
            dtype=np.float64,
        ).reshape(-1)
        heatmaps = grad_cam(loaded.model, x, layer_name=layer_name, target=target)
        for path, heatmap, probability in zip(kept, heatmaps, probabilities):
            original, field = _display_image(read_image(path), heatmap, aspect, size)
            target_used = int(probability >= 0.5) if target is None else int(target)
            true_label = (labels or {}).get(str(path))
            if true_label is None:
                true_label = label_from_path(path, aliases)
            png = out_dir / _unique_name(path, used)
            figure = gradcam_figure(
                original, field, probability=float(probability), explained_class=target_used,
                true_label=true_label, name=path.name, layer=layer_name,
                map_shape=heatmap.shape, input_size=size, threshold=loaded.threshold,
                alpha=alpha,
            )
            written.append(save_figure(figure, png))
            rows.append(
                {
                    "path": str(path),
                    "probability": float(probability),
                    "label": int(probability >= loaded.threshold),
                    "true_label": true_label,
                    "explained_class": CLASS_NAMES[target_used],
                    "layer": layer_name,
                    "map_shape": "x".join(str(n) for n in heatmap.shape),
                    "png": png.name,
                }
            )
    columns = ["path", "probability", "label", "true_label", "explained_class", "layer",
               "map_shape", "png"]
    atomic_write_csv(out_dir / EXPLANATIONS_CSV,
                     pd.DataFrame(rows, columns=columns).astype({"true_label": "Int64"}))
    return written
