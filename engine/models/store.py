"""The local model store: where converted models, downloads and licence acceptances live.

Layout (the root is ``$GLIMPSE_HOME``, else the per-user data folder "Glimpse" from platformdirs)::

    models/<name>/       converted model folders (vision.onnx, llm.gguf, model.json, LICENSE_MODEL, NOTICE)
    downloads/<name>/    checkpoint downloads, kept across failures and restarts so they resume
    licenses.json        which model licences the user accepted, when, and the sha256 of the text they saw

Folders whose name starts with "." are work in progress (a conversion's temporary folder, a removal) and are
never listed. ``pull_model`` and ``import_model`` (``engine.convert.install``) are the two ways a model gets into
``models/``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glimpse.engine import durable
from glimpse.engine.errors import (
    DiskFullError,
    FolderError,
    GlimpseError,
    LicenseNotAcceptedError,
    ModelFolderError,
    ModelNotFoundError,
    OutputExistsError,
)
from glimpse.engine.folders import check_folder, graph_cache, user_folder
from glimpse.engine.models import catalog
from glimpse.engine.models.catalog import CatalogEntry
from glimpse.engine.models.folder_copy import copy_model_folder
from glimpse.engine.models.leftovers import Reclaimed, WorkEntry, claim, reclaim, release, tree_size, working_entries
from glimpse.engine.models.model_folder import VISION_FILE, is_model_folder, read_manifest, recorded_file, verify
from glimpse.engine.models.vision_cache import drop_cached
from glimpse.engine.progress import ProgressFn

if TYPE_CHECKING:
    from glimpse.engine.models.download import DownloadOptions

log = logging.getLogger(__name__)
LICENSES_FILE = "licenses.json"
_MAX_LICENSES_BYTES = 1 << 20  # a few hundred bytes per licence
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

ConfirmLicense = Callable[[CatalogEntry, str], bool]
"""Shown the licence text; returns True when the user accepts it."""


def home() -> Path:
    """The store root: $GLIMPSE_HOME if set, else the per-user data folder (read on every call, not cached)."""
    return user_folder("data")


def normalize_name(name: str) -> str:
    """A store name: lower case letters, digits, '.', '_' and '-'; raise a GlimpseError for anything else."""
    cleaned = name.strip().lower()
    if not _NAME.fullmatch(cleaned) or cleaned in {".", ".."}:
        raise GlimpseError(f"'{name}' cannot be used as a model name.",
                           "Use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    return cleaned


def already_installed(name: str) -> OutputExistsError:
    return OutputExistsError(f"A model called '{name}' is already installed.",
                             "Pass --name to import it under another name, or --force to replace it.",
                             gui_hint="Remove it in the model manager first, then import again.")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64] or "model"


@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    size_bytes: int
    quant: str | None  # None when model.json is unreadable
    complete: bool  # model.json readable and every file it lists present with the recorded size
    problem: str = ""  # why it is not complete
    vision: str | None = None  # the vision encoder's precision ("int8", "mixed", "fp32"); None when unknown
    vision_reason: str = ""  # why the converter chose it, one sentence (model.json "precision_reason")


@dataclass(frozen=True)
class PartialDownload:
    name: str
    path: Path
    done_bytes: int
    total_bytes: int | None
    complete: bool  # every file downloaded and verified (conversion did not run or failed)


@dataclass(frozen=True)
class Store:
    root: Path

    @classmethod
    def default(cls) -> Store:
        return cls(home())

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    def check(self) -> None:
        """Raise FolderError naming the folder and what to do when the store cannot be used (a file, no
        permission, read-only, full), so that an empty list is never taken for "no model is installed"."""
        check_folder(self.root, "data folder")
        check_folder(self.models_dir, "model store")
        check_folder(self.downloads_dir, "download folder")

    def model_path(self, name: str) -> Path:
        return self.models_dir / normalize_name(name)

    def download_path(self, name: str) -> Path:
        return self.downloads_dir / normalize_name(name)

    # -- what is installed ------------------------------------------------------------------------------------

    def installed(self) -> list[InstalledModel]:
        out = []
        for path in _visible_dirs(self.models_dir):
            quant: str | None = None
            vision: str | None = None
            reason = ""
            problem = ""
            try:
                manifest = read_manifest(path)
                quant = manifest.quant
                vision = manifest.vision_precision
                reason = manifest.vision_reason
                verify(path, check_hashes=False)
            except GlimpseError as e:
                problem = e.message
            except OSError as e:
                problem = f"{path} cannot be read: {e.strerror or e}."
            except Exception as e:  # a bug in the checks must not hide every other model, or Remove
                log.exception("checking %s failed", path)
                problem = f"{path} cannot be read ({type(e).__name__}: {e})."
            out.append(InstalledModel(path.name, path, tree_size(path), quant, not problem, problem, vision,
                                      reason))
        return out

    def downloads(self) -> list[PartialDownload]:
        # Start-up: huggingface_hub's HTTP stack takes 0.7-0.85 s to import; listing, removing and loading installed
        # models never need it.
        from glimpse.engine.models.download import bytes_on_disk, local_copy_complete  # noqa: PLC0415

        out = []
        for path in _visible_dirs(self.downloads_dir):
            try:
                done, total = bytes_on_disk(path)
                complete = local_copy_complete(path)
            except (OSError, ValueError, TypeError, AttributeError):  # a damaged state file: resumes from scratch
                done, total, complete = tree_size(path), None, False
            out.append(PartialDownload(path.name, path, done, total, complete))
        return out

    def resolve(self, name: str) -> str:
        """The store name for ``name``: an installed or downloading folder of that name, else a catalogue alias."""
        cleaned = name.strip().lower()
        for parent in (self.models_dir, self.downloads_dir):
            if _NAME.fullmatch(cleaned) and (parent / cleaned).is_dir():
                return cleaned
        entry = catalog.find(name)
        return entry.name if entry is not None else normalize_name(name)

    def path(self, name: str) -> Path:
        """The folder of an installed model; ModelNotFoundError (with what to do) if it is not installed."""
        path = self.models_dir / self.resolve(name)
        if not is_model_folder(path):
            hint, gui_hint = self._install_hint(name)
            raise ModelNotFoundError(f"No model called '{name}' is installed.", hint, gui_hint=gui_hint)
        return path

    def _install_hint(self, name: str) -> tuple[str, str]:
        """What to do about a model that is not installed: (at the command line, in the window)."""
        entry = catalog.find(name)
        if entry is not None:
            return (f"Get it with `glimpse models pull {entry.name}`.",
                    f"Download {entry.display_name} in the model manager.")
        installed = ", ".join(m.name for m in self.installed())
        if installed:
            return (f"Installed: {installed}.",
                    f"Installed: {installed}. Choose one, or get another in the model manager.")
        return ("Get one with `glimpse models pull fastvlm-0.5b` or `glimpse models import PATH`.",
                "Download or import one in the model manager.")

    def remove(self, name: str, *, keep_download: bool = False) -> list[tuple[Path, int]]:
        """Delete a model folder and (unless ``keep_download``) its download. Returns (path, bytes freed) pairs."""
        resolved = self.resolve(name)
        targets = [self.models_dir / resolved]
        if not keep_download:
            targets.append(self.downloads_dir / resolved)
        targets = [t for t in targets if t.exists()]
        if not targets:
            hint, gui_hint = self._install_hint(name)
            raise ModelNotFoundError(f"Nothing called '{name}' is installed or downloading.", hint,
                                     gui_hint=gui_hint)
        model = self.models_dir / resolved
        cached_sha = _vision_sha(model) if model.exists() else None
        removed = []
        for target in targets:
            size = tree_size(target) if target.is_dir() and not target.is_symlink() else 0
            # Rename first: a half-deleted model must never look like an installed (or resumable) one.
            trash = target.with_name(f".{target.name}.removing-{os.getpid()}")
            try:
                target.rename(trash)
                if trash.is_dir() and not trash.is_symlink():
                    claim(trash)
                if trash.is_symlink() or not trash.is_dir():
                    trash.unlink()  # the link only: what it points at is outside Glimpse's folders
                else:
                    shutil.rmtree(trash)
            except OSError as e:
                raise GlimpseError(f"Could not remove {target}: {e.strerror or e}.",
                                   "Close any program using the model and try again.") from e
            removed.append((target, size))
        if cached_sha is not None and cached_sha not in {_vision_sha(m.path) for m in self.installed()}:
            removed += drop_cached(cached_sha)
        return removed

    def reclaim(self) -> Reclaimed:
        """Delete the working folders and files that Glimpse processes which have provably ended (killed, crashed,
        power lost) left in the store and the vision cache, and say what is still in use. See
        ``engine.models.leftovers``."""
        return reclaim([self.models_dir, self.downloads_dir], self.downloads_dir, graph_cache())

    def clean_leftovers(self) -> list[Path]:
        """:meth:`reclaim`, returning only the deleted paths."""
        return [path for path, _size in self.reclaim().removed]

    def work_in_progress(self) -> list[WorkEntry]:
        """Working folders and files in the store whose owner may still be at work (this host or another)."""
        return [w for w in working_entries([self.models_dir, self.downloads_dir], self.downloads_dir,
                                           graph_cache()) if w.state != "gone"]

    # -- licences ---------------------------------------------------------------------------------------------

    @property
    def licenses_file(self) -> Path:
        return self.root / LICENSES_FILE

    def _licenses(self) -> dict[str, Any]:
        """The recorded acceptances; an unreadable or damaged file counts as none (the user is asked again)."""
        try:
            if self.licenses_file.stat().st_size > _MAX_LICENSES_BYTES:
                return {}
            data = json.loads(self.licenses_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def license_accepted(self, license_id: str) -> bool:
        record = self._licenses().get(license_id)
        return isinstance(record, dict) and bool(record.get("accepted"))

    def accept_license(self, license_id: str, text: str, model: str) -> None:
        data = self._licenses()
        data[license_id] = {
            "accepted": True,
            "accepted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "first_model": model,
        }
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            durable.write_text(self.licenses_file, json.dumps(data, indent=2, sort_keys=True),
                               tmp=self.licenses_file.with_suffix(".json.tmp"))
        except OSError as e:
            raise GlimpseError(f"Could not record the licence acceptance in {self.licenses_file}: "
                               f"{e.strerror or e}.",
                               "Check the folder is writable, or set GLIMPSE_HOME to another folder.",
                               gui_hint="Check the folder is writable, or start Glimpse with GLIMPSE_HOME set to "
                                        "another folder.") from e

    def ensure_license(self, entry: CatalogEntry, confirm: ConfirmLicense | None, *,
                       options: DownloadOptions | None = None, cancel: threading.Event | None = None) -> None:
        """Ask once per licence: fetch the text, show it through ``confirm``, record a yes, raise on a no."""
        if self.license_accepted(entry.license_id):
            return
        from glimpse.engine.models.download import fetch_license  # noqa: PLC0415

        text = fetch_license(entry, self.download_path(entry.name), options=options, cancel=cancel)
        if confirm is None or not confirm(entry, text):
            raise LicenseNotAcceptedError(
                f"{entry.display_name} is under the {catalog.LICENSE_NAME}, which has not been accepted.",
                "Read it and accept it at the prompt, or pass --accept-license to accept it in a script.",
                gui_hint="Download it again and accept the licence when it is shown.")
        self.accept_license(entry.license_id, text, entry.name)

    # -- getting models in (engine.convert.install converts: the store never does) ------------------------------

    def import_model_folder(self, src: Path, name: str | None = None, force: bool = False,
                            progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> Path:
        """Install a converted model folder: every listed file is hashed as it is copied (engine.convert.install's
        ``import_model`` also converts checkpoint folders)."""
        try:
            manifest = read_manifest(src)
        except ModelFolderError as e:
            e.gui_hint = "Import an intact copy of the model folder, or download the model in the model manager."
            raise
        out = self.model_path(name or slug(manifest.name or src.name))
        if out.resolve() == src.resolve():
            return out
        if out.exists() and not force:
            raise already_installed(out.name)
        tmp = out.with_name(f".{out.name}.import-{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            claim(tmp)  # host, process id and start time: a killed import's copy is reclaimed at once
            # Listed regular files only, each hashed as it is copied: no stamp, link or extra file comes along.
            copy_model_folder(src, tmp, progress=progress, cancel=cancel)
            release(tmp)
            durable.publish_folder(tmp, out, aside=out.with_name(f".{out.name}.old-{os.getpid()}"))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFullError(f"The disk filled up while copying {src} to {out}.",
                                    "Free some space and try again; nothing was left half-copied.") from e
            raise ModelFolderError(f"Could not copy {src} to {out}: {e.strerror or e}.",
                                   "Check both folders are readable and writable, then try again.") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def _visible_dirs(parent: Path) -> list[Path]:
    """The listed folders of ``parent``: none when it does not exist yet, an error when it cannot be read (an
    empty list must only ever mean that nothing is there)."""
    if not os.path.lexists(parent):
        return []
    if not parent.is_dir():
        check_folder(parent, "model store")  # says it is a file, and what to do
    try:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise FolderError(f"Cannot read {parent}: {e.strerror or e}.",
                          "Check the folder's permissions, or set GLIMPSE_HOME to another folder.",
                          gui_hint="Check the folder's permissions, or start Glimpse with GLIMPSE_HOME set to "
                                   "another folder.") from e


def _vision_sha(folder: Path) -> str | None:
    """The sha256 model.json records for a model folder's vision graph (the key of its optimized-graph cache)."""
    return recorded_file(folder / VISION_FILE)[0]
