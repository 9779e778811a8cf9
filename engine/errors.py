"""One error family for Glimpse.

Every error carries a sentence saying what went wrong and, where there is one, what the user can do about it.
The CLI prints ``str(error)`` and never a traceback. Where the advice names command-line things (a ``--flag``, a
``glimpse`` command, "run the command again"), the error also carries ``gui_hint``, the same advice in the desktop
window's terms (the model manager, the Download button); the app shows ``message`` with ``gui_hint``.
"""

from __future__ import annotations


class GlimpseError(Exception):
    """Base class: ``message`` says what happened, ``hint`` what to do (at the command line or in Python), and
    ``gui_hint`` what to do in the window; it is ``hint`` unless that names command-line things."""

    def __init__(self, message: str, hint: str = "", *, gui_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.gui_hint = hint if gui_hint is None else gui_hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()

    @property
    def gui_text(self) -> str:
        """The sentence for the desktop window: the message and the window's own advice."""
        return f"{self.message} {self.gui_hint}".strip()


# Advice repeated by many model-folder errors: at the command line, and in the window.
REDO_MODEL = "Convert or download the model again."
REDO_MODEL_GUI = "Remove it in the model manager, then download or import it again."


class CheckpointError(GlimpseError):
    """The source folder is not a usable FastVLM checkpoint (wrong kind, missing or truncated files)."""


class ShapeMismatchError(CheckpointError):
    """A tensor has a shape other than the one the geometry demands."""

    def __init__(self, name: str, expected: tuple[int, ...], actual: tuple[int, ...]) -> None:
        super().__init__(
            f"Tensor '{name}' has shape {list(actual)}, but {list(expected)} was expected.",
            "The checkpoint does not match its config.json; download it again or check it is a FastVLM release.",
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class UnsupportedDtypeError(CheckpointError):
    """A tensor is stored in a dtype the converter cannot read."""


class ConversionError(GlimpseError):
    """Conversion failed for a reason other than the checkpoint itself."""


class OutputExistsError(GlimpseError):
    """The output folder already exists and --force was not given."""


class DiskFullError(GlimpseError):
    """Not enough free disk space, found before or during a write."""


class ModelFolderError(GlimpseError):
    """A converted model folder is missing, incomplete or corrupt."""


class ModelNotFoundError(GlimpseError):
    """No model of that name is installed or in the catalogue."""


class DownloadError(GlimpseError):
    """A download failed or delivered something other than what was expected."""


class OfflineError(DownloadError):
    """The network is unreachable (or offline mode is on) and there is no local copy."""


class LicenseNotAcceptedError(GlimpseError):
    """The model licence has not been accepted yet."""


class Cancelled(GlimpseError):
    """The user cancelled a long-running operation."""

    def __init__(self, what: str = "The operation") -> None:
        super().__init__(f"{what} was cancelled.")


class ImageError(GlimpseError):
    """An image cannot be read, or is too small or too large to use."""


class InputError(GlimpseError):
    """A request is invalid (empty question, size out of range...)."""


class InferenceError(GlimpseError):
    """llama.cpp refused or failed to evaluate the input."""


class ContextFullError(InferenceError):
    """The input does not fit in the rest of the context window."""


class FolderError(GlimpseError):
    """A folder Glimpse keeps things in cannot be used: a file, no permission, a read-only or full file system."""


class CaptureError(GlimpseError):
    """A camera, video file or the screen cannot be read."""
