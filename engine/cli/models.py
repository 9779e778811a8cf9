"""``glimpse models list | pull NAME | import PATH | remove NAME | path NAME``.

``register`` adds the ``models`` command to the main parser; each handler takes the parsed ``args`` and returns an
exit code, and raises GlimpseError subclasses for anything the user can fix (``engine.cli.main`` prints them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glimpse.engine.convert import DEFAULT_QUANT, QUANTS
from glimpse.engine.convert.install import import_model, pull_model
from glimpse.engine.errors import GlimpseError, LicenseNotAcceptedError
from glimpse.engine.models import catalog
from glimpse.engine.models.catalog import CatalogEntry
from glimpse.engine.models.leftovers import human_bytes, tree_size
from glimpse.engine.models.model_folder import read_manifest
from glimpse.engine.models.store import ConfirmLicense, Store


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _ask(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


# -- list -------------------------------------------------------------------------------------------------------------

def _rows(store: Store) -> list[dict[str, Any]]:
    installed = {m.name: m for m in store.installed()}
    downloads = {d.name: d for d in store.downloads()}
    rows: list[dict[str, Any]] = []
    for name in [e.name for e in catalog.CATALOG] + sorted(set(installed) - set(catalog.names())):
        entry = catalog.find(name) if name in catalog.names() else None
        model, dl = installed.get(name), downloads.get(name)
        row: dict[str, Any] = {
            "name": name,
            "display_name": entry.display_name if entry else name,
            "in_catalog": entry is not None,
            "status": "not installed",
            "path": None,
            "size_bytes": None,
            "quant": None,
            "complete": False,
            "download_bytes": entry.approx_download_bytes if entry else None,
            "downloaded_bytes": dl.done_bytes if dl else 0,
        }
        if model is not None:
            row.update(status="installed" if model.complete else f"broken: {model.problem}", path=str(model.path),
                       size_bytes=model.size_bytes, quant=model.quant, complete=model.complete)
        elif dl is not None:
            total = dl.total_bytes or row["download_bytes"]
            if dl.complete:
                row["status"] = "downloaded, not converted"
            else:
                pct = f" {100 * dl.done_bytes / total:.0f}%" if total else ""
                row["status"] = f"partly downloaded{pct}"
        rows.append(row)
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    store = Store.default()
    rows = _rows(store)
    in_use = store.work_in_progress()
    if args.json:
        print(json.dumps({"home": str(store.root), "models": rows,
                          "in_use": [{"path": str(w.path), "kind": w.kind, "size_bytes": w.size_bytes,
                                      "pid": w.owner.pid if w.owner else None,
                                      "host": w.owner.host if w.owner else None,
                                      "other_host": w.state == "elsewhere"} for w in in_use]}, indent=2))
        return 0
    print(f"{'NAME':<16} {'STATUS':<28} {'SIZE':>10}  {'QUANT':<7} LLM")
    for row in rows:
        entry = catalog.find(row["name"]) if row["in_catalog"] else None
        if row["size_bytes"] is not None:
            size = human_bytes(row["size_bytes"])
        elif row["download_bytes"]:
            size = "~" + human_bytes(row["download_bytes"])
        else:
            size = "-"
        llm = entry.llm if entry else ""
        print(f"{row['name']:<16} {row['status'][:28]:<28} {size:>10}  {row['quant'] or '-':<7} {llm}")
    print(f"\nModels are kept in {store.models_dir}")
    if in_use:
        print("Work in progress (left alone while its process runs):")
        for work in in_use:
            print(f"  {work.describe()}")
    return 0


# -- pull -------------------------------------------------------------------------------------------------------------

def _license_prompt(accept_flag: bool) -> ConfirmLicense:
    def confirm(entry: CatalogEntry, text: str) -> bool:
        if accept_flag:
            print(f"Accepted the {catalog.LICENSE_NAME} for {entry.display_name} (--accept-license); "
                  f"its text is at {catalog.LICENSE_URL}.", file=sys.stderr)
            return True
        print(text.rstrip() + "\n")
        print(f"{entry.display_name} is released by Apple under the licence above ({catalog.LICENSE_URL}): "
              "research use, not commercial use.")
        return _ask("Do you accept this licence? [y/N] ")

    return confirm


def cmd_pull(args: argparse.Namespace) -> int:
    entry = catalog.lookup(args.name)
    store = Store.default()
    if not store.license_accepted(entry.license_id) and not args.accept_license and not _interactive():
        raise LicenseNotAcceptedError(
            f"{entry.display_name} is under the {catalog.LICENSE_NAME}, which has not been accepted yet.",
            "Run the command in a terminal to read and accept it, or pass --accept-license to accept it in a "
            "script.")
    partial = next((d for d in store.downloads() if d.name == entry.name and d.done_bytes), None)
    if partial is not None and not partial.complete:
        of = f" of {human_bytes(partial.total_bytes)}" if partial.total_bytes else ""
        print(f"Resuming the download: {human_bytes(partial.done_bytes)}{of} is already here.", file=sys.stderr)
    from glimpse.engine.cli.progress import ProgressBar  # noqa: PLC0415 - tqdm's start-up cost, see engine/cli/__init__.py

    with ProgressBar(enabled=not args.quiet) as bar:
        out = pull_model(store, entry, quant=args.quant, force=args.force, keep_download=args.keep_download,
                         confirm_license=_license_prompt(args.accept_license), progress=bar)
    _print_vision_reason(out)
    print(f"{entry.display_name} is ready: {out}")
    return 0


# -- import -----------------------------------------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    store = Store.default()
    from glimpse.engine.cli.progress import ProgressBar  # noqa: PLC0415 - tqdm's start-up cost, see engine/cli/__init__.py

    with ProgressBar(enabled=not args.quiet) as bar:
        out = import_model(store, args.path, name=args.name, quant=args.quant, force=args.force, progress=bar)
    _print_vision_reason(out)
    print(f"Imported as '{out.name}': {out}")
    return 0


def _print_vision_reason(folder: Path) -> None:
    """The converter's one line on the vision encoder's precision (an imported model folder may predate it)."""

    reason = read_manifest(folder).vision_reason
    if reason:
        print(f"Vision encoder: {reason}")


# -- remove / path ----------------------------------------------------------------------------------------------------

def cmd_remove(args: argparse.Namespace) -> int:
    store = Store.default()
    name = store.resolve(args.name)
    targets = [store.models_dir / name] + ([] if args.keep_download else [store.downloads_dir / name])
    present = [t for t in targets if t.is_dir()]
    if present and not args.yes:
        total = sum(tree_size(t) for t in present)
        what = " and ".join(str(t) for t in present)
        if not _interactive():
            raise GlimpseError(f"Removing '{name}' ({human_bytes(total)}) needs confirmation.",
                               "Pass --yes to remove it without asking.")
        if not _ask(f"Delete {what} ({human_bytes(total)})? [y/N] "):
            print("Nothing was removed.")
            return 0
    for path, size in store.remove(args.name, keep_download=args.keep_download):
        print(f"Removed {path} ({human_bytes(size)})")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    print(Store.default().path(args.name))
    return 0


def _cmd_models_help(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 0

    return show


# -- parser -----------------------------------------------------------------------------------------------------------

def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``models`` and its actions to ``subparsers`` (the object ``add_subparsers`` returned)."""
    names = ", ".join(catalog.names())
    models: argparse.ArgumentParser = subparsers.add_parser("models", help="list, download, import and remove models",
                                   description="Manage the models Glimpse can run. Set GLIMPSE_HOME to keep them "
                                               "somewhere else; HF_ENDPOINT and HF_HUB_OFFLINE are honoured.")
    models.set_defaults(func=_cmd_models_help(models))
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")

    p = sub.add_parser("list", help="show catalogue and installed models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("pull", help="download a model from Hugging Face and convert it",
                       description=f"Download and convert a catalogue model ({names}). Interrupted downloads "
                                   "resume where they stopped.")
    p.add_argument("name", metavar="NAME", help=f"catalogue name: {names} (or 0.5b, 1.5b, 7b)")
    p.add_argument("--quant", choices=QUANTS, default=DEFAULT_QUANT,
                   help=f"language model weight type (default {DEFAULT_QUANT})")
    p.add_argument("--accept-license", action="store_true",
                   help="accept Apple's model licence without a prompt (for scripts)")
    p.add_argument("--force", action="store_true", help="convert again even if the model is installed")
    p.add_argument("--keep-download", action="store_true",
                   help="keep the downloaded checkpoint after conversion (it is deleted by default)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("import", help="install a model from a local folder (works offline)",
                       description="Install from a checkpoint folder (Apple's llava-fastvithd_*_stage3 zip contents "
                                   "or a Hugging Face snapshot), which is converted, or from a converted Glimpse "
                                   "model folder, which is verified and copied.")
    p.add_argument("path", metavar="PATH", help="checkpoint folder or model folder")
    p.add_argument("--name", help="name in the store (default: from the folder)")
    p.add_argument("--quant", choices=QUANTS, default=DEFAULT_QUANT,
                   help=f"language model weight type when converting (default {DEFAULT_QUANT})")
    p.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("remove", help="delete an installed model and its download")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--keep-download", action="store_true", help="keep the downloaded checkpoint")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("path", help="print the folder of an installed model")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=cmd_path)
    return models
