"""The runner: suites become one graph (data -> base models -> adversarial sets -> fine-tuned models ->
evaluations, benchmark.graph) that an executor runs (benchmark.executor: in this process by default, or on Ray),
every node cached in a store under a key that hashes everything that determines it.

Keys: every key carries a hash of the data's pixels and labels, the versions of the libraries that can change a
number, and the kind of device (and on a CPU the thread count). Besides, a base model hashes its suite entry
(defaults filled in) and its precision; a fine-tune its entry, its parent's weights hash and its adversarial
set's hash; an adversarial set its attack's resolved parameters (`Attack.describe()`, defaults included), the
parent's weights, the image indices and the attack batch; an evaluation the model's weights, the attack's resolved
parameters, the seed, its image indices and the attack batch. Code is not in the keys: every stored record
carries the manifest of the code its computation ran (benchmark.fingerprint), and is served only while that code
is unchanged. So a rerun after an edit of an attack re-runs that attack's evaluations and adversarial sets and
nothing upstream, an edit of a report-only function re-runs nothing, and a training checkpoint is resumed only
by the code that wrote it. A node being computed is claimed in the store (Store.claim): a second run over the same
store waits for it rather than computing it again. A rerun reuses what finished; kill -9 loses at most the nodes
in flight, and for base training only the epochs since its last checkpoint (at most about a minute's work).
Several suites in one command share the store, and a node they share runs once.

A loaded model (benchmark.sources) hashes its checkpoint file's sha256 (not its path) and its builder with the
code that building it ran; an in-memory module its weights and the source of its classes.

Random draws: training follows the recipe's seed; an attack's draws follow the evaluation seed and each image's
position (adapters.rng), never the batch; the attack batch can still change rounding, so keys carry it.

Nodes are pure functions of their suite's context (`Work.context()`) and their dependencies' values, so an
executor may run them in any process that sees the store; the driver writes results.json and the report.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import torch

from adapters import get_attack
from adapters.base import exact_fp32
from benchmark import data as datasets
from benchmark import env, evaluate, examples, fingerprint, models, preflight, report, sources
from benchmark.errors import UserError
from benchmark.executor import Executor, LocalExecutor
from benchmark.graph import Node, Outcome, RunFailed
from benchmark.store import Store, atomic_json, tensors_hash
from benchmark.suite import AttackSpec, ModelSpec, Suite, check_sizes, digest, load
from benchmark.train import Checkpoint, Schedule, fit, predict


@dataclass(frozen=True)
class Evaluation:
    model: str
    attack: AttackSpec
    seed: int
    size: int  # the largest evaluation size: smaller ones are its prefixes


@dataclass
class Context:
    """One suite's context in the process that computes its nodes (built by Work.context())."""
    suite: Suite
    data: datasets.Dataset
    device: torch.device
    store: Store
    versions: dict[str, str]
    model_info: dict[str, dict] = field(default_factory=dict)  # the models this process's nodes depend on
    loaded_sources: dict[str, sources.Loaded] = field(default_factory=dict)  # models loaded, not trained
    threads: int = field(default_factory=torch.get_num_threads)
    _loaded: dict[str, torch.nn.Module] = field(default_factory=dict)

    def made_with(self, node: str) -> dict[str, Any]:
        """What every artefact key carries besides its own inputs: the data, the libraries that can change this
        kind of node's numbers (env.NUMERIC: an ART upgrade re-runs attacks, not training), the kind of device
        (CPU and CUDA kernels round differently) and on a CPU the thread count (oneDNN's convolutions round
        differently with another: a key never serves a number computed otherwise)."""
        return {"data": self.data.identity["pixels"], "versions": env.numeric_versions(self.versions, node),
                "device": self.device.type, **({"cpu_threads": self.threads} if self.device.type == "cpu" else {})}


