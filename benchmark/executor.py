"""Executors run a command's graph (benchmark.graph) and say where its numbers are computed.

    executor.device("auto") -> torch.device       # where the nodes compute (CUDA where the workers have GPUs)
    executor.run(nodes, works) -> graph.Outcome   # every node whose dependencies succeeded, failures recorded,
                                                  # where each was computed (Outcome.placement, remote executors)
    executor.describe() -> dict                   # for results.json: kind, device (as the workers name it), ...

`LocalExecutor` (the default) runs the nodes one after another in this process with torch's thread count;
`benchmark.ray_executor.RayExecutor` runs them on a pool of Ray actors, on this machine or over a cluster's
machines (imported only when asked for). Executors are registered by name (`--executor NAME`): `@executor("name")`
on a factory `fn(address=None) -> Executor`, here or in another package's module under the entry-point group
`adv_transfer_bench.executors`. A node that raises fails itself and what depends on it; everything else still runs
and is kept, then the runner reports the failure.
"""
from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from adapters.registry import Registry
from benchmark import env
from benchmark.errors import UserError
from benchmark.graph import Node, Outcome, Work, one_line, order

EXECUTORS = Registry("executor", group="adv_transfer_bench.executors")


def executor(name: str):
    """Register the decorated factory `fn(address: str | None) -> Executor` as `--executor name`."""
    return EXECUTORS.register(name)


class Executor(Protocol):
    def device(self, requested: str) -> torch.device: ...

    def run(self, nodes: list[Node], works: dict[str, Work]) -> Outcome: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Every node in this process, dependencies first, with one progress bar over the graph."""

    def device(self, requested: str) -> torch.device:
        self._device = env.resolve_device(requested)
        return self._device

    def run(self, nodes: list[Node], works: dict[str, Work]) -> Outcome:
        # Built at the start, in the driver: a suite's context checks the code against the driver's, which for
        # this process is the code it already runs (an edit during a run is fingerprint's to catch, per node).
        try:
            contexts: dict[str, Any] = {token: work.context() for token, work in works.items()}
        except RuntimeError as exc:  # here only when files of ours changed since the run started: one line
            raise UserError(f"{exc} (a file of the checkout was edited as the run started; run it again)") from None
        outcome = Outcome()
        bar = tqdm(order(nodes), desc="graph", unit="node", dynamic_ncols=True)
        for node in bar:
            if any(d not in outcome.values for d in node.deps):
                continue  # a dependency failed: Outcome.failures lists this node as not run
            bar.set_postfix_str(node.name, refresh=False)
            started = time.perf_counter()
            try:
                outcome.values[node.id] = node.fn(contexts[node.work], {d: outcome.values[d] for d in node.deps})
            except Exception as exc:  # noqa: BLE001  (any failure of one node; the rest of the graph goes on)
                outcome.errors[node.id] = one_line(exc)
                bar.write(f"failed: {node.name}: {outcome.errors[node.id]}")
            outcome.seconds[node.id] = time.perf_counter() - started
        return outcome

    def describe(self) -> dict[str, Any]:
        threads = torch.get_num_threads()
        return {"kind": "local", "cpu_threads": threads, "device": env.device_label(self._device, threads)}

    def close(self) -> None:
        pass


@executor("local")
def _local(address: str | None = None) -> LocalExecutor:
    if address:
        raise UserError("--address needs --executor ray")
    return LocalExecutor()


@executor("ray")
def _ray(address: str | None = None):
    try:
        from benchmark.ray_executor import RayExecutor
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install '.[ray]' (or pip install ray)") from None
    return RayExecutor(address)
