"""Models loaded, not trained (benchmark.sources): checkpoints built by the registry, a factory, torchvision;
RobustBench's layout; safetensors; in-memory modules; fine-tunes from them; CIFAR-100 and folder data of any
shape; and every bad input as one line, exit 2, nothing written."""
import hashlib
import json
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import data, run_suite, sources
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.store import tensors_hash
from benchmark.suite import load
from conftest import REPO

SUITE = """
schema = 1
name = "own"

[data]
source = "{source}"
{data}

[models.mine]
{model}
{extra}
[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.02

[matrix]
models = {matrix}
attacks = ["fgsm"]

[evaluation]
sizes = [{size}]
seeds = [0]
batch_size = 50
"""

FACTORIES = '''
import torch
from torch import nn


class Net(nn.Module):
    """small-cnn's layers with normalization inside."""

    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(8),
            nn.Flatten(), nn.Linear(32 * 8 * 8, num_classes))

    def forward(self, x):
        return self.body((x - 0.5) / 0.5)


def build(num_classes):
    return Net(num_classes)


def not_a_module(num_classes):
    return 42


def seven_logits(num_classes):
    return Net(7)


def broken(num_classes):
    raise RuntimeError("out of ideas")
'''


def _suite(tmp_path, model, *, source="synthetic", data_lines="train = 400\ntest = 200", extra="",
           matrix='["mine"]', size=40, name="own.toml"):
    path = tmp_path / name
    path.write_text(SUITE.format(source=source, data=data_lines, model=model, extra=extra, matrix=matrix,
                                 size=size))
    return path


def _factory_state(trained):
    """trained's weights under the factory module's names (same layers, normalization inside)."""
    return {k.replace("net.", "body."): v for k, v in trained.state_dict().items() if not k.startswith("norm_")}


def _same_outputs(module, trained):
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(module.eval()(x), trained(x), atol=1e-5)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------------------- the builders
def test_state_dict_with_registry_arch_runs_keys_on_sha256_and_reports_its_source(tmp_path, trained):
    torch.save(trained.state_dict(), tmp_path / "mine.pt")
    path = _suite(tmp_path, 'checkpoint = "mine.pt"\narch = "small-cnn"')
    frame = run_suite(path, tmp_path / "run", device="cpu")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    info = results["models"]["mine"]
    sha = hashlib.sha256((tmp_path / "mine.pt").read_bytes()).hexdigest()
    assert info["source"]["kind"] == "checkpoint" and info["source"]["sha256"] == sha
    assert info["weights"] == tensors_hash(trained.state_dict()) and info["test_acc"] > 0.9
    assert frame["orig_acc"].iloc[0] > 0.9  # the trained weights were loaded, not a fresh initialization
    assert f"sha256 {sha[:12]}" in (tmp_path / "run" / "report.md").read_text()

    moved = tmp_path / "elsewhere"  # the key hashes the file's content, not its path
    moved.mkdir()
    shutil.copy(tmp_path / "mine.pt", moved / "mine.pt")
    run_suite(_suite(moved, 'checkpoint = "mine.pt"\narch = "small-cnn"'), tmp_path / "run2", device="cpu",
              write_report=False)
    assert json.loads((tmp_path / "run2" / "results.json").read_text())["models"]["mine"]["key"] == info["key"]
    changed = dict(trained.state_dict())
    changed["net.0.bias"] = changed["net.0.bias"] + 0.01
    torch.save(changed, moved / "mine.pt")
    run_suite(moved / "own.toml", tmp_path / "run3", device="cpu", write_report=False)
    other = json.loads((tmp_path / "run3" / "results.json").read_text())["models"]["mine"]
    assert other["key"] != info["key"] and other["source"]["sha256"] != sha


def test_bare_network_checkpoint_fills_the_registry_models_network(tmp_path, trained):
    torch.save(trained.net.state_dict(), tmp_path / "bare.pth")  # no normalization buffers: the suite's mean/std
    entry = load(_suite(tmp_path, 'checkpoint = "bare.pth"\narch = "small-cnn"')).models["mine"].entry
    loaded = sources.load(entry, 10, torch.rand(1, 3, 32, 32))
    assert _same_outputs(loaded.module, trained) and loaded.source["mean"] == [0.5] * 3


