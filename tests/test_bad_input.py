"""Every bad input is refused before work starts: exit 2, one to three lines on stderr, no traceback, nothing
written; caught by `validate` where no data is needed. Also the `attacks` listing and torchattacks.AutoAttack."""
import json
import os
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
    ("string gamma, jsma-origin", lambda s: s.replace("gamma = 0.005", 'gamma = "0.005"'), "gamma must be int or float"),
    ("float top_k, jsma-origin", lambda s: s.replace("gamma = 0.005", "top_k = 2.5"), "top_k must be int"),
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
    ("eps = nan", lambda s: s.replace("eps = 0.02", "eps = nan"), "attacks.fgsm.eps must be a finite number"),
    ("eps = inf", lambda s: s.replace("eps = 0.02", "eps = inf"), "attacks.fgsm.eps must be a finite number"),
    ("nan in a sweep", lambda s: s.replace("eps = 0.02", "eps = [0.01, nan]"), "attacks.fgsm.eps[1] must be a finite"),
    ("toolkit norm = inf", lambda s: s.replace("eps = 0.02", "eps = 0.02\nnorm = inf"), 'ART takes norm = "inf"'),
    ("recipe lr = nan", lambda s: s.replace("epochs = 2", "epochs = 2\nlr = nan"), "models.base.lr must be a finite"),
    ("std with nan", lambda s: s.replace("epochs = 2", "epochs = 2\nstd = [nan, 0.5, 0.5]"),
     "models.base.std[0] must be a finite number"),
    ("fine-tune warmup = -inf", lambda s: s.replace('split = "train"', 'split = "train"\nwarmup = -inf'),
     "models.aft-fgsm.warmup must be a finite number"),
    ("steps = 0", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"torchattacks.PGD"\nsteps = 0'),
     "steps = 0 leaves the attack nothing to search"),
    ("n_queries = 0", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"torchattacks.Square"\nn_queries = 0'),
     "n_queries = 0 leaves the attack nothing to search"),
    ("max_iter = 0, ART", lambda s: s.replace('"torchattacks.FGSM"\neps = 0.02', '"art.DeepFool"\nmax_iter = 0'),
     "max_iter = 0 leaves the attack nothing to search"),
    ("attack named like a sweep point", lambda s: s.replace("[attacks.fgsm]", '[attacks."pgd@eps=0.01"]').replace(
        '"fgsm", "jsma"]', '"pgd@eps=0.01", "jsma"]').replace('attack = "fgsm"', 'attack = "pgd@eps=0.01"'),
     "attack 'pgd@eps=0.01': a name must be"),
    ("attack name with a slash", lambda s: s.replace("[attacks.fgsm]", '[attacks."a/b"]'), "attack 'a/b': a name"),
    ("attack name with ..", lambda s: s.replace("[attacks.fgsm]", '[attacks."a..b"]'), "attack 'a..b': a name"),
    ("empty attack name", lambda s: s.replace("[attacks.fgsm]", '[attacks.""]'), "attack '': a name must be"),
    ("model name with a slash", lambda s: s.replace("[models.base]", '[models."x/y"]'), "model 'x/y': a name"),
    ("seed beyond 64 bits", lambda s: s.replace("seeds = [0, 1]", "seeds = [0, 1180591620717411303424]"),
     "evaluation.seeds[1] = 1180591620717411303424 does not fit in 64 bits"),
    ("recipe seed beyond 64 bits", lambda s: s.replace("seed = 0", "seed = 9223372036854775808", 1),
     "models.base.seed = 9223372036854775808 does not fit in 64 bits"),
    ("eps = true", lambda s: s.replace("eps = 0.02", "eps = true"), "eps must be a number (default 0.03"),
    ("schema = true", lambda s: s.replace("schema = 1", "schema = true"), "schema must be 1, got True"),
    ("300-character attack name", lambda s: s.replace("[attacks.fgsm]", f'[attacks.{"f" * 300}]'),
     "a name must be at most 100 bytes"),
    ("suite name with a NUL", lambda s: s.replace('name = "tiny"', 'name = "ti\\u0000ny"'), "usable as a folder"),
    ("suite name of 300 characters", lambda s: s.replace('name = "tiny"', f'name = "{"n" * 300}"'),
     "usable as a folder name"),
    ("early stop with patience 0", lambda s: s.replace("seed = 0", "seed = 0\nearly_stop = { patience = 0 }", 1),
     "patience and val_size must be at least 1"),
    ("synthetic data of 1e11 images", lambda s: s.replace("train = 1000", "train = 100000000000"),
     "data.train must be a positive integer of at most 1,000,000"),
    ("eps = 1e6", lambda s: s.replace("eps = 0.02", "eps = 1e6"),
     "attacks.fgsm.eps = 1000000.0: an Linf eps above 1 exceeds the input range of its space"),
    ("multistep of a million steps", lambda s: s + "\n[checks]\nmultistep = { steps = 1000000 }\n",
     "checks.multistep.steps = 1000000: at most 1,000"),
    ("Square check of 10 million queries", lambda s: s + "\n[checks]\nblack_box = { n_queries = 10000000 }\n",
     "checks.black_box.n_queries = 10000000: at most 100,000"),
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


