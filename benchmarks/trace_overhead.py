"""What does recording the code a node runs cost? The same work with and without `fingerprint.record()`,
alternated, several rounds each, on this machine: training steps, FGSM, PGD and the in-house JSMA, on the small
CNN (many Python calls per second of tensor work: the worst case) and on torchvision's ResNet-18.

    .venv/bin/python benchmarks/trace_overhead.py --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from adapters import get_attack
from benchmark import evaluate, fingerprint, models
from benchmark.data import synthetic
from benchmark.train import Schedule, fit


def timed(work, traced: bool) -> float:
    started = time.perf_counter()
    if traced:
        with fingerprint.record():
            work()
    else:
        work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = synthetic(2000, 500)
    rows = []
    for arch in ("small-cnn", "resnet18-torchvision"):
        torch.manual_seed(0)
        model = models.build(arch, mean=[0.5] * 3, std=[0.5] * 3)
        n = 512 if arch == "small-cnn" else 128
        work = {
            "train 2 epochs" if arch == "small-cnn" else "train 1 epoch": lambda: fit(
                model, data.train_x[:n * 4], data.train_y[:n * 4], epochs=2 if arch == "small-cnn" else 1,
                batch_size=n // 2, schedule=Schedule(), seed=0, augment=True),
            "FGSM": lambda: evaluate.attack_images(get_attack("torchattacks.FGSM", eps=0.01), model,
                                                   data.test_x[:n], data.test_y[:n], 500),
            "PGD 10 steps": lambda: evaluate.attack_images(get_attack("torchattacks.PGD", eps=0.01, steps=10),
                                                           model, data.test_x[:n], data.test_y[:n], 500),
            "jsma-origin": lambda: evaluate.attack_images(get_attack("jsma-origin", gamma=0.02), model,
                                                          data.test_x[:n // 2], data.test_y[:n // 2], 500),
        }
        for name, fn in work.items():
            fn()  # warm up
            plain, traced = [], []
            for _ in range(args.rounds):
                plain.append(timed(fn, False))
                traced.append(timed(fn, True))
            p, t = statistics.median(plain), statistics.median(traced)
            rows.append({"model": arch, "work": name, "plain s (median)": round(p, 3),
                         "recorded s (median)": round(t, 3), "overhead %": round(100 * (t / p - 1), 1)})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds each, alternated\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
