"""The runner: a suite becomes a graph (data -> base models -> adversarial sets -> fine-tuned models -> evaluations)
run on one device, every node cached under a key that hashes everything that determines it.

Keys: every key carries a hash of the data's pixels and labels, the versions of the libraries that can change a number, the kind of
device, and a fingerprint of the code that computes the node (benchmark.fingerprint). Besides, a base model hashes
its suite entry (defaults filled in) and its precision; a fine-tune its entry, its parent's weights hash and its
adversarial set's hash; an adversarial set its attack's resolved parameters (`Attack.describe()`, defaults
included), the parent's weights and the image indices; an evaluation the model's weights, the attack's resolved
parameters, the seed and its image indices. So a rerun after a change of an attack's code or defaults re-runs
that attack's evaluations and adversarial sets and nothing upstream, and a training checkpoint is resumed only
by the code that wrote it. A rerun reuses what finished; kill -9 loses at most the node in flight, and for base
training only the epochs since its last checkpoint (at most about a minute's work).

A loaded model (benchmark.sources) hashes its checkpoint file's sha256 (not its path) and its builder (a factory's
module source too); an in-memory module its weights and the source of its classes.

Random draws: training follows the recipe's seed; an attack's draws follow the evaluation seed and each image's
position (adapters.rng), so the attack batch size, which follows free memory on a GPU, changes no number.

Evaluations are pure functions of their job (`Evaluation`), run through an executor: `LocalExecutor` runs them
in-process; a distributed one only has to provide `map`.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from adapters import get_attack
from adapters.base import exact_fp32
from benchmark import data as datasets
from benchmark import env, evaluate, examples, fingerprint, models, preflight, report, sources, train
from benchmark.store import Store, atomic_json, tensors_hash
from benchmark.suite import AttackSpec, ModelSpec, Suite, check_sizes, digest, load
from benchmark.train import Checkpoint, Schedule, fit, predict


@dataclass(frozen=True)
class Evaluation:
    model: str
    model_hash: str
    attack: AttackSpec
    seed: int
    size: int  # the largest evaluation size: smaller ones are its prefixes
    key: str


class LocalExecutor:
    """Runs jobs one after another in this process, with a progress bar and an ETA."""

    def map(self, fn: Callable[[Evaluation], Any], jobs: list[Evaluation], desc: str) -> list[Any]:
        return [fn(job) for job in tqdm(jobs, desc=desc, unit="eval", dynamic_ncols=True)]


@dataclass
class Context:
    suite: Suite
    data: datasets.Dataset
    device: torch.device
    store: Store
    versions: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    model_info: dict[str, dict] = field(default_factory=dict)
    loaded_sources: dict[str, sources.Loaded] = field(default_factory=dict)  # models loaded, not trained
    _loaded: dict[str, torch.nn.Module] = field(default_factory=dict)

    def timed(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + seconds, 3)

    def made_with(self, node: str) -> dict[str, Any]:
        """What every artefact key carries besides its own inputs: the data, the libraries that can change this
        kind of node's numbers (env.NUMERIC: an ART upgrade re-runs attacks, not training), and the kind of
        device (CPU and CUDA kernels round differently)."""
        return {"data": self.data.identity["pixels"], "versions": env.numeric_versions(self.versions, node),
                "device": self.device.type}


def run_suite(suite: Suite | str | Path, out: str | Path | None = None, *, device: str = "auto",
              data_dir: str | Path | None = None, executor: LocalExecutor | None = None,
              write_report: bool = True, models: dict[str, torch.nn.Module] | None = None):
    """Run every cell of a suite; return a pandas DataFrame with one row per (model, attack, seed, size).

    models: modules built in Python ({"mine": net}, [0,1] images in, logits out): a name the suite declares
    `provided = true` takes its module; any other joins the suite's models and its matrix."""
    import pandas as pd

    suite = suite if isinstance(suite, Suite) else load(suite)
    suite = sources.with_provided(suite, models or {})
    out = Path(out) if out is not None else Path("runs") / suite.name
    torch_device = env.resolve_device(device)
    preflight.check_writable(out)
    started = time.perf_counter()
    data = prepare_data(suite, data_dir)
    loaded = sources.load_all(suite, len(data.classes), data.test_x[:1].float() / 255, models or {})
    _claim = preflight.Claim(out)  # held until this call returns: a second run on `out` refuses meanwhile
    ctx = Context(suite, data.to(torch_device), torch_device, Store(out / "artefacts"),
                  env.versions(), loaded_sources=loaded)
    ctx.timed("data", time.perf_counter() - started)
    for spec in suite.models.values():
        build_model(ctx, spec)
    jobs = plan_evaluations(ctx)
    outcomes = (executor or LocalExecutor()).map(lambda job: run_job(ctx, job), jobs, desc="evaluations")
    rows = summarize(ctx, jobs, outcomes)
    results = {"suite": suite.raw, "suite_name": suite.name, "suite_hash": suite.hash, "profile": suite.profile,
               "plan": suite.plan(), "data": data.identity, "device": env.device_name(torch_device),
               "versions": ctx.versions, "git_commit": env.git_commit(), "models": ctx.model_info,
               "reference": suite.reference, "classes": data.classes, "cells": rows}
    examples.write(out / examples.FILE, jobs, outcomes)  # first: a results.json always has its examples
    atomic_json(out / "results.json", results)
    ctx.timed("total", time.perf_counter() - started)
    atomic_json(out / "run.json", {"timings_s": ctx.timings, "device": env.device_name(torch_device),
                                   "suite_hash": suite.hash})
    if write_report:
        report.write(out)
    return pd.DataFrame(rows)


