"""Attack throughput with pytest-benchmark (not part of `./bench test`; run with
`./bench test benchmarks --benchmark-only`). Every attack gets the same originally-correct images of the same
model; each benchmark records images/s, the success rate (left the true class) and the largest L0 in
`extra_info`, and ART's targeted SaliencyMapMethod also how many reached their target, so in-house JSMA and ART's
are compared like for like: theta 1 and the same 30-feature budget (ART's gamma from `art_gamma`)."""
from __future__ import annotations

import pytest
import torch

from adapters import get_attack
from adapters.jsma_origin import art_gamma, l0_budget
from adapters.via_art import choose_targets
from benchmark import data, models
from benchmark.train import Schedule, fit

IMAGES = 64
FEATURES = 3 * 32 * 32
ATTACKS = {
    "torchattacks.FGSM": {"eps": 0.01},
    "torchattacks.PGD": {"eps": 0.01, "alpha": 0.0025, "steps": 10},
    "jsma-origin": {"theta": 1.0, "gamma": 0.01},
    "art.SaliencyMapMethod": {"theta": 1.0, "gamma": art_gamma(l0_budget(0.01, FEATURES), FEATURES),
                              "targets": "random"},
    "jsma-origin/paper-code": {"mode": "paper-code"},
}


@pytest.fixture(scope="module", params=["small-cnn", "resnet18-cifar"])
def setup(request):
    ds = data.synthetic(2000, IMAGES)
    torch.manual_seed(0)
    model = models.build(request.param, mean=[0.5] * 3, std=[0.5] * 3)
    fit(model, ds.train_x, ds.train_y, epochs=1 if request.param != "small-cnn" else 4, batch_size=100,
        schedule=Schedule(), seed=0, augment=True)
    model.eval()
    x, y = ds.test_x.float() / 255, ds.test_y
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    return request.param, model, x[correct], y[correct]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_images_per_second(benchmark, setup, name):
    arch, model, x, y = setup
    attack = get_attack(name.split("/")[0], **ATTACKS[name])
    adv = benchmark.pedantic(attack, args=(model, x, y), rounds=3 if "art" not in name else 1, iterations=1)
    with torch.no_grad():
        logits, pred = model(x), model(adv).argmax(1)
    info = {"arch": arch, "images": len(x), "images_per_s": len(x) / benchmark.stats.stats.mean,
            "success_rate": float((pred != y).float().mean()),
            "max_l0": int(((adv - x).abs() > 1e-6).flatten(1).sum(1).max())}
    if name == "art.SaliencyMapMethod":
        info["reached_target"] = float((pred == choose_targets("random", y, logits, attack.seed)).float().mean())
    benchmark.extra_info.update(info)
    assert adv.shape == x.shape
