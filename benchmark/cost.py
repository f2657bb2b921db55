"""What a command will cost on this machine, before any work: which nodes of the graph the store already holds,
and the seconds the others will take, by kind (base trainings, fine-tunes, adversarial sets, evaluations).

    estimate = cost.estimate(nodes, works, device)     # Estimate: per kind (count, seconds), nodes stored
    estimate.line()     # "about 2 h 10 min on this cpu (3 base trainings up to 1 h 50 min, ...); 12 of 440 nodes stored"

What is stored: every node is called as the run would call it, on a store that refuses to compute
(`Probe`): a node whose record is there returns it (and its dependents can be looked up in turn), one that would
compute stops before it starts. So the estimate knows what a rerun reuses, after a kill or an edit of the code,
exactly as the run will. A base training interrupted after an epoch checkpoint is counted from that epoch on.

Seconds, from passes measured here on each root architecture and image shape (a training step per image at the
recipe's batch; a forward pass and a forward + backward pass per image), times what each node does: a base
training's epochs x images (up to its epochs: an early stop ends it sooner) plus its validation and test
passes; a fine-tune's; an attack's gradient passes per image from its resolved parameters (`steps`,
`n_queries`, jsma-origin's feature budget; an attack that can stop early per image is counted at its budget,
so iterative attacks are estimated from above), plus the two predictions of every evaluation. Where an earlier
run over the same store measured an attack on the same architecture and device (`rates.json` in the store's
folder), its seconds per image are used instead. Why in-house: no library estimates a graph of training and attack
nodes.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark import models
from benchmark.errors import one_line
from benchmark.graph import Node, order
from benchmark.store import Store, atomic_write

KINDS = {"base_model_node": "base trainings", "finetune_node": "fine-tunes", "adversarial_set_node": "adversarial sets",
         "evaluation_node": "evaluations", "minimal_node": "evaluations", "crafted_node": "evaluations",
         "transfer_node": "evaluations", "probe_node": "probes"}
ORDER = ("base trainings", "loaded models", "fine-tunes", "adversarial sets", "evaluations", "probes")
MEASURED_BATCH = 32  # images per timed pass
PER_NODE_S = 0.01  # what every computed node costs besides its passes: records, checksums, a progress bar (0.01-0.02 s
# measured on the 2-core CPU: an FGSM evaluation of 50 images on the small CNN takes 0.025 s in all)


class Missing(Exception):
    """A node would compute: the store does not hold it."""


class Probe(Store):
    """The run's store, read as the run reads it, that refuses every claim (a claim precedes a computation)."""

    @contextlib.contextmanager
    def claim(self, kind: str, key: str):
        raise Missing(f"{kind}/{key}")
        yield  # noqa: unreachable  (a generator, as Store.claim)


@dataclass
class Estimate:
    seconds: dict[str, float] = field(default_factory=dict)  # kind -> estimated seconds of its uncomputed nodes
    counts: dict[str, int] = field(default_factory=dict)  # kind -> nodes to compute
    stored: int = 0
    total_nodes: int = 0
    device: str = "cpu"
    bounded: set[str] = field(default_factory=set)  # kinds whose estimate is an upper bound (early stop, attacks)
    untimed: dict[str, str] = field(default_factory=dict)  # model -> why it could not be timed (it raised)
    resumed: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (epochs checkpointed, epochs)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        parts = [f"{self.counts[k]} {k if self.counts[k] != 1 else k.removesuffix('s')}"
                 f"{' up to' if k in self.bounded else ''} {duration(self.seconds[k])}"
                 for k in ORDER if self.counts.get(k)]
        stored = (f"{self.stored} of {self.total_nodes} nodes already in the store" if self.stored
                  else "nothing in the store yet")
        untimed = "".join(f"; {name} not timed ({why}), its nodes not counted" for name, why in self.untimed.items())
        untimed += "".join(f"; {name} resumes from its checkpoint after epoch {done} of {epochs}"
                           for name, (done, epochs) in self.resumed.items())
        if not parts:
            return f"cost: nothing to compute ({stored}){untimed}"
        return f"cost: about {duration(self.total)} on this {self.device} ({', '.join(parts)}); {stored}{untimed}"

    def record(self) -> dict[str, Any]:
        return {"total_s": round(self.total, 1), "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "nodes": dict(self.counts), "stored": self.stored, "upper_bounds": sorted(self.bounded),
                "untimed": dict(self.untimed), "resumed": {k: list(v) for k, v in self.resumed.items()}}


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def kind_of(node: Node) -> str:
    return KINDS.get(getattr(node.fn, "func", node.fn).__name__, "other")


