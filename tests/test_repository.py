"""The repository's promises to its readers: the README, CI and the package list agree, and the docs and code
describe the present (history lives in CHANGELOG.md and git, not in tracker numbers a reader cannot follow)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGES = REPO / "packaging" / "system-packages.txt"
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="the CI scripts are bash")


def system_packages(*sections: str) -> list[str]:
    """packaging/system-packages.txt's packages in ``sections``, read independently of .ci/system-packages."""
    found: list[str] = []
    section = None
    for raw in PACKAGES.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and section in sections:
            found.append(line.split()[0])
    return found


def test_the_package_list_has_its_sections() -> None:
    for section in ("app", "build", "ci"):
        assert system_packages(section), f"[{section}] is empty or missing"
    # What a fresh Debian machine lacked, the window's X libraries among them.
    assert {"libxcb-icccm4", "libxcb-keysyms1", "libxcb-cursor0", "libpulse0"} <= set(system_packages("app"))


def test_the_readme_installs_exactly_the_package_list() -> None:
    """The Quick start's one apt command names the packages the app and its build need, no more, no fewer."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]  # later sections add optional drivers
    commands = re.findall(r"sudo apt install ([^`\n]+)", quick_start)
    assert len(commands) == 1, f"README.md's Quick start should have one `sudo apt install`, not {len(commands)}"
    named = commands[0].split()
    assert len(named) == len(set(named))
    assert set(named) == set(system_packages("app", "build"))


@needs_bash
def test_the_ci_script_reads_the_same_list() -> None:
    listed = subprocess.run(["bash", ".ci/system-packages", "list", "app", "build", "ci"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == system_packages("app", "build", "ci")
    unknown = subprocess.run(["bash", ".ci/system-packages", "missing", "nonsense"], cwd=REPO, capture_output=True,
                             text=True, check=False)
    assert unknown.returncode == 1 and "no section [nonsense]" in unknown.stderr


STUB_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f FORMAT PACKAGE: installed when the package is a line of $STUB_STATE
grep -qx "$4" "$STUB_STATE" && echo "install ok installed" && exit 0
exit 1
"""
STUB_APT_GET = """#!/bin/sh
echo "$*" >>"$STUB_LOG"
case $1 in
    update) touch "$STUB_STATE.updated"; exit 0 ;;
esac
[ "$STUB_FAIL" = always ] && exit 100
[ "$STUB_FAIL" = until-update ] && [ ! -e "$STUB_STATE.updated" ] && exit 100
for word in "$@"; do case $word in -*|install) ;; *) echo "$word" >>"$STUB_STATE" ;; esac; done
"""


