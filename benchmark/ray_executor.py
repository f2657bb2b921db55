"""Runs a command's graph on Ray: a local Ray instance on this machine, or an existing cluster (`address`).

A pool of Ray actors, one per GPU of the cluster (or one per `cpus_per_task` CPUs where it has none), each pinned
to its resources for the whole run and keeping each suite's context (data on its device, models loaded) between
nodes. The driver hands a node to an idle actor as soon as its dependencies have finished, passing their values
as object references. Actors rather than plain tasks: a task worker that Ray reuses can be handed another GPU
while torch's CUDA context stays bound to the first (which is why Ray runs GPU tasks with max_calls=1, rebuilding
the context per task), and an actor keeps the data resident on its device.

Values (model info, an evaluation's per-image lists) travel through Ray's object store, a finished node's value
put again by the driver so that it outlives the Ray node that computed it; artefacts through the shared store
(context.Work.store_root), which every worker must see at the same path, readable and writable. Before any node
runs, every actor reads a token the driver wrote into the store's folder and writes one back that the driver
reads: an actor that sees another folder, none, or cannot write there is refused in one line (UserError). On a
CPU an actor runs torch with `cpus_per_task` threads: oneDNN's convolutions round differently with another thread
count, so the thread count is part of every CPU key, and a run is bit-identical to a local one with the same count
(on one machine or across a cluster's machines of one CPU model). Where each node was computed (Ray node, host,
GPU ids) is in Outcome.placement, and so in each suite's run.json.

Failures. A node that raises fails, and is not retried. An actor whose process dies (kill -9, the OOM killer) is
replaced and its node runs again, RETRIES times at most. A Ray node that leaves the cluster (its machine lost)
takes its actors with it: their nodes run again on the other actors, not counted against RETRIES, and a
replacement actor starts wherever the cluster has room (a node that joins later included). What finished is not
lost or recomputed: its value is on the driver and its artefacts in the store. When no node that could host an
actor is left (every worker node gone), each node not finished fails with NO_NODE and the run ends with
RunFailed's one line (exit 1); everything finished stays in the store, and a rerun resumes from it.

Needs `pip install .[ray]`.
"""
from __future__ import annotations

import logging
import os
import platform
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm.auto import tqdm

from benchmark import env
from benchmark.errors import UserError
from benchmark.graph import Node, Outcome, Work, one_line, order
from benchmark.store import atomic_write

RETRIES = 3  # a node whose worker process dies more often than this (on a node that stays) fails
# Every worker node gone: each node not finished fails with this line, the run ends with RunFailed (exit 1).
NO_NODE = "no Ray node that can run it is left: every node with {need} has left the cluster"
STARTUP_S = 120.0  # how long the start-up check waits for the first actors (longer: they start as room frees)
POLL_S = 2.0  # while only waiting for actors to start: how often the driver checks the cluster can still host one
PROBE = ".ray-store-probe-"  # the start-up token files in the store's folder (removed after the run)


class _Slot:
    """One actor: computes nodes one at a time with the contexts of the suites it has seen."""

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        self.threads = threads
        self.contexts: dict[str, Any] = {}

    def where(self, probe: tuple[list[str], str] | None) -> dict[str, Any]:
        """Where this actor runs: its Ray node, host and GPU ids (Ray's assignment, without touching CUDA); with
        `probe` (the store folders and the driver's token) also what is wrong with its view of the store, or
        None."""
        context = ray.get_runtime_context()
        here = {"ray_node": context.get_node_id(), "host": platform.node(), "gpus": list(ray.get_gpu_ids())}
        actor = context.get_actor_id()
        return {**here, "actor": actor, "store_problem": _store_problem(*probe, actor) if probe else None}

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


