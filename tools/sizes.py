"""Modules over 400 lines and functions over 60 lines in the package (issue 24's limits), read from the source.

    python tools/sizes.py            # lists them, longest first

A module's size is its number of lines; a function's is from its ``def`` line to its last line (a method's name
is ``Class.method``, a nested function's ``outer.inner``). ``tests/test_structure.py`` asserts the limits.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "layerprobe"
MODULE_LINES = 400
FUNCTION_LINES = 60


def functions(tree: ast.AST) -> dict[str, int]:
    """Qualified name -> lines of every function and method in ``tree``."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                out[name] = max(out.get(name, 0), (child.end_lineno or child.lineno) - child.lineno + 1)
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def oversized(
    package: Path = ROOT / PACKAGE, module_lines: int = MODULE_LINES, function_lines: int = FUNCTION_LINES
) -> tuple[dict[str, int], dict[str, int]]:
    """({module path: lines} over ``module_lines``, {"path::function": lines} over ``function_lines``); paths are
    relative to the repository, e.g. ``layerprobe/analyse/paired.py`` and ``layerprobe/train/pipeline.py::_run``."""
    modules, funcs = {}, {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > module_lines:
            modules[rel] = lines
        for name, n in functions(ast.parse(text)).items():
            if n > function_lines:
                funcs[f"{rel}::{name}"] = n
    return modules, funcs


def main() -> int:
    modules, funcs = oversized()
    print(f"modules over {MODULE_LINES} lines: {len(modules)}")
    for name, n in sorted(modules.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {name}")
    print(f"functions over {FUNCTION_LINES} lines: {len(funcs)}")
    for name, n in sorted(funcs.items(), key=lambda kv: -kv[1]):
        print(f"  {n:5d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
