"""Per-image minimal epsilon: for an attack with `minimal_eps = { max = ..., steps = ... }`, the smallest eps in
[0, max] (the attack's own eps space) at which it makes the model misclassify each image, found by bisection, as
Foolbox's epsilons and ARES's distortion benchmark do. One search gives the whole accuracy-vs-eps curve of a model
(accuracy at e = the share of images correct originally whose minimal eps exceeds e) and its median minimal eps.

    minimal_node     the graph's node for one (model, attack, seed): evaluate.run_evaluation's outcome at
                     eps = max, plus `min_eps` per image (0: misclassified already; inf: not fooled at max)

PGD-type step sizes (`alpha`) scale with eps (the suite gives them for eps = max). Bisection assumes success is
monotone in eps (a larger budget never helps the model); the "eps_sweep" check
(benchmark.flags) is how a run finds out where it is not. Precision: max / 2**steps; eps = 0 is tried first. Every call to
the attack passes the images' evaluation positions, so an attack whose draws are tied to images (adapters.rng)
draws as in a plain evaluation, whatever groups the bisection forms (one that draws otherwise, e.g. Square, is
marked not batch-invariant). Why in-house: the toolkits' attacks take one eps per call, and neither
torchattacks nor ART searches eps per image.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from tqdm.auto import tqdm

from adapters import get_attack
from benchmark import evaluate
from benchmark.context import Context, Evaluation, cached, load_model
from benchmark.suite import digest
from benchmark.train import predict, to_float


def minimal_node(ctx: Context, values: dict, *, job: Evaluation, model: str) -> dict:
    ctx.model_info[job.model] = values[model]
    info, spec = ctx.model_info[job.model], job.attack
    idx = evaluate.subset(len(ctx.data.test_y), job.size, job.seed)
    desc = f"{spec.name} on {job.model} (seed {job.seed}): minimal eps"

    top = spec.minimal_eps["max"]
    alpha = get_attack(spec.adapter, **spec.params).describe().get("alpha")

    def make(eps: float):  # a step size (PGD's alpha) scales with eps: it is given for eps = max
        scaled = {"alpha": alpha * eps / top} if isinstance(alpha, (int, float)) and not isinstance(alpha, bool) else {}
        return get_attack(spec.adapter, **{"seed": job.seed, **spec.params, "eps": eps, **scaled})

    def key_at(batch: int) -> str:
        return digest({"kind": "minimal-eps-evaluation", "model": [info["key"], info["weights"]],
                       "adapter": spec.adapter, "params": make(spec.minimal_eps["max"]).describe(),
                       "search": spec.minimal_eps, "seed": job.seed, "indices": idx.tolist(), "attack_batch": batch,
                       **ctx.made_with("attack")})[:24]

    def compute(batch: int) -> dict:
        dev = idx.to(ctx.device)
        net = load_model(ctx, job.model)
        images, labels = to_float(ctx.data.test_x[dev]), ctx.data.test_y[dev]
        adv, min_eps, invariant = search(net, make, images, labels, top=spec.minimal_eps["max"],
                                         steps=spec.minimal_eps["steps"], batch_size=batch, desc=desc)
        return {**evaluate.outcome(net, images, adv, labels), "min_eps": min_eps, "batch_invariant": invariant, "attack_batch_size": batch, "indices": idx.tolist()}

    return evaluate.halving_on_oom(ctx.suite.eval_batch_size, lambda batch: cached(
        ctx, "evaluations", key_at(batch), partial(compute, batch)), desc=desc)


def search(model: torch.nn.Module, make, images: torch.Tensor, labels: torch.Tensor, *, top: float, steps: int,
           batch_size: int, desc: str = "minimal eps") -> tuple[torch.Tensor, list[float], bool]:
    """(adversarial images, minimal eps per image, batch invariance). The images: at the minimal eps found where
    the attack succeeds, at `top` where it does not. `make(eps)` builds the attack at one eps."""
    n = len(images)
    positions = torch.arange(n)
    invariant = True

    def attack(eps: float, which: torch.Tensor) -> torch.Tensor:
        nonlocal invariant
        run = make(eps)
        out = []
        for start in range(0, len(which), batch_size):
            chunk = which[start:start + batch_size]
            dev = chunk.to(images.device)
            out.append(run(model, images[dev], labels[dev], positions=positions[chunk].tolist()))
        invariant &= run.batch_invariant
        return torch.cat(out) if out else images[:0]

    wrong = predict(model, images).cpu() != labels.cpu()
    adv = attack(top, positions)
    fooled = predict(model, adv).cpu() != labels.cpu()
    # eps = 0 can fool too (a clip acting alone, as the authors' normalized-space clamp does): tested first
    candidates = (~wrong & fooled).nonzero().squeeze(1)
    at_zero = torch.zeros(n, dtype=torch.bool)
    if len(candidates):
        zero = attack(0.0, candidates)
        hit = predict(model, zero).cpu() != labels.cpu()[candidates]
        at_zero[candidates[hit]] = True
        adv[candidates[hit].to(adv.device)] = zero[hit.to(zero.device)]
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.full((n,), float(top), dtype=torch.float64)
    hi[at_zero] = 0.0
    active = ~wrong & fooled & ~at_zero
    bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
    for _ in range(steps):
        mid = (lo + hi) / 2
        for value in torch.unique(mid[active]).tolist():  # one attack call per distinct eps, on its images
            which = (active & (mid == value)).nonzero().squeeze(1)
            trial = attack(value, which)
            hit = (predict(model, trial).cpu() != labels.cpu()[which])
            hi[which[hit]] = value
            lo[which[~hit]] = value
            adv[which[hit].to(adv.device)] = trial[hit.to(trial.device)]
        bar.update()
    bar.close()
    min_eps = [0.0 if w else (float(h) if f else math.inf) for w, f, h in zip(wrong.tolist(), fooled.tolist(),
                                                                                hi.tolist())]
    return adv, min_eps, invariant
