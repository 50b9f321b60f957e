"""Training-time augmentation presets as Keras layers.

Every preset is a ``keras.Sequential`` of leukdx layers that takes a float32 batch
``(B, S, S, 3)`` with values in ``[0, 255]`` and returns a batch of the same shape, dtype and
range. It changes pixels only when called with ``training=True`` and is the identity at
inference, so the same object can sit in a ``tf.data`` map (``augment.placement: pipeline``) or
inside a model (``augment.placement: model``). The layers are registered Keras-serialisable
under the ``leukdx`` package, so a saved model that contains them loads again once this module
has been imported.

Determinism
    Every layer draws what it does to image ``i`` from a per-example seed pair with stateless
    random ops (:mod:`leukdx.data.augment.base`). :func:`leukdx.data.pipeline.make_dataset`
    derives the pairs from (run seed, epoch, example index) and calls
    :func:`apply_augmentation`, so the augmented stream is the same whatever the number of
    ``tf.data`` threads, the batch size or the machine: two trainings with the same seed see the
    same pixels. What is *not* covered: ``augment.placement: model`` draws seeds from each
    layer's ``keras.random.SeedGenerator`` (reproducible only single-threaded, in call order);
    on a GPU the training itself is not bitwise reproducible unless
    ``tf.config.experimental.enable_op_determinism()`` is on (cuDNN convolution and reduction
    kernels accumulate in varying order), and the GPU bilinear resampler of the affine layers
    may differ from the CPU one in the last bits. ``RandomJPEGQuality`` always runs on the CPU.

Presets (``build_augmentation(preset, image_size, seed, strength)``):

``leuknet`` (Vogado et al. 2021, §3.2)
    The paper used Keras' ``ImageDataGenerator`` with ``rotation_range=40``,
    ``width_shift_range=height_shift_range=0.2``, ``shear_range=0.2``, ``zoom_range=0.2``,
    horizontal and vertical flips and ``fill_mode="reflect"``. :class:`RandomAffine`
    reproduces that generator: the same parameter draws and the same composed affine map
    (rotation · shift · shear · zoom about the centre, then the flips), resampled once
    (bilinear, reflect fill); a test compares it with ``ImageDataGenerator.apply_transform``.
    In ``ImageDataGenerator`` ``shear_range`` is a shear *angle in degrees*, so the authors'
    0.2 means at most ±0.2° (under one pixel at 224 px); the preset keeps it to mirror what was
    run. Keras 3's ``RandomShear`` would read 0.2 as a 20 % shear, and chaining Keras 3's
    random layers resamples (and blurs) the image four times.

``loey`` (Loey et al. 2020, §3.1.1)
    Each augmented image undergoes **one** of three operations, chosen uniformly per image: a
    translation by 15–25 px along *both* axes (whole pixels, random sign per axis), a mirror
    about the vertical axis, or a rotation left or right by 25°, 30°, …, 125°. Pixel distances
    refer to the paper's 227×227 input and scale with the actual image. Uncovered areas are
    black, the default fill of MATLAB (R2018a), which the authors used.

``stain``
    Colour and stain only: :class:`RandomHEDJitter` (Tellez et al. 2019 "HED-light", scale
    and bias ±0.05) then :class:`RandomColorJitter` (brightness, contrast, saturation ±10 %,
    hue ±0.02 turn).

``leuknet_stain``
    ``leuknet``'s affine map followed by ``stain``.

``generalise``
    Strong, for cross-source generalisation: exact flips and quarter turns, random resized
    crop / zoom-out (sampling scale 0.6–1.5), HED jitter ±0.1, colour jitter (±15 %, hue
    ±0.03), grayscale with probability 0.2, blur or sharpening (half the images), JPEG
    re-encoding at quality 30–95 (half the images).

``randstainna``
    Flips and quarter turns, then :class:`RandStainNA` with statistics fitted on the training
    images of the fold (:func:`fit_augmentation`).

``none``
    No augmentation (``build_augmentation`` returns ``None``).

``strength`` (``augment.strength``) scales every magnitude of ``stain``, ``leuknet_stain``,
``generalise`` and ``randstainna`` (``2`` doubles them; ``0`` makes ``stain`` the identity and
leaves only the exact flips and quarter turns of ``generalise`` and ``randstainna``); the paper
presets ``leuknet`` and ``loey`` ignore it.

Example:
    >>> import numpy as np
    >>> from leukdx.data.augment import apply_augmentation, build_augmentation
    >>> aug = build_augmentation("generalise", image_size=64, seed=0)
    >>> batch = np.full((2, 64, 64, 3), 128, np.float32)
    >>> aug(batch, training=True).shape
    TensorShape([2, 64, 64, 3])
    >>> seeds = np.array([[7, 0], [7, 1]])              # same seeds, same output
    >>> out = apply_augmentation(aug, batch, seeds)
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from leukdx.data.augment.base import StatelessRandomLayer, fold_in
from leukdx.data.augment.colour import (
    LAB_STATISTICS_KEYS,
    RandomBlurSharpen,
    RandomColorJitter,
    RandomGrayscale,
    RandomHEDJitter,
    RandomJPEGQuality,
    RandStainNA,
    gaussian_blur,
    hed_jitter,
    hed_to_rgb,
    lab_statistics,
    lab_to_rgb,
    rgb_to_hed,
    rgb_to_lab,
)
from leukdx.data.augment.geometry import (
    LOEY_OPERATIONS,
    LOEY_REFERENCE_SIZE,
    LoeyAugmentation,
    RandomAffine,
    RandomFlipRot90,
    RandomResizedCrop,
    affine_matrices,
    apply_affine,
    idg_affine_matrices,
    sample_pixel_shifts,
    sample_step_angles,
)

__all__ = [
    "LAB_STATISTICS_KEYS",
    "LEUKNET_AFFINE",
    "LOEY_OPERATIONS",
    "LOEY_REFERENCE_SIZE",
    "LoeyAugmentation",
    "RandStainNA",
    "RandomAffine",
    "RandomBlurSharpen",
    "RandomColorJitter",
    "RandomFlipRot90",
    "RandomGrayscale",
    "RandomHEDJitter",
    "RandomJPEGQuality",
    "RandomResizedCrop",
    "StatelessRandomLayer",
    "affine_matrices",
    "apply_affine",
    "apply_augmentation",
    "augmentation_layers",
    "build_augmentation",
    "example_seeds",
    "fit_augmentation",
    "gaussian_blur",
    "hed_jitter",
    "hed_to_rgb",
    "idg_affine_matrices",
    "lab_statistics",
    "lab_to_rgb",
    "list_augmentations",
    "register_augmentation",
    "rgb_to_hed",
    "rgb_to_lab",
    "sample_pixel_shifts",
    "sample_step_angles",
]

_PRESETS: dict[str, Callable[..., keras.Sequential]] = {}


def register_augmentation(name: str) -> Callable:
    """Register a preset factory ``f(image_size, seed[, strength]) -> keras.Sequential``.

    Example:
        >>> @register_augmentation("flip_only")
        ... def _flip(image_size, seed, strength=1.0):
        ...     return keras.Sequential([RandomFlipRot90(seed=seed)])
    """

    def decorator(factory: Callable[..., keras.Sequential]) -> Callable:
        if name in _PRESETS or name == "none":
            raise ValueError(f"Augmentation preset '{name}' is already registered.")
        _PRESETS[name] = factory
        return factory

    return decorator


def list_augmentations() -> list[str]:
    """Names accepted by :func:`build_augmentation` (``none`` included)."""
    return sorted([*_PRESETS, "none"])


def build_augmentation(
    preset: str, image_size: int, seed: int | None = None, strength: float = 1.0
) -> keras.Sequential | None:
    """Build an augmentation preset for ``(B, image_size, image_size, 3)`` float32 batches.

    Args:
        preset: a registered preset name (see :func:`list_augmentations`) or ``none``.
        image_size: square side in pixels of the batches it will see.
        seed: seed of the layers' generators, used when the preset is called without
            per-example seeds (inside a model); ``None`` draws a random one.
        strength: ``augment.strength``, multiplier of the magnitudes of the non-paper presets.

    Returns:
        A ``keras.Sequential`` (random only when called with ``training=True``), or ``None``
        for ``none``.

    Raises:
        ValueError: unknown preset (the message lists the registered ones), bad image size or
            negative strength.
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
    if strength < 0:
        raise ValueError(f"augment.strength must be non-negative, got {strength}.")
    factory = _PRESETS[preset]
    if len(inspect.signature(factory).parameters) >= 3:
        model = factory(int(image_size), seed, float(strength))
    else:
        model = factory(int(image_size), seed)
    model.build((None, int(image_size), int(image_size), 3))
    return model


