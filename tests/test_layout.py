"""The layout the README's Layout section describes: no module-level import cycle among our modules, and the
attack adapters never import the benchmark (they are the lower layer)."""
from __future__ import annotations

import ast
from collections import defaultdict

from conftest import REPO


def _module_imports() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for package in ("benchmark", "adapters") for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        for node in ast.parse(path.read_text()).body:  # module level: what importing the module imports
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return {name: graph[name] for name in files}


def test_no_import_cycle():
    graph, state, cycles = _module_imports(), {}, []

    def visit(name, trail):
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_adapters_never_import_the_benchmark():
    graph = _module_imports()
    assert {name: sorted(t for t in targets if t.startswith("benchmark"))
            for name, targets in graph.items() if name.startswith("adapters")} == \
        {name: [] for name in graph if name.startswith("adapters")}
