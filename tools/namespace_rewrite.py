"""Rewrite imports and module names from the bare top-level packages to the ``glimpse`` namespace.

The repository keeps its folders ``engine/``, ``app/`` and ``assets/``; installed, they are ``glimpse.engine``,
``glimpse.app`` and ``glimpse.assets`` (pyproject.toml's package-dir). This rewrites, by rule, what names them as
modules:

- Python imports: ``from engine.x import y`` -> ``from glimpse.engine.x import y``; ``import engine`` ->
  ``from glimpse import engine``; ``import engine.x as y`` -> ``import glimpse.engine.x as y``; ``import app.window``
  -> ``import glimpse.app.window`` plus ``from glimpse import app``, so the names a module uses stay bound;
- Python string literals (docstrings excepted) that are a module path as a whole: ``"engine.cli.canary:main"``,
  ``"app.launcher"``, ``"engine.*"``, ``"engine."``, when the name after the package is one of its modules or
  folders (``"engine.llama_cpp"``, a logger name, is no module and stays); in them and in other files, ``-m engine``
  and Python import statements written as code (at the start of a line or after ``;``, as in ``python -c`` scripts);
- TOML, YAML, INI and shell files: the same, on quoted strings and on every line;
- Markdown: ``-m engine`` anywhere, import statements in code blocks and inline code. CHANGELOG.md is history and is
  left as it is;
- Python comments and docstrings: ``-m engine`` only (a command to type, wherever it is written).

Never touched: other prose (module names in comments and docstrings, import examples in docstrings), folder paths
(``engine/runtime/llm.py``), attribute access on a variable named ``app``, bare strings such as ``"engine"`` (they
may be folder names). Those that name a module need a hand edit; ``--verbose`` lists the bare-name strings it saw,
to review.

Running it twice changes nothing the second time. It prints every line it changes, then, when ruff is importable,
sorts the imports of the Python files it changed (``ruff check --fix --select I``), since ``glimpse.`` sorts in
another place than ``app``/``engine`` did.

    python tools/namespace_rewrite.py                 # every file git knows (tracked and untracked, not ignored)
    python tools/namespace_rewrite.py PATH...         # only these files, or the files under these folders
    python tools/namespace_rewrite.py --check         # change nothing; exit 1 if something would change

A file that holds the bare forms on purpose (examples of what a test must catch) carries the comment
``# namespace-rewrite: skip-file`` and is left alone.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "glimpse"
TOPS = ("engine", "app", "assets")
_TOP = "|".join(TOPS)
# History, and this tool and its test, whose examples must stay as written; any other file that holds the bare
# forms on purpose (a test's examples of what it must catch) says so with SKIP_MARK in a comment.
SKIP = {"CHANGELOG.md", "tools/namespace_rewrite.py", "tests/test_namespace_rewrite.py"}
SKIP_MARK = "namespace-rewrite: " + "skip-file"
SKIP_DIRS = ("tests/fixtures/", "build/", "dist/", ".venv/", ".git/")
PYTHON_SUFFIXES = {".py", ".pyi", ".spec"}
TEXT_SUFFIXES = {".toml", ".cfg", ".ini", ".yaml", ".yml", ".sh", ".txt", ".desktop", ".in"}

# `-m engine`, `-m app.launcher`; not `-m tools.x`, not `-m engine/` (a folder) nor `-m engines`.
_DASH_M = re.compile(rf"(?<![\w-])(-m\s+)({_TOP})(?=$|[\s\"'`;)\],.:])")
# A `from X import` statement written as code: at the start of a line (or of the string) or after `;`.
_FROM = re.compile(rf"((?:^|[;\n]|\\n)[ \t]*from[ \t]+)((?:{_TOP})(?:\.\w+)*)([ \t]+import\b)", re.M)
# An `import A, B as c` statement written as code.
_IMPORT = re.compile(r"((?:^|[;\n]|\\n)[ \t]*)import[ \t]+(\w+(?:\.\w+)*(?:[ \t]+as[ \t]+\w+)?"
                     r"(?:[ \t]*,[ \t]*\w+(?:\.\w+)*(?:[ \t]+as[ \t]+\w+)?)*)", re.M)
_MODULE_STRING = re.compile(rf"^({_TOP})((?:\.\w+)*)(\.\*|\.)?(:\w+(?:\.\w+)*)?$")
# A warnings filter, as pytest's filterwarnings and -W take it: action:message:category:module[:lineno].
_WARNING_FILTER = re.compile(rf"^(\w+:[^:]*:[\w.]*:)((?:{_TOP})(?:\.\w+|\.\*)*)(:\d*)?$")
_QUOTED = re.compile(r"(\"|')([\w.:*]+)\1")


def names_a_module(text: str, root: Path = ROOT) -> bool:
    """Whether ``text`` (a whole string) is a module path under one of TOPS: ``engine.cli.canary:main``,
    ``engine.*``, ``engine.``, ``app.window.unavailable_reason``. The first name after the package must be one of
    its modules or folders, so that dotted words that are no module (a logger called ``engine.llama_cpp``) stay."""
    match = _MODULE_STRING.match(text)
    if not match:
        return False
    top, dotted, star, entry = match.groups()
    if not dotted:
        return bool(star or entry)  # "engine.*", "engine.", "engine:main"; never the bare word
    first = dotted.split(".")[1]
    return (root / top / f"{first}.py").is_file() or (root / top / first).is_dir()


def alias_statements(name: str, asname: str | None) -> list[str]:
    """The statements that bind what ``import name [as asname]`` bound, with the module under the namespace."""
    new = f"{NAMESPACE}.{name}"
    parent, _, last = new.rpartition(".")
    if asname:
        if asname == last:  # ruff's PLR0402 wants the from-form for `import a.b as b`
            return [f"from {parent} import {last}"]
        return [f"import {new} as {asname}"]
    if "." not in name:
        return [f"from {NAMESPACE} import {name}"]
    return [f"import {new}", f"from {NAMESPACE} import {name.split('.', maxsplit=1)[0]}"]


def _targets(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in TOPS


def _rewrite_import_list(names: str, indent: str, sep: str) -> str | None:
    """``a, engine.x as y`` -> the statements, joined by ``sep`` + ``indent``; None when nothing is ours."""
    aliases = []
    for part in names.split(","):
        bits = part.split()
        aliases.append((bits[0], bits[2] if len(bits) == 3 else None))
    if not any(_targets(n) for n, _ in aliases):
        return None
    kept = [n if a is None else f"{n} as {a}" for n, a in aliases if not _targets(n)]
    statements = [f"import {', '.join(kept)}"] if kept else []
    for n, a in aliases:
        if _targets(n):
            statements += alias_statements(n, a)
    return (sep + indent).join(statements)


def _dash_m(text: str) -> str:
    return _DASH_M.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}", text)


def rewrite_code_text(text: str, *, multiline_sep: str = "\n") -> str:
    """The text rules: `-m engine`, and import statements written as code (in a string, a shell line, a code
    block). ``multiline_sep`` joins statements split from one import line."""
    text = _dash_m(text)
    text = _FROM.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3)}", text)

    def one_import(m: re.Match[str]) -> str:
        lead = m.group(1)
        indent = lead.lstrip(";\n").replace("\\n", "")
        sep = "; " if lead.lstrip(" \t").startswith(";") or not lead.strip(" \t") else multiline_sep
        if "\\n" in lead:
            sep = "\\n"
        if m.string[m.end():].strip() == ",":  # the list goes on in the next of adjacent strings: by hand
            print(f"not rewritten, an import list split across strings: {m.group(0).strip()}", file=sys.stderr)
            return m.group(0)
        new = _rewrite_import_list(m.group(2), indent, sep)
        return m.group(0) if new is None else f"{lead}{new}"

    return _IMPORT.sub(one_import, text)


def _warning_filter(text: str) -> str:
    return _WARNING_FILTER.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(3) or ''}", text)


def rewrite_string_literal(token: str, root: Path = ROOT) -> str:
    """A Python string token (quotes and prefix included), by the text rules and the whole-string module rule."""
    match = re.match(r"(?is)([rbuf]*)('''|\"\"\"|'|\")(.*)\2$", token)
    if not match:
        return token
    prefix, quote, body = match.groups()
    if "b" in prefix.lower():
        return token
    if names_a_module(body, root):
        return f"{prefix}{quote}{NAMESPACE}.{body}{quote}"
    if _WARNING_FILTER.match(body):
        return f"{prefix}{quote}{_warning_filter(body)}{quote}"
    sep = "\n" if len(quote) == 3 else "; "
    return f"{prefix}{quote}{rewrite_code_text(body, multiline_sep=sep)}{quote}"


# -- Python files ------------------------------------------------------------------------------------------------------

def _offsets(source: str) -> list[int]:
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts


def _char_col(source_lines: list[str], lineno: int, byte_col: int) -> int:
    return len(source_lines[lineno - 1].encode("utf-8")[:byte_col].decode("utf-8", errors="replace"))


def _docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                starts.add((first.value.lineno, first.value.col_offset))
    return starts


def rewrite_python(source: str, root: Path = ROOT) -> str:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(source)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in characters

    def span(node: ast.stmt) -> tuple[int, int]:
        assert node.end_lineno is not None and node.end_col_offset is not None
        return (starts[node.lineno - 1] + _char_col(lines, node.lineno, node.col_offset),
                starts[node.end_lineno - 1] + _char_col(lines, node.end_lineno, node.end_col_offset))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_targets(a.name) for a in node.names):
            begin, end = span(node)
            indent = " " * _char_col(lines, node.lineno, node.col_offset)
            alone = not lines[node.lineno - 1][:len(indent)].strip()
            names = ", ".join(a.name if a.asname is None else f"{a.name} as {a.asname}" for a in node.names)
            new = _rewrite_import_list(names, indent, "\n" if alone else "; ")
            assert new is not None
            edits.append((begin, end, new))
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module and _targets(node.module):
            begin, end = span(node)
            match = re.match(r"from\s+", source[begin:end])
            assert match is not None
            edits.append((begin + match.end(), begin + match.end(), f"{NAMESPACE}."))

    docstrings = _byte_positions(_docstring_starts(tree), lines)
    before: list[tokenize.TokenInfo] = []  # the two significant tokens before this one
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        previous, before = before, [*before[-1:], token] if token.type not in _INSIGNIFICANT else before
        if token.type == tokenize.COMMENT or (token.type == tokenize.STRING and token.start in docstrings):
            new = _dash_m(token.string)  # prose, but `python -m engine` there is a command to type
        elif token.type == tokenize.STRING:
            new = rewrite_string_literal(token.string, root)
        else:
            continue
        bare = token.string.strip("'\"")
        if bare in TOPS and len(previous) == 2 and previous[1].string == "," \
                and previous[0].type == tokenize.STRING and previous[0].string.strip("'\"") == "-m":
            new = token.string.replace(bare, f"{NAMESPACE}.{bare}")  # [python, "-m", "engine", ...]
        if new != token.string:
            begin = starts[token.start[0] - 1] + token.start[1]
            edits.append((begin, begin + len(token.string), new))

    for begin, end, new in sorted(edits, reverse=True):
        source = source[:begin] + new + source[end:]
    return source


_INSIGNIFICANT = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}


def _byte_positions(starts: set[tuple[int, int]], lines: list[str]) -> set[tuple[int, int]]:
    """ast's columns count UTF-8 bytes, tokenize's characters."""
    return {(line, _char_col(lines, line, col)) for line, col in starts}


# -- other files ------------------------------------------------------------------------------------------------------

def rewrite_text(source: str, root: Path = ROOT) -> str:
    """TOML, YAML, INI, shell: quoted whole-string module paths, `-m engine` and import statements as code."""
    source = _QUOTED.sub(lambda m: f"{m.group(1)}{NAMESPACE}.{m.group(2)}{m.group(1)}"
                         if names_a_module(m.group(2), root) else m.group(0), source)
    source = re.sub(r"(\"|')([^\"'\n]+)\1", lambda m: f"{m.group(1)}{_warning_filter(m.group(2))}{m.group(1)}",
                    source)
    source = re.sub(r"(?<![\w-])(-c\s+)([\"'])(.*?)\2", lambda m: f"{m.group(1)}{m.group(2)}"
                    f"{rewrite_code_text(m.group(3), multiline_sep='; ')}{m.group(2)}", source)  # python -c "..."
    return "".join(rewrite_code_text(line, multiline_sep="; ") for line in source.splitlines(keepends=True))


def rewrite_markdown(source: str, root: Path = ROOT) -> str:
    """`-m engine` anywhere; import statements in fenced code blocks and in inline code."""
    out = []
    fenced = False
    for line in source.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append(line)
        elif fenced:
            out.append(rewrite_code_text(line))
        else:
            prose = _dash_m(line)
            out.append(re.sub(r"`([^`\n]+)`", lambda m: f"`{rewrite_code_text(m.group(1), multiline_sep='; ')}`",
                              prose))
    return "".join(out)


def rewriter_for(path: Path) -> Callable[[str, Path], str] | None:
    if path.suffix in PYTHON_SUFFIXES:
        return rewrite_python
    if path.suffix == ".md":
        return rewrite_markdown
    if path.suffix in TEXT_SUFFIXES:
        return rewrite_text
    if not path.suffix:
        try:
            first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        except (OSError, UnicodeDecodeError):
            return None
        if first.startswith("#!") and "python" in first:
            return rewrite_python
        if first.startswith("#!") and ("sh" in first.split("/")[-1] or "bash" in first):
            return rewrite_text
    return None


def project_files(root: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    return [root / line for line in out.splitlines() if line]


def candidates(paths: list[Path], root: Path) -> Iterator[Path]:
    files = project_files(root) if not paths else [
        f for p in paths for f in ([p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()))]
    for path in files:
        try:
            rel = path.resolve().relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        if rel in SKIP or rel.startswith(SKIP_DIRS) or "/__pycache__/" in f"/{rel}" or not path.is_file():
            continue
        yield path


def bare_name_strings(source: str) -> list[tuple[int, str]]:
    """String literals that are just "engine", "app" or "assets" (with --verbose): they may name a module."""
    found = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.STRING and token.string.strip("'\"") in TOPS:
                found.append((token.start[0], token.line.strip()))
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: every file git knows)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if something would change")
    parser.add_argument("--no-sort", action="store_true", help="do not sort the changed files' imports with ruff")
    parser.add_argument("--verbose", action="store_true", help="also list bare \"engine\"/\"app\"/\"assets\" strings")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this script's)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    changed: list[Path] = []
    for path in candidates(args.paths, root):
        rewrite = rewriter_for(path)
        if rewrite is None:
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if SKIP_MARK in source:
            print(f"{path}: skipped ({SKIP_MARK})")
            continue
        try:
            new = rewrite(source, root)
        except SyntaxError as e:
            print(f"{path}: not rewritten, it does not parse: {e}", file=sys.stderr)
            continue
        if args.verbose and rewrite is rewrite_python:
            for line, text in bare_name_strings(new):
                print(f"{path}:{line}: review (bare name string): {text}")
        if new == source:
            continue
        changed.append(path)
        old_lines, new_lines = source.splitlines(), new.splitlines()
        if len(old_lines) == len(new_lines):
            for number, (a, b) in enumerate(zip(old_lines, new_lines, strict=True), 1):
                if a != b:
                    print(f"{path}:{number}: {a.strip()}\n{' ' * len(f'{path}:{number}:')} -> {b.strip()}")
        else:
            print(f"{path}: {len(old_lines)} -> {len(new_lines)} lines (an import split into two)")
            for a, b in _changed_blocks(old_lines, new_lines):
                print(f"    - {a}\n    + {b}")
        if not args.check:
            path.write_text(new, encoding="utf-8")
    python_changed = [str(p) for p in changed if rewriter_for(p) is rewrite_python]
    if python_changed and not args.check and not args.no_sort:
        try:
            import ruff  # noqa: F401, PLC0415 - only to know whether it is installed
        except ImportError:
            print("ruff is not installed: sort the changed files' imports with `ruff check --fix --select I`.")
        else:
            # glimpse is no folder of the repository, so ruff would take it for a third-party package.
            subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "--select", "I", "-q", "--config",
                            f"lint.isort.known-first-party = ['{NAMESPACE}']", *python_changed],
                           cwd=root, check=False)
    print(f"{len(changed)} file(s) {'would change' if args.check else 'changed'}.")
    return 1 if args.check and changed else 0


def _changed_blocks(old: list[str], new: list[str]) -> Iterator[tuple[str, str]]:
    import difflib  # noqa: PLC0415 - only for the rare split import

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        if tag != "equal":
            yield " | ".join(s.strip() for s in old[i1:i2]), " | ".join(s.strip() for s in new[j1:j2])


if __name__ == "__main__":
    sys.exit(main())
