"""Every cell a pure function of the suite, the data and the code: cache keys that follow code and resolved
defaults, random draws that follow the seed and the image's position (never the attack batch), fine-tune samples
drawn independently of the evaluation subsets, statistics, and exact fp32."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from adapters import get_attack
from benchmark import evaluate, report, runner
from benchmark import nodes as node_fns
from benchmark import context as bench_context
from benchmark.suite import load

RANDOM_ATTACKS = """
[attacks.pgd]
adapter = "torchattacks.PGD"
eps = 0.03
alpha = 0.01
steps = 2
random_start = true

[attacks.jsma-art]
adapter = "art.SaliencyMapMethod"
theta = 1.0
gamma = 0.01
targets = "random"

[attacks.pgd-art]
adapter = "art.ProjectedGradientDescent"
eps = 0.03
eps_step = 0.01
max_iter = 2
num_random_init = 1

[attacks.jsma]
adapter = "jsma-origin"
gamma = 0.01

[models.base]
arch = "small-cnn"
epochs = 1
batch_size = 100
seed = 0

[models.aft-pgd]
from = "base"
attack = "pgd"
images = 60
split = "train"

[matrix]
models = ["base", "aft-pgd"]
attacks = ["pgd", "jsma-art", "pgd-art", "jsma"]

