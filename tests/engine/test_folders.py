"""One answer to "where": the user folders follow $GLIMPSE_HOME the same way for every caller, and the assets root
is the bundle's in a frozen app."""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs
import pytest

from app.launcher import log_dir
from engine.folders import assets_root, user_folder
from engine.models.store import home
from engine.runtime.vision import cache_dir


def test_glimpse_home_holds_every_user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", f"  {tmp_path}  ")
    assert user_folder("data") == home() == tmp_path
    assert user_folder("cache") == tmp_path / "cache" and cache_dir() == tmp_path / "cache" / "onnx"
    assert user_folder("logs") == log_dir() == tmp_path / "logs"


def test_without_glimpse_home_the_per_user_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in (None, "   "):  # unset, or only spaces: both mean "not set"
        if value is None:
            monkeypatch.delenv("GLIMPSE_HOME", raising=False)
        else:
            monkeypatch.setenv("GLIMPSE_HOME", value)
        assert user_folder("data") == Path(platformdirs.user_data_dir("Glimpse", appauthor=False))
        assert user_folder("cache") == Path(platformdirs.user_cache_dir("Glimpse", appauthor=False))
        assert log_dir() == Path(platformdirs.user_log_dir("Glimpse", appauthor=False))


def test_assets_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (assets_root() / "calibration").is_dir()  # a checkout
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert assets_root() != tmp_path / "assets"  # a bundle without assets/ is not used
    (tmp_path / "assets").mkdir()
    assert assets_root() == tmp_path / "assets"
