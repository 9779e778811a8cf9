"""A damaged model folder is listed as damaged, with a sentence, and can be removed; no other exception type
escapes the store, and nothing outside the folder is read because of what model.json says."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from glimpse.engine import durable
from glimpse.engine.errors import Cancelled, GlimpseError, ModelFolderError
from glimpse.engine.models import model_folder
from glimpse.engine.models.model_folder import read_manifest, verify
from glimpse.engine.models.store import Store
from glimpse.engine.runtime import model
from tests.damaged import DAMAGE, healthy_model


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


def test_the_healthy_stand_in_is_listed_as_installed(store: Store) -> None:
    """The damaged cases below differ from this folder in one way each."""
    healthy_model(store.models_dir / "mine")
    [model] = store.installed()
    assert model.complete and model.quant == "q8_0" and model.problem == ""
    verify(model.path)  # hashes too


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_model_is_listed_as_damaged_and_can_be_removed(store: Store, damage: str) -> None:
    healthy_model(store.models_dir / "good", name="good")
    folder = healthy_model(store.models_dir / "mine")
    DAMAGE[damage](folder)

    listed = {m.name: m for m in store.installed()}
    assert listed["good"].complete  # one damaged model hides nothing else
    model = listed["mine"]
    assert not model.complete
    assert str(folder) in model.problem and len(model.problem) < 400, model.problem
    with pytest.raises(ModelFolderError):
        verify(folder)

    removed = store.remove("mine")
    assert [path for path, _ in removed] == [folder]
    assert not folder.exists() and not folder.is_symlink()
    assert [m.name for m in store.installed()] == ["good"]
    if damage == "file-is-a-link-outside":  # removing deleted the link, not what it points to
        assert (store.root / "outside.bin").read_bytes() == b"GGUF" * 100


def test_files_entry_without_sha256_is_not_trusted(store: Store) -> None:
    """A listed file without a sha256 is refused with a sentence, neither trusted unhashed nor a TypeError."""
    folder = healthy_model(store.models_dir / "mine")
    DAMAGE["entry-without-sha256"](folder)
    with pytest.raises(ModelFolderError, match=r"llm\.gguf has no valid sha256"):
        read_manifest(folder)


def test_a_listed_path_outside_the_folder_is_never_opened(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = healthy_model(store.models_dir / "mine")
    DAMAGE["path-leaves-the-folder"](folder)
    opened: list[str] = []
    real_lstat = Path.lstat

    def spy(self: Path) -> object:
        opened.append(str(self))
        return real_lstat(self)

    monkeypatch.setattr(Path, "lstat", spy)
    with pytest.raises(ModelFolderError, match="not a plain file name"):
        verify(folder)
    assert not any("secret" in p for p in opened)


def test_unreadable_models_folder_is_a_sentence(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:

    healthy_model(store.models_dir / "mine")

    def denied(self: Path) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(GlimpseError, match="Cannot read"):
        store.installed()


def test_damaged_download_state_is_listed_not_raised(store: Store) -> None:
    folder = store.downloads_dir / "fastvlm-0.5b"
    folder.mkdir(parents=True)
    (folder / ".glimpse-download.json").write_text('{"files": {"config.json": 5}, "complete": true}',
                                                   encoding="utf-8")
    [download] = store.downloads()
    assert download.name == "fastvlm-0.5b" and not download.complete


def test_hashing_stops_when_cancelled(store: Store) -> None:


    folder = healthy_model(store.models_dir / "mine")
    cancel = threading.Event()
    verify(folder, cancel=cancel)  # not set: hashes everything
    cancel.set()
    verify(folder, check_hashes=False, cancel=cancel)  # nothing to hash, nothing to cancel
    with pytest.raises(Cancelled, match="Loading the model was cancelled"):
        verify(folder, cancel=cancel)


@pytest.mark.parametrize("text", ["[" * 100_000, "{not json", '{"apple-amlr": [true]}', " " * (2 << 20)])
def test_damaged_licence_record_means_not_accepted(store: Store, text: str) -> None:
    store.root.mkdir(parents=True)
    store.licenses_file.write_text(text, encoding="utf-8")
    assert not store.license_accepted("apple-amlr")
    store.accept_license("apple-amlr", "text", "mine")  # and accepting again repairs it
    assert store.license_accepted("apple-amlr")


def test_unwritable_licence_record_is_a_sentence(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:

    def full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "write_text", full)
    with pytest.raises(GlimpseError, match="Could not record the licence acceptance"):
        store.accept_license("apple-amlr", "text", "mine")


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("stamp", ["fifo", "nested", "huge"])
def test_a_hostile_verified_stamp_means_hashing_again(store: Store, stamp: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-load stamp (.glimpse-verified) is read and rewritten without blocking or raising."""


    folder = healthy_model(store.models_dir / "mine")
    path = folder / ".glimpse-verified"
    if stamp == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("[" * 100_000 if stamp == "nested" else " " * (1 << 17), encoding="utf-8")
    hashed: list[Path] = []
    real = model_folder.sha256_file
    monkeypatch.setattr(model_folder, "sha256_file", lambda p, c=None: hashed.append(p) or real(p, c))
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(model._verify_once(folder)), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "reading or writing the stamp blocked"
    assert result and len(hashed) == 3  # every listed file hashed again
    assert path.is_file() and not path.is_symlink()  # replaced by a real stamp
    hashed.clear()
    model._verify_once(folder)
    assert hashed == []  # which the next load trusts