@dataclass
class Work:
    """A suite's share of a command, as every worker needs it (benchmark.graph.Work): its data on the CPU, its
    loaded models, the store's folder and the driver's library versions and code, which a worker checks."""
    suite: Suite
    data: datasets.Dataset
    device: torch.device
    store_root: Path
    versions: dict[str, str]
    loaded_sources: dict[str, sources.Loaded]
    code: str  # fingerprint.packages() on the driver
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def by_value(self) -> list:
        return sources.unimportable_modules(self.loaded_sources.values())

    def context(self) -> Context:
        here = env.versions()
        differ = [f"{k} {here[k]} (driver {self.versions[k]})" for k in env.NUMERIC["attack"]
                  if here[k] != self.versions[k]]
        if differ or fingerprint.packages() != self.code:
            raise RuntimeError(f"worker {platform.node()} has other {'code' if not differ else ', '.join(differ)} "
                               "than the driver: every worker needs the driver's environment and checkout")
        return Context(self.suite, self.data.to(self.device), self.device, Store(self.store_root), self.versions,
                       loaded_sources=self.loaded_sources)


def run_suite(suite: Suite | str | Path, out: str | Path | None = None, *, device: str = "auto",
              data_dir: str | Path | None = None, executor: Executor | None = None, store: str | Path | None = None,
              write_report: bool = True, models: dict[str, torch.nn.Module] | None = None):
    """Run every cell of a suite; return a pandas DataFrame with one row per (model, attack, seed, size).

    models: modules built in Python ({"mine": net}, [0,1] images in, logits out): a name the suite declares
    `provided = true` takes its module; any other joins the suite's models and its matrix.
    executor: LocalExecutor() (default) or benchmark.ray_executor.RayExecutor(...); store: the artefact folder
    (default OUT/artefacts, or runs/artefacts without `out`)."""
    return run_suites([suite], [out] if out is not None else None, device=device, data_dir=data_dir,
                      executor=executor, store=store, write_report=write_report, models=models)[0]


def run_suites(suites: list[Suite | str | Path], outs: list[str | Path] | None = None, *, device: str = "auto",
               data_dir: str | Path | None = None, executor: Executor | None = None,
               store: str | Path | None = None, write_report: bool = True,
               models: dict[str, torch.nn.Module] | None = None):
    """Several suites as one graph over one store: a node two suites share (same data, recipe, attack...) runs
    once. One results folder per suite (default runs/<name>). The store defaults to runs/artefacts, to
    OUT/artefacts for one suite given its folder, and to artefacts/ in the folder that holds several suites'.
    Returns one DataFrame per suite. A failing node raises graph.RunFailed after every node that does not depend
    on it has finished; the suites it does not touch are written."""
    env.check_device_name(device)
    suites = [sources.with_provided(s if isinstance(s, Suite) else load(s), models or {}) for s in suites]
    if outs:
        outs = [Path(o) for o in outs]
        holder = outs[0] if len(outs) == 1 else Path(os.path.commonpath([o.resolve() for o in outs]))
    else:
        outs, holder = [Path("runs") / s.name for s in suites], Path("runs")
    if len({o.resolve() for o in outs}) < len(outs):
        raise UserError("two suites would write to one results folder: give them different names")
    store_root = Path(store) if store else holder / "artefacts"
    for folder in (*outs, store_root):
        preflight.check_writable(folder)
    executor = executor or LocalExecutor()
    torch_device = executor.device(device)  # before the data: `--device cuda` without a GPU costs no download
    started = time.perf_counter()
    loaded_data: dict[str, datasets.Dataset] = {}
    prepared = []  # everything that can refuse bad input, before anything is written
    for suite in suites:
        data = prepare_data(suite, data_dir, loaded_data)
        prepared.append((data, sources.load_all(suite, len(data.classes), data.test_x[:1].float() / 255,
                                                models or {})))
    claims = [preflight.Claim(out) for out in outs]  # held until this call returns: another run on one refuses
    versions, code = env.versions(), fingerprint.packages()
    works = [Work(suite, data, torch_device, store_root.resolve(), versions, loaded, code)  # workers' cwd differs
             for suite, (data, loaded) in zip(suites, prepared)]
    data_seconds = time.perf_counter() - started
    for work in works:
        ctx = Context(work.suite, work.data, torch_device, Store(work.store_root), versions)
        note = preflight.heavy_training(work.suite, work.data, torch_device, lambda spec: ctx.store.get_json(
            "model-info", base_key(ctx, spec)) is not None)
        if note:
            print(note, file=sys.stderr)
    nodes, plans = plan_graph(works)
    graph_started = time.perf_counter()
    outcome = executor.run(nodes, {w.token: w for w in works})
    graph_seconds = time.perf_counter() - graph_started
    failed, skipped = outcome.failures(nodes)
    lost = {n.id for n in failed + skipped}
    described = executor.describe()
    frames, written = [], []
    for work, plan, out in zip(works, plans, outs):
        if lost.isdisjoint(plan.node_ids):
            frames.append(write_run(work, plan, outcome, out, described,
                                    {"data": data_seconds, "graph": graph_seconds}, started, write_report))
            written.append(str(out))
    for claim in claims:
        claim.release()
    if failed:
        raise RunFailed(failed, skipped, outcome.errors, written=written)
    return frames


