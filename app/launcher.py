"""The ``glimpse`` command, the one way to start Glimpse: no arguments (or only the window's options, such as
``--open FILE``) opens the window, ``self-test`` checks this install, anything else is the engine's command line
(``glimpse ask``, ``glimpse models``...). ``python -m glimpse.app`` runs the same function;
``python -m glimpse.engine`` is the engine's half alone (``engine.cli_main``, what this hands the engine's commands
to), which Glimpse's helper processes run (``engine.system.self_command``).

It also makes a frozen, windowed build safe to run: with no terminal, ``sys.stdout`` and ``sys.stderr`` are None,
and the first print would crash the app; they are pointed at the log file instead. And before any native library
loads, it checks the processor has the instructions they need (app/cpu_baseline.py): one sentence, not a crash.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from glimpse.app import platform_check
from glimpse.app.cpu_baseline import baseline_message, missing_features
from glimpse.engine import user_folder


def log_dir() -> Path:
    return user_folder("logs")


def setup_logging() -> Path | None:
    """Log to the user log folder (rotating, 1 MB x 3). Returns the log file, or None if it cannot be written."""
    try:
        folder = log_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "glimpse.log"
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=1_000_000, backupCount=3, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def _ensure_streams(log_file: Path | None) -> None:
    if sys.stdout is not None and sys.stderr is not None:
        return
    target = open(log_file, "a", encoding="utf-8", buffering=1) if log_file else open(os.devnull, "w")  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = target
    if sys.stderr is None:
        sys.stderr = target


# The window's own options (app/main.py); with these, Qt's (one dash and a word: -platform, -style...) or none,
# `glimpse` opens the window. Anything else is a command: `self-test`, or the engine's command line.
WINDOW_OPTIONS = ("--model", "--settings", "--open", "--mode")


def opens_the_window(args: list[str]) -> bool:
    if not args:
        return True
    first = args[0].split("=", 1)[0]
    return first in WINDOW_OPTIONS or (first.startswith("-") and not first.startswith("--") and len(first) > 2)


def main(argv: list[str] | None = None) -> int:
    """What ``glimpse`` runs, and ``python -m glimpse.app`` and the bundle's executable too: the one way in. ``argv``
    excludes the program name."""
    args = sys.argv[1:] if argv is None else list(argv)
    log_file = setup_logging()
    _ensure_streams(log_file)
    refusal = baseline_message(missing_features())
    if refusal:
        logging.getLogger("glimpse").error(refusal)
        print(refusal, file=sys.stderr)
        return 3
    if opens_the_window(args):
        problem = platform_check.prepare()  # before app.main imports QtGui, which may not load either
        if problem:
            print(problem, file=sys.stderr)
            return 1
        # Start-up: each command loads only its own half; the window's modules take about 3 s to import (-X importtime),
        # the CLI about 1 s, and `glimpse ask` never needs Qt.
        from glimpse.app.main import main as gui  # noqa: PLC0415

        return gui(args)
    if args[0] == "self-test":
        from glimpse.app.selftest import main as selftest  # noqa: PLC0415

        return selftest(args[1:])
    if args[0] == "caption":
        from glimpse.app.capture.headless import install_if_needed  # noqa: PLC0415

        install_if_needed()  # the packaged app has no OpenCV: capture through QtMultimedia instead
    from glimpse.engine import cli_main as cli  # noqa: PLC0415

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
