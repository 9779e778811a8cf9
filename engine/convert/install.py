"""Getting a model into the store: :func:`pull_model` (licence, resumable download, conversion) and
:func:`import_model` (a converted model folder is verified and copied; a checkpoint folder is converted).

Here, above both the store (``engine.models``) and the converter, because installing needs both: the store keeps
models and never converts, the converter writes a folder and knows nothing of the store.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from glimpse.engine.convert import DEFAULT_QUANT, convert_checkpoint
from glimpse.engine.errors import CheckpointError, ModelFolderError, OutputExistsError
from glimpse.engine.models import catalog
from glimpse.engine.models.catalog import CatalogEntry
from glimpse.engine.models.model_folder import is_model_folder
from glimpse.engine.models.store import ConfirmLicense, Store, already_installed, slug
from glimpse.engine.progress import ProgressFn

if TYPE_CHECKING:
    from glimpse.engine.models.download import DownloadOptions


def pull_model(
    store: Store,
    entry: CatalogEntry,
    *,
    quant: str | None = None,
    force: bool = False,
    keep_download: bool = False,
    confirm_license: ConfirmLicense | None = None,
    options: DownloadOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Licence check, resumable download, conversion into the store's ``models/<name>``. Returns the model folder.

    The checkpoint download is deleted after a successful conversion unless ``keep_download``; after any
    failure it stays, so the next pull resumes.
    """
    # Start-up: huggingface_hub's HTTP stack takes 0.7-0.85 s to import; importing or converting never needs it.
    from glimpse.engine.models.download import download_model  # noqa: PLC0415

    out = store.model_path(entry.name)
    if is_model_folder(out) and not force:
        raise OutputExistsError(f"{entry.display_name} is already installed in {out}.",
                                "Pass --force to convert it again, or remove it first.",
                                gui_hint="Remove it first to download and convert it again.")
    store.ensure_license(entry, confirm_license, options=options, cancel=cancel)
    result = download_model(entry, store.download_path(entry.name), options=options, progress=progress,
                            cancel=cancel)
    source = {"repo": entry.repo, "revision": result.commit or entry.revision or "main"}
    convert_checkpoint(result.folder, out, quant=quant or DEFAULT_QUANT, force=force, name=entry.name,
                       source=source, progress=progress, cancel=cancel)
    if not keep_download:
        shutil.rmtree(result.folder, ignore_errors=True)
    return out


def import_model(
    store: Store,
    src: str | Path,
    *,
    name: str | None = None,
    quant: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Install from a local folder: a converted model folder is verified and copied; a checkpoint folder
    (Apple's llava-fastvithd_*_stage3 zip contents or a Hugging Face snapshot) is converted."""
    src = Path(src).expanduser()
    if not src.exists():
        raise ModelFolderError(f"{src} does not exist.", "Give the path of a checkpoint or model folder.")
    if src.is_file():
        hint = "Unzip it first and import the folder inside." if src.suffix.lower() == ".zip" else \
            "Give the folder that holds config.json and the .safetensors files."
        raise CheckpointError(f"{src} is a file, not a folder.", hint)
    if is_model_folder(src):
        return store.import_model_folder(src, name, force, progress, cancel)
    return _import_checkpoint(store, src, name, quant, force, progress, cancel)


def _import_checkpoint(store: Store, src: Path, name: str | None, quant: str | None, force: bool,
                       progress: ProgressFn | None, cancel: threading.Event | None) -> Path:
    if name is None:
        # A Hugging Face cache snapshot is .../models--apple--FastVLM-0.5B/snapshots/<commit>.
        label = src.parent.parent.name if src.parent.name == "snapshots" else src.resolve().name
        entry = catalog.guess_from_folder_name(label)
        name = entry.name if entry is not None else slug(label)
    out = store.model_path(name)
    try:
        return convert_checkpoint(src, out, quant=quant or DEFAULT_QUANT, force=force, name=out.name,
                                  source={"path": str(src.resolve())}, progress=progress, cancel=cancel)
    except OutputExistsError as e:
        raise already_installed(out.name) from e