@dataclass
class Plan:
    """One suite's nodes: its models' node ids and its evaluations with theirs."""
    models: dict[str, str]
    evaluations: list[tuple[Evaluation, str]]
    node_ids: set[str]
    stages: dict[str, str]  # node id -> timing label


def plan_graph(works: list[Work]) -> tuple[list[Node], list[Plan]]:
    """Every suite's nodes in one graph. A node's id hashes what determines it with its dependencies' ids in
    place of their values (weights are known only once computed), so equal nodes of two suites are one."""
    nodes: dict[str, Node] = {}
    plans = []

    def add(node: Node, plan: Plan) -> str:
        nodes.setdefault(node.id, node)
        plan.node_ids.add(node.id)
        plan.stages[node.id] = node.stage
        return node.id

    for work in works:
        suite, plan = work.suite, Plan({}, [], set(), {})
        # Besides its own inputs, what a node's result depends on within one command (versions and code are one).
        same = {"data": work.data.identity["pixels"], "device": work.device.type}
        batch = {"attack_batch": suite.eval_batch_size}  # rounding can follow the attack batch
        label = f"{suite.name}: " if len(works) > 1 else ""  # failures name the suite when there are several
        for spec in suite.models.values():
            stage, e = f"model:{spec.name}", spec.entry
            if spec.parent is None:
                what = (work.loaded_sources[spec.name].identity if spec.loaded else e)
                node = Node(digest(["model", what, same]), f"{label}{'load' if spec.loaded else 'train'} {spec.name}",
                            stage, work.token, (), partial(base_model_node, name=spec.name))
                plan.models[spec.name] = add(node, plan)
                continue
            parent = plan.models[spec.parent]
            adv = add(Node(digest(["adversarial-set", e, parent, same, batch]),
                           f"{label}perturb {e['images']} for {spec.name}", stage, work.token, (parent,),
                           partial(adversarial_set_node, name=spec.name, parent=parent)), plan)
            plan.models[spec.name] = add(Node(
                digest(["finetune", e, parent, adv, same]), f"{label}fine-tune {spec.name}", stage, work.token,
                (parent, adv), partial(finetune_node, name=spec.name, parent=parent, adversarial_set=adv)), plan)
        size = max(suite.sizes)
        for model in suite.matrix_models:
            for attack_name in suite.matrix_attacks:
                spec = suite.attacks[attack_name]
                for seed in suite.seeds:
                    job = Evaluation(model, spec, seed, size)
                    what = [spec.adapter, build_attack(spec, seed).describe(), seed, size]
                    node = Node(digest(["evaluation", plan.models[model], what, same, batch]),
                                f"{label}{attack_name} on {model} (seed {seed})", f"attack:{attack_name}", work.token,
                                (plan.models[model],), partial(evaluation_node, job=job, model=plan.models[model]))
                    plan.evaluations.append((job, add(node, plan)))
        plans.append(plan)
    return list(nodes.values()), plans