def prepare_data(suite: Suite, data_dir) -> datasets.Dataset:
    """Load the data and check the suite against it before anything is written."""
    spec = suite.data
    if data_dir is None and "path" in spec:
        data_dir = suite.path.parent / spec["path"]
    data = datasets.load(spec["source"], data_dir,
                         synthetic_size=(spec.get("train", 5000), spec.get("test", 2000)))
    # The pixels and labels themselves, hashed: what keys carry, so a change of loading code that leaves them
    # as they were recomputes nothing, and one that changes them recomputes everything.
    data.identity = {**data.identity, "pixels": tensors_hash({"train_x": data.train_x, "train_y": data.train_y,
                                                              "test_x": data.test_x, "test_y": data.test_y})[:24]}
    check_sizes(suite, len(data.train_y), len(data.test_y))
    preflight.check_models(suite, data)
    return data


def load_model(ctx: Context, name: str) -> torch.nn.Module:
    if name not in ctx._loaded:
        info = ctx.model_info[name]
        root = ctx.suite.root(name)
        model = (copy.deepcopy(ctx.loaded_sources[root.name].module) if root.loaded else
                 models.build(root.entry["arch"], mean=root.entry["mean"], std=root.entry["std"],
                              num_classes=len(ctx.data.classes)))
        model.load_state_dict(ctx.store.get_tensors("models", info["key"], ctx.device))
        model = model.to(ctx.device).eval()
        if ctx.device.type == "cuda":  # the layout cuDNN's fastest convolutions want; attacks stay in fp32
            model = model.to(memory_format=torch.channels_last)
        ctx._loaded[name] = model
    return ctx._loaded[name]


def build_model(ctx: Context, spec: ModelSpec) -> None:
    """Train (or reuse) one model; fills ctx.model_info[spec.name]."""
    started = time.perf_counter()
    if spec.loaded:
        info = load_source(ctx, spec)
    elif spec.parent is None:
        key = digest({"kind": "model", "entry": spec.entry, **ctx.made_with("model"), "precision": _precision(ctx, True),
                      "code": fingerprint.code(train_base, base_split, _save_model, train, models,
                                               datasets.augment)})[:24]
        info = ctx.store.get_json("model-info", key)
        if info is None or ctx.store.get_tensors("models", key) is None:
            info = train_base(ctx, spec, key)
    else:
        parent = ctx.model_info[spec.parent]
        adv_key, adv_info = build_adversarial_set(ctx, spec)
        key = digest({"kind": "finetune", "entry": spec.entry, "parent": [parent["key"], parent["weights"]],
                      "adversarial_set": adv_info["hash"], **ctx.made_with("model"),
                      "precision": _precision(ctx, False),
                      "code": fingerprint.code(finetune, _save_model, train, models)})[:24]
        info = ctx.store.get_json("model-info", key)
        if info is None or ctx.store.get_tensors("models", key) is None:
            info = finetune(ctx, spec, key, adv_key, adv_info)
    ctx.model_info[spec.name] = {**info, "source": info.get("source") or _recipe_source(spec)}
    ctx.timed(f"model:{spec.name}", time.perf_counter() - started)


