"""The graph's node functions and the artefact keys they compute under: base training (or a loaded model entering
the store), a fine-tune's adversarial set, the fine-tune, and one evaluation.

Each is fn(ctx, values, **its names): values maps dependency node ids to their values (model info dicts,
adversarial-set records); what it computes goes to the store under its key (benchmark.context.cached), and its
value is small. Keys: see benchmark.runner.
"""
from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import torch

from adapters import get_attack
from adapters.base import exact_fp32
from benchmark import env, evaluate, fingerprint, models, sources
from benchmark.context import KEPT, Context, Evaluation, cached, load_model
from benchmark.store import tensors_hash
from benchmark.suite import AttackSpec, ModelSpec, Suite, digest
from benchmark.train import Checkpoint, Schedule, fit, predict


def base_model_node(ctx: Context, values: dict, *, name: str) -> dict:
    """Train (or reuse) a base model, or store a loaded one; its info."""
    spec = ctx.suite.models[name]
    if spec.loaded:
        return _with_source(load_source(ctx, spec), spec)
    key = base_key(ctx, spec)
    return _with_source(cached(ctx, "model-info", key, partial(train_base, ctx, spec, key), tensors="models"), spec)


def recipe_identity(entry: dict) -> dict:
    """A base recipe as keys and node ids hash it: pretrained weights by their sha256, not where the file lies."""
    return {**entry, "pretrained": entry["pretrained"]["sha256"]} if "pretrained" in entry else entry


def base_key(ctx: Context, spec: ModelSpec) -> str:
    return digest({"kind": "model", "entry": recipe_identity(spec.entry), **ctx.made_with("model"),
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
    # The parent by its key and weights, not by its name (an instance's name changes when its recipe repeats).
    entry = {k: v for k, v in spec.entry.items() if k != "from"}
    key = digest({"kind": "finetune", "entry": entry, "parent": [parent_info["key"], parent_info["weights"]],
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
        return {"kind": "fine-tune", "from": spec.parent, "attack": e["attack"], "images": e["images"],
                "seed": e["seed"]}
    source = {"kind": "trained", "arch": e["arch"], "epochs": e["epochs"], "seed": e["seed"]}
    if "pretrained" in e:
        source["pretrained"] = {"file": Path(e["pretrained"]["file"]).name, "sha256": e["pretrained"]["sha256"]}
    return source


def _precision(ctx: Context, mixed: bool) -> str:
    return "bf16-autocast" if mixed and ctx.device.type == "cuda" else "fp32"


def _save_model(ctx: Context, key: str, model: torch.nn.Module, info: dict) -> dict:
    state = {k: v for k, v in model.state_dict().items()}
    info = {**info, "key": key, "weights": tensors_hash(state), "made_on": env.device_label(ctx.device, ctx.threads),
            "test_acc": float((predict(model, ctx.data.test_x) == ctx.data.test_y).float().mean())}
    ctx.store.put_tensors("models", key, state)  # the record goes in after it (context.cached)
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
    model = models.build(e["arch"], mean=e["mean"], std=e["std"], num_classes=len(ctx.data.classes))
    if "pretrained" in e:  # the head stays as built (seeded above), the rest from the published weights
        models.load_pretrained(model, sources.read_state(Path(e["pretrained"]["file"])), f"models.{spec.name}")
    model = model.to(ctx.device)
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
