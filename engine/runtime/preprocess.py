"""Image preprocessing for FastVLM: pure functions, no model state.

The reference path (Apple's LLaVA code with ``image_aspect_ratio: pad``):

1. decode to RGB, honouring EXIF orientation;
2. pad to a square with black, the image centred (``(side - h) // 2`` from the top, ``(side - w) // 2`` from
   the left, as LLaVA's ``expand2square`` does);
3. resize to S x S with Pillow's bicubic filter (antialiased when shrinking);
4. divide by 255, no mean/std, NCHW float32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import ImageError, InputError

MIN_SIDE = 16
MAX_PIXELS = 100_000_000
# FastViTHD downsamples by 64: one image row per 64x64 patch, so every encoder input side is a multiple of it.
PATCH_SIZE = 64
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


def _flatten_on_black(img: Image.Image) -> Image.Image:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    rgb = rgba[..., :3] * (rgba[..., 3:4] / 255.0)
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency flattened on black, 16-bit scaled (not clipped) to 8-bit,
    palette, grayscale and CMYK converted."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _flatten_on_black(img)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def load_image(source: ImageInput) -> Image.Image:
    """Open a path, a Pillow image or an RGB uint8 array as an upright 8-bit RGB Pillow image.

    Sizes are checked from the file header before the pixels are decoded, so a 500-megapixel file is refused
    without using 1.5 GB of memory.
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
            img = Image.open(path)
        with img:
            _check_dimensions(img.width, img.height, what)
            img.load()
            upright = ImageOps.exif_transpose(img) or img
            return to_rgb(upright).copy()
    except FileNotFoundError:
        raise ImageError(f"{path} does not exist.", "Check the path.") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a folder, not an image.", "Give an image file.") from None
    except Image.DecompressionBombError:
        # Pillow refuses before we see the size when a header claims over twice its own limit.
        raise ImageError(f"{what} is far larger than the limit of {MAX_PIXELS // 1_000_000} megapixels.",
                         "Scale it down or crop it first.") from None
    except UnidentifiedImageError as e:
        raise ImageError(f"{path} is not an image Glimpse can read ({e}).",
                         "Use a PNG, JPEG, WebP, BMP, GIF or TIFF file.") from None
    except (OSError, SyntaxError, ValueError) as e:
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


def preprocess(source: ImageInput, size: int = 1024) -> npt.NDArray[np.float32]:
    """The reference preprocessing: float32 [1, 3, size, size] in [0, 1]."""
    check_size(size)
    img = pad_to_square(load_image(source))
    return to_pixels(img.resize((size, size), Image.Resampling.BICUBIC))


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
    img = load_image(source)
    views = [to_pixels(pad_to_square(img).resize((size, size), Image.Resampling.BICUBIC))]
    w, h = img.size
    target_ratio = cols / rows
    if w / h > target_ratio:
        canvas_w, canvas_h = w, round(w / target_ratio)
    else:
        canvas_w, canvas_h = round(h * target_ratio), h
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
    canvas.paste(img, ((canvas_w - w) // 2, (canvas_h - h) // 2))
    big = to_pixels(canvas.resize((cols * size, rows * size), Image.Resampling.BICUBIC))
    for r in range(rows):
        for c in range(cols):
            tile = big[:, :, r * size:(r + 1) * size, c * size:(c + 1) * size]
            views.append(np.ascontiguousarray(tile))
    return views
