"""Draw Glimpse's icon (an eye-shaped lens on a rounded square) and write it for every platform.

    python packaging/make_icons.py      # writes assets/glimpse.png and assets/glimpse.ico

The macOS .icns (300 KB, all sizes) is not committed: the spec writes it into the build folder on macOS.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def draw(size: int = 1024) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size
    d.rounded_rectangle((0.04 * s, 0.04 * s, 0.96 * s, 0.96 * s), radius=0.2 * s, fill=(24, 34, 56, 255))
    # The eye: two arcs meeting at the corners, filled.
    d.ellipse((0.12 * s, 0.28 * s, 0.88 * s, 0.72 * s), fill=(236, 242, 250, 255))
    d.ellipse((0.30 * s, 0.30 * s, 0.70 * s, 0.70 * s), fill=(52, 132, 228, 255))
    d.ellipse((0.42 * s, 0.42 * s, 0.58 * s, 0.58 * s), fill=(16, 22, 36, 255))
    d.ellipse((0.47 * s, 0.44 * s, 0.52 * s, 0.49 * s), fill=(255, 255, 255, 230))
    return img


def write_icns(path: Path) -> Path:
    draw().resize((512, 512), Image.Resampling.LANCZOS).save(path)
    return path


def main() -> None:
    big = draw()
    big.resize((256, 256), Image.Resampling.LANCZOS).save(ASSETS / "glimpse.png", optimize=True)
    big.save(ASSETS / "glimpse.ico", sizes=[(16, 16), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)])


if __name__ == "__main__":
    main()
