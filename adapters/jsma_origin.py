"""`jsma-origin`: the Jacobian saliency map attack keyed to the original (true) class, in-house, batched in torch.

Distance measure: L0 (pixels-channels changed). Input range [0,1], NCHW; output clipped to [0,1] of the space the
attack works in (`space`, see adapters.base).

mode="iterative" (default), Papernot et al. 2016 turned against the true class y: each step takes, for every
still-correct image, the feature pair (p, q) that best lowers z_y while raising the other logits:
    alpha = d z_y / d x_p + d z_y / d x_q < 0,  beta = d (sum_{j != y} z_j) / d x_p + ... > 0,  maximize -alpha*beta
and moves both by `theta` (clipped). A feature stays searchable until it reaches the clip bound. An image stops
once its prediction leaves y, once ceil(gamma*D/2) steps are spent, or once two more new features would take it
past gamma*D changed features, so L0 <= gamma*D always. Papernot searches all D^2 pairs; we search the pairs
among each image's `top_k` features ranked by beta - alpha, which keeps the search at batch*top_k^2 and memory at
about one input-gradient pass of the batch (why in-house: torchattacks' JSMA loops one image at a time over the
full D x D map, ART's ranks by one class gradient only). `batch_size` splits the batch handed in (default: none;
the evaluation already sizes its batches from free memory).
Where no pair satisfies the sign conditions, the pair with the largest beta - alpha is taken.

mode="paper-code": bug-compatible with the paper authors' script: one dense step
    x + eps * sign(grad(z_y - sum_j z_j))     (j over all classes, so z_y cancels)
then a clamp to [0,1]. Its `space` defaults to "normalized", where the authors took it, clamp included.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adapters.base import Attack, check_params
from adapters.families import attack_family

MODES = ("iterative", "paper-code")
PARAMETERS = {"mode": "iterative", "theta": 1.0, "gamma": 0.1, "top_k": 32, "max_steps": None, "batch_size": None,
              "eps": 0.01, "space": None, "seed": 0}
TYPES = {"mode": (str,), "theta": (int, float), "gamma": (int, float), "top_k": (int,), "max_steps": (int, type(None)),
         "batch_size": (int, type(None)), "eps": (int, float), "space": (str, type(None)), "seed": (int,)}


class JsmaOrigin(Attack):
    name = "jsma-origin"

    def __init__(self, *, mode: str = "iterative", theta: float = 1.0, gamma: float = 0.1, top_k: int = 32,
                 max_steps: int | None = None, batch_size: int | None = None, eps: float = 0.01,
                 space: str | None = None, seed: int = 0):
        given = {"mode": mode, "theta": theta, "gamma": gamma, "top_k": top_k, "max_steps": max_steps,
                 "batch_size": batch_size, "eps": eps, "space": space, "seed": seed}
        for key, value in given.items():
            kinds = TYPES[key]
            if isinstance(value, bool) or not isinstance(value, kinds):
                names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise ValueError(f"jsma-origin: {key} must be {names}, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"jsma-origin: mode must be one of {', '.join(MODES)}, got {mode!r}")
        space = space or ("normalized" if mode == "paper-code" else "pixel")
        super().__init__(space=space, seed=seed)
        check_params(self.name, {"eps": eps, "gamma": gamma, "top_k": top_k,
                                 **({"max_steps": max_steps} if max_steps is not None else {})}, PARAMETERS)
        if not 0 < gamma <= 1:
            raise ValueError(f"jsma-origin: gamma must be in (0, 1], got {gamma}")
        if theta == 0 or top_k < 2 or (batch_size is not None and batch_size < 1):
            raise ValueError("jsma-origin: theta must be non-zero, top_k >= 2, batch_size >= 1")
        self.mode, self.theta, self.gamma, self.top_k = mode, float(theta), float(gamma), int(top_k)
        self.max_steps, self.batch_size, self.eps = max_steps, batch_size, float(eps)

    def describe(self) -> dict[str, Any]:
        if self.mode == "paper-code":
            return {"mode": self.mode, "eps": self.eps, **super().describe()}
        return {"mode": self.mode, "theta": self.theta, "gamma": self.gamma, "top_k": self.top_k,
                "max_steps": self.max_steps, **super().describe()}  # batch_size: how, not what

    def perturb(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **_) -> torch.Tensor:
        step = self._paper_code if self.mode == "paper-code" else self._iterative
        chunk = self.batch_size or len(images)
        return torch.cat([step(model, images[i:i + chunk], labels[i:i + chunk]) for i in range(0, len(images), chunk)])

    def _paper_code(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        logits = model(x)
        objective = logits.gather(1, y[:, None]).squeeze(1) - logits.sum(1)
        (grad,) = torch.autograd.grad(objective.sum(), x)
        return (x + self.eps * grad.sign()).clamp(0, 1).detach()

    def _iterative(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, shape = len(images), images.shape[1:]
        x = images.reshape(n, -1).clone()
        d = x.shape[1]
        budget = math.floor(self.gamma * d)
        max_steps = self.max_steps if self.max_steps is not None else math.ceil(self.gamma * d / 2)
        direction = 1.0 if self.theta > 0 else -1.0
        searchable = x < 1 if self.theta > 0 else x > 0
        changed = torch.zeros_like(x, dtype=torch.bool)
        k = min(self.top_k, d)
        not_diagonal = ~torch.eye(k, dtype=torch.bool, device=x.device)
        active = torch.arange(n, device=x.device)
        for _ in range(max_steps):
            xa = x[active].detach().requires_grad_(True)
            logits = model(xa.view(-1, *shape))
            y = labels[active]
            still = (logits.argmax(1) == y) & (changed[active].sum(1) + 2 <= budget) & (searchable[active].sum(1) >= 2)
            if not bool(still.any()):
                break
            z_y = logits.gather(1, y[:, None]).squeeze(1)
            grad_y, grad_all = _two_grads(z_y, logits, xa)
            keep = still.nonzero().squeeze(1)
            active, xa = active[keep], xa.detach()[keep]
            alpha = direction * grad_y[keep]
            beta = direction * (grad_all[keep] - grad_y[keep])
            space = searchable[active]
            score = (beta - alpha).masked_fill(~space, -math.inf)
            cand = score.topk(k, dim=1).indices  # n_active x k
            a, b, ok = alpha.gather(1, cand), beta.gather(1, cand), space.gather(1, cand)
            pa, pb = a[:, :, None] + a[:, None, :], b[:, :, None] + b[:, None, :]
            usable = ok[:, :, None] & ok[:, None, :] & not_diagonal
            saliency = torch.where((pa < 0) & (pb > 0) & usable, -pa * pb, -math.inf).flatten(1)
            fallback = torch.where(usable, pb - pa, -math.inf).flatten(1)
            best = torch.where(torch.isfinite(saliency.max(1).values), saliency.argmax(1), fallback.argmax(1))
            p, q = cand.gather(1, (best // k)[:, None]), cand.gather(1, (best % k)[:, None])
            pair = torch.cat([p, q], 1)
            rows = active[:, None].expand(-1, 2)
            x[rows, pair] = (x[rows, pair] + self.theta).clamp(0, 1)
            changed[rows, pair] = True
            searchable[rows, pair] = x[rows, pair] < 1 if self.theta > 0 else x[rows, pair] > 0
        return x.view(n, *shape).detach()


def l0_budget(gamma: float, features: int) -> int:
    """The most features jsma-origin changes at `gamma`: whole pairs within floor(gamma * features)."""
    return 2 * (math.floor(gamma * features) // 2)


def art_gamma(budget: int, features: int) -> float:
    """The gamma at which ART's SaliencyMapMethod changes at most `budget` (even) features, for a like-for-like
    comparison: ART takes another pair while changed / features <= gamma, so it ends at the first even count
    above gamma * features (at gamma 0.01 on 3072 features: 32, where jsma-origin stops at 30)."""
    return (budget - 1) / features


def _two_grads(z_y: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d z_y / dx and d (sum_j z_j) / dx per image: two backward passes through one graph."""
    grad_y = torch.autograd.grad(z_y.sum(), x, retain_graph=True)[0]
    grad_all = torch.autograd.grad(logits.sum(), x)[0]
    return grad_y, grad_all


@attack_family("jsma-origin", members=lambda: {"jsma-origin": dict(PARAMETERS)})
def build(member: None, **params: Any) -> JsmaOrigin:
    check_params("jsma-origin", params, PARAMETERS)
    return JsmaOrigin(**params)
