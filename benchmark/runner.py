"""The runner: suites become one graph (data -> base models -> adversarial sets -> fine-tuned models ->
evaluations, benchmark.graph; planned in benchmark.plan) that an executor runs (benchmark.executor: in this
process by default, or on Ray), every node (benchmark.nodes) cached in a store under a key that hashes
everything that determines it (benchmark.context.cached). This module loads and checks a command's suites, runs
the graph and writes each suite's results.json, examples.csv, run.json and report.

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

import os
import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from benchmark import data as datasets
from benchmark import claims, cost, env, evaluate, examples, fingerprint, preflight, repeats, report, stats
from benchmark.context import Evaluation, Work
from benchmark.errors import UserError, one_line
from benchmark.executor import Executor, LocalExecutor
from benchmark.graph import Outcome, RunFailed, without
from benchmark.plan import Plan, plan_graph
from benchmark.store import atomic_json, tensors_hash
from benchmark.suite import Suite, check_sizes, load, with_provided


def run_suite(suite: Suite | str | Path, out: str | Path | None = None, *, device: str = "auto",
              data_dir: str | Path | None = None, executor: Executor | None = None, store: str | Path | None = None,
              write_report: bool = True, models: dict[str, torch.nn.Module] | None = None, force: bool = False):
    """Run every cell of a suite; return a pandas DataFrame with one row per (model, attack, seed, size).

    models: modules built in Python ({"mine": net}, [0,1] images in, logits out): a name the suite declares
    `provided = true` takes its module; any other joins the suite's models and its matrix.
    executor: LocalExecutor() (default) or benchmark.ray_executor.RayExecutor(...); store: the artefact folder
    (default OUT/artefacts, or runs/artefacts without `out`)."""
    return run_suites([suite], [out] if out is not None else None, device=device, data_dir=data_dir,
                      executor=executor, store=store, write_report=write_report, models=models, force=force)[0]


def run_suites(suites: list[Suite | str | Path], outs: list[str | Path] | None = None, *, device: str = "auto",
               data_dir: str | Path | None = None, executor: Executor | None = None,
               store: str | Path | None = None, write_report: bool = True,
               models: dict[str, torch.nn.Module] | None = None, force: bool = False):
    """Several suites as one graph over one store: a node two suites share (same data, recipe, attack...) runs
    once. One results folder per suite (default runs/<name>). The store defaults to runs/artefacts, to
    OUT/artefacts for one suite given its folder, and to artefacts/ in the folder that holds several suites'.
    Returns one DataFrame per suite. A failing node raises graph.RunFailed after every node that does not depend
    on it has finished; the suites it does not touch are written. A results folder that holds another suite's
    results is refused unless `force`."""
    env.check_device_name(device)
    suites = [with_provided(s if isinstance(s, Suite) else load(s), models or {}) for s in suites]
    if outs:
        outs = [Path(o) for o in outs]
        holder = outs[0] if len(outs) == 1 else Path(os.path.commonpath([o.resolve() for o in outs]))
    else:
        outs, holder = [Path("runs") / s.name for s in suites], Path("runs")
    if len({o.resolve() for o in outs}) < len(outs):
        clash = next(o for o in outs if sum(p.resolve() == o.resolve() for p in outs) > 1)
        names = [str(s.path) for s, o in zip(suites, outs) if o.resolve() == clash.resolve()]
        raise UserError(f"two suites would write to one results folder ({clash}): {' and '.join(names)}; give them "
                        "different names")
    store_root = Path(store) if store else holder / "artefacts"
    for folder in (*outs, store_root):
        preflight.check_writable(folder)
    if not force:
        for suite, out in zip(suites, outs):
            preflight.check_same_suite(out, suite.name, str(suite.path))
    executor = executor or LocalExecutor()
    torch_device = executor.device(device)  # before the data: `--device cuda` without a GPU costs no download
    started = time.perf_counter()
    loaded_data: dict[str, datasets.Dataset] = {}
    prepared = []  # everything that can refuse bad input, before anything is written
    for suite in suites:
        data = prepare_data(suite, data_dir, loaded_data)
        loaded = preflight.load_all(suite, len(data.classes), data.test_x[:1].float() / 255, models or {})
        preflight.check_attacks(suite, len(data.classes), loaded)
        prepared.append((data, loaded))
    claims = [preflight.Claim(out) for out in outs]  # held until this call returns: another run on one refuses
    versions, code = env.versions(), fingerprint.packages()
    works = [Work(suite, data, torch_device, store_root.resolve(), versions, loaded, code)  # workers' cwd differs
             for suite, (data, loaded) in zip(suites, prepared)]
    data_seconds = time.perf_counter() - started
    nodes, plans = plan_graph(works)
    # The workers' thread count (a Ray actor's), which CPU keys carry: the estimate looks up what they would.
    threads = executor.describe().get("cpu_threads") or torch.get_num_threads()
    estimate, stored = announce_cost(nodes, works, torch_device, threads)
    graph_started = time.perf_counter()
    todo = without(nodes, stored)  # what the estimate found stored is not dispatched again
    outcome = executor.run(todo, {w.token: w for w in works}) if todo else Outcome()
    outcome.values = {**stored, **outcome.values}
    graph_seconds = time.perf_counter() - graph_started
    computed = {n for n, v in outcome.values.items() if isinstance(v, dict) and v.get("computed")}
    costs = {"estimate": estimate.record() if estimate is not None else None,
             "measured": cost.measured(nodes, outcome.seconds, computed)}
    cost.remember_rates(nodes, {w.token: w for w in works}, outcome.seconds, computed, torch_device, threads)
    failed, skipped = outcome.failures(nodes)
    lost = {n.id for n in failed + skipped}
    described = executor.describe()
    frames, written = [], []
    by_id = {n.id: n for n in nodes}
    for work, plan, out in zip(works, plans, outs):
        if not any(node in outcome.values for _, node in plan.evaluations):
            continue  # nothing of this suite finished: nothing to write
        failures = [{"node": by_id[n].name, "error": outcome.errors.get(n, "not run: a node it depends on failed")}
                    for n in sorted(lost & plan.node_ids, key=lambda n: by_id[n].name)]
        frames.append(write_run(work, plan, outcome, out, described, {"data": data_seconds, "graph": graph_seconds},
                                started, write_report, costs, failures))
        written.append(str(out) + (f" (without the {len(failures)} node(s) that failed or did not run)"
                                   if failures else ""))
    for claim in claims:
        claim.release()
    if failed:
        raise RunFailed(failed, skipped, outcome.errors, written=written)
    return frames


def announce_cost(nodes, works: list[Work], device,
                  threads: int | None = None) -> "tuple[cost.Estimate | None, dict]":
    """The command's cost estimate (benchmark.cost), one line on stderr before any work, and the values of the
    nodes the store holds (node id -> value); on a CPU, a note naming a CPU-scale suite where base training alone
    would take over HEAVY_S."""
    try:
        estimate, stored = cost.estimate(nodes, {w.token: w for w in works}, device, threads=threads)
    except UserError:
        raise
    except Exception as exc:  # e.g. the workers' GPUs seen from a driver without one: the run itself goes on
        print(f"cost: not estimated on this machine ({one_line(exc)})", file=sys.stderr)
        return None, {}
    print(estimate.line(), file=sys.stderr)
    if device.type == "cpu" and estimate.seconds.get("base trainings", 0.0) > HEAVY_S:
        siblings = [str(w.suite.path.with_name(f"{w.suite.path.stem}-cpu.toml")) for w in works
                    if w.suite.path.with_name(f"{w.suite.path.stem}-cpu.toml").is_file()]
        instead = f"for a CPU try {', '.join(siblings)}" if siblings else "it is meant for a GPU (--device cuda)"
        print(f"note: base training alone is about {estimate.seconds['base trainings'] / 3600:.1f} h on this CPU; "
              f"{instead}; going on", file=sys.stderr)
    return estimate, stored


HEAVY_S = 3600.0  # base training expected to take longer than this on a CPU gets a note before it starts


def estimate_cost(suites: list[Suite | str | Path], *, device: str = "auto", data_dir: str | Path | None = None,
                  store: str | Path | None = None) -> "cost.Estimate":
    """What `run` would cost (benchmark.cost), without running or writing anything: `validate --cost`."""
    suites = [s if isinstance(s, Suite) else load(s) for s in suites]
    executor = LocalExecutor()
    torch_device = executor.device(device)
    loaded_data: dict[str, datasets.Dataset] = {}
    versions, code = env.versions(), fingerprint.packages()
    works = []
    for suite in suites:
        data = prepare_data(suite, data_dir, loaded_data)
        loaded = preflight.load_all(suite, len(data.classes), data.test_x[:1].float() / 255, {})
        works.append(Work(suite, data, torch_device, Path(store or Path("runs") / "artefacts").resolve(), versions,
                          loaded, code))
    nodes, _ = plan_graph(works)
    return cost.estimate(nodes, {w.token: w for w in works}, torch_device)[0]


def write_run(work: Work, plan: Plan, outcome: Outcome, out: Path, executor: dict, phases: dict[str, float],
              started: float, write_report: bool, costs: dict | None = None, failures: list[dict] | None = None):
    """A suite's results.json, examples.csv, run.json and report, from the graph's values: those that finished,
    where nodes failed (`failures`: which, and why; results.json and the report list them)."""
    import pandas as pd

    suite, data = work.suite, work.data
    model_info = {name: {**{k: v for k, v in outcome.values[node].items() if k != "computed"}, "name": name,
                         **coordinates(suite.models[name])} for name, node in plan.models.items()
                  if node in outcome.values}
    finished = [(job, node) for job, node in plan.evaluations if node in outcome.values]
    jobs = [job for job, _ in finished]
    outcomes = [outcome.values[node] for _, node in finished]
    rows = summarize(suite, model_info, len(data.classes), jobs, outcomes)
    results = {"suite": suite.raw, "suite_files": suite.chain, "suite_name": suite.name, "suite_hash": suite.hash,
               "profile": suite.profile, "plan": suite.plan(), "data": data.identity, "device": executor["device"], "executor": executor,
               "versions": work.versions, "git_commit": env.git_commit(),
               "models": model_info, "reference": suite.reference, "classes": data.classes, "cells": rows,
               "checks": {"config": suite.checks.describe(),
                          "compared": {name: {"check": check, "checks": of} for name, check, of in suite.checks.uses},
                          "probes": {model: {k: v for k, v in outcome.values[node].items() if k != "computed"}
                                     for model, node in plan.probes.items() if node in outcome.values}},
               "failed": failures or []}
    table = examples.write(out / examples.FILE, jobs, outcomes,  # first: a results.json always has its examples
                           {name: (info["recipe"], info["repeat"]) for name, info in model_info.items()})
    # The paper's claims over the repeats, machine-readable: what the report's verdicts, check and the README read.
    results["claims"] = [c.record() for c in claims.claims(results, stats.replicates_of(results), table)]
    atomic_json(out / "results.json", results)
    # data: loading and checks; graph: the executor's wall time for every suite of the command; a stage: the
    # seconds its nodes took where they ran (summed over workers running in parallel).
    timings = {phase: round(seconds, 3) for phase, seconds in phases.items()}
    for node, stage in plan.stages.items():
        timings[stage] = round(timings.get(stage, 0.0) + outcome.seconds.get(node, 0.0), 3)
    timings["total"] = round(time.perf_counter() - started, 3)
    # Nodes computed by this command, and those served from the store (by an earlier run, or by another run
    # over the same store that this one waited for).
    computed = sum(bool(outcome.values[node].get("computed")) for node in plan.node_ids if node in outcome.values)
    atomic_json(out / "run.json", {"timings_s": timings, "device": results["device"], "executor": executor,
                                   "suite_hash": suite.hash, "cost": costs or {},
                                   "nodes": {"computed": computed, "failed": len(failures or []),
                                             "reused": len(plan.node_ids) - computed - len(failures or [])},
                                   # which Ray node, host and GPUs computed each node (remote executors)
                                   "placement": outcome.placed(plan.node_ids)})
    if write_report:
        report.write(out)
    return pd.DataFrame(rows)


def coordinates(spec) -> dict:
    """Where a model sits among its recipe's repeats (benchmark.repeats): its recipe, its repeat ('r1.3') and
    its parent's instance."""
    return {"recipe": spec.recipe, "repeat": repeats.label(spec.repeat), "parent": spec.parent}


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


