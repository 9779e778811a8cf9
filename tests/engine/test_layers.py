"""The engine's folders are its layers: no import cycle between its modules, and the lower layers never reach up."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FOUNDATION = {
    "engine.errors", "engine.progress", "engine.system", "engine.folders", "engine.internals", "engine.names",
    "engine.limits", "engine.durable",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ENGINE.rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each engine module's engine imports that run (at import time or in a function), ``TYPE_CHECKING`` ones
    left out. ``from engine.x import y`` counts as importing ``engine.x.y`` when that is a module."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("engine"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        graph[name] = found - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def _engine_graph() -> dict[str, set[str]]:
    graph = imports(_modules())
    # The package's __init__ is the public façade: its lazy re-exports (load_model, Answer...) import the runtime
    # on first use. Modules inside the engine import what they need from its modules, never a façade name, so the
    # façade's own imports are not edges of the engine's graph (test_modules_use_only_the_version_from_the_facade).
    graph["engine"] = set()
    return graph


def test_the_engine_has_no_import_cycle() -> None:
    found = cycles(_engine_graph())
    assert not found, "import cycles between engine modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # The real graph with one edge added back from a low module to a high one has a cycle.
    graph = _engine_graph()
    graph["engine.runtime.types"] = graph["engine.runtime.types"] | {"engine.runtime.model"}
    assert ["engine.runtime.model", "engine.runtime.types"] in [
        [m for m in c if m in ("engine.runtime.model", "engine.runtime.types")] for c in cycles(graph)]


def test_modules_use_only_the_version_from_the_facade() -> None:
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "engine" and name != "engine":
                names = {a.name for a in node.names}
                assert names <= {"__version__"} | {m.rsplit(".", 1)[-1] for m in _modules()}, (
                    f"{name} imports {sorted(names)} from the engine's façade; import them from their modules")


def test_lower_layers_never_import_higher_ones() -> None:
    graph = _engine_graph()
    for name, targets in graph.items():
        if name in FOUNDATION:
            assert targets <= FOUNDATION, f"{name} (foundation) imports {sorted(targets - FOUNDATION)}"
        if not name.startswith(("engine.cli", "engine.__main__")):
            assert not {t for t in targets if t.startswith("engine.cli")}, f"{name} imports the CLI"
        if name.startswith("engine.runtime"):
            assert not {t for t in targets if t.startswith("engine.convert")}, f"{name} imports the converter"
        if not name.startswith(("engine.runner", "engine.cli", "engine.__main__")):
            # The runner process sits on top of the runtime: only the command line (and the façade) start one.
            assert not {t for t in targets if t.startswith("engine.runner")}, f"{name} imports the runner"


def test_the_folders_are_the_layers() -> None:
    """Where an image becomes rows, where models are kept, where checkpoints are converted: by folder name."""
    top = {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert top == {"runtime", "models", "convert", "runner", "cli"}
    assert {p.stem for p in (ENGINE / "runtime").glob("*.py")} >= {"preprocess", "vision", "llm", "prompt",
                                                                   "conversation", "model", "types"}
    assert {p.stem for p in (ENGINE / "models").glob("*.py")} >= {"catalog", "download", "store", "model_folder"}
    assert (ENGINE / "convert" / "checkpoint.py").is_file()
    loose = {p.stem for p in ENGINE.glob("*.py")} - {"__init__", "__main__"}
    assert loose == {m.rsplit(".", 1)[-1] for m in FOUNDATION}, f"modules outside the layers: {sorted(loose)}"