def write_run(work: Work, plan: Plan, outcome: Outcome, out: Path, executor: dict, phases: dict[str, float],
              started: float, write_report: bool):
    """A suite's results.json, examples.csv, run.json and report, from the graph's values."""
    import pandas as pd

    suite, data = work.suite, work.data
    model_info = {name: {**{k: v for k, v in outcome.values[node].items() if k != "computed"}, "name": name}
                  for name, node in plan.models.items()}
    jobs = [job for job, _ in plan.evaluations]
    outcomes = [outcome.values[node] for _, node in plan.evaluations]
    rows = summarize(suite, model_info, len(data.classes), jobs, outcomes)
    results = {"suite": suite.raw, "suite_files": suite.chain, "suite_name": suite.name, "suite_hash": suite.hash,
               "profile": suite.profile, "plan": suite.plan(), "data": data.identity, "device": executor["device"], "executor": executor,
               "versions": work.versions, "git_commit": env.git_commit(),
               "models": model_info, "reference": suite.reference, "classes": data.classes, "cells": rows}
    examples.write(out / examples.FILE, jobs, outcomes)  # first: a results.json always has its examples
    atomic_json(out / "results.json", results)
    # data: loading and checks; graph: the executor's wall time for every suite of the command; a stage: the
    # seconds its nodes took where they ran (summed over workers running in parallel).
    timings = {phase: round(seconds, 3) for phase, seconds in phases.items()}
    for node, stage in plan.stages.items():
        timings[stage] = round(timings.get(stage, 0.0) + outcome.seconds.get(node, 0.0), 3)
    timings["total"] = round(time.perf_counter() - started, 3)
    # Nodes computed by this command, and those served from the store (by an earlier run, or by another run
    # over the same store that this one waited for).
    computed = sum(bool(outcome.values[node].get("computed")) for node in plan.node_ids)
    atomic_json(out / "run.json", {"timings_s": timings, "device": results["device"], "executor": executor,
                                   "suite_hash": suite.hash,
                                   "nodes": {"computed": computed, "reused": len(plan.node_ids) - computed}})
    if write_report:
        report.write(out)
    return pd.DataFrame(rows)


def prepare_data(suite: Suite, data_dir, loaded: dict[str, datasets.Dataset] | None = None) -> datasets.Dataset:
    """Load the data (once per source and folder in `loaded`) and check the suite against it before anything is
    written."""
    spec = suite.data
    if data_dir is None and "path" in spec:
        data_dir = suite.path.parent / spec["path"]
    size = (spec.get("train", 5000), spec.get("test", 2000))
    where = repr([spec["source"], str(datasets.resolved(data_dir)) if data_dir else None, size])
    loaded = {} if loaded is None else loaded
    if where not in loaded:
        data = datasets.load(spec["source"], data_dir, synthetic_size=size)
        # The pixels and labels themselves, hashed: what keys carry, so a change of loading code that leaves them
        # as they were recomputes nothing, and one that changes them recomputes everything.
        data.identity = {**data.identity, "pixels": tensors_hash(
            {"train_x": data.train_x, "train_y": data.train_y, "test_x": data.test_x, "test_y": data.test_y})[:24]}
        loaded[where] = data
    data = loaded[where]
    check_sizes(suite, len(data.train_y), len(data.test_y))
    preflight.check_models(suite, data)
    return data


def load_model(ctx: Context, name: str) -> torch.nn.Module:
    """A model of the suite on the device, built once per process; the code that built it counts as run by
    every node that uses it (fingerprint.include)."""
    if name not in ctx._loaded:
        info = ctx.model_info[name]
        root = ctx.suite.root(name)
        with fingerprint.record() as built:
            model = (copy.deepcopy(ctx.loaded_sources[root.name].module) if root.loaded else
                     models.build(root.entry["arch"], mean=root.entry["mean"], std=root.entry["std"],
                                  num_classes=len(ctx.data.classes)))
            model.load_state_dict(ctx.store.get_tensors("models", info["key"], ctx.device))
            model = model.to(ctx.device).eval()
            if ctx.device.type == "cuda":  # the layout cuDNN's fastest convolutions want; attacks stay in fp32
                model = model.to(memory_format=torch.channels_last)
        ctx._loaded[name] = model, built.codes
    model, codes = ctx._loaded[name]
    fingerprint.include(codes)
    return model