def _odd_size(root):
    from PIL import Image

    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(root / "train" / "b" / "1.png")


def _test_only_class(root):
    (root / "test" / "d").mkdir()
    (root / "test" / "a" / "0.png").rename(root / "test" / "d" / "0.png")


@pytest.mark.parametrize("case,source,folder,edit,message", [
    ("undecodable image", "folder", dict(broken="train/b/1.png"), None, "cannot decode image train/b/1.png"),
    ("64x64 images for small-cnn", "folder", dict(size=64), None,
     "models.base (small-cnn) cannot take the data's 3x64x64 images (it takes 3x32x32)"),
    ("cifar10 source on a 3-class folder", "cifar10", {}, None, "needs the 10 CIFAR-10 classes"),
    ("one class", "folder", dict(classes=("a",)), None, "one class (a) is no classification task"),
    ("one 28x28 image among 32x32", "folder", {}, _odd_size,
     "images in train/ differ in size: train/b/1.png is 28x28, most are 32x32"),
    ("a test class the train split lacks", "folder", {}, _test_only_class, "classes only in test/: d"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_data_refused_before_training(capsys, tmp_path, case, source, folder, edit, message):
    data = _image_folder(tmp_path / "images", **folder)
    if edit is not None:
        edit(data)
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source=source))
    out = tmp_path / "out"
    _refused(capsys, ["run", str(suite), "--out", str(out), "--device", "cpu", "--data-dir", str(data)], message)
    assert not out.exists()
    if "small-cnn" not in case:  # bad data leaves no decoded cache (good data a model cannot take may)
        assert not (tmp_path / "cache" / "decoded").exists()


def test_random_bytes_named_tar_gz(capsys, tmp_path):
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder"))
    err = _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir",
                            str(archive)], "not a readable tar archive")
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_symlink_loop_as_data_path(capsys, tmp_path):
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder").replace('[data]\nsource = "folder"',
                                                                  '[data]\nsource = "folder"\npath = "loop1"'))
    _refused(capsys, ["validate", str(suite)], "a symbolic link loop")
    _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"], "a symbolic link loop")
    _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir",
                      str(tmp_path / "loop1")], "a symbolic link loop")
    assert not (tmp_path / "out").exists()


def test_unwritable_pseudo_filesystem_as_out(capsys, tiny_suite):
    _refused(capsys, ["run", str(tiny_suite()), "--out", "/proc/bench-out", "--device", "cpu"],
             "cannot write to /proc/bench-out")


def test_grayscale_and_rgba_images_are_converted_and_the_report_says_so(capsys, tmp_path):
    from PIL import Image

    data = _image_folder(tmp_path / "images")
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8), mode="L").save(data / "train" / "a" / "0.png")
    Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8), mode="RGBA").save(data / "test" / "b" / "1.png")
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir", str(data)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["converted_to_rgb"] == {"L": 1, "RGBA": 1}
    assert "converted to RGB: 1 L, 1 RGBA image(s)" in (tmp_path / "out" / "report.md").read_text()


def test_a_byte_order_mark_is_dropped(capsys, tiny_suite):
    path = tiny_suite()
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["validate", str(path)]) == 0


