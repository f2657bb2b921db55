"""The seams a user extends are registries: an attack family, a model builder, an architecture and a report
section registered at run time (as another package's module would be, through its entry point) are used by a
suite like the built-in ones; an entry point of an installed package is loaded the same way. Nothing installed."""
from __future__ import annotations

import json
import re
import sys
from importlib.metadata import EntryPoint

import pandas as pd
import pytest
import torch
from torch import nn

from adapters import Attack, attack_family, get_attack
from adapters.families import ATTACK_FAMILIES
from adapters.registry import Registry, RegistryError
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


THIRD_PARTY = """
from adapters import Attack, attack_family
from adapters.families import Family


class Shift(Attack):
    name = "shift"

    def perturb(self, model, images, labels, *, positions):
        return images.roll(1, dims=-1)


def build(member, **params):
    return Shift(**params)


shift = Family("shift", build, lambda: {"shift": {"space": "pixel", "seed": 0}}, False)
if REGISTER:
    attack_family(REGISTER, members=lambda: {REGISTER: {"space": "pixel", "seed": 0}})(build)
"""


def _installed(tmp_path, monkeypatch, register: str, value: str, name: str = "shift", module: str = "third_party"):
    """A registry of attack families with the built-ins and one entry point, as `pip install` of a package
    declaring `[project.entry-points."adv_transfer_bench.attack_families"] <name> = "<value>"` gives."""
    (tmp_path / f"{module}.py").write_text(f"REGISTER = {register!r}\n" + THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    registry = Registry("attack family", group=ATTACK_FAMILIES.group, builtin=ATTACK_FAMILIES.builtin,
                        item_type=ATTACK_FAMILIES.item_type)
    registry._items = {k: v for k, v in ATTACK_FAMILIES.items()}  # the built-ins, already imported
    point = EntryPoint(name, value, ATTACK_FAMILIES.group)
    monkeypatch.setattr("adapters.registry.entry_points", lambda group: [point] if group == registry.group else [])
    monkeypatch.setattr("adapters.families.ATTACK_FAMILIES", registry)
    return registry


def test_an_entry_point_module_registers_its_family_on_first_lookup(tmp_path, monkeypatch):
    registry = _installed(tmp_path, monkeypatch, "shift", "third_party")
    assert type(get_attack("shift")).__name__ == "Shift" and "shift" in registry.names()
    assert "torchattacks" in registry.names()


def test_an_entry_point_may_name_the_family_object(tmp_path, monkeypatch):
    _installed(tmp_path, monkeypatch, "", "third_party:shift")
    assert type(get_attack("shift")).__name__ == "Shift"


@pytest.mark.parametrize("register, value, name, message", [
    ("art", "third_party", "art", "does not import: RegistryError: attack family 'art' is registered twice "
                                  "(adapters.via_art.build and third_party.build)"),
    ("", "third_party:shift", "torchattacks", "attack family 'torchattacks' is registered twice"),
    ("", "third_party:build", "shift", "names a function, not a Family: point it at the module"),
    ("", "no_such_module", "shift", "does not import: ModuleNotFoundError: No module named 'no_such_module'"),
])
def test_a_bad_entry_point_is_one_line_on_every_lookup(tmp_path, monkeypatch, capsys, register, value, name,
                                                       message):
    _installed(tmp_path, monkeypatch, register, value, name)
    for _ in range(2):  # not raised once and then forgotten
        with pytest.raises(RegistryError, match=re.escape(message)):
            get_attack("torchattacks.FGSM", eps=0.01)
    from adapters.catalog import runnable
    from benchmark.cli import main

    runnable.cache_clear()  # an earlier listing in this process is cached: list again through the registry
    assert main(["attacks", "torchattacks.FGSM"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_family_name_with_dots_is_refused():
    with pytest.raises(RegistryError, match="without dots"):
        attack_family("torchattacks.FGSM", members=dict)


def test_third_party_code_that_raises_is_one_line_or_a_note(registered, tmp_path, capsys, monkeypatch):
    """A family's build, an architecture or an executor that raises: one line and exit 2; a report section that
    raises: the report is still written, with a note where the section would be."""
    from benchmark.cli import main
    from benchmark.executor import EXECUTORS, executor

    @attack_family("explodes", members=lambda: {"explodes": {}})
    def explodes(member, **params):
        raise RuntimeError("family build exploded")

    models.architecture("broken-arch")(lambda num_classes: "not a module")

    @executor("broken")
    def broken(address=None):
        raise RuntimeError("cannot connect")

    @section("explodes", order=13)
    def bad_section(report):
        raise ZeroDivisionError("section blew up")

    try:
        torch.save(Tiny(10).state_dict(), tmp_path / "mine.pt")
        suite = tmp_path / "suite.toml"
        suite.write_text(SUITE.replace('adapter = "flip"', 'adapter = "explodes"'))
        assert main(["validate", str(suite)]) == 2
        assert "attacks.flip: explodes failed to build: RuntimeError: family build exploded" in capsys.readouterr().err
        suite.write_text(SUITE.replace('"tiny-arch"', '"broken-arch"'))
        assert main(["run", str(suite), "--device", "cpu", "--out", str(tmp_path / "o1")]) == 2
        assert "architecture broken-arch returned str, not a torch.nn.Module" in capsys.readouterr().err
        suite.write_text(SUITE)
        assert main(["run", str(suite), "--device", "cpu", "--executor", "broken", "--out", str(tmp_path / "o2")]) == 2
        assert "executor broken failed to start: RuntimeError: cannot connect" in capsys.readouterr().err
        assert main(["run", str(suite), "--device", "cpu", "--out", str(tmp_path / "o3")]) == 0
        report = (tmp_path / "o3" / "report.md").read_text()
        assert "Section `explodes`" in report and "ZeroDivisionError: section blew up" in report
        assert "## Environment" in report  # the sections after it still rendered
    finally:
        for registry, name in ((ATTACK_FAMILIES, "explodes"), (models.ARCHITECTURES, "broken-arch"),
                               (EXECUTORS, "broken"), (SECTIONS, "explodes")):
            registry.unregister(name)