[evaluation]
sizes = [10, 23]
seeds = [0, 1]
batch_size = {batch}
"""


def _suite(tmp_path, batch):
    path = tmp_path / f"random-{batch}.toml"
    path.write_text('schema = 1\nname = "random"\n[data]\nsource = "synthetic"\ntrain = 600\ntest = 100\n'
                    + RANDOM_ATTACKS.format(batch=batch))
    return path


def _cells(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


def test_random_attacks_draw_per_image_whatever_the_attack_batch_size(tmp_path):
    """Random draws follow the image's position, so batch sizes differ only by rounding: here one PGD step of one
    of the fine-tune's 60 images flips between batch 500 and batch 1 (a sign of a small gradient component), so
    the fine-tuned weights differ, and the adversarial predictions hardly (README: benchmarks/batch_rounding.py)."""
    cells = {batch: _cells(runner.run_suite(_suite(tmp_path, batch), tmp_path / f"b{batch}", device="cpu",
                                            write_report=False))
             for batch in (500, 7, 1)}
    for batch, rows in cells.items():
        assert {row.pop("attack_batch_size") for row in rows} == {batch}
    frame = pd.DataFrame(cells[500])
    assert frame["batch_invariant"].all()
    # The attacks are random: another seed changes what they do to the same model.
    pgd = frame[(frame["attack"] == "pgd") & (frame["size"] == 23)]
    assert pgd["adv_acc"].nunique() > 1 or pgd["l2"].nunique() > 1
    tables = {b: pd.read_csv(tmp_path / f"b{b}" / "examples.csv") for b in (500, 7, 1)}
    for b in (7, 1):
        assert (tables[b]["pred_adv"] == tables[500]["pred_adv"]).mean() >= 0.97
        base = tables[b]["model"] == "base"  # the same weights: only the attacks' own rounding differs
        assert (tables[b].loc[base, "pred_adv"] == tables[500].loc[base, "pred_adv"]).mean() >= 0.97
    models = {b: json.loads((tmp_path / f"b{b}" / "results.json").read_text())["models"] for b in (500, 1)}
    assert models[500]["base"]["weights"] == models[1]["base"]["weights"]  # training has no attack batch


def test_art_random_targets_follow_positions_not_batches(trained, batch):
    from adapters.via_art import choose_targets

    x, y = batch
    logits = trained(x)
    whole = choose_targets("random", y, logits, seed=5, positions=range(64))
    halves = torch.cat([choose_targets("random", y[:20], logits[:20], seed=5, positions=range(20)),
                        choose_targets("random", y[20:], logits[20:], seed=5, positions=range(20, 64))])
    assert torch.equal(whole, halves) and not bool((whole == y).any())
    assert not torch.equal(whole, choose_targets("random", y, logits, seed=6, positions=range(64)))


def test_attack_calls_leave_global_rngs_alone_and_flag_unattributable_draws(trained, batch):
    from adapters.base import Attack

    x, y = batch
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    get_attack("art.ProjectedGradientDescent", eps=0.03, eps_step=0.01, max_iter=1, num_random_init=1)(trained, x, y)
    assert np.array_equal(np_state, np.random.get_state()[1]) and torch.equal(torch_state, torch.get_rng_state())

    class Shuffles(Attack):
        name = "shuffles"

        def perturb(self, model, images, labels, **_):
            return images[torch.randperm(len(images))]  # a draw no image owns

    attack = Shuffles()
    attack(trained, x, y)
    assert attack.batch_invariant is False


def _count_calls(monkeypatch):
    calls = {"fit": 0, "evaluations": []}
    original_fit, original_eval = node_fns.fit, evaluate.run_evaluation

    def fit(*args, **kwargs):
        calls["fit"] += 1
        return original_fit(*args, **kwargs)

    def run_evaluation(model, attack, *args, **kwargs):
        calls["evaluations"].append(attack.name)
        return original_eval(model, attack, *args, **kwargs)

    monkeypatch.setattr(node_fns, "fit", fit)
    monkeypatch.setattr(evaluate, "run_evaluation", run_evaluation)
    return calls


def test_keys_hash_resolved_defaults_not_the_spelling(tiny_suite, tmp_path, monkeypatch):
    implicit = tiny_suite()
    explicit = tmp_path / "explicit.toml"
    text = implicit.read_text()
    assert "gamma = 0.005" in text  # the edits below change the suite
    explicit.write_text(text.replace('gamma = 0.005', 'gamma = 0.005\ntheta = 1.0\ntop_k = 32'))
    runner.run_suite(implicit, tmp_path / "run", device="cpu", write_report=False)
    calls = _count_calls(monkeypatch)
    runner.run_suite(explicit, tmp_path / "run", device="cpu", write_report=False)
    assert calls == {"fit": 0, "evaluations": []}
    other = tmp_path / "other.toml"
    other.write_text(text.replace('gamma = 0.005', 'gamma = 0.005\ntheta = 0.5'))
    runner.run_suite(other, tmp_path / "run", device="cpu", write_report=False)
    assert calls["fit"] == 0 and set(calls["evaluations"]) == {"jsma-origin"}


def test_keys_carry_device_and_library_versions(tiny_suite):
    suite = load(tiny_suite())
    data = runner.prepare_data(suite, None)
    ctx = {d: bench_context.Context(suite, data, torch.device(d), None, {"torch": "1", "torchvision": "2", "python": "3.11",
           "art": "3", "torchattacks": "4", "numpy": "5", "pillow": "6", "pandas": "7"}) for d in ("cpu", "cuda")}
    assert ctx["cpu"].made_with("model")["device"] == "cpu" and ctx["cuda"].made_with("attack")["device"] == "cuda"
    assert ctx["cpu"].made_with("model")["data"] == data.identity["pixels"]
    assert set(ctx["cpu"].made_with("model")["versions"]) == {"torch", "torchvision"}  # an ART upgrade: no retrain
    assert set(ctx["cpu"].made_with("attack")["versions"]) == {"python", "torch", "torchvision", "art", "torchattacks",
                                                               "numpy"}  # Python: `random` in ART's attacks
    assert node_fns._precision(ctx["cuda"], True) == "bf16-autocast" and node_fns._precision(ctx["cuda"], False) == "fp32"


def test_test_split_finetune_sample_is_independent_of_evaluation_subsets(tiny_suite, tmp_path):
    suite = load(tiny_suite("paper-code", "test"))
    idx, provenance = node_fns.finetune_sample(suite, suite.models["aft-fgsm"], 1000, 300)
    assert len(set(idx.tolist())) == 100 and provenance["sample_seed"] != 0
    for seed in (0, 1):  # the old bug: seed 0's evaluation subset was the fine-tune sample's prefix
        assert not set(evaluate.subset(300, 50, seed).tolist()) <= set(idx.tolist())
    frame = runner.run_suite(suite, tmp_path / "pc", device="cpu")
    overlap = frame[(frame["model"] == "aft-fgsm") & (frame["size"] == 50)]["finetune_overlap"]
    assert overlap.between(1, 49).all()  # about 100/300 of 50 at every seed, not 50 and 0
    text = (tmp_path / "pc" / "report.md").read_text()
    assert "Fine-tune images among the evaluated images" in text and "Departures from the authors' code" in text


def test_train_split_finetune_sample_avoids_validation_and_says_what_base_saw(tiny_suite, tmp_path):
    with_val = tiny_suite(extra="").read_text().replace('seed = 0\n', 'seed = 0\nearly_stop = { patience = 2, '
                                                        'val_size = 200 }\n', 1)
    path = tmp_path / "val.toml"
    path.write_text(with_val)
    suite = load(path)
    validation, trained = node_fns.base_split(suite.models["base"].entry, 1000)
    idx, provenance = node_fns.finetune_sample(suite, suite.models["aft-fgsm"], 1000, 300)
    assert not set(idx.tolist()) & set(validation.tolist())
    assert provenance["validation_excluded"] == 200 and provenance["seen_by_base"] == 100
    partial = path.read_text().replace('seed = 0\n', 'seed = 0\ntrain_images = 300\n', 1)
    path.write_text(partial)
    _, provenance = node_fns.finetune_sample(load(path), load(path).models["aft-fgsm"], 1000, 300)
    assert 0 < provenance["seen_by_base"] < 100  # 300 of the 800 non-validation images were trained on
    runner.run_suite(path, tmp_path / "run", device="cpu")
    assert "the base model trained on" in (tmp_path / "run" / "report.md").read_text()


def test_sample_sd_and_distances_over_originally_correct_images():
    frame = pd.DataFrame([{"model": "m", "attack": "a", "size": 2, "seed": s, "n": 2, "orig_acc": o, "adv_acc": 0.0,
                           "success_rate": 1.0, "l0": 4.0, "l2": 1.0, "linf": 0.5, "n_dist": 1 + s}
                          for s, o in ((0, 0.5), (1, 1.0))])
    means = report.seed_means(frame)
    assert means.loc[0, "orig_sd"] == pytest.approx(100 * np.std([0.5, 1.0], ddof=1))
    assert means.loc[0, "n_dist"] == 3
    outcome = {"label": [0, 1, 2], "orig_pred": [0, 1, 0], "adv_pred": [1, 1, 0], "l0": [2, 4, 3000],
               "l2": [0.1, 0.3, 9.0], "linf": [0.1, 0.2, 1.0]}
    cell = evaluate.summarize(outcome, 3, 3)
    assert cell["n_dist"] == 2 and cell["l0"] == 3.0 and cell["linf"] == pytest.approx(0.15)


def test_exact_fp32_turns_tf32_off_and_restores():
    from adapters.base import exact_fp32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # CUDA's defaults for cuDNN
    try:
        with exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_finetunes_train_in_exact_fp32_and_base_models_may_use_bf16(tiny_suite, tmp_path, monkeypatch):
    seen = []
    original = node_fns.fit
    monkeypatch.setattr(node_fns, "fit", lambda *a, **k: seen.append(
        (k.get("mixed_precision", True), torch.backends.cudnn.allow_tf32)) or original(*a, **k))
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # CUDA's default
    try:
        runner.run_suite(tiny_suite(), tmp_path / "run", device="cpu", write_report=False)
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    assert seen == [(True, True), (False, False)]  # base: bf16 allowed on CUDA; fine-tune: neither bf16 nor TF32
    models = json.loads((tmp_path / "run" / "results.json").read_text())["models"]
    assert models["aft-fgsm"]["precision"] == "fp32" and models["base"]["made_on"].startswith("cpu")
