"""Any image file → RGB ``uint8`` array, and square resizing.

Everything goes through Pillow, not ``tf.io``: TensorFlow cannot decode TIFF (ALL-IDB2 is
TIFF), 16-bit or CMYK images. Pillow decodes JPEG, PNG, BMP, TIFF and GIF in every mode a
microscope or an export tool writes, and its JPEG *draft* mode decodes a 2592x1944 JPEG at
1/2, 1/4 or 1/8 scale directly from the DCT coefficients, which makes big slides cheap.

Mode conversion rules (:func:`to_rgb`):

* ``RGB`` is kept; ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and palette images
  without transparency are converted by Pillow.
* Images with an alpha channel (``RGBA``, ``LA``, ``PA``, palette with transparency) are
  **composited on white**: a blood smear's background is bright, so transparent margins become
  background instead of black artefacts. The alpha channel is then dropped.
* 16-bit images (``I;16*``) are scaled to 8 bits (``v * 255 / 65535``). 32-bit integer images
  (``I``) are treated as 8-bit when their maximum is at most 255, as 16-bit when at most 65535,
  and are otherwise scaled by their maximum. Float images (``F``) in [0, 1] are multiplied by
  255; others are clipped to [0, 255].
* Multi-frame files (TIFF pages, GIF) contribute their first frame. EXIF orientation is not
  applied (rotation carries no class information and the stored width/height stay the file's).

Example:
    >>> from leukdx.data.decode import load_image
    >>> img = load_image("slide.tif", 224, "stretch")   # (224, 224, 3) uint8
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from leukdx.errors import DataError

__all__ = [
    "ASPECTS",
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "is_image_file",
    "load_image",
    "load_preview",
    "load_tiles",
    "open_image",
    "read_image",
    "resize_image",
    "to_rgb",
]

# File extensions (lower case) that are treated as images; everything else in a source folder
# (MANIFEST.csv, readme files, .xyc annotations) is ignored.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif")

ASPECTS: tuple[str, ...] = ("stretch", "pad")

# Pillow filter for resizing. BICUBIC is antialiased in Pillow (its support widens with the
# reduction factor), and ``reducing_gap`` first box-reduces by an integer factor so a large
# reduction costs little more than a small one.
_RESAMPLE = Image.Resampling.BICUBIC
_REDUCING_GAP = 3.0

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class BadImageError(DataError):
    """A file cannot be decoded as an image.

    Args:
        path: the file.
        reason: what is wrong with it (empty, truncated, not an image, ...).

    The message names the file and the two ways forward: replace/remove it, or set
    ``data.on_bad_image: skip``.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"Cannot read image '{self.path}': {reason}. Replace or delete the file, or set "
            "data.on_bad_image: skip (--set data.on_bad_image=skip) to skip unreadable images."
        )

    def __reduce__(self):  # keep the two-argument constructor picklable (worker processes)
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file whose extension is an image extension (case-insensitive)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _describe(exc: BaseException) -> str:
    """A short human reason for a Pillow failure."""
    if isinstance(exc, UnidentifiedImageError):
        return "the content is not a recognised image format (wrong extension or not an image)"
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "truncated" in lowered or "broken data stream" in lowered or "premature end" in lowered:
        return f"the file is truncated or corrupt ({text})"
    return f"decoding failed ({type(exc).__name__}: {text})"


