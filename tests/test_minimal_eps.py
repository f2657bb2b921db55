"""Per-image minimal eps (benchmark.minimal): the eps found fools the model, the one a bisection step below does
not, the curve it gives agrees with a plain evaluation at a fixed eps, and it lands in examples.csv and the report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adapters import get_attack
from benchmark import examples as examples_csv
from benchmark import run_suite
from benchmark.errors import UserError
from benchmark.evaluate import subset
from benchmark.report import render
from benchmark.suite import load
from benchmark.train import predict

SUITE = """
schema = 1
name = "minimal"

[data]
source = "synthetic"
train = 2000
test = 500

[models.plain]
provided = true

[attacks.fgsm-curve]
adapter = "torchattacks.FGSM"
minimal_eps = {{ max = {top}, steps = {steps} }}

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.05

[matrix]
models = ["plain"]
attacks = ["fgsm-curve", "fgsm"]

[evaluation]
sizes = [40]
seeds = [0]
batch_size = 16
"""
TOP, STEPS = 0.1, 6


@pytest.fixture(scope="module")
def searched(tmp_path_factory, trained):
    tmp = tmp_path_factory.mktemp("minimal")
    (tmp / "minimal.toml").write_text(SUITE.format(top=TOP, steps=STEPS))
    run_suite(tmp / "minimal.toml", tmp / "run", device="cpu", models={"plain": trained}, write_report=False)
    return json.loads((tmp / "run" / "results.json").read_text()), examples_csv.load(tmp / "run"), tmp / "run"


def test_the_minimal_eps_fools_the_model_and_one_step_below_does_not(searched, trained, synthetic):
    _, table, _ = searched
    rows = table[table["attack"] == "fgsm-curve"].sort_values("position")
    idx = subset(len(synthetic.test_y), 40, 0)
    assert rows["index"].tolist() == idx.tolist()
    x, y = synthetic.test_x[idx].float() / 255, synthetic.test_y[idx]
    model = trained.eval()
    step = TOP / 2 ** STEPS
    checked = agree = 0
    for i, eps in enumerate(rows["min_eps"]):
        if eps == 0:  # misclassified already
            assert predict(model, x[i:i + 1]).item() != y[i].item()
            continue
        if math.isinf(eps):  # not fooled at the largest eps
            adv = get_attack("torchattacks.FGSM", eps=TOP, seed=0)(model, x[i:i + 1], y[i:i + 1], positions=[i])
            assert predict(model, adv).item() == y[i].item()
            continue
        checked += 1
        fooled = get_attack("torchattacks.FGSM", eps=eps, seed=0)(model, x[i:i + 1], y[i:i + 1], positions=[i])
        below = get_attack("torchattacks.FGSM", eps=eps - step, seed=0)(model, x[i:i + 1], y[i:i + 1],
                                                                         positions=[i])
        agree += predict(model, fooled).item() != y[i].item() and (
            eps - step <= 0 or predict(model, below).item() == y[i].item())
    # by hand one image at a time, in the search in groups: rounding may differ at an exact boundary
    assert checked >= 20 and agree >= checked - 1


def test_the_curve_agrees_with_a_plain_evaluation_and_reaches_the_report(searched):
    results, table, run = searched
    curve = table[table["attack"] == "fgsm-curve"].sort_values("position")
    plain = table[table["attack"] == "fgsm"].sort_values("position")
    at = (curve["correct_orig"].to_numpy() & (curve["min_eps"].to_numpy(float) > 0.05))
    # FGSM is not exactly monotone in eps: allow a couple of images either way
    assert abs(int(at.sum()) - int(plain["correct_adv"].sum())) <= 2
    cell = next(c for c in results["cells"] if c["attack"] == "fgsm-curve")
    correct = curve["correct_orig"].to_numpy(bool)
    eps = curve["min_eps"].to_numpy(float)[correct]
    assert cell["min_eps_median"] == pytest.approx(float(np.median(eps)))
    # the images it keeps: at the minimal eps where it fools the model, at max where it does not
    assert (curve["correct_adv"][curve["correct_orig"]] == np.isinf(curve["min_eps"][curve["correct_orig"]])).all()
    assert plain["min_eps"].isna().all()  # the column is empty for the other attacks
    report = render(results, run, with_figures=False)
    assert "## Robustness curves from per-image minimal eps" in report and "| plain   | fgsm-curve |" in report
    worst = report.split("## Worst case over attacks")[1].split("\n## ")[0]  # its outcome is at max: left out
    header = next(line for line in worst.splitlines() if line.startswith("| model"))
    assert "Left out: fgsm-curve" in worst and "fgsm-curve" not in header and "| fgsm " in header


@pytest.mark.parametrize("entry, message", [
    ("minimal_eps = { max = 0 }", "minimal_eps.max must be a positive number"),
    ("minimal_eps = { max = 0.1, steps = 40 }", "minimal_eps.steps must be an integer from 1 to 24"),
    ("minimal_eps = { max = 0.1 }\neps = 0.01", "minimal_eps searches eps itself"),
    ("minimal_eps = { max = 0.1, step = 3 }", "minimal_eps"),
    ("minimal_eps = { steps = 3 }", "minimal_eps needs max"),
    ("minimal_eps = { max = 2.0 }", "minimal_eps.max = 2.0: an Linf eps in pixel space above 1"),
])
def test_bad_minimal_eps_is_one_line(tmp_path, entry, message):
    text = SUITE.format(top=TOP, steps=STEPS).replace(f"minimal_eps = {{ max = {TOP}, steps = {STEPS} }}", entry)
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(UserError, match=message):
        load(tmp_path / "bad.toml")


@pytest.mark.parametrize("adapter", ["torchattacks.DeepFool", "jsma-origin"])
def test_minimal_eps_needs_an_attack_whose_eps_bounds_it(tmp_path, adapter):
    text = SUITE.format(top=TOP, steps=STEPS).replace('adapter = "torchattacks.FGSM"\nminimal_eps',
                                                      f'adapter = "{adapter}"\nminimal_eps')
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(UserError, match="minimal_eps needs an attack whose eps bounds its perturbation"):
        load(tmp_path / "bad.toml")
