"""One answer to "where": the user folders follow $GLIMPSE_HOME the same way for every caller, and the assets root
is the bundle's in a frozen app."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import platformdirs
import pytest

from glimpse.app.launcher import log_dir
from glimpse.engine.cli import main
from glimpse.engine.errors import FolderError
from glimpse.engine.folders import assets_root, user_folder
from glimpse.engine.models.store import Store, home
from glimpse.engine.runtime.vision import cache_dir


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


# -- a home that cannot be used is said, by every entry point --------------------------------------------------------

COMMANDS = [["models", "list"], ["models", "list", "--json"], ["models", "import", "/nowhere"],
            ["models", "pull", "fastvlm-0.5b", "--accept-license"], ["models", "remove", "fastvlm-0.5b", "--yes"],
            ["models", "path", "fastvlm-0.5b"], ["ask", "fastvlm-0.5b", "x.png", "What is it?"],
            ["caption", "fastvlm-0.5b", "--source", "screen"], ["convert", "/nowhere", "/elsewhere"],
            ["bench", "fastvlm-0.5b"]]
as_root = hasattr(os, "geteuid") and os.geteuid() == 0


def said(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out = capsys.readouterr()
    assert 1 <= code <= 127, (argv, code, out)
    assert out.out == "" or argv[:2] == ["models", "pull"], out.out  # no table, no empty listing
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glimpse: error: Glimpse cannot use "), (argv, out.err)
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_home_that_is_a_file_is_said_by_every_command(argv: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    line = said(capsys, argv)
    assert f"Glimpse cannot use {home}, its data folder" in line and "it is a file, not a folder" in line
    assert "GLIMPSE_HOME" in line and home.read_text() == "not a folder"


@pytest.mark.parametrize(("inside", "what"), [("models", "model store"), ("downloads", "download folder"),
                                              ("cache", "cache folder")])
def test_a_store_folder_that_is_a_file_is_said(inside: str, what: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path))
    (tmp_path / inside).write_text("not a folder")
    line = said(capsys, ["models", "list"])
    assert f"{tmp_path / inside}, its {what}" in line
    # The store itself never takes it for an empty store either.
    if inside == "models":
        with pytest.raises(FolderError, match="is a file"):
            Store(tmp_path).installed()


def test_an_empty_listing_means_no_model_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "not-yet"))  # a home that does not exist yet is fine
    assert main(["models", "list"]) == 0
    assert "not installed" in capsys.readouterr().out


@pytest.mark.skipif(as_root or sys.platform == "win32", reason="permissions do not bind the superuser")
def test_an_unreadable_home_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0)
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    try:
        line = said(capsys, ["models", "list"])
    finally:
        home.chmod(0o700)
    assert f"{home}, its data folder" in line and "permission denied" in line


@contextlib.contextmanager
def mounted(folder: Path, options: str) -> Iterator[None]:
    """A small tmpfs on ``folder`` (skips the test where this process may not mount)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not as_root or shutil.which("mount") is None:
        pytest.skip("mounting a file system needs the superuser")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_home_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    with mounted(home, "ro,size=64k"):
        for argv in (["models", "list"], ["models", "import", "/nowhere"], ["ask", "m", "x.png", "q"]):
            line = said(capsys, argv)
            assert f"{home}, its data folder" in line and "read-only file system" in line


def test_a_full_home_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    with mounted(home, "size=64k"):
        with contextlib.suppress(OSError), open(home / "filler", "wb") as f:
            while True:
                f.write(b"x" * 4096)
                f.flush()
        line = said(capsys, ["models", "list"])
        assert f"{home}, its data folder" in line and "full" in line and "Free some space" in line
