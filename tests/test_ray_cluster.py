"""Ray past one machine, simulated on one: a cluster of raylets (ray.cluster_utils.Cluster: a head without CPUs,
which holds the driver, and worker nodes of one CPU each) that a repeated suite spreads over, bit-identical to a
local run at the same thread count; a worker node lost mid-training, every worker node lost, the driver killed;
GPU actors placed by resources (a node may declare GPUs it does not have); the store checked from every node."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from benchmark import cli, runner
from test_executors import _artefacts, _cells, _finished, _node, _weights, _Work, kill_the_driver_then_rerun
from test_repeats import SUITE

ray = pytest.importorskip("ray")

from benchmark.ray_executor import NO_NODE, RayExecutor  # noqa: E402  (needs ray)

# A lost node is noticed in about 3 s rather than Ray's default 15 s.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 0}
NODES = 2 + 4 + 4 + 6  # 2 base trainings, 4 adversarial sets, 4 fine-tunes, 6 models evaluated with one seed


@pytest.fixture(scope="module")
def cluster():
    """The head (no CPU: the driver's node) and two worker nodes of one CPU each; the test process is the driver."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                         "log_to_stderr": False, "_system_config": HEALTH_CHECKS})
    for _ in range(2):
        head.add_node(num_cpus=1, log_to_stderr=False)
    ray.init(address=head.address, log_to_driver=False, logging_level=logging.ERROR)
    yield head
    ray.shutdown()
    head.shutdown()


def _workers(cluster, count: int) -> list:
    """Exactly `count` CPU worker nodes in the cluster (nodes added or removed), once the cluster says so."""
    while len(cluster.worker_nodes) > count:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    while len(cluster.worker_nodes) < count:
        cluster.add_node(num_cpus=1, log_to_stderr=False)
    _wait_for(lambda: ray.cluster_resources().get("CPU", 0) == count and ray.cluster_resources().get("GPU", 0) == 0)
    return list(cluster.worker_nodes)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the cluster did not settle"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """The repeated suite (2 base trainings x 2 fine-tunes each), one seed, and its cells and weights from the
    local executor at one thread: the uninterrupted run every cluster run must equal."""
    from conftest import REPO

    root = tmp_path_factory.mktemp("cluster")
    path = root / "rep.toml"
    path.write_text(SUITE.format(base="repeats = 2", tuned="repeats = 2",
                                 reference=REPO / "suites" / "reference" / "paper-tables.toml")
                    .replace("epochs = 3", "epochs = 4").replace("sizes = [20, 40]", "sizes = [20]")
                    .replace("seeds = [0, 1]", "seeds = [0]"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count of the actors
    try:
        runner.run_suite(path, root / "local", device="cpu", write_report=False)
    finally:
        torch.set_num_threads(threads)
    return path, _cells(root / "local"), _weights(root / "local")


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# ------------------------------------------------------------------------------------------------- nodes lost
def _training(store: Path, cluster) -> tuple[int, object] | None:
    """(pid, worker node) of an actor training a model now (a base training or a fine-tune): the holder of its
    claim in the store (Store.claim, an flock on locks/model-info/<key>.lock, as /proc/locks lists it), and the
    node whose raylet started that process."""
    inodes = {p.stat().st_ino for p in (store / "locks" / "model-info").glob("*.lock")}
    for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines()):
        if fields[1] == "FLOCK" and int(fields[5].rsplit(":", 1)[1]) in inodes:  # a waiter's line has "->"
            pid, ancestors = int(fields[4]), set()
            try:
                while pid > 1 and pid not in ancestors:
                    ancestors.add(pid)
                    pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:  # it finished and went meanwhile
                continue
            for node in cluster.worker_nodes:
                if node.all_processes["raylet"][0].process.pid in ancestors:
                    return int(fields[4]), node
    return None


def _lose_a_node_mid_training(cluster, store: Path, running: threading.Thread, after: int = 0):
    """Wait until a worker node trains a model once `after` models are finished, then lose it as a machine dies:
    its raylet and the training's process killed at once. The node lost."""
    deadline = time.monotonic() + 120
    while len(list((store / "model-info").glob("*.sha256"))) < after or (found := _training(store, cluster)) is None:
        assert running.is_alive() and time.monotonic() < deadline, "no training was caught running"
        time.sleep(0.01)
    pid, node = found
    for process in (pid, node.all_processes["raylet"][0].process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)  # the rest of its processes
    return node


def test_a_repeated_suite_spreads_over_two_nodes_loses_one_mid_training_and_equals_a_local_run(cluster, repeated,
                                                                                              tmp_path):
    """Both nodes train a base model; one is lost while it fine-tunes: the run goes on on the other, nothing
    finished (the lost node's base model included) is lost or computed again, and the cells equal the local run
    at one thread bit for bit. run.json names the Ray node that computed each node."""
    path, cells, weights = repeated
    workers = _workers(cluster, 2)
    out, failures = tmp_path / "run", []

    def run():
        try:
            runner.run_suite(path, out, device="cpu", executor=RayExecutor(cluster.address), write_report=False)
        except BaseException as exc:  # noqa: BLE001  (reported by the test's thread)
            failures.append(exc)

    running = threading.Thread(target=run)
    running.start()
    lost = _lose_a_node_mid_training(cluster, out / "artefacts", running, after=2)  # in a fine-tune: bases done
    finished = _finished(out / "artefacts")
    running.join(240)
    assert not running.is_alive() and not failures, failures
    assert _cells(out) == cells and _weights(out) == weights  # bit for bit, as the uninterrupted local run
    assert all(_artefacts(out / "artefacts").get(k) == v for k, v in finished.items())  # nothing finished lost
    run = _run_json(out)
    # Every node computed exactly once: a finished node run again would have been served from the store.
    assert run["nodes"] == {"computed": NODES, "failed": 0, "reused": 0}
    placement = run["placement"]
    assert len(placement) == NODES and {"train base@r0", "fgsm on aft-fgsm@r1.1 (seed 0)"} <= set(placement)
    assert {p["ray_node"] for p in placement.values()} == {w.node_id for w in workers}  # both computed
    assert lost.node_id in {placement["train base@r0"]["ray_node"], placement["train base@r1"]["ray_node"]}
    assert all(p["gpus"] == [] and p["host"] for p in placement.values())


def _store_intact(store: Path) -> None:
    """Every artefact whole: its payload hashes to its .sha256, and no temporary file is left."""
    checks = list(store.rglob("*.sha256"))
    assert checks and not [p for p in store.rglob("*") if ".tmp-" in p.name]
    for check in checks:
        payload = next(p for p in check.parent.glob(f"{check.stem}.*") if p.suffix != ".sha256")
        assert hashlib.sha256(payload.read_bytes()).hexdigest() == check.read_text().strip(), payload


def test_when_every_worker_node_is_gone_the_run_stops_in_one_line(cluster, repeated, tmp_path, capsys):
    """The last worker node lost in its second base training: each node not finished fails with NO_NODE; one
    error line, exit 1, the store intact (a rerun resumes from it: the driver's test below)."""
    path, _, _ = repeated
    _workers(cluster, 1)
    out, codes = tmp_path / "run", []
    command = ["run", str(path), "--out", str(out), "--device", "cpu", "--executor", "ray", "--address",
               cluster.address]
    running = threading.Thread(target=lambda: codes.append(cli.main(command)))
    running.start()
    _lose_a_node_mid_training(cluster, out / "artefacts", running, after=1)
    running.join(120)
    assert codes == [1]
    errors = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: node 'train base@r"), errors
    assert NO_NODE.format(need="1 CPU") in errors[0] and "a rerun resumes from them" in errors[0]
    _store_intact(out / "artefacts")


def test_the_driver_killed_on_a_cluster_and_the_same_command_resumes(cluster, repeated, tmp_path):
    """kill -9 of a driver joined to the cluster, mid-run: the same command again (here, from this process)
    rewrites nothing finished and ends with the uninterrupted run's cells."""
    path, cells, _ = repeated
    _workers(cluster, 2)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "benchmark", "run", str(path), "--out", str(out), "--device", "cpu",
               "--executor", "ray", "--address", cluster.address]
    # Settled: the killed driver's actors gone (Ray ends a job's actors with its driver), their CPUs free.
    before = kill_the_driver_then_rerun(
        command, out, "model-info", in_process=True,
        settled=lambda: ray.available_resources().get("CPU", 0) == ray.cluster_resources().get("CPU"))
    assert 1 <= sum(k.startswith("model-info/") for k in before) < 6  # killed mid-run
    assert _cells(out) == cells


