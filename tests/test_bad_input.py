"""Every bad input is refused before work starts: exit 2, one to three lines on stderr, no traceback, nothing
written; caught by `validate` where no data is needed. Also the `attacks` listing and torchattacks.AutoAttack."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.preflight import Claim
from conftest import REPO

ART_PGD = '\n[attacks.pgd]\nadapter = "art.ProjectedGradientDescent"\neps = "0.01"\n'


def _refused(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert 1 <= err.count("\n") <= 3 and "Traceback" not in err, err
    return err


SUITE_CASES = [
    ("string eps, torchattacks", lambda s: s.replace("eps = 0.02", 'eps = "0.02"'),
     "attacks.fgsm: eps = '0.02' (str) is refused by torchattacks.FGSM"),
    ("string eps, ART", lambda s: s + ART_PGD, "attacks.pgd: eps = '0.01' (str) is refused by art.ProjectedGradient"),
    ("float steps, torchattacks",
     lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"torchattacks.PGD"\nsteps = 2.5'),
     "steps = 2.5 (float) is refused by torchattacks.PGD"),
    ("string gamma, jsma-origin", lambda s: s.replace("gamma = 0.01", 'gamma = "0.01"'), "gamma must be int or float"),
    ("float top_k, jsma-origin", lambda s: s.replace("gamma = 0.01", "top_k = 2.5"), "top_k must be int"),
    ("repeated matrix model", lambda s: s.replace('models = ["base", "aft-fgsm"]', 'models = ["base", "base"]'),
     "matrix.models names 'base' twice"),
    ("repeated matrix attack", lambda s: s.replace('attacks = ["fgsm", "jsma"]', 'attacks = ["jsma", "jsma"]'),
     "matrix.attacks names 'jsma' twice"),
    ("repeated sweep value", lambda s: s.replace("eps = 0.02", "eps = [0.01, 0.01]"), "repeats the value 0.01"),
    ("0 and 0.0 in a sweep", lambda s: s.replace("eps = 0.02", "eps = [0, 0.0]"), "repeats the value 0.0"),
    ("size beyond synthetic test split", lambda s: s.replace("sizes = [20, 50]", "sizes = [20, 301]"),
     "exceeds the test split (300 images)"),
    ("size beyond CIFAR-10 test split", lambda s: s.replace("train = 1000\ntest = 300\n", "").replace(
        '"synthetic"', '"cifar10"').replace("sizes = [20, 50]", "sizes = [20, 10001]"),
     "exceeds the test split (10000 images)"),
    ("fine-tune images beyond train split", lambda s: s.replace("images = 100", "images = 1001"),
     "exceeds the train split (1000 images)"),
    ("art.AutoAttack", lambda s: s.replace('"torchattacks.FGSM"', '"art.AutoAttack"'), "multiprocess"),
    ("ART patch attack", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"art.AdversarialPatchPyTorch"'),
     "makes a patch, not adversarial images"),
    ("ART feature adversaries", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02',
                                                     '"art.FeatureAdversariesPyTorch"'), "needs guide images"),
    ("ART audio attack", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"art.CarliniWagnerASR"'),
     "not an image classifier"),
    ("ART TensorFlow attack", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02',
                                                   '"art.ProjectedGradientDescentTensorFlowV2"'), "needs TensorFlow"),
    ("numeric name", lambda s: s.replace('name = "tiny"', "name = 12345"), "name must be a str"),
    ("name with a slash", lambda s: s.replace('name = "tiny"', 'name = "../elsewhere"'), "usable as a folder name"),
    ("numeric reference file", lambda s: s + "\n[reference]\nfile = 3\n", "reference.file must be a file name"),
    ("numeric description", lambda s: s.replace('name = "tiny"', 'name = "tiny"\ndescription = 3'),
     "description must be a str"),
]


@pytest.mark.parametrize("case,edit,message", SUITE_CASES, ids=[c[0] for c in SUITE_CASES])
def test_bad_suite_refused_by_validate_and_run(capsys, tiny_suite, tmp_path, case, edit, message):
    path = tiny_suite()
    path.write_text(edit(path.read_text()))
    _refused(capsys, ["validate", str(path)], message)
    out = tmp_path / "out"
    _refused(capsys, ["run", str(path), "--out", str(out), "--device", "cpu"], message)
    assert not out.exists()


def test_directory_as_suite(capsys, tmp_path):
    _refused(capsys, ["validate", str(tmp_path)], "is a directory")


# ------------------------------------------------------------------------------------- refused once data is seen
FOLDER_SUITE = """
schema = 1
name = "folder"
[data]
source = "{source}"
[models.base]
arch = "small-cnn"
epochs = 1
batch_size = 4
[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.02
[matrix]
models = ["base"]
attacks = ["fgsm"]
[evaluation]
sizes = [2]
seeds = [0]
"""


def _image_folder(root, classes=("a", "b", "c"), size=32, broken=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    if broken:
        (root / broken).write_bytes(b"not a png at all")
    return root


@pytest.mark.parametrize("case,source,folder,message", [
    ("undecodable image", "folder", dict(broken="train/b/1.png"), "cannot decode image train/b/1.png"),
    ("64x64 images for small-cnn", "folder", dict(size=64),
     "models.base (small-cnn) cannot take the data's 3x64x64 images (it takes 3x32x32)"),
    ("cifar10 source on a 3-class folder", "cifar10", {}, "needs the 10 CIFAR-10 classes"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_data_refused_before_training(capsys, tmp_path, case, source, folder, message):
    data = _image_folder(tmp_path / "images", **folder)
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source=source))
    out = tmp_path / "out"
    _refused(capsys, ["run", str(suite), "--out", str(out), "--device", "cpu", "--data-dir", str(data)], message)
    assert not out.exists()


def test_output_under_a_regular_file(capsys, tiny_suite, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(capsys, ["run", str(tiny_suite()), "--out", str(blocker / "out"), "--device", "cpu"], "is a file")
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output(capsys, tiny_suite, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _refused(capsys, ["run", str(tiny_suite()), "--out", str(parent / "out"), "--device", "cpu"],
                 "is not writable")
    finally:
        parent.chmod(0o755)
    assert not any(parent.iterdir())


def test_second_run_on_same_out_refused_naming_the_first(capsys, tiny_suite, tmp_path):
    out = tmp_path / "out"
    held = Claim(out)
    try:
        _refused(capsys, ["run", str(tiny_suite()), "--out", str(out), "--device", "cpu"],
                 f"another run (pid {os.getpid()}) is using")
        assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        held.release()
    Claim(out).release()  # free again once released


def test_lock_of_a_killed_run_is_not_stuck(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from benchmark.preflight import Claim; "
                               "c = Claim(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(out)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            Claim(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    Claim(out).release()


def test_unicode_names_print_no_glyph_warnings(capsys, tmp_path):
    results = json.loads((REPO / "tests" / "data" / "results-fixture.json").read_text())
    results["classes"] = ["飞机", "汽车", "鸟", "猫", "鹿", "狗", "蛙", "马", "船", "卡车"]
    for cell in results["cells"]:
        cell["model"] = "基础-" + cell["model"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert "Glyph" not in err and "基础-base" in (run / "report.md").read_text()


# ----------------------------------------------------------------------------------------------------- attacks
def test_attacks_listing_fits_100_columns_and_lists_only_what_runs(capsys):
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100
    names = {line.split()[0] for line in lines[2:] if line and not line.startswith(" ")}
    assert {"jsma-origin", "torchattacks.FGSM", "torchattacks.AutoAttack", "art.SaliencyMapMethod",
            "art.DeepFool"} <= names
    assert not {"art.AutoAttack", "art.AdversarialPatch", "art.ImperceptibleASR", "art.HopSkipJump"} & names
    assert not any("TensorFlow" in n for n in names) and "inspect._empty" not in out


def test_attack_details_show_defaults_and_requirements(capsys):
    assert main(["attacks", "art.DeepFool"]) == 0
    out = capsys.readouterr().out
    assert "white-box, L2" in out and "the whole batch handed in" in out
    assert main(["attacks", "jsma-origin"]) == 0
    assert "None: pixel, or normalized with mode paper-code" in capsys.readouterr().out
    _refused(capsys, ["attacks", "art.AutoAttack"], "art.AutoAttack does not run here")
    _refused(capsys, ["attacks", "nonsense"], "unknown attack")


def test_required_parameters_are_marked():
    from adapters.catalog import REQUIRED, main_parameters

    assert main_parameters({"eps": 0.1, "delta": REQUIRED}) == "delta=(required), eps=0.1"


def test_torchattacks_autoattack_runs_seeded_with_the_models_classes():
    from adapters import get_attack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))  # three classes, not ten
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    attack = get_attack("torchattacks.AutoAttack", eps=0.05, version="standard", seed=1)
    first, second = attack(model, x, y), attack(model, x, y)
    assert torch.equal(first, second) and first.shape == x.shape
    assert float((first - x).abs().max()) <= 0.05 + 1e-6
