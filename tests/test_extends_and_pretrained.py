"""Suites that extend each other (benchmark.extends), and a base recipe that starts from published weights
(`arch = "resnet18-imagenet"`, `pretrained = "<file>"`), tested with a state dict of torchvision's layout made
here (random weights) at tiny sizes."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark import models, run_suite
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.suite import load
from conftest import REPO, TINY_SUITE


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def parent(tmp_path):
    return _write(tmp_path / "base" / "tiny.toml", TINY_SUITE.format(profile="paper", split="train"))


def test_an_overlay_merges_tables_key_by_key_and_overrides_what_it_sets(parent, tmp_path):
    child = _write(tmp_path / "base" / "child.toml", 'extends = "tiny.toml"\n[models.base]\nepochs = 1\n'
                   '[attacks.fgsm]\neps = 0.05\n')
    suite, base = load(child), load(parent)
    assert suite.name == "child" and suite.chain == [str(child), str(parent)]
    assert suite.models["base"].entry == {**base.models["base"].entry, "epochs": 1}
    assert suite.attacks["fgsm"].params == {"eps": 0.05} and suite.attacks["jsma"] == base.attacks["jsma"]
    assert suite.matrix_attacks == base.matrix_attacks and suite.sizes == base.sizes


def test_drop_removes_inherited_entries_and_paths_keep_naming_the_same_file(parent, tmp_path):
    ref = _write(tmp_path / "base" / "ref.toml", 'sizes = [20, 50]\n[tables]\n')
    parent.write_text(parent.read_text() + '\n[reference]\nfile = "ref.toml"\n')
    child = _write(tmp_path / "elsewhere" / "deep" / "child.toml",
                   'extends = "../../base/tiny.toml"\ndrop = ["attacks.jsma", "models.aft-fgsm"]\n'
                   '[matrix]\nmodels = ["base"]\nattacks = ["fgsm"]\n')
    suite = load(child)
    assert list(suite.attacks) == ["fgsm"] and list(suite.models) == ["base"]
    assert suite.raw["reference"]["file"] == "../../base/ref.toml" and ref.is_file()
    assert suite.reference["source"] == "ref.toml"


@pytest.mark.parametrize("text, message", [
    ('extends = "missing.toml"\n', "extends names 'missing.toml', not found at"),
    ('extends = "tiny.toml"\ndrop = ["attacks.nope"]\n', "drop names 'attacks.nope', which tiny.toml does not define"),
    ('extends = 3\n', "extends must name a suite file"),
    ('drop = ["attacks.fgsm"]\n' + TINY_SUITE.format(profile="paper", split="train"), "drop applies to an inherited"),
])
def test_bad_overlays_are_refused_in_one_line(parent, tmp_path, capsys, text, message):
    child = _write(tmp_path / "base" / "child.toml", text)
    assert main(["validate", str(child)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_cycle_is_refused(tmp_path, capsys):
    _write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    assert main(["validate", str(tmp_path / "a.toml")]) == 2
    assert "extends forms a cycle (a.toml -> b.toml -> a.toml)" in capsys.readouterr().err


def test_validate_prints_the_merged_suite(parent, tmp_path, capsys):
    child = _write(tmp_path / "base" / "child.toml", 'extends = "tiny.toml"\n[models.base]\nepochs = 1\n')
    assert main(["validate", str(child)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["files"] == [str(child), str(parent)]
    assert plan["merged_suite"]["models"]["base"]["epochs"] == 1 and "extends" not in plan["merged_suite"]


def test_the_shipped_cpu_overlays_resolve_to_their_parents_recipes():
    """paper-cpu and paper-code-cpu are overlays of a few lines; they share one base recipe (trained once for
    both), and paper-authors-model's base is paper-code's: one base model for the full-scale pair."""
    suites = {n: load(REPO / "suites" / f"{n}.toml") for n in ("paper-cpu", "paper-code-cpu", "paper-code",
                                                              "paper-authors-model")}
    assert suites["paper-cpu"].models["base@r0"].entry == suites["paper-code-cpu"].models["base@r0"].entry
    assert suites["paper-authors-model"].models["base@r0"].entry == suites["paper-code"].models["base@r0"].entry
    assert suites["paper-cpu"].models["base@r0"].entry["epochs"] == 8
    assert suites["paper-cpu"].models["base@r0"].entry["early_stop"] is None
    assert list(suites["paper-cpu"].attacks) == ["fgsm", "jsma"]
    for name in ("paper-cpu", "paper-code-cpu"):
        assert len((REPO / "suites" / f"{name}.toml").read_text().split("\nextends")[1].splitlines()) <= 12


def test_an_overlay_equal_to_its_parent_reuses_its_artefacts(parent, tmp_path):
    small = parent.read_text().replace("sizes = [20, 50]", "sizes = [20]").replace("seeds = [0, 1]", "seeds = [0]")
    parent.write_text(small.replace('attacks = ["fgsm", "jsma"]', 'attacks = ["fgsm"]')
                      .replace('models = ["base", "aft-fgsm"]', 'models = ["base"]'))
    child = _write(tmp_path / "base" / "same.toml", 'extends = "tiny.toml"\n')
    store = tmp_path / "store"
    run_suite(parent, tmp_path / "one", device="cpu", store=store, write_report=False)
    frame = run_suite(child, tmp_path / "two", device="cpu", store=store, write_report=False)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["nodes"]["computed"] == 0 and run["nodes"]["reused"] > 0
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["suite_files"] == [str(child), str(parent)] and results["suite_name"] == "same"
    first = json.loads((tmp_path / "one" / "results.json").read_text())["cells"]
    assert results["cells"] == first and len(frame) == len(first)


# --------------------------------------------------------------------------------------------- pretrained
@pytest.fixture
def weights(tmp_path):
    """A file of torchvision's ResNet-18 ImageNet layout (1000-class head), random weights."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    state = resnet18(num_classes=1000).state_dict()
    path = tmp_path / "weights" / "resnet18-f37072fd.pth"
    path.parent.mkdir()
    torch.save(state, path)
    return path, state


