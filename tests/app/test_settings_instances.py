"""Two Glimpse processes share one settings file: each keeps what the other wrote, nothing is corrupted, and a
value that has to be dropped is first copied aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from glimpse.app.prompts import Preset
from glimpse.app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

_WRITER = """
import sys
from glimpse.app.settings import Settings

path, role, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    s = Settings.at(path)  # as a window does: read, change one thing, write
    if role == "a":
        s.interval = round(0.5 + i / 100, 2)
    else:
        s.threads = 1 + i % 8
        s.mode = "ask" if i % 2 else "live"
    s.sync()
print("done", flush=True)
"""


def test_two_instances_writing_at_once_keep_each_others_settings(tmp_path: Path) -> None:
    path = tmp_path / "glimpse.ini"
    first = Settings.at(path)
    mine = Preset("Count the birds", "How many birds are there?")
    first.presets = [*first.presets, mine]
    first.sync()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rounds = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), role, str(rounds)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for role in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "done", err

    after = Settings.at(path)
    assert after.notices == []
    assert after.interval == round(0.5 + (rounds - 1) / 100, 2)  # A's last write
    assert after.threads == 1 + (rounds - 1) % 8 and after.mode == "ask"  # B's last writes
    assert mine in after.presets  # written before either started, touched by neither
    assert not list(tmp_path.glob("*.bak")) and not list(tmp_path.glob("*.lock"))


def test_a_dropped_value_is_copied_aside_first(tmp_path: Path) -> None:
    path = tmp_path / "glimpse.ini"
    original = "[General]\ninterval=soon\nmode=sideways\nthreads=2\n"
    path.write_text(original, encoding="utf-8")
    settings = Settings.at(path)
    assert settings.interval == 1.0 and settings.mode == "live" and settings.threads == 2
    copies = list(tmp_path.glob("glimpse.ini.*.bak"))
    assert len(copies) == 1 and copies[0].read_text(encoding="utf-8") == original
    assert str(copies[0]) in settings.notices[0]
    assert len(settings.notices) == 2 and str(copies[0]) not in settings.notices[1]  # named once
