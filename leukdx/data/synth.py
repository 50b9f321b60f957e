"""Procedural blood-smear images for demos and tests, with a built-in cross-dataset gap.

:func:`synthesize_collection` writes a small collection (``OUT/<source>/<healthy|leukemia>/``,
the ``folders`` layout of :mod:`leukdx.data.records`) of fields of view drawn with NumPy:

* pale red blood cells with a lighter central pallor fill the background plasma;
* a **healthy** field has one or two normal white blood cells — a neutrophil (3–4 small
  lobes, coarse chromatin), a lymphocyte (small round dense nucleus, thin cytoplasm rim) or a
  monocyte (large kidney-shaped nucleus) — and a few platelets;
* a **leukaemia** field has two to five **blasts**: large cells whose round nucleus fills most
  of the cell (high nucleus/cytoplasm ratio), with fine, even chromatin and one to three pale
  nucleoli, and fewer red cells (anaemia).

Each source is a different "laboratory": stain hue, plasma colour, cell magnification,
illumination fall-off, blur, sensor noise and file format (PNG, JPEG, BMP, TIFF) differ, and
from four sources on, the fourth source holds healthy images only, like BCCD or PBC. A model
that learns a source's colour instead of cell morphology therefore does well within a source
and worse on a held-out one, which is what a leave-one-dataset-out demo should show.

Everything is drawn from ``numpy.random.default_rng`` seeded per image with
``(seed, source, class, index)``, and the encoders are deterministic, so the same arguments
write byte-identical files.

Example:
    >>> from leukdx.data.synth import synthesize_collection
    >>> root = synthesize_collection("demo_data", sources=3, per_class=20, seed=0)
    >>> sorted(p.name for p in root.iterdir() if p.is_dir())
    ['source_1', 'source_2', 'source_3']
"""

from __future__ import annotations

import colorsys
import io
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from leukdx.errors import OutputExistsError

__all__ = [
    "CLASS_FOLDERS",
    "SourceStyle",
    "render_smear",
    "source_styles",
    "synthesize_collection",
]

CLASS_FOLDERS = ("healthy", "leukemia")  # index = label

_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}

# Reference stain palette (RGB) before a source's hue shift, loosely after May-Grünwald-Giemsa.
_RBC = (214, 128, 128)
_RBC_PALLOR = (234, 186, 180)
_NEUTROPHIL_CYTO = (222, 196, 214)
_LYMPHO_CYTO = (168, 190, 228)
_MONO_CYTO = (196, 190, 214)
_BLAST_CYTO = (160, 172, 222)
_NUCLEUS_DENSE = (84, 36, 122)  # mature nuclei: dark, clumped chromatin
_NUCLEUS_BLAST = (112, 62, 152)  # blast nuclei: a little lighter, finely dispersed chromatin
_NUCLEOLUS = (168, 132, 196)
_PLATELET = (120, 70, 150)


@dataclass(frozen=True)
class SourceStyle:
    """How one synthetic source ("laboratory") renders and stores its images.

    Attributes:
        name: source folder name.
        file_format: Pillow format: ``PNG``, ``JPEG``, ``BMP`` or ``TIFF``.
        hue_shift: stain hue rotation in degrees applied to every cell colour.
        saturation: stain saturation multiplier.
        background: plasma (background) RGB colour.
        cell_scale: magnification: red-cell radius as a fraction of the image side / 0.055.
        blur: Gaussian blur radius in pixels at 128 px (scales with the image size).
        noise: sensor noise standard deviation (grey levels).
        vignette: brightness lost at the corners (0 = flat illumination).
        healthy_only: the source has no leukaemia images.
    """

    name: str
    file_format: str
    hue_shift: float
    saturation: float
    background: tuple[int, int, int]
    cell_scale: float
    blur: float
    noise: float
    vignette: float
    healthy_only: bool = False

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.file_format]


# Four hand-made laboratories; more sources are seeded variations of these.
_BASE_STYLES = (
    dict(file_format="PNG", hue_shift=0.0, saturation=1.0, background=(238, 226, 224),
         cell_scale=1.0, blur=0.6, noise=3.0, vignette=0.04),
    dict(file_format="JPEG", hue_shift=28.0, saturation=0.85, background=(222, 228, 240),
         cell_scale=0.8, blur=1.0, noise=5.0, vignette=0.12),
    dict(file_format="BMP", hue_shift=-22.0, saturation=1.2, background=(241, 233, 204),
         cell_scale=1.25, blur=0.3, noise=2.0, vignette=0.0),
    dict(file_format="TIFF", hue_shift=12.0, saturation=0.7, background=(232, 218, 232),
         cell_scale=1.1, blur=0.8, noise=4.0, vignette=0.08, healthy_only=True),
)