@pytest.fixture
def fake_apt(tmp_path: Path) -> dict[str, str]:
    """apt-get, dpkg-query and sudo stand-ins on PATH: .ci/system-packages runs against them, never the real ones."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("dpkg-query", STUB_DPKG_QUERY), ("apt-get", STUB_APT_GET), ("sudo", '#!/bin/sh\nexec "$@"\n')]:
        (bin_dir / name).write_text(body, encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").write_text("", encoding="utf-8")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_STATE": str(tmp_path / "state"),
            "STUB_LOG": str(tmp_path / "log"), "STUB_FAIL": ""}


def _install(env: dict[str, str], *sections: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", ".ci/system-packages", "install", *sections], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)


@needs_bash
def test_ci_installs_what_is_missing_and_updates_only_when_it_must(fake_apt: dict[str, str]) -> None:
    state, log = Path(fake_apt["STUB_STATE"]), Path(fake_apt["STUB_LOG"])
    state.write_text("\n".join(system_packages("app")[1:]) + "\n", encoding="utf-8")
    fake_apt["STUB_FAIL"] = "until-update"  # a fresh machine's stale package lists
    result = _install(fake_apt, "app", "build")
    assert result.returncode == 0, result.stderr
    missing = [system_packages("app")[0], *system_packages("build")]
    calls = log.read_text(encoding="utf-8").splitlines()
    assert [c.split()[0] for c in calls] == ["install", "update", "install"]
    assert calls[0].split()[-len(missing):] == missing  # only what was missing
    assert set(system_packages("app", "build")) <= set(state.read_text(encoding="utf-8").split())
    log.unlink()
    assert _install(fake_apt, "app", "build").returncode == 0 and not log.exists()  # nothing missing: no apt-get


@needs_bash
def test_ci_says_what_apt_could_not_install(fake_apt: dict[str, str]) -> None:
    fake_apt["STUB_FAIL"] = "always"
    result = _install(fake_apt, "build")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"apt-get could not install {' '.join(system_packages('build'))}.")


def _readme_test_command(readme: Path, venv: str = "build/ci/venv") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, ".ci/readme_test_command.py", "--readme", str(readme), "--venv", venv],
                          cwd=REPO, capture_output=True, text=True, check=False)


def test_ci_runs_the_readme_test_command_in_its_own_folder() -> None:
    result = _readme_test_command(REPO / "README.md")
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip()
    assert command.startswith("python3 -m venv build/ci/venv && ") and ".venv" not in command
    assert command.endswith("build/ci/venv/bin/python -m pytest")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert ".ci/readme_test_command.py" in ci


def test_the_venv_is_replaced_as_a_word(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("```sh\npython3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
                      ".venv/bin/python -m pytest tests/.venvish\n```\n", encoding="utf-8")
    result = _readme_test_command(readme, "a b/venv")
    assert result.stdout.strip() == ("python3 -m venv 'a b/venv' && 'a b/venv'/bin/pip install -e '.[test]' && "
                                     "'a b/venv'/bin/python -m pytest tests/.venvish")


@pytest.mark.parametrize("text", [
    "# Glimpse\n\n```sh\npython3 -m venv .venv && .venv/bin/pip install -e .\n```\n",  # installs, tests nothing
    "python3 -m venv .venv && .venv/bin/python -m pytest\n",  # not in a code block
    "```sh\npython3 -m venv a && a/bin/python -m pytest\npython3 -m venv b && b/bin/python -m pytest\n```\n",
])
def test_ci_refuses_a_readme_without_one_test_command(tmp_path: Path, text: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text, encoding="utf-8")
    result = _readme_test_command(readme)
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "runs `-m pytest`" in result.stderr


# -- history stays out of the docs and the code -------------------------------------------------------------------

# The word issue or session followed by a number (a space, hyphen or '#' between): meaningless without the tracker.
HISTORY = re.compile(r"\b(?:issue|session)s?[ -]#?\d", re.IGNORECASE)
SCANNED = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md", "pyproject.toml", ".pre-commit-config.yaml", "docs",
           "engine", "app", "tools", "packaging", ".ci", "tests"]
SKIPPED_DIRS = {"__pycache__", "fixtures", "screenshots"}


def history_citations(text: str) -> list[str]:
    return [m.group(0) for m in HISTORY.finditer(text)]


def _text_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*"))
                      if p.is_file() and not SKIPPED_DIRS & set(p.relative_to(REPO).parts)]
    return files


def test_the_history_check_finds_citations() -> None:
    cited = "measured in " + "session" + " 4, within " + "issue" + " 11's 120 s; see " + "Issue" + "-14"
    assert [hit.split()[0].split("-")[0].lower() for hit in history_citations(cited)] == ["session", "issue", "issue"]
    assert history_citations("an onnxruntime session, 4 issues, the camera #7") == []


def test_no_issue_or_session_numbers_in_docs_or_code() -> None:
    found = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, fixtures' arrays
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(REPO)}:{number}: {hit}" for hit in history_citations(line)]
    assert not found, "describe the present state (history goes to CHANGELOG.md):\n" + "\n".join(found)


# -- one name in site-packages: the folders engine/, app/, assets/ are imported as glimpse.engine, glimpse.app... ----

# The examples below are the bare forms on purpose: namespace-rewrite: skip-file
FOLDERS = ("engine", "app", "assets")  # pyproject.toml's package-dir maps glimpse.<folder> to each
IMPORTING = ["engine", "app", "assets", "tests", "tools", "packaging"]


def bare_imports(source: str, where: str) -> list[str]:
    """Imports of ``engine``, ``app`` or ``assets`` by the folder's name instead of ``glimpse.<folder>``: import
    statements anywhere (functions, ``if TYPE_CHECKING:``) and ``importlib.import_module``/``__import__`` of a
    constant. In a checkout they would load a second copy of a module, beside the installed name's."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                    or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            names = [node.args[0].value]
        found += [f"{where}:{node.lineno}: {name}" for name in names if name.split(".")[0] in FOLDERS]
    return found


def _python_sources() -> list[Path]:
    files: list[Path] = []
    for name in IMPORTING:
        files += [p for p in sorted((REPO / name).rglob("*")) if p.suffix in (".py", ".spec") and p.is_file()
                  and not SKIPPED_DIRS & set(p.relative_to(REPO).parts)]
    return files


def test_the_bare_import_check_finds_each_form() -> None:
    source = ("import sys, engine\nimport app.window as w\nfrom assets import x\nfrom . import sibling\n"
              "from glimpse.engine import load_model\nfrom glimpse import app\nimport tools.bench_llama\n\n"
              "def late():\n    from engine.cli import main\n    importlib.import_module('engine.runner.server')\n"
              "    return __import__('app'), importlib.import_module('glimpse.app.main')\n")
    assert bare_imports(source, "x.py") == ["x.py:1: engine", "x.py:2: app.window", "x.py:3: assets",
                                            "x.py:10: engine.cli", "x.py:11: engine.runner.server", "x.py:12: app"]


def test_no_source_imports_the_folders_by_their_bare_names() -> None:
    files = _python_sources()
    assert REPO / "engine" / "cli" / "__init__.py" in files and REPO / "packaging" / "glimpse.spec" in files
    found = [hit for path in files for hit in bare_imports(path.read_text(encoding="utf-8"),
                                                           str(path.relative_to(REPO)))]
    assert not found, ("import these as glimpse.engine, glimpse.app, glimpse.assets "
                       "(python tools/namespace_rewrite.py rewrites them):\n" + "\n".join(found))


def test_the_wheel_lists_every_package_folder() -> None:
    """pyproject.toml lists the packages (find cannot add the glimpse. prefix): each folder with an __init__.py."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert setuptools["package-dir"] == {f"glimpse.{name}": name for name in FOLDERS}
    folders = {".".join(("glimpse", *p.parent.relative_to(REPO).parts))
               for name in FOLDERS for p in (REPO / name).rglob("__init__.py")
               if not SKIPPED_DIRS & set(p.relative_to(REPO).parts)}
    assert sorted(setuptools["packages"]) == sorted(folders)
