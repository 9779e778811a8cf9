"""Open the window: ``main()`` is what ``glimpse`` (app/launcher.py) runs with no command, only the window's options."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QLoggingCategory
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication

from glimpse.app import paths, platform_check
from glimpse.app.lifecycle import catch_signals, close_on_signals
from glimpse.engine import __version__

log = logging.getLogger(__name__)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="glimpse", description="Glimpse: a camera assistant running FastVLM "
                                                                 "on this computer.")
    parser.add_argument("--model", help="use this installed model (by name) and remember the choice")
    parser.add_argument("--settings", type=Path, help="keep settings in this INI file instead of the usual place")
    parser.add_argument("--open", type=Path, metavar="FILE", help="open this image or video at start")
    parser.add_argument("--mode", choices=("live", "ask"), help="start in this mode")
    # Unknown options (-platform, -style...) are Qt's.
    return parser.parse_known_args(argv)


def quiet_multimedia_logs() -> None:
    """Qt Multimedia reports every optional codec library it does not find (VA-API, PipeWire) and relays FFmpeg's
    own chatter for every decoded frame: noise to users (real failures still arrive through errorOccurred)."""
    QLoggingCategory.setFilterRules("qt.multimedia.symbolsresolver=false\nqt.multimedia.ffmpeg*=false\n"
                                    "qt.multimedia.playbackengine*=false")


def make_app(qt_args: list[str]) -> QApplication:
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    QCoreApplication.setOrganizationName("Glimpse")
    QCoreApplication.setApplicationName("Glimpse")
    QCoreApplication.setApplicationVersion(__version__)
    QGuiApplication.setDesktopFileName("glimpse")
    quiet_multimedia_logs()
    app = QApplication(["glimpse", *qt_args])
    icon = paths.asset("glimpse.png")
    if icon is not None:
        app.setWindowIcon(QIcon(str(icon)))
    return app


def main(argv: list[str] | None = None) -> int:
    """Open the window and run until it closes; returns the exit status. ``argv`` excludes the program name."""
    args, qt_args = _parse(sys.argv[1:] if argv is None else list(argv))
    if QApplication.instance() is None:
        problem = platform_check.prepare()
        if problem:
            print(problem, file=sys.stderr)
            return 1
    # Before the window is built: a SIGTERM while it is (a slow start, a session logging out) still closes it
    # cleanly, once the event loop runs, with the settings saved.
    wake = catch_signals() if QApplication.instance() is None else None
    app = make_app(qt_args)

    # Start-up: app.capture.headless and `glimpse caption` import this module for its Qt set-up; the window's modules
    # (about 3 s to import: onnxruntime, llama.cpp, Qt Multimedia) load only when a window opens.
    from glimpse.app.settings import Settings  # noqa: PLC0415
    from glimpse.app.window import MainWindow  # noqa: PLC0415

    settings = Settings.at(args.settings) if args.settings else Settings.user()
    if args.model:
        settings.model = args.model
    if args.mode:
        settings.mode = args.mode
    window = MainWindow(settings)
    close_on_signals(window, wake)
    window.show()
    if args.open:
        window.sources.open_file(args.open)
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