def augmentation_layers(augmentation) -> list[keras.layers.Layer]:
    """The layers of a preset in call order (nested ``Sequential`` models flattened)."""
    if augmentation is None:
        return []
    if isinstance(augmentation, keras.Sequential):
        out: list[keras.layers.Layer] = []
        for layer in augmentation.layers:
            out.extend(augmentation_layers(layer))
        return out
    return [augmentation]


def apply_augmentation(augmentation, images, seeds):
    """Augment a float32 batch with per-example seeds (deterministic; the tf.data path).

    Each leukdx layer gets its own stream (the seeds folded with its position), so image ``i``
    is transformed the same way whenever it comes with the same ``seeds[i]``. Layers that
    take no seeds (e.g. Keras' own random layers) are called as usual and draw from their
    stateful generators; a warning says the result is then not reproducible.

    Args:
        augmentation: a preset (``keras.Sequential``), a single layer, or ``None``.
        images: float32 ``(B, H, W, 3)`` in ``[0, 255]``.
        seeds: ``(B, 2)`` integer tensor, e.g. from :func:`example_seeds`.

    Returns:
        The augmented batch (the input itself when ``augmentation`` is ``None``).
    """
    x = images
    layers = augmentation_layers(augmentation)
    # One hash of the example seeds, then (hash, layer position) per layer: cheap and distinct.
    mixed = fold_in(seeds, 0)[:, :1] if layers else None
    for position, layer in enumerate(layers):
        if isinstance(layer, StatelessRandomLayer):
            salt = ops.full_like(mixed, position + 1)
            x = layer(x, training=True, seeds=ops.concatenate([mixed, salt], axis=1))
        else:
            warnings.warn(
                f"Augmentation layer '{layer.name}' ({type(layer).__name__}) draws from a "
                "stateful generator: its output is not reproducible across runs and thread "
                "counts; use the leukdx layers of leukdx.data.augment.",
                stacklevel=2,
            )
            x = layer(x, training=True)
    return x


