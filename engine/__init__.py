"""Glimpse engine: FastVLM conversion, model management and inference, with no Qt.

The engine's public API is ``__all__``: the names the app (and any other program) may use, all importable from
here. Anything else is the engine's own business and may change; ``tests/engine/test_layers.py`` fails when the app
imports an engine module directly. ::

    from glimpse.engine import load_model
    with load_model("fastvlm-0.5b") as model:          # or a model folder
        answer = model.ask("photo.jpg", "What is this?")
        chat = model.conversation("screen.png")          # follow-ups reuse the cached image
        for piece in chat.stream("What does the error say?"):
            ...                                          # str pieces, then the final Answer

Each name is imported from its module on first use: every ``import glimpse.engine.<module>`` runs this file first,
and the runtime alone loads onnxruntime and llama.cpp, which the CLI's start-up, the converter and the model manager
never need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from glimpse.engine.version import __version__

# name -> (module, attribute in it; None for the module itself). The same imports, for type checkers and
# PyInstaller's analysis, are under TYPE_CHECKING below (a test keeps the two equal).
_PUBLIC: dict[str, tuple[str, str | None]] = {
    # the base
    "Cancelled": ("glimpse.engine.errors", "Cancelled"),
    "CaptureError": ("glimpse.engine.errors", "CaptureError"),
    "GlimpseError": ("glimpse.engine.errors", "GlimpseError"),
    "Progress": ("glimpse.engine.progress", "Progress"),
    "ProgressFn": ("glimpse.engine.progress", "ProgressFn"),
    "assets_root": ("glimpse.engine.folders", "assets_root"),
    "check_folder": ("glimpse.engine.folders", "check_folder"),
    "default_threads": ("glimpse.engine.system", "default_threads"),
    "durable": ("glimpse.engine.durable", None),
    "user_folder": ("glimpse.engine.folders", "user_folder"),
    # models: the catalogue, downloads, installed models
    "CatalogEntry": ("glimpse.engine.models.catalog", "CatalogEntry"),
    "DownloadOptions": ("glimpse.engine.models.download", "DownloadOptions"),
    "Store": ("glimpse.engine.models.store", "Store"),
    "catalog": ("glimpse.engine.models.catalog", None),
    "fetch_license": ("glimpse.engine.models.download", "fetch_license"),
    "human_bytes": ("glimpse.engine.models.leftovers", "human_bytes"),
    "is_offline": ("glimpse.engine.models.download", "is_offline"),
    # runtime: a model answering, live captions
    "Answer": ("glimpse.engine.runtime.types", "Answer"),
    "Caption": ("glimpse.engine.runtime.caption", "Caption"),
    "CaptureBackend": ("glimpse.engine.runtime.caption", "CaptureBackend"),
    "Conversation": ("glimpse.engine.runtime.conversation", "Conversation"),
    "DEVICES": ("glimpse.engine.runtime.gpu_backends", "DEVICES"),
    "Frame": ("glimpse.engine.runtime.caption", "Frame"),
    "FrameSource": ("glimpse.engine.runtime.caption", "FrameSource"),
    "ImageRows": ("glimpse.engine.runtime.types", "ImageRows"),
    "LatestFrame": ("glimpse.engine.runtime.caption", "LatestFrame"),
    "Model": ("glimpse.engine.runtime.model", "Model"),
    "SlotSource": ("glimpse.engine.runtime.caption", "SlotSource"),
    "Timings": ("glimpse.engine.runtime.types", "Timings"),
    "caption_stream": ("glimpse.engine.runtime.caption", "caption_stream"),
    "load_image": ("glimpse.engine.runtime.preprocess", "load_image"),
    "load_model": ("glimpse.engine.runtime.model", "load_model"),
    "use_capture_backend": ("glimpse.engine.runtime.caption", "use_capture_backend"),
    # runner: the model in a process of its own
    "Restart": ("glimpse.engine.runtime.types", "Restart"),
    "RunnerConversation": ("glimpse.engine.runner.client", "RunnerConversation"),
    "RunnerError": ("glimpse.engine.runner.client", "RunnerError"),
    "RunnerModel": ("glimpse.engine.runner.client", "RunnerModel"),
    # convert: getting models into the store
    "import_model": ("glimpse.engine.convert.install", "import_model"),
    "pull_model": ("glimpse.engine.convert.install", "pull_model"),
    # cli: the command line, and the engine half of `glimpse self-test`
    "SelfTestReport": ("glimpse.engine.cli.selftest", "SelfTestReport"),
    "cli_main": ("glimpse.engine.cli", "main"),
    "run_engine_selftest": ("glimpse.engine.cli.selftest", "run_engine_selftest"),
}

# Written out for type checkers; the same names as _PUBLIC (tests/engine/test_api.py).
__all__ = [
    "DEVICES",
    "Answer",
    "Cancelled",
    "Caption",
    "CaptureBackend",
    "CaptureError",
    "CatalogEntry",
    "Conversation",
    "DownloadOptions",
    "Frame",
    "FrameSource",
    "GlimpseError",
    "ImageRows",
    "LatestFrame",
    "Model",
    "Progress",
    "ProgressFn",
    "Restart",
    "RunnerConversation",
    "RunnerError",
    "RunnerModel",
    "SelfTestReport",
    "SlotSource",
    "Store",
    "Timings",
    "__version__",
    "assets_root",
    "caption_stream",
    "catalog",
    "check_folder",
    "cli_main",
    "default_threads",
    "durable",
    "fetch_license",
    "human_bytes",
    "import_model",
    "is_offline",
    "load_image",
    "load_model",
    "pull_model",
    "run_engine_selftest",
    "use_capture_backend",
    "user_folder",
]

if TYPE_CHECKING:
    from glimpse.engine import durable
    from glimpse.engine.cli import main as cli_main
    from glimpse.engine.cli.selftest import SelfTestReport, run_engine_selftest
    from glimpse.engine.convert.install import import_model, pull_model
    from glimpse.engine.errors import Cancelled, CaptureError, GlimpseError
    from glimpse.engine.folders import assets_root, check_folder, user_folder
    from glimpse.engine.models import catalog
    from glimpse.engine.models.catalog import CatalogEntry
    from glimpse.engine.models.download import DownloadOptions, fetch_license, is_offline
    from glimpse.engine.models.leftovers import human_bytes
    from glimpse.engine.models.store import Store
    from glimpse.engine.progress import Progress, ProgressFn
    from glimpse.engine.runner.client import RunnerConversation, RunnerError, RunnerModel
    from glimpse.engine.runtime.caption import (
        Caption,
        CaptureBackend,
        Frame,
        FrameSource,
        LatestFrame,
        SlotSource,
        caption_stream,
        use_capture_backend,
    )
    from glimpse.engine.runtime.conversation import Conversation
    from glimpse.engine.runtime.gpu_backends import DEVICES
    from glimpse.engine.runtime.model import Model, load_model
    from glimpse.engine.runtime.preprocess import load_image
    from glimpse.engine.runtime.types import Answer, ImageRows, Restart, Timings
    from glimpse.engine.system import default_threads


def __getattr__(name: str) -> Any:
    where = _PUBLIC.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(where[0])
    return module if where[1] is None else getattr(module, where[1])


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
