"""Tests of leukdx.data.decode: every mode to RGB uint8, resizing, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from leukdx.data.decode import (
    BadImageError,
    is_image_file,
    load_image,
    load_preview,
    load_tiles,
    read_image,
    resize_image,
)
from leukdx.data.tiles import center_crop, tile_image

# ----------------------------------------------------------------------------- modes


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) % 256], -1).astype(
        np.uint8
    )


def _assert_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _gradient()[..., 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(path)
    out = read_image(path)
    _assert_rgb(out, gray.shape)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., :3] = (200, 10, 30)
    rgba[:, :6, 3] = 255  # left half opaque, right half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = read_image(path)
    _assert_rgb(out, (10, 12))
    np.testing.assert_array_equal(out[:, :6], np.broadcast_to([200, 10, 30], (10, 6, 3)))
    np.testing.assert_array_equal(out[:, 6:], np.full((10, 6, 3), 255))


def test_gray_alpha_is_composited_on_white(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 40
    la[:4, :, 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out = read_image(path)
    assert (out[:4] == 40).all() and (out[4:] == 255).all()


def test_palette_image_keeps_its_colours(tmp_path):
    rgb = _gradient()
    pal = Image.fromarray(rgb).quantize(colors=16)
    path = tmp_path / "palette.png"
    pal.save(path)
    out = read_image(path)
    _assert_rgb(out, rgb.shape[:2])
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 3, 6))  # left half index 1 (blue), right half index 0 (red)
    path = tmp_path / "transparent.gif"
    pal.save(path, transparency=0)
    out = read_image(path)
    np.testing.assert_array_equal(out[:, :3], np.broadcast_to([0, 0, 255], (6, 3, 3)))
    np.testing.assert_array_equal(out[:, 3:], np.full((6, 3, 3), 255))


@pytest.mark.parametrize("ext", ["jpg", "tif"])
def test_cmyk_becomes_rgb(tmp_path, ext):
    cmyk = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    path = tmp_path / f"cmyk.{ext}"
    cmyk.save(path)
    out = read_image(path)
    _assert_rgb(out, (12, 16))
    red = out.reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 50 and red[2] < 50


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path, ext):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    path = tmp_path / f"deep.{ext}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    _assert_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_float_image_in_unit_range_is_scaled(tmp_path):
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out[0, :, 1], [0, 128, 255])


def test_bilevel_image_becomes_black_and_white(tmp_path):
    bits = np.zeros((4, 8), bool)
    bits[:, 4:] = True
    path = tmp_path / "bits.bmp"
    Image.fromarray(bits).save(path)
    out = read_image(path)
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


@pytest.mark.parametrize("ext", ["png", "bmp", "tif", "gif"])
def test_lossless_formats_round_trip_exactly(tmp_path, ext):
    rgb = _gradient()
    if ext == "gif":  # GIF stores a palette: use few colours so it stays exact
        rgb = (rgb // 128 * 255).astype(np.uint8)
    path = tmp_path / f"img.{ext}"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(read_image(path), rgb)


# ----------------------------------------------------------------------------- resizing


def _halves(h: int, w: int) -> np.ndarray:
    """Left half red, right half blue."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[:, w // 2 :] = (0, 0, 255)
    return img


def test_stretch_fills_the_square():
    out = resize_image(_halves(40, 80), 32, "stretch")
    _assert_rgb(out, (32, 32))
    assert (out[:, :14, 0] > 240).all() and (out[:, :14, 2] < 15).all()
    assert (out[:, 18:, 2] > 240).all() and (out[:, 18:, 0] < 15).all()


def test_pad_keeps_aspect_and_centres_on_zeros():
    out = resize_image(_halves(40, 80), 32, "pad")
    _assert_rgb(out, (32, 32))
    # 80x40 scaled by 32/80 -> 32x16, centred: rows 8..23 hold the picture
    assert (out[:8] == 0).all() and (out[24:] == 0).all()
    assert (out[8:24, :14, 0] > 240).all() and (out[8:24, 18:, 2] > 240).all()


def test_pad_of_a_tall_image_pads_left_and_right():
    img = np.full((60, 20, 3), 255, np.uint8)
    out = resize_image(img, 30, "pad")
    cols = np.nonzero(out.max(axis=(0, 2)))[0]
    assert cols.min() == 10 and cols.max() == 19
    assert (out[:, 10:20] == 255).all()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    size=st.integers(1, 48),
    aspect=st.sampled_from(["stretch", "pad"]),
)
def test_resize_of_white_image_shape_and_footprint(h, w, size, aspect):
    out = resize_image(np.full((h, w, 3), 255, np.uint8), size, aspect)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    white = out[..., 0] > 127
    if aspect == "stretch":
        assert white.all()
    else:
        rows, cols = np.nonzero(white)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert max(height, width) == size  # the longer side fills the square
        # the picture is centred (at most one pixel off because of odd margins)
        assert abs(rows.min() - (size - 1 - rows.max())) <= 1
        assert abs(cols.min() - (size - 1 - cols.max())) <= 1
        # and keeps the aspect ratio: each side is the scaled side rounded (at least 1 pixel)
        scale = size / max(h, w)
        assert abs(width - w * scale) <= 0.5 or width == 1
        assert abs(height - h * scale) <= 0.5 or height == 1


def test_resize_image_accepts_grayscale_array():
    out = resize_image(np.full((10, 10), 7, np.uint8), 5)
    assert out.shape == (5, 5, 3) and (out == 7).all()


def test_resize_image_rejects_bad_arguments():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="aspect"):
        resize_image(img, 8, "crop")
    with pytest.raises(ValueError, match="uint8"):
        resize_image(img.astype(np.float32), 8)