def _store_problem(roots: list[str], token: str, actor: str) -> str | None:
    """What keeps this worker from sharing the driver's store folders, in words, or None: it reads the driver's
    token there and writes its own reply beside it (which the driver then looks for)."""
    for root in roots:
        try:
            seen = (Path(root) / f"{PROBE}{token}").read_text()
        except OSError as exc:
            return f"cannot read the token the driver wrote into {root} ({exc.strerror or exc})"
        if seen != token:
            return f"reads another token in {root}: it is another folder than the driver's"
        try:
            (Path(root) / f"{PROBE}{token}-{actor}").write_text(token)
        except OSError as exc:
            return f"cannot write into {root} ({exc.strerror or exc})"
    return None


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
        # No restart by Ray: the driver replaces a dead actor itself, wherever the cluster has room (Ray would
        # wait for room on the lost node's terms, and its retried node with it).
        actor = ray.remote(_Slot).options(max_restarts=0, max_task_retries=0, **self._actor_resources())
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
        need = {"GPU": 1, "CPU": 1} if self._gpu() else {"CPU": self.cpus_per_task}
        # The store's folders (context.Work.store_root; a stand-in Work may have none): every actor checks them.
        roots = sorted({str(w.store_root) for w in works.values() if getattr(w, "store_root", None) is not None})
        pool = _Pool(new_slot, roots, need, self._device)
        try:
            pool.start(size)
            return self._schedule(nodes, pool, boxes)
        finally:  # also on Ctrl-C or an error: no actor outlives the run in a session the caller owns
            self._labels = pool.close()

    def _schedule(self, nodes: list[Node], pool: "_Pool", boxes: dict[str, list]) -> Outcome:
        waiting = {n.id: {d for d in n.deps} for n in nodes}
        dependents: dict[str, list[Node]] = {n.id: [] for n in nodes}
        for node in nodes:
            for dep in node.deps:
                dependents[dep].append(node)
        users = {n.id: len(dependents[n.id]) for n in nodes}  # dependents not finished: a value's ref is kept
        ready = [n for n in nodes if not n.deps]
        refs: dict[str, Any] = {}
        running: dict[Any, tuple[Node, Any, Any]] = {}  # a node's seconds ref -> (node, actor, its value ref)
        deaths: Counter = Counter()
        outcome = Outcome()
        with tqdm(total=len(nodes), desc="graph (ray)", unit="node", dynamic_ncols=True) as bar:
            def finish(node: Node, error: str | None = None) -> None:
                if error is not None:  # the node's failure; what depends on it never runs
                    outcome.errors[node.id] = error
                    bar.write(f"failed: {node.name}: {error}")
                for dep in node.deps:
                    users[dep] -= 1
                    if not users[dep]:
                        refs.pop(dep, None)
                bar.set_postfix_str(node.name, refresh=False)
                bar.update()

            while ready or running:
                while ready and pool.idle:
                    node, actor = ready.pop(0), pool.idle.pop()
                    value, seconds = actor.execute.options(num_returns=2).remote(
                        node, boxes[node.work], *[refs[d] for d in node.deps])
                    running[seconds] = (node, actor, value)
                if not running and not pool.starting:  # no actor is left, none is coming
                    for node in ready:
                        finish(node, pool.why_none())
                    break
                done, _ = ray.wait([*running, *pool.starting], num_returns=1, timeout=POLL_S)
                if not done:
                    if ready and not running and not pool.can_host():
                        for node in ready:
                            finish(node, pool.why_none())
                        break
                    continue
                if done[0] in pool.starting:  # an actor that started late, or a replacement
                    note = pool.started(done[0])
                    if note:
                        bar.write(note)
                    continue
                node, actor, value = running.pop(done[0])
                try:
                    outcome.seconds[node.id], outcome.values[node.id] = ray.get([done[0], value])
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    where, node_left = pool.lost(actor)
                    deaths[node.id] += not node_left  # a lost machine is not the node's fault
                    if deaths[node.id] <= RETRIES:
                        ready.insert(0, node)
                        how = "left with its Ray node" if node_left else "died"
                        bar.write(f"{node.name}: its worker on {where} {how}; running it again")
                        continue
                    finish(node, _cause(exc))
                except Exception as exc:  # noqa: BLE001  (the node's own failure; its actor goes on)
                    pool.idle.append(actor)
                    finish(node, _cause(exc))
                else:
                    pool.idle.append(actor)
                    outcome.placement[node.id] = {"node": node.name, **pool.where[actor]}
                    if users[node.id]:  # the driver's copy: the computing node may leave the cluster
                        refs[node.id] = ray.put(outcome.values[node.id])
                    for after in dependents[node.id]:
                        waiting[after.id].discard(node.id)
                        if not waiting[after.id]:
                            ready.append(after)
                    finish(node)
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


