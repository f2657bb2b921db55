"""What bounds a base model that early-stopped below the paper's accuracy: continue it from its stored weights
on the same training and validation images, once with the recipe's learning rate and once with a lower one, for
the same number of epochs, and print validation accuracy and loss per epoch.

    python benchmarks/base_bound.py SUITE --store runs/artefacts --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --epochs 3 --lrs 1e-3 1e-4 [--json out.json]

Both continuations start from the same weights (the recipe's best epoch, as stored) with a fresh Adam state and
the recipe's seed, augmentation and batch; the one with the recipe's lr is "longer patience", the other "another
lr". A measurement beside the suite, not a cell: nothing is stored.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import env, models
from benchmark.context import Context
from benchmark.nodes import base_key, base_split
from benchmark.runner import prepare_data
from benchmark.store import Store
from benchmark.suite import load
from benchmark.train import Schedule, evaluate_loss, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--model-key", help="the stored base model's key (default: the suite's, with this code)")
    parser.add_argument("--json")
    args = parser.parse_args()
    suite = load(args.suite)
    spec = next(s for s in suite.models.values() if s.parent is None)
    e = spec.entry
    data = prepare_data(suite, args.data_dir)
    store = Store(Path(args.store))
    key = args.model_key or base_key(Context(suite, data, torch.device("cpu"), store, env.versions()), spec)
    state = store.get_tensors("models", key)
    if state is None:
        sys.exit(f"no stored model {key} in {args.store}: give --model-key")
    start = models.build(e["arch"], mean=e["mean"], std=e["std"], num_classes=len(data.classes))
    start.load_state_dict(state)
    val_idx, kept = base_split(e, len(data.train_y))
    val = (data.train_x[val_idx], data.train_y[val_idx])
    x, y = data.train_x[kept], data.train_y[kept]
    loss0, acc0 = evaluate_loss(start, *val)
    test0 = evaluate_loss(start, data.test_x, data.test_y)[1]
    out = {"model_key": key, "start": {"val_loss": loss0, "val_acc": acc0, "test_acc": test0}, "runs": {}}
    print(f"start ({key}): val_loss {loss0:.4f} val_acc {acc0:.4f} test_acc {test0:.4f}", flush=True)
    for lr in args.lrs:
        model = copy.deepcopy(start)
        began = time.perf_counter()
        history = fit(model, x, y, epochs=args.epochs, batch_size=e["batch_size"], schedule=Schedule(lr=lr),
                      seed=e["seed"], augment=e["augment"], val=val, patience=None, desc=f"lr {lr:g}")
        test = evaluate_loss(model, data.test_x, data.test_y)[1]
        out["runs"][f"{lr:g}"] = {"epochs": history.epochs, "test_acc": test,
                                  "seconds": round(time.perf_counter() - began, 1)}
        for i, epoch in enumerate(history.epochs, 1):
            print(f"lr {lr:g} epoch +{i}: " + " ".join(f"{k} {v:.4f}" for k, v in epoch.items()
                                                       if isinstance(v, float)), flush=True)
        print(f"lr {lr:g}: test_acc {test:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
