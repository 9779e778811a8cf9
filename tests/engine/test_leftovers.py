"""Working folders of Glimpse processes that died are deleted at the next start; nothing else is touched."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.models.leftovers import process_alive
from engine.models.store import Store
from engine.runtime.vision import cache_dir

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="links need POSIX")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has ended (ids are reused only after wrapping around, not within a test)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    return child.pid


def big_folder(path: Path, *, idle_s: float = 3600) -> Path:
    """A working folder nothing has written to for ``idle_s`` seconds."""
    (path / "sub").mkdir(parents=True)
    (path / "llm.gguf").write_bytes(b"x" * 1000)
    (path / "sub" / "part").write_bytes(b"y")
    return idle(path, idle_s)


def idle(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    for p in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(p, (then, then), follow_symlinks=False)
    return path


def test_process_alive() -> None:
    assert process_alive(os.getpid())
    assert process_alive(os.getppid())
    assert process_alive(0) and process_alive(-5)  # never "dead": not ids of a Glimpse process


@posix_only
def test_dead_processes_folders_are_deleted_and_nothing_else(tmp_path: Path, dead_pid: int) -> None:
    store = Store(tmp_path / "home")
    models, downloads = store.models_dir, store.downloads_dir
    dead = [big_folder(models / f".fastvlm-0.5b.partial-{dead_pid}"),
            big_folder(models / f".mine.import-{dead_pid}"),
            big_folder(models / f".mine.old-{dead_pid}"),
            big_folder(downloads / f".fastvlm-0.5b.removing-{dead_pid}")]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dead.append(cache / f".vision-{'a' * 32}-{'b' * 16}.onnx.{dead_pid}.partial")
    dead[-1].write_bytes(b"half a graph")
    idle(dead[-1], 3600)
    outside = big_folder(tmp_path / "outside")
    kept = [big_folder(models / f".mine.partial-{os.getpid()}"),  # this process: still working
            big_folder(models / f".other.import-{os.getppid()}"),  # a live process
            big_folder(models / "mine"),  # a model
            big_folder(models / f"mine.partial-{dead_pid}"),  # not hidden: not a name Glimpse makes
            big_folder(models / f".Mine.partial-{dead_pid}"),  # not a store name
            big_folder(models / f".mine.backup-{dead_pid}"),
            # A dead id, but written to a minute ago: another computer sharing the folder may be converting.
            big_folder(models / f".shared.partial-{dead_pid}", idle_s=60),
            big_folder(downloads / "fastvlm-0.5b")]
    (downloads / "fastvlm-0.5b" / "model.safetensors.incomplete").write_bytes(b"resumable")
    link = models / f".linked.partial-{dead_pid}"
    link.symlink_to(outside, target_is_directory=True)  # a link is never followed or deleted
    (models / f".file.partial-{dead_pid}").write_bytes(b"a file, not a working folder")
    idle(models / f".file.partial-{dead_pid}", 3600)
    kept += [link, models / f".file.partial-{dead_pid}", downloads / "fastvlm-0.5b" / "model.safetensors.incomplete"]

    removed = store.clean_leftovers()

    assert sorted(removed) == sorted(dead)
    assert not any(p.exists() for p in dead)
    assert all(p.exists() or p.is_symlink() for p in kept)
    assert (outside / "llm.gguf").read_bytes() == b"x" * 1000 and (outside / "sub" / "part").exists()
    assert store.clean_leftovers() == []


def test_cli_models_command_cleans_up(tmp_path: Path, dead_pid: int, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    leftover = big_folder(Store.default().models_dir / f".mine.partial-{dead_pid}")
    assert main(["models", "list"]) == 0
    assert not leftover.exists()


def test_missing_store_is_nothing_to_clean(tmp_path: Path) -> None:
    assert Store(tmp_path / "nowhere").clean_leftovers() == []
