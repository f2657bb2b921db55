"""Training: base training (Adam, batched on-device augmentation, early stop) and adversarial fine-tuning.

One loop serves both, airbench-style: the whole training set sits on the device, batches are index slices, and
augmentation runs on the batch. bf16 autocast (base training only) and channels_last are used for training steps
on CUDA only, so CPU runs stay bit-deterministic; predictions and losses are taken in exact fp32 (no TF32).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters.base import exact_fp32
from benchmark.data import augmentation_draws, crop_flip

SCHEDULES = ("constant", "slow-start-fast-decay")


@dataclass
class Schedule:
    """Learning rate per step. `slow-start-fast-decay` (Jeddi et al. 2020) is linear warm-up from 0 to `lr` over
    the first `warmup` fraction of the steps, then exponential decay to `lr * final` at the last step. The
    warm-up fraction 0.3 and final factor 0.01 are our defaults: the paper names the schedule, not its numbers."""

    name: str = "constant"
    lr: float = 1e-3
    warmup: float = 0.3
    final: float = 0.01

    def at(self, step: int, total: int) -> float:
        if self.name == "constant":
            return self.lr
        warm = max(1, round(self.warmup * total))
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * self.final ** ((step - warm + 1) / max(1, total - warm))


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0,1]; float batches (adversarial images) pass through."""
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch.float()


@dataclass
class Checkpoint:
    """Where `fit` keeps its whole state (weights, optimizer, RNG, history), so that a killed run resumes at the
    last saved epoch and ends with the weights an uninterrupted run would have had. Saved at the end of an epoch
    once `every_s` seconds have passed since the last save (a fast GPU epoch is not worth its write)."""

    load: Callable[[], dict | None]
    save: Callable[[dict], None]
    every_s: float = 60.0


@dataclass(frozen=True)
class StepPolicy:
    """How a training step runs: channels_last layout (what cuDNN's fastest convolutions want) and bf16 autocast.
    Both on CUDA only (`on`), so CPU runs stay bit-deterministic in fp32; tests hand the CUDA policy to a CPU run
    to execute those branches where no GPU is."""
    channels_last: bool
    bf16: bool

    @classmethod
    def on(cls, device: torch.device, mixed_precision: bool = True) -> "StepPolicy":
        cuda = device.type == "cuda"
        return cls(channels_last=cuda, bf16=cuda and mixed_precision)


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
        schedule: Schedule, seed: int, augment: bool = False, val: tuple[torch.Tensor, torch.Tensor] | None = None,
        patience: int | None = None, checkpoint: Checkpoint | None = None, mixed_precision: bool = True,
        desc: str = "train", policy: StepPolicy | None = None) -> History:
    """Adam + cross-entropy on (images, labels), both already on the model's device. With `val` and `patience`,
    stop once validation loss has not improved for `patience` epochs and restore the best weights (the paper
    trains "until overfitting"). `mixed_precision`: bf16 autocast on CUDA (never on the CPU); fine-tunes turn it
    off, since bf16 would distort the small adversarial perturbations they learn from."""
    device = images.device
    cuda = device.type == "cuda"
    policy = policy or StepPolicy.on(device, mixed_precision)
    if policy.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    history, best_loss, best_state, bad_epochs, first_epoch = History(), math.inf, None, 0, 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        history = History(saved["epochs"], best_epoch=saved["best_epoch"])  # saved only before any early stop
        best_loss, best_state, bad_epochs = saved["best_loss"], saved["best_state"], saved["bad_epochs"]
        first_epoch = len(history.epochs)
    step = first_epoch * steps_per_epoch
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", leave=False, dynamic_ncols=True)
    last_save = time.monotonic()
    for epoch in range(first_epoch, epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator).to(device)
        if augment:  # the epoch's crops and flips in one copy (pinned, asynchronous on CUDA), not one per step
            shifts, flips = augmentation_draws(generator, [min(batch_size, len(images) - s)
                                                           for s in range(0, len(images), batch_size)])
            if cuda:
                shifts, flips = (t.pin_memory().to(device, non_blocking=True) for t in (shifts, flips))
        loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x = to_float(images[idx])
            if augment:
                x = crop_flip(x, shifts[:, start:start + len(idx)], flips[start:start + len(idx)])
            if policy.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = schedule.at(step, total)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=policy.bf16):
                logits = model(x)
                loss = nn.functional.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)  # stays on the device: no sync per step
            correct += (logits.detach().argmax(1) == labels[idx]).sum()  # on the augmented batch, as it trains
            step += 1
            bar.update()
        record = {"epoch": epoch + 1, "train_loss": float(loss_sum) / len(images),
                  "train_acc": float(correct) / len(images)}
        if val is not None:
            record["val_loss"], record["val_acc"] = evaluate_loss(model, *val)
            if record["val_loss"] < best_loss:
                best_loss, best_state, bad_epochs = record["val_loss"], copy.deepcopy(model.state_dict()), 0
                history.best_epoch = epoch + 1
            else:
                bad_epochs += 1
        history.epochs.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if patience is not None and val is not None and bad_epochs >= patience:
            history.stopped_early = True
            break
        if checkpoint is not None and epoch + 1 < epochs and time.monotonic() - last_save >= checkpoint.every_s:
            checkpoint.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "generator": generator.get_state(), "epochs": history.epochs,
                             "best_epoch": history.best_epoch, "best_loss": best_loss, "best_state": best_state,
                             "bad_epochs": bad_epochs})
            last_save = time.monotonic()
    bar.close()
    if best_state is not None and patience is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


def seconds_per_image(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 32,
                      steps: int = 3) -> float:
    """Wall seconds per training image of an Adam step on this device, from the last of `steps` steps on the
    first `batch_size` images (the first steps warm up); the model's weights are left as they were."""
    state = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    x, y = to_float(images[:batch_size]), labels[:batch_size]
    model.train()
    for _ in range(steps):
        started = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - started
    model.load_state_dict(state)
    model.eval()
    return elapsed / len(x)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels, batched; accepts uint8 or float [0,1] images. In exact fp32 (no bf16, no TF32) on every
    device, like the attacks: an adversarial image sits near a decision boundary, where rounded logits could
    flip the verdict."""
    model.eval()
    with exact_fp32():
        return torch.cat([model(to_float(images[start:start + batch_size])).argmax(1)
                          for start in range(0, len(images), batch_size)])


@torch.no_grad()
def evaluate_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
                  ) -> tuple[float, float]:
    model.eval()
    loss, correct = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
    with exact_fp32():
        for start in range(0, len(images), batch_size):
            x, y = to_float(images[start:start + batch_size]), labels[start:start + batch_size]
            logits = model(x)
            loss += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
    return float(loss) / len(images), float(correct) / len(images)
