"""The import graph follows the rooms (README "Layout"): each room imports only the rooms it
may, nothing imports upward, no module reaches into another room's private names, and no
modules import each other in a loop. Read from the source, so a new import against the map
fails here rather than in review."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# room -> the rooms it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "aws": {"schemas"},
    "streams": {"schemas", "aws"},
    "ingest": {"schemas", "aws", "streams"},
    "consumers": {"schemas", "aws", "streams"},
    "query": {"schemas", "aws", "streams"},
    "web": {"schemas", "aws", "streams", "ingest", "query"},
    "p13n": {"schemas", "aws", "streams", "ingest", "consumers", "query", "web"},
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for room in ALLOWED:
        for path in sorted((ROOT / room).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported name, line) for every absolute import, including imported members."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    wrong: list[str] = []
    for name, path in modules.items():
        room = name.split(".")[0]
        for target, line in _imports(path):
            other = target.split(".")[0]
            if other not in ALLOWED or other == room:
                if target in modules and target != name:
                    graph[name].add(target)
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if other not in ALLOWED[room]:
                wrong.append(f"{where}: {room}/ may not import {other}/")
            elif any(part.startswith("_") for part in target.split(".")[1:]):
                wrong.append(f"{where}: a private name of another room")
            if target in modules:
                graph[name].add(target)
    return graph, wrong


def test_every_import_follows_the_rooms() -> None:
    _, wrong = _graph()
    assert wrong == []


def test_no_modules_import_each_other_in_a_loop() -> None:
    graph, _ = _graph()
    loops: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                loops.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert loops == []
