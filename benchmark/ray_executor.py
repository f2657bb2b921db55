"""Runs a command's graph as Ray tasks: a local Ray instance on this machine, or an existing cluster (`address`).

Every node is one task whose dependencies are passed as object references, so Ray schedules it where and when
they are ready; its value (model info, an evaluation's per-image lists) travels through Ray's object store and
its artefacts through the shared store (runner.Work.store), which every worker must be able to read and write.
Each suite's context (its data and loaded models) is put in the object store once and built once per worker
process. A task asks for one GPU when the computation runs on CUDA, else `cpus_per_task` CPUs and as many torch
threads: on a CPU, oneDNN's convolutions round differently with another thread count, so the thread count is part
of every CPU key and a run is bit-identical to a local one with the same count (`torch.set_num_threads`).

Needs `pip install .[ray]`. A worker that dies is retried by Ray (max_retries); a node that raises is not.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from benchmark.errors import UserError
from benchmark.graph import Node, Outcome, Work, one_line, order

_CONTEXTS: dict[str, Any] = {}  # in a worker process: work token -> context, built on its first node


def _execute(node: Node, work_box: list, threads: int, *dep_values: Any) -> tuple[Any, float]:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if node.work not in _CONTEXTS:  # a worker serves one driver (one Ray job): its suites' contexts only
        _CONTEXTS[node.work] = ray.get(work_box[0]).context()
    started = time.perf_counter()
    value = node.fn(_CONTEXTS[node.work], dict(zip(node.deps, dep_values)))
    return value, time.perf_counter() - started


class RayExecutor:
    """Ray tasks, one per node. address: None starts a local instance (all cores, or `num_cpus`); "auto" or
    "HOST:PORT" joins a running cluster (`ray start --head` there first)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: int = 1):
        self.address, self.num_cpus, self.cpus_per_task = address, num_cpus, cpus_per_task
        self._device: torch.device | None = None
        self._started = self._owned = False

    def _start(self) -> None:
        if self._started:
            return
        if ray.is_initialized():  # the caller's own ray.init() (a notebook, a Ray job): used, and left running
            self._started, self._owned = True, False
            return
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.WARNING,
                                   # one bar, the driver's: workers' own bars would interleave with it
                                   "runtime_env": {"env_vars": {"TQDM_DISABLE": "1"}}}
        if self.address is None:
            options["num_cpus"] = self.num_cpus
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            what = "start Ray" if self.address is None else f"join the Ray cluster at {self.address}"
            raise UserError(f"--executor ray: cannot {what} ({one_line(exc)})") from None
        self._started, self._owned = True, True

    def device(self, requested: str) -> torch.device:
        self._start()
        gpus = ray.cluster_resources().get("GPU", 0)
        if requested == "auto":
            self._device = torch.device("cuda" if gpus else "cpu")
        elif requested == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPU (use --device cpu or auto)")
        elif requested not in ("cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {requested!r}")
        else:
            self._device = torch.device(requested)
        return self._device

    def _resources(self) -> dict[str, Any]:
        if self._device is not None and self._device.type == "cuda":
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": self.cpus_per_task}

    def run(self, nodes: list[Node], works: dict[str, Work]) -> Outcome:
        self._start()
        for work in works.values():
            for module in work.by_value:
                ray.cloudpickle.register_pickle_by_value(module)
        boxes = {token: [ray.put(work)] for token, work in works.items()}
        threads = 1 if self._resources().get("num_gpus") else self.cpus_per_task
        task = ray.remote(_execute).options(num_returns=2, **self._resources())
        values, pending = {}, {}
        for node in order(nodes):
            values[node.id], timing = task.remote(node, boxes[node.work], threads,
                                                  *[values[d] for d in node.deps])
            pending[timing] = node
        outcome = Outcome()
        with tqdm(total=len(nodes), desc="graph (ray)", unit="node", dynamic_ncols=True) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                node = pending.pop(ready[0])
                try:
                    outcome.seconds[node.id] = ray.get(ready[0])
                    outcome.values[node.id] = ray.get(values[node.id])
                except (ray.exceptions.RayError, Exception) as exc:  # noqa: BLE001
                    outcome.errors[node.id] = _cause(exc)
                    if not any(d in outcome.errors for d in node.deps):
                        bar.write(f"failed: {node.name}: {outcome.errors[node.id]}")
                bar.set_postfix_str(node.name, refresh=False)
                bar.update()
        return outcome

    def describe(self) -> dict[str, Any]:
        self._start()
        resources = ray.cluster_resources()
        return {"kind": "ray", "address": self.address or "local", "ray": ray.__version__,
                "cluster_cpus": resources.get("CPU", 0), "cluster_gpus": resources.get("GPU", 0),
                "task_resources": self._resources(),
                "cpu_threads": None if self._resources().get("num_gpus") else self.cpus_per_task}

    def close(self) -> None:
        if self._started and self._owned:
            ray.shutdown()
        self._started = False


def _cause(exc: BaseException) -> str:
    """The node's own exception in one line (RayTaskError wraps it with the remote traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return one_line(cause)
    return one_line(exc).splitlines()[0][:300]