def load_source(ctx: Context, spec: ModelSpec) -> dict:
    """A loaded model (benchmark.sources) enters the store like a trained one, keyed by what identifies it: the
    checkpoint's sha256 and its builder, or an in-memory module's weights and class source."""
    loaded = ctx.loaded_sources[spec.name]
    key = digest({"kind": "loaded-model", "identity": loaded.identity, **ctx.made_with("model"),
                  "code": fingerprint.code(load_source, _save_model, sources, models)})[:24]
    info = ctx.store.get_json("model-info", key)
    if info is None or ctx.store.get_tensors("models", key) is None:
        info = _save_model(ctx, key, copy.deepcopy(loaded.module).to(ctx.device).eval(),
                           {"name": spec.name, "kind": "loaded", "source": loaded.source})
    return info


def _recipe_source(spec: ModelSpec) -> dict:
    e = spec.entry
    if spec.parent is not None:
        return {"kind": "fine-tune", "from": spec.parent, "attack": e["attack"], "images": e["images"]}
    return {"kind": "trained", "arch": e["arch"], "epochs": e["epochs"], "seed": e["seed"]}


def _precision(ctx: Context, mixed: bool) -> str:
    return "bf16-autocast" if mixed and ctx.device.type == "cuda" else "fp32"


def _save_model(ctx: Context, key: str, model: torch.nn.Module, info: dict) -> dict:
    state = {k: v for k, v in model.state_dict().items()}
    info = {**info, "key": key, "weights": tensors_hash(state), "made_on": env.device_name(ctx.device),
            "test_acc": float((predict(model, ctx.data.test_x) == ctx.data.test_y).float().mean())}
    ctx.store.put_tensors("models", key, state)
    ctx.store.put_json("model-info", key, info)
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
    checkpoint = Checkpoint(load=lambda: ctx.store.get_tensors("checkpoints", key),
                            save=lambda state: ctx.store.put_state("checkpoints", key, state))
    history = fit(model, x, y, epochs=e["epochs"], batch_size=e["batch_size"], schedule=Schedule(lr=e["lr"]),
                  seed=e["seed"], augment=e["augment"], val=val, patience=early["patience"] if early else None,
                  checkpoint=checkpoint, desc=f"train {spec.name}")
    info = _save_model(ctx, key, model, {"name": spec.name, "kind": "base", "history": history.epochs,
                                         "stopped_early": history.stopped_early, "best_epoch": history.best_epoch,
                                         "train_images": len(y), "precision": _precision(ctx, True)})
    ctx.store.drop("checkpoints", key)
    return info


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
    """The N images a fine-tune trains on, perturbed by its attack against the parent, with true labels."""
    e = spec.entry
    parent = ctx.model_info[spec.parent]
    idx, provenance = finetune_sample(ctx.suite, spec, len(ctx.data.train_y), len(ctx.data.test_y))
    attack_entry = e["attack_spec"]
    attack = get_attack(attack_entry["adapter"],
                        **{"seed": e["seed"], **{k: v for k, v in attack_entry.items() if k != "adapter"}})
    key = digest({"kind": "adversarial-set", "adapter": attack_entry["adapter"], "attack": attack.describe(),
                  "parent": [parent["key"], parent["weights"]], "split": e["split"], "indices": idx.tolist(),
                  **ctx.made_with("attack"),
                  "code": fingerprint.code(build_adversarial_set, finetune_sample, base_split,
                                           evaluate.attack_images, *fingerprint.attack_modules(attack))})[:24]
    info = ctx.store.get_json("adversarial-set-info", key)
    if info is not None and ctx.store.get_tensors("adversarial-sets", key) is not None:
        return key, info
    xs, ys = (ctx.data.train_x, ctx.data.train_y) if e["split"] == "train" else (ctx.data.test_x, ctx.data.test_y)
    dev_idx = idx.to(ctx.device)
    adv = evaluate.attack_images(attack, load_model(ctx, spec.parent), xs[dev_idx], ys[dev_idx],
                                 ctx.suite.eval_batch_size, desc=f"perturb {e['images']} for {spec.name}")
    tensors = {"images": adv, "labels": ys[dev_idx], "indices": idx}
    info = {"hash": tensors_hash(tensors), "attack": e["attack"], "n": len(idx), **provenance,
            "batch_invariant": attack.batch_invariant}
    ctx.store.put_tensors("adversarial-sets", key, tensors)
    ctx.store.put_json("adversarial-set-info", key, info)
    return key, info


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


