"""Regenerate the synthetic screenshots and documents in assets/calibration/ and assets/heldout/.

Run from the repository root: ``python assets/calibration/make_screens.py``. Deterministic for a given Pillow and
font: everything is drawn with Pillow from fixed text and a seeded random generator. The committed PNGs are the
reference; regenerating is only needed to change them. The text is from public-domain sources (the US Declaration of
Independence, 1776; Lincoln's Gettysburg Address, 1863) or written for Glimpse. Output: CC0 1.0.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ASSETS = Path(__file__).resolve().parents[1]
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

DECLARATION = (
    "When in the Course of human events, it becomes necessary for one people to dissolve the political bands which "
    "have connected them with another, and to assume among the powers of the earth, the separate and equal station "
    "to which the Laws of Nature and of Nature's God entitle them, a decent respect to the opinions of mankind "
    "requires that they should declare the causes which impel them to the separation. We hold these truths to be "
    "self-evident, that all men are created equal, that they are endowed by their Creator with certain unalienable "
    "Rights, that among these are Life, Liberty and the pursuit of Happiness.")
GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in "
    "Liberty, and dedicated to the proposition that all men are created equal. Now we are engaged in a great civil "
    "war, testing whether that nation, or any nation so conceived and so dedicated, can long endure. We are met on a "
    "great battle-field of that war. We have come to dedicate a portion of that field, as a final resting place for "
    "those who here gave their lives that that nation might live.")


def font(name: str, size: int) -> Font:
    path = FONT_DIR / name
    if path.is_file():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def wrap(draw: ImageDraw.ImageDraw, text: str, f: Font, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=f) <= width:
            line = trial
        else:
            lines.append(line)
            line = word
    return [*lines, line] if line else lines


def paragraph(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, f: Font, width: int, fill: str,
              spacing: float = 1.45) -> int:
    """Draw wrapped text; return the y below it."""
    x, y = xy
    step = int(f.size * spacing) if isinstance(f, ImageFont.FreeTypeFont) else 14
    for line in wrap(draw, text, f, width):
        draw.text((x, y), line, font=f, fill=fill)
        y += step
    return y


def settings_window() -> Image.Image:
    """A light-theme desktop app: title bar, sidebar, form fields, toggles, buttons."""
    img = Image.new("RGB", (1280, 800), "#3b6ea8")
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((60, 50, 1220, 760), 10, fill="#f6f6f6", outline="#9a9a9a")
    d.rounded_rectangle((60, 50, 1220, 92), 10, fill="#e4e4e4")
    d.rectangle((60, 80, 1220, 92), fill="#e4e4e4")
    for i, c in enumerate(("#ff5f57", "#febc2e", "#28c840")):
        d.ellipse((80 + 24 * i, 64, 94 + 24 * i, 78), fill=c)
    sans, bold = font("DejaVuSans.ttf", 16), font("DejaVuSans-Bold.ttf", 16)
    d.text((560, 62), "Preferences", font=bold, fill="#333333")
    d.rectangle((60, 92, 300, 760), fill="#ebebeb")
    items = ["General", "Camera", "Model", "Captions", "Speech", "Shortcuts", "Privacy", "About"]
    for i, item in enumerate(items):
        y = 110 + 44 * i
        if i == 2:
            d.rounded_rectangle((72, y - 6, 288, y + 30), 6, fill="#2f6fd6")
        d.text((96, y), item, font=sans, fill="white" if i == 2 else "#222222")
    big = font("DejaVuSans-Bold.ttf", 26)
    d.text((340, 120), "Model", font=big, fill="#111111")
    fields = [("Model folder", "~/Glimpse/models/fastvlm-0.5b"), ("Image size", "1024 px"),
              ("Threads", "2 (automatic)"), ("Vision precision", "int8 (checked)")]
    for i, (label, value) in enumerate(fields):
        y = 180 + 64 * i
        d.text((340, y + 8), label, font=sans, fill="#333333")
        d.rounded_rectangle((560, y, 1160, y + 38), 6, fill="white", outline="#b9b9b9")
        d.text((574, y + 9), value, font=sans, fill="#111111")
    toggles = [("Start captions when the camera opens", True), ("Read answers aloud", False),
               ("Keep the conversation when the image changes", True)]
    for i, (label, on) in enumerate(toggles):
        y = 460 + 48 * i
        d.rounded_rectangle((340, y, 388, y + 26), 13, fill="#34c759" if on else "#c7c7cc")
        cx = 375 if on else 353
        d.ellipse((cx - 11, y + 2, cx + 11, y + 24), fill="white")
        d.text((404, y + 3), label, font=sans, fill="#222222")
    d.rounded_rectangle((900, 690, 1030, 730), 8, fill="white", outline="#b9b9b9")
    d.text((938, 700), "Cancel", font=sans, fill="#222222")
    d.rounded_rectangle((1046, 690, 1190, 730), 8, fill="#2f6fd6")
    d.text((1094, 700), "Save", font=bold, fill="white")
    return img


def document_page() -> Image.Image:
    """A printed page on a grey desk: heading, justified-looking paragraphs, a list and a small table."""
    img = Image.new("RGB", (1100, 1400), "#8d8d8d")
    d = ImageDraw.Draw(img)
    d.rectangle((110, 60, 990, 1340), fill="#fdfdf8")
    serif, head = font("DejaVuSerif.ttf", 19), font("DejaVuSerif-Bold.ttf", 34)
    d.text((170, 120), "In Congress, July 4, 1776", font=head, fill="#111111")
    y = paragraph(d, (170, 200), DECLARATION, serif, 760, "#1a1a1a")
    y = paragraph(d, (170, y + 24), GETTYSBURG, serif, 760, "#1a1a1a")
    for i, item in enumerate(("Life", "Liberty", "the pursuit of Happiness")):
        d.text((190, y + 24 + 32 * i), f"{i + 1}.  {item}", font=serif, fill="#1a1a1a")
    y += 150
    cols = (170, 420, 620, 820)
    rows = [("Item", "Year", "Pages", "Copies"), ("Declaration", "1776", "1", "200"),
            ("Address", "1863", "1", "5"), ("Constitution", "1787", "4", "500")]
    for r, row in enumerate(rows):
        yy = y + 38 * r
        d.line((170, yy, 930, yy), fill="#444444", width=1)
        for c, cell in enumerate(row):
            d.text((cols[c] + 6, yy + 8), cell, font=font("DejaVuSerif-Bold.ttf", 18) if r == 0 else serif,
                   fill="#111111")
    d.line((170, y + 38 * len(rows), 930, y + 38 * len(rows)), fill="#444444", width=1)
    d.text((540, 1290), "- 1 -", font=serif, fill="#333333")
    return img


def spreadsheet() -> Image.Image:
    """A spreadsheet grid with numbers and a bar chart beside it."""
    rng = random.Random(7)
    img = Image.new("RGB", (1280, 800), "white")
    d = ImageDraw.Draw(img)
    sans, bold, small = font("DejaVuSans.ttf", 14), font("DejaVuSans-Bold.ttf", 14), font("DejaVuSans.ttf", 12)
    d.rectangle((0, 0, 1280, 70), fill="#217346")
    d.text((20, 12), "Quarterly figures.xlsx", font=font("DejaVuSans-Bold.ttf", 20), fill="white")
    for i, tab in enumerate(("File", "Home", "Insert", "Formulas", "Data", "View")):
        d.text((20 + 90 * i, 44), tab, font=sans, fill="white")
    d.rectangle((0, 70, 1280, 100), fill="#f3f3f3")
    d.text((10, 78), "fx   =SUM(B2:B13)", font=sans, fill="#333333")
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    x0, y0, cw, rh = 40, 110, 110, 26
    headers = ["Month", "Revenue", "Costs", "Margin", "Units"]
    values = []
    for c in range(6):
        d.rectangle((x0 + cw * c - (40 if c == 0 else 0), y0, x0 + cw * (c + 1), y0 + rh), fill="#e8e8e8",
                    outline="#c8c8c8")
        if c:
            d.text((x0 + cw * c + 45, y0 + 5), "ABCDE"[c - 1], font=bold, fill="#444444")
    for r in range(14):
        y = y0 + rh * (r + 1)
        d.rectangle((0, y, 40, y + rh), fill="#e8e8e8", outline="#c8c8c8")
        d.text((12, y + 5), str(r + 1), font=small, fill="#444444")
        for c in range(5):
            d.rectangle((x0 + cw * (c + 1) - cw, y, x0 + cw * (c + 1), y + rh), outline="#d9d9d9")
        if r == 0:
            for c, h in enumerate(headers):
                d.text((x0 + cw * c + 6, y + 5), h, font=bold, fill="#111111")
        elif r <= 12:
            rev, cost = rng.randint(18000, 42000), rng.randint(9000, 20000)
            values.append(rev)
            margin = f"{100 * (rev - cost) / rev:.1f}%"
            row = [months[r - 1], f"{rev:,}", f"{cost:,}", margin, str(rng.randint(80, 400))]
            for c, cell in enumerate(row):
                d.text((x0 + cw * c + 6, y + 5), cell, font=sans, fill="#111111")
        else:
            d.text((x0 + 6, y + 5), "Total", font=bold, fill="#111111")
            d.text((x0 + cw + 6, y + 5), f"{sum(values):,}", font=bold, fill="#111111")
    cx, cy, ch = 680, 140, 420
    d.rectangle((cx, cy, 1250, cy + ch + 60), outline="#bdbdbd")
    d.text((cx + 20, cy + 10), "Revenue by month", font=font("DejaVuSans-Bold.ttf", 18), fill="#222222")
    top = max(values)
    for i, v in enumerate(values):
        h = int(330 * v / top)
        bx = cx + 30 + 44 * i
        d.rectangle((bx, cy + ch - h, bx + 30, cy + ch), fill="#4472c4")
        d.text((bx + 2, cy + ch + 8), months[i], font=small, fill="#333333")
    return img


def code_editor() -> Image.Image:
    """A dark-theme code editor with syntax colours and a terminal panel."""
    img = Image.new("RGB", (1280, 800), "#1e1e1e")
    d = ImageDraw.Draw(img)
    mono, small = font("DejaVuSansMono.ttf", 15), font("DejaVuSans.ttf", 13)
    d.rectangle((0, 0, 1280, 30), fill="#323233")
    d.text((560, 7), "vision.py - glimpse", font=small, fill="#cccccc")
    d.rectangle((0, 30, 52, 800), fill="#333333")
    d.rectangle((52, 30, 300, 800), fill="#252526")
    for i, name in enumerate(("engine", "  convert", "  vision.py", "  preprocess.py", "  model.py", "tests", "assets",
                              "README.md", "pyproject.toml")):
        d.text((64, 44 + 24 * i), name, font=small, fill="#ffffff" if "vision" in name else "#bbbbbb")
    code = [
        ("#c586c0", "from", "#d4d4d4", " pathlib ", "#c586c0", "import", "#4ec9b0", " Path"),
        ("#d4d4d4", "",),
        ("#569cd6", "class", "#4ec9b0", " VisionEncoder", "#d4d4d4", ":"),
        ("#6a9955", '    """Runs the image encoder."""'),
        ("#569cd6", "    def", "#dcdcaa", " encode", "#d4d4d4", "(self, pixels):"),
        ("#d4d4d4", "        out = self._session.run([", "#ce9178", '"image_embeddings"', "#d4d4d4", "], ...)"),
        ("#c586c0", "        return", "#d4d4d4", " out[", "#b5cea8", "0", "#d4d4d4", "]"),
        ("#d4d4d4", "",),
        ("#569cd6", "def", "#dcdcaa", " cosine", "#d4d4d4", "(a, b):"),
        ("#d4d4d4", "    num = (a * b).sum()"),
        ("#c586c0", "    return", "#d4d4d4", " num / (np.linalg.norm(a) * np.linalg.norm(b) + ", "#b5cea8", "1e-12",
         "#d4d4d4", ")"),
    ]
    for i, parts in enumerate(code):
        y = 44 + 24 * i
        d.text((310, y), f"{i + 1:>3}", font=mono, fill="#858585")
        x = 360
        for k in range(0, len(parts) - 1, 2):
            d.text((x, y), parts[k + 1], font=mono, fill=parts[k])
            x += int(d.textlength(parts[k + 1], font=mono))
    d.rectangle((300, 520, 1280, 800), fill="#181818")
    d.text((312, 530), "TERMINAL", font=small, fill="#e7e7e7")
    term = ["$ glimpse ask fastvlm-0.5b photo.jpg \"What is on the table?\"",
            "A white cup of coffee on a saucer next to a spoon.",
            "encode 412 ms, prefill 655 ms, first token 1.09 s, 38.2 tokens/s",
            "$ pytest -q tests/engine", "........................................ [100%]", "40 passed in 12.31s", "$ "]
    for i, line in enumerate(term):
        d.text((312, 560 + 24 * i), line, font=mono, fill="#cccccc" if i % 3 else "#9cdcfe")
    return img


def chat_app() -> Image.Image:
    """A dark-mode messaging app with bubbles (held out: not used for calibration)."""
    img = Image.new("RGB", (900, 1200), "#101418")
    d = ImageDraw.Draw(img)
    sans, bold = font("DejaVuSans.ttf", 20), font("DejaVuSans-Bold.ttf", 22)
    d.rectangle((0, 0, 900, 90), fill="#1c232b")
    d.ellipse((24, 18, 78, 72), fill="#e07a5f")
    d.text((96, 22), "Robin", font=bold, fill="white")
    d.text((96, 52), "online", font=font("DejaVuSans.ttf", 16), fill="#8fd18f")
    msgs = [(False, "Did you get the photos from the trip?"), (True, "Yes! The one with the lighthouse is great."),
            (False, "I think the camera focused on the rocks, not the tower."),
            (True, "Still looks good. Can you send the original file? The preview is tiny."),
            (False, "Sending it now. It's 12 MB, so give it a minute."), (True, "Got it, thanks!"),
            (False, "Dinner at 7 tomorrow? I booked the place by the harbour.")]
    y = 120
    for mine, text in msgs:
        lines = wrap(d, text, sans, 520)
        h = 30 * len(lines) + 24
        x0 = 900 - 40 - 560 if mine else 40
        d.rounded_rectangle((x0, y, x0 + 560, y + h), 18, fill="#2b5278" if mine else "#242f3d")
        for i, line in enumerate(lines):
            d.text((x0 + 20, y + 12 + 30 * i), line, font=sans, fill="white")
        y += h + 22
    d.rectangle((0, 1110, 900, 1200), fill="#1c232b")
    d.rounded_rectangle((24, 1128, 790, 1182), 27, fill="#242f3d")
    d.text((50, 1142), "Message", font=sans, fill="#7d8b99")
    d.ellipse((806, 1128, 860, 1182), fill="#2f8fdb")
    return img


def invoice() -> Image.Image:
    """A web invoice / receipt with a table and totals (held out)."""
    rng = random.Random(11)
    img = Image.new("RGB", (1024, 1300), "#eef1f5")
    d = ImageDraw.Draw(img)
    sans, bold = font("DejaVuSans.ttf", 18), font("DejaVuSans-Bold.ttf", 18)
    d.rectangle((0, 0, 1024, 64), fill="#ffffff")
    d.text((30, 18), "Harbour Hardware  |  Orders  |  Account", font=bold, fill="#1d3557")
    d.rounded_rectangle((60, 100, 964, 1240), 12, fill="white", outline="#d0d7de")
    d.text((100, 140), "INVOICE #20931", font=font("DejaVuSans-Bold.ttf", 32), fill="#111111")
    d.text((100, 190), "Date: 14 March 2024     Due: 13 April 2024", font=sans, fill="#444444")
    d.text((100, 230), "Bill to: Pat Lee, 12 Quay Street, Portsmouth", font=sans, fill="#444444")
    items = ["Brass hinges (pair)", "Wood screws 4x40, box of 200", "Sanding sheets P120", "Masking tape 48 mm",
             "Paint brush set", "Linseed oil 500 ml", "Safety glasses", "Tape measure 5 m"]
    y = 300
    d.rectangle((100, y, 924, y + 40), fill="#1d3557")
    for x, h in ((110, "Description"), (560, "Qty"), (660, "Unit"), (800, "Amount")):
        d.text((x, y + 9), h, font=bold, fill="white")
    total = 0.0
    for i, item in enumerate(items):
        yy = y + 40 + 44 * i
        if i % 2:
            d.rectangle((100, yy, 924, yy + 44), fill="#f5f7fa")
        qty, unit = rng.randint(1, 6), rng.randint(199, 2499) / 100
        total += qty * unit
        for x, cell in ((110, item), (560, str(qty)), (660, f"{unit:.2f}"), (800, f"{qty * unit:.2f}")):
            d.text((x, yy + 11), cell, font=sans, fill="#222222")
    yy = y + 40 + 44 * len(items) + 30
    for i, (label, value) in enumerate((("Subtotal", total), ("VAT 20%", total * 0.2), ("Total", total * 1.2))):
        f = bold if i == 2 else sans
        d.text((620, yy + 36 * i), label, font=f, fill="#222222")
        d.text((800, yy + 36 * i), f"{value:.2f}", font=f, fill="#222222")
    d.rounded_rectangle((100, 1120, 330, 1176), 8, fill="#2a9d8f")
    d.text((150, 1136), "Pay now", font=bold, fill="white")
    return img


SCREENS: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "screen_settings.png": ("calibration", settings_window),
    "doc_page.png": ("calibration", document_page),
    "screen_spreadsheet.png": ("calibration", spreadsheet),
    "screen_code.png": ("calibration", code_editor),
    "screen_chat.png": ("heldout", chat_app),
    "doc_invoice.png": ("heldout", invoice),
}


def main() -> None:
    for name, (folder, make) in SCREENS.items():
        path = ASSETS / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        make().quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
        print(f"{path.relative_to(ASSETS.parent)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
