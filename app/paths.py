"""Where the app's bundled files are: ``assets/`` beside the package in a checkout, or inside a frozen bundle."""

from __future__ import annotations

from pathlib import Path

from glimpse.engine import assets_root


def asset(name: str) -> Path | None:
    """The path of ``assets/<name>``, or None when this installation has no such file (e.g. a wheel without it)."""
    path = assets_root() / name
    return path if path.is_file() else None
