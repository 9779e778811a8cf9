"""The engine's folders are its layers, and docs/architecture.md draws their import graph edge for edge.

The graph is read from the source with ``ast``: every import that runs counts, at module level or inside a function,
and so does a module named in a string (``importlib.import_module`` of the front door's lazy names, the CLI's
hidden entries); imports under ``if TYPE_CHECKING:`` do not (they never run). A node is one of the engine's folders
(``runtime``, ``models``...), ``base`` for the modules directly in ``engine/`` (errors, folders, version...) and
``engine`` for the front door (``engine/__init__.py`` and ``engine/__main__.py``). The checks: the graph has no
cycle, every edge points down the document's layer order, and its edges are exactly the document's. Separately: no
two modules import each other (typing-only imports included), in the engine or in the app, and the app imports the
engine only through the names ``engine.__all__`` declares.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "engine"
NAMESPACE = "glimpse"
DOC = ROOT / "docs" / "architecture.md"
FRONT_DOOR = "engine"  # the node of engine/__init__.py and engine/__main__.py
BASE = "base"  # the node of the modules directly in engine/
GRAPH_HEADING = "### The import graph"


# -- reading the source -----------------------------------------------------------------------------------------------

def module_name(path: Path, package: Path) -> str:
    """The installed name: engine/runtime/llm.py is ``glimpse.engine.runtime.llm`` (pyproject.toml's package-dir)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join((NAMESPACE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def modules(package: Path) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the statements under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imported_modules(name: str, path: Path, known: Iterable[str], *, typing_too: bool = False) -> set[str]:
    """The modules of ``known`` that the module ``name`` (at ``path``) imports, anywhere in it. ``from a import b``
    is ``a.b`` when that is a module, else ``a``; relative imports are resolved."""
    known = set(known)
    roots = {k.split(".")[0] for k in known}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set() if typing_too else _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in roots)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] not in roots:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # A module imported by name at run time: the front door's lazy table, the CLI's hidden entries
            # ("glimpse.engine.x.y" or "glimpse.engine.x.y:function"). The package's own name is a command line's
            # (python -m glimpse.engine), not an import.
            named = node.value.partition(":")[0]
            if "." in named.removeprefix(f"{NAMESPACE}.") and named in known:
                found.add(named)
    return {m for m in found if m in known} - {name}


def module_graph(package: Path, *, typing_too: bool = False) -> dict[str, set[str]]:
    found = modules(package)
    return {name: imported_modules(name, path, found, typing_too=typing_too) for name, path in found.items()}


def node_of(module: str, path: Path) -> str:
    """``glimpse.engine.runtime.llm`` -> ``runtime``; ``glimpse.engine.errors`` -> ``base``; ``glimpse.engine``,
    ``glimpse.engine.__main__`` -> ``engine`` (the front door)."""
    parts = module.removeprefix(f"{NAMESPACE}.").split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return FRONT_DOOR
    return parts[1] if len(parts) > 2 or path.name == "__init__.py" else BASE


def folder_graph(package: Path) -> dict[str, set[str]]:
    """Node -> the nodes it imports (itself left out)."""
    found = modules(package)
    graph: dict[str, set[str]] = {}
    for name, targets in module_graph(package).items():
        here = node_of(name, found[name])
        graph.setdefault(here, set()).update(node_of(t, found[t]) for t in targets)
    return {node: targets - {node} for node, targets in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def mutual_pairs(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))


# -- reading the document ---------------------------------------------------------------------------------------------

def documented_graph(text: str) -> list[tuple[str, set[str]]]:
    """The first fenced block after ``GRAPH_HEADING``: one line per node, highest layer first, each ``node -> a, b``
    (or the node alone when it imports nothing)."""
    _, heading, after = text.partition(GRAPH_HEADING)
    block = re.search(r"^```[a-z]*\n(.*?)^```", after, re.S | re.M)
    assert heading and block, f"docs/architecture.md has no fenced block under {GRAPH_HEADING!r}"
    layers: list[tuple[str, set[str]]] = []
    for line in block.group(1).splitlines():
        node, _, targets = line.partition("->")
        if node.strip():
            layers.append((node.strip(), {t.strip() for t in targets.split(",") if t.strip()}))
    return layers