def open_image(source: str | os.PathLike | bytes, path: str | os.PathLike | None = None):
    """Open an image lazily (header only) and check it is not empty.

    Args:
        source: a path, or the file's bytes already read.
        path: the file name used in error messages when ``source`` is bytes.

    Returns:
        An unloaded :class:`PIL.Image.Image` (call ``.draft``/``.load`` next).

    Raises:
        BadImageError: 0-byte file, missing file, or content Pillow does not recognise.
    """
    name = path if path is not None else source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise BadImageError(name, "the file is empty (0 bytes)")
            return Image.open(io.BytesIO(source))
        if os.path.getsize(source) == 0:
            raise BadImageError(name, "the file is empty (0 bytes)")
        return Image.open(source)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(name, "the file does not exist") from None
    except Exception as exc:  # Pillow raises many types for bad headers
        raise BadImageError(name, _describe(exc)) from exc


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if mode.startswith("I;16"):
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        arr = arr.astype(np.float64)
        finite_max = float(np.nanmax(arr)) if arr.size else 0.0
        if finite_max <= 1.0:
            arr = arr * 255.0
        return np.clip(np.nan_to_num(arr), 0, 255).round().astype(np.uint8)
    # mode "I" (32-bit signed): guess the bit depth from the values
    arr = arr.astype(np.int64)
    top = int(arr.max()) if arr.size else 0
    arr = np.clip(arr, 0, None)
    if top <= 255:
        return arr.astype(np.uint8)
    if top <= 65535:
        return ((arr * 255 + 32767) // 65535).astype(np.uint8)
    return (arr * 255 // top).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded Pillow image of any mode to 8-bit RGB (rules in the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(im), mode)
        if gray.ndim == 3:  # multi-channel 16-bit modes are not produced by Pillow, but be safe
            gray = gray[..., 0]
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "1":
        im = im.convert("L")
    return im.convert("RGB")


def _decode(im: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Load pixels (first frame) and convert to RGB, turning Pillow errors into BadImageError."""
    try:
        im.load()
        return to_rgb(im)
    except BadImageError:
        raise
    except Exception as exc:
        raise BadImageError(path, _describe(exc)) from exc


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file at full resolution.

    Args:
        path: JPEG, PNG, BMP, TIFF or GIF file of any mode and bit depth.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB array.

    Raises:
        BadImageError: empty, truncated or non-image file (the message names it).
    """
    with open_image(path) as im:
        rgb = _decode(im, path)
        return np.asarray(rgb, dtype=np.uint8).copy()


def _target_size(width: int, height: int, size: int, aspect: str) -> tuple[int, int]:
    """Pixel size (w, h) the image is resized to before padding."""
    if aspect == "stretch":
        return size, size
    scale = size / max(width, height)
    return (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))


def _check_resize_args(size: int, aspect: str) -> None:
    if aspect not in ASPECTS:
        raise ValueError(f"aspect is {aspect!r}; choose one of {', '.join(ASPECTS)} (data.aspect).")
    if int(size) < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size!r}.")


def _resize_pil(im: Image.Image, size: int, aspect: str) -> np.ndarray:
    w, h = im.size
    tw, th = _target_size(w, h, size, aspect)
    if (w, h) != (tw, th):
        im = im.resize((tw, th), _RESAMPLE, reducing_gap=_REDUCING_GAP)
    arr = np.asarray(im, dtype=np.uint8)
    if aspect == "stretch":
        return arr.copy() if not arr.flags.writeable else arr
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - th) // 2, (size - tw) // 2
    out[top : top + th, left : left + tw] = arr
    return out


def resize_image(img: np.ndarray, size: int, aspect: str = "stretch") -> np.ndarray:
    """Resize an RGB image to a ``size`` x ``size`` square.

    Args:
        img: ``(H, W, 3)`` ``uint8`` array (``(H, W)`` grayscale is accepted too).
        size: side of the square in pixels.
        aspect: ``stretch`` scales each axis independently (as LeukNet and Loey et al. did);
            ``pad`` keeps the aspect ratio, scales the longer side to ``size`` and centres the
            image on zeros (black).

    Returns:
        ``(size, size, 3)`` ``uint8`` array.
    """
    _check_resize_args(size, aspect)
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"resize_image expects uint8 pixels, got {arr.dtype}; use read_image().")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"resize_image expects an (H, W, 3) array, got shape {arr.shape}.")
    return _resize_pil(Image.fromarray(arr, "RGB"), int(size), aspect)


def _draft(im: Image.Image, request: tuple[int, int], path: str | os.PathLike) -> None:
    """Let a JPEG decode at the smallest DCT scale that still gives ``request`` (w, h) pixels."""
    if im.format != "JPEG":
        return
    try:
        im.draft(im.mode, (max(1, request[0]), max(1, request[1])))
    except Exception as exc:
        raise BadImageError(path, _describe(exc)) from exc


def load_image(
    path: str | os.PathLike,
    size: int,
    aspect: str = "stretch",
    *,
    crop_fraction: float | None = None,
) -> np.ndarray:
    """Read and resize one image, decoding big JPEGs at reduced scale.

    For JPEG, Pillow's draft mode picks the largest DCT scale (1/2, 1/4, 1/8) that still
    leaves at least the target resolution, so a 2592x1944 slide resized to 224 px decodes at
    324x243 — about 30x less work — and the final resize still antialiases.

    Args:
        path: image file.
        size: side of the output square in pixels.
        aspect: ``stretch`` or ``pad`` (see :func:`resize_image`).
        crop_fraction: keep only the central ``crop_fraction`` of each side before resizing
            (:func:`leukdx.data.tiles.center_crop_box`; ``data.crop: center``); ``None`` keeps
            the whole image. The image keeps its label (see :mod:`leukdx.data.tiles`).

    Returns:
        ``(size, size, 3)`` ``uint8`` RGB array.

    Raises:
        BadImageError: empty, truncated or non-image file.

    Example:
        >>> load_image("Im001_1.jpg", 224, crop_fraction=0.25)   # central 648 x 486 pixels
    """
    _check_resize_args(size, aspect)
    size = int(size)
    with open_image(path) as im:
        width, height = im.size
        if crop_fraction is None:
            _draft(im, _target_size(width, height, size, aspect), path)
            rgb = _decode(im, path)
            return _resize_pil(rgb, size, aspect)
        from leukdx.data.tiles import center_crop_box

        top, left, bottom, right = center_crop_box(height, width, crop_fraction)
        crop_w, crop_h = _target_size(right - left, bottom - top, size, aspect)
        # the whole image must decode at a scale that leaves the crop at least its target size
        _draft(im, (math.ceil(crop_w * width / (right - left)),
                    math.ceil(crop_h * height / (bottom - top))), path)
        rgb = _decode(im, path)
        scale_x, scale_y = rgb.size[0] / width, rgb.size[1] / height
        box = _scaled_box(left, top, right, bottom, scale_x, scale_y)
        return _resize_pil(rgb.crop(box), size, aspect)