def test_load_image_of_big_jpeg_matches_full_decode(tmp_path):
    # a smooth 1600x1200 picture: draft decoding at 1/4 scale must look like the full decode
    yy, xx = np.mgrid[0:1200, 0:1600]
    img = np.stack([xx * 255 // 1599, yy * 255 // 1199, np.full_like(xx, 128)], -1)
    path = tmp_path / "big.jpg"
    Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    for aspect in ("stretch", "pad"):
        fast = load_image(path, 64, aspect)
        reference = resize_image(read_image(path), 64, aspect)
        _assert_rgb(fast, (64, 64))
        assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 3


def test_load_image_of_small_png_equals_resize_of_read(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(_gradient(30, 50)).save(path)
    np.testing.assert_array_equal(
        load_image(path, 20, "pad"), resize_image(read_image(path), 20, "pad")
    )


def _big_gradient_jpeg(path: Path) -> Path:
    """A smooth 1600x1200 JPEG whose colour tells the position (x in red, y in green)."""
    yy, xx = np.mgrid[0:1200, 0:1600]
    img = np.stack([xx * 255 // 1599, yy * 255 // 1199, (xx // 8 + yy // 8) % 64 + 96], -1)
    Image.fromarray(img.astype(np.uint8)).save(path, quality=95)
    return path


def test_centre_crop_of_small_png_equals_resize_of_the_cropped_read(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(_gradient(30, 50)).save(path)
    for aspect in ("stretch", "pad"):
        np.testing.assert_array_equal(
            load_image(path, 16, aspect, crop_fraction=0.5),
            resize_image(center_crop(read_image(path), 0.5), 16, aspect),
        )


def test_centre_crop_of_big_jpeg_decodes_at_reduced_scale_like_the_full_decode(tmp_path):
    path = _big_gradient_jpeg(tmp_path / "big.jpg")
    fast = load_image(path, 64, crop_fraction=0.25)
    reference = resize_image(center_crop(read_image(path), 0.25), 64)
    assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 3
    whole = load_image(path, 64)
    assert np.abs(fast.astype(int) - whole.astype(int)).mean() > 20  # really a crop


def test_tiles_of_small_png_equal_resized_tiles_of_the_read(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(_gradient(60, 90)).save(path)
    tiles = load_tiles(path, 16, 40, 25)
    expected = np.stack([resize_image(t, 16) for t in tile_image(read_image(path), 40, 25)])
    np.testing.assert_array_equal(tiles, expected)


def test_tiles_of_big_jpeg_decode_at_reduced_scale_like_the_full_decode(tmp_path):
    path = _big_gradient_jpeg(tmp_path / "big.jpg")
    tiles = load_tiles(path, 32, 400)  # 4 x 3 tiles of 400 px; draft decodes at 1/8
    expected = np.stack([resize_image(t, 32) for t in tile_image(read_image(path), 400)])
    assert tiles.shape == (12, 32, 32, 3)
    assert np.abs(tiles.astype(int) - expected.astype(int)).mean(axis=(1, 2, 3)).max() < 3


def test_tiles_of_a_bad_file_name_it(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty.jpg"):
        load_tiles(path, 16, 8)


def test_load_preview_reports_original_size_and_format(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.zeros((1000, 1500, 3), np.uint8)).save(path)
    preview, fmt, width, height = load_preview(path, min_side=128)
    assert (fmt, width, height) == ("JPEG", 1500, 1000)
    assert preview.mode == "L"
    assert min(preview.size) >= 128 and preview.size[0] < 1500  # decoded at reduced scale


# ----------------------------------------------------------------------------- bad input


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(_gradient(200, 200)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    "reader", [read_image, lambda p: load_image(p, 32, "stretch"), load_preview]
)
def test_truncated_jpeg_is_a_bad_image_naming_the_file(tmp_path, reader):
    path = _truncated_jpeg(tmp_path / "cut_short.jpg")
    with pytest.raises(BadImageError, match="truncated") as info:
        reader(path)
    assert "cut_short.jpg" in str(info.value)
    assert "on_bad_image" in str(info.value)
    assert info.value.path == str(path)


@pytest.mark.parametrize("reader", [read_image, lambda p: load_image(p, 32, "pad"), load_preview])
def test_empty_file_is_a_bad_image(tmp_path, reader):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="0 bytes") as info:
        reader(path)
    assert "zero.jpg" in str(info.value)


@pytest.mark.parametrize("reader", [read_image, lambda p: load_image(p, 32, "pad"), load_preview])
def test_text_file_with_image_extension_is_a_bad_image(tmp_path, reader):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(BadImageError, match="not a recognised image") as info:
        reader(path)
    assert "notes.png" in str(info.value)


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        read_image(tmp_path / "gone.png")


def test_bad_image_error_survives_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(BadImageError("/x/y.png", "the file is empty (0 bytes)")))
    assert err.path == "/x/y.png" and "y.png" in str(err)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.JPG", True),
        ("b.tiff", True),
        ("c.bmp", True),
        ("MANIFEST.csv", False),
        (".hidden.jpg", False),
        ("._mac.png", False),
        ("readme.txt", False),
        ("x.xyc", False),
    ],
)
def test_is_image_file(name, expected):
    assert is_image_file(name) is expected


@pytest.mark.real_data
def test_all_idb2_tiffs_decode(real_collection):
    records = real_collection.records
    tiffs = records[(records["source"] == "all_idb2")].iloc[::50]
    assert len(tiffs) >= 5 and (tiffs["format"] == "TIFF").all()
    for row in tiffs.itertuples():
        img = read_image(row.path)
        assert img.shape == (row.height, row.width, 3) and img.dtype == np.uint8
        assert img.std() > 5  # real picture content, not a blank decode
        small = load_image(row.path, 48, "pad")
        assert small.shape == (48, 48, 3)
