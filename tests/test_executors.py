"""The graph's executors: the local one (default) and Ray's, which must give the same numbers, share one store
across suites, keep what finished when a node fails, and resume."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from benchmark import cli, evaluate, runner
from benchmark import nodes as node_fns
from benchmark import context as bench_context
from benchmark.executor import LocalExecutor
from benchmark.graph import Node, RunFailed, without


def _artefacts(out: Path) -> dict[str, int]:
    """Every artefact file with its modification time (ns): a rerun that recomputes something changes this."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def _finished(store: Path) -> dict[str, int]:
    """The artefacts of every node whose record is stored (.sha256 files, written last, with their times):
    context.cached writes a node's tensors, then its record under the same key, so tensors without their record
    belong to a node still in flight."""
    records = {p.stem for p in store.rglob("*.json")}
    return {k: v for k, v in _artefacts(store).items() if k.endswith(".sha256") and Path(k).stem in records}


def _cells(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())["cells"]


def _weights(out: Path) -> dict[str, str]:
    return {k: v["weights"] for k, v in json.loads((out / "results.json").read_text())["models"].items()}


# ------------------------------------------------------------------------------------------- a graph of stubs
class _Work:
    by_value: list = []

    def __init__(self, token: str):
        self.token = token

    def context(self):
        return {"token": self.token}


def _add(ctx, values, *, n):
    return n + sum(values.values())


def _boom(ctx, values):
    raise ValueError("no  such\nthing")


def _node(id: str, deps: tuple, fn) -> Node:
    return Node(id, f"node {id}", "stage", "w", deps, fn)


def _graph():
    """a=1 and b=2; c=a+b; bad raises; after_bad depends on it; d=c+10 does not."""
    node = _node
    return [node("a", (), partial(_add, n=1)), node("b", (), partial(_add, n=2)),
            node("c", ("a", "b"), partial(_add, n=0)), node("bad", ("a",), _boom),
            node("after_bad", ("bad", "c"), partial(_add, n=0)), node("d", ("c",), partial(_add, n=10))]


def _check_failure_semantics(outcome, nodes):
    assert outcome.values == {"a": 1, "b": 2, "c": 3, "d": 13}
    failed, skipped = outcome.failures(nodes)
    assert [n.id for n in failed] == ["bad"] and [n.id for n in skipped] == ["after_bad"]
    assert outcome.errors["bad"] == "ValueError: no such thing"  # one line
    message = str(RunFailed(failed, skipped, outcome.errors))
    assert "node 'node bad' failed: ValueError: no such thing" in message and "\n" not in message


def test_local_executor_runs_what_does_not_depend_on_a_failure():
    nodes = _graph()
    _check_failure_semantics(LocalExecutor().run(nodes, {"w": _Work("w")}), nodes)


def test_nodes_the_store_holds_are_not_dispatched_and_their_values_reach_their_dependents():
    """graph.without: the runner drops the nodes whose values the cost estimate read from the store; a node that
    depends on one gets its value bound in, so the executor runs only what is left."""
    nodes = _graph()
    left = without(nodes, {"a": 100, "b": 200})
    assert [n.id for n in left] == ["c", "bad", "after_bad", "d"]
    assert [n.deps for n in left] == [(), (), ("bad", "c"), ("c",)]
    outcome = LocalExecutor().run(left, {"w": _Work("w")})
    assert outcome.values == {"c": 300, "d": 310} and list(outcome.errors) == ["bad"]
    assert without(nodes, {}) == nodes