def test_factory_module_from_the_suites_folder(tmp_path, trained, capsys):
    (tmp_path / "facs.py").write_text(FACTORIES)
    torch.save(_factory_state(trained), tmp_path / "net.pt")
    path = _suite(tmp_path, 'checkpoint = "net.pt"\nfactory = "facs:build"')
    code, out, _ = _cli(capsys, "validate", path)
    assert code == 0 and json.loads(out)["loaded_models"]["mine"].endswith("net.pt")
    loaded = sources.load(load(path).models["mine"].entry, 10, torch.rand(1, 3, 32, 32))
    assert _same_outputs(loaded.module, trained) and loaded.identity["code"]
    (tmp_path / "facs.py").write_text(FACTORIES + "\n# a comment\n")  # runs no differently: the same key
    assert sources.load(load(path).models["mine"].entry, 10).identity["code"] == loaded.identity["code"]
    (tmp_path / "facs.py").write_text(FACTORIES.replace("nn.ReLU(), nn.MaxPool2d", "nn.ELU(), nn.MaxPool2d"))
    assert sources.load(load(path).models["mine"].entry, 10).identity["code"] != loaded.identity["code"]


def test_safetensors_file(tmp_path, trained):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "mine.safetensors"))
    entry = load(_suite(tmp_path, 'checkpoint = "mine.safetensors"\narch = "small-cnn"')).models["mine"].entry
    assert _same_outputs(sources.load(entry, 10, torch.rand(1, 3, 32, 32)).module, trained)


def test_robustbench_layout_and_wrapped_dict_load_offline(tmp_path, trained):
    zoo = tmp_path / "zoo" / "cifar10" / "Linf"
    zoo.mkdir(parents=True)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in trained.net.state_dict().items()}, "epoch": 99,
               "optimizer": "adam"}  # as RobustBench checkpoints come: DataParallel prefix, training extras
    torch.save(wrapped, zoo / "Mine2026.pt")
    model = 'robustbench = "Mine2026"\nmodel_dir = "zoo"\narch = "small-cnn"'
    bare = load(_suite(tmp_path, model)).models["mine"].entry
    assert bare["mean"] == [0.0] * 3 and bare["std"] == [1.0] * 3  # RobustBench models take [0,1] images
    model += '\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]'  # this net was trained behind a 0.5 normalization
    loaded = sources.load(load(_suite(tmp_path, model)).models["mine"].entry, 10, torch.rand(1, 3, 32, 32))
    assert _same_outputs(loaded.module, trained) and loaded.source["threat_model"] == "Linf"
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "zoo" / "cifar10" / "L2" / "Mine2026.pt"))):
        load(_suite(tmp_path, model + '\nthreat_model = "L2"'))


def test_torchvision_architecture(tmp_path):
    from torchvision.models import get_model

    net = get_model("squeezenet1_1", num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "sq.pt")
    entry = load(_suite(tmp_path, 'checkpoint = "sq.pt"\ntorchvision = "squeezenet1_1"\nmean = [0.49, 0.48, 0.45]\n'
                                  'std = [0.25, 0.24, 0.26]')).models["mine"].entry
    loaded = sources.load(entry, 10, torch.rand(1, 3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1), torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), net((x - mean) / std), atol=1e-5)


def test_timm_architecture(tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    torch.save(net.state_dict(), tmp_path / "t.pt")
    entry = load(_suite(tmp_path, 'checkpoint = "t.pt"\ntimm = "resnet10t"')).models["mine"].entry
    assert sources.load(entry, 10, torch.rand(1, 3, 32, 32)).source["timm"] == "resnet10t"


# ------------------------------------------------------------------------- fine-tunes and in-memory modules
def test_own_model_suite_fine_tunes_from_a_loaded_checkpoint(tmp_path):
    """The shipped suite, less AutoAttack and at a smaller size, on a checkpoint built here."""
    shutil.copytree(REPO / "suites" / "own_model", tmp_path / "own_model",
                    ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    spec = (REPO / "suites" / "own_model" / "make_checkpoint.py")
    namespace = {"__file__": str(tmp_path / "own_model" / "make_checkpoint.py"), "__name__": "make_checkpoint"}
    exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    namespace["make_checkpoint"](tmp_path / "own_model" / "net.pt", epochs=2, train=600, test=100)
    text = (REPO / "suites" / "own-model.toml").read_text()
    text = re.sub(r"\[attacks\.autoattack\][^\[]*", "", text).replace(', "autoattack"', "")
    text = (text.replace("sizes = [50, 100]", "sizes = [40]").replace("images = 500", "images = 200")
            .replace("epochs = 2", "epochs = 1"))
    assert "sizes = [40]" in text and "images = 200" in text and "autoattack" not in text
    (tmp_path / "own-model.toml").write_text(text)
    frame = run_suite(tmp_path / "own-model.toml", tmp_path / "run", device="cpu")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    mine, tuned = results["models"]["mine"], results["models"]["aft-fgsm"]
    assert mine["source"]["builder"] == "factory" and mine["test_acc"] > 0.5
    assert tuned["parent"] == "mine" and tuned["weights"] != mine["weights"]
    assert tuned["adversarial_set"]["n"] == 200 and tuned["adversarial_set"]["seen_by_base"] is None
    assert set(frame["attack"]) == {"fgsm", "jsma", "pgd"} and set(frame["model"]) == {"mine", "aft-fgsm"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "fine-tuned from mine" in report and "factory `own_model.net:build`" in report


def test_in_memory_module_through_the_python_api(tmp_path, trained):
    before = tensors_hash(trained.state_dict())
    path = _suite(tmp_path, "provided = true", extra='[models.aft]\nfrom = "mine"\nattack = "fgsm"\nimages = 100\n',
                  matrix='["mine", "aft"]')
    with pytest.raises(UserError, match="provided = true"):
        run_suite(path, tmp_path / "none", device="cpu")
    assert not (tmp_path / "none").exists()
    frame = run_suite(path, tmp_path / "run", device="cpu", models={"mine": trained, "again": trained},
                      write_report=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["models"]["mine"]["source"] == {**results["models"]["mine"]["source"], "kind": "in-memory",
                                                   "weights": before}
    assert results["models"]["again"]["key"] == results["models"]["mine"]["key"]  # same weights, same class
    assert set(frame["model"]) == {"mine", "aft", "again"} and results["models"]["aft"]["weights"] != before
    assert tensors_hash(trained.state_dict()) == before and not trained.training  # the caller's module untouched


# ---------------------------------------------------------------------------------------------------- data
def _png_folder(root, classes, per_class, size):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_cifar100_shaped_folder_named_by_the_suite(tmp_path):
    _png_folder(tmp_path / "c100", [f"c{i:03d}" for i in range(100)], (2, 1), (32, 32))
    model = "arch = \"small-cnn\"\nepochs = 1\nbatch_size = 100"
    path = _suite(tmp_path, model, source="folder", data_lines='path = "c100"', size=50)
    frame = run_suite(path, tmp_path / "run", device="cpu", write_report=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["classes"]) == 100 and results["data"]["source"] == "folder"
    assert np.asarray(frame["confusion_orig"].iloc[0]).shape == (100, 100)


def test_folder_of_any_image_size_and_a_model_that_does_not_take_it(tmp_path, capsys):
    _png_folder(tmp_path / "imgs", ["a", "b", "c"], (4, 2), (20, 28))
    (tmp_path / "facs.py").write_text(FACTORIES)
    torch.save(sources.import_factory("facs:build", tmp_path, "t")[0](3).state_dict(), tmp_path / "net.pt")
    ok = _suite(tmp_path, 'checkpoint = "net.pt"\nfactory = "facs:build"', source="folder",
                data_lines='path = "imgs"', size=6)
    assert _cli(capsys, "validate", ok)[0] == 0
    frame = run_suite(ok, tmp_path / "run", device="cpu", write_report=False)
    assert len(frame) == 1 and frame["n"].iloc[0] == 6
    bad = _suite(tmp_path, 'checkpoint = "cnn.pt"\narch = "small-cnn"', source="folder", data_lines='path = "imgs"',
                 size=6, name="bad.toml")
    from benchmark.models import build

    torch.save(build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3, num_classes=3).state_dict(), tmp_path / "cnn.pt")
    capsys.readouterr()  # the run's progress bars
    code, _, err = _cli(capsys, "validate", bad)
    assert code == 2 and "forward pass on a 3x20x28 image failed" in err and err.count("\n") == 1


def test_cifar100_python_batches_format(tmp_path, monkeypatch):
    """The original format, on a generated fixture (torchvision's md5 check is what we bypass here)."""
    from torchvision.datasets import CIFAR100

    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(100)]
    for name, _ in CIFAR100.train_list + CIFAR100.test_list:
        blob = {"data": rng.integers(0, 256, size=(6, 3072), dtype=np.uint8), "fine_labels": [0, 1, 2, 97, 98, 99],
                "coarse_labels": [0] * 6}
        (base / name).write_bytes(pickle.dumps(blob))
    monkeypatch.setattr(CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(CIFAR100, "_load_meta", lambda self: setattr(self, "classes", names))
    ds = data.load("cifar100", tmp_path)
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.train_y.tolist() == [0, 1, 2, 97, 98, 99]
    assert len(ds.classes) == 100 and ds.identity == {**ds.identity, "source": "cifar100",
                                                      "checksum": f"md5:{data.CIFAR100_MD5}"}


def test_cifar100_absent_offline_names_path_and_flag(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    monkeypatch.setattr(CIFAR100, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(UserError, match=r"CIFAR-100 not found at .*--data-dir"):
        data.load("cifar100", tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


# ---------------------------------------------------------------------------------------------- bad input
def _bad_checkpoint_cases(tmp_path, trained):
    (tmp_path / "facs.py").write_text(FACTORIES)
    torch.save(_factory_state(trained), tmp_path / "facs.pt")
    torch.save(trained.state_dict(), tmp_path / "good.pt")
    blob = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "folder.pt").mkdir()
    torch.save(trained, tmp_path / "pickled.pt")
    return {
        "missing": ('checkpoint = "nope.pt"\narch = "small-cnn"', f"checkpoint not found: {tmp_path / 'nope.pt'}"),
        "unreadable": ('checkpoint = "folder.pt"\narch = "small-cnn"', "is not a regular file"),
        "corrupted": ('checkpoint = "truncated.pt"\narch = "small-cnn"', "is corrupted or not a state dict"),
        "keys": ('checkpoint = "facs.pt"\narch = "small-cnn"',
                 "does not fit arch 'small-cnn': missing net.0.bias, net.0.weight, net.3.bias and 3 more; "
                 "unexpected body.0.bias, body.0.weight, body.3.bias and 3 more"),
        "import": ('checkpoint = "facs.pt"\nfactory = "no_such_module:build"', "cannot import no_such_module"),
        "not a module": ('checkpoint = "facs.pt"\nfactory = "facs:not_a_module"', "returned int, not a torch.nn"),
        "factory fails": ('checkpoint = "facs.pt"\nfactory = "facs:broken"', "RuntimeError: out of ideas"),
        "width": ('checkpoint = "facs.pt"\nfactory = "facs:seven_logits"', "shapes differ for body.7.weight"),
        "pickled code": ('checkpoint = "pickled.pt"\narch = "small-cnn"', "would need unpickling code"),
    }


def test_bad_checkpoints_one_line_exit_2_nothing_written_and_validate_finds_them(tmp_path, trained, capsys):
    for case, (model, message) in _bad_checkpoint_cases(tmp_path, trained).items():
        path = _suite(tmp_path, model, name=f"{case.replace(' ', '-')}.toml")
        for argv in (("validate", path), ("run", path, "--out", tmp_path / "out", "--device", "cpu")):
            code, _, err = _cli(capsys, *argv)
            assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, (case, err)
        assert not (tmp_path / "out").exists(), case


def test_output_width_that_does_not_match_the_data(tmp_path, capsys):
    (tmp_path / "facs.py").write_text(FACTORIES)
    torch.save(sources.import_factory("facs:build", tmp_path, "t")[0](7).state_dict(), tmp_path / "seven.pt")
    path = _suite(tmp_path, 'checkpoint = "seven.pt"\nfactory = "facs:seven_logits"')
    for argv in (("validate", path), ("run", path, "--out", tmp_path / "out", "--device", "cpu")):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and "outputs (1, 7) for one image; the data has 10 classes" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="needs torch.nn.Module values"):
        run_suite(_suite(tmp_path, "provided = true"), tmp_path / "out", device="cpu", models={"mine": "net"})
    assert not (tmp_path / "out").exists()


def test_loaded_model_written_after_a_trained_one_still_fails_before_anything_is_written(tmp_path, trained, capsys):
    torch.save(trained, tmp_path / "pickled.pt")
    path = _suite(tmp_path, 'arch = "small-cnn"\nepochs = 1',
                  extra='[models.theirs]\ncheckpoint = "pickled.pt"\narch = "small-cnn"\n', matrix='["mine", "theirs"]')
    code, _, err = _cli(capsys, "run", path, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "unpickling code" in err and not (tmp_path / "out").exists()
