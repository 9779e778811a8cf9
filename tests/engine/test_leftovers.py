"""Working files carry their owner (host, process id, start time); the next command reclaims a provably dead
owner's at once, leaves a live owner's and another host's alone, says what it freed and lists what is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from glimpse.engine.cli import main
from glimpse.engine.models.leftovers import OWNER_FILE, Owner, claim, process_alive, read_owner, reclaim
from glimpse.engine.models.store import Store
from glimpse.engine.runtime.vision import cache_dir
from tests.fakehub import REPO, FakeHub, make_repo

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="links and kill -9 need POSIX")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has ended (ids are reused only after wrapping around, not within a test)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid)
    return child.pid


def big_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "llm.gguf").write_bytes(b"x" * 1000)
    (path / "sub" / "part").write_bytes(b"y")
    return path


def owned(path: Path, host: str, pid: int, started: float) -> Path:
    (path / OWNER_FILE).write_text(json.dumps({"host": host, "pid": pid, "started": started}), encoding="utf-8")
    return path


def test_owner_states(dead_pid: int) -> None:
    me = Owner.this_process()
    assert me.state() == "alive"
    assert Owner(me.host, dead_pid, me.started).state() == "gone"
    assert Owner(me.host, me.pid, me.started - 3600).state() == "gone"  # the id now belongs to another process
    assert Owner("another-computer.example", dead_pid, 0.0).state() == "elsewhere"
    parent = psutil.Process(os.getppid())
    assert Owner(me.host, parent.pid, parent.create_time()).state() == "alive"
    assert process_alive(os.getpid()) and process_alive(0) and not process_alive(dead_pid)


def test_claim_records_this_process(tmp_path: Path) -> None:
    claim(tmp_path)
    assert read_owner(tmp_path) == Owner.this_process()
    (tmp_path / OWNER_FILE).write_text("{half", encoding="utf-8")
    assert read_owner(tmp_path) is None


@posix_only
def test_dead_owners_work_is_reclaimed_and_nothing_else(tmp_path: Path, dead_pid: int) -> None:
    store = Store(tmp_path / "home")
    models, downloads = store.models_dir, store.downloads_dir
    me = Owner.this_process()
    dead = [owned(big_folder(models / f".fastvlm-0.5b.partial-{dead_pid}"), me.host, dead_pid, me.started),
            # The id is alive, but the process that has it started at another time: the owner is gone.
            owned(big_folder(models / f".mine.import-{me.pid}"), me.host, me.pid, me.started - 100),
            big_folder(models / f".mine.old-{dead_pid}"),  # no record (an older Glimpse): judged by the id
            big_folder(downloads / f".fastvlm-0.5b.removing-{dead_pid}")]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dead.append(cache / f".vision-{'a' * 32}-{'b' * 16}.onnx.{dead_pid}.partial")
    dead[-1].write_bytes(b"half a graph")
    outside = big_folder(tmp_path / "outside")
    kept = [owned(big_folder(models / f".mine.partial-{me.pid}"), me.host, me.pid, me.started),  # still working
            owned(big_folder(models / f".shared.partial-{dead_pid}"), "another-computer.example", dead_pid, 0.0),
            big_folder(models / f".other.import-{os.getppid()}"),  # a live process, no record
            big_folder(models / "mine"),  # a model
            big_folder(models / f"mine.partial-{dead_pid}"),  # not hidden: not a name Glimpse makes
            big_folder(models / f".Mine.partial-{dead_pid}"),  # not a store name
            big_folder(models / f".mine.backup-{dead_pid}")]
    # A killed download keeps its bytes (the next pull resumes them); only its stale owner record goes.
    download = owned(big_folder(downloads / "fastvlm-0.5b"), me.host, dead_pid, me.started)
    (download / "model.safetensors.incomplete").write_bytes(b"resumable")
    link = models / f".linked.partial-{dead_pid}"
    link.symlink_to(outside, target_is_directory=True)  # a link is never followed or deleted
    (models / f".file.partial-{dead_pid}").write_bytes(b"a file, not a working folder")
    kept += [link, models / f".file.partial-{dead_pid}", download / "model.safetensors.incomplete"]

    sizes = {p: sum(f.stat().st_size for f in ([*p.rglob("*")] if p.is_dir() else [p]) if f.is_file())
             for p in dead}
    result = store.reclaim()

    assert sorted(p for p, _ in result.removed) == sorted(dead)
    assert dict(result.removed) == sizes and result.freed == sum(sizes.values())
    assert "Freed" in result.sentence()
    assert not any(p.exists() for p in dead)
    assert all(p.exists() or p.is_symlink() for p in kept)
    assert not (download / OWNER_FILE).exists()
    assert (outside / "llm.gguf").read_bytes() == b"x" * 1000 and (outside / "sub" / "part").exists()
    in_use = {w.path.name: w for w in result.in_use}
    assert set(in_use) == {f".mine.partial-{me.pid}", f".shared.partial-{dead_pid}", f".other.import-{os.getppid()}"}
    assert "another computer" in in_use[f".shared.partial-{dead_pid}"].describe()
    assert store.reclaim().removed == []


def test_missing_store_is_nothing_to_clean(tmp_path: Path) -> None:
    assert Store(tmp_path / "nowhere").clean_leftovers() == []
    assert reclaim([tmp_path / "nowhere"], tmp_path / "nowhere", tmp_path / "nowhere").removed == []


# -- kill -9 of real work, then the next command ----------------------------------------------------------------------

BLOCKER = textwrap.dedent("""
    import importlib, sys, threading, time
    from pathlib import Path
    module, name, ready = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if module != "-":
        target = importlib.import_module(module)
        real = getattr(target, name)
        def blocked(*args, **kwargs):
            real_result = real(*args, **kwargs) if name == "_copy_regular" else None
            ready.write_text("working")
            time.sleep(600)  # killed here, mid-way
            return real_result
        setattr(target, name, blocked)
    from glimpse.engine.cli import main
    sys.exit(main(sys.argv[4:]))
