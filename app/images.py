"""Moving pictures between Qt and the engine: RGB uint8 numpy arrays [H, W, 3] are the common currency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PySide6.QtGui import QImage

from glimpse.engine import load_image

U8Array = npt.NDArray[np.uint8]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv"})
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"
VIDEO_FILTER = "Videos (" + " ".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES)) + ");;All files (*)"


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def to_qimage(rgb: U8Array) -> QImage:
    """A QImage that owns a copy of the pixels (the array may be reused by its producer)."""
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def from_qimage(image: QImage) -> U8Array:
    """RGB uint8 [H, W, 3]; alpha is dropped (screenshots and pasted images are opaque in practice)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    h, w, stride = rgb.height(), rgb.width(), rgb.bytesPerLine()
    buf = np.frombuffer(rgb.constBits(), dtype=np.uint8, count=stride * h)
    return buf.reshape(h, stride)[:, : 3 * w].reshape(h, w, 3).copy()


def read_image_file(path: str | Path) -> U8Array:
    """Decode an image file the way the engine does (EXIF rotation, transparency, size limits); raises ImageError
    with a sentence when it cannot. Slow for big files: call it off the GUI thread."""
    return np.asarray(load_image(path), dtype=np.uint8)
