"""The model store, the catalogue, the licence flow and ``glimpse models ...``; downloads come from a fake Hub."""

from __future__ import annotations

import functools
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from glimpse.engine.cli import main
from glimpse.engine.cli import models as cli_models
from glimpse.engine.convert import convert_checkpoint
from glimpse.engine.convert.install import import_model, pull_model
from glimpse.engine.errors import (
    CheckpointError,
    GlimpseError,
    LicenseNotAcceptedError,
    ModelFolderError,
    ModelNotFoundError,
    OutputExistsError,
)
from glimpse.engine.models import catalog, download
from glimpse.engine.models.download import DownloadOptions, read_state
from glimpse.engine.models.model_folder import is_model_folder, verify
from glimpse.engine.models.store import Store, home, normalize_name
from glimpse.engine.runtime.vision import VisionEncoder, cache_dir
from tests.fakehub import LICENSE_TEXT, REPO, FakeHub, make_repo


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def glimpse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "glimpse-home"
    monkeypatch.setenv("GLIMPSE_HOME", str(root))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_models, "_interactive", lambda: False)
    return root


@pytest.fixture
def hub(repo_dir: Path, glimpse_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub({REPO: repo_dir}) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.endpoint)  # the CLI reads it at call time
        yield h


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, repo_dir: Path) -> Path:
    """A converted model folder, made by the real converter from the tiny checkpoint."""
    return convert_checkpoint(repo_dir, tmp_path_factory.mktemp("converted") / "tiny", name="tiny")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- catalogue ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "name"), [
    ("fastvlm-0.5b", "fastvlm-0.5b"), ("0.5B", "fastvlm-0.5b"), ("FastVLM-1.5B", "fastvlm-1.5b"),
    ("apple/FastVLM-7B", "fastvlm-7b"), (" 7b ", "fastvlm-7b"),
])
def test_catalog_lookup(query: str, name: str) -> None:
    assert catalog.lookup(query).name == name


def test_catalog_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ModelNotFoundError, match=re.escape("fastvlm-0.5b, fastvlm-1.5b, fastvlm-7b")):
        catalog.lookup("fastvlm-3b")


def test_catalog_entries_are_consistent() -> None:
    for entry in catalog.CATALOG:
        names = [f.name for f in entry.files]
        assert len(names) == len(set(names)) and catalog.LICENSE_FILE in names and "config.json" in names
        assert entry.repo.startswith("apple/") and entry.license_id == "apple-amlr"
        assert entry.revision is None or len(entry.revision) == 40
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in entry.files)


@pytest.mark.parametrize(("folder", "name"), [
    ("llava-fastvithd_0.5b_stage3", "fastvlm-0.5b"), ("llava-fastvithd_7b_stage3", "fastvlm-7b"),
    ("models--apple--FastVLM-1.5B", "fastvlm-1.5b"), ("my-checkpoint", None), ("qwen-10.5b", None),
])
def test_guess_from_folder_name(folder: str, name: str | None) -> None:
    entry = catalog.guess_from_folder_name(folder)
    assert (entry.name if entry else None) == name


# -- store basics -------------------------------------------------------------------------------------------------