# What this process has stored so far, for the line an interrupted run ends with (cli._kept); with the Ray
# executor the workers store, and this stays empty.
KEPT: dict[str, Any] = {"nodes": 0, "checkpoints": {}}


def cached(ctx: Context, kind: str, key: str, compute, *, tensors: str | None = None) -> dict:
    """The record stored under kind/key, while the code that computed it is unchanged (fingerprint.unchanged)
    and, with `tensors`, its tensors are intact; else `compute()` (which writes the tensors and returns the
    record), claimed in the store so that another process wanting it waits, recorded (fingerprint.record) and
    stored with the manifest of the code it ran. The value says whether it was computed here ("computed")."""
    def stored() -> dict | None:
        info = ctx.store.get_json(kind, key)
        if info is None or not fingerprint.unchanged(info.get("code")):
            return None
        return info if tensors is None or ctx.store.get_tensors(tensors, key) is not None else None

    info = stored()
    if info is None:
        with ctx.store.claim(kind, key):
            info = stored()  # another process may have finished it while this one waited
            if info is None:
                with fingerprint.record() as ran:
                    # This function and the OOM fallback shape what is stored but started before the recorder.
                    ran.include({cached.__code__: __name__, evaluate.halving_on_oom.__code__: evaluate.__name__,
                                 datasets.Dataset.__post_init__.__code__: datasets.__name__,
                                 datasets.Dataset.to.__code__: datasets.__name__})  # the data's layout
                    info = compute()
                ctx.store.put_json(kind, key, {**info, "code": ran.manifest()})
                KEPT["nodes"] += 1
                return {**info, "computed": True}
    return {**{k: v for k, v in info.items() if k != "code"}, "computed": False}


# ----------------------------------------------------------------------------------------------- graph nodes
# Each is fn(ctx, values, **its names): values maps dependency node ids to their values (model info dicts,
# adversarial-set records); what it computes goes to the store under its key, and its value is small.

def base_model_node(ctx: Context, values: dict, *, name: str) -> dict:
    """Train (or reuse) a base model, or store a loaded one; its info."""
    spec = ctx.suite.models[name]
    if spec.loaded:
        return _with_source(load_source(ctx, spec), spec)
    key = base_key(ctx, spec)
    return _with_source(cached(ctx, "model-info", key, partial(train_base, ctx, spec, key), tensors="models"), spec)


def base_key(ctx: Context, spec: ModelSpec) -> str:
    return digest({"kind": "model", "entry": spec.entry, **ctx.made_with("model"),
                   "precision": _precision(ctx, True)})[:24]


def adversarial_set_node(ctx: Context, values: dict, *, name: str, parent: str) -> dict:
    """The images a fine-tune trains on, perturbed against its parent: {"key", "info"}."""
    spec = ctx.suite.models[name]
    ctx.model_info[spec.parent] = values[parent]
    key, info = build_adversarial_set(ctx, spec)
    return {"key": key, "info": info, "computed": info.pop("computed")}


def finetune_node(ctx: Context, values: dict, *, name: str, parent: str, adversarial_set: str) -> dict:
    """Fine-tune (or reuse) a model on its adversarial set; its info."""
    spec = ctx.suite.models[name]
    ctx.model_info[spec.parent] = parent_info = values[parent]
    adv = values[adversarial_set]
    key = digest({"kind": "finetune", "entry": spec.entry, "parent": [parent_info["key"], parent_info["weights"]],
                  "adversarial_set": adv["info"]["hash"], **ctx.made_with("model"),
                  "precision": _precision(ctx, False)})[:24]
    info = cached(ctx, "model-info", key, partial(finetune, ctx, spec, key, adv["key"], adv["info"]),
                  tensors="models")
    # Keyed by the images' hash: another attack batch that gave the same images is served the same weights, and
    # the record names the adversarial set this run made.
    return _with_source({**info, "adversarial_set": adv["info"]}, spec)


def evaluation_node(ctx: Context, values: dict, *, job: Evaluation, model: str) -> dict:
    """One evaluation's per-image outcome (evaluate.run_evaluation), reused when its key is stored."""
    ctx.model_info[job.model] = values[model]
    return run_job(ctx, job)


