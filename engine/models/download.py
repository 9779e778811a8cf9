"""Download a catalogue entry's checkpoint files from the Hugging Face Hub: resumable, verified, cancellable.

Why not ``hf_hub_download``: from huggingface_hub 1.x on it downloads into a process-unique temporary file and
deletes it on any failure, so an interrupted 15 GB download starts over after a restart. Glimpse promises resume
after a restart, so it uses huggingface_hub for everything but the byte loop: URLs (``hf_hub_url``), metadata
(``get_hf_file_metadata``: commit, ETag / X-Linked-Etag, X-Linked-Size, CDN redirect), the shared HTTP session
(offline mode, user agent) and error classification, and appends the body itself to ``<file>.incomplete``, which
survives failures, cancellation and restarts and is continued with an HTTP Range request.

Layout of a download folder (one per model, ``<GLIMPSE_HOME>/downloads/<name>/``)::

    config.json, vocab.json, ..., model.safetensors   verified files, in the repository's layout
    model.safetensors.incomplete                      a partial download (always a prefix of the file)
    .glimpse-download.json                            commit, per-file etag/size/verification, complete flag

Every file is checked before it gets its final name: against a sha256 pinned in the catalogue, else the Hub's LFS
ETag (the file's sha256), else the git blob sha1 the Hub gives as ETag for small files. A mismatch deletes the bad
copy and raises DownloadError. Once every file is verified the folder is marked complete and later calls use it
without any network access (which is what makes offline use work).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import filelock
import httpx2
from huggingface_hub import constants as hf_constants
from huggingface_hub import get_hf_file_metadata, get_session, hf_hub_url, hf_raise_for_status
from huggingface_hub.errors import (
    FileMetadataError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._headers import build_hf_headers

from glimpse.engine import durable
from glimpse.engine.errors import DiskFullError, DownloadError, GlimpseError, OfflineError
from glimpse.engine.limits import load_json
from glimpse.engine.models.catalog import INDEX_FILE, LICENSE_FILE, SINGLE_WEIGHTS, CatalogEntry, CatalogFile
from glimpse.engine.models.leftovers import claim, human_bytes, release
from glimpse.engine.names import is_plain_name, safe_child
from glimpse.engine.progress import Progress, ProgressFn, check_cancel
from glimpse.engine.version import __version__

STATE_FILE = ".glimpse-download.json"
LOCK_FILE = ".glimpse-download.lock"
PARTIAL_SUFFIX = ".incomplete"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "on", "yes", "true"}
_MAX_INDEX_BYTES = 64 << 20  # the 7B index is 60 KB; a real one stays far below this
_MAX_SHARDS = 1000
_REFUSED_NAME_HINT = ("The repository or the mirror set with HF_ENDPOINT is not trustworthy; nothing was written "
                      "outside the download folder. Remove the partial download and use the official Hub.")
_REPORT_EVERY_S = 0.1
_RATE_WINDOW_S = 5.0
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
# The window's wording of advice that the command line gives as commands (GlimpseError.gui_hint).
_IMPORT_GUI = "import a checkpoint folder you already have with Import folder… in the model manager."
_OFFLINE_GUI = "Connect to the internet and download it again (it resumes), or " + _IMPORT_GUI
_LAYOUT_CHANGED_GUI = "The repository layout changed; update Glimpse, or " + _IMPORT_GUI


# Every wait on the server has a deadline (docs/security.md, "Faults"). Defaults, each overridable by the
# environment variable beside it (read at call time) or a DownloadOptions field:
STALL_S = 15.0  # GLIMPSE_DOWNLOAD_STALL_S: no byte for this long and the connection counts as stalled
FLOOR_BPS = 10_000.0  # GLIMPSE_DOWNLOAD_FLOOR_BPS: fewer bytes per second than this ...
FLOOR_WINDOW_S = 10.0  # GLIMPSE_DOWNLOAD_FLOOR_WINDOW_S: ... over this many seconds and it counts as too slow
STALL_RETRIES = 3  # GLIMPSE_DOWNLOAD_STALL_RETRIES: resumed retries after a stall or a trickle, then a sentence
# Worst case for one file whose server stalls: 4 attempts x 15 s + 1 + 2 + 4 s of back-off = 67 s; one that
# trickles: 4 x (10 s + up to 15 s for its next byte) + 7 s = 107 s. Both stay under two minutes.


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


@dataclass(frozen=True)
class DownloadOptions:
    """How to reach the Hub. ``None`` means: read the environment at call time (not at import, as
    huggingface_hub's constants do), so HF_ENDPOINT / HF_HUB_OFFLINE set after start-up still count."""

    endpoint: str | None = None  # default: $HF_ENDPOINT, else https://huggingface.co
    offline: bool | None = None  # default: $HF_HUB_OFFLINE
    retries: int = 5  # transient failures in a row per file; each retry resumes where the last one stopped
    retry_wait: float = 1.0  # seconds before the first retry, doubling up to 8
    timeout: float | None = None  # seconds without a byte before a connection counts as stalled (STALL_S)
    floor_bps: float | None = None  # the progress floor in bytes per second (FLOOR_BPS; 0 turns it off)
    floor_window_s: float | None = None  # over how many seconds the floor is judged (FLOOR_WINDOW_S)
    stall_retries: int | None = None  # resumed retries after stalls or trickles in a row (STALL_RETRIES)

    @property
    def stall_s(self) -> float:
        return self.timeout if self.timeout is not None else _env_float("GLIMPSE_DOWNLOAD_STALL_S", STALL_S)

    @property
    def floor(self) -> float:
        return self.floor_bps if self.floor_bps is not None else _env_float("GLIMPSE_DOWNLOAD_FLOOR_BPS", FLOOR_BPS)

    @property
    def window_s(self) -> float:
        return self.floor_window_s if self.floor_window_s is not None else \
            _env_float("GLIMPSE_DOWNLOAD_FLOOR_WINDOW_S", FLOOR_WINDOW_S)

    @property
    def max_stalls(self) -> int:
        if self.stall_retries is not None:
            return self.stall_retries
        return int(_env_float("GLIMPSE_DOWNLOAD_STALL_RETRIES", STALL_RETRIES))


@dataclass(frozen=True)
class DownloadResult:
    folder: Path
    commit: str | None
    files: tuple[str, ...]
    fetched_bytes: int  # received over the network by this call
    reused_bytes: int  # already on disk before this call (finished files and resumed partial ones)


def is_offline(options: DownloadOptions | None = None) -> bool:
    if options is not None and options.offline is not None:
        return options.offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or hf_constants.is_offline_mode()


def endpoint_of(options: DownloadOptions | None = None) -> str:
    if options is not None and options.endpoint:
        return options.endpoint.rstrip("/")
    return (os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")


# -- state file -------------------------------------------------------------------------------------------------------

def read_state(folder: Path) -> dict[str, Any]:
    """The download folder's bookkeeping, or an empty record when there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {"files": {}}
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return {"files": {}}
    return data


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    durable.write_text(folder / STATE_FILE, json.dumps(state, indent=2, sort_keys=True),
                       tmp=folder / (STATE_FILE + ".tmp"))


def local_copy_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished, verified download (checked by size; hashes were checked on arrival)."""
    state = read_state(folder)
    if not state.get("complete"):
        return False
    for name, info in state["files"].items():
        if not is_plain_name(name) or not isinstance(info, dict):
            return False  # a state file Glimpse did not write: download again, which rewrites it
        path = folder / name
        if not path.is_file() or (info.get("size") is not None and path.stat().st_size != info["size"]):
            return False
    return True


def bytes_on_disk(folder: Path) -> tuple[int, int | None]:
    """(bytes downloaded so far, expected total or None) for a download folder, for listings."""
    state = read_state(folder)
    done = 0
    total: int | None = 0
    for name, info in state["files"].items():
        if not is_plain_name(name) or not isinstance(info, dict):
            continue
        size = info.get("size")
        total = None if total is None or size is None else total + size
        for path in (folder / name, folder / (name + PARTIAL_SUFFIX)):
            if path.is_file():
                done += path.stat().st_size
                break
    return done, (total or None)


# -- hashing ----------------------------------------------------------------------------------------------------------

class _Digest:
    """The check a file must pass: pinned sha256 > LFS etag (sha256) > git blob sha1 etag > size only."""

    def __init__(self, pinned: str | None, etag: str | None, size: int | None) -> None:
        self.expected: str | None = None
        self.method = "size"
        if pinned:
            self.expected, self.method = pinned.lower(), "sha256 (pinned)"
        elif etag and _SHA256.fullmatch(etag):
            self.expected, self.method = etag, "sha256 (Hub LFS etag)"
        elif etag and _GIT_SHA1.fullmatch(etag) and size is not None:
            self.expected, self.method = etag, "git sha1 (Hub etag)"
        self._size = size
        self.reset()

    @property
    def kind(self) -> str:
        return "git blob sha1" if self.method.startswith("git") else self.method.split(" ")[0]

    def reset(self) -> None:
        self._h: Any = None
        if self.method.startswith("sha256"):
            self._h = hashlib.sha256()
        elif self.method.startswith("git"):
            self._h = hashlib.sha1(usedforsecurity=False)
            self._h.update(f"blob {self._size}\0".encode())

    def update(self, data: bytes) -> None:
        if self._h is not None:
            self._h.update(data)

    def feed_file(self, path: Path, cancel: threading.Event | None, what: str) -> None:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                check_cancel(cancel, what)
                self.update(chunk)

    def matches(self) -> tuple[bool, str]:
        if self._h is None or self.expected is None:
            return True, ""
        actual = str(self._h.hexdigest())
        return actual == self.expected, actual


# -- progress -------------------------------------------------------------------------------------------------------

class _Meter:
    """Aggregates bytes over all files of one download and reports them, with a rate over the last few seconds."""

    def __init__(self, stage: str, total: int, done: int, callback: ProgressFn | None) -> None:
        self.stage, self.total, self.done, self.callback = stage, total, done, callback
        self.fetched = 0
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self._last_report = 0.0

        self.note = ""  # what the download is waiting for, while it waits (a stall, a retry)

    def add(self, n: int) -> None:
        self.done += n
        self.fetched += n
        if self.note:
            self.note = ""
            self.report(force=True)
        self.report()

    def say(self, note: str) -> None:
        """Show ``note`` with the numbers until bytes flow again."""
        self.note = note
        self.report(force=True)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last_report < _REPORT_EVERY_S):
            return
        self._last_report = now
        self._samples.append((now, self.fetched))
        while len(self._samples) > 2 and now - self._samples[1][0] > _RATE_WINDOW_S:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        rate = (self.fetched - b0) / (now - t0) if now > t0 else 0.0
        self.callback(Progress(self.stage, self.done, self.total, "B", 0.0 if self.note else rate, self.note))


class _TooSlow(Exception):
    """The server sent fewer bytes than the progress floor over the last window."""

    def __init__(self, rate: float) -> None:
        super().__init__(f"{rate:.0f} bytes/s")
        self.rate = rate


class _Floor:
    """Bytes of one attempt over time: raises _TooSlow once a whole window has passed below the floor."""

    def __init__(self, floor: float, window: float) -> None:
        self.floor, self.window = floor, window
        self.start = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque([(self.start, 0)])
        self.got = 0

    def add(self, n: int) -> None:
        self.got += n
        now = time.monotonic()
        self._samples.append((now, self.got))
        if self.floor <= 0 or now - self.start < self.window:
            return
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        rate = (self.got - b0) / max(now - t0, 1e-9)
        if rate < self.floor:
            raise _TooSlow(rate)


# -- the downloader -------------------------------------------------------------------------------------------------

@dataclass
class _Remote:
    spec: CatalogFile
    url: str
    etag: str
    size: int | None


@dataclass
class _Downloader:
    entry: CatalogEntry
    folder: Path
    options: DownloadOptions
    cancel: threading.Event | None
    state: dict[str, Any] = field(default_factory=dict)
    endpoint: str = ""

    def __post_init__(self) -> None:
        self.endpoint = endpoint_of(self.options)
        self.state = read_state(self.folder)
        if self.state.get("repo") != self.entry.repo:
            self.state = {"repo": self.entry.repo, "files": {}}
        self.headers = build_hf_headers(token=False, library_name="glimpse", library_version=__version__)
        self.headers["Accept-Encoding"] = "identity"  # sizes and Range offsets must be of the raw bytes
        self.what = f"The download of {self.entry.display_name}"

    @property
    def revision(self) -> str:
        return self.entry.revision or self.state.get("commit") or "main"

    def save(self) -> None:
        _write_state(self.folder, self.state)

    def verified(self, name: str) -> bool:
        if not is_plain_name(name):
            return False
        info = self.state["files"].get(name, {})
        path = self.folder / name
        return bool(info.get("verified")) and path.is_file() and path.stat().st_size == info.get("size")

    # metadata ---------------------------------------------------------------------------------------------------

    def resolve(self, spec: CatalogFile) -> _Remote | None:
        """HEAD the file. None for an optional file the repository does not have."""
        check_cancel(self.cancel, self.what)
        asked = self.revision
        url = hf_hub_url(self.entry.repo, spec.name, revision=asked, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=False, timeout=self.options.stall_s, headers=self.headers,
                                        endpoint=self.endpoint)
        except RemoteEntryNotFoundError:
            if spec.optional:
                return None
            raise
        if meta.etag is None:
            raise FileMetadataError(f"no ETag for {spec.name}")
        if not self.entry.revision and not self.state.get("commit") and meta.commit_hash:
            # Pin what "main" meant now, so the remaining files and any resumed download come from the same commit.
            self.state["commit"] = meta.commit_hash
            self.save()
        location = meta.location
        if location == url and self.revision != asked:  # fetch the body from the pinned commit too
            location = hf_hub_url(self.entry.repo, spec.name, revision=self.revision, endpoint=self.endpoint)
        return _Remote(spec, location, meta.etag, spec.size if meta.size is None else meta.size)

    def plan(self, specs: Iterable[CatalogFile]) -> list[_Remote]:
        remotes = [r for spec in specs if (r := self.resolve(spec)) is not None]
        names = {r.spec.name for r in remotes}
        if INDEX_FILE in names:
            self.fetch([r for r in remotes if r.spec.name == INDEX_FILE], None)
            for shard in self._shards():
                if shard not in names:
                    known = self.entry.file(shard) or CatalogFile(shard)
                    remote = self.resolve(known)
                    if remote is not None:
                        remotes.append(remote)
                        names.add(shard)
        elif SINGLE_WEIGHTS not in names and any(f.name.endswith(".safetensors") for f in self.entry.files):
            raise DownloadError(f"{self.entry.repo} has neither {SINGLE_WEIGHTS} nor {INDEX_FILE}.",
                                "The repository layout changed; update Glimpse, or import a checkpoint folder "
                                "with `glimpse models import`.", gui_hint=_LAYOUT_CHANGED_GUI)
        return remotes

    def _shards(self) -> list[str]:
        """The shard names the downloaded index lists, each checked to be a plain ``.safetensors`` file name: the
        index comes from the server, and a name like ``../x`` or ``/home/me/.bashrc`` must never become a path."""
        hint = "Remove the partial download and try again."
        what = f"{INDEX_FILE} of {self.entry.repo}"
        index = load_json(self.folder / INDEX_FILE, what, DownloadError, hint, max_bytes=_MAX_INDEX_BYTES)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise DownloadError(f"{what} has no weight_map listing the weight files.", hint)
        shards = list(weight_map.values())
        for shard in shards:
            if not isinstance(shard, str) or not shard.endswith(".safetensors"):
                shown = repr(shard)[:80] if isinstance(shard, str) else f"a {type(shard).__name__}"
                raise DownloadError(f"{what} lists {shown} as a weight file, which is not a .safetensors file name.",
                                    _REFUSED_NAME_HINT)
            safe_child(self.folder, shard, what, DownloadError, _REFUSED_NAME_HINT)
        if len(set(shards)) > _MAX_SHARDS:
            raise DownloadError(f"{what} lists {len(set(shards)):,} weight files, more than any real checkpoint.",
                                hint)
        return sorted(set(shards))

    # transfer ---------------------------------------------------------------------------------------------------

    def partial_size(self, remote: _Remote) -> int:
        name = remote.spec.name
        if self.verified(name):
            return remote.size or 0
        part = self.folder / (name + PARTIAL_SUFFIX)
        info = self.state["files"].get(name, {})
        if part.is_file() and info.get("etag") == remote.etag:
            have = part.stat().st_size
            if remote.size is None or have <= remote.size:
                return have
        part.unlink(missing_ok=True)  # from another version of the file, or longer than it: unusable
        return 0

    def fetch(self, remotes: list[_Remote], meter: _Meter | None) -> None:
        for remote in remotes:
            if self.verified(remote.spec.name):
                continue
            self._fetch_one(remote, meter)

    def _fetch_one(self, remote: _Remote, meter: _Meter | None) -> None:
        name = remote.spec.name
        final = safe_child(self.folder, name, f"The download of {self.entry.display_name}", DownloadError,
                           _REFUSED_NAME_HINT)
        part = self.folder / (name + PARTIAL_SUFFIX)
        have = self.partial_size(remote)
        self.state["files"][name] = {"etag": remote.etag, "size": remote.size, "verified": False}
        self.save()
        digest = _Digest(remote.spec.sha256, remote.etag, remote.size)
        if have:
            digest.feed_file(part, self.cancel, self.what)
        failures = 0
        stalls = 0
        opts = self.options
        while remote.size is None or have < remote.size:
            started = time.monotonic()
            try:
                have = self._stream(remote, part, have, digest, meter)
                break  # the server ended the body normally
            except (httpx2.TransportError, HfHubHTTPError, _TooSlow) as e:
                off_hub = not remote.url.startswith(self.endpoint)
                if isinstance(e, HfHubHTTPError) and _status(e) not in _RETRY_STATUS and not (
                        off_hub and _status(e) in (403, 410)):  # a signed CDN address that expired
                    raise
                now = part.stat().st_size if part.is_file() else 0
                server = _host(remote.url)
                if isinstance(e, (httpx2.TimeoutException, _TooSlow)):
                    # A stall or a trickle: bounded however many bytes each attempt brought, unless the attempt
                    # as a whole (its wait included) kept above the floor: a flaky but working server goes on.
                    average = (now - have) / max(time.monotonic() - started, 1e-9)
                    stalls = 1 if opts.floor > 0 and average >= opts.floor else stalls + 1
                    have = now
                    if stalls > opts.max_stalls:
                        raise self._stalled(remote, e, server, stalls, have) from e
                    waited = (f"{server} sends {human_bytes(e.rate)}/s, below {human_bytes(opts.floor)}/s"
                              if isinstance(e, _TooSlow) else f"no data from {server} for {opts.stall_s:g} s")
                    delay = min(8.0, opts.retry_wait * 2 ** (stalls - 1))
                    if meter is not None:
                        meter.say(f"{waited}, retrying ({stalls}/{opts.max_stalls})")
                else:
                    failures = 0 if now > have else failures + 1
                    have = now
                    if failures > opts.retries:
                        raise
                    delay = min(8.0, opts.retry_wait * 2 ** max(failures - 1, 0))
                    if meter is not None:
                        meter.say(f"the connection to {server} broke, retrying")
                if self.cancel is not None:
                    self.cancel.wait(delay)
                else:
                    time.sleep(delay)
                check_cancel(self.cancel, self.what)
                if off_hub:
                    fresh = self.resolve(remote.spec)  # CDN addresses are signed and expire: ask for a new one
                    if fresh is None or fresh.etag != remote.etag:
                        raise DownloadError(f"{name} changed on the server during the download.",
                                            "Run the command again to download the new version.",
                                            gui_hint="Download it again to get the new version.") from e
                    remote.url = fresh.url
        size = part.stat().st_size if part.is_file() else 0
        if remote.size is not None and size != remote.size:
            raise DownloadError(f"{name} ended after {size:,} of {remote.size:,} bytes.",
                                "Run the command again to resume the download.",
                                gui_hint="Download it again to resume.")
        ok, actual = digest.matches()
        if not ok:
            part.unlink(missing_ok=True)
            self.state["files"].pop(name, None)
            self.save()
            raise DownloadError(
                f"{name} of {self.entry.display_name} arrived corrupted: its {digest.kind} is "
                f"{actual}, but {digest.expected} was expected. The bad copy was deleted.",
                "Run the command again to download it afresh; if it happens again, a proxy or the disk may be "
                "damaging data.",
                gui_hint="Download it again to fetch it afresh; if it happens again, a proxy or the disk may be "
                         "damaging data.")
        durable.publish(part, final)
        self.state["files"][name] = {"etag": remote.etag, "size": size, "verified": True,
                                     "method": digest.method, **({"sha256": actual} if "sha256" in digest.method
                                                                 else {})}
        self.save()

    def _stalled(self, remote: _Remote, e: Exception, server: str, times: int, have: int) -> DownloadError:
        """The sentence that ends a download whose server stalls or trickles, retries spent."""
        opts = self.options
        if isinstance(e, _TooSlow):
            what = (f"{server} sent data slower than {human_bytes(opts.floor)}/s (the last time "
                    f"{human_bytes(e.rate)}/s)")
        else:
            what = f"{server} sent no data for {opts.stall_s:g} s"
        of = f" of {human_bytes(remote.size)}" if remote.size else ""
        where = ("the mirror set with HF_ENDPOINT" if self.endpoint != hf_constants.ENDPOINT.rstrip("/")
                 and remote.url.startswith(self.endpoint) else server)
        return DownloadError(
            f"{what}, {times} times in a row, while downloading {remote.spec.name} of "
            f"{self.entry.display_name} ({human_bytes(have)}{of} arrived).",
            f"Check your internet connection or try again later ({where} may be overloaded), then run "
            f"`glimpse models pull {self.entry.name}` again; it resumes from what arrived.",
            gui_hint=f"Check your internet connection or try again later ({where} may be overloaded), then "
                     "download again; it resumes from what arrived.")

    def _stream(self, remote: _Remote, part: Path, have: int, digest: _Digest, meter: _Meter | None) -> int:
        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        timeout = httpx2.Timeout(self.options.stall_s)
        floor = _Floor(self.options.floor, self.options.window_s)
        with get_session().stream("GET", remote.url, headers=headers, timeout=timeout,
                                  follow_redirects=True) as response:
            if response.status_code == 416 and have and remote.size is None:
                return have  # asked for bytes past the end: the partial file is the whole file
            hf_raise_for_status(response)
            mode = "ab"
            if have and response.status_code != 206:
                # The server ignored the Range header and sends the whole file: start the file over.
                mode = "wb"
                if meter is not None:
                    meter.done -= have
                have = 0
                digest.reset()
            with part.open(mode) as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    digest.update(chunk)
                    have += len(chunk)
                    if meter is not None:
                        meter.add(len(chunk))
                    check_cancel(self.cancel, self.what)
                    floor.add(len(chunk))
        return have


# -- public API -------------------------------------------------------------------------------------------------------

def download_model(
    entry: CatalogEntry,
    folder: str | Path,
    *,
    options: DownloadOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> DownloadResult:
    """Download (or finish downloading) every file of ``entry`` into ``folder`` and return what is there.

    A complete local copy is returned without touching the network. Partial files are kept on every failure and
    continued next time. Raises OfflineError, DownloadError, DiskFullError or Cancelled with a readable sentence.
    """
    folder = Path(folder)
    opts = options or DownloadOptions()
    if local_copy_complete(folder):
        state = read_state(folder)
        return DownloadResult(folder, state.get("commit"), tuple(sorted(state["files"])), 0, 0)
    _require_online(entry, folder, opts)
    _mkdir(folder)
    with _exclusive(folder, entry):
        claim(folder)  # "being downloaded by process N" in listings; a killed one's record is dropped, its bytes kept
        try:
            return _download_locked(entry, folder, opts, progress, cancel)
        finally:
            release(folder)


def _download_locked(entry: CatalogEntry, folder: Path, opts: DownloadOptions, progress: ProgressFn | None,
                     cancel: threading.Event | None) -> DownloadResult:
    dl = _Downloader(entry, folder, opts, cancel)
    with _friendly_errors(entry, dl):
        remotes = dl.plan(entry.files)
        done = sum(dl.partial_size(r) for r in remotes)
        total = sum(r.size or 0 for r in remotes)
        check_disk_space(folder, total - done, entry)
        meter = _Meter(f"download {entry.name}", total, done, progress)
        meter.report(force=True)
        # Small files first: a missing tokenizer file fails the download in seconds, not after 15 GB.
        dl.fetch(sorted(remotes, key=lambda r: (r.size or 0, r.spec.name)), meter)
        meter.report(force=True)
        dl.state["complete"] = True
        dl.state["files"] = {k: v for k, v in dl.state["files"].items() if k in {r.spec.name for r in remotes}}
        dl.save()
    return DownloadResult(folder, dl.state.get("commit"), tuple(sorted(r.spec.name for r in remotes)),
                          meter.fetched, done)


def fetch_license(entry: CatalogEntry, folder: str | Path, *, options: DownloadOptions | None = None,
                  cancel: threading.Event | None = None) -> str:
    """The model licence as published in the repository (downloaded into ``folder`` once, verified)."""
    folder = Path(folder)
    opts = options or DownloadOptions()
    path = folder / LICENSE_FILE
    dl_state = read_state(folder)
    info = dl_state["files"].get(LICENSE_FILE, {})
    if not (info.get("verified") and path.is_file()):
        _require_online(entry, folder, opts)
        _mkdir(folder)
        with _exclusive(folder, entry):
            dl = _Downloader(entry, folder, opts, cancel)
            with _friendly_errors(entry, dl):
                spec = entry.file(LICENSE_FILE) or CatalogFile(LICENSE_FILE)
                remote = dl.resolve(spec)
                if remote is None:  # pragma: no cover - LICENSE is never optional
                    raise DownloadError(f"{entry.repo} has no {LICENSE_FILE} file.")
                dl.fetch([remote], None)
    return path.read_text(encoding="utf-8", errors="replace")


def check_disk_space(folder: Path, needed: int, entry: CatalogEntry | None = None) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        what = entry.display_name if entry else "The download"
        raise DiskFullError(
            f"Downloading {what} needs {human_bytes(needed)} ({needed:,} bytes) more, but only {human_bytes(free)} "
            f"({free:,} bytes) is free on the disk holding {folder}.",
            "Free some space, or set GLIMPSE_HOME to a folder on a bigger disk, then run the command again "
            "(what was downloaded so far is kept).",
            gui_hint="Free some space, or start Glimpse with GLIMPSE_HOME set to a folder on a bigger disk, then "
                     "download again (what was downloaded so far is kept).")


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"Cannot create the download folder {folder}: {e.strerror or e}.",
                            "Check the folder is writable, or set GLIMPSE_HOME to another folder.") from e


def _require_online(entry: CatalogEntry, folder: Path, opts: DownloadOptions) -> None:
    if not is_offline(opts):
        return
    done, _ = bytes_on_disk(folder)
    have = f" (only {human_bytes(done)} of it is here)" if done else ""
    raise OfflineError(
        f"Offline mode is on (HF_HUB_OFFLINE) and {entry.display_name} is not fully downloaded{have}.",
        f"Connect to the internet and run `glimpse models pull {entry.name}` (it resumes), or use "
        "`glimpse models import PATH` with a checkpoint folder you already have.",
        gui_hint=_OFFLINE_GUI)


@contextmanager
def _exclusive(folder: Path, entry: CatalogEntry) -> Iterator[None]:
    """One downloader per folder: a second Glimpse (CLI beside the app) would interleave writes to the same file."""
    lock = filelock.FileLock(str(folder / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout as e:
        raise DownloadError(f"{entry.display_name} is already being downloaded by another Glimpse process.",
                            "Wait for it to finish (or stop it), then try again.") from e
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _friendly_errors(entry: CatalogEntry, dl: _Downloader) -> Iterator[None]:
    """Turn network, Hub and disk failures into one-sentence Glimpse errors. Partial files stay on disk."""
    try:
        yield
    except GlimpseError:
        raise
    except Exception as e:
        raise _translate(e, entry, dl.endpoint, dl.revision) from e


def _host(url: str) -> str:
    """The server part of an address, as a user would recognise it ("huggingface.co", "127.0.0.1:8080")."""
    return urlsplit(url).netloc or url


def _status(e: HfHubHTTPError) -> int | None:
    response = getattr(e, "response", None)
    return int(response.status_code) if response is not None else None


def _translate(e: Exception, entry: CatalogEntry, endpoint: str, revision: str) -> GlimpseError:
    resume = f"Run `glimpse models pull {entry.name}` again to resume; what arrived so far is kept."
    resume_gui = "Download it again to resume; what arrived so far is kept."
    offline_hint = (f"Check your internet connection and run `glimpse models pull {entry.name}` again (it resumes), "
                    "or use `glimpse models import PATH` with a checkpoint folder you already have.")
    offline_gui = "Check your internet connection and download it again (it resumes), or " + _IMPORT_GUI
    if isinstance(e, OfflineModeIsEnabled):
        return OfflineError(f"Offline mode is on (HF_HUB_OFFLINE) and {entry.display_name} is not fully "
                            "downloaded.", offline_hint, gui_hint=_OFFLINE_GUI)
    if isinstance(e, httpx2.ConnectError):
        return OfflineError(f"Could not connect to {endpoint} to download {entry.display_name}.", offline_hint,
                            gui_hint=offline_gui)
    if isinstance(e, httpx2.TimeoutException):
        return DownloadError(f"{_host(endpoint)} did not answer in time while downloading {entry.display_name}.",
                             resume, gui_hint=resume_gui)
    if isinstance(e, httpx2.TransportError):
        return DownloadError(f"The connection to {endpoint} broke while downloading {entry.display_name} ({e}).",
                             resume, gui_hint=resume_gui)
    if isinstance(e, RepositoryNotFoundError):
        return DownloadError(f"The repository {entry.repo} was not found on {endpoint}.",
                             "Check HF_ENDPOINT, or update Glimpse if the model moved.")
    if isinstance(e, RevisionNotFoundError):
        return DownloadError(f"Revision {revision} of {entry.repo} was not found on {endpoint}.",
                             f"Remove the partial download (`glimpse models remove {entry.name}`) and pull again.",
                             gui_hint="Remove the partial download in the model manager and download it again.")
    if isinstance(e, RemoteEntryNotFoundError):
        return DownloadError(f"A file {entry.display_name} needs is missing from {entry.repo}@{revision}.",
                             "The repository layout changed; update Glimpse, or use `glimpse models import`.",
                             gui_hint=_LAYOUT_CHANGED_GUI)
    if isinstance(e, HfHubHTTPError):
        return DownloadError(f"{endpoint} answered HTTP {_status(e)} while downloading {entry.display_name}.",
                             "The server may be busy; try again later. " + resume,
                             gui_hint="The server may be busy; try again later. " + resume_gui)
    if isinstance(e, FileMetadataError):
        return DownloadError(f"{endpoint} does not answer like a Hugging Face Hub ({e}).",
                             "Check HF_ENDPOINT and any proxy settings.")
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return DiskFullError(f"The disk filled up while downloading {entry.display_name}.",
                                 "Free some space and run the command again; what arrived so far is kept.",
                                 gui_hint="Free some space and download again; what arrived so far is kept.")
        return DownloadError(f"Could not write the download of {entry.display_name}: {e.strerror or e}.",
                             "Check the folder is writable, or set GLIMPSE_HOME to another folder.")
    return DownloadError(f"Downloading {entry.display_name} failed: {type(e).__name__}: {e}.", resume,
                         gui_hint=resume_gui)
