"""Test-time augmentation: P(leukaemia) averaged over flips and rotations by 90 degrees.

A blood smear has no preferred orientation, so the eight symmetries of the square (the
dihedral group: identity, three rotations by 90 degrees, four mirrors) show the network the
same cells. :func:`predict_proba_tta` averages a model's probabilities over the first ``n``
of :data:`DIHEDRAL_TRANSFORMS`, in this order:

==  ==============================  ==
0   identity                        n = 1 is a plain prediction
1   mirror left-right
2   mirror top-bottom
3   rotate 180
4   rotate 90 (counter-clockwise)
5   rotate 270
6   transpose (mirror about the main diagonal)
7   anti-transpose
==  ==============================  ==

``n = 2`` and ``n = 4`` are the flips alone (they keep non-square images' shape); ``n = 8``
averages over the whole group, which makes the prediction exactly invariant to flipping or
rotating the input by 90 degrees.

``evaluate.tta: n`` asks for it in evaluation, ``leukdx predict --tta n`` on the command line.

Example:
    >>> import numpy as np
    >>> from leukdx.tta import dihedral_transform
    >>> img = np.arange(4).reshape(1, 2, 2, 1)
    >>> dihedral_transform(img, 4)[0, :, :, 0].tolist()
    [[1, 3], [0, 2]]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "DIHEDRAL_TRANSFORMS",
    "MAX_TTA",
    "check_tta",
    "dihedral_transform",
    "predict_proba_tta",
    "tta_average",
]

DIHEDRAL_TRANSFORMS = (
    "identity", "flip_lr", "flip_ud", "rot180", "rot90", "rot270", "transpose", "antitranspose",
)
MAX_TTA = len(DIHEDRAL_TRANSFORMS)


def check_tta(n: int) -> int:
    """``n`` as an int, or a ValueError naming ``evaluate.tta`` / ``--tta`` when out of 1–8."""
    if isinstance(n, bool) or int(n) != n or not 1 <= int(n) <= MAX_TTA:
        raise ValueError(
            f"evaluate.tta / --tta is {n!r}; give how many of the {MAX_TTA} flips/rotations to "
            f"average, from 1 (plain prediction) to {MAX_TTA}."
        )
    return int(n)


def dihedral_transform(images, index: int):
    """Transform ``index`` (see :data:`DIHEDRAL_TRANSFORMS`) of a ``(B, H, W, C)`` batch.

    Takes a NumPy array (returns a view) or a TensorFlow tensor (for graphs such as an
    exported SavedModel's TTA signature).
    """
    if isinstance(images, np.ndarray):
        flip, transpose = np.flip, _transpose_numpy
    else:
        flip, transpose = _flip_tf, _transpose_tf
    name = DIHEDRAL_TRANSFORMS[index]
    if name == "identity":
        return images
    if name == "flip_lr":
        return flip(images, axis=2)
    if name == "flip_ud":
        return flip(images, axis=1)
    if name == "rot180":
        return flip(images, axis=(1, 2))
    if name == "rot90":  # counter-clockwise: transpose, then mirror top-bottom
        return flip(transpose(images), axis=1)
    if name == "rot270":
        return flip(transpose(images), axis=2)
    if name == "transpose":
        return transpose(images)
    return flip(transpose(images), axis=(1, 2))  # anti-transpose


def _transpose_numpy(images):
    return np.transpose(images, (0, 2, 1, 3))


def _flip_tf(images, axis):
    import tensorflow as tf

    return tf.reverse(images, axis=[int(a) for a in np.atleast_1d(axis)])


def _transpose_tf(images):
    import tensorflow as tf

    return tf.transpose(images, perm=[0, 2, 1, 3])


def tta_average(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                n: int) -> np.ndarray:
    """Average ``predict`` over the first ``n`` dihedral transforms of ``images``.

    Args:
        predict: maps a ``(B, H, W, 3)`` batch to ``(B,)`` probabilities (any model format,
            e.g. :meth:`leukdx.predict.Predictor.predict`).
        images: the batch.
        n: transforms to average (1 = ``predict(images)``).

    Returns:
        float64 ``(B,)`` mean probabilities.

    Raises:
        ValueError: ``n`` outside 1–8, or a rotation asked of non-square images.
    """
    n = check_tta(n)
    images = np.asarray(images)
    if n > 4 and images.shape[1] != images.shape[2]:
        raise ValueError(
            f"TTA with {n} > 4 transforms rotates by 90 degrees, which needs square images; "
            f"got {images.shape[1]}x{images.shape[2]}. Use --tta 4 or less."
        )
    total = np.zeros(len(images), dtype=np.float64)
    for index in range(n):
        view = np.ascontiguousarray(dihedral_transform(images, index))
        total += np.asarray(predict(view), dtype=np.float64).reshape(-1)
    return total / n


def predict_proba_tta(model, images: np.ndarray, n: int = 1, batch_size: int = 32) -> np.ndarray:
    """P(leukaemia) of a Keras model averaged over ``n`` flips/rotations of each image.

    Args:
        model: a leukdx model (float32 [0, 255] images in, (B, 1) sigmoid out).
        images: ``(N, S, S, 3)`` uint8 or float images.
        n: transforms to average, 1–8 (1 = :func:`leukdx.train.predict_proba`).
        batch_size: images per forward pass.

    Returns:
        float64 ``(N,)`` probabilities.

    Example:
        >>> probs = predict_proba_tta(model, test_images, n=8)
    """
    from leukdx.train import predict_proba

    return tta_average(lambda batch: predict_proba(model, batch, batch_size=batch_size),
                       images, n)
