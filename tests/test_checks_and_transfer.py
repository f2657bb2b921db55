"""Is the robustness real? Each check raises its flag on a model built to trip it and stays quiet on a plain one;
a transfer attack gives the numbers that crafting on the source and evaluating on the target by hand give."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapters import get_attack
from benchmark import examples as examples_csv
from benchmark import models, run_suite
from benchmark.errors import UserError
from benchmark.evaluate import attack_images, subset
from benchmark.flags import flags
from benchmark.report import render
from benchmark.suite import load
from benchmark.train import predict

EPS = [0.01, 0.03]


def _bank(synthetic):
    return synthetic.test_x.float().flatten(1) / 255, synthetic.test_y


def _distance(x: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L-inf distance of each image to its nearest clean test image, and that image's position."""
    d = torch.cdist(x.detach().flatten(1), bank, p=float("inf"))
    return d.min(1)


def _zero_grad(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """net's output with an input gradient of exactly zero (x stays in the graph: attacks can differentiate)."""
    return net(x.detach()) + 0 * x.sum()


class MaskedNearClean(nn.Module):
    """Zero input gradients within eps/4 (L-inf) of every clean test image, plain elsewhere: one FGSM step from a
    clean image goes nowhere, PGD's random start leaves the masked ball (catastrophic overfitting in miniature)."""

    def __init__(self, net, bank, radius):
        super().__init__()
        self.net, self.radius = net, radius
        self.register_buffer("bank", bank)

    def forward(self, x):
        near = _distance(x, self.bank)[0] < self.radius
        return torch.where(near[:, None], _zero_grad(self.net, x), self.net(x))


class NoGradients(nn.Module):
    """The plain model's outputs with input gradients of zero everywhere: white-box attacks learn nothing."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return _zero_grad(self.net, x)


class Randomized(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(F.dropout(x, 0.3, training=True))


class Probabilities(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class RightWhenFar(nn.Module):
    """Right (its nearest clean image's label) on the clean images and beyond 0.02 of them, wrong in between; a
    faint linear term gives every pixel a gradient, so FGSM moves each by eps: accuracy rises from eps 0.01 to
    0.03."""

    def __init__(self, bank, labels):
        super().__init__()
        self.register_buffer("bank", bank)
        self.register_buffer("labels", labels)
        self.w = nn.Parameter(torch.randn(bank.shape[1], 10, generator=torch.Generator().manual_seed(0)) * 1e-4)

    def forward(self, x):
        dist, nearest = _distance(x, self.bank)
        label = self.labels[nearest]
        wrong = (dist > 0.002) & (dist < 0.02)
        label = torch.where(wrong, (label + 1) % 10, label)
        return 5 * F.one_hot(label, 10).float() + x.flatten(1) @ self.w


class MasksOnceTuned(nn.Module):
    """small-cnn that masks its input gradients once fine-tuned: it marks itself the first time it trains on a
    batch smaller than its base recipe's (100), as this test's fine-tune (batch 50) does."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.net = models.ARCHITECTURES.get("small-cnn")(num_classes)
        self.register_buffer("tuned", torch.zeros(()))

    def forward(self, x):
        if self.training and len(x) < 100:
            self.tuned.fill_(1)
        return _zero_grad(self.net, x) if bool(self.tuned) else self.net(x)


SUITE = """
schema = 1
name = "checks"

[data]
source = "synthetic"
train = 2000
test = 500

[models.plain]
provided = true

[models.base]
arch = "masks-once-tuned"
epochs = 2
batch_size = 100

[models.tuned]
from = "base"
attack = "fgsm-one"
images = 100
batch_size = 50

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = {eps}

[attacks.fgsm-one]
adapter = "torchattacks.FGSM"
eps = 0.03

[attacks.fgsm-from-plain]
adapter = "torchattacks.FGSM"
eps = 0.03
source = "plain"

[matrix]
models = ["plain", "base", "tuned"]
attacks = ["fgsm", "fgsm-from-plain"]

[evaluation]
sizes = [60]
seeds = [0]
batch_size = 40

[checks]
multistep = {{ steps = 5 }}
black_box = {{ n_queries = 15 }}
from_parent = ["fgsm"]
probe_images = 40
"""


@pytest.fixture(scope="module")
def checked(tmp_path_factory, trained, synthetic):
    models.architecture("masks-once-tuned")(MasksOnceTuned)
    tmp = tmp_path_factory.mktemp("checks")
    path = tmp / "checks.toml"
    path.write_text(SUITE.format(eps=EPS))
    bank, labels = _bank(synthetic)
    traps = {"masked": MaskedNearClean(trained, bank, EPS[0] / 4), "no-gradients": NoGradients(trained),
             "randomized": Randomized(trained), "probabilities": Probabilities(trained),
             "right-when-far": RightWhenFar(bank, labels)}
    try:
        run_suite(path, tmp / "run", device="cpu", models={"plain": trained, **traps}, write_report=False)
    finally:
        models.ARCHITECTURES.unregister("masks-once-tuned")
    results = json.loads((tmp / "run" / "results.json").read_text())
    table = examples_csv.load(tmp / "run")
    return results, table, flags(results, table), tmp / "run"


def _raised(table: pd.DataFrame, model: str) -> set[str]:
    return set(table[(table["model"] == model) & (table["flag"] == True)]["check"])


@pytest.mark.parametrize("model, check", [
    ("masked", "multistep"), ("masked", "gradients"), ("no-gradients", "black_box"), ("no-gradients", "gradients"),
    ("randomized", "randomness"), ("probabilities", "softmax"), ("right-when-far", "eps_sweep"),
    ("tuned", "from_parent"), ("masked", "transfer")])
def test_each_check_flags_the_model_built_to_trip_it(checked, model, check):
    assert check in _raised(checked[2], model), checked[2][checked[2]["model"] == model].to_string()


@pytest.mark.parametrize("model", ["plain", "base"])
def test_a_plain_model_raises_no_flag(checked, model):
    table = checked[2]
    mine = table[table["model"] == model]
    assert _raised(table, model) == set(), mine.to_string()
    # every check ran on it (neither has a parent: no transfer from one; plain is fgsm-from-plain's source, for
    # which that attack is white-box: no transfer check)
    assert set(mine[mine["flag"].notna()]["check"]) == {"gradients", "randomness", "softmax", "multistep", "black_box",
                                                        "eps_sweep"} | ({"transfer"} if model == "base" else set())


def test_checks_are_evaluations_keyed_and_in_the_worst_case(checked):
    results, table, _, run = checked
    attacks = set(table["attack"])
    assert {"fgsm.pgd@eps=0.01", "fgsm.square@eps=0.03", "fgsm.from-parent@eps=0.01"} <= attacks
    assert not (table[table["attack"].str.contains("from-parent")]["model"].isin(["plain", "base"])).any()
    report = render(results, run, with_figures=False)
    assert "## Is the robustness real?" in report and "**FLAG**" in report and "## Transfer attacks" in report
    assert "fgsm.pgd@eps=0.01" in report.split("## Worst case over attacks")[1].split("##")[0]
    derived = results["checks"]["compared"]["fgsm.pgd@eps=0.03"]
    assert derived == {"check": "multistep", "checks": "fgsm@eps=0.03"}


def test_a_transfer_attack_is_crafting_on_the_source_and_evaluating_by_hand(checked, trained, synthetic):
    table = checked[1]
    bank = _bank(synthetic)[0]
    target = MaskedNearClean(trained, bank, EPS[0] / 4).eval()
    for seed in (0,):
        idx = subset(len(synthetic.test_y), 60, seed)
        x, y = synthetic.test_x[idx].float() / 255, synthetic.test_y[idx]
        adv = attack_images(get_attack("torchattacks.FGSM", eps=0.03, seed=seed), trained.eval(), x, y, 40)
        rows = table[(table["model"] == "masked") & (table["attack"] == "fgsm-from-plain")
                     & (table["seed"] == seed)].sort_values("position")
        assert rows["index"].tolist() == idx.tolist()
        assert rows["pred_adv"].tolist() == predict(target, adv).tolist()
        assert rows["pred_orig"].tolist() == predict(target, x).tolist()
    # crafted once per source, attack and seed, whatever the number of targets
    crafted = list((checked[3] / "artefacts" / "crafted-info").glob("*.json"))
    n_sources = {"fgsm-from-plain": 1, "fgsm.from-parent": 1}  # plain; base (tuned's parent)
    assert len(crafted) == 1 * (n_sources["fgsm-from-plain"] + n_sources["fgsm.from-parent"] * len(EPS))  # 1 seed


def _without_test_architecture(text: str) -> str:
    return text.replace('arch = "masks-once-tuned"', 'arch = "small-cnn"')


@pytest.mark.parametrize("checks, message", [
    ("multistep = { steps = 0 }", "checks.multistep.steps must be a positive integer"),
    ("multistep = { steps = 2.5 }", "checks.multistep.steps must be a positive integer"),
    ("probe_images = 501", "checks.probe_images = 501 exceeds the test split"),
    ("multistep = { step = 3 }", "checks.multistep"),
    ("from_parent = [\"pgd\"]", "checks.from_parent names 'pgd'"),
    ("probe_images = -1", "checks.probe_images must be a non-negative integer"),
    ("squares = true", "checks"),
    ("black_box = { p_init = 5.0 }", "checks.black_box.p_init is a fraction of the image, at most 1"),
    ("from_parent = [\"fgsm\", \"fgsm\"]", "checks.from_parent repeats 'fgsm'"),
])
def test_bad_checks_are_one_line(tmp_path, checks, message):
    path = tmp_path / "bad.toml"
    path.write_text(_without_test_architecture(SUITE.format(eps=EPS).split("[checks]")[0]) + "[checks]\n" + checks
                    + "\n")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load(path)


def test_from_parent_needs_a_fine_tuned_model_in_the_matrix(tmp_path):
    text = _without_test_architecture(SUITE.format(eps=EPS)).replace('models = ["plain", "base", "tuned"]',
                                                                      'models = ["plain", "base"]')
    (tmp_path / "a.toml").write_text(text)
    with pytest.raises(UserError, match="checks.from_parent crafts on each fine-tuned model's parent"):
        load(tmp_path / "a.toml")


def test_a_transfer_source_must_be_a_model_and_cannot_fine_tune(tmp_path):
    text = _without_test_architecture(SUITE.format(eps=EPS).split("[checks]")[0])
    (tmp_path / "a.toml").write_text(text.replace('source = "plain"', 'source = "nobody"'))
    with pytest.raises(UserError, match="source names unknown model 'nobody'"):
        load(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text(text.replace('attack = "fgsm-one"', 'attack = "fgsm-from-plain"'))
    with pytest.raises(UserError, match="is a transfer attack"):
        load(tmp_path / "b.toml")


def test_a_transfer_from_the_parent_and_the_parents_own_evaluation_craft_once(tiny_suite, tmp_path):
    """checks.from_parent crafts FGSM on base for each seed; base's own FGSM evaluation is the same attack on the
    same images: the graph crafts them once and evaluates base on them, with the cells of a plain evaluation."""
    import torch

    from benchmark import data as datasets
    from benchmark.context import Work
    from benchmark.plan import plan_graph
    from benchmark.suite import load

    plain = tiny_suite(extra="\n[checks]\nprobe_images = 0\n")
    checked = tiny_suite(profile="custom", extra='\n[checks]\nprobe_images = 0\nfrom_parent = ["fgsm"]\n')
    data = datasets.synthetic(1000, 300)
    data.identity["pixels"] = "x"
    nodes, _ = plan_graph([Work(load(checked), data, torch.device("cpu"), tmp_path, {}, {}, "code")])
    crafting = [n for n in nodes if n.fn.func.__name__ in ("evaluation_node", "crafted_node")
                and n.fn.keywords["job"].attack.adapter == "torchattacks.FGSM"
                and (n.fn.keywords["job"].source or n.fn.keywords["job"].model) == "base"]
    assert sorted(n.fn.func.__name__ for n in crafting) == ["crafted_node", "crafted_node"]  # one per seed
    store = tmp_path / "store"
    a = run_suite(plain, tmp_path / "plain", device="cpu", store=store, write_report=False)
    b = run_suite(checked, tmp_path / "checked", device="cpu", store=store, write_report=False)
    key = ["model", "attack", "seed", "size"]
    mine = b[b["attack"].isin(["fgsm", "jsma"])].set_index(key)[["orig_acc", "adv_acc"]].sort_index()
    assert mine.equals(a.set_index(key)[["orig_acc", "adv_acc"]].sort_index())


def test_a_transfer_source_that_is_its_target_is_named_white_box(checked):
    results, _, _, run = checked
    report = render(results, run, with_figures=False)
    table = report.split("## Transfer attacks")[1].split("\n## ")[0]
    plain_row = next(line for line in table.splitlines() if line.startswith("| plain "))
    assert "(white-box)" in plain_row  # fgsm-from-plain evaluated on plain itself
