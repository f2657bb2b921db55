"""The work of one command as a graph: nodes (base models, adversarial sets, fine-tunes, evaluations), each a pure
function of its suite's context and its dependencies' values, run by an executor (benchmark.executor).

    node.fn(ctx, {dep_id: value, ...}) -> value       # a small, picklable value (artefacts go to the store)

A node's id is its plan identity: what determines it, with its dependencies' ids standing for their values, so
equal nodes of two suites in one command are one node and run once. Its `work` names the suite context
(`Work`) that computes it. Executors return an `Outcome`: every value, seconds per node, the failures, and where
each node was computed (a remote executor's worker).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class Node:
    id: str
    name: str  # for people: "train base", "perturb 500 for aft-fgsm", "fgsm on aft-fgsm (seed 1)"
    stage: str  # run.json's timing label: "model:base", "attack:fgsm"
    work: str  # the token of the Work (suite context) that computes it
    deps: tuple[str, ...]
    fn: Callable[[Any, dict[str, Any]], Any]  # a functools.partial of a module-level function: picklable


class Work(Protocol):
    """What a suite's nodes need wherever they run (context.Work): `context()` builds the runner's context for
    this process; `token` tells works apart; `by_value` lists modules a worker cannot import by name (suite-folder
    factories), which a remote executor ships by value."""

    token: str
    by_value: list

    def context(self) -> Any: ...


@dataclass
class Outcome:
    values: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # node id -> one line, for nodes that raised
    # node id -> where it was computed, as the executor names it ({"node": its name, "ray_node": ..., "host": ...,
    # "gpus": [...]} on Ray); empty where everything ran in this process
    placement: dict[str, dict] = field(default_factory=dict)

    def placed(self, node_ids) -> dict[str, dict]:
        """Where each of these nodes was computed, by node name (run.json's `placement`)."""
        return {where["node"]: {k: v for k, v in where.items() if k != "node"}
                for where in sorted((self.placement[n] for n in node_ids if n in self.placement),
                                    key=lambda where: where["node"])}

    def failures(self, nodes: list[Node]) -> tuple[list[Node], list[Node]]:
        """(nodes that failed themselves, nodes not run or failed because something they depend on failed)."""
        failed, skipped, gone = [], [], set()
        for node in order(nodes):
            if any(d in gone for d in node.deps):
                skipped.append(node)
                gone.add(node.id)
            elif node.id in self.errors:
                failed.append(node)
                gone.add(node.id)
        return failed, skipped


def order(nodes: list[Node]) -> list[Node]:
    """Dependencies first (the order nodes were planned in is kept where it allows)."""
    by_id, done, out = {n.id: n for n in nodes}, set(), []

    def visit(node: Node) -> None:
        if node.id in done:
            return
        for dep in node.deps:
            visit(by_id[dep])
        done.add(node.id)
        out.append(node)

    for node in nodes:
        visit(node)
    return out


def without(nodes: list[Node], known: dict[str, Any]) -> list[Node]:
    """The nodes whose value is not `known` (node id -> value: what the store already holds), each of them given
    the known values of its dependencies, so an executor never dispatches a node that would only read its record
    (on Ray: no actor starts for a rerun that computes nothing)."""
    out = []
    for node in nodes:
        if node.id in known:
            continue
        given = {d: known[d] for d in node.deps if d in known}
        out.append(replace(node, deps=tuple(d for d in node.deps if d not in known),
                           fn=partial(_with_values, node.fn, given)) if given else node)
    return out


def _with_values(fn, given: dict[str, Any], ctx, values: dict[str, Any]) -> Any:
    return fn(ctx, {**given, **values})


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunFailed(Exception):
    """A node raised: the nodes that do not depend on it finished and are kept in the store."""

    def __init__(self, failed: list[Node], skipped: list[Node], errors: dict[str, str], written: list[str] = ()):
        first = failed[0]
        more = f"; {len(failed) - 1} more node(s) failed" if len(failed) > 1 else ""
        kept = f"; results written for {', '.join(written)}" if written else ""
        super().__init__(f"node {first.name!r} failed: {errors[first.id]}{more}; {len(skipped)} node(s) that "
                         f"depend on it did not run{kept}; finished nodes are kept and a rerun resumes from them")
