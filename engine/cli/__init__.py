"""The ``glimpse`` command line.

Every expected failure is a GlimpseError and prints as one sentence; exit codes: 0 ok, 1 error, 2 usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from glimpse.engine.cli import models as cli_models
from glimpse.engine.cli import run as cli_run
from glimpse.engine.convert import (
    DEFAULT_QUANT,
    DEFAULT_VISION_PRECISION,
    DEFAULT_VISION_WEIGHTS,
    QUANTS,
    VISION_PRECISIONS,
    VISION_WEIGHTS,
    convert_checkpoint,
)
from glimpse.engine.errors import GlimpseError
from glimpse.engine.folders import check_home, graph_cache, user_folder
from glimpse.engine.models.leftovers import reclaim
from glimpse.engine.models.model_folder import read_manifest
from glimpse.engine.version import __version__

log = logging.getLogger("glimpse")


def _cmd_convert(args: argparse.Namespace) -> int:
    # Start-up: tqdm adds about 0.2 s to every `glimpse` command (python -X importtime), so only a command with a
    # progress bar loads it.
    from glimpse.engine.cli.progress import ProgressBar  # noqa: PLC0415

    with ProgressBar(enabled=not args.quiet) as bar:
        out = convert_checkpoint(args.src, args.out, quant=args.quant, force=args.force,
                                 vision_weights=args.vision_weights, vision_precision=args.vision_precision,
                                 progress=bar)

    reason = read_manifest(out).vision_reason
    if reason:
        print(f"Vision encoder: {reason}")
    print(f"Model folder written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glimpse", description="Glimpse: FastVLM on your own computer.")
    parser.add_argument("--version", action="version", version=f"glimpse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="convert an Apple FastVLM checkpoint folder into a Glimpse model folder")
    p.add_argument("src", help="checkpoint folder (config.json, tokenizer files, .safetensors)")
    p.add_argument("out", help="model folder to create")
    p.add_argument("--quant", choices=QUANTS, default=DEFAULT_QUANT,
                   help=f"language model weight type (default {DEFAULT_QUANT})")
    p.add_argument("--vision-weights", choices=VISION_WEIGHTS, default=DEFAULT_VISION_WEIGHTS,
                   help="how vision.onnx stores its weights (computation is float32 either way)")
    p.add_argument("--vision-precision", choices=VISION_PRECISIONS, default=DEFAULT_VISION_PRECISION,
                   help=f"vision encoder arithmetic (default {DEFAULT_VISION_PRECISION}: int8, or int8 with its most "
                        "sensitive parts in float, only when the answers on held-out pictures stay those of fp32; "
                        "fp32 otherwise. int8: whole-graph int8 even when that check fails)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_convert)

    cli_run.register(sub)
    cli_models.register(sub)
    return parser


# Entries for Glimpse's own helper processes (engine.system.self_command), kept out of the parser and its help:
# a user never types them. Each maps to "module:function" taking the remaining arguments and returning an exit code.
HIDDEN_ENTRIES: dict[str, str] = {"_runner": "glimpse.engine.runner.server:main",
                                  "_canary": "glimpse.engine.cli.canary:main",
                                  "_vision_canary": "glimpse.engine.cli.vision_canary:main"}


def _run_hidden(entry: str, args: Sequence[str]) -> int:
    import importlib  # noqa: PLC0415 (start-up: only helper processes come here)

    module, _, func = HIDDEN_ENTRIES[entry].partition(":")
    code: int = getattr(importlib.import_module(module), func)(list(args))
    return code


def prepare_home() -> None:
    """Before any command: say in one sentence when a folder Glimpse keeps things in cannot be used (a file, no
    permission, read-only, full) rather than let a listing look empty or a command fail later, then delete what
    Glimpse processes that provably ended left in the store (GBs a killed conversion or import leaves) and say how
    much that freed."""
    check_home()
    data = user_folder("data")
    # Not through engine.models.store: it pulls in the converter (0.75-1.2 s, -X importtime).
    freed = reclaim([data / "models", data / "downloads"], data / "downloads", graph_cache())
    if freed.removed:
        print(f"glimpse: {freed.sentence()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in HIDDEN_ENTRIES:
        return _run_hidden(argv[0], argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        prepare_home()
        code: int = args.func(args)
        return code
    except GlimpseError as e:
        print(f"glimpse: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("glimpse: cancelled.", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a user error: say so in one line unless --debug
        if args.debug:
            raise
        print(f"glimpse: internal error: {type(e).__name__}: {e}. Run again with --debug for details and "
              "please report it.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