def problems(package: Path, doc_text: str) -> list[str]:
    """What is wrong between the source's folder graph and the document's, one sentence each; empty when they agree."""
    graph = folder_graph(package)
    documented = documented_graph(doc_text)
    order = [node for node, _ in documented]
    listed = {(node, t) for node, targets in documented for t in targets}
    edges = {(node, t) for node, targets in graph.items() for t in targets}
    found = [f"import cycle between {' , '.join(c)}" for c in cycles(graph)]
    found += [f"{a} imports {b}, an edge docs/architecture.md does not list" for a, b in sorted(edges - listed)]
    found += [f"docs/architecture.md lists {a} -> {b}, which the source does not have" for a, b in
              sorted(listed - edges)]
    found += [f"{node} is not a layer in docs/architecture.md" for node in sorted(set(graph) - set(order))]
    found += [f"docs/architecture.md lists {node}, which the source does not have" for node in
              sorted(set(order) - set(graph))]
    rank = {node: i for i, node in enumerate(order)}
    found += [f"{a} -> {b} points up: docs/architecture.md has {b} above {a}" for a, b in sorted(listed)
              if a in rank and b in rank and rank[b] <= rank[a]]
    return found


# -- the engine as it is ----------------------------------------------------------------------------------------------

def test_the_engine_matches_the_documented_graph() -> None:
    found = problems(ENGINE, DOC.read_text(encoding="utf-8"))
    assert not found, "\n".join(found)


def test_no_module_imports_one_that_imports_it() -> None:
    """typing-only imports too: two modules that need each other's names belong in one, or need a third."""
    for package in (ENGINE, ROOT / "app"):
        pairs = mutual_pairs(module_graph(package, typing_too=True))
        assert not pairs, "modules importing each other: " + ", ".join(f"{a} <-> {b}" for a, b in pairs)