def plan_evaluations(ctx: Context) -> list[Evaluation]:
    size = max(ctx.suite.sizes)
    jobs = []
    for model in ctx.suite.matrix_models:
        # The model's key (its code and identity: a factory edit changes it, not always its weights) and weights.
        weights, model_key = ctx.model_info[model]["weights"], ctx.model_info[model]["key"]
        for attack_name in ctx.suite.matrix_attacks:
            spec = ctx.suite.attacks[attack_name]
            for seed in ctx.suite.seeds:
                attack = build_attack(spec, seed)
                idx = evaluate.subset(len(ctx.data.test_y), size, seed)
                key = digest({"kind": "evaluation", "model": [model_key, weights], "adapter": spec.adapter,
                              "params": attack.describe(), "seed": seed, "indices": idx.tolist(),
                              **ctx.made_with("attack"),
                              "code": fingerprint.code(run_job, evaluate, *fingerprint.attack_modules(attack))})
                jobs.append(Evaluation(model, weights, spec, seed, size, key[:24]))
    return jobs


def build_attack(spec: AttackSpec, seed: int):
    """The attack of one evaluation: its random draws follow the evaluation seed unless the suite fixes one."""
    return get_attack(spec.adapter, **{"seed": seed, **spec.params})


def run_job(ctx: Context, job: Evaluation) -> dict:
    cached = ctx.store.get_json("evaluations", job.key)
    if cached is not None:
        return cached
    started = time.perf_counter()
    idx = evaluate.subset(len(ctx.data.test_y), job.size, job.seed).to(ctx.device)
    outcome = evaluate.run_evaluation(load_model(ctx, job.model), build_attack(job.attack, job.seed),
                                      ctx.data.test_x[idx], ctx.data.test_y[idx], ctx.suite.eval_batch_size,
                                      desc=f"{job.attack.name} on {job.model} (seed {job.seed})")
    outcome["indices"] = idx.tolist()
    ctx.store.put_json("evaluations", job.key, outcome)
    ctx.timed(f"attack:{job.attack.name}", time.perf_counter() - started)
    return outcome


def summarize(ctx: Context, jobs: Iterable[Evaluation], outcomes: Iterable[dict]) -> list[dict]:
    rows = []
    for job, outcome in zip(jobs, outcomes):
        tuned_on = set(ctx.model_info[job.model].get("finetune_indices", []))
        test_split = ctx.suite.models[job.model].entry.get("split") == "test"
        for size in ctx.suite.sizes:
            row = {"model": job.model, "attack": job.attack.name, "attack_family": job.attack.family,
                   "adapter": job.attack.adapter, "seed": job.seed, "size": size,
                   "sweep": list(job.attack.sweep) if job.attack.sweep else None,
                   "batch_invariant": outcome.get("batch_invariant", True),
                   **evaluate.summarize(outcome, size, len(ctx.data.classes))}
            # Images the model was fine-tuned on that it is now evaluated on (the paper's code drew both from
            # the test split).
            row["finetune_overlap"] = (sum(i in tuned_on for i in outcome["indices"][:size])
                                       if test_split else 0)
            rows.append(row)
    return rows
