"""Shared fixtures: the synthetic set, a small CNN trained on it, and a tiny suite for runner tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_JPEG = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

TINY_SUITE = """
schema = 1
name = "tiny"
profile = "{profile}"

[data]
source = "synthetic"
train = 1000
test = 300

[models.base]
arch = "small-cnn"
epochs = 2
batch_size = 100
seed = 0

[models.aft-fgsm]
from = "base"
attack = "fgsm"
images = 100
split = "{split}"
schedule = "slow-start-fast-decay"

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.02

[attacks.jsma]
adapter = "jsma-origin"
gamma = 0.005              # 15 pixel-channels: tests of the machinery, at half the paper's budget

[matrix]
models = ["base", "aft-fgsm"]
attacks = ["fgsm", "jsma"]

[evaluation]
sizes = [20, 50]
seeds = [0, 1]
batch_size = 50
"""


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_DATA_DIR", raising=False)


@pytest.fixture
def tiny_suite(tmp_path):
    def write(profile: str = "paper", split: str = "train", extra: str = "") -> Path:
        path = tmp_path / f"tiny-{profile}-{split}.toml"
        path.write_text(TINY_SUITE.format(profile=profile, split=split) + extra)
        return path

    return write


@pytest.fixture(scope="session")
def synthetic():
    from benchmark.data import synthetic

    return synthetic(2000, 500)


@pytest.fixture(scope="session")
def trained(synthetic):
    """A small CNN at > 90% on the synthetic test split, in eval mode."""
    from benchmark import models
    from benchmark.train import Schedule, fit

    torch.manual_seed(0)
    model = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3)
    fit(model, synthetic.train_x, synthetic.train_y, epochs=4, batch_size=100, schedule=Schedule(), seed=0,
        augment=True)
    return model.eval()


@pytest.fixture(scope="session")
def batch(synthetic):
    x = synthetic.test_x[:64].float() / 255
    return x, synthetic.test_y[:64]


def pytest_report_header(config):
    return f"torch {torch.__version__}; shared JPEG set: {'present' if SHARED_JPEG.exists() else 'absent'}; " \
           f"threads {torch.get_num_threads()}; cpus {os.cpu_count()}"
