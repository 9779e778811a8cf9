"""Image preprocessing for FastVLM: pure functions, no model state.

The reference path (Apple's LLaVA code with ``image_aspect_ratio: pad``):

1. decode to RGB, honouring EXIF orientation;
2. pad to a square with black, the image centred (``(side - h) // 2`` from the top, ``(side - w) // 2`` from
   the left, as LLaVA's ``expand2square`` does);
3. resize to S x S with Pillow's bicubic filter (antialiased when shrinking);
4. divide by 255, no mean/std, NCHW float32.

Hostile or unlucky files: only the formats in ``FORMATS`` are decoded (never PostScript, PDF or anything Pillow
would hand to another program); the size is checked from the header before decoding; a JPEG much larger than
needed is decoded at 1/2, 1/4 or 1/8 scale (Pillow's ``draft``). The padded square of step 2 is only built while
it fits a budget computed from the output size (``canvas_budget``); past it, as for a 120000 x 800 strip whose
square would be 43 GB, the image is resized first and then padded, which differs from the reference only in the
rounding of the border. Transparency and 16-bit modes are converted in bands of rows, in integers, so converting
never needs more than the picture itself plus a band.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from glimpse.engine.errors import GlimpseError, ImageError, InputError

MIN_SIDE = 16
MAX_PIXELS = 100_000_000
# FastViTHD downsamples by 64: one image row per 64x64 patch, so every encoder input side is a multiple of it.
PATCH_SIZE = 64
# Decoded by content, but only these: all are decoded inside Pillow. EPS/PS would start Ghostscript. A camera's
# multi-picture JPEG (MPO) opens through the JPEG plugin. GIF and WebP give their first frame, TIFF its first page.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
_MAX_CANVAS = 1 << 26  # 8192 x 8192: the largest padded canvas built at any output size (200 MB as RGB)
_BAND_PIXELS = 1 << 20  # pixels per band when converting modes
MIN_SIZE, MAX_SIZE, SIZE_STEP = 256, 2048, PATCH_SIZE

ImageInput = str | Path | Image.Image | npt.NDArray[np.uint8]


def check_size(size: int) -> int:
    """Validate an encoder input side: a multiple of 64 from 256 to 2048."""
    if not isinstance(size, int) or size % SIZE_STEP or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"Image size {size!r} is not supported.",
                         f"Use a multiple of {SIZE_STEP} from {MIN_SIZE} to {MAX_SIZE}, e.g. 512 or 1024.")
    return size


def _check_dimensions(width: int, height: int, what: str) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{what} is {width}x{height} pixels; Glimpse needs at least {MIN_SIDE} on each side.",
                         "Use a larger image.")
    if width * height > MAX_PIXELS:
        raise ImageError(f"{what} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                         f"the limit is {MAX_PIXELS // 1_000_000} megapixels.", "Scale it down or crop it first.")


def canvas_budget(out_w: int, out_h: int) -> int:
    """The most pixels a padded canvas may have when the output is ``out_w`` x ``out_h``: 64 times the output
    (padding then resizing stays exact for photos of up to 8x the output side), and never more than 8192^2."""
    return min(64 * out_w * out_h, _MAX_CANVAS)


def _banded(img: Image.Image, mode: str, convert: Callable[[npt.NDArray[Any]], npt.NDArray[np.uint8]]) -> Image.Image:
    """Apply ``convert`` (an array band of ``img`` -> uint8 band) a few rows at a time into a new ``mode`` image."""
    w, h = img.size
    out = Image.new(mode, (w, h))
    rows = max(1, _BAND_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        band = img.crop((0, top, w, min(h, top + rows)))
        out.paste(Image.fromarray(convert(np.asarray(band)), mode), (0, top))
    return out


def _premultiply(band: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    # rgb * a / 255 rounded: x * a / 255 is never exactly halfway (255 is odd), so +127 // 255 equals np.rint.
    # uint16 holds 255 * 255 + 127; no float32 copy of the picture is made.
    rgb = band[..., :3].astype(np.uint16)
    rgb *= band[..., 3:4]
    rgb += 127
    rgb //= 255
    return rgb.astype(np.uint8)


def _flatten_on_black(img: Image.Image) -> Image.Image:
    return _banded(img.convert("RGBA"), "RGB", _premultiply)


def _peak(img: Image.Image) -> float:
    extrema: Any = img.getextrema()  # (min, max) for one band
    return float(extrema[1])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency flattened on black, 16-bit scaled (not clipped) to 8-bit,
    palette, grayscale and CMYK converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _flatten_on_black(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        top = _peak(img)
        peak = 65535.0 if mode.startswith("I;16") or top > 255 else 255.0
        gray = _banded(img, "L", lambda a: np.clip(np.rint(a.astype(np.float64) * (255.0 / peak)), 0, 255)
                       .astype(np.uint8))
        return gray.convert("RGB")
    if mode == "F":
        top = _peak(img)
        scale = 255.0 if top <= 1.0 else 1.0
        gray = _banded(img, "L", lambda a: np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8))
        return gray.convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageInput, *, at_least: int | None = None) -> Image.Image:
    """Open a path, a Pillow image or an RGB uint8 array as an upright 8-bit RGB Pillow image.

    Sizes are checked from the file header before the pixels are decoded, so a 500-megapixel file is refused
    without using 1.5 GB of memory. Only the formats in ``FORMATS`` are read. With ``at_least``, a JPEG may be
    decoded at a reduced scale whose longer side is still at least that many pixels.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        _check_dimensions(source.width, source.height, "The image")
        return to_rgb(ImageOps.exif_transpose(source) or source)
    path = Path(source)
    what = f"The image {path.name}"
    try:
        with warnings.catch_warnings():
            # Our own limit (checked below from the header) replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=FORMATS)
        with img:
            _check_dimensions(img.width, img.height, what)
            if at_least is not None and img.format in ("JPEG", "MPO"):
                scale = at_least / max(img.size)
                if scale < 0.5:  # draft picks the smallest 1/2^k scale not below the size asked for
                    img.draft("RGB", (max(1, int(img.width * scale)) + 1, max(1, int(img.height * scale)) + 1))
            img.load()
            # exif_transpose returns a new image (turned, or a copy), which outlives closing the file.
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright if upright is not None else img.copy())
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist.", "Check the path.") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image.", "Give an image file.") from None
    except Image.DecompressionBombError:
        # Pillow refuses before we see the size when a header claims over twice its own limit.
        raise ImageError(f"{what} is far larger than the limit of {MAX_PIXELS // 1_000_000} megapixels.",
                         "Scale it down or crop it first.") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image Glimpse can read (not a PNG, JPEG, WebP, BMP, GIF or TIFF "
                         "picture).", "Use a PNG, JPEG, WebP, BMP, GIF or TIFF file.") from None
    except MemoryError:
        raise ImageError(f"{what} needs more memory to decode than is free.",
                         "Scale it down, or close other programs and try again.") from None
    except GlimpseError:
        raise
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error...) on damage
        raise ImageError(f"{path} could not be decoded: it is damaged or truncated ({e}).",
                         "Try another copy of the image.") from None


