"""A model factory from the user's own package installed into site-packages without -e (issue 33): its
distribution is keyed by its files, not its version (code_hashes.own_distribution, sources.installed_factory),
so an edit reinstalled at the same version re-runs what it changes; third-party libraries stay keyed by name and
version. The package is a wheel made here and installed by pip with --target; that folder on PYTHONPATH ends in
site-packages, so code_hashes counts its files as a library's, as it does any installed package's."""
import base64
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile

from conftest import REPO

PACKAGE = '''
from torch import nn

WIDTH = 8
SCALE = {scale}  # the constant the second install changes


class Net(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, WIDTH, 3, stride=4), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(WIDTH * 64, num_classes))

    def forward(self, x):
        return self.body((x - 0.5) / SCALE)


def make(num_classes):
    return Net(num_classes)
'''

SUITE = """
schema = 1
name = "installed"

[data]
source = "synthetic"
train = 100
test = 40

[models.mine]
checkpoint = "net.pt"
factory = "tinynet:make"

[attacks.fgsm]
adapter = "torchattacks.FGSM"
eps = 0.02

[matrix]
models = ["mine"]
attacks = ["fgsm"]

[evaluation]
sizes = [10]
seeds = [0]
batch_size = 10

[checks]
probe_images = 0
"""

# In a fresh process: the premise (an installed library file), the checkpoint, and the loaded model pickled as
# the Ray executor ships it.
PREPARE = """
import pickle, sys, torch, tinynet
from benchmark import code_hashes, sources
from benchmark.suite import load
print(code_hashes.kind(tinynet.__file__), *code_hashes.distribution(tinynet.__file__))
torch.manual_seed(0)
torch.save(tinynet.make(10).state_dict(), sys.argv[1] + "/net.pt")
loaded = sources.load(load(sys.argv[1] + "/suite.toml").models["mine"].entry, 10)
open(sys.argv[1] + "/loaded.pkl", "wb").write(pickle.dumps(loaded))
"""

# In another fresh process (a worker): unpickling the loaded model counts its package as ours there too.
UNPICKLE = """
import pickle, sys, tinynet
from benchmark import code_hashes
before = code_hashes.kind(tinynet.__file__)
loaded = pickle.loads(open(sys.argv[1] + "/loaded.pkl", "rb").read())
print(before, code_hashes.kind(tinynet.__file__), loaded.source["installed"])
"""


def _wheel(tmp_path, scale: str):
    """tinynet 1.0 as a wheel (no build backend needed: pip installs it as it is)."""
    files = {"tinynet/__init__.py": PACKAGE.format(scale=scale),
             "tinynet-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinynet\nVersion: 1.0\n",
             "tinynet-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n",
             "tinynet-1.0.dist-info/top_level.txt": "tinynet\n"}
    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},sha256={digest(text)},{len(text.encode())}\n" for name, text in files.items())
    path = tmp_path / f"wheels-{scale}" / "tinynet-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as whl:
        record += "tinynet-1.0.dist-info/RECORD,,\n"
        for name, text in {**files, "tinynet-1.0.dist-info/RECORD": record}.items():
            whl.writestr(name, text)
    return path


def _install(tmp_path, scale: str, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-cache-dir",
                    "--upgrade", "--target", str(tmp_path / "site-packages"), str(_wheel(tmp_path, scale))],
                   check=True, env=env, capture_output=True)


def _python(env: dict, script: str, *args) -> str:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _run(tmp_path, env: dict, name: str) -> tuple[str, dict, set]:
    """The model's key, run.json's node counts and the evaluation records in the store after one run."""
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", str(tmp_path / "suite.toml"), "--out",
                           str(tmp_path / name), "--store", str(tmp_path / "store"), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / name / "results.json").read_text())
    nodes = json.loads((tmp_path / name / "run.json").read_text())["nodes"]
    return (results["models"]["mine"]["key"], nodes,
            {p.name for p in (tmp_path / "store" / "evaluations").glob("*.json")})


def test_factory_installed_without_e_is_keyed_by_its_files_not_its_version(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site-packages"), "OMP_NUM_THREADS": "1"}
    (tmp_path / "suite.toml").write_text(SUITE)
    _install(tmp_path, "0.5", env)
    assert _python(env, PREPARE, tmp_path) == "library tinynet 1.0"
    assert _python(env, UNPICKLE, tmp_path) == "library ours {'tinynet': '1.0'}"

    key, nodes, evaluations = _run(tmp_path, env, "first")
    assert nodes["computed"] == 2 and len(evaluations) == 1
    record = json.loads((tmp_path / "store" / "model-info" / f"{key}.json").read_text())
    assert record["source"]["installed"] == {"tinynet": "1.0"}
    # The factory's package is hashed as code, module by module; every other library by name and version.
    assert "tinynet" in record["code"]["modules"] and "tinynet" not in record["code"]["libraries"]
    assert record["code"]["libraries"]["torch"] == importlib.metadata.version("torch")
    assert _run(tmp_path, env, "again") == (key, {"computed": 0, "failed": 0, "reused": 2}, evaluations)

    _install(tmp_path, "0.25", env)  # SCALE edited, reinstalled at the same version
    assert _python(env, "import tinynet, importlib.metadata as m; print(tinynet.SCALE, m.version('tinynet'))") == \
        "0.25 1.0"
    changed, nodes, after = _run(tmp_path, env, "edited")
    assert changed != key and nodes["computed"] == 2 and len(after - evaluations) == 1
