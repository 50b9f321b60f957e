"""Stain normalisation: map every image's colours onto a reference fitted on training images.

Sources differ in stain, microscope and camera, so a model trained on some sources sees
another source's colours for the first time at test. Normalising each image to one reference
removes part of that shift. Two methods (``data.stain_normalize``):

``reinhard``
    Reinhard et al. (2001): each image's CIE-LAB channels are standardised and rescaled to the
    reference mean and standard deviation. Colour conversions are scikit-image's
    (:func:`skimage.color.rgb2lab` / :func:`~skimage.color.lab2rgb`, sRGB, D65). The reference
    is the mean over images of each image's LAB means and standard deviations (averaged per
    source first when sources are given, so a large source does not outvote a small one).
``macenko``
    Macenko et al. (2009): optical density is unmixed into two stains (for Romanowsky/Giemsa
    smears, the basic "haematoxylin-like" and the acidic eosin component); each image's stain
    concentrations are rescaled to the reference's 99th percentiles and recomposed with the
    reference stain matrix. The maths is torchstain's NumPy backend
    (:class:`torchstain.numpy.normalizers.NumpyMacenkoNormalizer`); the reference is fitted on
    pixels sampled from all training images (equally many per source when sources are given).
    An image with too few stained pixels to estimate its own stains (a blank field) is kept
    unchanged.

**The reference must come from training images only.** A reference that has seen the test
source leaks its colour statistics into training, so the reference is fitted per fold from the
fold's training images (:func:`normalize_fold`) and never from the whole collection.

Normalisation runs on the decoded, resized ``uint8`` arrays (after any crop, before
augmentation), once per image and reference: :meth:`leukdx.data.pipeline.ImageCache.get`
takes ``stain=reference`` and caches the result keyed by the reference's fingerprint.

**Not part of exported models.** The SavedModel/TFLite exports take raw images and do not
normalise stain; a model trained with ``data.stain_normalize`` other than ``none`` expects
callers to apply :func:`normalize_images` with the training reference first (save it with
:meth:`StainReference.save` next to the model; :meth:`StainReference.load` reads it back).

Example:
    >>> ref = fit_stain_reference(train_images, "reinhard", sources=train_records["source"])
    >>> test_normalised = normalize_images(test_images, ref)
    >>> train_n, test_n, ref = normalize_fold(train_images, test_images, "macenko")
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "STAIN_METHODS",
    "StainReference",
    "fit_stain_reference",
    "normalize_fold",
    "normalize_images",
]

log = logging.getLogger(__name__)

STAIN_METHODS: tuple[str, ...] = ("none", "reinhard", "macenko")

# Macenko parameters (torchstain's defaults, from the original paper's code): transmitted
# light intensity, optical-density threshold below which a pixel counts as background, and the
# angle percentile that picks the two extreme stain vectors.
_MACENKO_IO = 240
_MACENKO_BETA = 0.15
_MACENKO_ALPHA = 1
# Percentile of each channel taken as the image's background (white point): Macenko assumes the
# background transmits ``Io``, but ALL-IDB's is ~170, not 240, so each image is first scaled
# per channel to put its white point at ``Io`` (as staintools' luminosity standardiser does).
_WHITE_PERCENTILE = 99
# An image needs this many stained pixels to estimate its own stain matrix.
_MACENKO_MIN_STAINED = 64
# Pixels sampled per training image (and in total) to fit a Macenko reference.
_MACENKO_FIT_PIXELS_PER_IMAGE = 4096
_MACENKO_FIT_MAX_PIXELS = 2_000_000
# Images converted to LAB at once (bounds float64 memory to ~chunk * H * W * 24 bytes).
_CHUNK = 64
_STD_FLOOR = 1e-6


@dataclass(frozen=True)
class StainReference:
    """The target a stain normalisation maps images onto.

    Attributes:
        method: ``reinhard`` or ``macenko``.
        values: ``reinhard``: ``lab_mean`` and ``lab_std`` (3 values each, L in [0, 100]);
            ``macenko``: ``stain_matrix`` (3 x 2 optical-density vectors),
            ``max_concentrations`` (2 values) and ``white_point`` (background RGB).
        n_images: training images the reference was fitted on.
        sources: training sources it was fitted on (empty when not given).

    Example:
        >>> ref = fit_stain_reference(images, "reinhard")
        >>> ref.fingerprint[:12]
        '3f1c0e9ab2d4'
    """

    method: str
    values: dict[str, np.ndarray]
    n_images: int = 0
    sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fingerprint(self) -> str:
        """sha1 hex of the method and values (rounded): the cache key of normalised images."""
        digest = hashlib.sha1(self.method.encode())
        for name in sorted(self.values):
            digest.update(name.encode())
            digest.update(np.round(np.asarray(self.values[name], np.float64), 6).tobytes())
        return digest.hexdigest()

    def to_dict(self) -> dict:
        """Plain data (JSON-ready)."""
        return {
            "method": self.method,
            "values": {k: np.asarray(v).tolist() for k, v in self.values.items()},
            "n_images": int(self.n_images),
            "sources": list(self.sources),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, data: dict) -> StainReference:
        """Inverse of :meth:`to_dict`."""
        method = str(data.get("method", ""))
        _check_method(method, allow_none=False)
        return cls(
            method=method,
            values={k: np.asarray(v, np.float64) for k, v in dict(data["values"]).items()},
            n_images=int(data.get("n_images", 0)),
            sources=tuple(data.get("sources", ())),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the reference as JSON (e.g. ``stain_reference.json`` beside a model)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> StainReference:
        """Read a reference written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_method(method: str, *, allow_none: bool = True) -> None:
    allowed = STAIN_METHODS if allow_none else STAIN_METHODS[1:]
    if method not in allowed:
        raise ValueError(
            f"Stain normalisation method is {method!r}; choose one of {', '.join(allowed)} "
            "(data.stain_normalize)."
        )


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 RGB images of shape (N, H, W, 3) (as ImageCache.get returns), "
            f"got {arr.dtype} {arr.shape}."
        )
    return arr


