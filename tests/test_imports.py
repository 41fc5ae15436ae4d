"""The package's modules import in one direction: no import circle, counting the imports made
only for type checking and those inside functions (issue 21)."""

from __future__ import annotations

import ast
from pathlib import Path

import rime_trio

PACKAGE = Path(rime_trio.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package, and the package's modules it imports (relative imports)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
                imported.add(target)
                # `from . import x` imports the module x when x is one.
                imported.update(f"{target}.{alias.name}" for alias in node.names)
        graph[module] = imported
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def circles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for nxt in graph[path[-1]]:
            if nxt in path:
                found.add(tuple(sorted(path[path.index(nxt) :])))
            elif len(path) < len(graph):
                walk([*path, nxt])

    for module in graph:
        walk([module])
    return found


def test_the_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}


def test_no_import_circle() -> None:
    assert circles(import_graph()) == set()
