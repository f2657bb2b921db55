"""Train the own-model suite's checkpoint (about 20 s on a CPU): `python suites/own_model/make_checkpoint.py`.

Writes suites/own_model/net.pt, a plain state dict of `net.build(10)` trained on the suite's synthetic training
split. Weights are never committed; this script (or tests/test_own_models.py) makes them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def make_checkpoint(path: Path = HERE / "net.pt", *, epochs: int = 3, train: int = 2000, test: int = 500) -> Path:
    """Train TinyNet on `benchmark.data.synthetic(train, test)` (the suite's data) and save its state dict."""
    from benchmark.data import synthetic
    from benchmark.sources import import_factory
    from benchmark.train import Schedule, fit

    build, _ = import_factory("net:build", HERE, "own-model")
    data = synthetic(train, test)
    torch.manual_seed(0)
    model = build(len(data.classes))
    fit(model, data.train_x, data.train_y, epochs=epochs, batch_size=100, schedule=Schedule(lr=3e-3), seed=0,
        augment=False, desc="train own-model checkpoint")
    torch.save(model.state_dict(), path)
    return path


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for `benchmark`
    print(make_checkpoint())