def test_the_pretrained_architecture_resizes_inside_and_loads_all_but_the_head(weights):
    path, state = weights
    model = models.build("resnet18-imagenet", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                         num_classes=10)
    head = model.net.net.fc.weight.clone()
    assert models.load_pretrained(model, state, "models.base") == ["fc.weight", "fc.bias"]
    net = model.net.net
    assert torch.equal(net.conv1.weight, state["conv1.weight"]) and torch.equal(net.layer4[1].bn2.running_var,
                                                                                 state["layer4.1.bn2.running_var"])
    assert torch.equal(net.fc.weight, head) and net.fc.out_features == 10
    seen = []
    net.conv1.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10) and seen == [(2, 3, 224, 224)]
    with pytest.raises(UserError, match="does not fit the architecture"):
        models.load_pretrained(model, {k: v for k, v in state.items() if k != "conv1.weight"}, "models.base")


PRETRAINED_SUITE = """
schema = 1
name = "pretrained"

[data]
source = "synthetic"
train = 20
test = 6

[models.base]
arch = "resnet18-imagenet"
pretrained = "weights/resnet18-f37072fd.pth"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
epochs = 1
batch_size = 10
augment = false

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.01

[matrix]
models = ["base"]
attacks = ["fgsm"]

[evaluation]
sizes = [4]
seeds = [0]
batch_size = 4
"""


def test_a_pretrained_recipe_runs_and_is_keyed_by_the_weights_not_their_path(weights, tmp_path, monkeypatch):
    path, _ = weights
    suite = _write(tmp_path / "pretrained.toml", PRETRAINED_SUITE)
    starts = []
    original = models.load_pretrained
    monkeypatch.setattr(models, "load_pretrained", lambda *a: starts.append(1) or original(*a))
    frame = run_suite(suite, tmp_path / "out", device="cpu", store=tmp_path / "store")
    assert len(frame) == 1 and starts == [1]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["models"]["base"]["source"]["pretrained"]["file"] == "resnet18-f37072fd.pth"
    assert "starting from `resnet18-f37072fd.pth`" in (tmp_path / "out" / "report.md").read_text()
    # The same file elsewhere: the same key, nothing trained again; other contents: trained again.
    moved = tmp_path / "moved" / "resnet18-f37072fd.pth"
    moved.parent.mkdir()
    path.rename(moved)
    suite.write_text(PRETRAINED_SUITE.replace("weights/", "moved/"))
    run_suite(suite, tmp_path / "out2", device="cpu", store=tmp_path / "store", write_report=False)
    assert json.loads((tmp_path / "out2" / "run.json").read_text())["nodes"]["computed"] == 0 and starts == [1]
    state = torch.load(moved, weights_only=True)
    state["conv1.weight"] += 1
    torch.save(state, moved)
    run_suite(suite, tmp_path / "out3", device="cpu", store=tmp_path / "store", write_report=False)
    assert starts == [1, 1]


def test_without_the_weights_file_one_line_names_it_and_where_to_get_it(tmp_path, capsys):
    suite = _write(tmp_path / "pretrained.toml", PRETRAINED_SUITE)
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resnet18-f37072fd.pth" in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    shipped = REPO / "suites" / "paper-pretrained.toml"
    if not (REPO / "weights" / "resnet18-f37072fd.pth").is_file():
        assert main(["validate", str(shipped)]) == 2
        assert "resnet18-f37072fd.pth" in capsys.readouterr().err
    other = _write(tmp_path / "other.toml", PRETRAINED_SUITE.replace("resnet18-imagenet", "small-cnn"))
    assert main(["validate", str(other)]) == 2
    assert "small-cnn has no published weights here" in capsys.readouterr().err


