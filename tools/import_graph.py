"""The package's own import graph, read from the source (every import, also those inside functions).

    python tools/import_graph.py            # lists import cycles and the number of floors (longest import chain)

Two views: modules, and rooms (each module or subpackage directly under ``layerprobe/`` is one room; the modules
inside a folder collapse into their folder, so ``layerprobe.record.recorder`` is in room ``layerprobe.record``).
``tests/test_structure.py`` asserts that neither view has a cycle and that the rooms stand on at most 9 floors.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "layerprobe"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or a name inside one) refers to."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(mod: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``mod`` imports, at the top or inside a function."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            target = _resolve(n, known) if n.split(".")[0] == PACKAGE else None
            if target and target != mod:
                out.add(target)
    if "_EXPORTS" in path.read_text(encoding="utf-8") and mod == PACKAGE:
        out = set()  # the package's lazy re-exports point down into everything; they are not a dependency
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    g = {m: imports(m, p, known) for m, p in known.items()}
    for m in list(g):  # a package's __init__ is imported with any of its modules: count only explicit edges
        g[m] = {t for t in g[m] if not (m.startswith(t + ".") and t != PACKAGE)}
    return g


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def floors(g: dict[str, set[str]]) -> int:
    """The number of levels: 1 + the longest chain of imports (defined only without cycles)."""
    return max(floor_of(g).values())


def room(mod: str) -> str:
    """The room a module is in: the package itself, or the module or subpackage directly under it."""
    return ".".join(mod.split(".")[:2])


def rooms(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between rooms: an edge where any module of one room imports any module of another."""
    out: dict[str, set[str]] = {}
    for mod, targets in g.items():
        r = room(mod)
        out.setdefault(r, set()).update(room(t) for t in targets if room(t) != r)
    for targets in list(out.values()):
        for t in targets:
            out.setdefault(t, set())
    return out


def floor_of(g: dict[str, set[str]]) -> dict[str, int]:
    """Each node's floor: 1 + the longest chain of imports below it (defined only without cycles)."""
    depth: dict[str, int] = {}

    def d(v: str) -> int:
        if v not in depth:
            depth[v] = 0
            depth[v] = 1 + max((d(w) for w in g[v]), default=0)
        return depth[v]

    for v in g:
        d(v)
    return depth


def _report(g: dict[str, set[str]], what: str) -> list[list[str]]:
    found = cycles(g)
    for c in found:
        print(f"{what} cycle:", " <-> ".join(c))
    print(f"{len(g)} {what}s, {len(found)} import cycles" + ("" if found else f", {floors(g)} floors"))
    return found


if __name__ == "__main__":
    g = graph()
    found = _report(g, "module")
    rg = rooms(g)
    found_rooms = _report(rg, "room")
    if not found_rooms:
        by_floor: dict[int, list[str]] = {}
        for r, f in floor_of(rg).items():
            by_floor.setdefault(f, []).append(r.removeprefix(PACKAGE + ".") if r != PACKAGE else r)
        for f in sorted(by_floor, reverse=True):
            print(f"  floor {f}: {', '.join(sorted(by_floor[f]))}")
    sys.exit(1 if found or found_rooms else 0)
