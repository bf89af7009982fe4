"""The package's layers import downward only, and nothing imports in a cycle.

CLI -> web doors -> (live hub, rendering, RPC library, client) -> the share domain -> the store ->
the base modules. Read from the source with ``ast`` (every import, including ones inside
functions and under TYPE_CHECKING), so a new module is checked the day it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cloudsession

PACKAGE = Path(cloudsession.__file__).resolve().parent

# Rank of each room: a module may import its own room and rooms of a strictly lower rank.
RANKS = {
    "__main__": 7,
    "cli": 6,
    "web": 5,
    "client": 4,
    "live": 3,
    "hooks": 3,
    "render": 3,
    "rpc": 3,
    "shares": 2,
    "store": 1,
    # The base: settings, errors, credentials, wire constants and JSON, the metrics registry and
    # the log setup, used by every layer.
    "base": 0,
}
BASE_MODULES = {"config", "errors", "credentials", "protocol", "jsonio", "metrics", "logs", "__init__"}
# Importing these makes a module a web door or a command; only their rooms may.
FRAMEWORK_ROOMS = {"aiohttp.web": {"web", "rpc", "cli"}, "argparse": {"cli"}}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(("cloudsession", *parts))] = path
    return found


MODULES = _modules()


def _room(module: str) -> str:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else "__init__"
    return "base" if room in BASE_MODULES else room


def _imports(module: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module, at import time?) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner = False
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    # ``from cloudsession.shares import ops`` imports the submodule; ``from aiohttp
                    # import web`` is aiohttp.web for the framework rule.
                    candidate = f"{base}.{alias.name}"
                    found.append((candidate if candidate in MODULES or not base.startswith("cloudsession") else base, top))
            visit(child, inner)

    visit(tree, True)
    return found


def test_every_room_has_a_rank() -> None:
    assert {_room(m) for m in MODULES} <= set(RANKS), "a new top-level module or package needs a rank here"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_downward(module: str) -> None:
    room = _room(module)
    wrong = []
    for name, _top in _imports(module, MODULES[module]):
        if name.startswith("cloudsession.") or name == "cloudsession":
            target = _room(name)
            if target != room and RANKS[target] >= RANKS[room]:
                wrong.append(f"{name} (room {target}, rank {RANKS[target]})")
        for framework, allowed in FRAMEWORK_ROOMS.items():
            if (name == framework or name.startswith(framework + ".")) and room not in allowed:
                wrong.append(f"{name} (only {', '.join(sorted(allowed))} may)")
    assert not wrong, f"{module} (room {room}, rank {RANKS[room]}) imports upward or sideways: {wrong}"


def test_only_the_domain_touches_the_store() -> None:
    offenders = [
        m
        for m, path in MODULES.items()
        if _room(m) not in ("shares", "store")
        for name, _top in _imports(m, path)
        if name == "cloudsession.store" or name.startswith("cloudsession.store.")
    ]
    assert offenders == []


def test_only_the_cli_defines_commands() -> None:
    offenders = [m for m, path in MODULES.items() if _room(m) != "cli" and "add_parser(" in path.read_text()]
    assert offenders == []


def test_no_import_cycles() -> None:
    graph = {m: {n for n, top in _imports(m, p) if top and n in MODULES and n != m} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    for m in graph:
        graph[m] = {n for n in graph[m] if not n.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert cycles == []