def test_the_engine_has_no_module_cycle() -> None:
    found = cycles(module_graph(ENGINE))
    assert not found, "import cycles between engine modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_base_is_the_loose_modules_and_the_folders_are_the_other_layers() -> None:
    documented = {node for node, _ in documented_graph(DOC.read_text(encoding="utf-8"))}
    folders = {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert documented == folders | {BASE, FRONT_DOOR}
    assert {p.stem for p in (ENGINE / "runtime").glob("*.py")} >= {"preprocess", "vision", "llm", "prompt",
                                                                   "conversation", "model", "types"}
    assert {p.stem for p in (ENGINE / "models").glob("*.py")} >= {"catalog", "download", "store", "model_folder"}
    assert (ENGINE / "convert" / "checkpoint.py").is_file()


# -- the checker itself, on small made-up trees -----------------------------------------------------------------------

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "engine" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "engine"


_DOC = f"""# Made up

{GRAPH_HEADING}

```text
engine  -> runtime
runtime -> models, base
models  -> base
base
```
"""

_CLEAN = {
    "__init__.py": "from glimpse.engine.runtime.a import run\n",
    "errors.py": "",
    "runtime/__init__.py": "",
    "runtime/a.py": "from glimpse.engine import errors\nfrom glimpse.engine.models.b import B\n\n"
                    "def run():\n    return B\n",
    "models/__init__.py": "",
    "models/b.py": "from typing import TYPE_CHECKING\n\nfrom glimpse.engine.errors import X\n\n"
                   "if TYPE_CHECKING:\n    from glimpse.engine.runtime.a import run\n\nB = 1\n",
}


def test_the_checker_passes_a_tree_that_matches(tmp_path: Path) -> None:
    assert problems(_tree(tmp_path, _CLEAN), _DOC) == []


def test_the_checker_finds_an_injected_cycle(tmp_path: Path) -> None:
    """A function-level import from models back up to runtime: a cycle, an unlisted edge and an upward one."""
    files = dict(_CLEAN)
    files["models/b.py"] += "\n\ndef late():\n    from glimpse.engine.runtime import a\n\n    return a\n"
    found = problems(_tree(tmp_path, files), _DOC)
    assert "import cycle between models , runtime" in found
    assert "models imports runtime, an edge docs/architecture.md does not list" in found


def test_the_checker_finds_an_unlisted_edge(tmp_path: Path) -> None:
    files = dict(_CLEAN)
    files["__init__.py"] += "from glimpse.engine.models.b import B\n"
    assert problems(_tree(tmp_path, files), _DOC) == [
        "engine imports models, an edge docs/architecture.md does not list"]


def test_the_checker_finds_a_listed_edge_the_source_lacks_and_an_upward_one(tmp_path: Path) -> None:
    doc = _DOC.replace("models  -> base", "models  -> base, runtime")
    found = problems(_tree(tmp_path, _CLEAN), doc)
    assert "docs/architecture.md lists models -> runtime, which the source does not have" in found
    assert "models -> runtime points up: docs/architecture.md has runtime above models" in found


def test_the_checker_finds_a_folder_the_document_lacks(tmp_path: Path) -> None:
    files = {**_CLEAN, "runner/__init__.py": "from glimpse.engine.runtime import a\n"}
    found = problems(_tree(tmp_path, files), _DOC)
    assert "runner is not a layer in docs/architecture.md" in found
    assert "runner imports runtime, an edge docs/architecture.md does not list" in found


def test_typing_only_imports_are_left_out_of_the_graph_but_not_out_of_the_pairs(tmp_path: Path) -> None:
    package = _tree(tmp_path, _CLEAN)
    assert "glimpse.engine.runtime.a" not in module_graph(package)["glimpse.engine.models.b"]
    assert mutual_pairs(module_graph(package, typing_too=True)) == [
        ("glimpse.engine.models.b", "glimpse.engine.runtime.a")]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# -- the app's one way in: the names the engine's front door declares ------------------------------------------------

def imports_past_the_front_door(app: Path, public: set[str]) -> list[str]:
    """Every import in ``app`` (typing-only and function-level ones included) of an engine module other than the
    package itself, or of a name the package does not declare in ``__all__``; as "file:line: what"."""
    found: list[str] = []
    for path in sorted(app.rglob("*.py")):
        where = path.relative_to(app.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name.startswith("glimpse.engine.")]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module \
                    and (node.module + ".").startswith("glimpse.engine."):
                names = [a.name for a in node.names]
                if node.module != "glimpse.engine":
                    found.append(f"{where}:{node.lineno}: from {node.module} import {', '.join(names)}")
                elif set(names) - public:
                    found.append(f"{where}:{node.lineno}: from glimpse.engine import "
                                 f"{', '.join(sorted(set(names) - public))} (not in engine.__all__)")
    return found


def test_the_app_uses_only_the_engines_declared_names() -> None:
    from glimpse import engine  # noqa: PLC0415 (the test reads what the package declares)

    found = imports_past_the_front_door(ROOT / "app", set(engine.__all__))
    assert not found, "the app imports past the engine's front door (engine/__init__.py's __all__):\n" + "\n".join(
        found)


def test_the_front_door_check_finds_an_import_past_it(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "ok.py").write_text("from glimpse import engine\nfrom glimpse.engine import Store, load_model\n",
                               encoding="utf-8")
    assert imports_past_the_front_door(app, {"Store", "load_model"}) == []
    (app / "bad.py").write_text("from typing import TYPE_CHECKING\n\nimport glimpse.engine.cli\n"
                                "from glimpse.engine import Secret\n"
                                "from glimpse.engine.models.store import Store\n\nif TYPE_CHECKING:\n"
                                "    from glimpse.engine.runtime.model import Model\n\n\ndef late():\n"
                                "    from glimpse.engine.runtime import caption\n", encoding="utf-8")
    assert imports_past_the_front_door(app, {"Store", "load_model"}) == [
        "app/bad.py:3: import glimpse.engine.cli",
        "app/bad.py:4: from glimpse.engine import Secret (not in engine.__all__)",
        "app/bad.py:5: from glimpse.engine.models.store import Store",
        "app/bad.py:8: from glimpse.engine.runtime.model import Model",
        "app/bad.py:12: from glimpse.engine.runtime import caption",
    ]
