"""The cost estimate (benchmark.cost): printed before any work, the same from `validate --cost`, kept in run.json
beside what the run measured, within a factor of 2 of it on a small suite, and exact about what the store holds."""
from __future__ import annotations

import json

from benchmark import cost, runner
from benchmark.cli import main

EXTRA = """
[attacks.pgd]
adapter = "torchattacks.PGD"
eps = 0.02
alpha = 0.005
steps = 5
"""


def _suite(tiny_suite):
    path = tiny_suite(extra=EXTRA)
    path.write_text(path.read_text().replace('attacks = ["fgsm", "jsma"]', 'attacks = ["fgsm", "pgd"]'))
    return path


def test_the_estimate_is_said_before_work_kept_in_run_json_and_within_a_factor_of_two(tiny_suite, capsys):
    path = _suite(tiny_suite)
    out, store = path.parent / "run", str(path.parent / "store")
    assert main(["validate", str(path), "--cost", "--device", "cpu", "--store", store]) == 0
    asked = capsys.readouterr().err.strip().splitlines()[-1]
    assert asked.startswith("cost: about ") and "nothing in the store yet" in asked
    assert main(["run", str(path), "--out", str(out), "--store", store, "--device", "cpu"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cost:")]
    assert len(said) == 1 and "1 base training" in said[0] and "1 fine-tune" in said[0]
    run = json.loads((out / "run.json").read_text())
    estimate, measured = run["cost"]["estimate"], run["cost"]["measured"]
    assert estimate["nodes"] == measured["nodes"]  # what it said would compute is what computed
    assert 0.5 <= estimate["total_s"] / run["timings_s"]["graph"] <= 2.0, (estimate, run["timings_s"])


def test_the_estimate_knows_what_the_store_holds(tiny_suite, capsys):
    path = _suite(tiny_suite)
    out, store = path.parent / "run", str(path.parent / "store")
    assert main(["run", str(path), "--out", str(out), "--store", store, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["validate", str(path), "--cost", "--device", "cpu", "--store", store]) == 0
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("cost: nothing to compute (")
    path.write_text(path.read_text().replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    assert main(["validate", str(path), "--cost", "--device", "cpu", "--store", store]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    # seed 2: 2 models x 2 attacks; measured rates of the first run price them (no "up to")
    assert "(4 evaluations " in line and "up to" not in line and "already in the store" in line, line


def test_a_base_training_with_an_epoch_checkpoint_is_counted_from_that_epoch(tiny_suite, capsys):
    """As after a kill mid-training: the model gone from the store, a checkpoint of its key after epoch 1 of 2."""
    from benchmark.store import Store

    path = _suite(tiny_suite)
    out, store = path.parent / "run", path.parent / "store"
    assert main(["run", str(path), "--out", str(out), "--store", str(store), "--device", "cpu"]) == 0
    key = json.loads((out / "results.json").read_text())["models"]["base"]["key"]
    code = json.loads((store / "model-info" / f"{key}.json").read_text())["code"]  # the manifest training ran
    capsys.readouterr()
    for record in store.glob(f"*/{key}.*"):
        record.unlink()
    assert main(["validate", str(path), "--cost", "--device", "cpu", "--store", str(store)]) == 0
    whole = capsys.readouterr().err.strip().splitlines()[-1]
    assert "resumes" not in whole
    Store(store).put_state("checkpoints", key, {"epochs": [{"epoch": 1}], "code": json.dumps(code)})
    estimate = runner.estimate_cost([path], device="cpu", store=store)
    assert estimate.resumed == {"base": (1, 2)}
    assert estimate.line().endswith("; base resumes from its checkpoint after epoch 1 of 2")
    Store(store).put_state("checkpoints", key, {"epochs": [{"epoch": 1}], "code": json.dumps({"other": "code"})})
    assert runner.estimate_cost([path], device="cpu", store=store).resumed == {}  # the run would not resume it


def test_attack_passes_follow_the_resolved_parameters():
    assert cost.attack_passes("torchattacks.FGSM", {"eps": 0.01}, 3072) == (1, 0, False)
    assert cost.attack_passes("torchattacks.PGD", {"steps": 7}, 3072) == (7, 0, False)
    assert cost.attack_passes("jsma-origin", {"mode": "iterative", "gamma": 0.01}, 3072) == (30, 1, True)
    assert cost.attack_passes("jsma-origin", {"mode": "paper-code"}, 3072) == (1, 0, False)
    assert cost.attack_passes("torchattacks.Square", {"n_queries": 300}, 3072)[1] == 300
