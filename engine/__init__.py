"""Glimpse engine: FastVLM conversion, model management and inference, with no Qt.

The public API::

    from engine import load_model
    with load_model("fastvlm-0.5b") as model:          # or a model folder
        answer = model.ask("photo.jpg", "What is this?")
        chat = model.conversation("screen.png")          # follow-ups reuse the cached image
        for piece in chat.stream("What does the error say?"):
            ...                                          # str pieces, then the final Answer
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Answer", "Conversation", "GlimpseError", "ImageRows", "Model", "Timings", "load_model"]

from engine.errors import GlimpseError
from engine.version import __version__ as __version__

if TYPE_CHECKING:
    from engine.runtime.conversation import Conversation
    from engine.runtime.model import Answer, ImageRows, Model, Timings, load_model


def __getattr__(name: str) -> Any:
    # Lazy, because every `import engine.<module>` runs this file first: the runtime loads onnxruntime and llama.cpp
    # (IMPORT_COST), which the CLI's start-up, the converter and the model manager never need.
    if name == "Conversation":
        from engine.runtime.conversation import Conversation  # noqa: PLC0415

        return Conversation
    if name in ("Answer", "ImageRows", "Model", "Timings", "load_model"):
        from engine.runtime import model  # noqa: PLC0415

        return getattr(model, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
