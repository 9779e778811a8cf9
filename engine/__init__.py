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

__version__ = "0.1.0"

__all__ = ["Answer", "Conversation", "GlimpseError", "ImageRows", "Model", "Timings", "load_model"]

if TYPE_CHECKING:
    from engine.conversation import Conversation
    from engine.errors import GlimpseError
    from engine.model import Answer, ImageRows, Model, Timings, load_model


def __getattr__(name: str) -> Any:
    # Lazy, so `import engine` (and the CLI's start-up) does not load onnxruntime and llama.cpp.
    if name == "Conversation":
        from engine.conversation import Conversation

        return Conversation
    if name == "GlimpseError":
        from engine.errors import GlimpseError

        return GlimpseError
    if name in ("Answer", "ImageRows", "Model", "Timings", "load_model"):
        from engine import model

        return getattr(model, name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
