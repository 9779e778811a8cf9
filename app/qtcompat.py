"""Work around a reference-count bug in ``SignalInstance.emit`` of PySide6 6.12.

There, ``emit`` returns ``True`` without taking a reference to it. Every emit whose result Python drops takes one
reference away from ``True``; on Python 3.10/3.11, where ``True`` is an ordinary object, a few thousand emits (one
streamed answer's worth) free it and the interpreter aborts with "bool_dealloc: deallocating True or False". From
Python 3.12 on, ``True`` is immortal and the bug is harmless. Whether the bug is present is measured once, here, so
a fixed PySide6 needs no code change; all of the app's emits go through :func:`emit`.

Affected releases: ``engine.internals.EMIT_REFCOUNT_BUG`` (measured on 6.12.0; tests/app/test_qtcompat.py shows the
bug on the installed release and fails when the range is wrong). Upstream: PySide6's ``SignalInstance.emit`` in
https://code.qt.io/cgit/pyside/pyside-setup.git (sources/pyside6/libpyside); reports go to
https://bugreports.qt.io/projects/PYSIDE.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from PySide6.QtCore import QObject, Signal

_PROBES = 64


class _Probe(QObject):
    ping = Signal()


def _emit_drops_a_reference() -> bool:
    if sys.version_info >= (3, 12):  # immortal bools: nothing to repair
        return False
    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(_PROBES):
        probe.ping.emit()
    # Other threads may move True's count a little meanwhile; the bug moves it by one per emit.
    lost = before - sys.getrefcount(True)
    if lost > _PROBES // 2:
        for _ in range(lost):  # give back what the probe itself took
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
        return True
    return False


EMIT_DROPS_REFERENCE = _emit_drops_a_reference()


def emit(signal: Any, *args: Any) -> None:
    """``signal.emit(*args)``, safe on PySide6 builds whose emit loses a reference to its result."""
    result = signal.emit(*args)
    if EMIT_DROPS_REFERENCE:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(result))
