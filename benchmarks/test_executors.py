"""The Ray executor against the local one, with pytest-benchmark (not part of `./bench test`; run alone, since
both use every core: `./bench test benchmarks/test_executors.py --benchmark-only`).

Each round runs a suite from an empty store, the whole command as a user pays for it: the Ray rounds include
starting and stopping the local Ray instance (2 single-threaded workers on a 2-core machine); the local executor
runs one node at a time with torch's threads (2 here), and once more with 1 thread (local-1-thread: the same
thread count as Ray's tasks, hence the same keys and bit-identical numbers). With 2 threads the local run is not
like for like in one respect: on a CPU the thread count changes how convolutions round, so it trains slightly
different weights.
- smoke: the paper's matrix in miniature (training-heavy, a chain of dependencies): Ray's overhead.
- eval-sweep: one model attacked 36 times: what two workers gain where nodes are independent.
- a rerun of smoke into a finished folder (every node cached): the fixed cost of each executor.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest
import torch

from benchmark.executor import LocalExecutor
from benchmark.runner import run_suite

REPO = Path(__file__).resolve().parent.parent


def _executor(kind: str):
    if kind.startswith("local"):
        return LocalExecutor()
    pytest.importorskip("ray")
    from benchmark.ray_executor import RayExecutor

    return RayExecutor(num_cpus=2)


@pytest.fixture
def threads(request):
    """local-1-thread: the local executor with Ray's per-task thread count (the same keys and numbers)."""
    before = torch.get_num_threads()
    if request.node.callspec.params["kind"] == "local-1-thread":
        torch.set_num_threads(1)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.mark.parametrize("suite", ["smoke", "eval-sweep"])
@pytest.mark.parametrize("kind", ["local", "local-1-thread", "ray"])
def test_suite_wall_time(benchmark, tmp_path, suite, kind, threads):
    out = tmp_path / "run"
    starts = []

    def fresh():
        shutil.rmtree(out, ignore_errors=True)

    def run():
        executor = _executor(kind)
        started = time.perf_counter()
        executor.device("cpu")  # starts Ray
        starts.append(time.perf_counter() - started)
        try:
            return run_suite(REPO / "suites" / f"{suite}.toml", out, device="cpu", executor=executor,
                             write_report=False)
        finally:
            executor.close()

    frame = benchmark.pedantic(run, setup=fresh, rounds=2, iterations=1)
    evaluations = frame.groupby(["model", "attack", "seed"]).ngroups
    benchmark.extra_info.update({"suite": suite, "executor": kind, "evaluations": evaluations,
                                 "threads_per_node": 1 if kind == "ray" else threads,
                                 "cells_sha256": hashlib.sha256(frame.to_json().encode()).hexdigest()[:16],
                                 "executor_start_s": round(sum(starts) / len(starts), 2),
                                 "evaluations_per_s": evaluations / benchmark.stats.stats.mean})
    assert len(frame) > 0


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_cached_rerun_wall_time(benchmark, tmp_path, kind):
    suite, out = REPO / "suites" / "smoke.toml", tmp_path / "run"
    executor = _executor(kind)
    try:
        run_suite(suite, out, device="cpu", executor=executor, write_report=False)  # fills the store
    finally:
        executor.close()

    def rerun():
        executor = _executor(kind)
        try:
            return run_suite(suite, out, device="cpu", executor=executor, write_report=False)
        finally:
            executor.close()

    frame = benchmark.pedantic(rerun, rounds=3, iterations=1)
    benchmark.extra_info.update({"suite": "smoke (cached)", "executor": kind})
    assert len(frame) > 0
