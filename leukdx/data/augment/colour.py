"""Stain and colour augmentation layers, and the colour-space maths they need.

Blood-smear sources differ in stain batch, scanner/camera, white balance and compression; a
classifier that learns a source's colour instead of its cells fails on the next source. These
layers perturb exactly those nuisances on float32 ``(B, H, W, 3)`` batches in ``[0, 255]``:

* :class:`RandomHEDJitter` — per-stain scale and bias in haematoxylin-eosin-DAB optical density
  (Tellez et al. 2019, "Quantifying the effects of data augmentation and stain color
  normalization in convolutional neural networks for computational pathology").
* :class:`RandStainNA` — per-image LAB mean/std drawn from the training sources' statistics
  (Shen et al. 2022, "RandStainNA"), fitted with :func:`lab_statistics` on a fold's training
  images only.
* :class:`RandomColorJitter` (brightness, contrast, saturation, hue), :class:`RandomGrayscale`,
  :class:`RandomBlurSharpen` and :class:`RandomJPEGQuality`.

Colour conversions use scikit-image's matrices and constants (``skimage.color.rgb2hed``,
``rgb2lab``) so a stain or LAB value measured with scikit-image means the same thing here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from leukdx.data.augment.base import StatelessRandomLayer, random_uniform

__all__ = [
    "LAB_STATISTICS_KEYS",
    "RandStainNA",
    "RandomBlurSharpen",
    "RandomColorJitter",
    "RandomGrayscale",
    "RandomHEDJitter",
    "RandomJPEGQuality",
    "gaussian_blur",
    "hed_jitter",
    "hed_to_rgb",
    "lab_statistics",
    "lab_to_rgb",
    "rgb_to_hed",
    "rgb_to_lab",
]

# Ruifrok & Johnston's H&E-DAB stain vectors, as in skimage.color.hed_from_rgb / rgb_from_hed.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float64
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Below this intensity (fraction of full scale) optical density is capped, as skimage does.
_OD_FLOOR = 1e-6
# sRGB (D65) <-> CIE XYZ and the D65 2-degree white point, as skimage.color.rgb2lab.
XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
     [0.019334, 0.119193, 0.950227]],
    np.float64,
)
RGB_FROM_XYZ = np.linalg.inv(XYZ_FROM_RGB)
D65_WHITE = np.array([0.95047, 1.0, 1.08883], np.float64)
# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)


def _matmul_channels(x, matrix: np.ndarray):
    """``x @ matrix`` over the last axis (pixels as row vectors)."""
    x = tf.cast(x, tf.float32)
    return tf.tensordot(x, tf.constant(matrix, tf.float32), axes=[[-1], [0]])


# --------------------------------------------------------------------------- colour maths


def rgb_to_hed(images):
    """Stain optical densities (natural log) of float RGB images in ``[0, 255]``.

    ``skimage.color.rgb2hed(x / 255)`` equals ``max(rgb_to_hed(x), 0) / -ln(1e-6)``: the same
    stain vectors, but in natural-log optical density (Tellez et al.'s unit) and without
    clipping negative values, so that :func:`hed_to_rgb` inverts it exactly.
    """
    rgb = tf.maximum(tf.cast(images, tf.float32) / 255.0, _OD_FLOOR)
    return _matmul_channels(-tf.math.log(rgb), HED_FROM_RGB)


def hed_to_rgb(stains):
    """Inverse of :func:`rgb_to_hed`: float RGB in ``[0, 255]``."""
    od = _matmul_channels(stains, RGB_FROM_HED)
    return tf.clip_by_value(255.0 * tf.exp(-od), 0.0, 255.0)


def hed_jitter(images, alpha, beta):
    """Scale and shift each stain's optical density: the map of :class:`RandomHEDJitter`.

    Args:
        images: float RGB ``(B, H, W, 3)`` in ``[0, 255]``.
        alpha: ``(B, 3)`` factors of the H, E and D optical densities.
        beta: ``(B, 3)`` shifts of the H, E and D optical densities (natural log).

    Returns:
        float32 RGB ``(B, H, W, 3)`` in ``[0, 255]``.

    Example:
        >>> darker_nuclei = hed_jitter(images, [[1.2, 1.0, 1.0]], [[0.0, 0.0, 0.0]])
    """
    alpha = tf.cast(alpha, tf.float32)
    beta = tf.cast(beta, tf.float32)
    return hed_to_rgb(rgb_to_hed(images) * _per_image(alpha) + _per_image(beta))


def rgb_to_lab(images):
    """CIE L*a*b* (D65) of float RGB images in ``[0, 255]``, as ``skimage.color.rgb2lab``."""
    rgb = tf.cast(images, tf.float32) / 255.0
    linear = tf.where(
        rgb > 0.04045, tf.pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4), rgb / 12.92
    )
    xyz = _matmul_channels(linear, XYZ_FROM_RGB.T) / tf.constant(D65_WHITE, tf.float32)
    f = tf.where(xyz > 0.008856, tf.pow(tf.maximum(xyz, 0.008856), 1.0 / 3.0),
                 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_rgb(lab):
    """Inverse of :func:`rgb_to_lab`: float RGB in ``[0, 255]`` (out-of-gamut clipped)."""
    lab = tf.cast(lab, tf.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = lab[..., 1] / 500.0 + fy
    fz = tf.maximum(fy - lab[..., 2] / 200.0, 0.0)
    f = tf.stack([fx, fy, fz], axis=-1)
    xyz = tf.where(f > 0.2068966, tf.pow(tf.maximum(f, 0.0), 3.0), (f - 16.0 / 116.0) / 7.787)
    linear = _matmul_channels(xyz * tf.constant(D65_WHITE, tf.float32), RGB_FROM_XYZ.T)
    rgb = tf.where(
        linear > 0.0031308,
        1.055 * tf.pow(tf.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055,
        linear * 12.92,
    )
    return tf.clip_by_value(rgb * 255.0, 0.0, 255.0)


def _luma(images):
    weights = tf.constant(LUMA, tf.float32)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def _per_image(values):
    """(B,) or (B, C) -> broadcastable against (B, H, W, C)."""
    values = tf.convert_to_tensor(values)
    if values.shape.rank == 1:
        return values[:, None, None, None]
    return values[:, None, None, :]


def _chosen(u, probability: float):
    """Boolean (B,) mask: this image gets the operation (probability ``probability``)."""
    return u < probability


def _keep_unchosen(mask, augmented, images):
    return tf.where(mask[:, None, None, None], augmented, images)


def _symmetric(u, bound):
    return (2.0 * u - 1.0) * bound


# --------------------------------------------------------------------------- layers


class _ProbabilityLayer(StatelessRandomLayer):
    """A random layer applied to each image with probability ``probability``."""

    def __init__(self, probability: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}.")
        self.probability = float(probability)

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability)
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class RandomHEDJitter(_ProbabilityLayer):
    """Stain jitter in haematoxylin-eosin-DAB optical-density space (Tellez et al. 2019).

    Each image is converted to stain optical densities (:func:`rgb_to_hed`); each stain channel
    ``c`` becomes ``alpha_c * od_c + beta_c`` with ``alpha_c`` uniform in
    ``[1 - scale, 1 + scale]`` and ``beta_c`` uniform in ``[-bias, bias]`` (natural-log OD),
    then converted back. ``scale = bias = 0`` is the identity. Tellez et al.'s "HED-light" is
    ``0.05 / 0.05``, "HED-strong" ``0.2 / 0.2``.

    Args:
        scale: relative range of each stain's multiplicative factor.
        bias: range of each stain's additive optical-density shift.
        probability: chance that an image is jittered.
        seed: seed of the layer's generator (when called without per-example seeds).

    Example:
        >>> layer = RandomHEDJitter(scale=0.05, bias=0.05)
    """

    def __init__(self, scale: float = 0.05, bias: float = 0.05, probability: float = 1.0,
                 seed: int | None = None, **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)
        if scale < 0 or bias < 0:
            raise ValueError(f"scale and bias must be non-negative, got {scale}, {bias}.")
        self.scale = float(scale)
        self.bias = float(bias)

    def augment(self, images, seeds):
        u = random_uniform(seeds, 7)
        alpha = 1.0 + _symmetric(u[:, 0:3], self.scale)
        beta = _symmetric(u[:, 3:6], self.bias)
        out = hed_jitter(images, alpha, beta)
        return _keep_unchosen(_chosen(u[:, 6], self.probability), out, images)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, bias=self.bias)
        return config


# RGB <-> YIQ (NTSC): a hue turn is a rotation of the (I, Q) chroma plane at constant luma Y.
_YIQ_FROM_RGB = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    np.float64,
)
_RGB_FROM_YIQ = np.linalg.inv(_YIQ_FROM_RGB)


@keras.saving.register_keras_serializable(package="leukdx")
class RandomColorJitter(_ProbabilityLayer):
    """Brightness, contrast, saturation and hue jitter, in that order, per image.

    All four are linear in RGB, so they are composed into one 3x3 matrix and offset per image
    and applied in a single pass (then clipped to ``[0, 255]``).

    Args:
        brightness: pixels are multiplied by a factor uniform in ``[1 - b, 1 + b]``.
        contrast: distances to the image's mean luma scaled by ``[1 - c, 1 + c]``.
        saturation: distances to each pixel's luma (grey) scaled by ``[1 - s, 1 + s]``.
        hue: hue turned by up to ``±hue`` turns (``0.5`` is half the colour circle), as a
            rotation of the YIQ chroma plane (luma unchanged).
        probability: chance that an image is jittered.
        seed: as for :class:`RandomHEDJitter`.
    """

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1,
                 hue: float = 0.02, probability: float = 1.0, seed: int | None = None,
                 **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)
        for name, value, high in (("brightness", brightness, 1.0), ("contrast", contrast, 1.0),
                                  ("saturation", saturation, 1.0), ("hue", hue, 0.5)):
            if not 0.0 <= value <= high:
                raise ValueError(f"{name} must be in [0, {high}], got {value}.")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)

    def augment(self, images, seeds):
        u = random_uniform(seeds, 5)
        b = 1.0 + _symmetric(u[:, 0], self.brightness)
        c = 1.0 + _symmetric(u[:, 1], self.contrast)
        s = 1.0 + _symmetric(u[:, 2], self.saturation)
        turn = _symmetric(u[:, 3], self.hue) * (2.0 * math.pi)
        luma = tf.constant(LUMA, tf.float32)
        eye = tf.eye(3, dtype=tf.float32)
        grey = tf.tile(luma[:, None], (1, 3))  # x @ grey = (luma, luma, luma)
        # Pixels as row vectors: x' = x @ M + offset. Brightness then contrast about the
        # brightened image's mean luma m: x' = c * b * x + (1 - c) * m.
        mean_luma = tf.reduce_mean(images * luma, axis=[1, 2, 3]) * 3.0  # (B,)
        offset = ((1.0 - c) * b * mean_luma)[:, None] * tf.ones((1, 3))
        m = (c * b)[:, None, None] * eye
        saturate = s[:, None, None] * eye + (1.0 - s)[:, None, None] * grey
        cos, sin = tf.cos(turn), tf.sin(turn)
        zeros, ones = tf.zeros_like(cos), tf.ones_like(cos)
        # rotation of (I, Q) for row vectors: [I, Q] @ [[cos, sin], [-sin, cos]]
        rotate = tf.stack([tf.stack([ones, zeros, zeros], -1),
                           tf.stack([zeros, cos, sin], -1),
                           tf.stack([zeros, -sin, cos], -1)], axis=1)
        to_yiq = tf.constant(_YIQ_FROM_RGB.T, tf.float32)
        from_yiq = tf.constant(_RGB_FROM_YIQ.T, tf.float32)
        hue = to_yiq @ rotate @ from_yiq
        matrix = m @ saturate @ hue
        offset = offset[:, None, :] @ saturate @ hue  # (B, 1, 3)
        out = tf.einsum("bhwc,bcd->bhwd", images, matrix) + offset[:, None, :, :]
        out = tf.clip_by_value(out, 0.0, 255.0)
        return _keep_unchosen(_chosen(u[:, 4], self.probability), out, images)

    def get_config(self):
        config = super().get_config()
        config.update(brightness=self.brightness, contrast=self.contrast,
                      saturation=self.saturation, hue=self.hue)
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class RandomGrayscale(_ProbabilityLayer):
    """Replace an image by its luma (BT.601) on all three channels, with ``probability``."""

    def __init__(self, probability: float = 0.2, seed: int | None = None, **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)

    def augment(self, images, seeds):
        u = random_uniform(seeds, 1)
        grey = tf.broadcast_to(_luma(images), tf.shape(images))
        return _keep_unchosen(_chosen(u[:, 0], self.probability), grey, images)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(images, sigma: float):
    """Separable Gaussian blur (reflect padding) of float ``(B, H, W, C)`` images."""
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    channels = images.shape[-1]
    x = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    k_rows = tf.constant(np.tile(kernel[:, None, None, None], (1, 1, channels, 1)))
    k_cols = tf.constant(np.tile(kernel[None, :, None, None], (1, 1, channels, 1)))
    x = tf.nn.depthwise_conv2d(x, k_rows, strides=[1, 1, 1, 1], padding="VALID")
    return tf.nn.depthwise_conv2d(x, k_cols, strides=[1, 1, 1, 1], padding="VALID")


@keras.saving.register_keras_serializable(package="leukdx")
class RandomBlurSharpen(_ProbabilityLayer):
    """Gaussian blur or unsharp-mask sharpening of random strength (focus and optics jitter).

    With ``g`` the image blurred by a Gaussian of ``sigma`` pixels, the output is
    ``x + t * (g - x)``, ``t`` uniform in ``[-sharpen, blur]``: ``t = 1`` is the full blur,
    ``0 < t < 1`` a lighter one, ``t < 0`` sharpens (unsharp mask of amount ``-t``).

    Args:
        blur: largest blur amount (``0`` never blurs; at most 1).
        sharpen: largest sharpening amount (``0`` never sharpens).
        sigma: Gaussian standard deviation in pixels.
        probability: chance that an image is changed.
        seed: as for :class:`RandomHEDJitter`.
    """

    def __init__(self, blur: float = 1.0, sharpen: float = 1.0, sigma: float = 1.0,
                 probability: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)
        if not 0.0 <= blur <= 1.0 or sharpen < 0 or sigma <= 0:
            raise ValueError(
                f"need 0 <= blur <= 1, sharpen >= 0, sigma > 0; got {blur}, {sharpen}, {sigma}."
            )
        self.blur = float(blur)
        self.sharpen = float(sharpen)
        self.sigma = float(sigma)

    def augment(self, images, seeds):
        u = random_uniform(seeds, 2)
        amount = -self.sharpen + (self.blur + self.sharpen) * u[:, 0]
        blurred = gaussian_blur(images, self.sigma)
        out = tf.clip_by_value(images + _per_image(amount) * (blurred - images), 0.0, 255.0)
        return _keep_unchosen(_chosen(u[:, 1], self.probability), out, images)

    def get_config(self):
        config = super().get_config()
        config.update(blur=self.blur, sharpen=self.sharpen, sigma=self.sigma)
        return config


@keras.saving.register_keras_serializable(package="leukdx")
class RandomJPEGQuality(_ProbabilityLayer):
    """Re-encode images as JPEG at a random quality (compression-artefact jitter).

    Runs TensorFlow's JPEG codec (CPU) image by image; pixels are rounded to uint8 first.

    Args:
        quality_range: ``(low, high)`` JPEG quality, ``1 <= low <= high <= 100``.
        probability: chance that an image is re-encoded.
        seed: as for :class:`RandomHEDJitter`.
    """

    def __init__(self, quality_range: Sequence[int] = (30, 95), probability: float = 0.5,
                 seed: int | None = None, **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)
        low, high = (int(v) for v in quality_range)
        if not 1 <= low <= high <= 100:
            raise ValueError(f"quality_range must satisfy 1 <= low <= high <= 100, got "
                             f"{quality_range}.")
        self.quality_range = (low, high)

    def augment(self, images, seeds):
        u = random_uniform(seeds, 2)
        low, high = self.quality_range
        quality = tf.cast(tf.minimum(low + tf.floor(u[:, 0] * (high - low + 1)), high), tf.int32)
        pixels = tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
        encoded = tf.map_fn(
            lambda args: tf.image.adjust_jpeg_quality(args[0], args[1]),
            (pixels, quality),
            fn_output_signature=tf.TensorSpec(images.shape[1:], tf.uint8),
        )
        out = tf.cast(encoded, tf.float32)
        return _keep_unchosen(_chosen(u[:, 1], self.probability), out, images)

    def get_config(self):
        config = super().get_config()
        config.update(quality_range=list(self.quality_range))
        return config


# --------------------------------------------------------------------------- RandStainNA

LAB_STATISTICS_KEYS = ("mean_mean", "mean_std", "std_mean", "std_std")


def lab_statistics(images: np.ndarray | Sequence[np.ndarray], max_side: int = 64) -> dict:
    """Distribution over images of each image's LAB channel means and standard deviations.

    The statistics RandStainNA samples from: for each image, the mean and standard deviation
    of L*, a* and b* over its pixels; then the mean and standard deviation of those per-image
    values over all images. Compute them from a fold's **training** images only.

    Args:
        images: uint8 RGB images, an ``(N, H, W, 3)`` array or a sequence of ``(H, W, 3)``
            arrays of any sizes.
        max_side: images are subsampled (every k-th pixel) to about this side first; the
            statistics barely change and large sets stay fast.

    Returns:
        ``{"mean_mean": [L, a, b], "mean_std": [...], "std_mean": [...], "std_std": [...]}``
        (plain floats, JSON/Keras-config friendly).

    Raises:
        ValueError: no images, or images that are not RGB.

    Example:
        >>> stats = lab_statistics(train_images)
        >>> layer = RandStainNA(statistics=stats)
    """
    from skimage.color import rgb2lab

    if len(images) == 0:
        raise ValueError("lab_statistics needs at least one training image.")
    means, stds = [], []
    for img in images:
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"images must be RGB (H, W, 3), got shape {img.shape}.")
        step = max(1, max(img.shape[:2]) // max_side)
        lab = rgb2lab(img[::step, ::step]).reshape(-1, 3)
        means.append(lab.mean(axis=0))
        stds.append(lab.std(axis=0))
    means, stds = np.array(means), np.array(stds)
    return {
        "mean_mean": means.mean(axis=0).tolist(),
        "mean_std": means.std(axis=0).tolist(),
        "std_mean": stds.mean(axis=0).tolist(),
        "std_std": stds.std(axis=0).tolist(),
    }


@keras.saving.register_keras_serializable(package="leukdx")
class RandStainNA(_ProbabilityLayer):
    """RandStainNA-style stain augmentation: each image gets a random, plausible LAB style.

    For each image and LAB channel, a target mean is drawn from ``N(mean_mean, mean_std)``
    and a target standard deviation from ``N(std_mean, std_std)`` (both spreads times
    ``spread``; the std is kept at least 10 % of ``std_mean``); the image's own channel
    mean/std are replaced by them (Reinhard transfer) and it is converted back to RGB. The
    statistics come from :func:`lab_statistics` on the training images: pass them, or leave
    ``statistics=None`` and let :func:`leukdx.data.augment.fit_augmentation` (called by
    :func:`leukdx.data.pipeline.make_dataset` on its training images) fit them.

    Args:
        statistics: the dict of :func:`lab_statistics`, or ``None`` to fit on training data.
        spread: multiplier of the sampling spreads (``0`` maps every image to the mean style).
        probability: chance that an image is transformed.
        seed: as for :class:`RandomHEDJitter`.
    """

    def __init__(self, statistics: Mapping | None = None, spread: float = 1.0,
                 probability: float = 1.0, seed: int | None = None, **kwargs):
        super().__init__(probability=probability, seed=seed, **kwargs)
        if spread < 0:
            raise ValueError(f"spread must be non-negative, got {spread}.")
        self.spread = float(spread)
        self.statistics = None
        self.fit_on_training = statistics is None
        if statistics is not None:
            self.set_statistics(statistics)

    def set_statistics(self, statistics: Mapping) -> None:
        """Use ``statistics`` (the dict of :func:`lab_statistics`) from now on."""
        missing = [k for k in LAB_STATISTICS_KEYS if k not in statistics]
        if missing:
            raise ValueError(
                f"RandStainNA statistics lack {', '.join(missing)}; compute them with "
                "leukdx.data.augment.lab_statistics(train_images)."
            )
        self.statistics = {
            k: [float(v) for v in np.asarray(statistics[k], np.float64).reshape(3)]
            for k in LAB_STATISTICS_KEYS
        }

    def adapt(self, images) -> None:
        """Fit the statistics on uint8 training images (see :func:`lab_statistics`)."""
        self.set_statistics(lab_statistics(images))

    def augment(self, images, seeds):
        if self.statistics is None:
            raise ValueError(
                "RandStainNA has no LAB statistics: fit it on the training images with "
                "leukdx.data.augment.fit_augmentation(augmentation, train_images) "
                "(make_dataset does this for augment.placement: pipeline)."
            )
        stats = {k: tf.constant(v, tf.float32) for k, v in self.statistics.items()}
        u = random_uniform(seeds, 7)
        z = tf.math.ndtri(tf.clip_by_value(u[:, :6], 1e-6, 1.0 - 1e-6))  # standard normal
        target_mean = stats["mean_mean"] + self.spread * stats["mean_std"] * z[:, 0:3]
        target_std = tf.maximum(stats["std_mean"] + self.spread * stats["std_std"] * z[:, 3:6],
                                0.1 * stats["std_mean"])
        lab = rgb_to_lab(images)
        mean = tf.reduce_mean(lab, axis=[1, 2], keepdims=True)
        std = tf.math.reduce_std(lab, axis=[1, 2], keepdims=True)
        lab = (lab - mean) / tf.maximum(std, 1e-3) * _per_image(target_std) + _per_image(
            target_mean
        )
        out = lab_to_rgb(lab)
        return _keep_unchosen(_chosen(u[:, 6], self.probability), out, images)

    def get_config(self):
        config = super().get_config()
        config.update(statistics=self.statistics, spread=self.spread)
        return config
