"""What produced a result: library versions, git commit, device. Saved with every run (lm-eval-harness style)."""
from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = {"torch": "torch", "torchvision": "torchvision", "art": "adversarial-robustness-toolbox",
            "torchattacks": "torchattacks", "numpy": "numpy", "pandas": "pandas", "pillow": "pillow"}
# The libraries whose version can change a node's numbers, by kind of node (decoding libraries such as Pillow are
# covered by the hash of the decoded pixels that every key carries).
# Python's own version counts for attacks: ART's UniversalPerturbation and SquareAttack draw from its `random`.
NUMERIC = {"model": ("torch", "torchvision"),
           "attack": ("python", "torch", "torchvision", "numpy", "art", "torchattacks")}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for short, dist in PACKAGES.items():
        try:
            out[short] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[short] = "absent"
    return out


def numeric_versions(versions: dict[str, str], node: str) -> dict[str, str]:
    return {k: versions[k] for k in NUMERIC[node]}


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({_cpu_model()}, {platform.machine()})"  # CPUs of one kind can still round differently


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def device_label(device: torch.device, threads: int | None) -> str:
    """The device as results and model infos name it; on a CPU with its thread count, which CPU keys carry."""
    if device.type != "cpu" or not threads:
        return device_name(device)
    return f"{device_name(device)}, {threads} thread{'s' if threads > 1 else ''}"


def check_device_name(name: str) -> None:
    from benchmark.errors import UserError

    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu or cuda, got {name!r}")


def resolve_device(name: str) -> torch.device:
    from benchmark.errors import UserError

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(name)
