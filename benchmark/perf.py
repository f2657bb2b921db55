"""`python -m benchmark perf`: throughput of the hot paths on this machine, each beside what a user would
otherwise write, in one table. Synthetic images (shape and dtype of CIFAR-10), so it needs no data set.

- training: our loop (data resident on the device as uint8, crop+flip in batches) against a torchvision
  DataLoader loop with per-sample transforms, same model, optimizer and batch size;
- FGSM through the adapter;
- JSMA: in-house jsma-origin against ART's SaliencyMapMethod, same model, same originally-correct images, same
  L0 budget, with ART's success both ways (reached its target; left the true class);
- peak memory; and the stage times of a finished run with --run-dir.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

from adapters import get_attack
from adapters.jsma_origin import art_gamma, l0_budget
from adapters.via_art import choose_targets
from benchmark import data as datasets
from benchmark import env, models
from benchmark.store import atomic_write
from benchmark.train import Schedule, fit, predict


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(label: str, fn, device: torch.device) -> float:
    print(f"perf: timing {label}", file=sys.stderr, flush=True)  # the slow ones (ART's JSMA) run for minutes
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def dataloader_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     device: torch.device) -> None:
    """What a user would otherwise write: a Dataset with per-sample torchvision transforms and a DataLoader."""
    from torch.utils.data import DataLoader, Dataset
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32,
                                                                                                  scale=True)])

    class Images(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i]), labels[i]

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for x, y in DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=0):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


BATCH = 512  # the suites' base-training batch


def measure(device: torch.device, arch: str, images: int, train_images: int | None = None, batch_size: int = BATCH,
            gamma: float = 0.01) -> list[list]:
    """Throughput at the suites' training batch; an epoch of 32 steps on CUDA (a GPU's first steps are warm-up
    and launch overhead), 4 on a CPU."""
    train_images = train_images or batch_size * (32 if device.type == "cuda" else 4)
    data = datasets.synthetic(train_images, images)
    rows = []
    torch.manual_seed(0)
    model = models.build(arch, mean=[0.5] * 3, std=[0.5] * 3).to(device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    fit(model, train_x[:batch_size], train_y[:batch_size], epochs=1, batch_size=batch_size,
        schedule=Schedule(), seed=0, augment=True)  # warm-up
    ours = _timed("training, on-device data", lambda: fit(model, train_x, train_y, epochs=1, batch_size=batch_size,
                                                          schedule=Schedule(), seed=0, augment=True), device)
    loader = _timed("training, DataLoader",
                    lambda: dataloader_epoch(model, data.train_x, data.train_y, batch_size, device), device)
    rows.append(["train: on-device data + batched augmentation", train_images / ours, "", ""])
    rows.append(["train: torchvision DataLoader, per-sample transforms", train_images / loader, "",
                 f"ours {loader / ours:.1f}x"])
    # A model worth attacking: a few epochs so that attacks have something to break.
    fit(model, train_x, train_y, epochs=3, batch_size=batch_size, schedule=Schedule(), seed=0, augment=True)
    model.eval()
    x = data.test_x.to(device).float() / 255
    y = data.test_y.to(device)
    correct = predict(model, x) == y

    def success(adv: torch.Tensor) -> str:
        return f"{100 * float(((predict(model, adv) != y) & correct).sum() / correct.sum()):.1f}%"

    fgsm = get_attack("torchattacks.FGSM", eps=0.01)
    fgsm(model, x[:8], y[:8])
    t = _timed("FGSM", lambda: fgsm(model, x, y), device)
    rows.append(["attack: torchattacks.FGSM eps 0.01", images / t, success(fgsm(model, x, y)), ""])
    rows += jsma_like_for_like(model, x[correct], y[correct], gamma, device)
    return rows


def jsma_like_for_like(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float,
                       device: torch.device) -> list[list]:
    """In-house jsma-origin against ART's SaliencyMapMethod on the same originally-correct images, with the same
    feature budget (ART's gamma set so that both stop at the same L0) and theta 1. ART is targeted (random
    targets, never the true class), so its success is given both ways: reached its target, and left the true
    class (the only success jsma-origin aims at)."""
    features = x[0].numel()
    budget = l0_budget(gamma, features)
    ours = get_attack("jsma-origin", theta=1.0, gamma=gamma, batch_size=len(x))
    art = get_attack("art.SaliencyMapMethod", theta=1.0, gamma=art_gamma(budget, features), targets="random")
    with torch.no_grad():
        targets = choose_targets("random", y, model(x), art.seed)  # what the adapter draws for these positions
    measured = {}
    for name, attack in (("jsma-origin", ours), ("art.SaliencyMapMethod", art)):
        holder = {}
        t = _timed(name, lambda: holder.setdefault("adv", attack(model, x, y)), device)
        adv = holder["adv"]
        pred = predict(model, adv)
        measured[name] = {"rate": len(x) / t, "left": float((pred != y).float().mean()),
                          "reached": float((pred == targets).float().mean()),
                          "max_l0": int(((adv - x).abs() > 1e-6).flatten(1).sum(1).max())}
    o, a = measured["jsma-origin"], measured["art.SaliencyMapMethod"]
    return [[f"attack: jsma-origin theta 1, L0 <= {budget} (max seen {o['max_l0']}), {len(x)} correct images",
             o["rate"], f"{100 * o['left']:.1f}% left true class", f"{o['rate'] / a['rate']:.1f}x ART"],
            [f"attack: art.SaliencyMapMethod theta 1, L0 <= {budget} (max seen {a['max_l0']}), same images",
             a["rate"], f"{100 * a['left']:.1f}% left true class, {100 * a['reached']:.1f}% reached target", ""]]


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (GPU, allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (process max RSS)"


def main(*, device: str, arch: str, images: int, run_dir: Path | None = None, out: Path | None = None) -> str:
    torch_device = env.resolve_device(device)
    if images < 1:
        from benchmark.errors import UserError

        raise UserError("--images must be positive")
    if models.ARCHITECTURES.get(arch) is None:
        from benchmark.errors import UserError

        raise UserError(f"unknown architecture {arch!r}; valid: {', '.join(models.ARCHITECTURES.names())}")
    rows = measure(torch_device, arch, images)
    table = tabulate([[r[0], f"{r[1]:,.0f}" if r[1] >= 100 else f"{r[1]:.2f}", r[2], r[3]] for r in rows],
                     headers=["what", "images/s", "success (originally correct)", "vs"], tablefmt="github",
                     disable_numparse=True)
    lines = [f"device: {env.device_name(torch_device)}; model: {arch}; {images} attacked images; "
             f"torch {torch.__version__}", "", table, "", f"peak memory: {peak_memory(torch_device)}"]
    if run_dir is not None:
        run_file = Path(run_dir) / "run.json"
        if run_file.is_file():
            timings = json.loads(run_file.read_text())["timings_s"]
            lines += ["", tabulate(sorted(timings.items()), headers=["stage", "seconds"], tablefmt="github")]
    text = "\n".join(lines)
    if out is not None:
        atomic_write(out, (text + "\n").encode())
    return text