def test_failing_evaluation_keeps_the_rest_and_a_rerun_resumes(tiny_suite, tmp_path, monkeypatch, capsys):
    path, out = tiny_suite(), tmp_path / "run"
    original = evaluate.run_evaluation
    attacked = []

    def run_evaluation(model, attack, *args, **kwargs):
        attacked.append(attack.name)
        if attack.name == "jsma-origin":
            raise RuntimeError("simulated out of memory")
        return original(model, attack, *args, **kwargs)

    monkeypatch.setattr(evaluate, "run_evaluation", run_evaluation)
    assert cli.main(["run", str(path), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: node 'jsma on base (seed 0)' failed: RuntimeError: simulated out of memory")
    assert "3 more node(s) failed" in err  # both models x both seeds
    # What finished is written, whole cells only, the failed nodes listed (tests/test_runner.py checks the report)
    written = json.loads((out / "results.json").read_text())
    assert {c["attack"] for c in written["cells"]} == {"fgsm"} and len(written["failed"]) == 4
    assert len(list((out / "artefacts" / "evaluations").glob("*.json"))) == 4  # every fgsm evaluation kept
    attacked.clear()
    monkeypatch.setattr(evaluate, "run_evaluation", lambda *a, **k: attacked.append(a[1].name) or original(*a, **k))
    runner.run_suite(path, out, device="cpu", write_report=False)
    assert attacked == ["jsma-origin"] * 4  # nothing that finished is recomputed


def test_several_suites_share_one_store_and_a_shared_node_runs_once(tiny_suite, tmp_path, monkeypatch):
    first = tiny_suite()
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace('name = "tiny"', 'name = "tiny-fgsm"')
                      .replace('attacks = ["fgsm", "jsma"]', 'attacks = ["fgsm"]'))
    fits = []
    original = node_fns.fit
    monkeypatch.setattr(node_fns, "fit", lambda *a, **k: fits.append(k.get("desc")) or original(*a, **k))
    frames = runner.run_suites([first, second], device="cpu", store=tmp_path / "store",
                               outs=[tmp_path / "tiny", tmp_path / "tiny-fgsm"], write_report=False)
    assert sorted(fits) == ["fine-tune aft-fgsm", "train base"]  # each distinct model built once
    assert len(list((tmp_path / "store" / "evaluations").glob("*.json"))) == 2 * 2 * 2  # fgsm ones shared
    fgsm = [c for c in _cells(tmp_path / "tiny") if c["attack"] == "fgsm"]
    assert fgsm == _cells(tmp_path / "tiny-fgsm") and len(frames[1]) == len(fgsm)
    assert not (tmp_path / "tiny" / "artefacts").exists()


def test_cpu_keys_carry_the_thread_count(tiny_suite):
    suite = runner.load(tiny_suite())
    data = runner.prepare_data(suite, None)
    one, two = (bench_context.Context(suite, data, torch.device("cpu"), None, {"torch": "1", "torchvision": "2"}, threads=t)
                for t in (1, 2))
    assert one.made_with("model")["cpu_threads"] == 1 and one.made_with("model") != two.made_with("model")
    gpu = bench_context.Context(suite, data, torch.device("cuda"), None, {"torch": "1", "torchvision": "2"}, threads=1)
    assert "cpu_threads" not in gpu.made_with("model")


def test_the_local_executor_never_imports_ray(tiny_suite, tmp_path):
    path = tiny_suite()  # cut to one base model, one attack, one seed: what is tested is the import
    path.write_text(path.read_text().replace('models = ["base", "aft-fgsm"]', 'models = ["base"]')
                    .replace('attacks = ["fgsm", "jsma"]', 'attacks = ["fgsm"]').replace("seeds = [0, 1]", "seeds = [0]")
                    .replace("epochs = 2", "epochs = 1"))
    code = ("import sys; from benchmark import cli; "
            f"assert cli.main(['run', {str(path)!r}, '--out', {str(tmp_path / 'run')!r}, '--device', 'cpu']) "
            "== 0; assert 'ray' not in sys.modules, 'ray imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_executor_flags_are_checked(tiny_suite, capsys):
    assert cli.main(["run", str(tiny_suite()), "--address", "auto"]) == 2
    assert capsys.readouterr().err.strip() == "error: --address needs --executor ray"


def test_cli_several_suites_and_the_default_store(tiny_suite, tmp_path, monkeypatch, capsys):
    first = tiny_suite()
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace('name = "tiny"', 'name = "tiny-2"'))
    assert cli.main(["run", str(first), str(second), "--out", str(tmp_path / "both"), "--device", "cpu"]) == 0
    assert {p.name for p in (tmp_path / "both").iterdir()} >= {"tiny", "tiny-2", "artefacts"}
    assert _cells(tmp_path / "both" / "tiny") == _cells(tmp_path / "both" / "tiny-2")
    assert "tiny-2\n" in capsys.readouterr().out  # a table per suite, under its name
    monkeypatch.chdir(tmp_path)  # without --out: runs/<name>, over the store runs/artefacts, which it reuses
    shutil.copytree(tmp_path / "both" / "artefacts", tmp_path / "runs" / "artefacts")
    before = _artefacts(tmp_path / "runs" / "artefacts")
    assert cli.main(["run", str(first), "--device", "cpu"]) == 0
    assert _artefacts(tmp_path / "runs" / "artefacts") == before
    assert _cells(tmp_path / "runs" / "tiny") == _cells(tmp_path / "both" / "tiny")


def test_executor_ray_without_ray_installed_is_one_line(tiny_suite, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "benchmark.ray_executor", None)
    assert cli.main(["run", str(tiny_suite()), "--executor", "ray"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --executor ray needs Ray: pip install '.[ray]' "
                                               "(or pip install ray)")


# ------------------------------------------------------------------------------------------------------ Ray
@pytest.fixture(scope="module")
def ray_executor():
    pytest.importorskip("ray")
    from benchmark.ray_executor import RayExecutor

    executor = RayExecutor(num_cpus=2)  # a local instance: two single-threaded workers
    yield executor
    executor.close()


def test_ray_run_is_bit_identical_to_a_local_run_and_reruns_make_nothing(ray_executor, tiny_suite, tmp_path):
    path = tiny_suite()
    path.write_text(path.read_text().replace("seeds = [0, 1]", "seeds = [0]"))  # 9 nodes: trainings and attacks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count of Ray's CPU tasks: CPU kernels round by thread count
    try:
        runner.run_suite(path, tmp_path / "local", device="cpu", write_report=False)
    finally:
        torch.set_num_threads(threads)
    runner.run_suite(path, tmp_path / "ray", device="cpu", executor=ray_executor, write_report=False)
    assert _cells(tmp_path / "ray") == _cells(tmp_path / "local")
    assert _weights(tmp_path / "ray") == _weights(tmp_path / "local")
    assert (tmp_path / "ray" / "examples.csv").read_bytes() == (tmp_path / "local" / "examples.csv").read_bytes()
    for out in ("ray", "local"):  # a second Ray run, and one into the local run's folder, make no artefact
        before = _artefacts(tmp_path / out / "artefacts")
        runner.run_suite(path, tmp_path / out, device="cpu", executor=ray_executor, write_report=False)
        assert _artefacts(tmp_path / out / "artefacts") == before
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["executor"]["kind"] == "ray"
    # The rerun's estimate looked the nodes up under the actors' thread count (1), found all 9, and none was
    # handed to an actor.
    rerun = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert rerun["cost"]["estimate"]["stored"] == 9 and rerun["cost"]["estimate"]["nodes"] == {}
    assert rerun["placement"] == {} and rerun["nodes"]["computed"] == 0


def test_ray_keeps_what_does_not_depend_on_a_failure(ray_executor):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the stub nodes live in this test module
    nodes = _graph()
    _check_failure_semantics(ray_executor.run(nodes, {"w": _Work("w")}), nodes)


def _die_once(ctx, values, *, marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies mid-node, as under kill -9 or the OOM killer
    return 5


def _always_die(ctx, values):
    os._exit(1)


def test_ray_reruns_a_node_whose_worker_died_and_survives_one_that_always_kills_it(ray_executor, tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    node = _node
    nodes = [node("once", (), partial(_die_once, marker=str(tmp_path / "died"))), node("killer", (), _always_die),
             node("a", (), partial(_add, n=1)), node("b", ("a", "once"), partial(_add, n=0))]
    outcome = ray_executor.run(nodes, {"w": _Work("w")})
    assert outcome.values.get("once") == 5 and outcome.values.get("b") == 6, outcome  # re-run, and its dependent
    assert list(outcome.errors) == ["killer"]  # after Ray's restarts: failed, and the graph went on


def test_ray_runs_several_suites_over_one_store(ray_executor, tiny_suite, tmp_path):
    first = tiny_suite()
    second = tmp_path / "second.toml"
    second.write_text(first.read_text().replace('name = "tiny"', 'name = "tiny-2"')
                      .replace("seeds = [0, 1]", "seeds = [1, 2]"))
    runner.run_suites([first, second], [tmp_path / "a", tmp_path / "b"], device="cpu", executor=ray_executor,
                      write_report=False)
    store = tmp_path / "artefacts"
    assert len(list((store / "models").glob("*.pt"))) == 2  # base and fine-tune, once for both suites
    assert len(list((store / "evaluations").glob("*.json"))) == 2 * 2 * 3  # seed 1 shared
    seed1 = [c for c in _cells(tmp_path / "a") if c["seed"] == 1]
    assert seed1 == [c for c in _cells(tmp_path / "b") if c["seed"] == 1]


def kill_the_driver_then_rerun(command: list[str], out: Path, kind: str, *, in_process: bool = False,
                               settled=lambda: True) -> dict:
    """Start `command` (`python -m benchmark run ...` into `out`), kill -9 its driver once an artefact of `kind` is
    finished, wait until `settled()` (its workers gone), then run the same command again (in this process with
    `in_process`), which must succeed and rewrite none of the artefacts finished before the kill: those
    (`_finished`)."""
    import signal
    import time

    repo = Path(__file__).resolve().parent.parent
    driver = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    finished = out / "artefacts" / kind
    deadline = time.monotonic() + 240
    while len(list(finished.glob("*.sha256"))) < 1 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # what a Ray instance of its own left (a user runs `ray stop`)
        os.killpg(driver.pid, signal.SIGKILL)
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    before = _finished(out / "artefacts")
    if in_process:
        assert cli.main(command[3:]) == 0
    else:
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    after = _artefacts(out / "artefacts")
    assert all(after.get(k) == v for k, v in before.items()), [k for k, v in before.items() if after.get(k) != v]
    return before


def test_ray_run_resumes_after_its_driver_is_killed(ray_executor, tiny_suite, tmp_path):
    """kill -9 of a driver that started its own Ray instance, mid-run: a rerun (here, from this process, on this
    module's running instance: one Ray start fewer) recomputes none of the finished artefacts and completes (on a
    cluster: tests/test_ray_cluster.py)."""
    ray_executor.device("cpu")  # started: the rerun's `--executor ray` uses it
    path, out = tiny_suite(), tmp_path / "run"
    path.write_text(path.read_text().replace("sizes = [20, 50]", "sizes = [20, 300]"))  # slower evaluations
    command = [sys.executable, "-m", "benchmark", "run", str(path), "--out", str(out), "--device", "cpu",
               "--executor", "ray"]
    before = kill_the_driver_then_rerun(command, out, "evaluations", in_process=True)
    assert 1 <= sum(k.startswith("evaluations/") for k in before) < 8  # killed mid-run
    assert len(_cells(out)) == 2 * 2 * 2 * 2


FAILING_NET = """
import torch
from torch import nn


class OneAtATime(nn.Module):  # takes the one-image check before the run, fails on any batch
    def __init__(self, num_classes=10):
        super().__init__()
        self.head = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        if len(x) > 1:
            raise RuntimeError("batches are not supported")
        return self.head(x.flatten(1))


def build(num_classes):
    return OneAtATime(num_classes)
"""


def test_ray_cli_failure_is_one_line_and_keeps_the_other_suite(tiny_suite, tmp_path):
    """A suite-folder factory (shipped to the workers by value) whose model fails on batches; the whole stderr of
    a fresh process (Ray's own instance, its logs and its late error reports included)."""
    pytest.importorskip("ray")
    (tmp_path / "failing_net.py").write_text(FAILING_NET)
    namespace: dict = {}
    exec(FAILING_NET, namespace)
    torch.save(namespace["build"](10).state_dict(), tmp_path / "failing.pt")
    good = tiny_suite()
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace('name = "tiny"', 'name = "bad"').replace(
        "[attacks.fgsm]", '[models.mine]\ncheckpoint = "failing.pt"\nfactory = "failing_net:build"\n\n'
        "[attacks.fgsm]").replace('models = ["base", "aft-fgsm"]', 'models = ["base", "mine"]'))
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", str(good), str(bad), "--out",
                           str(tmp_path / "runs"), "--device", "cpu", "--executor", "ray"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=300)
    lines = [line.strip() for line in done.stderr.replace("\r", "\n").splitlines()]
    noise = [line for line in lines if any(w in line for w in ("Traceback", "ERROR", "WARNING", "(raylet)"))]
    assert not noise, noise
    err = [line for line in lines if line.startswith("error:")]
    assert done.returncode == 1 and len(err) == 1, lines
    assert err[0].startswith("error: node 'bad: load mine' failed: RuntimeError: batches are not supported")
    assert "results written for" in err[0] and str(tmp_path / "runs" / "tiny") in err[0]
    assert (tmp_path / "runs" / "tiny" / "results.json").exists()
    bad_results = json.loads((tmp_path / "runs" / "bad" / "results.json").read_text())  # base's cells finished
    assert {c["model"] for c in bad_results["cells"]} == {"base"}
    failed = {f["node"]: f["error"] for f in bad_results["failed"]}
    assert failed["bad: load mine"].startswith("RuntimeError: batches are not supported")


def test_check_names_a_device_or_thread_count_change(tmp_path, capsys):
    results = json.loads((Path(__file__).parent / "data" / "results-fixture.json").read_text())
    for name, device in (("run", "cpu (X), 1 thread"), ("base", "cpu (X), 2 threads")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**results, "device": device}))
    assert cli.main(["check", str(tmp_path / "run"), "--baseline", str(tmp_path / "base" / "results.json")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "note: run on cpu (X), 1 thread, baseline on cpu (X), 2 threads"
    (tmp_path / "base" / "results.json").write_text(json.dumps({**results, "device": "cpu (X)"}))  # older format
    assert cli.main(["check", str(tmp_path / "run"), "--baseline", str(tmp_path / "base" / "results.json")]) == 0
    assert "note:" not in capsys.readouterr().out
