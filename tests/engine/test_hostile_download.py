"""A hostile index served by the local test hub cannot make a download write outside its folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from glimpse.engine.errors import DownloadError
from glimpse.engine.models import catalog
from glimpse.engine.models.catalog import INDEX_FILE
from glimpse.engine.models.download import (
    STATE_FILE,
    DownloadOptions,
    bytes_on_disk,
    download_model,
    local_copy_complete,
)
from tests.fakehub import FakeHub, make_repo

ENTRY = catalog.lookup("fastvlm-1.5b")  # index optional: the layout a mirror decides


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIMPSE_HOME", str(tmp_path / "home"))
    for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _opts(hub: FakeHub) -> DownloadOptions:
    return DownloadOptions(endpoint=hub.endpoint, offline=False, retries=0, retry_wait=0.0, timeout=5.0)


def _hostile_repo(tmp_path: Path, shard_name: str) -> Path:
    repo = make_repo(tmp_path / "repo", shards=2)
    index = json.loads((repo / INDEX_FILE).read_text(encoding="utf-8"))
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard_name
    (repo / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")
    return repo


def _files_outside(tmp_path: Path, dl: Path, repo: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and dl not in p.parents and repo not in p.parents]


@pytest.mark.parametrize("shard", ["../evil.safetensors", "../../evil.safetensors", "ABSOLUTE",
                                   "sub/../../evil.safetensors", "..\\evil.safetensors", "evil\x00.safetensors"])
def test_hostile_shard_names_write_nothing_outside_the_download_folder(tmp_path: Path, shard: str) -> None:
    if shard == "ABSOLUTE":
        shard = str(tmp_path / "abs" / "evil.safetensors")
        (tmp_path / "abs").mkdir()
    repo = _hostile_repo(tmp_path, shard)
    dl = tmp_path / "home" / "downloads" / "m"
    with FakeHub({ENTRY.repo: repo}) as hub:
        hub.serve_anything = "model-00001-of-00002.safetensors"  # the mirror answers every name, with valid hashes
        with pytest.raises(DownloadError, match=r"not a plain file name|leads out") as info:
            download_model(ENTRY, dl, options=_opts(hub))
        asked = [e.path for e in hub.log if "evil" in e.path]
    assert "nothing was written outside the download folder" in str(info.value)
    assert _files_outside(tmp_path, dl, repo) == []
    assert asked == []  # refused before any request for it


def test_hostile_names_in_the_state_file_are_ignored(tmp_path: Path) -> None:
    dl = tmp_path / "dl"
    dl.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 123, encoding="utf-8")
    (dl / STATE_FILE).write_text(json.dumps({"complete": True, "files": {
        "../secret.txt": {"size": 123, "verified": True}}}), encoding="utf-8")
    assert not local_copy_complete(dl)  # a listed file outside the folder does not make a copy complete
    assert bytes_on_disk(dl) == (0, None)


def test_a_plain_index_still_downloads(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", shards=2)
    with FakeHub({ENTRY.repo: repo}) as hub:
        result = download_model(ENTRY, tmp_path / "dl", options=dataclasses.replace(_opts(hub)))
    assert "model-00002-of-00002.safetensors" in result.files
