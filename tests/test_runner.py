import json
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmark import evaluate, run_suite
from conftest import REPO


def _results(out):
    return (out / "results.json").read_bytes()


def test_run_suite_returns_one_row_per_cell_and_is_deterministic(tiny_suite, tmp_path):
    path = tiny_suite()
    frame = run_suite(path, tmp_path / "a", device="cpu")
    assert len(frame) == 2 * 2 * 2 * 2  # models x attacks x seeds x sizes
    assert set(frame.columns) >= {"model", "attack", "seed", "size", "orig_acc", "adv_acc", "ratio",
                                  "confusion_orig", "confusion_adv", "success_rate", "l0", "linf"}
    assert (frame["adv_acc"] <= frame["orig_acc"] + 0.05).all()
    assert (frame.loc[frame["attack"] == "fgsm", "linf"] <= 0.02 + 1e-6).all()
    results = json.loads(_results(tmp_path / "a"))
    assert results["data"]["source"] == "synthetic" and results["versions"]["torch"]
    assert results["models"]["base"]["weights"] != results["models"]["aft-fgsm"]["weights"]
    assert (tmp_path / "a" / "report.md").exists()
    run_suite(path, tmp_path / "b", device="cpu", write_report=False)
    assert _results(tmp_path / "a") == _results(tmp_path / "b")


def test_rerun_reuses_everything(tiny_suite, tmp_path, monkeypatch):
    path = tiny_suite()
    run_suite(path, tmp_path / "run", device="cpu", write_report=False)
    before = _results(tmp_path / "run")
    calls = []
    monkeypatch.setattr(evaluate, "run_evaluation", lambda *a, **k: calls.append(1))
    monkeypatch.setattr("benchmark.nodes.fit", lambda *a, **k: calls.append(1))
    run_suite(path, tmp_path / "run", device="cpu", write_report=False)
    assert calls == [] and _results(tmp_path / "run") == before


def test_corrupted_artefact_is_detected_and_rebuilt(tiny_suite, tmp_path):
    path = tiny_suite()
    run_suite(path, tmp_path / "run", device="cpu", write_report=False)
    before = _results(tmp_path / "run")
    victim = sorted((tmp_path / "run" / "artefacts" / "evaluations").glob("*.json"))[0]
    victim.write_text(victim.read_text().replace("1", "2", 1))
    model = sorted((tmp_path / "run" / "artefacts" / "models").glob("*.pt"))[0]
    blob = bytearray(model.read_bytes())
    blob[-100] ^= 0xFF
    model.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="corrupted"):
        run_suite(path, tmp_path / "run", device="cpu", write_report=False)
    assert _results(tmp_path / "run") == before


def test_kill_9_then_rerun_matches_an_uninterrupted_run(tiny_suite, tmp_path):
    path = tiny_suite()
    run_suite(path, tmp_path / "clean", device="cpu", write_report=False)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "run", str(path), "--out", str(out), "--device",
                             "cpu"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    evaluations = out / "artefacts" / "evaluations"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(evaluations.glob("*.sha256"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.stem for p in evaluations.glob("*.sha256")}
    assert 0 < len(done_before) < 8 and not (out / "results.json").exists()
    recomputed = []
    original = evaluate.run_evaluation

    def counting(*args, **kwargs):
        recomputed.append(kwargs.get("desc") or args[-1])
        return original(*args, **kwargs)

    pytest.MonkeyPatch().setattr(evaluate, "run_evaluation", counting)
    run_suite(path, out, device="cpu", write_report=False)
    assert len(recomputed) == 8 - len(done_before)
    assert _results(out) == _results(tmp_path / "clean")


def test_paper_code_profile_records_finetune_overlap(tiny_suite, tmp_path):
    frame = run_suite(tiny_suite("paper-code", "test"), tmp_path / "pc", device="cpu", write_report=False)
    tuned = frame[frame["model"] == "aft-fgsm"]
    # 100 of 300 test images were fine-tuned on, so about a third of each evaluation subset overlaps.
    assert tuned["finetune_overlap"].sum() > 0
    assert (frame.loc[frame["model"] == "base", "finetune_overlap"] == 0).all()
    frame = run_suite(tiny_suite("paper", "train"), tmp_path / "p", device="cpu", write_report=False)
    assert (frame["finetune_overlap"] == 0).all()


def test_tensors_hash_covers_batchnorm_counters():
    from benchmark.models import build
    from benchmark.store import tensors_hash

    state = build("resnet18-cifar", mean=[0.5] * 3, std=[0.5] * 3).state_dict()
    assert state["net.bn1.num_batches_tracked"].dim() == 0
    changed = dict(state, **{"net.bn1.num_batches_tracked": state["net.bn1.num_batches_tracked"] + 1})
    assert tensors_hash(state) != tensors_hash(changed)




def test_a_failing_node_leaves_the_finished_cells_written_and_the_failure_listed(tiny_suite, tmp_path, monkeypatch,
                                                                                  capsys):
    from benchmark import evaluate
    from benchmark.cli import main

    path, out = tiny_suite(), tmp_path / "run"
    original = evaluate.run_evaluation

    def run_evaluation(model, attack, *args, **kwargs):
        if attack.name == "jsma-origin":
            raise RuntimeError("simulated out of memory")
        return original(model, attack, *args, **kwargs)

    monkeypatch.setattr(evaluate, "run_evaluation", run_evaluation)
    assert main(["run", str(path), "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "results written for" in err and "without the 4 node(s) that failed or did not run" in err
    results = json.loads((out / "results.json").read_text())
    assert {c["attack"] for c in results["cells"]} == {"fgsm"}  # whole cells only: every fgsm one
    assert len(results["cells"]) == 2 * 2 * 2 and len(results["failed"]) == 4
    assert results["failed"][0]["error"] == "RuntimeError: simulated out of memory"
    report = (out / "report.md").read_text()
    assert report.index("## Failed: 4 node(s)") < report.index("## Models")
    assert "| jsma on aft-fgsm (seed 0) | RuntimeError: simulated out of memory |" in report
