"""Repeated training (benchmark.repeats): a recipe's `repeats` expand into nested, independently seeded trainings,
each a keyed node; raising repeats trains only the new ones; cells, examples.csv and results.json carry the repeat
coordinates and the claims over the repeats."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from benchmark import repeats
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.runner import run_suite
from benchmark.suite import load

SUITE = """
schema = 1
name = "rep"
profile = "paper"

[data]
source = "synthetic"
train = 600
test = 100

[models.base]
arch = "small-cnn"
epochs = 3
batch_size = 100
seed = 3
{base}

[models.aft-fgsm]
from = "base"
attack = "fgsm"
images = 50
split = "train"
batch_size = 25
{tuned}

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.004

[matrix]
models = ["base", "aft-fgsm"]
attacks = ["fgsm"]

[evaluation]
sizes = [20, 40]
seeds = [0, 1]
batch_size = 20

[checks]
probe_images = 0

[reference]
file = "{reference}"
"""


@pytest.fixture
def write(tmp_path):
    from conftest import REPO

    def make(base: str = "repeats = 2", tuned: str = "repeats = 2", name: str = "rep.toml"):
        path = tmp_path / name
        path.write_text(SUITE.format(base=base, tuned=tuned,
                                     reference=REPO / "suites" / "reference" / "paper-tables.toml"))
        return path

    return make


def test_repeats_expand_into_nested_independently_seeded_instances(write):
    suite = load(write(base="repeats = 3", tuned="repeats = 2"))
    assert list(suite.recipes) == ["base", "aft-fgsm"]
    assert suite.recipes["base"] == ["base@r0", "base@r1", "base@r2"]
    assert suite.recipes["aft-fgsm"] == [f"aft-fgsm@r{b}.{f}" for b in range(3) for f in range(2)]
    assert suite.matrix_models == suite.recipes["base"] + suite.recipes["aft-fgsm"]
    spec = suite.models["aft-fgsm@r2.1"]
    assert (spec.recipe, spec.repeat, spec.parent) == ("aft-fgsm", (2, 1), "base@r2")
    # The first repeat at every level trains with the recipe's seed; every other instance draws its own.
    seeds = {name: s.entry["seed"] for name, s in suite.models.items()}
    assert seeds["base@r0"] == 3 and seeds["aft-fgsm@r0.0"] == 0
    assert len(set(seeds[n] for n in suite.recipes["base"])) == 3
    assert len(set(seeds[n] for n in suite.recipes["aft-fgsm"])) == 6  # nested: each base's fine-tunes differ
    assert seeds["aft-fgsm@r1.0"] == repeats.training_seed(0, (1, 0)) != seeds["aft-fgsm@r0.0"]
    assert all("repeats" not in s.entry for s in suite.models.values())  # not in what the keys hash
    # A recipe with one instance keeps its plain name.
    single = load(write(base="", tuned="", name="single.toml"))
    assert list(single.models) == ["base", "aft-fgsm"] and single.models["aft-fgsm"].repeat == (0, 0)


@pytest.mark.parametrize("value, message", [
    ("0", "repeats must be an integer from 1 to 100"), ("-2", "repeats must be an integer from 1 to 100"),
    ("2.5", "repeats must be an integer from 1 to 100"), ('"3"', "repeats must be an integer from 1 to 100"),
    ("true", "repeats must be an integer from 1 to 100"), ("101", "repeats must be an integer from 1 to 100"),
])
def test_validate_refuses_nonsense_repeats_in_one_line(write, capsys, value, message):
    path = write(base=f"repeats = {value}")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"models.base.{message}" in err and err.count("\n") == 1 and "Traceback" not in err


def test_repeats_that_multiply_beyond_the_cap_are_refused(write):
    with pytest.raises(UserError, match="the repeats ask for 10,100 trained models; at most 10,000"):
        load(write(base="repeats = 100", tuned="repeats = 100"))


def test_a_loaded_model_is_one_repeat(tmp_path):
    path = tmp_path / "loaded.toml"
    path.write_text('schema = 1\n[data]\nsource = "synthetic"\n[models.mine]\ncheckpoint = "net.pt"\n'
                    'arch = "small-cnn"\nrepeats = 3\n[attacks.fgsm]\nadapter = "torchattacks.FGSM"\n'
                    '[matrix]\nmodels = ["mine"]\nattacks = ["fgsm"]\n[evaluation]\nsizes = [10]\nseeds = [0]\n')
    (tmp_path / "net.pt").write_bytes(b"")
    with pytest.raises(UserError, match="models.mine.repeats: a loaded model is one trained model"):
        load(path)


def test_a_transfer_source_with_repeats_pairs_with_the_target_on_its_branch(write, tmp_path):
    path = write(base="repeats = 2", tuned="repeats = 2")
    text = path.read_text() + '\n[attacks.from-base]\nadapter = "torchattacks.FGSM"\neps = 0.02\nsource = "base"\n'
    path.write_text(text.replace('attacks = ["fgsm"]', 'attacks = ["fgsm", "from-base"]'))
    suite = load(path)
    spec = suite.attacks["from-base"]
    assert suite.source_of(spec, "aft-fgsm@r1.0") == "base@r1" and suite.source_of(spec, "base@r0") == "base@r0"


@pytest.fixture(scope="module")
def repeated_runs(tmp_path_factory):
    """The suite with 2 x 2 repeats, then raised to 3 x 2 over the same store, and without repeats."""
    from conftest import REPO

    root = tmp_path_factory.mktemp("repeats")
    reference = REPO / "suites" / "reference" / "paper-tables.toml"
    out = {}
    for name, base, tuned in (("two", "repeats = 2", "repeats = 2"), ("three", "repeats = 3", "repeats = 2"),
                              ("none", "", "")):
        path = root / f"{name}.toml"
        path.write_text(SUITE.format(base=base, tuned=tuned, reference=reference))
        run_suite(path, root / name, device="cpu", store=root / "store", write_report=name != "two")
        out[name] = root / name
    return out


def _computed(run_dir) -> int:
    return json.loads((run_dir / "run.json").read_text())["nodes"]["computed"]


def test_raising_repeats_trains_only_the_new_ones_and_repeat_zero_is_the_unrepeated_model(repeated_runs):
    two, three = (json.loads((repeated_runs[k] / "results.json").read_text()) for k in ("two", "three"))
    # 3 x 2 over 2 x 2's store: one base training, its two adversarial sets and fine-tunes, and their 3 models' x 2
    # seeds of evaluations are new; nothing else.
    assert _computed(repeated_runs["three"]) == 1 + 2 + 2 + 3 * 2
    for name in two["models"]:
        assert three["models"][name]["weights"] == two["models"][name]["weights"]
    none = json.loads((repeated_runs["none"] / "results.json").read_text())
    assert _computed(repeated_runs["none"]) == 0  # its two models are repeat 0 of the repeated suite: same keys
    assert none["models"]["base"]["weights"] == two["models"]["base@r0"]["weights"]
    assert none["models"]["aft-fgsm"]["weights"] == two["models"]["aft-fgsm@r0.0"]["weights"]
    assert len({info["weights"] for info in three["models"].values()}) == len(three["models"]) == 3 + 6


def test_repeats_share_evaluation_images_and_differ_in_their_fine_tune_images(repeated_runs):
    results = json.loads((repeated_runs["three"] / "results.json").read_text())
    examples = pd.read_csv(repeated_runs["three"] / "examples.csv", dtype={"repeat": str})
    assert list(examples.columns[:3]) == ["model", "recipe", "repeat"]
    assert set(examples["repeat"]) == {"r0", "r1", "r2", "r0.0", "r0.1", "r1.0", "r1.1", "r2.0", "r2.1"}
    indices = examples.groupby(["model", "seed"])["index"].apply(tuple).unstack("seed")
    assert (indices.nunique() == 1).all()  # every repeat attacked on the same images, seed by seed
    tuned = [info["finetune_indices"] for name, info in results["models"].items() if info["recipe"] == "aft-fgsm"]
    assert len({tuple(t) for t in tuned}) == 6
    cell = results["cells"][0]
    assert {"recipe", "repeat"} <= set(cell) and cell["model"] == f"{cell['recipe']}@{cell['repeat']}"


def test_results_json_holds_the_claims_over_the_repeats(repeated_runs):
    results = json.loads((repeated_runs["three"] / "results.json").read_text())
    claim = next(c for c in results["claims"] if c["claim"] == "ADV/ORIG ratio of base under fgsm")
    assert claim["repeats"] == 3 and len(claim["per_repeat"]) == 3 and claim["includes_training"]
    assert claim["trainings"] == "3 base trainings"
    assert claim["range"] == [min(claim["per_repeat"]), max(claim["per_repeat"])]
    lo, hi = claim["interval"]
    assert lo <= claim["estimate"] <= hi and claim["prediction_interval"][0] <= claim["estimate"]
    assert claim["sd_between_repeats"] > 0 and set(claim["components_sd"]) == {"base training", "images"}
    k, n = claim["agreement"]["verdict"]
    assert n == 3 and 0 <= k <= 3
    tuned = next(c for c in results["claims"] if c["ours"] == "aft-fgsm - base")
    assert tuned["trainings"] == "3 base trainings x 2 fine-tunes" and tuned["repeats"] == 6 and tuned["paired"]
    one = json.loads((repeated_runs["none"] / "results.json").read_text())["claims"][0]
    assert one["trainings"] == "one training run" and not one["includes_training"]
    report = (repeated_runs["three"] / "report.md").read_text()
    assert "### Training variance" in report and "3 base trainings x 2 fine-tunes" in report
    assert "one training run (training variance left out)" in (repeated_runs["none"] / "report.md").read_text()
    assert "1 degree of freedom" not in report  # 3 base trainings: no warning


def test_intervals_on_two_trainings_say_why_they_are_wide(repeated_runs):
    """With 2 base trainings the interval's t(1) is 12.7: an accuracy interval can pass 0-100%; the report says
    so beside the accuracy tables and the ratio table (a new user read [-103, 138] as a bug)."""
    from benchmark.report import load_results, render

    report = render(load_results(repeated_runs["two"]), repeated_runs["two"], with_figures=False)
    accuracy, ratio = report.split("## ADV/ORIG ratio")[0], report.split("## ADV/ORIG ratio")[1].split("\n## ")[0]
    for part in (accuracy, ratio):
        assert "2 independent trainings the interval's t has 1 degree of freedom (it multiplies the training " \
               "part of the standard error by 12.7" in part


def test_check_knows_whether_it_compares_the_same_models_or_trainings_again(repeated_runs, capsys):
    """3 x 2 against 2 x 2: every baseline model is in the run with its weights, so per image. 2 x 2 against
    3 x 2: base@r2 and its fine-tunes are missing, and the trainings both have are the same weights: not two
    independent samples of trainings, so neither test applies; refused in one line (exit 2)."""
    assert main(["check", str(repeated_runs["three"]), "--baseline", str(repeated_runs["two"])]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact (paired)" in out and "Student t" not in out
    assert main(["check", str(repeated_runs["two"]), "--baseline", str(repeated_runs["three"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "run and baseline share" in err and "compare runs with the same repeats" in err and "\n" not in err
