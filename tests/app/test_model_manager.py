"""The model manager against a fake Hugging Face Hub on 127.0.0.1: licence, download with progress, cancel and
resume, offline import, remove, choose."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from glimpse.app.settings import Settings
from glimpse.app.widgets.model_manager import OFFLINE, ModelManager
from glimpse.engine.models.download import DownloadOptions
from glimpse.engine.models.store import Store
from glimpse.engine.progress import Progress
from tests.fakehub import LICENSE_TEXT, REPO, FakeHub, dead_endpoint, make_repo


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[FakeHub]:
    with FakeHub({REPO: repo_dir}) as h:
        yield h
    huggingface_hub.close_session()  # its pooled keep-alive connections would hold the server's threads


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


def manager(qtbot: QtBot, settings: Settings, store: Store, options: DownloadOptions) -> ModelManager:
    dialog = ModelManager(settings, options=options, store=store, first_run=True)
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_download_shows_licence_progress_and_chooses_the_model(qtbot: QtBot, hub: FakeHub, settings: Settings,
                                                               store: Store) -> None:
    options = DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, timeout=5.0)
    dialog = manager(qtbot, settings, store, options)
    dialog.select("fastvlm-0.5b")
    assert dialog.download_button.isEnabled()
    assert not dialog.progress.isTextVisible()  # idle: an empty bar, no "0%"
    with qtbot.waitSignal(dialog.license_shown, timeout=10_000):
        dialog.download_button.click()
    assert LICENSE_TEXT.strip() in dialog.license.text.toPlainText()
    assert not dialog.download_button.isEnabled()  # nothing else until the licence is answered

    reports: list[Progress] = []
    shown: list[bool] = []
    dialog._on_progress = (lambda p, orig=dialog._on_progress:  # type: ignore[method-assign]
                           (reports.append(p), orig(p), shown.append(dialog.progress.isTextVisible()))[1])
    with qtbot.waitSignal(dialog.model_chosen, timeout=180_000) as chosen, \
            qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.license.accept_button.click()
    assert finished.args == ["done"] and chosen.args == ["fastvlm-0.5b"]
    assert settings.model == "fastvlm-0.5b"
    assert store.license_accepted("apple-amlr")
    assert [m.name for m in store.installed() if m.complete] == ["fastvlm-0.5b"]
    assert dialog.table.status_of("fastvlm-0.5b").startswith("Installed")
    (model,) = store.installed()
    # The vision encoder's precision is shown, and why it was chosen is in the tooltip.
    assert f", vision {model.vision}" in dialog.table.status_of("fastvlm-0.5b") and model.vision_reason
    row = dialog.table._names.index("fastvlm-0.5b")
    assert model.vision_reason in dialog.table.item(row, 2).toolTip()
    byte_reports = [p for p in reports if p.unit == "B"]
    assert byte_reports and byte_reports[-1].done == byte_reports[-1].total > 0
    assert any(shown) and not dialog.progress.isTextVisible()  # a percentage while it counts, none after


def test_cancelled_download_resumes(qtbot: QtBot, hub: FakeHub, settings: Settings, store: Store) -> None:
    store.accept_license("apple-amlr", LICENSE_TEXT, "fastvlm-0.5b")
    hub.cut_after, hub.down_after_cut = 300_000, True  # the connection drops and the server stays down
    options = DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, timeout=5.0)
    dialog = manager(qtbot, settings, store, options)
    dialog.select("fastvlm-0.5b")
    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.download_button.click()
    assert finished.args == ["failed"]
    assert "resume" in dialog.detail.text()
    dialog.select("fastvlm-0.5b")
    assert dialog.table.status_of("fastvlm-0.5b").startswith("Partly downloaded")
    assert dialog.download_button.text() == "Resume download"

    hub.reset()
    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.download_button.click()
    assert finished.args == ["done"]
    assert any(e.range == "bytes=300000-" for e in hub.gets("model.safetensors"))


def test_cancel_button_stops_a_download(qtbot: QtBot, hub: FakeHub, settings: Settings, store: Store,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store.accept_license("apple-amlr", LICENSE_TEXT, "fastvlm-0.5b")
    options = DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, timeout=5.0)
    dialog = manager(qtbot, settings, store, options)
    dialog.select("fastvlm-0.5b")
    # Cancel as soon as the first bytes arrive.
    dialog.detail.setText("")
    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.download_button.click()
        qtbot.waitUntil(lambda: "download" in dialog.detail.text(), timeout=10_000)
        dialog.cancel_button.click()
    assert finished.args in (["cancelled"], ["done"])  # a tiny download may win the race
    assert not dialog.busy


def test_offline_says_so_and_import_still_works(qtbot: QtBot, settings: Settings, store: Store,
                                                tiny_checkpoint: Path, tiny_model_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dialog = manager(qtbot, settings, store, DownloadOptions(offline=True))
    assert dialog.offline.isVisible() and dialog.offline.text() == OFFLINE
    dialog.select("fastvlm-0.5b")
    assert not dialog.download_button.isEnabled()

    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.import_folder(tiny_checkpoint)  # a checkpoint: converted, with progress
    assert finished.args == ["done"], dialog.detail.text()
    name = tiny_checkpoint.name
    assert settings.model == name  # the first model is chosen for use

    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.import_folder(tiny_model_dir)  # converted from the same checkpoint: same name
    assert finished.args == ["failed"] and "already installed" in dialog.detail.text()
    assert "--" not in dialog.detail.text() and "model manager" in dialog.detail.text()  # no command-line advice

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    manifest = json.loads((other / "model.json").read_text(encoding="utf-8"))
    manifest["name"] = "other-tiny"
    (other / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    with qtbot.waitSignal(dialog.job_finished, timeout=180_000) as finished:
        dialog.import_folder(other)  # a converted folder: verified and copied
    assert finished.args == ["done"], dialog.detail.text()
    assert {m.name for m in store.installed()} == {name, "other-tiny"}
    assert settings.model == name  # importing a second model does not switch to it

    dialog.select("other-tiny")
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        dialog.use_button.click()
    assert chosen.args == ["other-tiny"] and settings.model == "other-tiny"

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(dialog.model_chosen) as chosen:
        dialog.remove_button.click()
    assert chosen.args == [""]  # the model in use went away
    assert [m.name for m in store.installed()] == [name]


def test_unreachable_hub_is_a_clear_message(qtbot: QtBot, settings: Settings, store: Store) -> None:
    dialog = manager(qtbot, settings, store, DownloadOptions(endpoint=dead_endpoint(), offline=False, retries=0))
    dialog.select("fastvlm-0.5b")
    with qtbot.waitSignal(dialog.job_finished, timeout=20_000) as finished:
        dialog.download_button.click()
    assert finished.args == ["failed"]
    assert "Could not connect" in dialog.detail.text() and "import" in dialog.detail.text()


@pytest.mark.parametrize("broken", ["home", "models"])
def test_a_store_that_cannot_be_used_is_said(qtbot: QtBot, settings: Settings, tmp_path: Path, broken: str) -> None:
    store = Store(tmp_path / "home")
    if broken == "home":
        store.root.write_text("a file where the store should be")
        bad = store.root
    else:
        store.root.mkdir()
        store.models_dir.write_text("a file where the models should be")
        bad = store.models_dir
    dialog = manager(qtbot, settings, store, DownloadOptions(offline=True))
    assert f"Glimpse cannot use {bad}" in dialog.detail.text() and "is a file" in dialog.detail.text()
    assert "GLIMPSE_HOME" in dialog.detail.text()
    assert dialog.table.rowCount() == 0  # never an empty list that reads as "nothing installed"
    assert not any(b.isEnabled() for b in (dialog.download_button, dialog.import_button, dialog.remove_button,
                                            dialog.use_button))
    bad.unlink()  # fixed: the next refresh lists the catalogue again
    dialog.refresh()
    assert dialog.unusable == "" and dialog.table.rowCount() > 0 and dialog.import_button.isEnabled()
