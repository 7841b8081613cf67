"""The house's import rules (DESIGN.md, "Layout"), read statically from the source with `ast`: no module is run.

Every `import cadenza...` / `from cadenza... import ...` counts, at the top of a file or inside a function
(a lazy import is still a dependency). `from package import name` is an edge to the submodule when `name`
is one, else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = ("core", "staria", "higgs_audio")  # what the faces (serve, cli) call
FACES = ("serve", "cli")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((SRC / "cadenza").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The cadenza modules that module `name` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "cadenza"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..core import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "cadenza":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else source)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    """`core`, `staria`, `higgs_audio`, `serve`, `cli`, `pretrained`, or '' for cadenza's own top-level files."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _crossings(graph: dict[str, set[str]], importers: tuple[str, ...], imported: tuple[str, ...]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _layer(a) in importers and _layer(b) in imported)


def test_the_graph_sees_the_tree(graph):
    assert {"cadenza.core.training", "cadenza.staria.generate", "cadenza.higgs_audio.engine", "cadenza.cli"} <= set(graph)
    assert "cadenza.higgs_audio.fast_decoder" in graph["cadenza.higgs_audio.engine"]
    assert "cadenza.cli.music" in graph["cadenza.cli"]  # `from cadenza.cli import music` is the submodule


def test_core_imports_neither_system(graph):
    assert _crossings(graph, ("core",), ("staria", "higgs_audio", *FACES)) == []


def test_the_two_systems_never_import_each_other(graph):
    assert _crossings(graph, ("staria",), ("higgs_audio",)) == []
    assert _crossings(graph, ("higgs_audio",), ("staria",)) == []


def test_serve_and_cli_are_imported_by_nothing_in_the_library(graph):
    assert _crossings(graph, LIBRARY, FACES) == []
    assert _crossings(graph, ("serve",), ("cli",)) == []  # the command starts the server, never the reverse


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: any component of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in graph:  # a name the tree does not define: an import error, not a layout question
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert cycles == []
