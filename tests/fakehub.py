"""A tiny Hugging Face Hub on 127.0.0.1 for download tests: the file routes huggingface_hub uses, nothing else.

``HEAD/GET /{repo}/resolve/{revision}/{path}`` answer like the Hub does: ``X-Repo-Commit``, ``ETag`` (git blob sha1
for ordinary files, sha256 for LFS ones), ``X-Linked-Etag`` / ``X-Linked-Size`` for LFS files, ``Content-Length``,
``Accept-Ranges`` and 206 answers to ``Range: bytes=N-``. 404s carry ``X-Error-Code`` (RepoNotFound,
RevisionNotFound, EntryNotFound) so huggingface_hub raises its specific errors. With ``cdn=True`` LFS files
redirect (302) to a second server on another port, as the Hub redirects to its CDN.

Switches, settable at any time: ``cut_after`` (drop the connection after that many body bytes, ``cuts`` times),
``down_after_cut`` (after a cut, answer 503 to everything: the network stays down), ``corrupt`` (serve these
files with one byte changed, headers still promising the right hashes), ``status`` (answer everything with this
HTTP status), ``ignore_range``, ``cdn_fail`` (statuses the CDN gives its next GETs, e.g. 403 for an
expired signed address), ``serve_anything`` (a hostile mirror: any unknown path of a repository is answered
with the content of this file of it). ``log`` records every request; ``sent`` counts body bytes per file.
``stall_after`` (send that many body bytes, then keep the connection open and send nothing, ``stalls`` times;
the connection is let go when the hub stops) and ``trickle`` (send bodies at this many bytes per second) are the
servers that stop sending without closing anything.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from glimpse.engine.convert.synthetic import CheckpointSpec, write_checkpoint

LICENSE_TEXT = "TEST MODEL LICENCE\nResearch use only. This text stands in for Apple's LICENSE file.\n"
REPO = "apple/FastVLM-0.5B"

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    range: str | None


@dataclass(frozen=True)
class _File:
    data: bytes
    sha256: str
    git_sha1: str
    lfs: bool


def make_repo(folder: Path, shards: int = 1) -> Path:
    """A tiny random FastVLM checkpoint in Apple's layout plus a LICENSE file: what a fake repository serves."""
    write_checkpoint(folder, CheckpointSpec(shards=shards))
    (folder / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
    return folder


def dead_endpoint() -> str:
    """An http://127.0.0.1 address where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class FakeHub:
    def __init__(self, repos: dict[str, Path], *, commit: str | None = None,
                 lfs_suffixes: tuple[str, ...] = (".safetensors",), cdn: bool = False) -> None:
        self.commit = commit or secrets.token_hex(20)
        self.repos: dict[str, dict[str, _File]] = {}
        for repo, folder in repos.items():
            files = {}
            for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                data = path.read_bytes()
                rel = path.relative_to(folder).as_posix()
                files[rel] = _File(data, hashlib.sha256(data).hexdigest(),
                                   hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                                   rel.endswith(lfs_suffixes))
            self.repos[repo] = files
        self.cdn = cdn
        self.cut_after: int | None = None
        self.cuts = 1
        self.down_after_cut = False
        self.corrupt: set[str] = set()
        self.status: int | None = None
        self.ignore_range = False
        self.cdn_fail: list[int] = []
        self.serve_anything: str | None = None
        self.stall_after: int | None = None
        self.stalls = 1
        self.trickle: float | None = None
        self.stopping = threading.Event()
        self.log: list[Logged] = []
        self.sent: dict[str, int] = {}
        self._down = False
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        for _ in range(2 if self.cdn else 1):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
            self._servers.append(server)
        return self

    def stop(self) -> None:
        self.stopping.set()  # lets stalled connections go
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[-1].server_address[1]}"

    def reset(self) -> None:
        """Back to a healthy server (switches off); the log and counters are kept."""
        self.cut_after, self.cuts, self.down_after_cut, self._down = None, 1, False, False
        self.corrupt, self.status, self.ignore_range, self.cdn_fail = set(), None, False, []
        self.stall_after, self.stalls, self.trickle = None, 1, None

    def gets(self, path_suffix: str = "") -> list[Logged]:
        return [e for e in self.log if e.method == "GET" and e.path.endswith(path_suffix)]

    def file(self, repo: str, path: str) -> _File:
        return self.repos[repo][path]


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else every small answer waits ~40 ms for a delayed ACK

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, head: bool) -> None:
            path = unquote(self.path.split("?", 1)[0])
            with hub._lock:
                hub.log.append(Logged(self.command, path, self.headers.get("Range")))
            if hub.status is not None or hub._down:
                self._empty(hub.status or 503)
                return
            if (m := _CDN.match(path)) is not None:
                if hub.cdn_fail and not head:
                    self._empty(hub.cdn_fail.pop(0))
                    return
                found = next(((rel, f) for files in hub.repos.values() for rel, f in files.items()
                              if f.sha256 == m["sha"]), None)
                if found is None:
                    self._empty(404)
                    return
                self._send_file(found[0], found[1], head, {})
                return
            m = _RESOLVE.match(path)
            if hub.serve_anything is not None and (m is None or m["path"] not in hub.repos.get(m["repo"], {})):
                repo = m["repo"] if m is not None and m["repo"] in hub.repos else next(iter(hub.repos))
                f = hub.repos[repo][hub.serve_anything]
                self._send_file(path, f, head, {"X-Repo-Commit": hub.commit, "ETag": f'"{f.sha256}"'})
                return
            if m is None or m["repo"] not in hub.repos:
                self._empty(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
                return
            if m["rev"] not in ("main", hub.commit):
                self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"})
                return
            commit = {"X-Repo-Commit": hub.commit}
            f = hub.repos[m["repo"]].get(m["path"])
            if f is None:
                self._empty(404, {**commit, "X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
                return
            headers = dict(commit)
            if f.lfs:
                headers.update({"ETag": f'"{f.git_sha1}"', "X-Linked-Etag": f'"{f.sha256}"',
                                "X-Linked-Size": str(len(f.data))})
                if hub.cdn:
                    self._empty(302, {**headers, "Location": f"{hub.cdn_endpoint}/cdn/{f.sha256}"})
                    return
                headers["ETag"] = f'"{f.sha256}"'
            else:
                headers["ETag"] = f'"{f.git_sha1}"'
            self._send_file(m["path"], f, head, headers)

        def _send_file(self, rel: str, f: _File, head: bool, headers: dict[str, str]) -> None:
            data = f.data
            if rel in hub.corrupt and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and not hub.ignore_range and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
                start = int(m[1])
                if start >= len(data):
                    self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            cut = stall = False
            with hub._lock:
                if hub.cut_after is not None and hub.cuts != 0 and len(body) > hub.cut_after:
                    body, cut = body[:hub.cut_after], True
                    hub.cuts -= 1
                    hub._down = hub.down_after_cut
                if hub.stall_after is not None and hub.stalls != 0 and len(body) > hub.stall_after:
                    body, stall = body[:hub.stall_after], True
                    hub.stalls -= 1
                hub.sent[rel] = hub.sent.get(rel, 0) + len(body)
                trickle = hub.trickle
            try:
                if trickle:
                    step = max(1, int(trickle / 20))
                    for i in range(0, len(body), step):
                        if hub.stopping.wait(step / trickle):
                            return
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                else:
                    self.wfile.write(body)
                    self.wfile.flush()
            except OSError:
                return
            if stall:  # the connection stays open and silent until the client gives up or the hub stops
                hub.stopping.wait()
                self.close_connection = True
                return
            if cut:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler
