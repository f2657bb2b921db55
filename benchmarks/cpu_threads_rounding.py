"""Does torch's CPU thread count change the numbers? One forward/backward pass of the small CNN on one fixed
batch per thread count; prints which thread counts give bit-identical weight gradients. Why CPU cache keys carry
the thread count (benchmark.context.Context.made_with). Run: `.venv/bin/python benchmarks/cpu_threads_rounding.py`.
"""
from __future__ import annotations

import hashlib

import torch

from benchmark import models


def gradient_hash(threads: int) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3, num_classes=10)
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.grad.numpy().tobytes())
    return digest.hexdigest()[:12]


if __name__ == "__main__":
    hashes = {t: gradient_hash(t) for t in (1, 2, 3, 4, 8)}
    for t, h in hashes.items():
        print(f"{t} thread(s): gradients {h}")
    print(f"{len(set(hashes.values()))} distinct results for {len(hashes)} thread counts "
          f"(torch {torch.__version__}, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'})")