def test_twenty_thousand_attack_tables_are_tried_once_per_adapter_and_types(tmp_path, tiny_suite, monkeypatch):
    from adapters import catalog
    from benchmark.suite import load

    tried = []
    original = catalog.trial
    monkeypatch.setattr(catalog, "trial", lambda attack, *a: tried.append(attack.name) or original(attack, *a))
    path = tiny_suite()
    extra = "".join(f'\n[attacks.f{i}]\nadapter = "torchattacks.FGSM"\neps = {i / 1e5}\n' for i in range(20000))
    path.write_text(path.read_text() + extra)
    suite = load(path)
    assert len(suite.attacks) == 20002
    assert sorted(tried) == ["jsma-origin", "torchattacks.FGSM"]


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


# ------------------------------------------------------------------------------------- the main command on a CPU
def test_a_cpu_run_far_beyond_the_machine_says_so_names_the_cpu_suite_and_goes_on(capsys, tiny_suite, monkeypatch):
    from benchmark import cost

    path = tiny_suite()
    store = str(path.parent / "store")
    measure = cost.measure

    def slow(*args, **kwargs):  # 2 s a training image: 2 epochs x 1,000 images, over an hour
        passes = measure(*args, **kwargs)
        return cost.Passes({b: 2.0 for b in passes.train}, passes.forward, passes.backward)

    monkeypatch.setattr(cost, "measure", slow)
    assert main(["run", str(path), "--out", str(path.parent / "a"), "--store", store, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "note: base training alone is about 1.1 h on this CPU; it is meant for a GPU " \
        "(--device cuda); going on" in note[0]
    assert "cost: about 1 h 07 min on this cpu (1 base training up to" not in err  # the tiny suite has no early stop
    assert "cost: about 1 h" in err and "1 base training 1 h" in err
    path.with_name(f"{path.stem}-cpu.toml").write_text(path.read_text())
    assert main(["run", str(path), "--out", str(path.parent / "b"), "--store", store, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note:" not in err and "cost: nothing to compute" in err  # the store holds every node now
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 3"))
    assert main(["run", str(path), "--out", str(path.parent / "c"), "--store", store, "--device", "cpu"]) == 0
    assert f"for a CPU try {path.with_name(path.stem + '-cpu.toml')}" in capsys.readouterr().err


def _interrupt(tmp_path, suite, wait_for):
    # A shell without job control starts background jobs with SIGINT ignored (`nohup bash .ci/run &`), and a child
    # inherits an ignored signal; a handled one is reset by exec: handle it here, so the run gets Ctrl-C as in a
    # terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "benchmark", "run", str(suite), "--device", "cpu", "--out",
                                 str(tmp_path / "out")], cwd=REPO, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "BENCH_CACHE": str(tmp_path / "cache")})
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = ""
    while wait_for not in seen:
        chunk = proc.stderr.read(1)
        assert chunk, seen
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    lines = [line for line in (seen + rest).replace("\r", "\n").splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "Traceback" not in seen + rest
    return lines[0].strip()


def test_ctrl_c_says_what_was_kept(tmp_path, tiny_suite):
    slow = tiny_suite()
    slow.write_text(slow.read_text().replace("epochs = 2", "epochs = 500"))
    assert _interrupt(tmp_path, slow, "train base") == (
        "interrupted; nothing was finished yet, so nothing is kept (base training checkpoints at the end of an "
        "epoch, at most once a minute)")
    # Base model and adversarial set finished, then a fine-tune long enough to be interrupted in.
    slow.write_text(slow.read_text().replace("epochs = 500", "epochs = 2").replace(
        'schedule = "slow-start-fast-decay"', 'schedule = "slow-start-fast-decay"\nepochs = 2000'))
    line = _interrupt(tmp_path, slow, "fine-tune aft-fgsm")
    assert line.startswith("interrupted; kept in the store: ") and "finished node(s)" in line
    assert line.endswith("; a rerun resumes from them")


# ---------------------------------------------------------------------------- damaged run folders, odd files
def _damaged(run, what):
    results, examples = run / "results.json", run / "examples.csv"
    if what == "empty object":
        results.write_text("{}")
    elif what == "a list":
        results.write_text("[]")
    elif what == "binary":
        results.write_bytes(bytes(range(256)) * 4)
    elif what == "nan accuracy":
        data = json.loads(results.read_text())
        data["cells"][0]["adv_acc"] = float("nan")
        results.write_text(json.dumps(data))
    elif what == "truncated examples":
        examples.write_text(examples.read_text()[:300])
    elif what == "header-only examples":
        examples.write_text(examples.read_text().splitlines()[0] + "\n")
    elif what == "words in a boolean column":
        examples.write_text(examples.read_text().replace(",True,", ",maybe,", 3))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import TINY_SUITE

    root = tmp_path_factory.mktemp("finished")
    (root / "tiny.toml").write_text(TINY_SUITE.format(profile="paper", split="train"))
    assert main(["run", str(root / "tiny.toml"), "--out", str(root / "run"), "--device", "cpu"]) == 0
    return root / "run"


@pytest.mark.parametrize("what", ["empty object", "a list", "binary", "nan accuracy", "truncated examples",
                                  "header-only examples", "words in a boolean column"])
def test_check_and_report_refuse_a_damaged_run_folder_in_one_line(capsys, tmp_path, finished_run, what):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(finished_run, damaged)
    _damaged(damaged, what)
    capsys.readouterr()
    _refused(capsys, ["check", str(damaged), "--baseline", str(finished_run)], str(damaged))
    _refused(capsys, ["check", str(finished_run), "--baseline", str(damaged)], str(damaged))
    _refused(capsys, ["report", str(damaged)], str(damaged))


def test_check_refuses_a_nan_tolerance(capsys, finished_run):
    _refused(capsys, ["check", str(finished_run), "--baseline", str(finished_run), "--tolerance", "nan"],
             "--tolerance be non-negative")


def test_an_unwritable_decoded_data_cache_is_one_line(capsys, tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "images")
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder"))
    for cache in ("/proc/bench-cache", str(suite)):  # a pseudo filesystem, a regular file
        monkeypatch.setenv("BENCH_CACHE", cache)
        _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir",
                          str(data)], "cannot write the decoded-data cache")
    assert not (tmp_path / "out").exists()


