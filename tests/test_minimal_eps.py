"""Per-image minimal eps (benchmark.minimal): the eps found fools the model, the one a bisection step below does
not, the curve it gives agrees with a plain evaluation at a fixed eps, and it lands in examples.csv and the report.
Where success is not monotone in eps (models built so), the minimal eps is the smallest that succeeds on the grid
or a refinement below it, and the images whose success comes and goes are counted."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from adapters import get_attack
from benchmark import examples as examples_csv
from benchmark import run_suite
from benchmark.errors import UserError
from benchmark.evaluate import subset
from benchmark.flags import flags
from benchmark.minimal import GRID, search
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
    step = TOP / GRID / 2 ** STEPS  # bisection inside one grid interval
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
    ("minimal_eps = { max = 0.1, grid = 0 }", "minimal_eps.grid must be an integer from 1 to 256"),
    ("minimal_eps = { max = 0.1, grid = 2.5 }", "minimal_eps.grid must be an integer from 1 to 256"),
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


def test_the_search_carries_its_grid_into_the_spec_and_key(tmp_path):
    text = SUITE.format(top=TOP, steps=STEPS)
    (tmp_path / "default.toml").write_text(text)
    (tmp_path / "fine.toml").write_text(text.replace(f"steps = {STEPS} }}", f"steps = {STEPS}, grid = 32 }}"))
    assert load(tmp_path / "default.toml").attacks["fgsm-curve"].minimal_eps == {"max": TOP, "steps": STEPS,
                                                                                 "grid": GRID}
    assert load(tmp_path / "fine.toml").attacks["fgsm-curve"].minimal_eps["grid"] == 32


class Shift:
    """A stand-in attack at one eps: adds eps to channel 0 of every image, which FooledAt reads back."""

    batch_invariant = True

    def __init__(self, eps: float):
        self.eps = eps

    def __call__(self, model, images, labels, *, positions):
        out = images.clone()
        out[:, 0] += self.eps
        return out


class FooledAt(nn.Module):
    """A model whose prediction flips with the perturbation's size: image i (channel 1 holds i / 100, channel 0 is
    0.5 plus the shift an attack adds) is misclassified exactly where the shift lies in one of `spans[i]`,
    half-open intervals [lo, hi) (a margin of 1e-6 absorbs float32 rounding)."""

    def __init__(self, spans: list[list[tuple[float, float]]]):
        super().__init__()
        self.spans = spans

    def forward(self, x):
        image = (x[:, 1].mean((1, 2)) * 100).round().long()
        shift = x[:, 0].mean((1, 2)) - 0.5
        fooled = torch.zeros(len(x), dtype=torch.bool)
        for i, spans in enumerate(self.spans):
            for lo, hi in spans:
                fooled |= (image == i) & (shift >= lo - 1e-6) & (shift < hi - 1e-6)
        return torch.nn.functional.one_hot(fooled.long(), 2).float()  # label 0 for every image


# (name, where the attack succeeds, minimal eps with the grid, with bisection alone, reversals along the grid of 8)
CASES = [("comes back", [(0.01, 0.02), (0.04, 9)], 0.01, 0.04, 1),   # success at 0.01, failure at 0.02, then at 0.04
         ("monotone", [(0.03, 9)], 0.03, 0.03, 0),
         ("only small", [(0.005, 0.006)], 0.005, math.inf, 1),          # fooled at 0.005, not at max
         ("refined", [(0.0125, 9)], 0.0125, 0.0125, 0),                 # between grid points 0.01 and 0.015
         ("twice", [(0.005, 0.01), (0.02, 0.025)], 0.005, math.inf, 2),
         ("never", [], math.inf, math.inf, 0),
         ("wrong already", [(-1.0, 9)], 0.0, 0.0, 0)]


def _built():
    n = len(CASES)
    images = torch.full((n, 2, 2, 2), 0.5)
    images[:, 1] = (torch.arange(n, dtype=torch.float32) / 100)[:, None, None]
    return FooledAt([c[1] for c in CASES]), images, torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("grid", [GRID, 1])
def test_minimal_eps_is_the_smallest_that_succeeds_where_success_is_not_monotone(grid):
    model, images, labels = _built()
    adv, min_eps, reversals, invariant = search(model, Shift, images, labels, top=0.04, steps=6, batch_size=3,
                                                grid=grid)
    expected = [c[2] if grid == GRID else c[3] for c in CASES]  # grid 1: bisection over [0, max] alone
    assert min_eps == pytest.approx(expected, abs=1e-9), list(zip([c[0] for c in CASES], min_eps))
    if grid == GRID:
        assert reversals == [c[4] for c in CASES]
        assert sum(r > 0 for r in reversals) == 3  # the count the eps_monotone check reads
    fooled = predict(model, adv) != labels  # the kept image fools where a minimal eps was found
    assert fooled.tolist() == [math.isfinite(e) for e in min_eps] and invariant


class Periodic(nn.Module):
    """Two classes, the logit margin of class 1 a sine of the image's mean pixel (period 0.04): every pixel has the
    same gradient, so FGSM at eps moves the mean by eps, and its success comes and goes as eps grows."""

    def forward(self, x):
        margin = torch.sin(2 * math.pi * x.mean((1, 2, 3)) / 0.04)
        return torch.stack([-margin, margin], 1)


def test_fgsm_on_a_model_built_non_monotone_finds_the_smallest_succeeding_grid_point_or_below():
    generator = torch.Generator().manual_seed(0)
    images = 0.3 + 0.4 * torch.rand(60, 3, 4, 4, generator=generator)
    labels = torch.zeros(60, dtype=torch.long)
    model, top, grid = Periodic(), 0.1, 8

    def make(eps):
        return get_attack("torchattacks.FGSM", eps=eps, seed=0)

    _, min_eps, reversals, _ = search(model, make, images, labels, top=top, steps=5, batch_size=16, grid=grid)
    points = [top * k / grid for k in range(grid + 1)]
    correct = (predict(model, images) == labels).numpy()
    success = np.stack([(predict(model, make(e)(model, images, labels)) != labels).numpy() for e in points])
    expected_reversals = (success[:-1] & ~success[1:]).sum(0)
    assert reversals == np.where(correct, expected_reversals, 0).tolist()
    assert int((np.asarray(reversals) > 0).sum()) >= 10  # built so: success comes and goes on many
    for i in np.flatnonzero(correct):
        hits = np.flatnonzero(success[:, i])
        if not len(hits):
            assert math.isinf(min_eps[i])
            continue
        first = points[hits[0]]
        # the smallest succeeding grid point, or a refinement between it and the failing point below
        assert (points[hits[0] - 1] if hits[0] else -1) < min_eps[i] <= first + 1e-12
        adv = make(min_eps[i])(model, images[i:i + 1], labels[i:i + 1])
        assert predict(model, adv).item() != 0


def _examples(reversed_: int, fooled: int, correct: int, *, with_column: bool = True) -> pd.DataFrame:
    """examples.csv rows of one minimal-eps search on `correct` originally correct images (two more wrong):
    `fooled` of them fooled at some eps, the first `reversed_` of those not monotone."""
    n = correct + 2
    table = pd.DataFrame({"model": "m", "recipe": "m", "repeat": "r0", "attack": "curve", "attack_family": "curve",
                          "seed": 0, "position": range(n), "index": range(n), "label": 0,
                          "pred_orig": [0] * correct + [1, 1], "correct_orig": [True] * correct + [False, False],
                          "min_eps": [0.01] * fooled + [math.inf] * (correct - fooled) + [0.0, 0.0],
                          "min_eps_reversals": [1] * reversed_ + [0] * (n - reversed_)})
    table["pred_adv"] = np.where(np.isfinite(table["min_eps"]), 1, 0)
    table["correct_adv"] = table["pred_adv"] == table["label"]
    return table if with_column else table.drop(columns="min_eps_reversals")


@pytest.mark.parametrize("reversed_, fooled, flag", [
    (8, 100, False),   # 8% of those fooled: under the tolerated 10%
    (25, 100, True),   # 25%: far above the tolerated 10%, binomial p ~ 1e-5
    (2, 5, False),     # 40% of 5: not significant on so few
    (6, 10, True)])    # 60% of 10: significant
def test_the_non_monotone_count_is_flagged_when_significantly_above_the_tolerated_share(reversed_, fooled, flag):
    table = _examples(reversed_, fooled, 120)
    results = {"cells": [{"model": "m", "attack": "curve", "attack_family": "curve", "seed": 0, "size": 122}]}
    rows = flags(results, table)
    row = rows[rows["check"] == "eps_monotone"].iloc[0]
    assert row["flag"] is flag and f"success not monotone in eps for {reversed_} of {fooled} images" in row["measured"]


def test_the_flags_table_and_the_curves_say_the_count_or_that_it_was_not_measured(tmp_path):
    from benchmark.report import Report
    from benchmark.report.curves import minimal_eps_section
    from benchmark.report.robustness import robustness_section

    results = {"cells": [{"model": "m", "attack": "curve", "attack_family": "curve", "seed": 0, "size": 42}],
               "suite": {"attacks": {"curve": {"adapter": "torchattacks.FGSM", "minimal_eps": {"max": 0.05}}}}}
    report = Report(results, tmp_path, examples=_examples(3, 30, 40), with_figures=False)
    checks, curves = "\n".join(robustness_section(report)), "\n".join(minimal_eps_section(report))
    assert "| m       | eps_monotone | curve: success not monotone in eps for 3 of 30 images" in checks
    assert "eps_monotone: of the originally correct images a minimal-eps search fools" in checks
    assert "| 3 of 30 " in curves and "not monotone (of those fooled)" in curves
    old = Report(results, tmp_path, examples=_examples(3, 30, 40, with_column=False), with_figures=False)
    assert "curve: not measured (examples.csv has no min_eps_reversals column)" in "\n".join(robustness_section(old))
    assert "| not measured " in "\n".join(minimal_eps_section(old))