def _with_source(info: dict, spec: ModelSpec) -> dict:
    return {**info, "source": info.get("source") or _recipe_source(spec)}


def load_source(ctx: Context, spec: ModelSpec) -> dict:
    """A loaded model (benchmark.sources) enters the store like a trained one, keyed by what identifies it: the
    checkpoint's sha256 and its builder, or an in-memory module's weights and class source."""
    loaded = ctx.loaded_sources[spec.name]
    key = digest({"kind": "loaded-model", "identity": loaded.identity, **ctx.made_with("model")})[:24]
    return cached(ctx, "model-info", key, lambda: _save_model(
        ctx, key, copy.deepcopy(loaded.module).to(ctx.device).eval(),
        {"name": spec.name, "kind": "loaded", "source": loaded.source}), tensors="models")


def _recipe_source(spec: ModelSpec) -> dict:
    e = spec.entry
    if spec.parent is not None:
        return {"kind": "fine-tune", "from": spec.parent, "attack": e["attack"], "images": e["images"]}
    return {"kind": "trained", "arch": e["arch"], "epochs": e["epochs"], "seed": e["seed"]}


def _precision(ctx: Context, mixed: bool) -> str:
    return "bf16-autocast" if mixed and ctx.device.type == "cuda" else "fp32"


def _save_model(ctx: Context, key: str, model: torch.nn.Module, info: dict) -> dict:
    state = {k: v for k, v in model.state_dict().items()}
    info = {**info, "key": key, "weights": tensors_hash(state), "made_on": env.device_label(ctx.device, ctx.threads),
            "test_acc": float((predict(model, ctx.data.test_x) == ctx.data.test_y).float().mean())}
    ctx.store.put_tensors("models", key, state)  # the record goes in after it (runner.cached)
    return info


def base_split(entry: dict, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A base recipe's (validation, training) indices into the training split: one permutation seeded by the
    recipe's seed, the early-stop validation images first, then the training images (all, or `train_images`)."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(entry["seed"]))
    held = entry["early_stop"]["val_size"] if entry["early_stop"] else 0
    kept = order[held:held + entry["train_images"]] if entry["train_images"] else order[held:]
    return order[:held], kept


def train_base(ctx: Context, spec: ModelSpec, key: str) -> dict:
    e = spec.entry
    torch.manual_seed(e["seed"])
    model = models.build(e["arch"], mean=e["mean"], std=e["std"], num_classes=len(ctx.data.classes)).to(ctx.device)
    val_idx, kept = (i.to(ctx.device) for i in base_split(e, len(ctx.data.train_y)))
    x, y = ctx.data.train_x, ctx.data.train_y
    early = e["early_stop"]
    val = (x[val_idx], y[val_idx]) if early else None
    x, y = x[kept], y[kept]
    # A checkpoint carries the manifest of the code that wrote it: resumed only while that code is unchanged.
    def save(state: dict) -> None:
        ctx.store.put_state("checkpoints", key, {**state, "code": json.dumps(fingerprint.active_manifest())})
        KEPT["checkpoints"][spec.name] = len(state["epochs"])

    checkpoint = Checkpoint(load=lambda: _resumable(ctx.store.get_tensors("checkpoints", key)), save=save)
    history = fit(model, x, y, epochs=e["epochs"], batch_size=e["batch_size"], schedule=Schedule(lr=e["lr"]),
                  seed=e["seed"], augment=e["augment"], val=val, patience=early["patience"] if early else None,
                  checkpoint=checkpoint, desc=f"train {spec.name}")
    KEPT["checkpoints"].pop(spec.name, None)  # the model itself is kept now
    info = _save_model(ctx, key, model, {"name": spec.name, "kind": "base", "history": history.epochs,
                                         "stopped_early": history.stopped_early, "best_epoch": history.best_epoch,
                                         "train_images": len(y), "precision": _precision(ctx, True)})
    ctx.store.drop("checkpoints", key)
    return info


def _resumable(saved: dict | None) -> dict | None:
    if saved is None or not isinstance(saved.get("code"), str):
        return None
    manifest = json.loads(saved["code"])
    if not fingerprint.unchanged(manifest):
        return None
    fingerprint.merge(manifest)  # the epochs before the kill ran that code
    return saved


def finetune_sample(suite: Suite, spec: ModelSpec, n_train: int, n_test: int) -> tuple[torch.Tensor, dict]:
    """The images a fine-tune perturbs and trains on, and where they come from.

    Drawn from their own stream (`sample_seed`, derived from the fine-tune's seed), independent of the evaluation
    subsets (`evaluate.subset`, seeded by the evaluation seed): on the test split each evaluation subset then
    overlaps the sample by about images/n_test of its size at every seed, as the authors' unseeded shuffle did.
    On the training split the sample avoids the base model's early-stop validation images; `seen_by_base` counts
    those of its images the base model trained on."""
    e = spec.entry
    sample_seed = int(digest(["finetune-sample", e["seed"]])[:15], 16)
    if e["split"] == "test":
        pool, validation, trained = torch.arange(n_test), torch.empty(0, dtype=torch.long), None
    elif suite.root(spec.name).loaded:  # no recipe: no validation images to avoid, its training set unknown
        pool, validation, trained = torch.arange(n_train), torch.empty(0, dtype=torch.long), None
    else:
        validation, trained = base_split(suite.root(spec.name).entry, n_train)
        pool = torch.ones(n_train, dtype=torch.bool).index_fill_(0, validation, False).nonzero().squeeze(1)
    idx = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(sample_seed))[:e["images"]]]
    return idx, {"split": e["split"], "images": len(idx), "sample_seed": sample_seed, "pool": len(pool),
                 "validation_excluded": len(validation),
                 "seen_by_base": (0 if e["split"] == "test" else None) if trained is None
                 else int(torch.isin(idx, trained).sum())}