def test_glimpse_home_is_respected(glimpse_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert home() == glimpse_home
    assert Store.default().models_dir == glimpse_home / "models"
    monkeypatch.delenv("GLIMPSE_HOME")
    assert home().name == "Glimpse"  # the platformdirs user data folder


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".hidden", "x" * 65, "has space"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(GlimpseError):
        normalize_name(bad)


def test_empty_store(glimpse_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "list")
    assert code == 0
    for entry in catalog.CATALOG:
        assert entry.name in out
    assert out.count("not installed") == 3
    assert str(glimpse_home / "models") in out


# -- licence ------------------------------------------------------------------------------------------------------

def test_license_is_asked_once(hub: FakeHub, glimpse_home: Path) -> None:
    store, entry = Store.default(), catalog.lookup("0.5b")
    seen: list[str] = []

    def say_no(entry: catalog.CatalogEntry, text: str) -> bool:
        seen.append(text)
        return False

    with pytest.raises(LicenseNotAcceptedError, match="--accept-license"):
        store.ensure_license(entry, say_no)
    assert seen == [LICENSE_TEXT] and not store.license_accepted(entry.license_id)

    store.ensure_license(entry, lambda e, text: True)
    record = json.loads((glimpse_home / "licenses.json").read_text())["apple-amlr"]
    assert record["accepted"] and len(record["text_sha256"]) == 64

    requests = len(hub.log)
    store.ensure_license(catalog.lookup("7b"), None)  # same licence: no question, no network
    assert len(hub.log) == requests


def test_pull_without_acceptance_in_a_script(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "models", "pull", "0.5b", "-q")
    assert code == 1 and "--accept-license" in err and "Traceback" not in err
    assert hub.log == []


def test_pull_interactive_prompt(hub: FakeHub, glimpse_home: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_models, "_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out, err = run(capsys, "models", "pull", "0.5b", "-q")
    assert code == 1 and LICENSE_TEXT.strip() in out and "not been accepted" in err
    assert not (glimpse_home / "models" / "fastvlm-0.5b").exists()

    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, _ = run(capsys, "models", "pull", "0.5b", "-q")
    assert code == 0 and "is ready" in out


# -- pull, list, path, remove -------------------------------------------------------------------------------------

def test_pull_list_path_remove(hub: FakeHub, glimpse_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "pull", "fastvlm-0.5b", "--accept-license", "--quant", "q8_0", "-q")
    assert code == 0, out
    folder = glimpse_home / "models" / "fastvlm-0.5b"
    manifest = verify(folder)
    assert manifest.quant == "q8_0" and manifest.raw["source"]["revision"] == hub.commit
    assert manifest.raw["source"]["repo"] == REPO
    assert (folder / "LICENSE_MODEL").read_text() == LICENSE_TEXT
    assert not (glimpse_home / "downloads" / "fastvlm-0.5b").exists()  # checkpoint deleted after conversion

    code, out, _ = run(capsys, "models", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)["models"]}
    assert rows["fastvlm-0.5b"]["status"] == "installed" and rows["fastvlm-0.5b"]["complete"]
    assert rows["fastvlm-0.5b"]["quant"] == "q8_0" and rows["fastvlm-0.5b"]["size_bytes"] > 0
    assert rows["fastvlm-7b"]["status"] == "not installed"

    code, out, _ = run(capsys, "models", "path", "0.5B")
    assert code == 0 and out.strip() == str(folder)

    code, _, err = run(capsys, "models", "pull", "0.5b", "--accept-license", "-q")
    assert code == 1 and "already installed" in err

    code, _, err = run(capsys, "models", "remove", "0.5b")  # a script must say --yes
    assert code == 1 and "--yes" in err and folder.exists()

    code, out, _ = run(capsys, "models", "remove", "0.5b", "--yes")
    assert code == 0 and "Removed" in out and not folder.exists()
    assert not any(p.name.startswith(".") for p in (glimpse_home / "models").iterdir())

    code, _, err = run(capsys, "models", "path", "0.5b")
    assert code == 1 and "glimpse models pull fastvlm-0.5b" in err


def test_failed_pull_keeps_the_download_and_lists_it(hub: FakeHub, glimpse_home: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Fail fast instead of retrying for seconds.
    monkeypatch.setattr(download, "DownloadOptions", functools.partial(DownloadOptions, retries=0, retry_wait=0.0))
    hub.cut_after, hub.down_after_cut = 300_000, True
    code, _, err = run(capsys, "models", "pull", "0.5b", "--accept-license", "-q")
    assert code == 1 and "resume" in err and "Traceback" not in err
    partial = glimpse_home / "downloads" / "fastvlm-0.5b" / "model.safetensors.incomplete"
    assert partial.stat().st_size == 300_000

    code, out, _ = run(capsys, "models", "list")
    assert "partly downloaded" in out

    hub.reset()
    code, out, err = run(capsys, "models", "pull", "0.5b", "-q")  # licence already accepted
    assert code == 0 and "Resuming the download" in err
    assert hub.gets("model.safetensors")[-1].range == "bytes=300000-"


def test_remove_asks_and_keeps_on_no(glimpse_home: Path, model_folder: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import_model(Store.default(), model_folder, name="mine")
    monkeypatch.setattr(cli_models, "_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "")
    code, out, _ = run(capsys, "models", "remove", "mine")
    assert code == 0 and "Nothing was removed" in out and (glimpse_home / "models" / "mine").is_dir()


def test_remove_unknown(glimpse_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "models", "remove", "nothing-here", "--yes")
    assert code == 1 and "Nothing called 'nothing-here'" in err


def test_list_flags_a_broken_model(glimpse_home: Path, model_folder: Path) -> None:
    store = Store.default()
    import_model(store, model_folder, name="broken")
    (glimpse_home / "models" / "broken" / "llm.gguf").write_bytes(b"truncated")
    (glimpse_home / "models" / ".broken.partial-1").mkdir()  # a conversion in progress is never listed
    [model] = store.installed()
    assert model.name == "broken" and not model.complete and "llm.gguf" in model.problem


def test_offline_pull_without_copy(glimpse_home: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    Store.default().accept_license("apple-amlr", "text", "fastvlm-0.5b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "models", "pull", "0.5b", "-q")
    assert code == 1 and "Offline mode is on" in err and "glimpse models import" in err


def test_download_folder_state_after_pull_with_keep(hub: FakeHub, glimpse_home: Path) -> None:
    store = Store.default()
    store.accept_license("apple-amlr", LICENSE_TEXT, "fastvlm-0.5b")
    out = pull_model(store, catalog.lookup("0.5b"), keep_download=True,
                           options=DownloadOptions(endpoint=hub.endpoint, offline=False))
    assert is_model_folder(out)
    assert read_state(glimpse_home / "downloads" / "fastvlm-0.5b")["complete"]


# -- import -------------------------------------------------------------------------------------------------------

def test_import_converted_folder(glimpse_home: Path, model_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "models", "import", str(model_folder))
    assert code == 0 and "'tiny'" in out
    verify(glimpse_home / "models" / "tiny")
    code, _, err = run(capsys, "models", "import", str(model_folder))
    assert code == 1 and "--force" in err
    assert run(capsys, "models", "import", str(model_folder), "--force")[0] == 0


def test_import_refuses_a_corrupt_model_folder(glimpse_home: Path, model_folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(model_folder, bad)
    data = bytearray((bad / "llm.gguf").read_bytes())
    data[-1] ^= 0xFF
    (bad / "llm.gguf").write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="sha256"):
        import_model(Store.default(), bad)
    assert not (glimpse_home / "models" / "tiny").exists()


def test_import_checkpoint_folder_is_converted(glimpse_home: Path, repo_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    apple = tmp_path / "llava-fastvithd_0.5b_stage3"
    shutil.copytree(repo_dir, apple)
    code, out, _ = run(capsys, "models", "import", str(apple), "--quant", "q4_0", "-q")
    assert code == 0 and "'fastvlm-0.5b'" in out
    manifest = verify(glimpse_home / "models" / "fastvlm-0.5b")
    assert manifest.quant == "q4_0" and manifest.raw["source"]["path"] == str(apple.resolve())

    snapshot = tmp_path / "hub" / "models--apple--FastVLM-1.5B" / "snapshots" / ("ab" * 20)
    shutil.copytree(repo_dir, snapshot)
    assert import_model(Store.default(), snapshot).name == "fastvlm-1.5b"


def test_import_bad_paths(glimpse_home: Path, tmp_path: Path) -> None:
    store = Store.default()
    with pytest.raises(ModelFolderError, match="does not exist"):
        import_model(store, tmp_path / "missing")
    (tmp_path / "x.zip").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="Unzip"):
        import_model(store, tmp_path / "x.zip")


def test_pull_refuses_existing_without_force(glimpse_home: Path, model_folder: Path) -> None:
    store = Store.default()
    import_model(store, model_folder, name="fastvlm-0.5b")
    with pytest.raises(OutputExistsError):
        pull_model(store, catalog.lookup("0.5b"))


def test_remove_drops_the_optimized_graph_cache(glimpse_home: Path, model_folder: Path) -> None:
    store = Store.default()
    import_model(store, model_folder, name="mine")
    import_model(store, model_folder, name="twin")  # the same vision graph, installed twice
    with VisionEncoder(glimpse_home / "models" / "mine" / "vision.onnx", cache=True):
        pass
    cached = list(cache_dir().glob("vision-*.onnx"))
    assert len(cached) == 1 and str(cache_dir()).startswith(str(glimpse_home))

    removed = store.remove("mine")
    assert [p for p, _ in removed] == [glimpse_home / "models" / "mine"]
    assert cached[0].is_file()  # "twin" still uses it
    removed = store.remove("twin")
    assert (cached[0], removed[-1][1]) in removed and removed[-1][1] > 0
    assert not cached[0].exists()
