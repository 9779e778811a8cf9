"""A terminal progress bar for ``ProgressFn`` reports: one tqdm bar per stage, on stderr."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from glimpse.engine.progress import Progress


class ProgressBar:
    """Callable ``ProgressFn`` that draws a bar per stage; bytes get sizes, speed and time left."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr is not None
        self._bar: Any = None
        self._stage = ""

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        if p.stage != self._stage or self._bar is None:
            self.close()
            self._stage = p.stage
            byte_unit = p.unit == "B"
            self._bar = tqdm(total=p.total or None, desc=p.stage, unit=p.unit, unit_scale=byte_unit,
                             unit_divisor=1024 if byte_unit else 1000, file=sys.stderr, leave=True,
                             dynamic_ncols=True)
        bar = self._bar
        if p.total and bar.total != p.total:
            bar.total = p.total
        if p.note != (getattr(bar, "postfix", None) or ""):
            bar.set_postfix_str(p.note, refresh=False)  # a stall shows as one, not as a bar that stopped
        bar.update(p.done - bar.n)
        if p.note:
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
