"""What may move a cell besides the suite, the data and the code, each pinned down: the data's memory layout,
Python's `random`, reseeding toolkits, the attack batch, code the keys did not cover, two runs over one store,
and a gate that passed what it should not."""
import json
import os
import pickle
import random
import re
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from adapters import get_attack
from adapters.base import Attack
from benchmark import code_hashes, data, evaluate, fingerprint, runner
from benchmark import nodes as node_fns
from benchmark import check
from benchmark import examples as examples_csv
from benchmark.check import main as check_main
from benchmark.errors import UserError
from conftest import REPO

SUITE = """
schema = 1
name = "{name}"

[data]
{data}

[models.base]
arch = "small-cnn"
epochs = 1
batch_size = 50
seed = 0

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.03

[matrix]
models = ["base"]
attacks = ["fgsm"]

[evaluation]
sizes = [10, 30]
seeds = [0, 1]
batch_size = {batch}
"""


def _write(tmp_path, data_lines, name="t", batch=16):
    path = tmp_path / f"{name}.toml"
    path.write_text(SUITE.format(name=name, data=data_lines, batch=batch))
    return path


def _outputs(out):
    results = json.loads((out / "results.json").read_text())
    return ({k: v for k, v in results.items() if k != "git_commit"}, (out / "examples.csv").read_text())


# --- 1. one memory layout whatever path the pixels took --------------------------------------------------------

def _images(root, per_class=(20, 12)):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(60 + 60 * c, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")


def _cifar_pickles(root, monkeypatch):
    from torchvision.datasets import CIFAR10

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        labels = list(range(10)) * 4
        blob = {"data": rng.integers(0, 256, size=(40, 3072), dtype=np.uint8), "labels": labels}
        (base / name).write_bytes(pickle.dumps(blob))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)  # the md5s are the real files'
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: setattr(self, "classes", data.CIFAR10_CLASSES))


@pytest.mark.parametrize("source", ["folder", "tar.gz", "cifar10", "synthetic"])
def test_first_run_and_warm_cache_run_give_identical_results(tmp_path, monkeypatch, source):
    if source in ("folder", "tar.gz"):
        _images(tmp_path / "imgs")
        if source == "tar.gz":
            with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
                tar.add(tmp_path / "imgs", arcname="imgs")
        lines = f'source = "folder"\npath = "{"imgs" if source == "folder" else "imgs.tar.gz"}"'
    elif source == "cifar10":
        _cifar_pickles(tmp_path / "c10", monkeypatch)
        lines = 'source = "cifar10"\npath = "c10"'
    else:
        lines = 'source = "synthetic"\ntrain = 200\ntest = 60'
    path = _write(tmp_path, lines)
    loaded = [runner.prepare_data(runner.load(path), None) for _ in range(2)]  # decoded, then from the cache
    for ds in loaded:
        for t in (ds.train_x, ds.test_x):
            assert t.is_contiguous() and t.stride() == torch.empty(t.shape).stride()
    assert torch.equal(loaded[0].test_x, loaded[1].test_x)
    cache = data.cache_dir() / "decoded"
    if source in ("folder", "tar.gz"):
        for entry in cache.iterdir():
            entry.unlink()  # the first run below decodes the files; the second reads the decoded cache
    runner.run_suite(path, tmp_path / "first", device="cpu", write_report=False)
    assert source not in ("folder", "tar.gz") or len(list(cache.iterdir())) == 1
    runner.run_suite(path, tmp_path / "second", device="cpu", write_report=False)  # another store, warm cache
    assert _outputs(tmp_path / "first") == _outputs(tmp_path / "second")


# --- 2, 3. global generators: seeded, restored, and draws seen between reseeds -----------------------------------

class _Draws(Attack):
    """Draws with `how` (a function of the attack), returns the images unchanged."""
    name = "draws"

    def __init__(self, how, **kw):
        super().__init__(**kw)
        self.how, self.seen = how, []

    def perturb(self, model, images, labels, **_):
        self.seen.append(self.how(self))
        return images