def load_tiles(
    path: str | os.PathLike, size: int, tile_px: int, stride_px: int | None = None
) -> np.ndarray:
    """Read an image and cut it into square tiles, each resized to ``size`` x ``size``.

    Tiles are laid out by :func:`leukdx.data.tiles.tile_boxes` in the file's own pixel
    coordinates (``tile_px`` original pixels per side). A JPEG is decoded in draft mode at the
    smallest scale that keeps each tile at least ``size`` pixels, so 256-px tiles of a 2592 px
    field resized to 64 px decode the field at 1/4 scale. A tile never inherits its image's
    label by itself: see :mod:`leukdx.data.tiles` for the label rule.

    Args:
        path: image file.
        size: side of each output tile in pixels.
        tile_px: tile side in original pixels (``data.tile.size_px``).
        stride_px: step between tiles in original pixels (``None``: ``tile_px``, no overlap).

    Returns:
        ``(T, size, size, 3)`` ``uint8`` array, tiles row by row.

    Raises:
        BadImageError: empty, truncated or non-image file.

    Example:
        >>> load_tiles("Im001_1.jpg", 96, 256).shape     # 2592 x 1944 field
        (88, 96, 96, 3)
    """
    from leukdx.data.tiles import tile_boxes

    _check_resize_args(size, "stretch")
    size = int(size)
    with open_image(path) as im:
        width, height = im.size
        boxes = tile_boxes(height, width, tile_px, stride_px)
        side = int(boxes[0, 2] - boxes[0, 0])
        _draft(im, (math.ceil(width * size / side), math.ceil(height * size / side)), path)
        rgb = _decode(im, path)
        scale_x, scale_y = rgb.size[0] / width, rgb.size[1] / height
        out = np.empty((len(boxes), size, size, 3), np.uint8)
        for i, (top, left, bottom, right) in enumerate(boxes):
            # crop first: a resize with ``box=`` would also sample pixels outside the tile
            out[i] = _resize_pil(rgb.crop(_scaled_box(left, top, right, bottom, scale_x, scale_y)),
                                 size, "stretch")
        return out


def _scaled_box(
    left: int, top: int, right: int, bottom: int, scale_x: float, scale_y: float
) -> tuple[int, int, int, int]:
    """An original-pixel box in the coordinates of a draft-decoded (smaller) image."""
    x0, y0 = round(left * scale_x), round(top * scale_y)
    return x0, y0, max(round(right * scale_x), x0 + 1), max(round(bottom * scale_y), y0 + 1)


def load_preview(
    source: str | os.PathLike | bytes, path: str | os.PathLike | None = None, min_side: int = 128
) -> tuple[Image.Image, str, int, int]:
    """Decode a grayscale preview cheaply and report the original format and size.

    Used by the collection scan: it proves the file decodes (a truncated JPEG still fails at
    reduced scale) and yields the picture the dHash is computed from. JPEGs are decoded in
    draft mode at the smallest DCT scale that keeps both sides at least ``min_side`` pixels
    (or the original size when smaller); other formats are decoded in full.

    Args:
        source: a path or the file's bytes.
        path: the file name for error messages when ``source`` is bytes.
        min_side: the preview's smaller side is at least this (unless the image is smaller).

    Returns:
        ``(preview, format, width, height)``: a loaded mode-``L`` Pillow image, Pillow's format
        name (``JPEG``, ``TIFF``, ``BMP``, ``PNG``, ``GIF``) and the original pixel size.

    Raises:
        BadImageError: empty, truncated or non-image file.
    """
    name = path if path is not None else source
    with open_image(source, name) as im:
        fmt = str(im.format or "unknown")
        width, height = im.size
        try:
            if fmt == "JPEG":
                im.draft("L", (min_side, min_side))
            im.load()
            # a copy: closing the file (end of `with`) invalidates the opened image itself
            gray = im.copy() if im.mode == "L" else to_rgb(im).convert("L")
        except Exception as exc:
            raise BadImageError(name, _describe(exc)) from exc
        return gray, fmt, int(width), int(height)
