"""Per-image minimal epsilon: for an attack with `minimal_eps = { max = ..., grid = ..., steps = ... }`, the
smallest eps in [0, max] (the attack's own eps space) found to make the model misclassify each image, as Foolbox's
epsilons and ARES's distortion benchmark measure it. One search gives the whole accuracy-vs-eps curve of a model
(accuracy at e = the share of images correct originally whose minimal eps exceeds e) and its median minimal eps.

    minimal_node     the graph's node for one (model, attack, seed): evaluate.run_evaluation's outcome at
                     eps = max, plus `min_eps` per image (0: misclassified already or fooled at eps = 0; inf: fooled
                     at no eps tried) and `min_eps_reversals` (how often its success turned into failure as eps
                     grew along the grid; 0: monotone, and 0 for an image misclassified already)

How: the attack runs first at every point of a grid, `grid` equal intervals of [0, max] (GRID by default: 0, max /
grid, ..., max), on every image classified correctly; then, per image, bisection refines only the interval between
the first grid point where the attack succeeds and the (failing) one below it, `steps` times (precision max /
(grid * 2**steps)). The minimal eps reported is the smallest eps at which the attack was seen to succeed. Why not
bisection over [0, max] alone: it assumes that an attack that succeeds at eps succeeds at every larger eps, and
where that fails (gradient masking, randomised defences, FGSM's linearisation overshooting) it reports a larger eps
than one already seen to succeed, or inf for an image fooled below max but not at max. The smallest succeeding eps
is the right one: an Linf or L2 ball of radius e contains every smaller one, so an adversary with budget e may use
any eps <= e, and accuracy at e is the share no eps <= e fools. Success that comes and goes along the grid is itself
a signal: the "eps_monotone" check (benchmark.flags) counts the images. Bisection inside one grid interval still
assumes monotonicity there; a finer grid looks closer.

PGD-type step sizes (`alpha`) scale with eps (the suite gives them for eps = max). eps = 0 is a grid point (a clip
acting alone can fool, as the authors' normalized-space clamp does). Every call to the attack passes the images'
evaluation positions, so an attack whose draws are tied to images (adapters.rng) draws as in a plain evaluation,
whatever groups the search forms (one that draws otherwise, e.g. Square, is marked not batch-invariant). Why
in-house: the toolkits' attacks take one eps per call, and neither torchattacks nor ART searches eps per image.
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

GRID = 8  # equal intervals of [0, max] tried on every image before bisecting (`minimal_eps.grid`)


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
        adv, min_eps, reversals, invariant = search(
            net, make, images, labels, top=spec.minimal_eps["max"], steps=spec.minimal_eps["steps"],
            grid=spec.minimal_eps.get("grid", GRID), batch_size=batch, desc=desc)
        return {**evaluate.outcome(net, images, adv, labels), "min_eps": min_eps, "min_eps_reversals": reversals,
                "batch_invariant": invariant, "attack_batch_size": batch, "indices": idx.tolist()}

    return evaluate.halving_on_oom(ctx.suite.eval_batch_size, lambda batch: cached(
        ctx, "evaluations", key_at(batch), partial(compute, batch)), desc=desc)


def search(model: torch.nn.Module, make, images: torch.Tensor, labels: torch.Tensor, *, top: float, steps: int,
           batch_size: int, grid: int = GRID, desc: str = "minimal eps"
           ) -> tuple[torch.Tensor, list[float], list[int], bool]:
    """(adversarial images, minimal eps per image, reversals per image, batch invariance). The minimal eps: the
    smallest eps at which the attack was seen to succeed, over the grid 0, top / grid, ..., top and then `steps`
    bisections of the interval below its first succeeding grid point (0 for an image misclassified already, inf
    for one fooled at no eps tried). The reversals: the grid points where the attack fails although it succeeded
    at the one below (0: success monotone in eps over the grid). The images: at the minimal eps where the attack
    succeeds, at `top` where it does not (and where the model was wrong already). `make(eps)` builds the attack at
    one eps."""
    n = len(images)
    positions = torch.arange(n)
    invariant = True
    cpu_labels = labels.cpu()

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

    def fools(trial: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        return predict(model, trial).cpu() != cpu_labels[which] if len(which) else torch.zeros(0, dtype=torch.bool)

    wrong = predict(model, images).cpu() != cpu_labels
    attacked = (~wrong).nonzero().squeeze(1)
    points = [top * k / grid for k in range(grid + 1)]  # k * top / grid: exact at 0 and at top
    success = torch.zeros((grid + 1, n), dtype=torch.bool)
    first = torch.full((n,), -1, dtype=torch.long)  # the first grid point that fools each image (-1: none)
    bar = tqdm(total=grid + 1 + steps, desc=desc, leave=False, dynamic_ncols=True)
    adv = attack(top, positions)  # every image at max, as a plain evaluation: kept where nothing smaller fools
    success[grid, attacked] = fools(adv[attacked.to(adv.device)], attacked)
    bar.update()
    for k, eps in enumerate(points[:-1]):  # the rest of the grid, on the images classified correctly
        trial = attack(eps, attacked)
        hit = fools(trial, attacked)
        success[k, attacked] = hit
        new = hit & (first[attacked] < 0)
        first[attacked[new]] = k
        adv[attacked[new].to(adv.device)] = trial[new.to(trial.device)]
        bar.update()
    at_top = success[grid] & (first < 0)
    first[at_top] = grid  # adv already holds their image at max
    reversals = (success[:-1] & ~success[1:]).sum(0)  # 0 for the images not attacked (misclassified already)
    # Bisection between the first succeeding grid point (hi, a success) and the one below (lo, a failure); hi only
    # ever moves to an eps that succeeds, so it ends at the smallest succeeding eps seen.
    active = first > 0
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.full((n,), math.inf, dtype=torch.float64)
    grid_eps = torch.tensor(points, dtype=torch.float64)
    hi[first >= 0] = grid_eps[first[first >= 0]]
    lo[active] = grid_eps[first[active] - 1]
    for _ in range(steps):
        mid = (lo + hi) / 2
        for value in torch.unique(mid[active]).tolist():  # one attack call per distinct eps, on its images
            which = (active & (mid == value)).nonzero().squeeze(1)
            trial = attack(value, which)
            hit = fools(trial, which)
            hi[which[hit]] = value
            lo[which[~hit]] = value
            adv[which[hit].to(adv.device)] = trial[hit.to(trial.device)]
        bar.update()
    bar.close()
    min_eps = [0.0 if w else float(h) for w, h in zip(wrong.tolist(), hi.tolist())]
    return adv, min_eps, reversals.tolist(), invariant