""")


@pytest.fixture
def glimpse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("GLIMPSE_HOME", str(home))
    return home


@pytest.fixture
def run_blocked(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``glimpse ARGS`` in a real process that stops (sleeps) inside ``module.name``, once it is working."""
    started: list[subprocess.Popen[bytes]] = []

    def run(module: str, name: str, *args: str, env: dict[str, str] | None = None,
            ready_when: Callable[[], bool] | None = None) -> subprocess.Popen[bytes]:
        ready = tmp_path / f"ready-{len(started)}"
        proc = subprocess.Popen([sys.executable, "-c", BLOCKER, module, name, str(ready), *args], cwd=ROOT,
                                env={**os.environ, **(env or {})}, stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + 120
        while not (ready_when() if ready_when is not None else ready.exists()):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the command never reached its working step"
            time.sleep(0.05)
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


@posix_only
def test_a_killed_import_is_reclaimed_by_the_next_command(glimpse_home: Path, tiny_model_dir: Path,
                                                          run_blocked: Callable[..., subprocess.Popen[bytes]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_blocked("glimpse.engine.models.folder_copy", "_copy_regular", "models", "import", str(tiny_model_dir),
                       "--name", "mine", "-q")
    models = glimpse_home / "models"
    [work] = hidden(models)
    assert work.name == f".mine.import-{proc.pid}"
    assert read_owner(work) == Owner(Owner.this_process().host, proc.pid, psutil.Process(proc.pid).create_time())

    assert main(["models", "list"]) == 0  # the owner is alive: its work is left alone and shown
    out = capsys.readouterr()
    assert work.exists() and str(work) in out.out and f"an import by process {proc.pid}" in out.out

    kill9(proc)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr()
    assert not work.exists() and hidden(models) == []
    assert "Freed" in out.err and work.name in out.err
    assert "Work in progress" not in out.out


@posix_only
def test_a_killed_conversion_is_reclaimed_by_the_next_command(glimpse_home: Path, tiny_checkpoint: Path,
                                                              tmp_path: Path,
                                                              run_blocked: Callable[..., subprocess.Popen[bytes]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = glimpse_home / "models" / "converted"
    proc = run_blocked("glimpse.engine.convert.vision_graph", "build_vision_onnx", "convert", str(tiny_checkpoint),
                       str(out_dir), "-q")
    [work] = hidden(out_dir.parent)
    assert work.name == f".converted.partial-{proc.pid}" and read_owner(work) is not None
    kill9(proc)
    assert main(["models", "remove", "nothing-here", "--yes"]) == 1  # any command that touches the store
    assert not work.exists()
    assert "Freed" in capsys.readouterr().err


@posix_only
def test_a_killed_pull_keeps_its_download_and_reclaims_its_conversion(
        glimpse_home: Path, tmp_path: Path, run_blocked: Callable[..., subprocess.Popen[bytes]],
        capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "repo")
    with FakeHub({REPO: repo}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}
        # Killed while converting: the conversion's folder goes, the finished download stays.
        proc = run_blocked("glimpse.engine.convert.vision_graph", "build_vision_onnx", "models", "pull", "fastvlm-0.5b",
                           "--accept-license", "-q", env=env)
        [work] = hidden(glimpse_home / "models")
        assert read_owner(work) is not None
        kill9(proc)
        assert main(["models", "list"]) == 0
        out = capsys.readouterr()
        assert not work.exists() and "Freed" in out.err
        assert "downloaded, not converted" in out.out

        # Killed while downloading: what arrived is kept for the next pull, shown as a partial download.
        dl = glimpse_home / "downloads" / "fastvlm-0.5b"
        shutil.rmtree(dl)
        hub.stall_after, hub.stalls = 100_000, -1  # the weights stop after 100 KB, the connection kept open
        partial = dl / "model.safetensors.incomplete"
        proc = run_blocked("-", "", "models", "pull", "fastvlm-0.5b", "--accept-license", "-q",
                           env={**env, "GLIMPSE_DOWNLOAD_STALL_S": "300"},
                           ready_when=lambda: partial.is_file() and partial.stat().st_size == 100_000)
        assert main(["models", "list"]) == 0
        assert f"a download by process {proc.pid}" in capsys.readouterr().out
        kill9(proc)
        assert main(["models", "list"]) == 0
        out = capsys.readouterr()
        assert "partly downloaded" in out.out and "Work in progress" not in out.out
        assert any(p.name.endswith(".incomplete") for p in dl.iterdir()) and not (dl / OWNER_FILE).exists()
