"""Publishing renames are durable: the new file (or every file of a new folder) is synced before the rename and
the folder after it, for downloads, model folders (converted and imported), licence records and exports."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import huggingface_hub
import pytest

from glimpse.engine import durable
from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.install import import_model
from glimpse.engine.models import catalog
from glimpse.engine.models.download import STATE_FILE, DownloadOptions, download_model
from glimpse.engine.models.store import Store
from tests.durability import SyncLog, needs_proc
from tests.fakehub import REPO, FakeHub, make_repo

pytestmark = needs_proc


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> SyncLog:
    return SyncLog().install(monkeypatch)


def test_publish_syncs_the_file_then_the_folder(tmp_path: Path, log: SyncLog) -> None:
    tmp = tmp_path / ".x.tmp"
    tmp.write_text("new", encoding="utf-8")
    durable.publish(tmp, tmp_path / "x")
    log.assert_durable(tmp_path / "x")
    assert (tmp_path / "x").read_text(encoding="utf-8") == "new"


def test_the_recorder_catches_a_rename_without_sync(tmp_path: Path, log: SyncLog) -> None:
    """The check the other tests rely on fails for a plain rename."""
    (tmp_path / "a").write_text("x", encoding="utf-8")
    os.replace(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError, match="not synced"):
        log.assert_durable(tmp_path / "b")


def test_publish_folder_replaces_an_old_folder_after_syncing_the_new_one(tmp_path: Path, log: SyncLog) -> None:
    new, final = tmp_path / ".m.partial-1", tmp_path / "m"
    (new / "sub").mkdir(parents=True)
    (new / "a.bin").write_bytes(b"a")
    (new / "sub" / "b.bin").write_bytes(b"b")
    final.mkdir()
    (final / "old.bin").write_bytes(b"old")
    durable.publish_folder(new, final, aside=tmp_path / ".m.old-1")
    log.assert_durable(final)
    assert sorted(p.name for p in final.rglob("*")) == ["a.bin", "b.bin", "sub"]
    assert not (tmp_path / ".m.old-1").exists() and not new.exists()


def test_write_text_leaves_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    path.write_text("old", encoding="utf-8")

    def full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        durable.write_text(path, "new")
    assert path.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temporary file left


def test_download_files_and_state_are_durable(tmp_path: Path, log: SyncLog) -> None:
    with FakeHub({REPO: make_repo(tmp_path / "repo")}) as hub:
        folder = tmp_path / "dl"
        download_model(catalog.lookup("fastvlm-0.5b"), folder,
                       options=DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, timeout=5.0))

    huggingface_hub.close_session()
    for name in ("model.safetensors", "config.json", STATE_FILE):
        log.assert_durable(folder / name)


def test_converted_model_folder_is_durable(tiny_checkpoint: Path, tmp_path: Path, log: SyncLog) -> None:

    out = convert_checkpoint(tiny_checkpoint, tmp_path / "m", quant="f16", vision_precision="fp32")
    log.assert_durable(out)
    # A second conversion with --force replaces it the same way.
    convert_checkpoint(tiny_checkpoint, out, quant="f16", vision_precision="fp32", force=True)
    log.assert_durable(out)


def test_imported_model_folder_and_licence_record_are_durable(tiny_model_dir: Path, tmp_path: Path,
                                                              log: SyncLog) -> None:
    store = Store(tmp_path / "home")
    out = import_model(store, tiny_model_dir, name="copy")
    log.assert_durable(out)
    store.accept_license("apple-amlr", "text", "copy")
    log.assert_durable(store.licenses_file)
    assert json.loads(store.licenses_file.read_text(encoding="utf-8"))["apple-amlr"]["accepted"]



def test_a_folder_that_refuses_syncing_does_not_fail_the_write(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_dirs(path: str | Path, flags: int, *a: int) -> int:
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", no_dirs)
    durable.write_text(tmp_path / "notes.md", "kept")
    assert (tmp_path / "notes.md").read_text(encoding="utf-8") == "kept"


# -- state files that can be rebuilt ----------------------------------------------------------------------------------

def _parse(data: bytes) -> dict[str, object]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value


@pytest.mark.parametrize(("kind", "content"), [("truncated", b'{"cores": 8, "bat'), ("garbage", b"\x00\xff" * 50),
                                               ("wrong shape", b"[1, 2]"), ("too big", b"{}" + b" " * 200)])
def test_a_damaged_state_file_is_set_aside_once(kind: str, content: bytes, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="glimpse"):
        first = durable.read_state_file(path, _parse, what="test cache", max_bytes=100)
        second = durable.read_state_file(path, _parse, what="test cache", max_bytes=100)
    assert first.value is None and first.damaged == tmp_path / "cache.json.damaged"
    assert first.damaged.read_bytes() == content and not path.exists()
    assert str(path) in first.notice and "cache.json.damaged" in first.notice
    assert second == durable.StateRead(None)  # said once: the next read finds no file and says nothing
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [first.notice]


def test_a_good_or_missing_state_file_is_read_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.json"
    with caplog.at_level(logging.WARNING, logger="glimpse"):
        assert durable.read_state_file(path, _parse, what="test cache") == durable.StateRead(None)
        path.write_text('{"a": 1}', encoding="utf-8")
        assert durable.read_state_file(path, _parse, what="test cache") == durable.StateRead({"a": 1})
    assert caplog.records == [] and path.exists()


def test_a_state_path_that_is_a_folder_or_link_is_set_aside(tmp_path: Path) -> None:
    folder = tmp_path / "cache.json"
    folder.mkdir()
    assert durable.read_state_file(folder, _parse, what="test cache").damaged == tmp_path / "cache.json.damaged"
    link = tmp_path / "other.json"
    (tmp_path / "target.json").write_text("{}", encoding="utf-8")
    link.symlink_to(tmp_path / "target.json")
    read = durable.read_state_file(link, _parse, what="test cache")
    assert read.value is None and read.damaged is not None and read.damaged.is_symlink()
    assert (tmp_path / "target.json").read_text(encoding="utf-8") == "{}"  # the link's target is not touched