def build_adversarial_set(ctx: Context, spec: ModelSpec) -> tuple[str, dict]:
    """The N images a fine-tune trains on, perturbed by its attack against the parent, with true labels: its
    key and record (keyed by the attack batch that ran: evaluate.halving_on_oom)."""
    e = spec.entry
    parent = ctx.model_info[spec.parent]
    idx = finetune_sample(ctx.suite, spec, len(ctx.data.train_y), len(ctx.data.test_y))[0]  # for the key
    attack_entry = e["attack_spec"]

    def attack():
        return get_attack(attack_entry["adapter"],
                          **{"seed": e["seed"], **{k: v for k, v in attack_entry.items() if k != "adapter"}})

    def compute(batch: int, key: str) -> dict:
        xs, ys = (ctx.data.train_x, ctx.data.train_y) if e["split"] == "train" else (ctx.data.test_x,
                                                                                     ctx.data.test_y)
        dev_idx, perturb = idx.to(ctx.device), attack()
        provenance = finetune_sample(ctx.suite, spec, len(ctx.data.train_y), len(ctx.data.test_y))[1]  # recorded
        adv = evaluate.attack_images(perturb, load_model(ctx, spec.parent), xs[dev_idx], ys[dev_idx], batch,
                                     desc=f"perturb {e['images']} for {spec.name}")
        tensors = {"images": adv, "labels": ys[dev_idx], "indices": idx}
        ctx.store.put_tensors("adversarial-sets", key, tensors)
        return {"hash": tensors_hash(tensors), "attack": e["attack"], "n": len(idx), **provenance,
                "batch_invariant": perturb.batch_invariant, "attack_batch_size": batch}

    def key_at(batch: int) -> str:
        return digest({"kind": "adversarial-set", "adapter": attack_entry["adapter"], "attack": attack().describe(),
                       "parent": [parent["key"], parent["weights"]], "split": e["split"], "indices": idx.tolist(),
                       "attack_batch": batch, **ctx.made_with("attack")})[:24]

    def at(batch: int) -> tuple[str, dict]:
        key = key_at(batch)  # builds the attack for its parameters: once per attempt
        return key, cached(ctx, "adversarial-set-info", key, partial(compute, batch, key), tensors="adversarial-sets")

    return evaluate.halving_on_oom(ctx.suite.eval_batch_size, at, desc=f"perturb {e['images']} for {spec.name}")