def _source_weights(n: int, sources: Sequence[str] | None) -> np.ndarray:
    """Per-image weights summing to 1, equal per source when ``sources`` is given."""
    if sources is None:
        return np.full(n, 1.0 / n)
    names = np.asarray([str(s) for s in sources])
    if len(names) != n:
        raise ValueError(f"{n} images but {len(names)} source names; pass one per image.")
    unique, inverse, counts = np.unique(names, return_inverse=True, return_counts=True)
    return 1.0 / (len(unique) * counts[inverse])


# --------------------------------------------------------------------------- Reinhard


def _to_lab(images: np.ndarray) -> np.ndarray:
    """CIE-LAB of ``uint8`` RGB images in float32 (2-3x faster than skimage's float64 default)."""
    from skimage.color import rgb2lab

    return rgb2lab(images.astype(np.float32) / np.float32(255.0))


def _lab_stats(images: np.ndarray, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-image LAB means and standard deviations, ``(N, 3)`` each (every ``step``-th pixel)."""
    means = np.empty((len(images), 3))
    stds = np.empty((len(images), 3))
    for start in range(0, len(images), _CHUNK):
        lab = _to_lab(images[start : start + _CHUNK, ::step, ::step]).astype(np.float64)
        means[start : start + _CHUNK] = lab.mean(axis=(1, 2))
        stds[start : start + _CHUNK] = lab.std(axis=(1, 2))
    return means, stds


def _fit_reinhard(images: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    # every second pixel each way: the statistics barely move and the fit is 4x cheaper
    means, stds = _lab_stats(images, step=2 if min(images.shape[1:3]) >= 64 else 1)
    return {"lab_mean": weights @ means, "lab_std": weights @ stds}


def _normalize_reinhard(images: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    from skimage.color import lab2rgb

    target_mean = np.asarray(values["lab_mean"], np.float32)
    target_std = np.asarray(values["lab_std"], np.float32)
    lab = _to_lab(images)
    mean = lab.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    std = np.maximum(lab.std(axis=(1, 2), keepdims=True, dtype=np.float64), _STD_FLOOR)
    lab = (lab - mean) / std.astype(np.float32) * target_std + target_mean
    with warnings.catch_warnings():
        # out-of-gamut colours are expected after rescaling; lab2rgb clips them
        warnings.simplefilter("ignore", UserWarning)
        rgb = lab2rgb(lab)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- Macenko


def _white_point(img: np.ndarray) -> np.ndarray:
    """Per-channel background level of one image (its 99th percentile, at least 1)."""
    flat = img.reshape(-1, 3)
    return np.maximum(np.percentile(flat, _WHITE_PERCENTILE, axis=0), 1.0)


def _to_standard_white(img: np.ndarray) -> np.ndarray:
    """``img`` scaled per channel so its white point is ``Io`` (float64)."""
    return np.clip(img.astype(np.float64) * (_MACENKO_IO / _white_point(img)), 0.0, 255.0)


def _stained_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels whose optical density reaches the threshold in every channel (torchstain's rule)."""
    od = -np.log((pixels.astype(np.float64) + 1.0) / _MACENKO_IO)
    return ~np.any(od < _MACENKO_BETA, axis=-1)


def _macenko_normalizer():
    """torchstain's NumPy Macenko normalizer, with a faster least-squares solve.

    torchstain unmixes the stains with ``np.linalg.lstsq(HE, Y)`` over every pixel, which
    takes ~30 ms for a 64 x 64 image (LAPACK's SVD solver per call); for the full-rank 3 x 2
    stain matrix the pseudo-inverse gives the same least-squares solution (to 1e-15) about
    200x faster. Everything else is torchstain's.
    """
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    class _FastMacenko(NumpyMacenkoNormalizer):
        # overrides torchstain's private (name-mangled) ``__find_concentration``
        def _NumpyMacenkoNormalizer__find_concentration(self, OD, HE):  # noqa: N802, N803
            return np.linalg.pinv(HE) @ np.reshape(OD, (-1, 3)).T

    return _FastMacenko()


def _fit_macenko(
    images: np.ndarray, sources: Sequence[str] | None, seed: int
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, h, w, _ = images.shape
    weights = _source_weights(n, sources)
    # pixels per image: the per-source balance of the weights, capped in total
    budget = min(_MACENKO_FIT_MAX_PIXELS, n * _MACENKO_FIT_PIXELS_PER_IMAGE)
    per_image = np.maximum(1, np.round(weights * budget)).astype(int)
    samples = []
    whites = np.empty((n, 3))
    for i, (img, count) in enumerate(zip(images, per_image)):
        whites[i] = _white_point(img)
        flat = _to_standard_white(img).reshape(-1, 3)
        # all pixels, background included, as torchstain's own fit on one image uses them
        # (the stain vectors come from the stained ones, the 99th-percentile concentrations
        # from all); a random subset when the image has more than its share
        if count < len(flat):
            flat = flat[rng.choice(len(flat), int(count), replace=False)]
        samples.append(flat)
    pixels = np.concatenate(samples)
    if int(_stained_mask(pixels).sum()) < _MACENKO_MIN_STAINED:
        raise ValueError(
            "Cannot fit a Macenko stain reference: the training images have almost no stained "
            "pixels (all background). Use data.stain_normalize: reinhard or none."
        )
    pixels = pixels[:, None, :]
    normalizer = _macenko_normalizer()
    normalizer.fit(pixels, Io=_MACENKO_IO, alpha=_MACENKO_ALPHA, beta=_MACENKO_BETA)
    return {
        "stain_matrix": np.asarray(normalizer.HERef, np.float64),
        "max_concentrations": np.asarray(normalizer.maxCRef, np.float64),
        "white_point": weights @ whites,
    }


def _normalize_macenko(images: np.ndarray, values: dict[str, np.ndarray]) -> np.ndarray:
    normalizer = _macenko_normalizer()
    normalizer.HERef = np.asarray(values["stain_matrix"], np.float64)
    normalizer.maxCRef = np.asarray(values["max_concentrations"], np.float64)
    # back from the standard white to the reference's background colour
    white_scale = np.asarray(values["white_point"], np.float64) / _MACENKO_IO
    out = images.copy()
    kept = 0
    for i, img in enumerate(images):
        standard = _to_standard_white(img)
        if int(_stained_mask(standard).sum()) < _MACENKO_MIN_STAINED:
            kept += 1  # no stain to estimate: keep the image as it is
            continue
        with np.errstate(all="ignore"):
            try:
                result, _, _ = normalizer.normalize(
                    standard, Io=_MACENKO_IO, alpha=_MACENKO_ALPHA, beta=_MACENKO_BETA, stains=False
                )
            except np.linalg.LinAlgError:
                kept += 1
                continue
        out[i] = np.clip(np.rint(result * white_scale), 0, 255).astype(np.uint8)
    if kept:
        log.info("Macenko: kept %d of %d image(s) unchanged (too few stained pixels)",
                 kept, len(images))
    return out


# --------------------------------------------------------------------------- public API


def fit_stain_reference(
    images: np.ndarray,
    method: str,
    *,
    sources: Sequence[str] | None = None,
    seed: int = 0,
) -> StainReference:
    """Fit a stain reference on (training) images only.

    Args:
        images: ``(N, H, W, 3)`` ``uint8`` training images of one fold. Nothing else is looked
            at, so passing only training images keeps the test source out of the reference.
        method: ``reinhard`` or ``macenko``.
        sources: source name per image; when given each source weighs the same in the
            reference, however many images it has.
        seed: seed of the Macenko pixel sample.

    Returns:
        The fitted :class:`StainReference`.

    Raises:
        ValueError: unknown method, bad image array, no images, or (Macenko) no stained pixels.

    Example:
        >>> ref = fit_stain_reference(train_images, "reinhard", sources=train_records["source"])
    """
    _check_method(method, allow_none=False)
    images = _check_images(images, "Stain reference images")
    if len(images) == 0:
        raise ValueError("Cannot fit a stain reference on zero images; pass the training images.")
    if method == "reinhard":
        values = _fit_reinhard(images, _source_weights(len(images), sources))
    else:
        values = _fit_macenko(images, sources, seed)
    names = tuple(sorted({str(s) for s in sources})) if sources is not None else ()
    return StainReference(method=method, values=values, n_images=len(images), sources=names)


def normalize_images(
    images: np.ndarray, reference: StainReference | None, *, workers: int = 1
) -> np.ndarray:
    """Images with their stain mapped onto ``reference``.

    Args:
        images: ``(N, H, W, 3)`` (or one ``(H, W, 3)``) ``uint8`` RGB images.
        reference: from :func:`fit_stain_reference`; ``None`` returns the images unchanged.
        workers: threads working on chunks of images at once (NumPy releases the GIL).

    Returns:
        A new ``uint8`` array of the input's shape.

    Example:
        >>> test_n = normalize_images(test_images, ref)
    """
    if reference is None:
        return np.array(images, copy=True)
    single = np.asarray(images).ndim == 3
    arr = _check_images(images, "Images to normalise")
    if len(arr) == 0:
        return arr.copy()
    _check_method(reference.method, allow_none=False)
    work = _normalize_reinhard if reference.method == "reinhard" else _normalize_macenko
    chunks = [arr[i : i + _CHUNK] for i in range(0, len(arr), _CHUNK)]
    if workers <= 1 or len(chunks) == 1:
        parts = [work(chunk, reference.values) for chunk in chunks]
    else:
        with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            parts = list(pool.map(lambda chunk: work(chunk, reference.values), chunks))
    out = np.concatenate(parts)
    return out[0] if single else out


def normalize_fold(
    train_images: np.ndarray,
    test_images: np.ndarray,
    method: str,
    *,
    train_sources: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, StainReference | None]:
    """Normalise one fold: fit the reference on its training images, apply it to both sets.

    Args:
        train_images: ``(N, H, W, 3)`` ``uint8`` training images (the only input to the fit).
        test_images: ``(M, H, W, 3)`` ``uint8`` test images (normalised, never looked at for
            the reference).
        method: ``none``, ``reinhard`` or ``macenko`` (``data.stain_normalize``).
        train_sources: source per training image (equal weight per source).
        seed: seed of the Macenko pixel sample.

    Returns:
        ``(train, test, reference)``; with ``none`` the inputs (copied) and ``None``.

    Example:
        >>> train_n, test_n, ref = normalize_fold(x_train, x_test, "reinhard")
    """
    _check_method(method)
    if method == "none":
        return np.array(train_images, copy=True), np.array(test_images, copy=True), None
    reference = fit_stain_reference(train_images, method, sources=train_sources, seed=seed)
    return (
        normalize_images(train_images, reference),
        normalize_images(test_images, reference),
        reference,
    )