class _Pool:
    """A run's actors: those starting (their start-up report awaited), the idle ones, and where each runs. Every
    actor reports its Ray node, host and GPUs, and checks the store's folders, before it is handed a node."""

    def __init__(self, make, roots: list[str], need: dict[str, int], device: torch.device):
        self.make, self.roots, self.need, self.device = make, roots, need, device
        self.token = uuid.uuid4().hex
        self.actors: list = []  # every actor made: killed at the end
        self.starting: dict[Any, Any] = {}  # its report's ref -> actor
        self.idle: list = []
        self.where: dict[Any, dict] = {}  # actor -> {"ray_node", "host", "gpus"}
        self.labels: list = []
        self.failure: str | None = None  # why the last actor that could not start did not

    def start(self, size: int) -> None:
        """The first actors, and the store checked from each before any node runs: a worker that does not share
        the driver's store folder, or cannot start, refuses the run in one line (UserError). Actors that have no
        room yet (other jobs hold it) start later and are checked then (one that fails is left out, said in one
        line)."""
        for root in self.roots:
            Path(root).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(root) / f"{PROBE}{self.token}", self.token.encode())
        for _ in range(size):
            self.add()
        reports, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=STARTUP_S)
        for ref in reports:
            problem = self.started(ref)
            if problem:
                raise UserError(problem)

    def add(self) -> None:
        actor = self.make()
        self.actors.append(actor)
        self.starting[actor.where.remote((self.roots, self.token) if self.roots else None)] = actor

    def started(self, ref) -> str | None:
        """An actor's start-up report: it joins the idle actors, or the line that says why it cannot work."""
        actor = self.starting.pop(ref)
        try:
            where = ray.get(ref)
        except ray.exceptions.RayError as exc:  # it died starting: its node left, or it cannot start there
            self.failure = _cause(exc)
            return (f"a Ray actor could not start ({self.failure}); every Ray node needs the driver's checkout "
                    "and environment")
        actor_id, problem = where.pop("actor"), where.pop("store_problem")
        if problem is None and self.roots and not all(
                (Path(root) / f"{PROBE}{self.token}-{actor_id}").is_file() for root in self.roots):
            problem = "writes into a folder at that path that the driver does not see"
        if problem:
            ray.kill(actor)
            return (f"the store {self.roots[0]}: the Ray worker on {where['host']} (Ray node "
                    f"{where['ray_node'][:12]}) {problem}; every Ray node must see the store at the same path, "
                    "readable and writable (a shared filesystem mounted alike on every machine; --store names it)")
        self.where[actor] = where
        self.labels.append(actor.device_label.remote(self.device))
        self.idle.append(actor)
        return None

    def lost(self, actor) -> tuple[str, bool]:
        """An actor died: it and (where its Ray node left the cluster) the idle actors on that node are replaced,
        each replacement starting where the cluster has room. Where it ran, and whether its node left."""
        where = self.where.pop(actor, {})
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        node_left = where.get("ray_node") not in alive
        gone = [actor] + ([a for a in self.idle if self.where[a]["ray_node"] not in alive] if node_left else [])
        for dead in gone:
            if dead in self.idle:
                self.idle.remove(dead)
                self.where.pop(dead)
            ray.kill(dead)
            self.add()
        return f"{where.get('host', '?')} (Ray node {where.get('ray_node', '?')[:12]})", node_left

    def can_host(self) -> bool:
        """Whether a Ray node alive in the cluster has the resources of one actor (free or not)."""
        return any(n["Alive"] and all(n["Resources"].get(k, 0) >= v for k, v in self.need.items())
                   for n in ray.nodes())

    def why_none(self) -> str:
        if not self.can_host():
            return NO_NODE.format(need=" and ".join(f"{v} {k}" for k, v in self.need.items()))
        return f"no Ray actor could start ({self.failure or 'none started'})"

    def close(self) -> list[str]:
        """Every actor killed, the token files removed; the device labels of the actors that started."""
        started, _ = ray.wait(self.labels, num_returns=len(self.labels), timeout=0)
        labels = sorted({label for label in map(_value_or_none, started) if label is not None})
        for actor in self.actors:
            ray.kill(actor)
        for root in self.roots:
            for path in Path(root).glob(f"{PROBE}{self.token}*"):
                path.unlink(missing_ok=True)
        return labels


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