def finetune(ctx: Context, spec: ModelSpec, key: str, adv_key: str, adv_info: dict) -> dict:
    e = spec.entry
    adv = ctx.store.get_tensors("adversarial-sets", adv_key, ctx.device)
    tuned = copy.deepcopy(load_model(ctx, spec.parent))
    torch.manual_seed(e["seed"])
    with exact_fp32():  # no bf16 and no TF32: the perturbations it learns from are small
        history = fit(tuned, adv["images"], adv["labels"], epochs=e["epochs"], batch_size=e["batch_size"],
                      schedule=Schedule(e["schedule"], lr=e["lr"], warmup=e["warmup"], final=e["final"]),
                      seed=e["seed"], mixed_precision=False, desc=f"fine-tune {spec.name}")
    return _save_model(ctx, key, tuned, {"name": spec.name, "kind": "finetune", "parent": spec.parent,
                                         "history": history.epochs, "adversarial_set": adv_info,
                                         "finetune_indices": adv["indices"].tolist(), "precision": "fp32"})


def build_attack(spec: AttackSpec, seed: int):
    """The attack of one evaluation: its random draws follow the evaluation seed unless the suite fixes one."""
    return get_attack(spec.adapter, **{"seed": seed, **spec.params})


def evaluation_key(ctx: Context, job: Evaluation, batch: int) -> str:
    """The model's key (its recipe or identity: a factory edit changes it, not always its weights) and weights,
    the attack's resolved parameters, the seed, the images and the attack batch (rounding can follow it)."""
    info, attack = ctx.model_info[job.model], build_attack(job.attack, job.seed)
    return digest({"kind": "evaluation", "model": [info["key"], info["weights"]], "adapter": job.attack.adapter,
                   "params": attack.describe(), "seed": job.seed,
                   "indices": evaluate.subset(len(ctx.data.test_y), job.size, job.seed).tolist(),
                   "attack_batch": batch, **ctx.made_with("attack")})[:24]


def run_job(ctx: Context, job: Evaluation) -> dict:
    """One evaluation's per-image outcome, reused while stored under its key with unchanged code."""
    desc = f"{job.attack.name} on {job.model} (seed {job.seed})"

    def compute(batch: int) -> dict:
        idx = evaluate.subset(len(ctx.data.test_y), job.size, job.seed).to(ctx.device)
        outcome = evaluate.run_evaluation(load_model(ctx, job.model), build_attack(job.attack, job.seed),
                                          ctx.data.test_x[idx], ctx.data.test_y[idx], batch, desc=desc)
        return {**outcome, "indices": idx.tolist()}

    return evaluate.halving_on_oom(ctx.suite.eval_batch_size, lambda batch: cached(
        ctx, "evaluations", evaluation_key(ctx, job, batch), partial(compute, batch)), desc=desc)


def summarize(suite: Suite, model_info: dict[str, dict], num_classes: int, jobs: Iterable[Evaluation],
              outcomes: Iterable[dict]) -> list[dict]:
    rows = []
    for job, outcome in zip(jobs, outcomes):
        tuned_on = set(model_info[job.model].get("finetune_indices", []))
        test_split = suite.models[job.model].entry.get("split") == "test"
        for size in suite.sizes:
            row = {"model": job.model, "attack": job.attack.name, "attack_family": job.attack.family,
                   "adapter": job.attack.adapter, "seed": job.seed, "size": size,
                   "sweep": list(job.attack.sweep) if job.attack.sweep else None,
                   "batch_invariant": outcome.get("batch_invariant", True),
                   "attack_batch_size": outcome["attack_batch_size"],
                   **evaluate.summarize(outcome, size, num_classes)}
            # Images the model was fine-tuned on that it is now evaluated on (the paper's code drew both from
            # the test split).
            row["finetune_overlap"] = (sum(i in tuned_on for i in outcome["indices"][:size])
                                       if test_split else 0)
            rows.append(row)
    return rows
