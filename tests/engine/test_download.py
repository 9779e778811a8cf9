"""Downloads against a fake Hub on 127.0.0.1: verify, resume, corrupt bytes, offline, disk space, cancel."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import filelock
import pytest

from glimpse.engine.errors import Cancelled, DiskFullError, DownloadError, OfflineError
from glimpse.engine.models import catalog, download
from glimpse.engine.models.catalog import CatalogFile
from glimpse.engine.models.download import (
    STATE_FILE,
    DownloadOptions,
    download_model,
    fetch_license,
    local_copy_complete,
    read_state,
)
from glimpse.engine.progress import Progress
from tests.fakehub import LICENSE_TEXT, REPO, FakeHub, dead_endpoint, make_repo

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def hub(repo_dir: Path) -> Iterator[FakeHub]:
    with FakeHub({REPO: repo_dir}) as h:
        yield h


def opts(hub: FakeHub, **kw: object) -> DownloadOptions:
    base = DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, retry_wait=0.0, timeout=5.0)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


ENTRY = catalog.lookup("fastvlm-0.5b")


def test_download_succeeds_and_verifies(hub: FakeHub, repo_dir: Path, tmp_path: Path) -> None:
    reports: list[Progress] = []
    result = download_model(ENTRY, tmp_path / "dl", options=opts(hub), progress=reports.append)

    expected = sorted(p.name for p in repo_dir.iterdir())
    assert sorted(result.files) == expected  # tokenizer.json is optional and absent: skipped
    for name in expected:
        assert (tmp_path / "dl" / name).read_bytes() == (repo_dir / name).read_bytes()
    assert not list((tmp_path / "dl").glob("*.incomplete"))
    state = read_state(tmp_path / "dl")
    assert state["complete"] and state["commit"] == hub.commit
    assert state["files"][WEIGHTS]["method"] == "sha256 (Hub LFS etag)"
    assert state["files"][WEIGHTS]["sha256"] == hub.file(REPO, WEIGHTS).sha256
    assert state["files"]["config.json"]["method"] == "git sha1 (Hub etag)"
    total = sum((repo_dir / n).stat().st_size for n in expected)
    assert reports[-1].done == reports[-1].total == total and reports[-1].unit == "B"
    assert result.fetched_bytes == total and result.reused_bytes == 0
    # After "main" resolved to a commit, every file came from that commit.
    assert all(f"/resolve/{hub.commit}/" in e.path for e in hub.gets())


def test_follows_cdn_redirect_for_lfs_files(repo_dir: Path, tmp_path: Path) -> None:
    with FakeHub({REPO: repo_dir}, cdn=True) as hub:
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))
        assert any(e.path.startswith("/cdn/") for e in hub.gets())
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_expired_cdn_address_is_renewed(repo_dir: Path, tmp_path: Path) -> None:
    with FakeHub({REPO: repo_dir}, cdn=True) as hub:
        hub.cut_after, hub.cdn_fail = 200_000, [403]  # cut once, then the signed address has expired
        download_model(ENTRY, tmp_path / "dl", options=opts(hub, retries=2))
        heads = [e for e in hub.log if e.method == "HEAD" and e.path.endswith(WEIGHTS)]
        assert len(heads) == 3  # the first look-up, then a fresh address after each failure
        assert [e.range for e in hub.gets() if e.path.startswith("/cdn/")][-1] == "bytes=200000-"
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_a_second_downloader_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    with filelock.FileLock(str(tmp_path / "dl" / download.LOCK_FILE)), \
            pytest.raises(DownloadError, match="already being downloaded"):
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))


def test_cut_connection_is_resumed_with_range(hub: FakeHub, repo_dir: Path, tmp_path: Path) -> None:
    size = (repo_dir / WEIGHTS).stat().st_size
    hub.cut_after = 200_000
    download_model(ENTRY, tmp_path / "dl", options=opts(hub, retries=2))
    assert [e.range for e in hub.gets(WEIGHTS)] == [None, "bytes=200000-"]
    assert hub.sent[WEIGHTS] == size  # nothing fetched twice
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_download_resumes_after_a_failed_run(hub: FakeHub, repo_dir: Path, tmp_path: Path) -> None:
    size = (repo_dir / WEIGHTS).stat().st_size
    hub.cut_after, hub.down_after_cut = 300_000, True
    with pytest.raises(DownloadError, match="resume"):
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    partial = tmp_path / "dl" / (WEIGHTS + ".incomplete")
    assert partial.stat().st_size == 300_000  # kept for the next run
    assert not (tmp_path / "dl" / WEIGHTS).exists()
    assert not local_copy_complete(tmp_path / "dl")

    hub.reset()
    sent_before = hub.sent[WEIGHTS]
    result = download_model(ENTRY, tmp_path / "dl", options=opts(hub))  # a "restart": fresh call, same folder
    assert hub.gets(WEIGHTS)[-1].range == "bytes=300000-"
    assert hub.sent[WEIGHTS] - sent_before == size - 300_000
    assert result.reused_bytes >= 300_000
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_server_ignoring_range_restarts_the_file(hub: FakeHub, repo_dir: Path, tmp_path: Path) -> None:
    hub.cut_after, hub.down_after_cut = 100_000, True
    with pytest.raises(DownloadError):
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    hub.reset()
    hub.ignore_range = True
    download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


@pytest.mark.parametrize("bad", [WEIGHTS, "config.json"])
def test_corrupt_bytes_are_rejected_and_not_kept(hub: FakeHub, repo_dir: Path, tmp_path: Path, bad: str) -> None:
    hub.corrupt = {bad}
    with pytest.raises(DownloadError, match="corrupted") as err:
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    assert "sha256" in str(err.value) if bad == WEIGHTS else "sha1" in str(err.value)
    assert not (tmp_path / "dl" / bad).exists()
    assert not (tmp_path / "dl" / (bad + ".incomplete")).exists()
    assert not local_copy_complete(tmp_path / "dl")

    hub.reset()  # the next run fetches a good copy
    download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    assert (tmp_path / "dl" / bad).read_bytes() == (repo_dir / bad).read_bytes()


def test_pinned_sha256_beats_the_server(hub: FakeHub, tmp_path: Path) -> None:
    pinned = tuple(dataclasses.replace(f, sha256="0" * 64) if f.name == WEIGHTS else f for f in ENTRY.files)
    entry = dataclasses.replace(ENTRY, files=pinned)
    with pytest.raises(DownloadError, match="0000000000"):
        download_model(entry, tmp_path / "dl", options=opts(hub))
    assert not (tmp_path / "dl" / WEIGHTS).exists()


def test_offline_without_local_copy(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="glimpse models import"):
        download_model(ENTRY, tmp_path / "dl", options=DownloadOptions(endpoint=hub.endpoint))
    assert hub.log == []


def test_offline_with_complete_local_copy(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    requests = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = download_model(ENTRY, tmp_path / "dl", options=DownloadOptions(endpoint=hub.endpoint))
    assert again.files == first.files and again.commit == hub.commit
    assert len(hub.log) == requests  # no network at all
    assert fetch_license(ENTRY, tmp_path / "dl") == LICENSE_TEXT


def test_unreachable_server_is_an_offline_error(tmp_path: Path) -> None:
    options = DownloadOptions(endpoint=dead_endpoint(), offline=False, retries=0, retry_wait=0.0)
    with pytest.raises(OfflineError, match="Could not connect"):
        download_model(ENTRY, tmp_path / "dl", options=options)


def test_server_errors_are_download_errors(hub: FakeHub, tmp_path: Path) -> None:
    hub.status = 500
    with pytest.raises(DownloadError, match="HTTP 500"):
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))


def test_hf_endpoint_environment_variable(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    download_model(ENTRY, tmp_path / "dl", options=DownloadOptions(offline=False, retries=0))
    assert hub.gets(WEIGHTS)


def test_disk_space_is_checked_before_downloading(hub: FakeHub, repo_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1_000))
    with pytest.raises(DiskFullError) as err:
        download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    needed = sum(p.stat().st_size for p in repo_dir.iterdir())
    assert f"{needed:,} bytes" in str(err.value) and "1,000 bytes" in str(err.value)
    assert hub.gets(WEIGHTS) == []


def test_cancel_keeps_the_partial_file(hub: FakeHub, repo_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_REPORT_EVERY_S", 0.0)
    cancel = threading.Event()

    def progress(p: Progress) -> None:
        if p.done >= 150_000:
            cancel.set()

    with pytest.raises(Cancelled):
        download_model(ENTRY, tmp_path / "dl", options=opts(hub), progress=progress, cancel=cancel)
    partial = tmp_path / "dl" / (WEIGHTS + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < (repo_dir / WEIGHTS).stat().st_size

    download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    assert hub.gets(WEIGHTS)[-1].range == f"bytes={kept}-"
    assert (tmp_path / "dl" / WEIGHTS).read_bytes() == (repo_dir / WEIGHTS).read_bytes()


def test_missing_required_file(hub: FakeHub, tmp_path: Path) -> None:
    entry = dataclasses.replace(ENTRY, files=(*ENTRY.files, CatalogFile("preprocessor_config.json")))
    with pytest.raises(DownloadError, match="missing"):
        download_model(entry, tmp_path / "dl", options=opts(hub))


def test_unknown_repository(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not found"):
        download_model(catalog.lookup("7b"), tmp_path / "dl", options=opts(hub))


@pytest.mark.parametrize(("model", "shards"), [("fastvlm-7b", 4), ("fastvlm-1.5b", 2), ("fastvlm-1.5b", 1)])
def test_sharded_and_single_file_layouts(tmp_path: Path, model: str, shards: int) -> None:
    entry = catalog.lookup(model)
    repo = make_repo(tmp_path / "repo", shards=shards)
    with FakeHub({entry.repo: repo}) as hub:
        result = download_model(entry, tmp_path / "dl", options=opts(hub))
    assert sorted(result.files) == sorted(p.name for p in repo.iterdir())


def test_state_file_survives_garbage(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / STATE_FILE).write_text("{not json", encoding="utf-8")
    download_model(ENTRY, tmp_path / "dl", options=opts(hub))
    assert local_copy_complete(tmp_path / "dl")
