"""Where Glimpse keeps things: the user folders (models, caches, logs) and the bundled ``assets/`` folder.

Every path Glimpse writes outside a folder the user named comes from :func:`user_folder`, so ``$GLIMPSE_HOME``
means the same thing to the model store, the onnxruntime graph cache and the app's log.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import platformdirs

APP_NAME = "Glimpse"
UserFolder = Literal["data", "cache", "logs"]


def user_folder(kind: UserFolder) -> Path:
    """The folder for ``kind``: under ``$GLIMPSE_HOME`` when it is set (data is the root itself, caches in
    ``cache/``, logs in ``logs/``), else the per-user folder platformdirs gives for "Glimpse". Read on every call,
    not cached, so a test or a user can point it elsewhere at any time."""
    override = os.environ.get("GLIMPSE_HOME", "").strip()
    if override:
        root = Path(override).expanduser()
        return root if kind == "data" else root / kind
    if kind == "data":
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    if kind == "cache":
        return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def graph_cache() -> Path:
    """Where onnxruntime's optimized vision graphs are cached (``cache/onnx``). Here rather than in the vision module
    so the model store can clean it without importing onnxruntime."""
    return user_folder("cache") / "onnx"


def assets_root() -> Path:
    """The ``assets`` folder: inside a PyInstaller bundle when running from one, else beside the sources."""
    bundle = getattr(sys, "_MEIPASS", None)  # PyInstaller's unpack folder
    if bundle is not None and (Path(bundle) / "assets").is_dir():
        return Path(bundle) / "assets"
    return Path(__file__).resolve().parent.parent / "assets"
