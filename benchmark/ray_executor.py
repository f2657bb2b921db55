"""Runs a command's graph on Ray: a local Ray instance on this machine, or an existing cluster (`address`).

A pool of Ray actors, one per GPU of the cluster (or one per `cpus_per_task` CPUs where it has none), each pinned
to its resources for the whole run and keeping each suite's context (data on its device, models loaded) between
nodes. The driver hands a node to an idle actor as soon as its dependencies have finished, passing their values
as object references. Actors rather than plain tasks: a task worker that Ray reuses can be handed another GPU
while torch's CUDA context stays bound to the first (which is why Ray runs GPU tasks with max_calls=1, rebuilding
the context per task), and an actor keeps the data resident on its device.

Values (model info, an evaluation's per-image lists) travel through Ray's object store; artefacts through the
shared store (context.Work.store_root), which every worker must be able to read and write. On a CPU an actor runs
torch with `cpus_per_task` threads: oneDNN's convolutions round differently with another thread count, so the
thread count is part of every CPU key, and a run is bit-identical to a local one with the same count.

Needs `pip install .[ray]`. Ray restarts an actor whose process died and retries its node; a node that raises is
not retried.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from benchmark import env
from benchmark.errors import UserError
from benchmark.graph import Node, Outcome, Work, one_line, order


class _Slot:
    """One actor: computes nodes one at a time with the contexts of the suites it has seen."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.threads = threads
        self.contexts: dict[str, Any] = {}

    def execute(self, node: Node, work_box: list, *dep_values: Any) -> tuple[Any, float]:
        # work_box wraps the Work's object reference so that Ray passes the reference, not a copy per node: the
        # Work (the suite's data) is fetched once per actor.
        if node.work not in self.contexts:
            self.contexts[node.work] = ray.get(work_box[0]).context()
        started = time.perf_counter()
        value = node.fn(self.contexts[node.work], dict(zip(node.deps, dep_values)))
        return value, time.perf_counter() - started

    def device_label(self, device: torch.device) -> str:
        return env.device_label(device, self.threads)


