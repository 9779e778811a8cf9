"""Preprocessing: pad to a black square, Pillow bicubic, /255; every image mode; size limits and bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse.engine.errors import ImageError, InputError
from glimpse.engine.runtime.preprocess import check_size, load_image, pad_to_square, preprocess, to_pixels

RED = (255, 0, 0)


def test_pad_centres_vertically_with_black() -> None:
    img = Image.new("RGB", (4, 2), RED)
    out = np.asarray(pad_to_square(img))
    assert out.shape == (4, 4, 3)
    # (4 - 2) // 2 = 1 black row on top, one below.
    assert (out[0] == 0).all() and (out[3] == 0).all()
    assert (out[1:3] == RED).all()


def test_pad_odd_difference_puts_extra_row_below() -> None:
    img = Image.new("RGB", (2, 5), RED)
    out = np.asarray(pad_to_square(img))
    assert out.shape == (5, 5, 3)
    # (5 - 2) // 2 = 1 black column on the left, two on the right.
    assert (out[:, 0] == 0).all() and (out[:, 3:] == 0).all()
    assert (out[:, 1:3] == RED).all()


def test_to_pixels_layout_and_range() -> None:
    img = Image.new("RGB", (3, 2), (255, 128, 0))
    px = to_pixels(img)
    assert px.shape == (1, 3, 2, 3) and px.dtype == np.float32 and px.flags.c_contiguous
    assert (px[0, 0] == 1.0).all() and (px[0, 2] == 0.0).all()
    assert px[0, 1, 0, 0] == np.float32(128) / np.float32(255)


def test_uniform_image_stays_uniform() -> None:
    px = preprocess(Image.new("RGB", (300, 300), (128, 64, 32)), size=256)
    assert px.shape == (1, 3, 256, 256)
    np.testing.assert_array_equal(px[0, :, 100, 100], np.array([128, 64, 32], np.float32) / np.float32(255))
    assert np.ptp(px[0, 0]) == 0


def test_wide_image_is_padded_not_cropped() -> None:
    # A 2:1 white image: the top and bottom quarters of the square are black, the middle white.
    px = preprocess(Image.new("RGB", (512, 256), (255, 255, 255)), size=256)[0, 0]
    assert px[:60].max() == 0 and px[-60:].max() == 0
    assert px[70:186].min() == 1.0


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    assert load_image(path).size == (20, 40)


def test_rgba_is_flattened_on_black() -> None:
    img = Image.new("RGBA", (20, 20), (200, 100, 50, 128))
    assert load_image(img).getpixel((0, 0)) == (100, 50, 25)


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.info["transparency"] = 1
    assert load_image(img).getpixel((5, 5)) == (0, 0, 0)
    img.info.pop("transparency")
    assert load_image(img).getpixel((5, 5)) == (10, 200, 30)


def test_16_bit_is_scaled_not_clipped() -> None:
    arr = np.array([[65535, 257 * 100], [0, 257 * 7]], np.uint16).repeat(10, 0).repeat(10, 1)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(load_image(img))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 15].tolist() == [100, 100, 100]
    assert out[15, 15].tolist() == [7, 7, 7]


def test_grayscale_and_cmyk() -> None:
    assert load_image(Image.new("L", (20, 20), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(Image.new("CMYK", (20, 20), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_numpy_input() -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[..., 1] = 9
    assert load_image(arr).size == (30, 20)
    with pytest.raises(ImageError, match="must be uint8"):
        load_image(arr.astype(np.float32))  # type: ignore[arg-type]


def test_too_small() -> None:
    with pytest.raises(ImageError, match=r"10x100 pixels.*at least 16"):
        load_image(Image.new("RGB", (10, 100)))


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_too_large_is_refused_before_decoding(tmp_path: Path) -> None:
    # The file holds no pixel data at all: the check must come from the header alone.
    path = tmp_path / "huge.png"
    _png_header_only(path, 20000, 10000)
    with pytest.raises(ImageError, match="limit of 100 megapixels"):
        load_image(path)


def test_unreadable_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not an image Glimpse can read"):
        load_image(text)
    good = tmp_path / "photo.jpg"
    Image.new("RGB", (200, 200), RED).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageError, match="damaged or truncated"):
        load_image(truncated)
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("size", [0, 200, 1000, 4096, 2112])
def test_bad_sizes(size: int) -> None:
    with pytest.raises(InputError, match="multiple of 64 from 256 to 2048"):
        check_size(size)


@pytest.mark.parametrize("size", [256, 512, 768, 1024, 2048])
def test_good_sizes(size: int) -> None:
    assert check_size(size) == size


def test_over_limit_but_under_pillows_bomb_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    _png_header_only(path, 12000, 10000)
    with pytest.raises(ImageError, match=r"12000x10000 pixels \(120 megapixels\); the limit is 100"):
        load_image(path)
