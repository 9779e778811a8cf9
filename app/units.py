"""Human-readable sizes, speeds, durations and progress lines for the model manager."""

from __future__ import annotations

from glimpse.engine import Progress, human_bytes


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"


def progress_line(p: Progress) -> str:
    """"downloading: 120.00 MB of 1.53 GB · 12.30 MB/s · about 1 min 54 s left" (bytes), or "vision: 12 of 40"."""
    if p.unit == "B":
        parts = [f"{human_bytes(p.done)} of {human_bytes(p.total)}" if p.total else human_bytes(p.done)]
        if p.note:  # waiting: a stall is said as one, with no speed or time left
            parts.append(p.note)
        elif p.rate > 0:
            parts.append(f"{human_bytes(p.rate)}/s")
            if p.total > p.done:
                parts.append(f"about {duration((p.total - p.done) / p.rate)} left")
        return f"{p.stage}: " + " · ".join(parts)
    if p.total:
        return f"{p.stage}: {p.done} of {p.total}"
    return f"{p.stage}…"