class RayExecutor:
    """Ray actors, one per GPU or per `cpus_per_task` CPUs. address: None starts a local instance (all cores, or
    `num_cpus`); "auto" or "HOST:PORT" joins a running cluster (`ray start --head` there first)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: int = 1):
        self.address, self.num_cpus, self.cpus_per_task = address, num_cpus, cpus_per_task
        self._device: torch.device | None = None
        self._labels: list[str] = []
        self._started = self._owned = False

    def _start(self) -> None:
        if self._started:
            return
        if ray.is_initialized():  # the caller's own ray.init() (a notebook, a Ray job): used, and left running
            self._started, self._owned = True, False
            return
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # failures are reported by node, once
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.ERROR,
                                   # one bar, the driver's: workers' own bars would interleave with it
                                   "runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}}
        if self.address is None:
            options["num_cpus"] = self.num_cpus
        try:  # "local": a new instance, never a cluster that RAY_ADDRESS or an earlier `ray start` points at
            ray.init(address=self.address or "local", **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            what = "start Ray" if self.address is None else f"join the Ray cluster at {self.address}"
            raise UserError(f"--executor ray: cannot {what} ({one_line(exc)})") from None
        self._started, self._owned = True, True

    def device(self, requested: str) -> torch.device:
        env.check_device_name(requested)
        self._start()
        gpus = ray.cluster_resources().get("GPU", 0)
        if requested == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU (use --device cpu or auto)")
        self._device = torch.device("cuda" if requested == "auto" and gpus else
                                    requested if requested != "auto" else "cpu")
        return self._device

    def _gpu(self) -> bool:
        return self._device is not None and self._device.type == "cuda"

    def _pool(self, wanted: int) -> tuple[int, Any]:
        """How many actors (one per GPU, or per `cpus_per_task` CPUs, of the cluster; an actor whose resources
        other jobs hold starts when they are freed) and how to make one."""
        resources = ray.cluster_resources()
        size = int(resources.get("GPU", 0)) if self._gpu() else int(resources.get("CPU", 1)) // self.cpus_per_task
        actor = ray.remote(_Slot).options(max_restarts=3, max_task_retries=3, **self._actor_resources())
        return max(1, min(size, wanted)), lambda: actor.remote(self._threads())

    def _actor_resources(self) -> dict[str, int]:
        return {"num_gpus": 1, "num_cpus": 1} if self._gpu() else {"num_cpus": self.cpus_per_task}

    def _threads(self) -> int:
        return 1 if self._gpu() else self.cpus_per_task

    def run(self, nodes: list[Node], works: dict[str, Work]) -> Outcome:
        if self._device is None:
            self.device("auto")
        for work in works.values():
            for module in work.by_value:
                ray.cloudpickle.register_pickle_by_value(module)
        boxes = {token: [ray.put(work)] for token, work in works.items()}
        nodes = order(nodes)
        size, new_slot = self._pool(len(nodes))
        slots = [new_slot() for _ in range(size)]
        try:
            return self._schedule(nodes, slots, new_slot, boxes)
        finally:  # also on Ctrl-C or an error: no actor outlives the run in a session the caller owns
            for slot in slots:
                ray.kill(slot)

    def _schedule(self, nodes: list[Node], slots: list, new_slot, boxes: dict[str, list]) -> Outcome:
        labels = [s.device_label.remote(self._device) for s in slots]
        waiting = {n.id: {d for d in n.deps} for n in nodes}
        dependents: dict[str, list[Node]] = {n.id: [] for n in nodes}
        for node in nodes:
            for dep in node.deps:
                dependents[dep].append(node)
        ready = [n for n in nodes if not n.deps]
        refs: dict[str, Any] = {}
        running: dict[Any, tuple[Node, Any]] = {}
        idle = list(slots)
        outcome = Outcome()
        with tqdm(total=len(nodes), desc="graph (ray)", unit="node", dynamic_ncols=True) as bar:
            while ready or running:
                while ready and idle:
                    node, slot = ready.pop(0), idle.pop()
                    refs[node.id], timing = slot.execute.options(num_returns=2).remote(
                        node, boxes[node.work], *[refs[d] for d in node.deps])
                    running[timing] = (node, slot)
                (finished,), _ = ray.wait(list(running), num_returns=1)
                node, slot = running.pop(finished)
                idle.append(slot)
                try:
                    outcome.seconds[node.id], outcome.values[node.id] = ray.get([finished, refs[node.id]])
                except Exception as exc:  # noqa: BLE001  (the node's failure; what depends on it never runs)
                    if isinstance(exc, ray.exceptions.RayActorError):  # its node killed it past its restarts
                        idle.remove(slot)
                        idle.append(new_slot())
                        slots.append(idle[-1])
                    outcome.errors[node.id] = _cause(exc)
                    bar.write(f"failed: {node.name}: {outcome.errors[node.id]}")
                else:
                    for after in dependents[node.id]:
                        waiting[after.id].discard(node.id)
                        if not waiting[after.id]:
                            ready.append(after)
                bar.set_postfix_str(node.name, refresh=False)
                bar.update()
        started, _ = ray.wait(labels, num_returns=len(labels), timeout=0)  # actors that never started: no label
        self._labels = sorted({label for label in map(_value_or_none, started) if label is not None})
        return outcome

    def describe(self) -> dict[str, Any]:
        self._start()
        resources = ray.cluster_resources()
        return {"kind": "ray", "address": self.address or "local", "ray": ray.__version__,
                "cluster_cpus": resources.get("CPU", 0), "cluster_gpus": resources.get("GPU", 0),
                "actor_resources": self._actor_resources(),
                "cpu_threads": None if self._gpu() else self._threads(),
                "device": " + ".join(self._labels) or ("cuda" if self._gpu() else
                                                        env.device_label(self._device, self.cpus_per_task))}

    def close(self) -> None:
        if self._started and self._owned:
            ray.shutdown()
        self._started = False


def _value_or_none(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError:
        return None


def _cause(exc: BaseException) -> str:
    """The node's own exception in one line (RayTaskError wraps it with the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return one_line(cause)
    return one_line(exc)[:300]  # Ray's own errors carry long diagnostics