def fit_augmentation(augmentation, images) -> int:
    """Fit data-dependent layers (``RandStainNA`` without given statistics) on ``images``.

    Call it with a fold's **training** images only (``make_dataset`` does, for the pipeline
    placement); refitting replaces earlier statistics.

    Args:
        augmentation: a preset, a layer or ``None``.
        images: uint8 ``(N, H, W, 3)`` training images.

    Returns:
        The number of layers fitted.
    """
    fitted = 0
    for layer in augmentation_layers(augmentation):
        if getattr(layer, "fit_on_training", False):
            layer.adapt(images)
            fitted += 1
    return fitted


def example_seeds(seed: int, epoch: int, indices) -> np.ndarray:
    """Per-example seed pairs ``(seed, epoch * 2**32 + index)`` as an int64 ``(B, 2)`` array.

    The stateless seeds of offline augmentation (:mod:`leukdx.data.offline`): one pair per
    (run seed, pass, example), the same on every machine.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    if (indices < 0).any() or (indices >= 2**32).any() or epoch < 0:
        raise ValueError("example indices must lie in [0, 2**32) and epoch must be >= 0.")
    return np.stack(
        [np.full(len(indices), int(seed), np.int64), int(epoch) * 2**32 + indices], axis=1
    )


# --------------------------------------------------------------------------- presets

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


def _layer_seed(seed: int | None, position: int) -> int | None:
    return None if seed is None else int(seed) + 1_000_003 * position


@register_augmentation("leuknet")
def _leuknet(image_size: int, seed: int | None) -> keras.Sequential:
    return keras.Sequential(
        [RandomAffine(**LEUKNET_AFFINE, seed=seed, name="leuknet_affine")],
        name="augment_leuknet",
    )


@register_augmentation("loey")
def _loey(image_size: int, seed: int | None) -> keras.Sequential:
    return keras.Sequential([LoeyAugmentation(seed=seed, name="loey_ops")], name="augment_loey")


def _stain_layers(seed: int | None, strength: float, first: int = 0) -> list:
    s = strength
    return [
        RandomHEDJitter(scale=0.05 * s, bias=0.05 * s, seed=_layer_seed(seed, first),
                        name="hed_jitter"),
        RandomColorJitter(brightness=min(1.0, 0.1 * s), contrast=min(1.0, 0.1 * s),
                          saturation=min(1.0, 0.1 * s), hue=min(0.5, 0.02 * s),
                          seed=_layer_seed(seed, first + 1), name="colour_jitter"),
    ]


@register_augmentation("stain")
def _stain(image_size: int, seed: int | None, strength: float = 1.0) -> keras.Sequential:
    return keras.Sequential(_stain_layers(seed, strength), name="augment_stain")


@register_augmentation("leuknet_stain")
def _leuknet_stain(image_size: int, seed: int | None, strength: float = 1.0):
    return keras.Sequential(
        [RandomAffine(**LEUKNET_AFFINE, seed=seed, name="leuknet_affine"),
         *_stain_layers(seed, strength, first=1)],
        name="augment_leuknet_stain",
    )


@register_augmentation("generalise")
def _generalise(image_size: int, seed: int | None, strength: float = 1.0):
    s = strength
    # Blur radius follows the image: 1 px at 224 px is a light defocus at any input size.
    sigma = max(0.5, image_size / 224.0)
    return keras.Sequential(
        [
            RandomFlipRot90(seed=_layer_seed(seed, 0), name="flip_rot90"),
            RandomResizedCrop(scale_range=(max(0.2, 1.0 - 0.4 * s), 1.0 + 0.5 * s),
                              aspect_jitter=0.1 * s, seed=_layer_seed(seed, 1),
                              name="resized_crop"),
            RandomHEDJitter(scale=0.1 * s, bias=0.1 * s, seed=_layer_seed(seed, 2),
                            name="hed_jitter"),
            RandomColorJitter(brightness=min(1.0, 0.15 * s), contrast=min(1.0, 0.15 * s),
                              saturation=min(1.0, 0.15 * s), hue=min(0.5, 0.03 * s),
                              seed=_layer_seed(seed, 3), name="colour_jitter"),
            RandomGrayscale(probability=min(1.0, 0.2 * s), seed=_layer_seed(seed, 4),
                            name="grayscale"),
            RandomBlurSharpen(blur=min(1.0, s), sharpen=s, sigma=sigma,
                              probability=min(1.0, 0.5 * s), seed=_layer_seed(seed, 5),
                              name="blur_sharpen"),
            RandomJPEGQuality(quality_range=(max(5, round(95 - 65 * s)), 95),
                              probability=min(1.0, 0.5 * s), seed=_layer_seed(seed, 6),
                              name="jpeg_quality"),
        ],
        name="augment_generalise",
    )


@register_augmentation("randstainna")
def _randstainna(image_size: int, seed: int | None, strength: float = 1.0):
    return keras.Sequential(
        [RandomFlipRot90(seed=_layer_seed(seed, 0), name="flip_rot90"),
         RandStainNA(spread=strength, seed=_layer_seed(seed, 1), name="randstainna")],
        name="augment_randstainna",
    )
