"""The layout the README's Layout section describes: no import cycle among our modules (module-level imports and
those inside functions alike; the packages' `__init__` facades, which only re-export, left out), and the
attack adapters never import the benchmark (they are the lower layer)."""
from __future__ import annotations

import ast
from collections import defaultdict

from conftest import REPO


def _module_imports() -> dict[str, set[str]]:
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for package in ("benchmark", "adapters") for p in (REPO / package).rglob("*.py")}
    facades = {"benchmark", "adapters"}  # re-exports for users: `from benchmark import run_suite`
    files = {name: path for name, path in files.items() if name not in facades}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
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


# The README's Layout order: each module imports (at module level or inside a function) only those before it.
LAYERS = ([f"adapters.{m}" for m in "rng base registry families jsma_origin via_torchattacks via_art catalog".split()]
          + [f"benchmark.{m}" for m in (
              "errors store env data models train evaluate builders code_hashes fingerprint sources extends schema repeats entries "
              "checks suite preflight graph ray_executor executor context nodes transfer minimal plan cost examples stats variance claims "
              "flags report.frames "
              "report report.figures report.summary report.provenance report.training report.paper report.verdicts "
              "report.agreement report.robustness report.matrix report.curves report.per_image report.comparison report.environment runner check perf cli "
              "__main__").split()])


def test_every_module_imports_only_those_before_it_in_the_readme_order():
    graph = _module_imports()
    assert sorted(graph) == sorted(LAYERS)  # a new module takes its place in the list (and the README)
    place = {name: i for i, name in enumerate(LAYERS)}
    assert [(m, t) for m in LAYERS for t in sorted(graph[m]) if place[t] > place[m]] == []
