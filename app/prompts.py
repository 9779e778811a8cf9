"""Prompt presets and length hints: what the user asks when they do not type a question.

A preset is a name and a prompt. The length hint is separate (as in Apple's FastVLM app), so every preset can be
short or detailed; it adds a sentence to the prompt and sets how many tokens the answer may use. Live captions
ignore it: they always use the engine's brief-answer suffix (``engine.runtime.caption.caption_prompt``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    prompt: str


DEFAULT_PRESETS: tuple[Preset, ...] = (
    Preset("Describe the scene", "Describe what you see in this image."),
    Preset("Read the text", "Read all the text in this image, exactly as written, in reading order."),
    Preset("Explain this screen or error",
           "This is a screenshot. Explain what is on the screen; if it shows an error, say what it means and how "
           "to fix it."),
    Preset("Summarise a chart", "Summarise this chart: what it measures, the main trend and any notable values."),
    Preset("Describe a facial expression", "Describe the facial expression of the person in this image and the "
                                           "emotion it suggests."),
)


@dataclass(frozen=True)
class LengthHint:
    key: str
    label: str
    sentence: str  # appended to the prompt; empty for no hint
    max_tokens: int


LENGTHS: tuple[LengthHint, ...] = (
    LengthHint("short", "Short (about 15 words)", "Answer in about 15 words.", 64),
    LengthHint("medium", "Medium (about 50 words)", "Answer in about 50 words.", 160),
    LengthHint("detailed", "Detailed", "Answer in detail.", 512),
    LengthHint("none", "No length hint", "", 256),
)
DEFAULT_LENGTH = "medium"


def length_hint(key: str) -> LengthHint:
    return next((h for h in LENGTHS if h.key == key), next(h for h in LENGTHS if h.key == DEFAULT_LENGTH))


def compose(question: str, length: str) -> tuple[str, int]:
    """The text sent to the model and its token budget."""
    hint = length_hint(length)
    text = question.strip()
    return (f"{text} {hint.sentence}" if hint.sentence else text), hint.max_tokens


def presets_to_json(presets: list[Preset] | tuple[Preset, ...]) -> str:
    return json.dumps([asdict(p) for p in presets], ensure_ascii=False)


def presets_from_json(text: str) -> list[Preset]:
    """Parse stored presets; ValueError when the text is not a list of {name, prompt} with non-empty strings."""
    data = json.loads(text)
    if not isinstance(data, list) or not data:
        raise ValueError("presets must be a non-empty list")
    out = []
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("each preset must be an object")
        name, prompt = item.get("name"), item.get("prompt")
        if not (isinstance(name, str) and isinstance(prompt, str) and name.strip() and prompt.strip()):
            raise ValueError("each preset needs a name and a prompt")
        out.append(Preset(name.strip(), prompt.strip()))
    return out