def test_an_overlay_elsewhere_finds_the_parents_checkpoint_and_factory(tmp_path, capsys):
    """The parent's checkpoint path and the folder its factory's module is looked for in are the parent's, seen
    from the overlay's folder (`factory_dir`, which the overlay gets rebased)."""
    parent_dir = tmp_path / "parent"
    _write(parent_dir / "nets" / "tiny.py", "from torch import nn\n\ndef build(num_classes):\n"
           "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n")
    from torch import nn

    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).state_dict(), parent_dir / "net.pt")
    _write(parent_dir / "suite.toml", TINY_SUITE.format(profile="paper", split="train").replace(
        '[models.base]\narch = "small-cnn"\nepochs = 2\nbatch_size = 100\nseed = 0\n',
        '[models.base]\ncheckpoint = "net.pt"\nfactory = "nets.tiny:build"\n'))
    child = _write(tmp_path / "a" / "b" / "child.toml", 'extends = "../../parent/suite.toml"\n')
    assert main(["validate", str(child)]) == 0
    merged = json.loads(capsys.readouterr().out)["merged_suite"]["models"]["base"]
    assert merged["checkpoint"] == "../../parent/net.pt" and merged["factory_dir"] == "../../parent"


def test_drop_reads_dotted_names_and_refuses_an_ambiguous_path(tmp_path, capsys):
    parent = _write(tmp_path / "p.toml", TINY_SUITE.format(profile="paper", split="train")
                    + '\n[attacks."fgsm.v2"]\nadapter = "torchattacks.FGSM"\neps = 0.03\n'
                    + '\n[attacks.fgsm2]\nadapter = "torchattacks.FGSM"\neps = 0.03\n')
    assert "fgsm.v2" in load(parent).attacks
    child = _write(tmp_path / "c.toml", 'extends = "p.toml"\ndrop = ["attacks.fgsm.v2", "attacks.fgsm.eps"]\n')
    suite = load(child)
    assert "fgsm.v2" not in suite.attacks and "eps" not in suite.raw["attacks"]["fgsm"]
    _write(tmp_path / "both.toml", TINY_SUITE.format(profile="paper", split="train").replace(
        '[attacks.fgsm]\nadapter = "torchattacks.FGSM"\neps = 0.02\n',
        '[attacks.fgsm]\nadapter = "torchattacks.FGSM"\neps = 0.02\nv2 = 1\n')
        + '\n[attacks."fgsm.v2"]\nadapter = "torchattacks.FGSM"\n')
    ambiguous = _write(tmp_path / "amb.toml", 'extends = "both.toml"\ndrop = ["attacks.fgsm.v2"]\n')
    assert main(["validate", str(ambiguous)]) == 2
    assert "drop 'attacks.fgsm.v2' is ambiguous" in capsys.readouterr().err


def test_a_pretrained_file_without_batch_norm_counters_loads(weights):
    """torchvision's older published files have no `num_batches_tracked`: they still fit."""
    _, state = weights
    bare = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = models.build("resnet18-imagenet", mean=[0.5] * 3, std=[0.5] * 3, num_classes=10)
    kept = models.load_pretrained(model, bare, "models.base")
    assert "fc.weight" in kept and all(k.endswith("num_batches_tracked") for k in kept if not k.startswith("fc."))
    assert torch.equal(model.net.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_validate_reads_the_pretrained_file_and_refuses_another_layout(weights, tmp_path, capsys):
    path, _ = weights
    from torchvision.models import resnet34

    torch.save(resnet34(num_classes=1000).state_dict(), path)
    suite = _write(tmp_path / "pretrained.toml", PRETRAINED_SUITE)
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet18-f37072fd.pth does not fit resnet18-imagenet" in err and "\n" not in err
    path.write_bytes(b"not a checkpoint")
    assert main(["validate", str(suite)]) == 2
    assert "pretrained: checkpoint" in capsys.readouterr().err


def test_extends_of_a_folder_and_a_dropped_name_and_a_text_checkpoint(parent, tmp_path, capsys):
    (tmp_path / "base" / "folder").mkdir()
    child = _write(tmp_path / "base" / "child.toml", 'extends = "folder"\n')
    assert main(["validate", str(child)]) == 2
    assert "extends names 'folder', a directory, not a suite file" in capsys.readouterr().err
    child.write_text('extends = "tiny.toml"\ndrop = ["name"]\n')
    assert load(child).name == "child"
    text = _write(tmp_path / "weights" / "resnet18-f37072fd.pth", "not a checkpoint")
    suite = _write(tmp_path / "pretrained.toml", PRETRAINED_SUITE)
    assert text.is_file() and main(["validate", str(suite)]) == 2
    assert "is corrupted or not a state dict (neither torch's zip format nor a pickle)" in capsys.readouterr().err