@pytest.mark.parametrize("how, invariant", [
    (lambda a: random.random(), False),                                    # Python's random, as ART's Square (L2)
    (lambda a: random.sample(range(100), 5), False),                      # ART's UniversalPerturbation
    (lambda a: torch.random.manual_seed(0) and None, True),               # a reseed alone draws nothing (FAB)
    (lambda a: (torch.randperm(7).tolist(), torch.manual_seed(a.seed))[0], False),  # a late reseed hides nothing
    (lambda a: (np.random.seed(3), np.random.permutation(4).tolist())[1], False),   # reseed, then a draw
    (lambda a: torch.rand(64, 3, 32, 32).sum().item(), True),             # image-shaped: per image
])
def test_batch_invariance_counts_draws_not_end_states(trained, batch, how, invariant):
    x, y = batch
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    results = []
    for seed in (1, 1, 2):
        attack = _Draws(how, seed=seed)
        attack(trained, x, y)
        results.append(attack.seen[0])
        assert attack.batch_invariant is invariant
    assert results[0] == results[1]  # seeded from the attack's seed: the same draw twice
    after = random.getstate(), np.random.get_state()[1], torch.get_rng_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])


def test_universal_perturbation_is_reproducible_and_flagged(trained, batch):
    x, y = batch[0][:16], batch[1][:16]
    runs = []
    for _ in range(2):
        attack = get_attack("art.UniversalPerturbation", max_iter=1, eps=0.05, attacker="fgsm")
        runs.append(attack(trained, x, y))
        assert attack.batch_invariant is False  # its shuffle couples the images of a batch
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("cls", ["APGD", "APGDT", "FAB", "Square", "AutoAttack"])
def test_every_toolkit_seed_parameter_gets_the_evaluation_seed(trained, batch, cls):
    attack = get_attack(f"torchattacks.{cls}", seed=7)
    assert attack._from_model(trained, batch[0][:1])["seed"] == 7 and attack.describe()["seed"] == 7


def test_fab_draws_nothing_at_one_restart_and_is_not_flagged_at_any_seed(trained, batch):
    for seed in (0, 1):
        attack = get_attack("torchattacks.FAB", seed=seed, steps=2, n_restarts=1)
        attack(trained, *batch)
        assert attack.batch_invariant


# --- 4. the attack batch is keyed and recorded ------------------------------------------------------------------

def _count_attacks(monkeypatch):
    calls = []
    original = evaluate.attack_images

    def counted(attack, model, images, labels, batch_size, desc="attack"):
        calls.append(batch_size)
        return original(attack, model, images, labels, batch_size, desc)

    monkeypatch.setattr(evaluate, "attack_images", counted)
    return calls


def test_attack_batch_is_in_every_key_and_in_the_results(tmp_path, tiny_suite, monkeypatch):
    path, store = tiny_suite(), tmp_path / "store"
    runner.run_suite(path, tmp_path / "b50", device="cpu", store=store, write_report=False)
    calls = _count_attacks(monkeypatch)
    seven = tmp_path / "seven.toml"
    seven.write_text(path.read_text().replace("batch_size = 50", "batch_size = 7"))
    frame = runner.run_suite(seven, tmp_path / "b7", device="cpu", store=store, write_report=False)
    assert calls and set(calls) == {7}  # nothing served from the batch-50 results
    assert set(frame["attack_batch_size"]) == {7}
    models = json.loads((tmp_path / "b7" / "results.json").read_text())["models"]
    assert models["aft-fgsm"]["adversarial_set"]["attack_batch_size"] == 7


