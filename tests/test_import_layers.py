"""The code's imports point one way: no module imports, even lazily inside a function, one that
imports it back; the client's folders are layered, each importing only the folders below it."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"graytune.client": ROOT / "client", "graytune.server": ROOT / "server", "graytune": ROOT / "protos/graytune"}
# The client's folders (and top-level modules), lowest first; a layer imports only from layers
# at or below it.
CLIENT_LAYERS = (
    ("options",),
    ("transport", "data"),
    ("modules",),
    ("methods",),
    ("tasks",),
    ("training",),
    ("inference", "plot"),
    ("demo",),
    ("cli", "__init__"),
)


@functools.cache
def modules() -> dict[str, Path]:
    """graytune module name -> its file, for the client, the server and the contract."""
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "graytune" and path.relative_to(folder).parts[0] == "v1":
                continue  # generated stubs
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The graytune modules a file imports anywhere in it (a name imported from a package
    counts as its submodule when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {name for name in found if name in known}


@functools.cache
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known)) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    part = (module.removeprefix("graytune.client").lstrip(".").split(".")[0]) or "__init__"
    return next(i for i, names in enumerate(CLIENT_LAYERS) if part in names)


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_client_folder_is_in_a_layer():
    for name in modules():
        if name.startswith("graytune.client"):
            layer_of(name)  # raises StopIteration for a folder the layers do not name


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("graytune.client")))
def test_client_modules_import_only_from_their_layer_or_below(module):
    upward = sorted(
        dep for dep in graph()[module] if dep.startswith("graytune.client") and layer_of(dep) > layer_of(module)
    )
    assert upward == [], f"{module} imports from a layer above it"
