"""Suite validation and the CLI's handling of bad input: one line on stderr, exit 2, nothing written."""
import json
import subprocess
import sys

import pytest

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.suite import load
from conftest import REPO


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("suite", ["smoke", "paper", "paper-code", "paper-cpu", "paper-code-cpu", "jsma-agreement",
                                   "quick-cifar"])
def test_shipped_suites_validate(capsys, suite):
    code, out, _ = _run(capsys, "validate", str(REPO / "suites" / f"{suite}.toml"))
    plan = json.loads(out)
    assert code == 0 and plan["cells"] == plan["evaluations"] * len(load(REPO / "suites" / f"{suite}.toml").sizes)


def test_paper_plan_size(capsys):
    _, out, _ = _run(capsys, "validate", str(REPO / "suites" / "paper.toml"))
    plan = json.loads(out)
    # 3 base trainings, 5 fine-tunes of each per fine-tune recipe (benchmark.repeats)
    assert plan["trainings"] == {"base": 3, "aft-fgsm": 15, "aft-jsma": 15}
    assert plan["finetuned_models"][:6] == [f"aft-fgsm@r0.{f}" for f in range(5)] + ["aft-fgsm@r1.0"]
    assert plan["evaluations"] == 33 * 3 * 3 and plan["cells"] == 33 * 3 * 3 * 5


def test_list_parameter_expands_into_one_attack_per_value(tiny_suite):
    path = tiny_suite()
    path.write_text(path.read_text().replace("eps = 0.02", "eps = [0, 0.01, 0.02]"))
    path.write_text(path.read_text().replace('attack = "fgsm"', 'attack = "jsma"'))
    suite = load(path)
    assert suite.matrix_attacks == ["fgsm@eps=0", "fgsm@eps=0.01", "fgsm@eps=0.02", "jsma"]
    assert suite.attacks["fgsm@eps=0.01"].params == {"eps": 0.01}


BAD = [
    ("malformed TOML", lambda s: s + "\n[[[", "malformed TOML"),
    ("unknown top key", lambda s: "flavour = 1\n" + s, "unknown key flavour"),
    ("unknown model key", lambda s: s.replace("epochs = 2", "epochs = 2\nmomentum = 0.9"),
     "unknown key models.base.momentum"),
    ("unknown model in matrix", lambda s: s.replace('models = ["base", "aft-fgsm"]', 'models = ["base", "x"]'),
     "unknown model 'x'"),
    ("unknown attack in matrix", lambda s: s.replace('attacks = ["fgsm", "jsma"]', 'attacks = ["cw"]'),
     "unknown attack 'cw'"),
    ("unknown adapter", lambda s: s.replace('"torchattacks.FGSM"', '"cleverhans.FGSM"'), "unknown attack"),
    ("unknown attack parameter", lambda s: s.replace("eps = 0.02", "epsilon = 0.02"), "unknown parameter"),
    ("wrong type", lambda s: s.replace("epochs = 2", 'epochs = "two"'), "epochs must be int"),
    ("negative eps", lambda s: s.replace("eps = 0.02", "eps = -0.02"), "eps must be >= 0"),
    ("unknown architecture", lambda s: s.replace('"small-cnn"', '"vgg11"'), "arch must be one of"),
    ("unknown data source", lambda s: s.replace('"synthetic"', '"imagenet"'), "data.source must be"),
    ("self-referencing fine-tune", lambda s: s.replace('from = "base"', 'from = "aft-fgsm"'), "refers to itself"),
    ("missing parent", lambda s: s.replace('from = "base"', 'from = "pretrained"'), "missing model 'pretrained'"),
    ("size larger than the test split", lambda s: s.replace("sizes = [20, 50]", "sizes = [20, 500]"),
     "exceeds the test split"),
    ("wrong schema", lambda s: s.replace("schema = 1", "schema = 2"), "schema must be 1"),
]


@pytest.mark.parametrize("case,edit,message", BAD, ids=[b[0] for b in BAD])
def test_bad_suites_exit_2_with_one_line_and_write_nothing(capsys, tiny_suite, tmp_path, case, edit, message):
    path = tiny_suite()
    path.write_text(edit(path.read_text()))
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "run", str(path), "--out", str(out_dir), "--device", "cpu")
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_missing_suite_file_and_bad_device(capsys, tiny_suite, tmp_path):
    code, _, err = _run(capsys, "run", str(tmp_path / "nope.toml"))
    assert code == 2 and "suite file not found" in err
    code, _, err = _run(capsys, "run", str(tiny_suite()), "--device", "tpu", "--out", str(tmp_path / "o"))
    assert code == 2 and "--device" in err and not (tmp_path / "o").exists()


def test_data_absent_offline_exits_2(capsys, tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "download", lambda self: (_ for _ in ()).throw(OSError("offline")))
    out_dir = tmp_path / "out"
    code, _, err = _run(capsys, "run", str(REPO / "suites" / "paper.toml"), "--out", str(out_dir),
                        "--data-dir", str(tmp_path / "nothing-here"), "--device", "cpu")
    assert code == 2 and "--data-dir" in err and err.count("\n") == 1
    assert not out_dir.exists()


def test_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = 1\n[data\n")
    proc = subprocess.run([sys.executable, "-m", "benchmark", "validate", str(bad)], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmark", "run"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_attacks_command_lists_parameters(capsys):
    code, out, _ = _run(capsys, "attacks")
    assert code == 0
    assert "torchattacks.FGSM" in out and "art.SaliencyMapMethod" in out and "jsma-origin" in out
    assert "mode='iterative'" in out


def test_evaluation_batch_size_is_a_fixed_positive_number(tiny_suite):
    path = tiny_suite()
    assert load(path).eval_batch_size == 50
    path.write_text(path.read_text().replace("batch_size = 50\n", ""))
    assert load(path).eval_batch_size == 500  # never sized from free memory: it is part of every key
    for bad in ('"auto"', '"big"', "0"):
        path.write_text(path.read_text().replace("[evaluation]", f"[evaluation]\nbatch_size = {bad}"))
        with pytest.raises(UserError, match="evaluation.batch_size .the attack batch. must be a positive integer"):
            load(path)
        path.write_text(path.read_text().replace(f"batch_size = {bad}\n", ""))


def test_the_early_schema_check_names_what_the_full_parse_names():
    """benchmark.schema answers before torch is imported; its names are the suite's and the entries' own."""
    from benchmark import entries, schema, suite

    assert schema.TOP_KEYS == suite.TOP_KEYS and schema.SCHEMA == suite.SCHEMA
    assert schema.BASE_KEYS == set(entries.BASE_KEYS) and schema.FINETUNE_KEYS == set(entries.FINETUNE_KEYS)


def test_a_schema_error_is_answered_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("schema = 1\nflavour = 2\n[data]\nsource = 'synthetic'\n")
    code = ("import sys; from benchmark import cli; code = cli.main(['validate', %r]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)" % str(bad))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: unknown key flavour"), proc.stderr