def stored_values(nodes: list[Node], contexts: dict[str, Any]) -> dict[str, Any]:
    """The values of the nodes the store holds (module docstring): node id -> value."""
    values: dict[str, Any] = {}
    for node in order(nodes):
        if any(d not in values for d in node.deps):
            continue
        try:
            values[node.id] = node.fn(contexts[node.work], {d: values[d] for d in node.deps})
        except Missing:
            continue
        except Exception:  # noqa: BLE001  (what the run itself will report; the estimate counts it as work)
            continue
    return values


@dataclass
class Passes:
    """Seconds per image on one architecture: a training step at a batch, a forward, a forward + backward."""
    train: dict[int, float] = field(default_factory=dict)
    forward: float = 0.0
    backward: float = 0.0


# What was timed in this process in the last REUSE_S seconds (`validate --cost` then `run`, or several runs of a
# Python session, back to back): key -> (when, Passes), and an attack's per-iteration overhead. Older timings are
# taken again: the machine's load changes. Loaded models are timed each time (another module may carry the name).
REUSE_S = 60.0
_MEASURED: dict[tuple, tuple[float, Passes]] = {}
_OVERHEADS: dict[tuple, tuple[float, float]] = {}


def _recent(memo: dict, key: tuple):
    when, value = memo.get(key, (float("-inf"), None))
    return value if time.monotonic() - when < REUSE_S else None


def measure(arch: str, entry: dict, shape: tuple[int, ...], num_classes: int, device: torch.device,
            batches: set[int], module: torch.nn.Module | None = None) -> Passes:
    """Passes timed here on a freshly built model, or a copy of a loaded `module` (the RNG left as it was)."""
    key = (arch, id(models.ARCHITECTURES.get(arch)), tuple(shape), num_classes, str(device), tuple(sorted(batches)),
           torch.get_num_threads())  # the registered builder itself: a name can be registered anew
    if module is None and (passes := _recent(_MEASURED, key)) is not None:
        return passes
    passes = _measure(arch, entry, shape, num_classes, device, batches, module)
    if module is None:
        _MEASURED[key] = (time.monotonic(), passes)
    return passes


def _measure(arch: str, entry: dict, shape: tuple[int, ...], num_classes: int, device: torch.device,
             batches: set[int], module: torch.nn.Module | None) -> Passes:
    import copy

    with torch.random.fork_rng(devices=[]):
        model = (copy.deepcopy(module) if module is not None else
                 models.build(arch, mean=entry.get("mean", [0.5] * 3), std=entry.get("std", [0.5] * 3),
                              num_classes=num_classes)).to(device)
        out = Passes()
        # Small batches, fewer images the larger they are (a second or two on a CPU, also at 224x224): a smaller
        # batch costs a little more per image, so the estimate errs high.
        small = max(2, round(MEASURED_BATCH * 32 * 32 / math.prod(shape[1:])))
        for batch in sorted(batches):
            n = max(2, min(batch, small))
            x = torch.rand(n, *shape, device=device)
            y = torch.randint(0, num_classes, (n,), device=device)
            optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
            model.train()
            out.train[batch] = _best(lambda: _step(model, optimizer, x, y), device) / n
        model.eval()
        n = small
        x, y = torch.rand(n, *shape, device=device), torch.randint(0, num_classes, (n,), device=device)
        with torch.no_grad():
            out.forward = _best(lambda: model(x), device) / n
        out.backward = _best(lambda: _input_gradient(model, x, y), device) / n
    return out


def _step(model, optimizer, x, y) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _input_gradient(model, x, y) -> None:
    x = x.clone().requires_grad_(True)
    torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), x)


def _best(fn, device: torch.device, repeat: int = 2) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat - 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