def test_out_of_memory_halves_the_batch_keys_what_ran_and_a_rerun_reuses_it(tmp_path, tiny_suite, monkeypatch):
    original = evaluate.attack_images

    def small_device(attack, model, images, labels, batch_size, desc="attack"):
        if batch_size > 20:
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return original(attack, model, images, labels, batch_size, desc)

    monkeypatch.setattr(evaluate, "attack_images", small_device)
    out = tmp_path / "run"
    frame = runner.run_suite(tiny_suite(), out, device="cpu", write_report=False)
    assert set(frame["attack_batch_size"]) == {12}  # 50 -> 25 -> 12
    runner.run_suite(tiny_suite(), out, device="cpu", write_report=False)
    assert json.loads((out / "run.json").read_text())["nodes"]["computed"] == 0
    monkeypatch.setattr(evaluate, "attack_images", original)
    fresh = runner.run_suite(_batch(tmp_path, tiny_suite(), 12), tmp_path / "b12", device="cpu", write_report=False)
    assert fresh.equals(frame)  # what ran at 12 after two halvings is what a batch-12 suite computes


def _batch(tmp_path, path, batch):
    other = tmp_path / f"batch{batch}.toml"
    other.write_text(path.read_text().replace("batch_size = 50", f"batch_size = {batch}"))
    return other


# --- 5. the code a node ran, and nothing else, decides whether its result is served ------------------------------

def _edit(monkeypatch, file_suffix: str, unit: str):
    """As if the function `unit` of the file ending in `file_suffix` had been edited."""
    original = code_hashes._parse_file

    def parsed(path, mtime, size):
        result = original(path, mtime, size)
        if result is None or not path.endswith(file_suffix):
            return result
        return result[0], [(a, b, name, digest + "-edited" if name == unit else digest)
                           for a, b, name, digest in result[1]], result[2]

    monkeypatch.setattr(code_hashes, "_parse_file", parsed)


def _computed(out):
    return json.loads((out / "run.json").read_text())["nodes"]["computed"]


def _stages(monkeypatch):
    calls = {"fit": 0, "evaluations": 0}
    fit, run_evaluation = node_fns.fit, evaluate.run_evaluation

    def counted_fit(*a, **k):
        calls["fit"] += 1
        return fit(*a, **k)

    def counted_evaluation(*a, **k):
        calls["evaluations"] += 1
        return run_evaluation(*a, **k)

    monkeypatch.setattr(node_fns, "fit", counted_fit)
    monkeypatch.setattr(evaluate, "run_evaluation", counted_evaluation)
    return calls


def test_manifest_hashes_ignore_comments_and_docstrings_but_not_code_or_constants(tmp_path):
    module = tmp_path / "m.py"
    source = 'RATE = 2\n\n\ndef f(x):\n    """Doc."""\n    return x * RATE\n\n\ndef g():\n    return 1\n'
    module.write_text(source)
    first = code_hashes.parse(str(module))
    variants = {
        "comment": source.replace("return x * RATE", "return x * RATE  # why"),
        "docstring": source.replace('"""Doc."""', '"""Another doc."""'),
        "code": source.replace("x * RATE", "x + RATE"),
        "constant": source.replace("RATE = 2", "RATE = 3"),
    }
    for i, (name, text) in enumerate(variants.items()):
        module.write_text(text)
        os.utime(module, ns=(1, 10 ** 9 * (i + 2)))  # a new mtime for each: the parse cache reads it anew
        skeleton, units, _ = code_hashes.parse(str(module))
        same_f = dict((u[2], u[3]) for u in units)["f"] == dict((u[2], u[3]) for u in first[1])["f"]
        assert (skeleton == first[0], same_f) == {"comment": (True, True), "docstring": (True, True),
                                                  "code": (True, False), "constant": (False, True)}[name], name


def test_an_edit_reruns_exactly_the_nodes_whose_code_it_touches(tmp_path, tiny_suite, monkeypatch):
    path, out = tiny_suite(), tmp_path / "run"
    runner.run_suite(path, out, device="cpu", write_report=False)
    cases = [  # (file, function, trainings, evaluations re-run)
        ("benchmark/evaluate.py", "summarize", 0, 0),        # report-only: runs in no node
        ("benchmark/train.py", "evaluate_loss", 0, 0),       # early stop is off in this suite: never ran
        ("benchmark/train.py", "to_float", 2, 8),            # every node calls it
        ("adapters/jsma_origin.py", "JsmaOrigin.perturb", 0, 4),  # one attack's evaluations, nothing upstream
        ("benchmark/train.py", "fit", 2, 0),                 # retrains; the same weights: evaluations stay
    ]
    for file, unit, trainings, evaluations in cases:
        with monkeypatch.context() as patch:
            _edit(patch, file, unit)
            calls = _stages(patch)
            runner.run_suite(path, out, device="cpu", write_report=False)
        assert (calls["fit"], calls["evaluations"]) == (trainings, evaluations), (file, unit)
        runner.run_suite(path, out, device="cpu", write_report=False)  # back to the code as it is: re-run again


