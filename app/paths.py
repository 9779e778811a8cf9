"""Where the app's bundled files are: ``assets/`` beside the package in a checkout, or inside a frozen bundle."""

from __future__ import annotations

import sys
from pathlib import Path


def asset(name: str) -> Path | None:
    """The path of ``assets/<name>``, or None when this installation has no such file (e.g. a wheel without it)."""
    roots = [Path(__file__).resolve().parent.parent / "assets"]
    bundle = getattr(sys, "_MEIPASS", None)  # PyInstaller's unpack folder
    if bundle:
        roots.insert(0, Path(bundle) / "assets")
    for root in roots:
        if (root / name).is_file():
            return root / name
    return None
