"""Transfer attacks and model probes: the graph's nodes for an attack whose images are crafted on another model
(`source = "<model>"`, or a check's transfer from the parent) and for the probes of benchmark.checks.

    crafted_node      one (source, attack, seed): the adversarial images of the seed's evaluation subset, crafted
                      on the source model, stored as tensors (crafted once, whatever the number of targets)
    transfer_node     one (target, crafted set): what the target says on the clean and the crafted images, per
                      image, in the format of benchmark.evaluate.run_evaluation
    probe_node        one model: its input gradients, repeated forward passes and output rows on test images

Keys: a crafted set hashes the source's key and weights, the attack's resolved parameters, the seed, the image
indices and the attack batch; a transfer evaluation the target's key and weights and the crafted set's hash; a
probe the model's key and weights and the image indices; each with the data, versions and device kind.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from benchmark import evaluate
from benchmark.context import Context, Evaluation, cached, load_model
from benchmark.nodes import build_attack
from benchmark.store import tensors_hash
from benchmark.suite import digest
from benchmark.train import to_float

REPEATS = 3  # forward passes compared by the randomness probe


def crafted_node(ctx: Context, values: dict, *, job: Evaluation, source: str) -> dict:
    """The images `job.attack` crafts on `job.source` for the seed's evaluation subset: {"key", "hash", ...}."""
    ctx.model_info[job.source] = values[source]
    info = ctx.model_info[job.source]
    idx = evaluate.subset(len(ctx.data.test_y), job.size, job.seed)
    desc = f"craft {job.attack.name} on {job.source} (seed {job.seed})"

    def key_at(batch: int) -> str:
        return digest({"kind": "crafted", "model": [info["key"], info["weights"]], "adapter": job.attack.adapter,
                       "params": build_attack(job.attack, job.seed).describe(), "seed": job.seed,
                       "indices": idx.tolist(), "attack_batch": batch, **ctx.made_with("attack")})[:24]

    def compute(batch: int, key: str) -> dict:
        attack = build_attack(job.attack, job.seed)
        dev = idx.to(ctx.device)
        adv = evaluate.attack_images(attack, load_model(ctx, job.source), ctx.data.test_x[dev],
                                     ctx.data.test_y[dev], batch, desc=desc)
        tensors = {"images": adv, "indices": idx}
        ctx.store.put_tensors("crafted", key, tensors)
        return {"hash": tensors_hash(tensors), "batch_invariant": attack.batch_invariant,
                "attack_batch_size": batch}

    def at(batch: int) -> dict:
        key = key_at(batch)
        return {"key": key, **cached(ctx, "crafted-info", key, partial(compute, batch, key), tensors="crafted")}

    return evaluate.halving_on_oom(ctx.suite.eval_batch_size, at, desc=desc)


def transfer_node(ctx: Context, values: dict, *, job: Evaluation, model: str, crafted: str) -> dict:
    """The target's per-image outcome on the crafted images of its seed (evaluate.run_evaluation's format)."""
    ctx.model_info[job.model] = values[model]
    info, made = ctx.model_info[job.model], values[crafted]
    key = digest({"kind": "transfer-evaluation", "model": [info["key"], info["weights"]], "crafted": made["hash"],
                  **ctx.made_with("attack")})[:24]

    def compute() -> dict:
        stored = ctx.store.get_tensors("crafted", made["key"], ctx.device)
        idx = stored["indices"].to(ctx.device)
        target = load_model(ctx, job.model)
        return {**evaluate.outcome(target, to_float(ctx.data.test_x[idx]), stored["images"], ctx.data.test_y[idx]),
                "batch_invariant": made["batch_invariant"], "attack_batch_size": made["attack_batch_size"],
                "indices": stored["indices"].tolist(), "source": job.source, "crafted": made["hash"]}

    return cached(ctx, "evaluations", key, compute)


def probe_node(ctx: Context, values: dict, *, name: str, node: str) -> dict:
    """The probes of one model on the first `checks.probes()` images of seed 0's evaluation order."""
    ctx.model_info[name] = values[node]
    info = ctx.model_info[name]
    idx = evaluate.subset(len(ctx.data.test_y), ctx.suite.checks.probes(len(ctx.data.test_y)), 0)
    key = digest({"kind": "probes", "model": [info["key"], info["weights"]], "indices": idx.tolist(),
                  "repeats": REPEATS, **ctx.made_with("attack")})[:24]

    def compute() -> dict:
        dev = idx.to(ctx.device)
        return probe(load_model(ctx, name), to_float(ctx.data.test_x[dev]), ctx.data.test_y[dev])

    return cached(ctx, "probes", key, compute)


def probe(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per image: whether the cross-entropy's input gradient is all zero or has a NaN/inf (as AutoAttack's
    checks.check_zero_gradients), whether `REPEATS` forward passes in eval mode disagree (largest logit
    difference, relative to the largest logit, and whether the predicted class changes: check_randomized), and
    whether the output row is non-negative and sums to 1 (a softmax, not logits: check_dynamic/softmax)."""
    was_training = model.training
    model.eval()
    try:
        x = images.detach().clone().requires_grad_(True)
        out = model(x)
        grad, = torch.autograd.grad(F.cross_entropy(out, labels, reduction="sum"), x)
        grad = grad.flatten(1)
        with torch.no_grad():
            passes = torch.stack([out.detach()] + [model(images) for _ in range(REPEATS - 1)])
    finally:
        model.train(was_training)
    scale = passes.abs().amax(dim=(0, 2)).clamp_min(1e-12)
    spread = (passes.amax(0) - passes.amin(0)).amax(1) / scale
    first = passes[0]
    return {"n": len(labels),
            "grad_zero": (grad == 0).all(1).tolist(),
            "grad_nonfinite": (~torch.isfinite(grad)).any(1).tolist(),
            "logit_spread": [float(v) for v in spread.tolist()],
            "pred_changes": (passes.argmax(2) != passes[0].argmax(1)).any(0).tolist(),
            "sums_to_one": (((first.sum(1) - 1).abs() < 1e-4) & (first >= 0).all(1)).tolist()}
