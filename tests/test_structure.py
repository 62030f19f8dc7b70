"""The package's structure: no import cycle among its own modules (``tools/import_graph.py`` draws the graph from
the source, counting imports inside functions too)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles():
    ig = _import_graph()
    g = ig.graph()
    assert len(g) > 50 and "layerprobe.recorder" in g  # the graph covers the package
    assert ig.cycles(g) == []


def test_the_cycle_finder_finds_a_cycle():
    ig = _import_graph()
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert ig.cycles(g) == [["a", "b", "c"]]
    assert ig.floors({"a": {"b"}, "b": set(), "c": {"a"}}) == 3


def test_every_module_the_design_map_names_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    design = text[text.index("## Design") : text.index("Tests build tiny models in-process")]
    names = set(re.findall(r"`([\w./-]+(?:\.py|/))`", design))
    assert len(names) > 30
    package = ROOT / "layerprobe"
    missing = []
    for name in sorted(names):
        if (ROOT / name).exists() or (package / name).exists():
            continue
        if name.endswith(".py") and "/" not in name and any(package.rglob(name)):  # a module inside a package
            continue
        missing.append(name)
    assert missing == [], f"README's Design section names modules that do not exist: {missing}"