def test_sixteen_bit_grayscale_is_scaled_and_a_decompression_bomb_refused(capsys, tmp_path, monkeypatch):
    from PIL import Image

    from benchmark import data as datasets

    folder = _image_folder(tmp_path / "images")
    ramp = (np.arange(1024).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "train" / "a" / "0.png")
    decoded = datasets.image_folder(folder)
    image = decoded.train_x[0, 0].numpy()
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) == 256  # scaled, not clipped
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 32x32 image is then more than twice the limit
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder"))
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "other-cache"))
    _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir",
                      str(folder)], "(DecompressionBombError)")


def test_a_fifo_as_checkpoint_is_refused_without_waiting(capsys, tmp_path):
    os.mkfifo(tmp_path / "net.pt")
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="synthetic").replace(
        'arch = "small-cnn"\nepochs = 1\nbatch_size = 4', 'checkpoint = "net.pt"\narch = "small-cnn"'))
    _refused(capsys, ["validate", str(suite)], "is not a regular file")


# ------------------------------------------------------------------------------- what a new user ran into (round 3)
def test_another_suite_into_an_existing_out_is_refused_unless_forced(capsys, tiny_suite, tmp_path):
    first, out = tiny_suite(), tmp_path / "out"
    assert main(["run", str(first), "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    before = (out / "results.json").read_bytes()
    other = tmp_path / "other.toml"
    other.write_text(first.read_text().replace('name = "tiny"', 'name = "other"'))
    _refused(capsys, ["run", str(other), "--out", str(out), "--device", "cpu"],
             f"{out} holds the results of suite 'tiny', not of 'other'")
    assert (out / "results.json").read_bytes() == before
    assert main(["run", str(first), "--out", str(out), "--device", "cpu"]) == 0  # the same suite: rerun is fine
    assert main(["run", str(other), "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert json.loads((out / "results.json").read_text())["suite_name"] == "other"


FACTORY = """
import torch
print("building the model")  # a factory that talks
def build(num_classes=10):
    print("still building")
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))
"""


def _factory_suite(tmp_path, *, state, attack, source="synthetic", extra="", talks=False):
    """A suite loading net.pt through the factory above (printing, if `talks`), attacked by `attack` (TOML)."""
    (tmp_path / "talky.py").write_text(FACTORY if talks else FACTORY.replace("print(", "str("))
    torch.save(state, tmp_path / "net.pt")
    data = 'source = "folder"\npath = "images"' if source == "folder" else 'source = "synthetic"'
    suite = tmp_path / "suite.toml"
    suite.write_text(f'schema = 1\nname = "own"\n[data]\n{data}\n[models.mine]\ncheckpoint = "net.pt"\n'
                     f'factory = "talky:build"\n{extra}[attacks.a]\n{attack}\n[matrix]\nmodels = ["mine"]\n'
                     'attacks = ["a"]\n[evaluation]\nsizes = [2]\nseeds = [0]\n')
    return suite


def _linear(classes: int) -> dict:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, classes)).state_dict()


def test_validate_refuses_attacks_the_model_or_the_data_cannot_take(capsys, tmp_path):
    paper_jsma = 'adapter = "jsma-origin"\nmode = "paper-code"'
    suite = _factory_suite(tmp_path, state=_linear(10), attack=paper_jsma)
    _refused(capsys, ["validate", str(suite)], "attacks.a acts in normalized space (space = 'normalized', or "
             "jsma-origin's paper-code mode), which needs the model's normalization as a separate layer: give "
             "models.mine mean = [...] and std = [...]")
    _refused(capsys, ["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"], "acts in normalized")
    given = _factory_suite(tmp_path, state=_linear(10), attack=paper_jsma,
                           extra="mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n")
    assert main(["validate", str(given)]) == 0
    _image_folder(tmp_path / "images")
    three = _factory_suite(tmp_path, state=_linear(3), attack='adapter = "torchattacks.JSMA"', source="folder")
    _refused(capsys, ["validate", str(three)], "attacks.a: torchattacks.JSMA assumes 10 classes (it targets (label + "
             "1) mod 10) and the data has 3: use jsma-origin or art.SaliencyMapMethod")
    assert not (tmp_path / "out").exists()


def test_checkpoints_with_nan_or_integer_weights_are_refused_naming_the_tensors(capsys, tmp_path):
    state = _linear(10)
    state["1.weight"][0, 0] = float("nan")
    suite = _factory_suite(tmp_path, state=state, attack='adapter = "torchattacks.FGSM"')
    _refused(capsys, ["validate", str(suite)], "models.mine: net.pt holds NaN or inf in 1 tensor(s): 1.weight")
    suite = _factory_suite(tmp_path, state={k: (v * 100).long() for k, v in _linear(10).items()},
                           attack='adapter = "torchattacks.FGSM"')
    _refused(capsys, ["validate", str(suite)], "models.mine: net.pt holds integer weights (2 of 2 tensors, e.g. "
             "1.weight: torch.int64)")


def test_a_factory_that_prints_leaves_validate_json_parseable(capsys, tmp_path):
    suite = _factory_suite(tmp_path, state=_linear(10), attack='adapter = "torchattacks.FGSM"', talks=True)
    assert main(["validate", str(suite)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["loaded_models"] and "building the model" in captured.err


def test_a_write_that_fails_is_one_line_and_leaves_no_temporary_file(tiny_suite, tmp_path):
    """A file-size limit (a full disk) while the results are written: one line naming the file and the cause,
    exit 2, no temporary file left, the earlier results intact; a rerun without the limit completes."""
    path, out = tiny_suite(), tmp_path / "out"
    args = ["run", str(path), "--out", str(out), "--device", "cpu"]
    command = [sys.executable, "-m", "benchmark", *args]
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    assert main(args) == 0  # in this process (the limit needs its own)
    before = (out / "results.json").read_bytes()
    limit = max(1, (out / "examples.csv").stat().st_size // 1024 // 2)  # KiB: half of examples.csv
    done = subprocess.run(["bash", "-c", f"ulimit -f {limit}; exec \"$@\"", "bash", *command],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot write {out / 'examples.csv'}: File too large")
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert (out / "results.json").read_bytes() == before
    assert main(args) == 0


def test_hidden_files_in_an_image_folder_are_skipped_and_counted(capsys, tmp_path):
    data = _image_folder(tmp_path / "images")
    for name in ("train/a/._0.png", "test/b/._1.png"):  # macOS resource forks: not images
        (data / name).write_bytes(b"\x00\x05\x16\x07 resource fork")
    suite = tmp_path / "suite.toml"
    suite.write_text(FOLDER_SUITE.format(source="folder"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu", "--data-dir", str(data)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "2 hidden file(s) skipped (names starting with a dot)" in results["data"]["description"]
