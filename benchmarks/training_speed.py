"""Is base training as fast as the machine allows? In one process, side by side, for the same number of steps
at the suites' batch of 512 with Adam in fp32, alternated over rounds (the median is given):

  (a) plain:      a plain torch loop, float images already in memory, no augmentation;
  (b) augmented:  the same with the product's batched crop + flip (benchmark.data), uint8 images in memory;
  (c) product:    the product's base-training node as a suite runs it (benchmark.nodes.base_model_node through
                  the store: code recording, progress bar, the early-stop validation pass scaled to the steps,
                  the checkpoint, the saved model and its test accuracy);

and the ratio (c)/(a). Options that keep fp32 semantics on a CPU are measured on (a) beside it: channels_last
memory format, one thread instead of all, torch.compile.

    .venv/bin/python benchmarks/training_speed.py --arch resnet18-torchvision --steps 20 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import data as datasets  # noqa: E402
from benchmark import env, models  # noqa: E402
from benchmark.context import Context  # noqa: E402
from benchmark.data import augmentation_draws, crop_flip  # noqa: E402
from benchmark.store import Store  # noqa: E402
from benchmark.suite import parse  # noqa: E402
from benchmark.train import to_float  # noqa: E402

BATCH = 512


def _model(arch: str, channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build(arch, mean=[0.5] * 3, std=[0.5] * 3)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def plain(arch: str, images: torch.Tensor, labels: torch.Tensor, steps: int, *, augment: bool = False,
          channels_last: bool = False, compiled: bool = False) -> float:
    """Seconds for `steps` training steps of a plain loop (after one warm-up step)."""
    model = _model(arch, channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    x_all = images if augment else to_float(images)  # (a): float images already in memory
    model.train()

    def step(idx: torch.Tensor, shifts=None, flips=None) -> None:
        x = to_float(x_all[idx]) if augment else x_all[idx]
        if augment:
            x = crop_flip(x, shifts, flips)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(step_model(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    order = torch.randperm(len(labels), generator=generator)
    shifts, flips = augmentation_draws(generator, [BATCH] * steps)
    step(order[:BATCH], shifts[:, :BATCH], flips[:BATCH])  # warm-up (and compilation)
    started = time.perf_counter()
    for i in range(steps):
        sl = slice(i * BATCH, (i + 1) * BATCH)
        step(order[sl], shifts[:, sl], flips[sl])
    return time.perf_counter() - started


SUITE = """
schema = 1
name = "training-speed"
[data]
source = "synthetic"
train = {train}
test = {test}
[models.base]
arch = "{arch}"
batch_size = {batch}
epochs = 1
augment = true
seed = 0
early_stop = {{ patience = 3, val_size = {val} }}
[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.01
[matrix]
models = ["base"]
attacks = ["fgsm"]
[evaluation]
sizes = [10]
seeds = [0]
"""


def product(arch: str, steps: int, data: datasets.Dataset, val: int) -> float:
    """Seconds the product's base-training node takes for `steps` steps on a fresh store (one epoch)."""
    from benchmark.nodes import base_model_node

    text = SUITE.format(train=len(data.train_y), test=len(data.test_y), arch=arch, batch=BATCH, val=val)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "suite.toml"
        path.write_text(text)
        suite = parse(__import__("tomllib").loads(text), path)
        ctx = Context(suite, data, torch.device("cpu"), Store(Path(folder) / "store"), env.versions())
        started = time.perf_counter()
        info = base_model_node(ctx, {}, name="base")
        elapsed = time.perf_counter() - started
    assert info["computed"] and info["train_images"] == steps * BATCH, info["train_images"]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18-torchvision")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--options", action="store_true", help="also channels_last, 1 thread, torch.compile")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    # The real recipe validates 5,000 images per epoch of 45,000 training images: the same share here.
    val = max(1, round(5000 * args.steps * BATCH / 45000))
    data = datasets.synthetic(val + args.steps * BATCH, 200)
    data.identity["pixels"] = "synthetic"  # what keys carry (the runner hashes the pixels)
    train = data.train_x[val:], data.train_y[val:]  # what (a) and (b) train on: the node's training images
    ways = {"(a) plain": lambda: plain(args.arch, *train, args.steps),
            "(b) augmented": lambda: plain(args.arch, *train, args.steps, augment=True),
            "(c) product node": lambda: product(args.arch, args.steps, data, val)}
    if args.options:
        ways["(a) channels_last"] = lambda: plain(args.arch, *train, args.steps, channels_last=True)
        ways["(b) augmented, channels_last"] = lambda: plain(args.arch, *train, args.steps, augment=True,
                                                             channels_last=True)

        def one_thread():
            torch.set_num_threads(1)
            try:
                return plain(args.arch, *train, args.steps)
            finally:
                torch.set_num_threads(threads)

        ways["(a) 1 thread"] = one_thread
        ways["(a) torch.compile"] = lambda: plain(args.arch, *train, args.steps, compiled=True)
    seconds: dict[str, list[float]] = {k: [] for k in ways}
    for r in range(args.rounds):
        for name, way in ways.items():
            seconds[name].append(way())
            print(f"round {r + 1}: {name}: {args.steps * BATCH / seconds[name][-1]:.1f} images/s", file=sys.stderr,
                  flush=True)
    rate = {k: args.steps * BATCH / statistics.median(v) for k, v in seconds.items()}
    print(f"{env.device_name(torch.device('cpu'))}, {threads} threads, torch {torch.__version__}; {args.arch}, batch "
          f"{BATCH}, Adam, fp32; {args.steps} steps, median of {args.rounds} rounds\n")
    print("| what | images/s | vs (a) |\n|---|---|---|")
    for name, value in rate.items():
        print(f"| {name} | {value:.1f} | {value / rate['(a) plain']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"arch": args.arch, "steps": args.steps, "threads": threads,
                                               "seconds": seconds, "images_per_s": rate}, indent=1))


if __name__ == "__main__":
    main()
