"""Training-time augmentation presets as Keras layers.

Every preset is a ``keras.Sequential`` that takes a float32 batch ``(B, S, S, 3)`` with values in
``[0, 255]`` and returns a batch of the same shape, dtype and range. It changes pixels only when
called with ``training=True`` (the default when called directly, as for Keras' own preprocessing
layers) and is the identity at inference, so the same object can sit in a ``tf.data`` map
(``augment.placement: pipeline``) or inside a model (``augment.placement: model``). The custom
layers are registered Keras-serialisable under the ``leukdx`` package, so a saved model that
contains them loads again once this module has been imported.

Presets (``build_augmentation(preset, image_size, seed)``):

``leuknet`` (Vogado et al. 2021, §3.2)
    The paper used Keras' ``ImageDataGenerator`` with ``rotation_range=40``,
    ``width_shift_range=height_shift_range=0.2``, ``shear_range=0.2``, ``zoom_range=0.2``,
    horizontal and vertical flips and ``fill_mode="reflect"``. :class:`RandomAffine`
    reproduces that generator's semantics: rotation uniform in ±40°, shifts uniform in ±20 %
    of the width and height, zoom factors drawn *independently* per axis from [0.8, 1.2], each
    flip with probability 0.5, all composed into **one** affine map about the image centre and
    resampled once (bilinear, reflect fill). In ``ImageDataGenerator`` ``shear_range`` is a
    shear *angle in degrees*, so the authors' 0.2 means a shear of at most ±0.2° (under one
    pixel at 224 px); the preset keeps that value to mirror what was actually run. Keras 3's
    ``RandomShear`` would read 0.2 as a 20 % shear about the top-left corner, a different and
    much stronger transform; and chaining ``RandomRotation``, ``RandomTranslation``,
    ``RandomZoom`` and ``RandomShear`` resamples (and blurs) the image four times and is about
    3x slower on CPU than the single composed map.

``loey`` (Loey et al. 2020, §3.1.1)
    The paper lists three operations and shows each on its own (their Figure 4), so each
    augmented image undergoes **one** of them, chosen uniformly per image: a translation by
    15–25 px along *both* axes (whole pixels, random sign per axis), a mirror about the vertical
    axis, or a rotation left or right by 25°, 30°, …, 125°. Pixel distances refer to the
    paper's 227×227 input and scale with the actual image (exact at 227 px). Uncovered areas
    are black, the default fill of MATLAB (R2018a), which the authors used.

``none``
    No augmentation (``build_augmentation`` returns ``None``).

Example:
    >>> import numpy as np
    >>> from leukdx.data.augment import build_augmentation
    >>> aug = build_augmentation("loey", image_size=64, seed=0)
    >>> batch = np.full((2, 64, 64, 3), 128, np.float32)
    >>> aug(batch, training=True).shape
    TensorShape([2, 64, 64, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
from keras import ops

__all__ = [
    "LOEY_REFERENCE_SIZE",
    "LoeyAugmentation",
    "RandomAffine",
    "affine_matrices",
    "build_augmentation",
    "list_augmentations",
    "register_augmentation",
    "sample_pixel_shifts",
    "sample_step_angles",
]

# Loey et al. resized every image to 227x227 (AlexNet input); their pixel distances refer to it.
LOEY_REFERENCE_SIZE = 227

_PRESETS: dict[str, Callable[[int, int | None], keras.Sequential]] = {}


def register_augmentation(name: str) -> Callable:
    """Register a preset factory ``f(image_size, seed) -> keras.Sequential`` under ``name``.

    Example:
        >>> @register_augmentation("flip_only")
        ... def _flip(image_size, seed):
        ...     return keras.Sequential([keras.layers.RandomFlip(seed=seed)])
    """

    def decorator(factory: Callable[[int, int | None], keras.Sequential]) -> Callable:
        if name in _PRESETS or name == "none":
            raise ValueError(f"Augmentation preset '{name}' is already registered.")
        _PRESETS[name] = factory
        return factory

    return decorator


def list_augmentations() -> list[str]:
    """Names accepted by :func:`build_augmentation` (``none`` included)."""
    return sorted([*_PRESETS, "none"])


def build_augmentation(
    preset: str, image_size: int, seed: int | None = None
) -> keras.Sequential | None:
    """Build an augmentation preset for ``(B, image_size, image_size, 3)`` float32 batches.

    Args:
        preset: a registered preset name (``leuknet``, ``loey``) or ``none``.
        image_size: square side in pixels of the batches it will see.
        seed: seed of the layers' random generators; ``None`` draws a random one. Two presets
            built with the same seed produce the same sequence of augmented batches.

    Returns:
        A ``keras.Sequential`` (random only when called with ``training=True``), or ``None``
        for ``none``.

    Raises:
        ValueError: unknown preset (the message lists the registered ones) or bad image size.
    """
    if preset in (None, "none"):
        return None
    if preset not in _PRESETS:
        raise ValueError(
            f"Unknown augmentation preset '{preset}' (augment.preset); choose one of "
            f"{', '.join(list_augmentations())}."
        )
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}.")
    model = _PRESETS[preset](int(image_size), seed)
    model.build((None, int(image_size), int(image_size), 3))
    return model


# LeukNet §3.2 in ImageDataGenerator's terms (the benchmark feeds the same dict to it).
LEUKNET_AFFINE = dict(
    rotation_range=40.0,
    width_shift_range=0.2,
    height_shift_range=0.2,
    shear_range=0.2,
    zoom_range=0.2,
    horizontal_flip=True,
    vertical_flip=True,
    fill_mode="reflect",
)


@register_augmentation("leuknet")
def _leuknet(image_size: int, seed: int | None) -> keras.Sequential:
    return keras.Sequential(
        [
            RandomAffine(
                **LEUKNET_AFFINE,
                seed=seed,
                name="leuknet_affine",
            )
        ],
        name="augment_leuknet",
    )


@register_augmentation("loey")
def _loey(image_size: int, seed: int | None) -> keras.Sequential:
    return keras.Sequential([LoeyAugmentation(seed=seed, name="loey_ops")], name="augment_loey")


# --------------------------------------------------------------------------- samplers


def sample_step_angles(
    n: int,
    seed: int | keras.random.SeedGenerator | None,
    low: int = 25,
    high: int = 125,
    step: int = 5,
):
    """Rotation angles (degrees) on the grid ``±{low, low + step, ..., high}``.

    Args:
        n: number of angles.
        seed: an int, a ``keras.random.SeedGenerator`` (advanced on each call) or ``None``.
        low, high, step: the grid of magnitudes, both ends included.

    Returns:
        float32 tensor ``(n,)``; the sign (left or right rotation) is drawn with probability 0.5.
    """
    if step <= 0 or high < low or (high - low) % step:
        raise ValueError(
            f"Rotation grid low={low}, high={high}, step={step} must satisfy "
            "step > 0 and (high - low) divisible by step."
        )
    seed_k, seed_s = _two_seeds(seed)
    k = keras.random.randint((n,), 0, (high - low) // step + 1, seed=seed_k, dtype="int32")
    magnitude = ops.cast(low + step * k, "float32")
    return magnitude * _random_signs(n, seed_s)


def sample_pixel_shifts(
    n: int, seed: int | keras.random.SeedGenerator | None, low: int = 15, high: int = 25
):
    """Whole-pixel shifts with magnitude in ``[low, high]`` and a random sign.

    Returns:
        float32 tensor ``(n,)``.
    """
    if low < 0 or high < low:
        raise ValueError(f"Shift range low={low}, high={high} must satisfy 0 <= low <= high.")
    seed_k, seed_s = _two_seeds(seed)
    magnitude = ops.cast(
        keras.random.randint((n,), low, high + 1, seed=seed_k, dtype="int32"), "float32"
    )
    return magnitude * _random_signs(n, seed_s)


def _two_seeds(seed):
    """Two independent seeds from an int / SeedGenerator / None."""
    if isinstance(seed, keras.random.SeedGenerator) or seed is None:
        return seed, seed
    return int(seed), int(seed) + 1_000_003


def _random_signs(n: int, seed):
    flip = keras.random.uniform((n,), seed=seed) < 0.5
    return ops.where(flip, -1.0, 1.0)


# --------------------------------------------------------------------------- geometry


def affine_matrices(
    height,
    width,
    *,
    rotation_deg=None,
    shift_x=None,
    shift_y=None,
    shear_deg=None,
    zoom_x=None,
    zoom_y=None,
    flip_x=None,
    flip_y=None,
    batch_size: int | None = None,
):
    """Per-image output→input affine maps about the image centre, in ``affine_transform`` format.

    The composition follows ``ImageDataGenerator``: rotation · shift · shear · zoom, with the
    flips applied last (exact pixel mirrors). Every argument is a ``(B,)`` tensor or ``None``
    (identity for that part).

    Args:
        height, width: image size in pixels (Python or scalar tensors).
        rotation_deg: rotation angle; positive turns the content counter-clockwise on screen.
        shift_x, shift_y: translation of the content in pixels (+x right, +y down).
        shear_deg: shear angle in degrees (``ImageDataGenerator``'s ``shear_range`` unit).
        zoom_x, zoom_y: sampling scale per axis; above 1 zooms out, below 1 zooms in.
        flip_x, flip_y: booleans, mirror left-right / top-bottom.
        batch_size: B, needed only when every part is ``None``.

    Returns:
        float32 tensor ``(B, 8)`` for ``keras.ops.image.affine_transform``.
    """
    parts = [rotation_deg, shift_x, shift_y, shear_deg, zoom_x, zoom_y, flip_x, flip_y]
    if batch_size is None:
        batch_size = next(ops.shape(p)[0] for p in parts if p is not None)
    zeros = ops.zeros((batch_size,), "float32")
    ones = ops.ones((batch_size,), "float32")

    def value(x, default):
        return default if x is None else ops.cast(x, "float32")

    theta = value(rotation_deg, zeros) * (math.pi / 180.0)
    shear = value(shear_deg, zeros) * (math.pi / 180.0)
    zx, zy = value(zoom_x, ones), value(zoom_y, ones)
    tx, ty = value(shift_x, zeros), value(shift_y, zeros)
    fx = ones if flip_x is None else ops.where(flip_x, -1.0, 1.0)
    fy = ones if flip_y is None else ops.where(flip_y, -1.0, 1.0)

    cos, sin = ops.cos(theta), ops.sin(theta)
    # Linear part L = F · R · Sh · Z, mapping a centred output point to a centred input point.
    # R = [[cos, -sin], [sin, cos]] (output->input), Sh = [[1, -sin(s)], [0, cos(s)]],
    # Z = diag(zx, zy), F = diag(fx, fy). Worked out by hand to stay elementwise (no batched
    # 3x3 matmuls in the graph).
    sh01, sh11 = -ops.sin(shear), ops.cos(shear)
    r00, r01 = cos, cos * sh01 - sin * sh11
    r10, r11 = sin, sin * sh01 + cos * sh11
    a00, a01 = fx * r00 * zx, fx * r01 * zy
    a10, a11 = fy * r10 * zx, fy * r11 * zy
    # Translation: the content moves by (+tx, +ty), so the output samples the input at -t.
    cx = (ops.cast(width, "float32") - 1.0) / 2.0
    cy = (ops.cast(height, "float32") - 1.0) / 2.0
    bx = fx * (-tx)
    by = fy * (-ty)
    a02 = cx - a00 * cx - a01 * cy + bx
    a12 = cy - a10 * cx - a11 * cy + by
    return ops.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)


def _apply(images, transforms, fill_mode: str, fill_value: float, interpolation: str):
    out = ops.image.affine_transform(
        images,
        transforms,
        interpolation=interpolation,
        fill_mode=fill_mode,
        fill_value=fill_value,
        data_format="channels_last",
    )
    # Interpolation is a convex combination, but rounding can overshoot by an ulp.
    return ops.clip(out, 0.0, 255.0)


# --------------------------------------------------------------------------- layers


class _RandomImageLayer(keras.layers.Layer):
    """Shared plumbing: float32 compute, seeding, identity unless ``training``."""

    def __init__(
        self,
        fill_mode: str,
        fill_value: float,
        interpolation: str,
        seed: int | None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")  # pixel geometry stays float32 under mixed policies
        super().__init__(**kwargs)
        if fill_mode not in ("reflect", "wrap", "constant", "nearest"):
            raise ValueError(
                f"fill_mode '{fill_mode}' is not one of reflect, wrap, constant, nearest."
            )
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation '{interpolation}' is not bilinear or nearest.")
        self.fill_mode = fill_mode
        self.fill_value = float(fill_value)
        self.interpolation = interpolation
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False
        # As for Keras' own random image layers: the projective-transform kernel and stateful
        # seeds keep XLA off, so ``jit_compile="auto"`` does not compile a model holding them.
        self.supports_jit = False

    def call(self, images, training=True):
        if not training:
            return images
        in_dtype = images.dtype
        images = ops.cast(images, "float32")
        shape = ops.shape(images)
        transforms = self.transforms(shape[0], shape[1], shape[2])
        out = _apply(images, transforms, self.fill_mode, self.fill_value, self.interpolation)
        return ops.cast(out, in_dtype)

    def transforms(self, batch_size, height, width):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            fill_mode=self.fill_mode,
            fill_value=self.fill_value,
            interpolation=self.interpolation,
            seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class RandomAffine(_RandomImageLayer):
    """``ImageDataGenerator``-style random affine augmentation in one resampling.

    Args:
        rotation_range: rotation drawn uniformly in ``±rotation_range`` degrees.
        width_shift_range, height_shift_range: shift drawn uniformly in ``±range`` times the
            width / height.
        shear_range: shear angle drawn uniformly in ``±shear_range`` **degrees**
            (``ImageDataGenerator``'s unit).
        zoom_range: zoom factors drawn independently per axis in ``[1 - z, 1 + z]``.
        horizontal_flip, vertical_flip: mirror with probability 0.5 per image.
        fill_mode: ``reflect``, ``wrap``, ``constant`` or ``nearest``.
        fill_value: value of ``constant`` fill.
        interpolation: ``bilinear`` or ``nearest``.
        seed: seed of the layer's ``keras.random.SeedGenerator``.
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        shear_range: float = 0.0,
        zoom_range: float = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: str = "reflect",
        fill_value: float = 0.0,
        interpolation: str = "bilinear",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(fill_mode, fill_value, interpolation, seed, **kwargs)
        if not 0.0 <= zoom_range < 1.0:
            raise ValueError(f"zoom_range must be in [0, 1), got {zoom_range}.")
        for name, val in (
            ("rotation_range", rotation_range),
            ("width_shift_range", width_shift_range),
            ("height_shift_range", height_shift_range),
            ("shear_range", shear_range),
        ):
            if val < 0:
                raise ValueError(f"{name} must be non-negative, got {val}.")
        self.rotation_range = float(rotation_range)
        self.width_shift_range = float(width_shift_range)
        self.height_shift_range = float(height_shift_range)
        self.shear_range = float(shear_range)
        self.zoom_range = float(zoom_range)
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)

    def transforms(self, batch_size, height, width):
        gen = self.seed_generator

        def sym(bound):
            return keras.random.uniform((batch_size,), -bound, bound, seed=gen)

        h = ops.cast(height, "float32")
        w = ops.cast(width, "float32")
        z = self.zoom_range
        return affine_matrices(
            height,
            width,
            rotation_deg=sym(self.rotation_range) if self.rotation_range else None,
            shift_x=sym(self.width_shift_range) * w if self.width_shift_range else None,
            shift_y=sym(self.height_shift_range) * h if self.height_shift_range else None,
            shear_deg=sym(self.shear_range) if self.shear_range else None,
            zoom_x=keras.random.uniform((batch_size,), 1 - z, 1 + z, seed=gen) if z else None,
            zoom_y=keras.random.uniform((batch_size,), 1 - z, 1 + z, seed=gen) if z else None,
            flip_x=(keras.random.uniform((batch_size,), seed=gen) < 0.5)
            if self.horizontal_flip
            else None,
            flip_y=(keras.random.uniform((batch_size,), seed=gen) < 0.5)
            if self.vertical_flip
            else None,
            batch_size=batch_size,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            rotation_range=self.rotation_range,
            width_shift_range=self.width_shift_range,
            height_shift_range=self.height_shift_range,
            shear_range=self.shear_range,
            zoom_range=self.zoom_range,
            horizontal_flip=self.horizontal_flip,
            vertical_flip=self.vertical_flip,
        )
        return config


LOEY_OPERATIONS = ("translate", "mirror", "rotate")


@keras.saving.register_keras_serializable(package="leukdx")
class LoeyAugmentation(_RandomImageLayer):
    """One of Loey et al.'s operations per image: translate, mirror or rotate.

    Args:
        operations: the operations to choose from (uniformly, per image); any non-empty subset
            of ``("translate", "mirror", "rotate")``.
        shift_pixels: ``(low, high)`` translation magnitude along each axis, in pixels of a
            ``reference_size`` image; drawn as whole pixels with a random sign per axis.
        rotation_degrees: ``(low, high, step)`` grid of rotation magnitudes; the direction
            (left/right) is random.
        reference_size: image side the pixel distances refer to (227, the paper's input); the
            shift scales with the actual width and height.
        fill_mode, fill_value, interpolation, seed: as for :class:`RandomAffine`.
    """

    def __init__(
        self,
        operations: Sequence[str] = LOEY_OPERATIONS,
        shift_pixels: Sequence[int] = (15, 25),
        rotation_degrees: Sequence[int] = (25, 125, 5),
        reference_size: int = LOEY_REFERENCE_SIZE,
        fill_mode: str = "constant",
        fill_value: float = 0.0,
        interpolation: str = "bilinear",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(fill_mode, fill_value, interpolation, seed, **kwargs)
        operations = tuple(operations)
        unknown = [op for op in operations if op not in LOEY_OPERATIONS]
        if not operations or unknown:
            raise ValueError(
                f"operations {list(operations)} must be a non-empty subset of "
                f"{list(LOEY_OPERATIONS)}."
            )
        if len(shift_pixels) != 2 or len(rotation_degrees) != 3:
            raise ValueError("shift_pixels is (low, high); rotation_degrees is (low, high, step).")
        self.operations = operations
        self.shift_pixels = tuple(int(v) for v in shift_pixels)
        self.rotation_degrees = tuple(int(v) for v in rotation_degrees)
        self.reference_size = int(reference_size)
        # Fail now, not inside a traced graph, on a bad grid.
        sample_step_angles(1, 0, *self.rotation_degrees)
        sample_pixel_shifts(1, 0, *self.shift_pixels)

    def transforms(self, batch_size, height, width):
        gen = self.seed_generator
        choice = keras.random.randint((batch_size,), 0, len(self.operations), seed=gen)
        op_index = {op: i for i, op in enumerate(self.operations)}

        def chosen(op):
            if op not in op_index:
                return ops.zeros((batch_size,), "bool")
            return ops.equal(choice, op_index[op])

        scale_x = ops.cast(width, "float32") / self.reference_size
        scale_y = ops.cast(height, "float32") / self.reference_size
        translate = chosen("translate")
        shift_x = sample_pixel_shifts(batch_size, gen, *self.shift_pixels) * scale_x
        shift_y = sample_pixel_shifts(batch_size, gen, *self.shift_pixels) * scale_y
        angle = sample_step_angles(batch_size, gen, *self.rotation_degrees)
        return affine_matrices(
            height,
            width,
            rotation_deg=ops.where(chosen("rotate"), angle, 0.0),
            shift_x=ops.where(translate, shift_x, 0.0),
            shift_y=ops.where(translate, shift_y, 0.0),
            flip_x=chosen("mirror"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            operations=list(self.operations),
            shift_pixels=list(self.shift_pixels),
            rotation_degrees=list(self.rotation_degrees),
            reference_size=self.reference_size,
        )
        return config
