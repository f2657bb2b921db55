"""The seams a user extends are registries: an attack family, a model builder, an architecture and a report
section registered at run time (as another package's module would be, through its entry point) are used by a
suite like the built-in ones; an entry point of an installed package is loaded the same way. Nothing installed."""
from __future__ import annotations

import json
import sys
import textwrap
from importlib.metadata import EntryPoint

import pandas as pd
import pytest
import torch
from torch import nn

from adapters import Attack, attack_family, get_attack
from adapters.families import ATTACK_FAMILIES
from adapters.registry import Registry
from benchmark import models, run_suite
from benchmark.builders import MODEL_BUILDERS, model_builder
from benchmark.errors import UserError
from benchmark.report import SECTIONS, section
from benchmark.train import predict


class Flip(Attack):
    """A stand-in attack: every image mirrored left-right (deterministic, so its numbers can be checked by hand)."""
    name = "flip"

    def perturb(self, model, images, labels, *, positions):
        return images.flip(-1)


class Tiny(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(64, num_classes))

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def registered():
    @attack_family("flip", members=lambda: {"flip": {"space": "pixel", "seed": 0}})
    def build_flip(member, **params):
        return Flip(**params)

    def check_tiny(value, entry, where, fail, suite_dir):
        if value != "v1":
            raise fail(f"{where}tiny-net: only v1 exists, got {value!r}")

    @model_builder("tiny-net", check=check_tiny)
    def build_tiny(entry, num_classes, where):
        return Tiny(num_classes)

    models.architecture("tiny-arch")(Tiny)

    @section("stand-in", order=12)
    def stand_in(report):
        return ["## Stand-in section", "", f"{len(report.frame)} cells.", ""]

    yield
    for registry, name in ((ATTACK_FAMILIES, "flip"), (MODEL_BUILDERS, "tiny-net"), (models.ARCHITECTURES, "tiny-arch"),
                           (SECTIONS, "stand-in")):
        registry.unregister(name)


SUITE = """
schema = 1
name = "registered"

[data]
source = "synthetic"
train = 400
test = 100

[models.trained]
arch = "tiny-arch"
epochs = 1
batch_size = 100

[models.mine]
checkpoint = "mine.pt"
tiny-net = "v1"

[attacks.flip]
adapter = "flip"

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.03

[matrix]
models = ["trained", "mine"]
attacks = ["flip", "fgsm"]

[evaluation]
sizes = [50]
seeds = [0]
batch_size = 25
"""


def test_a_registered_family_builder_architecture_and_section_run_in_a_suite(registered, tmp_path):
    torch.manual_seed(0)
    mine = Tiny(10)
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    (tmp_path / "suite.toml").write_text(SUITE)
    frame = run_suite(tmp_path / "suite.toml", tmp_path / "out", device="cpu")
    assert set(zip(frame["model"], frame["attack"])) == {(m, a) for m in ("trained", "mine") for a in ("flip", "fgsm")}
    # The flip attack's numbers, by hand: the loaded model's accuracy on the mirrored evaluation images.
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    examples = pd.read_csv(tmp_path / "out" / "examples.csv")
    from benchmark.data import synthetic
    from benchmark.evaluate import subset

    data = synthetic(400, 100)
    idx = subset(100, 50, 0)
    x, y = data.test_x[idx].float() / 255, data.test_y[idx]
    by_hand = (predict(mine.eval(), x.flip(-1)) == y).float().mean().item()
    cell = frame[(frame["model"] == "mine") & (frame["attack"] == "flip")].iloc[0]
    assert cell["adv_acc"] == pytest.approx(by_hand)
    assert cell["orig_acc"] == pytest.approx((predict(mine, x) == y).float().mean().item())
    assert len(examples[(examples["model"] == "mine") & (examples["attack"] == "flip")]) == 50
    assert results["models"]["mine"]["source"]["builder"] == "tiny-net"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Stand-in section" in report and "4 cells." in report
    assert report.index("## Stand-in section") < report.index("## Accuracy")  # placed by its order


def test_a_registered_builder_checks_its_value_in_one_line(registered, tmp_path, capsys):
    from benchmark.cli import main

    torch.save(Tiny(10).state_dict(), tmp_path / "mine.pt")
    (tmp_path / "suite.toml").write_text(SUITE.replace('tiny-net = "v1"', 'tiny-net = "v2"'))
    assert main(["validate", str(tmp_path / "suite.toml")]) == 2
    assert capsys.readouterr().err.strip().endswith("models.mine.tiny-net: only v1 exists, got 'v2'")


def test_unknown_names_list_what_is_registered(registered):
    with pytest.raises(ValueError) as refused:
        get_attack("nope")
    assert all(name in str(refused.value) for name in ("jsma-origin", "torchattacks.<Class>", "art.<Class>", "flip"))
    with pytest.raises(UserError, match="tiny-arch"):
        models.build("nope", mean=[0.5] * 3, std=[0.5] * 3)


def test_a_name_registered_twice_by_two_objects_is_refused():
    registry = Registry("thing", group="adv_transfer_bench.test-things")
    registry.register("a", object())
    registry.register("a", registry.get("a"))  # the same object again: a re-import, fine
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registry.register("a", object())


def test_entry_points_of_installed_packages_are_loaded(tmp_path, monkeypatch):
    """What `pip install` of a third-party package with `[project.entry-points."adv_transfer_bench.attack_families"]`
    gives: its module is imported on first lookup and its decorator registers the family."""
    (tmp_path / "third_party_attacks.py").write_text(textwrap.dedent("""
        from adapters import Attack, attack_family

        class Shift(Attack):
            name = "shift"

            def perturb(self, model, images, labels, *, positions):
                return images.roll(1, dims=-1)

        @attack_family("shift", members=lambda: {"shift": {"space": "pixel", "seed": 0}})
        def build(member, **params):
            return Shift(**params)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("attack family", group="adv_transfer_bench.attack_families")
    point = EntryPoint("shift", "third_party_attacks", "adv_transfer_bench.attack_families")
    monkeypatch.setattr("adapters.registry.entry_points",
                        lambda group: [point] if group == "adv_transfer_bench.attack_families" else [])
    monkeypatch.setattr("adapters.families.ATTACK_FAMILIES", registry)
    try:
        attack = get_attack("shift")
        assert type(attack).__name__ == "Shift" and "shift" in registry.names()
    finally:
        ATTACK_FAMILIES.unregister("shift")
        sys.modules.pop("third_party_attacks", None)
