"""One evaluation: attack a seeded subset of the test split and record, per image, what the model said.

Sizes are nested prefixes of one seeded permutation per seed, so the largest size is attacked once and every
smaller size is read off its prefix (the paper draws a fresh subset per size; prefixes of a random permutation
are random subsets too, and cost one attack instead of five).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from adapters.base import Attack
from benchmark.train import predict, to_float


def subset(n_test: int, size: int, seed: int) -> torch.Tensor:
    """The evaluation indices of one seed: a prefix of a permutation drawn from `seed`."""
    return torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:size]


BATCH = 500  # the attack batch unless a suite sets [evaluation] batch_size: a fixed number, whatever the device


def halving_on_oom(batch_size: int, attempt: Callable[[int], Any], desc: str) -> Any:
    """`attempt(batch_size)`, and on CUDA running out of memory again with half the batch, down to 1. The attack
    batch changes how convolutions round, so the caller keys and records the batch that ran (attempt's own)."""
    while True:
        try:
            return attempt(batch_size)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            tqdm.write(f"{desc}: out of device memory; retrying with attack batch {batch_size}")


def attack_images(attack: Attack, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  batch_size: int, desc: str = "attack") -> torch.Tensor:
    """Adversarial versions of uint8 or float images, `batch_size` at a time; float32 in [0,1] on the images'
    device. Random draws follow the positions, not the batches; rounding can follow the batch (README)."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, leave=False, dynamic_ncols=True):
        x = to_float(images[start:start + batch_size])
        # Positions make every random draw a function of the image's place in the set, not of the batch.
        out.append(attack(model, x, labels[start:start + batch_size], positions=range(start, start + len(x))))
    return torch.cat(out)


def run_evaluation(model: torch.nn.Module, attack: Attack, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int, desc: str) -> dict[str, list]:
    """Per-image outcome: true label, clean and adversarial predictions, and the perturbation's L0/L2/Linf in
    pixel space; `batch_invariant`: whether every random draw of the attack was tied to one image."""
    adv = attack_images(attack, model, images, labels, batch_size, desc)
    return {**outcome(model, to_float(images), adv, labels), "batch_invariant": attack.batch_invariant,
            "attack_batch_size": batch_size}


def outcome(model: torch.nn.Module, clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor) -> dict[str, list]:
    """Per image: true label, the model's predictions on the clean and the adversarial images, and the
    perturbation's L0 (changed pixel-channels), L2 and Linf in pixel space."""
    delta = (adv - clean).flatten(1)
    return {"label": labels.tolist(), "orig_pred": predict(model, clean).tolist(),
            "adv_pred": predict(model, adv).tolist(),
            "l0": (delta.abs() > 1e-6).sum(1).tolist(),
            "l2": [round(v, 6) for v in delta.norm(dim=1).tolist()],
            "linf": [round(v, 6) for v in delta.abs().amax(1).tolist()]}


def summarize(outcome: dict[str, list], size: int, num_classes: int) -> dict[str, Any]:
    """Accuracy on original and adversarial images, their ratio, attack success on the originally correct, mean
    distances over the originally correct (`n_dist` of them: the images every attack attacks; some skip the
    rest), and both confusion matrices (rows: true class, columns: predicted), for the first `size`."""
    y = np.asarray(outcome["label"][:size])
    orig = np.asarray(outcome["orig_pred"][:size])
    adv = np.asarray(outcome["adv_pred"][:size])
    correct = orig == y
    orig_acc, adv_acc = float(correct.mean()), float((adv == y).mean())
    return {"n": int(size), "orig_acc": orig_acc, "adv_acc": adv_acc,
            "ratio": adv_acc / orig_acc if orig_acc > 0 else float("nan"),
            "success_rate": float((adv[correct] != y[correct]).mean()) if correct.any() else float("nan"),
            **{d: float(np.mean(np.asarray(outcome[d][:size])[correct])) if correct.any() else float("nan")
               for d in ("l0", "l2", "linf")}, "n_dist": int(correct.sum()),
            "confusion_orig": _confusion(y, orig, num_classes), "confusion_adv": _confusion(y, adv, num_classes)}


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> list[list[int]]:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k).tolist()
