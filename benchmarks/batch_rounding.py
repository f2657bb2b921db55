"""How much does the attack batch size move the numbers? Runs one suite at several attack batch sizes over one
store (training is shared: the base model does not depend on the attack batch) and counts, against the first
batch size, the images whose adversarial prediction differs and the cells whose accuracy differs. Every random
draw follows the image's position (adapters.rng), so what differs is rounding: convolutions summed in another
order for another batch shape. Why keys carry the attack batch (benchmark.nodes.evaluation_key).

    .venv/bin/python benchmarks/batch_rounding.py suites/smoke.toml --batches 500 7 --out runs/batch-rounding
    .venv/bin/python benchmarks/batch_rounding.py suites/paper-cpu.toml --batches 500 50 --attacks fgsm \
        --out runs/batch-rounding-paper --store runs/artefacts --data-dir ../shared/data/cifar10-jpeg.tar.gz

A deterministic PGD (torchattacks.PGD, random_start = false, 10 steps of 1/255 within eps 4/255, pixel space) is
added to the suite's matrix, because an iterated attack lets rounding differences grow.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pandas as pd

from benchmark import examples
from benchmark.runner import run_suite
from benchmark.suite import load, parse


def with_batch(path: Path, batch: int, attacks: list[str] | None):
    raw = copy.deepcopy(load(path).raw)
    raw["attacks"]["pgd-fixed"] = {"adapter": "torchattacks.PGD", "eps": 4 / 255, "alpha": 1 / 255, "steps": 10,
                                   "random_start": False}
    kept = [a for a in raw["matrix"]["attacks"] if attacks is None or a in attacks]
    raw["matrix"]["attacks"] = kept + ["pgd-fixed"]
    raw["evaluation"]["batch_size"] = batch
    raw["name"] = f"{raw.get('name', path.stem)}-batch{batch}"
    return parse(raw, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 7])
    parser.add_argument("--out", type=Path, default=Path("runs/batch-rounding"))
    parser.add_argument("--data-dir", help="as run's --data-dir")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attacks", nargs="+", help="keep only these of the suite's matrix attacks (and pgd-fixed)")
    parser.add_argument("--store", type=Path, help="artefact store (default OUT/artefacts; runs/artefacts reuses a "
                                                   "run's base models)")
    args = parser.parse_args()
    tables = {}
    for batch in args.batches:
        out = args.out / f"batch{batch}"
        run_suite(with_batch(args.suite, batch, args.attacks), out, device=args.device, data_dir=args.data_dir,
                  store=args.store or args.out / "artefacts", write_report=False)
        tables[batch] = examples.load(out)
    first, *others = args.batches
    keys = ["model", "attack", "seed", "position"]
    reference = tables[first].set_index(keys)
    sizes = sorted(load(args.suite).raw["evaluation"]["sizes"])
    rows = []
    for batch in others:
        other = tables[batch].set_index(keys).loc[reference.index]
        differ = reference["pred_adv"] != other["pred_adv"]
        cells = examples.accuracies(tables[first], sizes).merge(
            examples.accuracies(tables[batch], sizes), on=["model", "attack", "seed", "size"], suffixes=("", "_b"))
        moved = (cells["adv_acc"] - cells["adv_acc_b"]).abs()
        per_attack = differ.groupby(level="attack").sum()
        rows.append({"batch": f"{first} vs {batch}", "images": len(differ), "pred_adv differs": int(differ.sum()),
                     "cells": len(cells), "cells differ": int((moved > 0).sum()),
                     "largest cell change (points)": round(100 * float(moved.max()), 2),
                     "by attack": ", ".join(f"{a} {int(n)}" for a, n in per_attack.items())})
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
