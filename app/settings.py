"""The app's settings, kept in QSettings (an INI file, so a damaged one can be read, reported and repaired).

Every value is read through a converter; a value that does not convert (hand-edited, written by another version,
a damaged file) is dropped, the default is used, and a notice says so once, in the window. A file that is not an
INI file at all (cut off mid-line, garbage) is set aside as ``<name>.damaged`` first and the settings start afresh.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from PySide6.QtCore import QByteArray, QSettings

from glimpse.app.prompts import DEFAULT_LENGTH, DEFAULT_PRESETS, LENGTHS, Preset, presets_from_json, presets_to_json
from glimpse.engine import DEVICES, GlimpseError, check_folder, durable

T = TypeVar("T")

MODES = ("live", "ask")
MAX_INTERVAL_S = 60.0
MAX_DELAY_S = 30
MAX_FILE_BYTES = 4 << 20  # a settings file is a few KB; prompt presets are short texts


def _check_ini(data: bytes) -> bytes:
    """Raise ValueError unless ``data`` reads as an INI file QSettings wrote: UTF-8 text without NUL bytes whose
    lines are sections, ``key=value`` pairs (a value may go on after a trailing backslash), comments or blank.
    A file cut off mid-line or overwritten with other bytes fails; a value that is merely wrong is left to the
    per-setting checks."""
    text = data.decode("utf-8")
    if "\0" in text:
        raise ValueError("it holds NUL bytes")
    going_on = False
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        ok = going_on or not stripped or stripped[0] in ";#" or "=" in stripped or (
            stripped.startswith("[") and stripped.endswith("]"))
        if not ok:
            raise ValueError(f"line {number} is not a setting")
        going_on = stripped.endswith("\\")
    return data


def _to_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def _bounded(kind: Callable[[object], T], low: T, high: T) -> Callable[[object], T]:
    def convert(value: object) -> T:
        v = kind(value)
        if not low <= v <= high:  # type: ignore[operator]
            raise ValueError(f"{v} is outside {low}..{high}")
        return v

    return convert


def _image_size(value: object) -> int:
    size = int(str(value))
    if size != 0 and (size % 64 or not 256 <= size <= 2048):
        raise ValueError(f"unsupported image size {size}")
    return size


def _one_of(options: tuple[str, ...]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if str(value) not in options:
            raise ValueError(f"{value!r} is not one of {options}")
        return str(value)

    return convert


class Settings:
    """Typed access to the stored settings. ``notices`` lists what had to be reset, for the window to show."""

    def __init__(self, store: QSettings) -> None:
        self._s = store
        self.notices: list[str] = []
        self._kept: str | None = None
        # A half-written or garbage file is set aside as <name>.damaged (engine.durable.read_state_file) and the
        # settings start from their defaults; the window shows the notice once.
        path = Path(store.fileName())
        try:  # a settings folder that is a file, without permission, read-only or full: said, never a crash
            check_folder(path.parent, "settings folder", movable=False)
        except GlimpseError as e:
            self.notices.append(f"{e.gui_text} Settings changed now will not be kept.")
        read = durable.read_state_file(path, _check_ini, what="settings file", max_bytes=MAX_FILE_BYTES)
        if read.notice:
            self.notices.append(read.notice + " Your settings are back to their defaults.")
            store.clear()
        elif store.status() != QSettings.Status.NoError:
            aside: durable.StateRead[object] = durable.set_aside(path, "settings file", "Qt could not read it")
            self.notices.append(aside.notice + " Your settings are back to their defaults.")
            store.clear()

    @classmethod
    def user(cls) -> Settings:
        return cls(QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "Glimpse", "Glimpse"))

    @classmethod
    def at(cls, path: str | Path) -> Settings:
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    @property
    def file_name(self) -> str:
        return self._s.fileName()

    def _get(self, key: str, default: T, convert: Callable[[object], T], label: str) -> T:
        raw = self._s.value(key)
        if raw is None:
            return default
        try:
            return convert(raw)
        except (TypeError, ValueError):
            kept = self._keep_copy()
            self._s.remove(key)
            self.notices.append(f"The saved {label} setting was not valid; the default is used instead.{kept}")
            return default

    def _keep_copy(self) -> str:
        """Copy the settings file aside once, before anything in it is dropped (a hand-edited preset list is the
        user's work); a sentence naming the copy, the first time only."""
        if self._kept is not None:
            return ""
        self._kept = ""
        source = Path(self._s.fileName())
        if source.is_file():
            copy = source.with_name(f"{source.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
            try:
                shutil.copy2(source, copy)
            except OSError:
                return ""
            self._kept = str(copy)
            return f" The file as it was is kept in {copy}."
        return ""

    def _set(self, key: str, value: object) -> None:
        self._s.setValue(key, value)

    def sync(self) -> None:
        """Write the settings out. QSettings writes a temporary file, syncs it and renames it over (QSaveFile); the
        folder's entry for that rename is synced here, or a power cut could leave the old file or none."""
        self._s.sync()
        path = Path(self._s.fileName())
        if self._s.status() == QSettings.Status.NoError and path.is_file():
            with contextlib.suppress(OSError):
                durable.sync_file(path)
                durable.sync_dir(path.parent)

    # -- values ----------------------------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._get("model", "", str, "model")

    @model.setter
    def model(self, name: str) -> None:
        self._set("model", name)

    @property
    def image_size(self) -> int:
        """0 means automatic: 512 for live captions (speed), the model's own size for questions (detail)."""
        return self._get("image_size", 0, _image_size, "image size")

    @image_size.setter
    def image_size(self, size: int) -> None:
        self._set("image_size", _image_size(size))

    @property
    def tiles(self) -> bool:
        """Questions read the picture at the model's own size plus a 2x2 grid of tiles (small text in big
        screenshots); live captions are unaffected."""
        return self._get("tiles", False, _to_bool, "tiles")

    @tiles.setter
    def tiles(self, on: bool) -> None:
        self._set("tiles", bool(on))

    @property
    def threads(self) -> int:
        """0 means the engine's default (the physical core count)."""
        return self._get("threads", 0, _bounded(lambda v: int(str(v)), 0, 256), "thread count")

    @threads.setter
    def threads(self, n: int) -> None:
        self._set("threads", int(n))

    @property
    def device(self) -> str:
        """Where the model runs: "auto" (a GPU where its check passed, else the CPU), "cpu" or "gpu" (required for
        the language model; the vision encoder uses one where its check passed)."""
        return self._get("device", "auto", _one_of(DEVICES), "device")

    @device.setter
    def device(self, device: str) -> None:
        self._set("device", _one_of(DEVICES)(device))

    @property
    def camera(self) -> str:
        """The chosen camera's device id (as QtMultimedia reports it)."""
        return self._get("camera", "", str, "camera")

    @camera.setter
    def camera(self, device_id: str) -> None:
        self._set("camera", device_id)

    @property
    def interval(self) -> float:
        """Seconds between live captions; 0 is back to back."""
        return self._get("interval", 1.0, _bounded(lambda v: float(str(v)), 0.0, MAX_INTERVAL_S), "caption interval")

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._set("interval", float(seconds))

    @property
    def screenshot_delay(self) -> int:
        return self._get("screenshot_delay", 0, _bounded(lambda v: int(str(v)), 0, MAX_DELAY_S), "screenshot delay")

    @screenshot_delay.setter
    def screenshot_delay(self, seconds: int) -> None:
        self._set("screenshot_delay", int(seconds))

    @property
    def presets(self) -> list[Preset]:
        return self._get("presets", list(DEFAULT_PRESETS), lambda v: presets_from_json(str(v)), "prompt presets")

    @presets.setter
    def presets(self, presets: list[Preset]) -> None:
        self._set("presets", presets_to_json(presets))

    @property
    def preset(self) -> str:
        """The name of the chosen preset."""
        return self._get("preset", DEFAULT_PRESETS[0].name, str, "preset")

    @preset.setter
    def preset(self, name: str) -> None:
        self._set("preset", name)

    @property
    def length(self) -> str:
        return self._get("length", DEFAULT_LENGTH, _one_of(tuple(h.key for h in LENGTHS)), "length hint")

    @length.setter
    def length(self, key: str) -> None:
        self._set("length", key)

    @property
    def mode(self) -> str:
        return self._get("mode", "live", _one_of(MODES), "mode")

    @mode.setter
    def mode(self, mode: str) -> None:
        self._set("mode", _one_of(MODES)(mode))

    @property
    def read_aloud(self) -> bool:
        return self._get("read_aloud", False, _to_bool, "read-aloud setting")

    @read_aloud.setter
    def read_aloud(self, on: bool) -> None:
        self._set("read_aloud", bool(on))

    @property
    def geometry(self) -> QByteArray:
        return self._get("window/geometry", QByteArray(), lambda v: QByteArray(v) if isinstance(v, QByteArray)
                         else _reject(v), "window position")

    @geometry.setter
    def geometry(self, data: QByteArray) -> None:
        self._set("window/geometry", data)

    @property
    def splitter(self) -> QByteArray:
        return self._get("window/splitter", QByteArray(), lambda v: QByteArray(v) if isinstance(v, QByteArray)
                         else _reject(v), "window layout")

    @splitter.setter
    def splitter(self, data: QByteArray) -> None:
        self._set("window/splitter", data)


def _reject(value: object) -> QByteArray:
    raise ValueError(f"not binary data: {value!r}")