def summarize(suite: Suite, model_info: dict[str, dict], num_classes: int, jobs: Iterable[Evaluation],
              outcomes: Iterable[dict]) -> list[dict]:
    rows = []
    for job, outcome in zip(jobs, outcomes):
        tuned_on = set(model_info[job.model].get("finetune_indices", []))
        test_split = suite.models[job.model].entry.get("split") == "test"
        for size in suite.sizes:
            row = {"model": job.model, **{k: model_info[job.model][k] for k in ("recipe", "repeat")},
                   "attack": job.attack.name, "attack_family": job.attack.family,
                   "adapter": job.attack.adapter, "seed": job.seed, "size": size,
                   "sweep": list(job.attack.sweep) if job.attack.sweep else None,
                   "batch_invariant": outcome.get("batch_invariant", True),
                   "attack_batch_size": outcome["attack_batch_size"],
                   **evaluate.summarize(outcome, size, num_classes)}
            # Images the model was fine-tuned on that it is now evaluated on (the paper's code drew both from
            # the test split).
            row["finetune_overlap"] = (sum(i in tuned_on for i in outcome["indices"][:size])
                                       if test_split else 0)
            if "min_eps" in outcome:  # over the originally correct: the median minimal eps, and the share fooled
                found = [e for e, y, p in zip(outcome["min_eps"][:size], outcome["label"], outcome["orig_pred"])
                         if y == p]
                median = float(np.median(found)) if found else float("nan")
                row["min_eps_median"] = median if np.isfinite(median) else None  # None: above the searched max
                row["min_eps_fooled"] = float(np.mean(np.isfinite(found))) if found else float("nan")
            for key, value in (("source", job.source), ("check", job.attack.check), ("checks", job.attack.checks)):
                if value is not None:  # a transfer attack's source model; the check that derived an attack
                    row[key] = value
            rows.append(row)
    return rows