def source_styles(n: int, seed: int = 0) -> list[SourceStyle]:
    """The styles of ``n`` synthetic sources named ``source_1`` … ``source_n``.

    Sources 1–4 use fixed, clearly different styles (source 4 is healthy-only); sources beyond
    four perturb them with a generator seeded by ``seed``.
    """
    if n < 1:
        raise ValueError(f"sources must be at least 1, got {n}.")
    styles = []
    for i in range(n):
        base = dict(_BASE_STYLES[i % len(_BASE_STYLES)])
        if i >= len(_BASE_STYLES):
            rng = np.random.default_rng([seed, i, 7])
            base["hue_shift"] += float(rng.uniform(-15, 15))
            base["saturation"] *= float(rng.uniform(0.85, 1.15))
            base["background"] = tuple(
                int(np.clip(c + rng.integers(-10, 11), 190, 250)) for c in base["background"]
            )
            base["cell_scale"] *= float(rng.uniform(0.9, 1.1))
            base["healthy_only"] = False
        styles.append(SourceStyle(name=f"source_{i + 1}", **base))
    return styles


# --------------------------------------------------------------------------- colour


def _stain(rgb: tuple[int, int, int], style: SourceStyle) -> np.ndarray:
    """A palette colour after the source's hue rotation and saturation change."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + style.hue_shift / 360.0) % 1.0
    s = min(1.0, s * style.saturation)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255.0


# --------------------------------------------------------------------------- drawing


class _Canvas:
    """Float RGB image with soft-edged, alpha-composited shapes drawn on local patches."""

    def __init__(self, size: int, background: np.ndarray):
        self.size = size
        self.img = np.empty((size, size, 3), np.float32)
        self.img[:] = background

    def _patch(self, cy: float, cx: float, radius: float):
        r = int(np.ceil(radius)) + 2
        y0, y1 = max(0, int(cy) - r), min(self.size, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(self.size, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return (slice(y0, y1), slice(x0, x1)), yy - cy, xx - cx

    def ellipse(self, cy, cx, ry, rx, angle, colour, *, pallor=None, texture=None, alpha=1.0):
        """Draw an ellipse; ``pallor`` = (colour, strength) lightens its centre;
        ``texture`` = (rng, amplitude, grain) adds chromatin-like mottling."""
        found = self._patch(cy, cx, max(ry, rx))
        if found is None:
            return
        (sy, sx), dy, dx = found
        c, s = np.cos(angle), np.sin(angle)
        u = (dx * c + dy * s) / rx
        v = (-dx * s + dy * c) / ry
        dist = np.sqrt(u * u + v * v)  # 1 on the outline
        edge = 1.0 / max(min(rx, ry), 1.0)  # about one pixel of antialiasing
        cover = np.clip((1.0 - dist) / edge + 0.5, 0.0, 1.0)[..., None] * alpha
        fill = np.broadcast_to(np.asarray(colour, np.float32), cover.shape[:2] + (3,)).copy()
        if pallor is not None:
            pallor_colour, strength = pallor
            weight = (strength * np.exp(-((dist / 0.55) ** 2)))[..., None]
            fill = fill * (1 - weight) + np.asarray(pallor_colour, np.float32) * weight
        if texture is not None:
            rng, amplitude, grain = texture
            h, w = fill.shape[:2]
            coarse = rng.normal(0.0, amplitude, (h // grain + 1, w // grain + 1))
            mottle = np.kron(coarse, np.ones((grain, grain)))[:h, :w].astype(np.float32)
            fill = fill + mottle[..., None]
        region = self.img[sy, sx]
        self.img[sy, sx] = region * (1 - cover) + fill * cover


def _red_cells(canvas: _Canvas, rng, r_rbc: float, density: float, style: SourceStyle):
    colour, pallor = _stain(_RBC, style), _stain(_RBC_PALLOR, style)
    size = canvas.size
    n = int(density * size * size / (np.pi * r_rbc**2))
    for _ in range(n):
        r = r_rbc * rng.uniform(0.85, 1.15)
        canvas.ellipse(
            rng.uniform(-r, size + r), rng.uniform(-r, size + r),
            r * rng.uniform(0.9, 1.0), r, rng.uniform(0, np.pi),
            colour * rng.uniform(0.95, 1.05), pallor=(pallor, rng.uniform(0.5, 0.8)),
            alpha=0.92,
        )


def _platelets(canvas: _Canvas, rng, r_rbc: float, count: int, style: SourceStyle):
    colour = _stain(_PLATELET, style)
    for _ in range(count):
        r = r_rbc * rng.uniform(0.15, 0.25)
        canvas.ellipse(rng.uniform(0, canvas.size), rng.uniform(0, canvas.size), r, r * 1.3,
                       rng.uniform(0, np.pi), colour, alpha=0.85)


def _white_cell(canvas: _Canvas, rng, kind: str, cy: float, cx: float, r_rbc: float,
                style: SourceStyle):
    """One white blood cell of ``kind`` (neutrophil, lymphocyte, monocyte, blast)."""
    dense = _stain(_NUCLEUS_DENSE, style)
    if kind == "neutrophil":
        radius = r_rbc * rng.uniform(1.45, 1.7)
        canvas.ellipse(cy, cx, radius, radius, 0.0, _stain(_NEUTROPHIL_CYTO, style))
        lobes = int(rng.integers(3, 5))
        start = rng.uniform(0, 2 * np.pi)
        for k in range(lobes):
            a = start + k * 2 * np.pi / lobes * 0.8
            lr = radius * rng.uniform(0.24, 0.3)
            canvas.ellipse(cy + 0.42 * radius * np.sin(a), cx + 0.42 * radius * np.cos(a),
                           lr, lr * 1.25, a, dense, texture=(rng, 14.0, 2))
    elif kind == "lymphocyte":
        radius = r_rbc * rng.uniform(1.0, 1.2)
        canvas.ellipse(cy, cx, radius, radius, 0.0, _stain(_LYMPHO_CYTO, style))
        nr = radius * rng.uniform(0.78, 0.85)
        off = radius - nr
        canvas.ellipse(cy + rng.uniform(-off, off), cx + rng.uniform(-off, off), nr, nr * 1.05,
                       rng.uniform(0, np.pi), dense * 0.95, texture=(rng, 12.0, 2))
    elif kind == "monocyte":
        radius = r_rbc * rng.uniform(1.7, 2.0)
        canvas.ellipse(cy, cx, radius, radius * 1.08, rng.uniform(0, np.pi),
                       _stain(_MONO_CYTO, style))
        nr = radius * 0.6
        a = rng.uniform(0, 2 * np.pi)
        lighter = dense * 0.8 + 255 * 0.2
        canvas.ellipse(cy, cx, nr, nr * 1.25, a, lighter, texture=(rng, 10.0, 3))
        # the indentation that makes the nucleus kidney-shaped
        canvas.ellipse(cy + 0.55 * nr * np.sin(a), cx + 0.55 * nr * np.cos(a), nr * 0.45,
                       nr * 0.45, 0.0, _stain(_MONO_CYTO, style))
    elif kind == "blast":
        radius = r_rbc * rng.uniform(1.6, 2.2)
        canvas.ellipse(cy, cx, radius, radius * rng.uniform(0.95, 1.1), rng.uniform(0, np.pi),
                       _stain(_BLAST_CYTO, style))
        nr = radius * rng.uniform(0.84, 0.92)  # high nucleus/cytoplasm ratio
        canvas.ellipse(cy, cx, nr, nr * rng.uniform(0.92, 1.05), rng.uniform(0, np.pi),
                       _stain(_NUCLEUS_BLAST, style), texture=(rng, 5.0, 1))  # fine chromatin
        for _ in range(int(rng.integers(1, 4))):
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5 * nr)
            nl = nr * rng.uniform(0.1, 0.16)
            canvas.ellipse(cy + d * np.sin(a), cx + d * np.cos(a), nl, nl, 0.0,
                           _stain(_NUCLEOLUS, style), alpha=0.8)
    else:  # pragma: no cover - internal
        raise ValueError(kind)


def _positions(rng, count: int, size: int, spacing: float) -> list[tuple[float, float]]:
    """Cell centres inside the field, kept ``spacing`` apart when possible."""
    margin = min(spacing * 0.6, size * 0.3)
    placed: list[tuple[float, float]] = []
    for _ in range(count):
        for _attempt in range(30):
            y, x = rng.uniform(margin, size - margin, 2)
            if all((y - py) ** 2 + (x - px) ** 2 >= spacing**2 for py, px in placed):
                break
        placed.append((y, x))
    return placed


def render_smear(
    rng: np.random.Generator, style: SourceStyle, leukemia: bool, image_size: int = 128
) -> np.ndarray:
    """Draw one field of view.

    Args:
        rng: random generator (the image is a pure function of its state).
        style: the source's rendering style.
        leukemia: draw blasts (``True``) or normal white cells (``False``).
        image_size: side of the square image in pixels.

    Returns:
        ``(image_size, image_size, 3)`` uint8 RGB array (before file encoding).
    """
    size = int(image_size)
    if size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    r_rbc = 0.055 * size * style.cell_scale
    background = np.asarray(style.background, np.float32) * rng.uniform(0.97, 1.03)
    canvas = _Canvas(size, np.clip(background, 0, 255))
    _red_cells(canvas, rng, r_rbc, density=0.30 if leukemia else 0.42, style=style)
    _platelets(canvas, rng, r_rbc, int(rng.integers(0, 5)), style)
    if leukemia:
        kinds = ["blast"] * int(rng.integers(2, 6))
        if rng.uniform() < 0.3:
            kinds.append("lymphocyte")
    else:
        kinds = list(rng.choice(["neutrophil", "lymphocyte", "monocyte"],
                                size=1 if rng.uniform() < 0.7 else 2, p=[0.55, 0.3, 0.15]))
    for kind, (cy, cx) in zip(kinds, _positions(rng, len(kinds), size, spacing=3.6 * r_rbc)):
        _white_cell(canvas, rng, str(kind), cy, cx, r_rbc, style)

    img = canvas.img
    if style.vignette:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        rad2 = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size**2 / 2)
        img = img * (1.0 - style.vignette * rad2)[..., None]
    img = img + rng.normal(0.0, style.noise, img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    blur = style.blur * size / 128.0
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(out)


# --------------------------------------------------------------------------- files


def _encode(img: np.ndarray, file_format: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 90} if file_format == "JPEG" else {}
    Image.fromarray(img).save(buffer, format=file_format, **options)
    return buffer.getvalue()


def _readme(styles: list[SourceStyle], per_class: int, seed: int, image_size: int) -> str:
    lines = [
        "# Synthetic blood-smear collection (leukdx)",
        "",
        "Procedurally drawn fields of view, not real patients: for demos and tests only.",
        f"Generated by leukdx.data.synth.synthesize_collection(sources={len(styles)}, "
        f"per_class={per_class}, seed={seed}, image_size={image_size}).",
        "",
        "Layout: <source>/<healthy|leukemia>/smear-NNNN.<ext> (the folders layout).",
        "healthy: red cells, platelets and one or two normal white cells (neutrophil,",
        "lymphocyte, monocyte). leukemia: two to five blasts (large round nuclei filling most",
        "of the cell, fine chromatin, nucleoli) and fewer red cells.",
        "Each source differs in stain hue, plasma colour, magnification, blur, noise,",
        "illumination and file format, so models can overfit to the source.",
        "",
        "| source | format | images (healthy/leukemia) | hue shift | cell scale | blur | noise |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for s in styles:
        n_leuk = 0 if s.healthy_only else per_class
        lines.append(
            f"| {s.name} | {s.file_format} | {per_class}/{n_leuk} | {s.hue_shift:+.0f} | "
            f"{s.cell_scale:.2f} | {s.blur:.1f} | {s.noise:.1f} |"
        )
    return "\n".join(lines) + "\n"


def synthesize_collection(
    out: str | os.PathLike,
    sources: int = 3,
    per_class: int = 40,
    seed: int = 0,
    image_size: int = 128,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic multi-source collection.

    Args:
        out: output folder (created); it must be empty or absent unless ``overwrite``.
        sources: number of sources (``source_1`` …); from 4 on, ``source_4`` is healthy-only.
        per_class: images per class and source.
        seed: master seed; the same arguments write byte-identical files.
        image_size: side of the square images in pixels.
        overwrite: write into a non-empty folder, first removing the ``source_<n>``
            folders of an earlier synthetic collection there (other files are kept).

    Returns:
        The collection folder, ready for ``load_collection``.

    Raises:
        ValueError: bad counts or sizes (checked before anything is written).
        OutputExistsError: ``out`` holds files and ``overwrite`` is false, or is a file.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}.")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputExistsError(f"'{root}' exists and is not a folder; choose another output.")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"'{root}' is not empty. Choose an empty or new folder, or add --overwrite "
            "(overwrite=True) to replace the synthetic collection there."
        )
    styles = source_styles(sources, seed)
    root.mkdir(parents=True, exist_ok=True)
    if overwrite:  # drop every source of an earlier synthetic collection, even a larger one
        for old in root.iterdir():
            if old.is_dir() and re.fullmatch(r"source_\d+", old.name):
                shutil.rmtree(old)
    for s_index, style in enumerate(styles):
        source_dir = root / style.name
        for label, folder in enumerate(CLASS_FOLDERS):
            if label == 1 and style.healthy_only:
                continue
            class_dir = source_dir / folder
            class_dir.mkdir(parents=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, s_index, label, i])
                img = render_smear(rng, style, bool(label), image_size)
                (class_dir / f"smear-{i:04d}{style.extension}").write_bytes(
                    _encode(img, style.file_format)
                )
    (root / "README.md").write_text(_readme(styles, per_class, seed, image_size))
    return root
