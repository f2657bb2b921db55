"""A repeated suite on one node and on two: what spreading over a Ray cluster's nodes costs and gives on a CPU.

One small synthetic suite with repeated training (the base recipe 2 times, its fine-tune 2 times under each, so 2
base trainings, 4 adversarial sets, 4 fine-tunes and their evaluations), each round from an empty store, on:

  local           the default executor, torch's own thread count, one node after another;
  local-1-thread  the same at one thread: the numbers Ray's one-thread actors compute (cells hash alike);
  ray-1-node      a Ray cluster of one worker node of 2 CPUs (2 actors), joined with RayExecutor(address);
  ray-2-nodes     a Ray cluster of two worker nodes of 1 CPU each (ray.cluster_utils.Cluster on this machine:
                  separate raylets and object stores, the store folder shared), joined the same way.

Each Ray cluster's head has no CPU (the driver's node) and is started once, before its rounds (a real cluster
runs already); its start is given apart. Per executor: the command's wall time (median over rounds), the graph's
(run.json `graph`), the cells' sha256, and how many graph nodes each Ray node computed (run.json `placement`).
Two simulated nodes share this machine's cores, so the comparison says what a second node's raylet, object store
and transfers cost, not what a second machine gives.

    .venv/bin/python benchmarks/ray_cluster_repeats.py --rounds 3 --json /tmp/cluster.json

(alone on the machine: a timing next to a busy process measures the other process.)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmark import runner  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

SUITE = """
schema = 1
name = "rep-cluster"
profile = "paper"

[data]
source = "synthetic"
train = {train}
test = 100

[models.base]
arch = "small-cnn"
epochs = {epochs}
batch_size = 100
seed = 3
repeats = 2

[models.aft-fgsm]
from = "base"
attack = "fgsm"
images = 50
split = "train"
batch_size = 25
repeats = 2

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.004

[matrix]
models = ["base", "aft-fgsm"]
attacks = ["fgsm"]

[evaluation]
sizes = [{size}]
seeds = [0, 1]
batch_size = 20

[checks]
probe_images = 0

[reference]
file = "{reference}"
"""

EXECUTORS = ("local", "local-1-thread", "ray-1-node", "ray-2-nodes")


def one_run(path: Path, out: Path, executor=None) -> dict:
    """One command from an empty store: wall and graph seconds, the cells' hash, graph nodes per Ray node."""
    started = time.perf_counter()
    runner.run_suite(path, out, device="cpu", executor=executor, write_report=False)
    wall = time.perf_counter() - started
    run = json.loads((out / "run.json").read_text())
    cells = json.loads((out / "results.json").read_text())["cells"]
    per_node = Counter(p["ray_node"][:8] for p in run.get("placement", {}).values())
    return {"wall_s": wall, "graph_s": run["timings_s"]["graph"], "nodes": sum(run["nodes"].values()),
            "cells": hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()[:16],
            "per_ray_node": dict(sorted(per_node.items()))}


def measure(name: str, path: Path, root: Path, rounds: int) -> dict:
    runs, started_s = [], None
    if name.startswith("local"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if name == "local-1-thread" else threads)
        try:
            runs = [one_run(path, root / f"{name}-{i}") for i in range(rounds)]
        finally:
            torch.set_num_threads(threads)
    else:
        import ray
        from ray.cluster_utils import Cluster

        from benchmark.ray_executor import RayExecutor

        started = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                                "log_to_stderr": False})
        for cpus in ((2,) if name == "ray-1-node" else (1, 1)):
            cluster.add_node(num_cpus=cpus, log_to_stderr=False)
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        started_s = time.perf_counter() - started
        try:
            runs = [one_run(path, root / f"{name}-{i}", RayExecutor(cluster.address)) for i in range(rounds)]
        finally:
            ray.shutdown()
            cluster.shutdown()
    walls = [r["wall_s"] for r in runs]
    return {"executor": name, "rounds": rounds, "wall_s": statistics.median(walls), "min_s": min(walls),
            "max_s": max(walls), "graph_s": statistics.median(r["graph_s"] for r in runs),
            "cluster_start_s": started_s, "nodes": runs[0]["nodes"], "cells": sorted({r["cells"] for r in runs}),
            "per_ray_node": [r["per_ray_node"] for r in runs]}


def table(rows: list[dict]) -> str:
    lines = ["| executor | rounds | wall s (median) | min | max | graph s | cluster start s | graph nodes | "
             "graph nodes per Ray node | cells sha256 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_node = "; ".join(" + ".join(str(n) for n in counts.values()) for counts in r["per_ray_node"]) \
            if any(r["per_ray_node"]) else ""
        start = f"{r['cluster_start_s']:.1f}" if r["cluster_start_s"] is not None else ""
        lines.append(f"| {r['executor']} | {r['rounds']} | {r['wall_s']:.1f} | {r['min_s']:.1f} | {r['max_s']:.1f} "
                     f"| {r['graph_s']:.1f} | {start} | {r['nodes']} | {per_node} | {', '.join(r['cells'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train", type=int, default=600, help="training images (default 600)")
    parser.add_argument("--epochs", type=int, default=4, help="base training epochs (default 4)")
    parser.add_argument("--size", type=int, default=100, help="images per evaluation (default 100)")
    parser.add_argument("--executors", default=",".join(EXECUTORS), help=f"among {', '.join(EXECUTORS)}")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ray-cluster-repeats-") as tmp:
        root = Path(tmp)
        path = root / "suite.toml"
        path.write_text(SUITE.format(train=args.train, epochs=args.epochs, size=args.size,
                                     reference=REPO / "suites" / "reference" / "paper-tables.toml"))
        rows = []
        for name in args.executors.split(","):
            rows.append(measure(name, path, root, args.rounds))
            print(f"{name}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) by default; suite: {args.train} training "
          f"images, {args.epochs} epochs, 2 x 2 repeats, {args.size} images x 2 seeds per evaluation")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