def _from_array(arr: npt.NDArray[np.uint8]) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"An image array must be uint8 with shape (H, W, 3); got {arr.dtype} {list(arr.shape)}.",
                         "Convert it with arr.astype(np.uint8) in RGB channel order.")
    _check_dimensions(arr.shape[1], arr.shape[0], "The image")
    img = Image.fromarray(np.ascontiguousarray(arr))
    return to_rgb(img)


def pad_to_square(img: Image.Image) -> Image.Image:
    """Pad with black to a square whose side is the longer side, the image centred (LLaVA's expand2square)."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def to_pixels(img: Image.Image) -> npt.NDArray[np.float32]:
    """RGB uint8 image -> float32 [1, 3, H, W] in [0, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None] / np.float32(255.0))


def letterbox(img: Image.Image, out_w: int, out_h: int) -> Image.Image:
    """RGB image -> ``out_w`` x ``out_h`` RGB: padded with black (centred) to the output's aspect ratio, then
    resized with Pillow's bicubic filter. The padded canvas is built only within ``canvas_budget``; beyond it the
    image is resized first and then padded, so memory follows the output size for any aspect ratio."""
    w, h = img.size
    if w * out_h > h * out_w:
        canvas_w, canvas_h = w, round(w * out_h / out_w)
    else:
        canvas_w, canvas_h = round(h * out_w / out_h), h
    if canvas_w * canvas_h <= canvas_budget(out_w, out_h):
        if (canvas_w, canvas_h) == (w, h):
            return img.resize((out_w, out_h), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
        canvas.paste(img, ((canvas_w - w) // 2, (canvas_h - h) // 2))
        return canvas.resize((out_w, out_h), Image.Resampling.BICUBIC)
    new_w = min(out_w, max(1, round(w * out_w / canvas_w)))
    new_h = min(out_h, max(1, round(h * out_h / canvas_h)))
    small = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (out_w, out_h), (0, 0, 0))
    out.paste(small, ((out_w - new_w) // 2, (out_h - new_h) // 2))
    return out


def _decode_side(size: int) -> int:
    """The longer side a JPEG must keep when decoded for an output of ``size``: enough that padding and resizing
    stay on the exact path of ``letterbox``."""
    return max(size, int(canvas_budget(size, size) ** 0.5))


def preprocess(source: ImageInput, size: int = 1024) -> npt.NDArray[np.float32]:
    """The reference preprocessing: float32 [1, 3, size, size] in [0, 1]."""
    check_size(size)
    return to_pixels(letterbox(load_image(source, at_least=_decode_side(size)), size, size))


def parse_grid(text: str) -> tuple[int, int]:
    """``"2x3"`` -> (2 rows, 3 columns); each from 1 to 4."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"Tiles '{text}' is not ROWSxCOLUMNS.", "Write it like 2x2 or 1x3.") from None
    if not (1 <= rows <= 4 and 1 <= cols <= 4):
        raise InputError(f"Tiles '{text}' is out of range.", "Use 1 to 4 rows and 1 to 4 columns, e.g. 2x2.")
    return rows, cols


def tile_views(source: ImageInput, grid: tuple[int, int], size: int) -> list[npt.NDArray[np.float32]]:
    """The views the ``tiles`` mode encodes, in the order their rows are joined:

    1. the global view: the whole image, preprocessed as usual at ``size``;
    2. ``rows x cols`` tiles, row by row, left to right. The image is padded with black (centred) to the
       grid's aspect ratio, resized to ``cols * size`` by ``rows * size`` with the same bicubic filter, and cut
       into ``size`` x ``size`` tiles.

    Each view is float32 [1, 3, size, size] in [0, 1].
    """
    check_size(size)
    rows, cols = grid
    img = load_image(source, at_least=_decode_side(max(rows, cols) * size))
    views = [to_pixels(letterbox(img, size, size))]
    big = to_pixels(letterbox(img, cols * size, rows * size))
    for r in range(rows):
        for c in range(cols):
            tile = big[:, :, r * size:(r + 1) * size, c * size:(c + 1) * size]
            views.append(np.ascontiguousarray(tile))
    return views
