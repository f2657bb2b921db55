"""Attack throughput with pytest-benchmark (not part of `./bench test`; run with
`./bench test benchmarks --benchmark-only`). Each benchmark records images/s and, for the JSMA pair, the success
rate on originally-correct images in `extra_info`, so in-house JSMA and ART's SaliencyMapMethod are compared on
the same model, images and budget (theta 1, gamma 1%)."""
from __future__ import annotations

import pytest
import torch

from adapters import get_attack
from benchmark import data, models
from benchmark.train import Schedule, fit

IMAGES = 64
BUDGET = {"theta": 1.0, "gamma": 0.01}
ATTACKS = {
    "torchattacks.FGSM": {"eps": 0.01},
    "torchattacks.PGD": {"eps": 0.01, "alpha": 0.0025, "steps": 10},
    "jsma-origin": BUDGET,
    "art.SaliencyMapMethod": {**BUDGET, "targets": "random"},
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
    return request.param, model, ds.test_x.float() / 255, ds.test_y


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_images_per_second(benchmark, setup, name):
    arch, model, x, y = setup
    attack = get_attack(name.split("/")[0], **ATTACKS[name])
    adv = benchmark.pedantic(attack, args=(model, x, y), rounds=3 if "art" not in name else 1, iterations=1)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = (model(adv).argmax(1) != y) & correct
    benchmark.extra_info.update({"arch": arch, "images": len(x),
                                 "images_per_s": len(x) / benchmark.stats.stats.mean,
                                 "success_rate": float(fooled.sum() / correct.sum().clamp(min=1))})
    assert adv.shape == x.shape
