"""Print README.md's install-and-test command with its virtual environment moved to another folder.

    python3 .ci/readme_test_command.py [--readme README.md] [--venv build/ci/venv]

.ci/run runs what this prints, so CI runs exactly the command a developer copies from the README, only in its own
folder instead of the developer's `.venv`: the two cannot drift apart. The command is the one line in a fenced code
block that creates a venv (`python3 -m venv FOLDER`) and runs pytest; every use of FOLDER in it is replaced.
Exits 1 with one sentence on stderr when the README has no such line, or more than one.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
VENV = re.compile(r"^python3? -m venv (\S+) ")


def install_and_test_lines(readme: str) -> list[str]:
    """The lines in fenced code blocks that create a venv and run pytest."""
    found: list[str] = []
    fenced = False
    for line in readme.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced and VENV.match(line.strip()) and " -m pytest" in line:
            found.append(line.strip())
    return found


def moved(command: str, venv: str) -> str:
    """``command`` with its venv folder (the word after ``-m venv``) replaced by ``venv`` wherever it is used."""
    match = VENV.match(command)
    assert match is not None
    folder = match.group(1)
    # The folder as a whole word: alone, or followed by a path ("FOLDER/bin/pip"); never inside another word.
    word = re.compile(rf"(?<![\w./-]){re.escape(folder)}(?=/|\s|$)")
    return word.sub(lambda _m: shlex.quote(venv), command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    parser.add_argument("--venv", default="build/ci/venv")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"readme_test_command: cannot read {args.readme}: {exc.strerror}.", file=sys.stderr)
        return 1
    commands = install_and_test_lines(text)
    if len(commands) != 1:
        what = "no" if not commands else f"{len(commands)} lines with a"
        print(f"readme_test_command: {args.readme} has {what} command in a code block that creates a venv "
              "(`python3 -m venv FOLDER ...`) and runs `-m pytest`; CI runs exactly one such command.",
              file=sys.stderr)
        return 1
    print(moved(commands[0], args.venv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
