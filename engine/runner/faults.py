"""Faults the runner can be told to commit, so that every way it can fail is tested for real.

``GLIMPSE_FAULT_RUNNER`` holds comma-separated ``KIND@PHASE`` entries, each optionally ``#N`` to fire only in the
runner's N-th start (1 is the first; a restarted runner is the 2nd):

- KIND: ``segv`` (killed by SIGSEGV), ``ill`` (SIGILL), ``abort`` (SIGABRT), ``hang`` (stops answering, forever);
- PHASE: ``load`` (while loading the model), ``prefill`` (after the question arrives, before the first token),
  ``answer`` (after the first piece of the answer was sent).

``segv@answer#1`` crashes the first runner mid-answer and lets the restarted one answer; ``segv@prefill`` crashes
every runner, so the second failure is what is tested. Unknown entries are ignored with a log line: a typo must not
turn into a different fault.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

ENV = "GLIMPSE_FAULT_RUNNER"
KINDS = {"segv": signal.SIGSEGV, "ill": signal.SIGILL, "abort": signal.SIGABRT, "hang": None}
PHASES = ("load", "prefill", "answer")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    kind: str
    phase: str
    start: int | None  # fire only in this start of the runner (None: in every one)


def parse(text: str) -> list[Fault]:
    faults = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        spec, _, start = entry.partition("#")
        kind, _, phase = spec.partition("@")
        if kind not in KINDS or phase not in PHASES or (start and not start.isdigit()):
            log.warning("%s: %r is not KIND@PHASE[#N]; ignored", ENV, entry)
            continue
        faults.append(Fault(kind, phase, int(start) if start else None))
    return faults


def commit(phase: str, start: int) -> None:
    """Commit the fault configured for ``phase`` in this runner (the ``start``-th), if any."""
    for fault in parse(os.environ.get(ENV, "")):
        if fault.phase != phase or fault.start not in (None, start):
            continue
        log.warning("committing the injected fault %s@%s", fault.kind, phase)
        sig = KINDS[fault.kind]
        if sig is None:
            while True:  # a hung kernel: no progress, no exit; only the parent's deadline ends it
                time.sleep(3600)
        signal.signal(sig, signal.SIG_DFL)  # faulthandler, where enabled, would only print first
        signal.raise_signal(sig)