# ----------------------------------------------------------------------------------------------------- GPUs
def _pinned(ctx, values):
    """What the actor that runs this node sees: its GPUs by Ray and by CUDA_VISIBLE_DEVICES, and its node."""
    time.sleep(0.2)
    return {"gpus": [str(g) for g in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "ray_node": ray.get_runtime_context().get_node_id()}


def test_gpu_actors_are_placed_one_per_gpu_across_nodes(cluster):
    """Nodes that declare GPUs (none here): one actor per GPU, each pinned to its own, placement named per node.
    Stub nodes: the check is of placement, not CUDA."""
    two, one = cluster.add_node(num_cpus=2, num_gpus=2), cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        ray.cloudpickle.register_pickle_by_value(sys.modules[_Work.__module__])
        executor = RayExecutor(cluster.address)
        assert executor.device("auto").type == "cuda"
        nodes = [_node(f"n{i}", (), _pinned) for i in range(6)]
        outcome = executor.run(nodes, {"w": _Work("w")})
        assert not outcome.errors and set(outcome.placement) == {n.id for n in nodes}
        actors = {(p["ray_node"], tuple(map(str, p["gpus"]))) for p in outcome.placement.values()}
        assert actors == {(two.node_id, ("0",)), (two.node_id, ("1",)), (one.node_id, ("0",))}  # 2 on the 2-GPU node
        for node in nodes:
            where, seen = outcome.placement[node.id], outcome.values[node.id]
            assert seen == {"gpus": list(map(str, where["gpus"])), "visible": ",".join(seen["gpus"]),
                            "ray_node": where["ray_node"]} and where["node"] == node.name
        described = executor.describe()
        assert described["cluster_gpus"] == 3 and described["actor_resources"] == {"num_gpus": 1, "num_cpus": 1}
    finally:
        cluster.remove_node(two)
        cluster.remove_node(one)
        _wait_for(lambda: ray.cluster_resources().get("GPU", 0) == 0)


# ------------------------------------------------------------------------------------------------ the store
def _unshare() -> list[str] | None:
    """A command prefix that runs a process in a mount namespace of its own (root, or an unprivileged user
    namespace), or None where this machine allows neither."""
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def test_a_node_that_sees_another_store_folder_is_refused_before_any_work(cluster, repeated, tmp_path, capsys):
    """A third worker node whose machine lacks the shared folder: started in a mount namespace where an empty
    tmpfs covers it (the same path, another folder). The run refuses in one line, exit 2, before any node runs."""
    prefix = _unshare()
    if prefix is None:
        pytest.skip("no mount namespace here (unshare)")
    path, _, _ = repeated
    _workers(cluster, 2)
    shared = tmp_path / "shared"
    shared.mkdir()
    ray_cli = Path(sys.executable).with_name("ray")
    node = subprocess.Popen([*prefix, "sh", "-c", f"mount -t tmpfs tmpfs '{shared}' && exec '{ray_cli}' start "
                             f"--address {cluster.address} --num-cpus 1 --block --disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: ray.cluster_resources().get("CPU", 0) == 3)
        out = shared / "run"
        code = cli.main(["run", str(path), "--out", str(out), "--device", "cpu", "--executor", "ray", "--address",
                         cluster.address])
        err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert code == 2, err
        assert err.startswith(f"error: the store {out / 'artefacts'}: the Ray worker on ")
        assert "cannot read the token the driver wrote into" in err and "at the same path" in err
        assert [p.name for p in (out / "artefacts").iterdir()] == []  # no node ran, no token left
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
        _wait_for(lambda: ray.cluster_resources().get("CPU", 0) == 2)