class _Unfoolable(torch.nn.Module):
    """Logits that put every image in class 0 whatever it looks like (a gradient flows, and is 0): an attack on it
    never succeeds, so it runs every iteration, and the model costs nothing. What remains is the attack's own
    per-iteration time (its Python loop, its tensor bookkeeping)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.cat([torch.tensor([20.0]), torch.zeros(num_classes - 1)]))

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0.0 * x.flatten(1).mean(1, keepdim=True)


def overhead(spec, shape: tuple[int, ...], num_classes: int, device: torch.device, images: int = 16) -> float:
    """Seconds one iteration of the attack costs per image besides its model's passes: the attack timed on an
    unfoolable model at a small budget (2 and 4 iterations where it has a budget), per iteration and image (its
    fixed part spread over these few images: an estimate from above for the attack's batch)."""
    key = (spec.adapter, json.dumps(spec.params, sort_keys=True, default=str), tuple(shape), num_classes,
           str(device), torch.get_num_threads(), images)
    seconds = _recent(_OVERHEADS, key)
    if seconds is None:
        seconds = _overhead(spec, shape, num_classes, device, images)
        _OVERHEADS[key] = (time.monotonic(), seconds)
    return seconds


def _overhead(spec, shape: tuple[int, ...], num_classes: int, device: torch.device, images: int) -> float:
    from adapters import get_attack

    described = get_attack(spec.adapter, **{"seed": 0, **spec.params}).describe()
    budget = next((k for k in ("steps", "n_queries", "max_iter", "nb_iter", "max_iterations") if k in described),
                  None)
    model = _Unfoolable(num_classes).to(device).eval()
    x = torch.rand(images, *shape, device=device)
    y = torch.zeros(images, dtype=torch.long, device=device)

    def timed(iterations: int | None) -> float:
        params = {**spec.params, "seed": 0, **({budget: iterations} if budget else {})}
        attack = get_attack(spec.adapter, **params)
        started = time.perf_counter()
        try:
            attack(model, x, y)
        except Exception:  # noqa: BLE001  (an attack the stand-in cannot take: its overhead is not known)
            return 0.0
        return time.perf_counter() - started

    with torch.random.fork_rng(devices=[]):
        if budget is None:
            return timed(None) / images
        timed(2)  # warm-up
        return max(0.0, (timed(4) - timed(2)) / 2) / images


def attack_passes(adapter: str, described: dict, features: int) -> tuple[float, float, bool]:
    """(backward passes, forward passes, at most) per image of one attack call, from its resolved parameters."""
    member = adapter.rpartition(".")[2]
    if adapter == "jsma-origin":
        if described.get("mode") == "paper-code":
            return 1, 0, False
        budget = 2 * (math.floor(described.get("gamma", 0.1) * features) // 2)
        steps = described.get("max_steps") or budget // 2
        return 2 * steps, 1, True  # two gradients a step, until the image leaves its class
    if member == "SaliencyMapMethod":
        budget = 2 * (math.floor(described.get("gamma", 1.0) * features) // 2)
        return 2 * (budget // 2), budget // 2, True
    if "n_queries" in described:
        return 0, float(described["n_queries"]) * max(1, described.get("n_restarts", 1)), True
    for key in ("steps", "max_iter", "nb_iter", "max_iterations"):
        if key in described:
            restarts = described.get("n_restarts", described.get("num_random_init", 1)) or 1
            return float(described[key]) * max(1, restarts), 0, member in ("CW", "DeepFool", "FAB")
    return 1, 0, False  # one gradient: FGSM and any attack that says nothing of its iterations


def estimate(nodes: list[Node], works: dict[str, Any], device: torch.device,
             contexts: dict[str, Any] | None = None, threads: int | None = None) -> tuple[Estimate, dict[str, Any]]:
    """The estimate of `nodes` (module docstring) and the values of those already stored. threads: the torch
    thread count of the processes that compute the nodes (a Ray actor's; keys carry it on a CPU), this process's
    by default."""
    from benchmark.context import Context
    from benchmark.nodes import build_attack

    threads = threads or torch.get_num_threads()
    contexts = contexts or {token: Context(w.suite, w.data.to(device), device, Probe(w.store_root), w.versions,
                                           loaded_sources=w.loaded_sources, threads=threads)
                            for token, w in works.items()}
    values = stored_values(nodes, contexts)
    out = Estimate(total_nodes=len(nodes), stored=len(values), device=device.type)
    passes: dict[tuple, Passes] = {}
    history = {token: rates(w.store_root) for token, w in works.items()}

    def passes_of(ctx, model: str) -> Passes | None:
        root = ctx.suite.root(model)
        shape = tuple(ctx.data.test_x.shape[1:])
        arch = root.entry.get("arch") or f"loaded:{root.name}"
        batches = {s.entry["batch_size"] for s in ctx.suite.models.values()
                   if not s.loaded and ctx.suite.root(s.name).name in ([root.name] if root.loaded else [
                       r.name for r in ctx.suite.models.values() if r.entry.get("arch") == arch])}
        key = (arch, shape, len(ctx.data.classes), tuple(sorted(batches)))  # a second suite may train at others
        if key not in passes:
            module = ctx.loaded_sources[root.name].module if root.loaded and root.name in ctx.loaded_sources else None
            if root.loaded and module is None:
                return None
            try:
                passes[key] = measure(key[0], root.entry, shape, key[2], device, batches, module=module)
            except Exception as exc:  # the estimate never stops a run: the nodes that use this model say why
                passes[key] = None
                out.untimed[root.name] = one_line(exc)
        return passes[key]

    overheads: dict[str, float] = {}

    def attack_seconds(ctx, model: str, spec, seed: int, images: int) -> float:
        seen = history[ctx_token[id(ctx)]].get(rate_key(ctx, model, spec, seed))
        if seen is not None:  # measured by an earlier run over this store: seconds per image, predictions included
            return images * seen
        p = passes_of(ctx, model)
        if p is None:
            return 0.0
        features = math.prod(ctx.data.test_x.shape[1:])
        described = build_attack(spec, seed).describe()
        backward, forward, bounded = attack_passes(spec.adapter, described, features)
        if bounded:
            out.bounded.add("evaluations")
        key = json.dumps([spec.adapter, spec.params, list(ctx.data.test_x.shape[1:]), len(ctx.data.classes)],
                         sort_keys=True, default=str)
        if key not in overheads:
            overheads[key] = overhead(spec, tuple(ctx.data.test_x.shape[1:]), len(ctx.data.classes), device)
        iterations = max(backward / 2 if spec.adapter == "jsma-origin" else backward, forward, 1)
        return images * (backward * p.backward + forward * p.forward + iterations * overheads[key])

    ctx_token = {id(c): token for token, c in contexts.items()}
    for node in nodes:
        if node.id in values:
            continue
        kind = kind_of(node)
        ctx = contexts[node.work]
        k = node.fn.keywords
        seconds = PER_NODE_S
        if kind == "base trainings" and ctx.suite.models[k["name"]].loaded:
            kind = "loaded models"  # stored, and scored on the test split
            p = passes_of(ctx, k["name"])
            seconds += len(ctx.data.test_y) * (p.forward if p is not None else 0.0)
        elif kind == "base trainings":
            spec = ctx.suite.models[k["name"]]
            p = passes_of(ctx, spec.name)
            if p is not None:
                e = spec.entry
                held = e["early_stop"]["val_size"] if e["early_stop"] else 0
                images = e["train_images"] or len(ctx.data.train_y) - held
                done = checkpointed_epochs(ctx, spec)
                if done:
                    out.resumed[spec.name] = (done, e["epochs"])
                seconds += (e["epochs"] - done) * (images * p.train[e["batch_size"]] + held * p.forward)
                seconds += len(ctx.data.test_y) * p.forward
                if e["early_stop"]:
                    out.bounded.add(kind)
        elif kind == "fine-tunes":
            spec = ctx.suite.models[k["name"]]
            p = passes_of(ctx, spec.name)
            if p is not None:
                e = spec.entry
                seconds += e["epochs"] * e["images"] * p.train[e["batch_size"]] + len(ctx.data.test_y) * p.forward
        elif kind == "adversarial sets":
            spec = ctx.suite.models[k["name"]]
            attack = ctx.suite.attacks.get(spec.entry["attack"]) or _spec(spec.entry)
            seconds += attack_seconds(ctx, spec.parent, attack, spec.entry["seed"], spec.entry["images"])
        elif kind == "evaluations":
            job = k["job"]
            p = passes_of(ctx, job.model)
            predictions = 2 * job.size * (p.forward if p is not None else 0.0)
            fn = node.fn.func.__name__
            if fn == "transfer_node":
                seconds += predictions
            elif fn == "crafted_node":
                seconds += attack_seconds(ctx, job.source, job.attack, job.seed, job.size)
            else:
                search = job.attack.minimal_eps or {}
                searches = search.get("grid", 1) + 1 + search.get("steps", 0) if fn == "minimal_node" else 1
                known = rate_key(ctx, job.model, job.attack, job.seed) in history[node.work]
                seconds += searches * attack_seconds(ctx, job.model, job.attack, job.seed, job.size) + (
                    0.0 if known else predictions)
        elif kind == "probes":
            p = passes_of(ctx, k["name"])
            if p is not None:
                n = ctx.suite.checks.probes(len(ctx.data.test_y))
                seconds += n * (p.backward + 3 * p.forward)
        out.seconds[kind] = out.seconds.get(kind, 0.0) + seconds
        out.counts[kind] = out.counts.get(kind, 0) + 1
    return out, values


def checkpointed_epochs(ctx, spec) -> int:
    """The epochs a base training's checkpoint in the store holds, where the run would resume from it, else 0."""
    from benchmark.nodes import _resumable, base_key

    try:
        saved = ctx.store.get_tensors("checkpoints", base_key(ctx, spec))
    except Exception:  # noqa: BLE001  (a damaged checkpoint: the run trains from the start, as counted)
        return 0
    # The training node's own test (outside a node's recording, its merge of the manifest does nothing).
    return len(saved.get("epochs", [])) if _resumable(saved) is not None else 0


RATES = "rates.json"  # in the store's folder: seconds per attacked image, per attack, architecture and device


def rate_key(ctx, model: str, spec, seed: int) -> str:
    """What an attack's per-image rate depends on: its resolved parameters but the seed, the attacked model's
    architecture, the device kind and thread count."""
    from benchmark.nodes import build_attack

    root = ctx.suite.root(model)
    described = {k: v for k, v in build_attack(spec, seed).describe().items() if k != "seed"}
    arch = root.entry.get("arch") or root.entry.get("source")
    return json.dumps([spec.adapter, described, arch, list(ctx.data.test_x.shape[1:]), ctx.device.type,
                       ctx.threads], sort_keys=True, default=str)


def rates(store_root) -> dict[str, float]:
    path = Path(store_root) / RATES
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v["seconds"] / v["images"] for k, v in table.items() if isinstance(v, dict) and v.get("images")}


def remember_rates(nodes: list[Node], works: dict[str, Any], seconds: dict[str, float], computed: set[str],
                   device: torch.device, threads: int | None = None) -> None:
    """After a run: the seconds per image of every white-box evaluation it computed, added to the store's
    history, which the next estimate reads (an attack that stops early costs what it cost, not its budget).
    threads: as for `estimate`."""
    from benchmark.context import Context

    by_store: dict[Path, dict[str, dict]] = {}
    for node in nodes:
        if node.id not in computed or getattr(node.fn, "func", None).__name__ != "evaluation_node":
            continue
        work = works[node.work]
        job = node.fn.keywords["job"]
        ctx = Context(work.suite, work.data, device, Store(work.store_root), work.versions,
                      threads=threads or torch.get_num_threads())
        table = by_store.setdefault(Path(work.store_root), {})
        entry = table.setdefault(rate_key(ctx, job.model, job.attack, job.seed), {"seconds": 0.0, "images": 0})
        entry["seconds"] += seconds.get(node.id, 0.0)
        entry["images"] += job.size
    for root, table in by_store.items():
        path = root / RATES
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        for key, entry in table.items():  # the latest run's measurement replaces an older one
            old[key] = entry
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(old, indent=1, sort_keys=True).encode())


def _spec(entry: dict):
    """A fine-tune's attack (its suite entry) as an AttackSpec."""
    from benchmark.entries import AttackSpec

    attack = entry["attack_spec"]
    return AttackSpec(entry["attack"], entry["attack"], attack["adapter"],
                      {k: v for k, v in attack.items() if k != "adapter"})


def measured(nodes: list[Node], seconds: dict[str, float], computed: set[str]) -> dict[str, Any]:
    """The run's own seconds per kind, over the nodes it computed, for run.json beside the estimate."""
    out: dict[str, float] = {}
    counts: dict[str, int] = {}
    for node in nodes:
        if node.id in computed:
            kind = kind_of(node)
            if kind == "base trainings" and node.name.split(": ")[-1].startswith("load "):
                kind = "loaded models"
            out[kind] = out.get(kind, 0.0) + seconds.get(node.id, 0.0)
            counts[kind] = counts.get(kind, 0) + 1
    return {"total_s": round(sum(out.values()), 1), "seconds": {k: round(v, 1) for k, v in out.items()},
            "nodes": counts}
