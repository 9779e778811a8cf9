"""mypy on the code as it is installed: ``glimpse.engine`` (strict) and ``glimpse.app``.

The repository's folders are engine/, app/ and assets/; installed, they are glimpse.engine, glimpse.app and
glimpse.assets (pyproject.toml's package-dir). mypy cannot see setuptools' editable finder, and with no glimpse/
folder it would take every ``from glimpse.engine...`` import for a missing module (Any, under
ignore_missing_imports) and check nothing across modules. So this makes a link tree, build/typecheck/glimpse/ with
links to the three folders, and pyproject.toml's mypy configuration reads the packages from there (mypy_path,
packages). The links point at the folders, so a new module needs nothing here.

    python tools/typecheck.py [MYPY ARGS...]     # tools/check, pre-commit and CI run it with no arguments
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck" / "glimpse"
PACKAGES = ("engine", "app", "assets")


def link_tree() -> Path:
    """build/typecheck/glimpse/{engine,app,assets} -> the repository's folders (relative links); idempotent."""
    TREE.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = TREE / name
        target = Path(os.path.relpath(ROOT / name, TREE))
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise SystemExit(f"typecheck: {link} is a folder, not a link; remove build/typecheck and run again.")
        link.symlink_to(target, target_is_directory=True)
    return TREE.parent


def main(argv: list[str]) -> int:
    link_tree()
    return subprocess.run([sys.executable, "-m", "mypy", *argv], cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