def test_a_loaded_models_evaluations_cover_the_training_helpers_they_call(tmp_path, trained, monkeypatch):
    from test_own_models import FACTORIES, _factory_state, _suite

    (tmp_path / "facs.py").write_text(FACTORIES)
    torch.save(_factory_state(trained), tmp_path / "net.pt")
    path, out = _suite(tmp_path, 'checkpoint = "net.pt"\nfactory = "facs:build"'), tmp_path / "run"
    runner.run_suite(path, out, device="cpu", write_report=False)
    with monkeypatch.context() as patch:
        _edit(patch, "benchmark/train.py", "to_float")  # evaluate calls train.to_float and train.predict
        calls = _stages(patch)
        runner.run_suite(path, out, device="cpu", write_report=False)
    assert calls["evaluations"] == 1


HELPERS = {"blocks.py": '''
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x))
''', "__init__.py": ""}

NET = '''
from torch import nn
from mypkg.blocks import Block


def build(num_classes):
    return nn.Sequential(Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''


def test_a_factorys_helper_module_is_part_of_what_its_evaluations_ran(tmp_path, monkeypatch):
    (tmp_path / "mypkg").mkdir()
    for name, text in HELPERS.items():
        (tmp_path / "mypkg" / name).write_text(text)
    (tmp_path / "net.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    from benchmark import sources

    torch.manual_seed(0)
    torch.save(sources.import_factory("net:build", tmp_path, "t")[0](10).state_dict(), tmp_path / "net.pt")
    from test_own_models import _suite

    path = _suite(tmp_path, 'checkpoint = "net.pt"\nfactory = "net:build"')
    store = tmp_path / "store"
    runner.run_suite(path, tmp_path / "a", device="cpu", store=store, write_report=False)
    blocks = tmp_path / "mypkg" / "blocks.py"
    blocks.write_text(HELPERS["blocks.py"].replace("nn.ReLU()", "nn.LeakyReLU(0.5)"))
    for name in ("mypkg.blocks", "mypkg"):
        sys.modules.pop(name, None)  # a new process would import the edited file
    after = runner.run_suite(path, tmp_path / "b", device="cpu", store=store, write_report=False)
    fresh = runner.run_suite(path, tmp_path / "c", device="cpu", store=tmp_path / "fresh", write_report=False)
    assert _computed(tmp_path / "b") > 0 and after.equals(fresh)
    assert (tmp_path / "a" / "examples.csv").read_text() != (tmp_path / "b" / "examples.csv").read_text()


def test_a_checkpoint_is_resumed_only_by_the_code_that_wrote_it(tmp_path, tiny_suite, monkeypatch):
    from benchmark.store import Store

    path, out = tiny_suite(), tmp_path / "run"
    runner.run_suite(path, out, device="cpu", write_report=False)
    key = json.loads((out / "results.json").read_text())["models"]["base"]["key"]
    store = Store(out / "artefacts")
    store.drop("models", key)  # as if killed mid-training
    foreign = {"code": json.dumps({"modules": {"benchmark.train": {"file": "x", "module": "y", "units": {}}}})}
    store.put_state("checkpoints", key, foreign)  # written by other code: never read (it would raise KeyError)
    calls = _stages(monkeypatch)
    runner.run_suite(path, out, device="cpu", write_report=False)
    assert calls["fit"] == 1  # the base retrained from scratch; the fine-tune's weights are served
    assert not store.get_tensors("checkpoints", key)


# --- 6. two runs over one store compute each node once ----------------------------------------------------------

def test_two_concurrent_runs_over_one_store_compute_each_node_once(tmp_path, tiny_suite):
    path = tiny_suite()
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "benchmark", "run", str(path), "--device", "cpu", "--out",
                              str(tmp_path / name), "--store", str(tmp_path / "store")], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for name in "AB"]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    nodes = [json.loads((tmp_path / name / "run.json").read_text())["nodes"] for name in "AB"]
    total = nodes[0]["computed"] + nodes[0]["reused"]
    assert nodes[0]["computed"] + nodes[1]["computed"] == total == 13  # 11 and each model's probes
    assert _outputs(tmp_path / "A") == _outputs(tmp_path / "B")


# --- 7. the gate ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A small run with examples.csv, to gate against itself and edited copies of itself."""
    root = tmp_path_factory.mktemp("gate")
    (root / "tiny.toml").write_text(__import__("conftest").TINY_SUITE.format(profile="paper", split="train")
                                    .replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
                                    .replace("sizes = [20, 50]", "sizes = [50, 150]"))
    runner.run_suite(root / "tiny.toml", root / "base", device="cpu", write_report=False)
    return root / "base"


def _copy(src, dst, edit=None):
    dst.mkdir()
    results = json.loads((src / "results.json").read_text())
    examples = pd.read_csv(src / "examples.csv")
    if edit is not None:
        results, examples = edit(results, examples)
    (dst / "results.json").write_text(json.dumps(results))
    if examples is not None:
        examples.to_csv(dst / "examples.csv", index=False)
    return dst


def _gate(capsys, run, baseline, *extra):
    code = check_main(run, baseline, **dict(extra))
    return code, capsys.readouterr().out


def test_gate_refuses_missing_seeds_and_sizes(gated, tmp_path, capsys):
    def one_seed(results, examples):
        return ({**results, "cells": [c for c in results["cells"] if c["seed"] == 0]},
                examples[examples["seed"] == 0])

    run = _copy(gated, tmp_path / "one-seed", one_seed)
    with pytest.raises(UserError, match=r"run lacks 16 of the baseline's cells .* seed 1"):
        check_main(run, gated)


def test_gate_refuses_a_baseline_whose_results_disagree_with_its_examples(gated, tmp_path):
    def edited(results, examples):
        for cell in results["cells"]:
            cell["adv_acc"] = max(0.0, cell["adv_acc"] - 0.15)
        return results, examples

    baseline = _copy(gated, tmp_path / "edited", edited)
    with pytest.raises(UserError, match="results.json and examples.csv disagree"):
        check_main(gated, baseline)


def _planted_drop(attack: str, share: float):
    """Flip `share` of the images correct under `attack` (on every model) to wrong, cells recomputed."""
    def edit(results, examples):
        from benchmark import examples as examples_csv

        rng = np.random.default_rng(0)
        flip = examples["attack"].eq(attack) & examples["correct_adv"] & (rng.random(len(examples)) < share)
        examples = examples.assign(correct_adv=examples["correct_adv"] & ~flip,
                                   pred_adv=examples["pred_adv"].where(~flip, (examples["label"] + 1) % 10))
        return {**results, "cells": examples_csv.recompute(results["cells"], examples)}, examples
    return edit


def test_gate_fails_a_ratio_drop_and_names_the_metric(gated, tmp_path, capsys):
    run = _copy(gated, tmp_path / "weaker", _planted_drop("fgsm", 0.6))
    code, out = _gate(capsys, run, gated)
    assert code == 1 and "sign-flip randomization (paired)" in out
    failed = [line for line in out.splitlines() if line.startswith("|") and "fgsm" in line]
    assert any("| ratio " in line for line in failed) and any("| adv_acc " in line for line in failed)
    assert "jsma" not in "".join(failed)
    assert _gate(capsys, gated, gated)[0] == 0  # itself: nothing


def test_paired_gate_catches_drops_the_unpaired_fallback_misses(gated, tmp_path, capsys):
    run = _copy(gated, tmp_path / "slightly-weaker", _planted_drop("fgsm", 0.2))
    paired, _ = _gate(capsys, run, gated)
    bare = tmp_path / "bare.json"
    bare.write_text((gated / "results.json").read_text())  # no examples.csv: Fisher and unpaired bootstraps
    unpaired, out = _gate(capsys, run, bare)
    assert paired == 1 and unpaired == 0 and "Fisher exact (unpaired)" in out


def test_gate_refuses_a_baseline_of_other_attack_parameters_data_or_recipes(gated, tmp_path):
    """Like for like: an eps of 0.25 against one of 0.05 is another benchmark, not a regression (exit 2)."""
    def edited(path: str, value):
        def edit(results, examples):
            results = json.loads(json.dumps(results))
            table, name, key = path.split(".")
            if table == "data":
                results["data"][key] = value
            else:
                results["suite"][table][name][key] = value
            return results, examples
        return edit

    for path, value, message in (("attacks.fgsm.eps", 0.25, "attack fgsm differs between run and baseline (eps 0.25 "
                                                           "in the run, 0.02 in the baseline)"),
                                 ("models.base.epochs", 9, "model base differs between run and baseline (epochs 9"),
                                 ("data.x.pixels", "other", "run and baseline were evaluated on other data")):
        other = _copy(gated, tmp_path / path.replace(".", "-"), edited(path, value))
        with pytest.raises(UserError, match=re.escape(message)):
            check_main(other, gated)


def _all_wrong(model: str, attack: str):
    """Every image of one (model, attack) misclassified, originally and after the attack: its ratio undefined."""
    def edit(results, examples):
        from benchmark import examples as examples_csv

        cell = examples["model"].eq(model) & examples["attack"].eq(attack)
        wrong = (examples["label"] + 1) % 10
        examples = examples.assign(pred_orig=examples["pred_orig"].where(~cell, wrong),
                                   pred_adv=examples["pred_adv"].where(~cell, wrong),
                                   correct_orig=examples["correct_orig"] & ~cell,
                                   correct_adv=examples["correct_adv"] & ~cell)
        return {**results, "cells": examples_csv.recompute(results["cells"], examples)}, examples
    return edit


def test_an_undefined_ratio_on_both_sides_is_no_change_and_on_one_side_is_said(gated, tmp_path, capsys):
    wrong = _copy(gated, tmp_path / "wrong", _all_wrong("aft-fgsm", "jsma"))
    again = _copy(wrong, tmp_path / "again")
    code, out = _gate(capsys, again, wrong, ("either_way", True))
    assert code == 0, out
    table = check.compare(*(json.loads((f / "results.json").read_text()) for f in (again, wrong)), either_way=True,
                          run_examples=examples_csv.load(again), baseline_examples=examples_csv.load(wrong))
    row = table[(table["model"] == "aft-fgsm") & (table["attack"] == "jsma") & (table["metric"] == "ratio")]
    assert row["test"].item() == "undefined on both sides (no originally correct image): no change"
    table = check.compare(json.loads((gated / "results.json").read_text()),
                          json.loads((wrong / "results.json").read_text()), either_way=True)
    row = table[(table["model"] == "aft-fgsm") & (table["attack"] == "jsma") & (table["metric"] == "ratio")]
    assert row["test"].item().startswith("undefined in the baseline only") and not row["regression"].item()


# --- what a manifest must not miss ---------------------------------------------------------------------------------

def _module(tmp_path, monkeypatch, name, text):
    import importlib

    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def _recorded(fn, *args):
    with fingerprint.record() as ran:
        fn(*args)
    return ran.manifest()


def test_a_file_edited_while_its_code_runs_never_matches(tmp_path, monkeypatch):
    user = _module(tmp_path, monkeypatch, "fp_edited", "def f(x):\n    return x * 10\n")
    (tmp_path / "fp_edited.py").write_text("def f(x):\n    return x * 11\n")  # the process still runs x * 10
    manifest = _recorded(user.f, 3)
    assert manifest["unverifiable"] and not fingerprint.unchanged(manifest)
    (tmp_path / "fp_edited.py").write_text("def f(x):\n    return x *\n")  # broken: not dropped either
    assert not fingerprint.unchanged(_recorded(user.f, 3))


def test_code_run_in_a_thread_the_computation_starts_is_recorded(tmp_path, monkeypatch):
    import threading

    user = _module(tmp_path, monkeypatch, "fp_threaded", "def helper(out):\n    out.append(1)\n")

    def work():
        out = []
        thread = threading.Thread(target=user.helper, args=(out,))
        thread.start()
        thread.join()

    assert "helper" in _recorded(work)["modules"]["fp_threaded"]["units"]


def test_constants_of_imported_modules_and_defs_under_if_are_covered(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "fp_consts", "SCALE = 2\n")
    user = _module(tmp_path, monkeypatch, "fp_user", "import sys\nfrom fp_consts import SCALE\n\n"
                   "if sys.version_info >= (3,):\n    def f(x):\n        return x * SCALE\n")
    manifest = _recorded(user.f, 3)
    assert "fp_consts" in manifest["modules"] and "f" in manifest["modules"]["fp_user"]["units"]
    assert fingerprint.unchanged(manifest)
    (tmp_path / "fp_consts.py").write_text("SCALE = 3\n")
    assert not fingerprint.unchanged(manifest)
    (tmp_path / "fp_consts.py").write_text("SCALE = 2\n")
    (tmp_path / "fp_user.py").write_text((tmp_path / "fp_user.py").read_text().replace("x * SCALE", "x + SCALE"))
    assert not fingerprint.unchanged(manifest)


def test_a_name_defined_twice_still_matches_itself(tmp_path, monkeypatch):
    user = _module(tmp_path, monkeypatch, "fp_twice", "class P:\n    @property\n    def v(self):\n        return 1\n\n"
                   "    @v.setter\n    def v(self, value):\n        pass\n")
    manifest = _recorded(lambda: user.P().v)
    assert fingerprint.unchanged(manifest)


def test_a_class_without_a_source_file_is_identified_by_its_bytecode():
    def define(body):
        namespace = {}
        exec(compile(f"class Net:\n    def forward(self, x):\n        return {body}\n", "<notebook cell>", "exec"),
             namespace)
        return namespace["Net"]

    assert fingerprint.code(define("x * 2")) != fingerprint.code(define("x * 3"))
    assert fingerprint.code(define("x * 2")) == fingerprint.code(define("x * 2"))


def test_a_private_generator_made_without_a_seed_gets_ours_and_is_flagged(trained, batch):
    x, y = batch
    draws = []
    for seed in (4, 4, 5):
        attack = _Draws(lambda a: (np.random.RandomState().rand(), np.random.default_rng().random()), seed=seed)
        attack(trained, x, y)
        draws.append(attack.seen[0])
        assert attack.batch_invariant is False
    assert draws[0] == draws[1] != draws[2]


def test_a_loaded_models_identity_does_not_depend_on_where_the_suite_lies(tmp_path, trained):
    from benchmark import sources
    from test_own_models import FACTORIES, _factory_state, _suite

    identities = []
    for where in ("a", "b"):
        folder = tmp_path / where
        folder.mkdir()
        (folder / "facs.py").write_text(FACTORIES)
        torch.save(_factory_state(trained), folder / "net.pt")
        path = _suite(folder, 'checkpoint = "net.pt"\nfactory = "facs:build"')
        identities.append(sources.load(runner.load(path).models["mine"].entry, 10).identity)
    assert identities[0] == identities[1]


def test_gate_compares_like_for_like_when_the_run_holds_more(gated, tmp_path, capsys):
    def fewer(results, examples):
        keep = [c for c in results["cells"] if c["seed"] != 2 and c["size"] == 50]
        return {**results, "cells": keep}, examples[(examples["seed"] != 2) & (examples["position"] < 50)]

    baseline = _copy(gated, tmp_path / "fewer", fewer)
    code, out = _gate(capsys, gated, baseline)  # the run has another seed and a larger size
    assert code == 0 and "0 found" in out
