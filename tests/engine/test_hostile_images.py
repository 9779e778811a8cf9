"""Hostile and extreme pictures: only the allowed formats are decoded, and memory follows the output size."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glimpse.engine.runtime.preprocess as pp
from glimpse.engine.errors import ImageError
from glimpse.engine.runtime.preprocess import (
    FORMATS,
    canvas_budget,
    letterbox,
    load_image,
    preprocess,
    tile_views,
    to_pixels,
)

ROOT = Path(__file__).resolve().parents[2]


def _png_strip(path: Path, width: int, height: int) -> None:
    """A black-and-white (1 bit) PNG of zeros, written row by row: a 120000 x 800 one is about 12 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


# -- formats ----------------------------------------------------------------------------------------------------------

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n")


def test_postscript_is_never_handed_to_another_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        started.append(args)
        raise AssertionError("a program was started to decode an image")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)
    path = tmp_path / "holiday.png"  # the extension lies; Pillow decodes by content
    path.write_bytes(EPS)
    with pytest.raises(ImageError, match=r"not an image Glimpse can read.*PNG, JPEG, WebP, BMP, GIF or TIFF"):
        load_image(path)
    assert started == []


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_formats_outside_the_list_are_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "picture.img"
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path, format=fmt)
    with pytest.raises(ImageError, match="not an image Glimpse can read"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_allowed_formats_are_read(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"picture.{fmt.lower()}"
    Image.new("RGB", (40, 30), (200, 200, 200)).save(path, format=fmt)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert fmt in FORMATS


def test_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert load_image(path).getpixel((5, 5)) == (255, 0, 0)


# -- memory follows the output ----------------------------------------------------------------------------------------

def _run_limited(code: str, limit_bytes: int) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose address space is capped (what a 43 GB canvas would hit)."""
    prelude = ("import resource\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


@pytest.mark.slow
def test_a_few_kb_strip_does_not_ask_for_a_square_canvas(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    _png_strip(path, 120_000, 800)  # 96 megapixels, under the 100 MP limit; its square would be 43 GB
    assert path.stat().st_size < 20_000
    code = (f"from glimpse.engine.runtime.preprocess import preprocess, tile_views\n"
            f"px = preprocess({str(path)!r}, 256)\n"
            f"views = tile_views({str(path)!r}, (2, 2), 256)\n"
            "print(px.shape, len(views), float(px.max()))\n")
    result = _run_limited(code, 3 << 30)  # the strip itself is 288 MB as RGB
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == "(1, 3, 256, 256) 5 0.0"


def test_extreme_aspect_ratios_work(tmp_path: Path) -> None:
    # 20000 x 16: the scaled image is one pixel tall, centred on a black square.
    img = Image.new("RGB", (20_000, 16), (255, 255, 255))
    px = preprocess(img, 256)
    assert px.shape == (1, 3, 256, 256)
    assert px[0, 0, 127].min() > 0.5 and px[0, 0, :127].max() == 0.0 and px[0, 0, 128:].max() == 0.0  # (256-1)//2
    views = tile_views(Image.new("RGB", (16, 20_000), (255, 255, 255)), (1, 2), 256)
    assert len(views) == 3 and all(v.shape == (1, 3, 256, 256) for v in views)


def test_resize_first_path_matches_the_reference_within_tolerance() -> None:
    # An image just past the budget goes through the resize-first path; it must agree with the reference (pad to a
    # square, then resize) up to the rounding at the border. Reference computed here, independently, with Pillow.
    rng = np.random.default_rng(0)
    side = int(canvas_budget(256, 256) ** 0.5) + 64
    small = rng.integers(0, 256, (side // 32, side // 32, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side // 2), Image.Resampling.BILINEAR)  # smooth content
    square = Image.new("RGB", (side, side))
    square.paste(img, (0, (side - side // 2) // 2))
    reference = to_pixels(square.resize((256, 256), Image.Resampling.BICUBIC))
    got = preprocess(img, 256)
    inner = np.abs(got - reference)[..., 66:190, :]  # rows away from the image's top and bottom edges
    assert inner.max() < 3 / 255
    assert np.abs(got - reference).mean() < 1 / 255


def test_within_budget_the_reference_path_is_exact() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    square = Image.new("RGB", (500, 500))
    square.paste(img, (0, 100))
    np.testing.assert_array_equal(preprocess(img, 256), to_pixels(square.resize((256, 256), Image.Resampling.BICUBIC)))
    assert letterbox(img, 256, 256).size == (256, 256)


def test_huge_jpeg_is_decoded_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 6000), (90, 120, 150)).save(path, quality=80)
    assert load_image(path).size == (8000, 6000)
    reduced = load_image(path, at_least=1500)
    assert reduced.size == (2000, 1500)  # 1/4 scale: the smallest JPEG scale still at least 1500 px
    px = preprocess(path, 256)
    assert abs(float(px[0, 0, 128, 128]) - 90 / 255) < 2 / 255


def test_rgba_flattening_matches_a_float_reference() -> None:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    reference = np.rint(rgba[..., :3].astype(np.float64) * rgba[..., 3:4] / 255.0).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(Image.fromarray(rgba, "RGBA"))), reference)


def test_rgba_flattening_works_in_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    # A band of 100 pixels forces many bands and a last short one; the result must not depend on the banding.
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 29, 4), dtype=np.uint8), "RGBA")
    whole = np.asarray(load_image(rgba))
    monkeypatch.setattr(pp, "_BAND_PIXELS", 100)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), whole)


def test_truncated_and_garbage_files_are_sentences(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    for n in (10, 40, len(buf.getvalue()) // 2):
        path = tmp_path / f"cut{n}.png"
        path.write_bytes(buf.getvalue()[:n])
        with pytest.raises(ImageError):
            load_image(path)
