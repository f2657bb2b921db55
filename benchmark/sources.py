"""Models that are loaded, not trained: a checkpoint filled into the module a model builder makes (a registry
architecture, a factory of the user's, torchvision, timm, or any builder registered in benchmark.builders);
RobustBench's model-zoo layout; or a module handed to `run_suite(models=...)`.

One interface serves the runner and `validate`:

    entry = parse(table, where, fail, suite_dir)   # a suite's [models.NAME] table, checked, defaults filled in
    loaded = load(entry, num_classes, sample)      # Loaded(module, source, identity); every bad input a UserError
    loaded = provided(module)                      # an in-memory module

`source` is what results.json and the report show; `identity` is what the cache key hashes: the checkpoint
file's sha256 (never its path), the builder and the code building it ran (fingerprint.record), the
normalization. Checkpoints are read with `torch.load(weights_only=True)` or safetensors: never unpickling code.
"""
from __future__ import annotations

import copy
import hashlib
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from benchmark import fingerprint, models
from benchmark.builders import FACTORY_PREFIX, MODEL_BUILDERS, import_factory
from benchmark.errors import UserError, one_line
from benchmark.store import tensors_hash

KEYS = {"checkpoint": str, "robustbench": str, "model_dir": str, "dataset": str, "threat_model": str,
        "mean": list, "std": list, "provided": bool,
        "factory_dir": str}  # and one builder's key (benchmark.builders)
SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "last")  # RobustBench and common training scripts
PREFIXES = ("module.", "model.", "_orig_mod.")  # DataParallel, RobustBench's wrappers, torch.compile


@dataclass
class Loaded:
    module: nn.Module  # maps [0,1] NCHW images to logits, in eval mode, on the CPU
    source: dict[str, Any]  # for results.json and the report
    identity: dict[str, Any]  # for the cache key

    def __setstate__(self, state: dict) -> None:
        """Unpickled in another process (a Ray worker): a factory's installed package is hashed as ours there
        too (installed_factory), so what the worker computes through it is checked by its files, as here."""
        self.__dict__.update(state)
        if self.source.get("installed"):
            installed_factory(self.source["factory"], None)


def is_loaded(table: dict) -> bool:
    return any(k in table for k in ("checkpoint", "robustbench", "provided"))


# --------------------------------------------------------------------------------------------------- parsing
def parse(table: dict, where: str, fail: Callable[[str], UserError], suite_dir: Path) -> dict[str, Any]:
    """Check a loaded model's suite table without reading its file; the full entry, paths resolved."""
    builders = MODEL_BUILDERS.names()
    keys = {**KEYS, **dict.fromkeys(builders, str)}
    extra = sorted(set(table) - set(keys))
    if extra:
        raise fail(f"unknown key {where}{extra[0]}; valid for a loaded model: {', '.join(sorted(keys))}")
    for key, kind in keys.items():
        if key in table and not isinstance(table[key], kind):
            raise fail(f"{where}{key} must be {kind.__name__}, got {table[key]!r}")
    if table.get("provided"):
        if set(table) != {"provided"}:
            raise fail(f"{where}provided = true takes no other keys (the module comes from run_suite(models=...))")
        return {"source": "in-memory"}
    if ("checkpoint" in table) == ("robustbench" in table):
        raise fail(f"{where[:-1]} needs exactly one of checkpoint = \"path\" or robustbench = \"<model name>\"")
    named = [b for b in builders if b in table]
    if len(named) != 1:
        raise fail(f"{where[:-1]} needs exactly one of {', '.join(builders)} to build the module the checkpoint "
                   f"fills (got {', '.join(named) or 'none'})")
    builder = named[0]
    entry: dict[str, Any] = {"source": "checkpoint", "builder": builder, builder: table[builder]}
    if "checkpoint" in table:
        file = (suite_dir / table["checkpoint"]).resolve()
        if not file.exists():
            raise fail(f"{where}checkpoint not found: {file}")
        if not file.is_file():  # a folder, a FIFO (reading one would wait forever), a device
            raise fail(f"{where}checkpoint {file} is not a regular file")
    else:
        zoo = {k: table.get(k, d) for k, d in (("model_dir", "models"), ("dataset", "cifar10"),
                                                ("threat_model", "Linf"))}
        file = (suite_dir / zoo["model_dir"]).resolve() / zoo["dataset"] / zoo["threat_model"] / \
            f"{table['robustbench']}.pt"
        if not file.exists():
            raise fail(f"{where}robustbench: no checkpoint at {file} (RobustBench layout "
                       "<model_dir>/<dataset>/<threat_model>/<name>.pt; loaded offline, never downloaded)")
        entry.update(source="robustbench", robustbench=table["robustbench"], **zoo)
    if not file.name.endswith(SUFFIXES):
        raise fail(f"{where}checkpoint {file.name}: expected {', '.join(SUFFIXES)}")
    entry["file"] = str(file)
    for key in ("mean", "std"):
        # The registry always normalizes: the paper's 0.5 unless given; RobustBench models take [0,1] images.
        default = ([0.0] * 3 if key == "mean" else [1.0] * 3) if "robustbench" in table else [0.5] * 3
        value = table.get(key, default if MODEL_BUILDERS.get(builder).default_norm else None)
        if value is not None and (len(value) != 3 or not all(isinstance(v, (int, float)) and not
                                                            isinstance(v, bool) for v in value)):
            raise fail(f"{where}{key} must be three numbers")
        entry[key] = value
    if (entry["mean"] is None) != (entry["std"] is None):
        raise fail(f"{where[:-1]}: give both mean and std, or neither (the module normalizes itself)")
    if entry["std"] is not None and any(s <= 0 for s in entry["std"]):
        raise fail(f"{where}std must be positive")
    entry["explicit_norm"] = "mean" in table
    # A factory's module is looked for in `factory_dir` (default: the suite's folder; an overlay in another folder
    # inherits its parent's, rebased by benchmark.extends).
    MODEL_BUILDERS.get(builder).check(table[builder], entry, where, fail, suite_dir / table.get("factory_dir", "."))
    return entry


# --------------------------------------------------------------------------------------------------- loading
def load(entry: dict[str, Any], num_classes: int | None, sample: torch.Tensor | None = None,
         name: str = "model") -> Loaded:
    """Build the module, fill it from the checkpoint and check it against the data.

    num_classes: the data's class count (None: unknown yet, as `validate` on an archive; then only the file is
    read and the builder imported). sample: one float [0,1] image, 1 x C x H x W, for the output-width check."""
    where = f"models.{name}"
    file = Path(entry["file"])
    state = read_state(file)
    if num_classes is None:  # validate without the data's class count: the file is read, the factory imported
        if entry["builder"] == "factory":
            import_factory(entry["factory"], Path(entry["suite_dir"]), where)
        builder, code = None, None
    else:
        builder, code = build(entry, num_classes, where)
    sha = file_sha256(file)
    source = {"kind": entry["source"], "file": str(file), "sha256": sha, "builder": entry["builder"],
              entry["builder"]: entry[entry["builder"]]}
    if entry["source"] == "robustbench":
        source.update({k: entry[k] for k in ("robustbench", "model_dir", "dataset", "threat_model")})
    if builder is not None and entry["builder"] == "factory" and \
            (installed := installed_factory(entry["factory"], Path(entry["suite_dir"]))):
        source["installed"] = installed  # the distributions it came from, keyed by their files (not their version)
    if builder is None:
        return Loaded(None, source, {})
    fit(builder, state, file, f"{entry['builder']} {entry[entry['builder']]!r}", where)
    if isinstance(builder, models.Normalized):
        used = [builder.norm_mean.flatten().tolist(), builder.norm_std.flatten().tolist()]
        if entry["explicit_norm"] and not all(torch.allclose(torch.tensor(u), torch.tensor(s, dtype=torch.float32))
                                              for u, s in zip(used, (entry["mean"], entry["std"]))):
            raise UserError(f"{where}: {file} normalizes with mean {used[0]}, std {used[1]}; the suite says mean "
                            f"{entry['mean']}, std {entry['std']}")
        source.update(mean=used[0], std=used[1])
    builder.eval()
    check_output(builder, num_classes, sample, where)
    identity = {"sha256": sha, "builder": entry["builder"], "name": entry[entry["builder"]], "code": code,
                "mean": source.get("mean"), "std": source.get("std")}
    return Loaded(builder, source, identity)


def provided(module: nn.Module, num_classes: int, sample: torch.Tensor | None, name: str) -> Loaded:
    """A module built in a notebook: copied to the CPU (the caller's stays as it is), keyed by its weights and
    the source of every class in it."""
    if not isinstance(module, nn.Module):
        raise UserError(f"models.{name}: run_suite(models=...) needs torch.nn.Module values, got "
                        f"{type(module).__name__}")
    module = copy.deepcopy(module).cpu().eval()
    check_output(module, num_classes, sample, f"models.{name}")
    weights = tensors_hash(module.state_dict())
    classes = sorted({type(m) for m in module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}")
    source = {"kind": "in-memory", "class": f"{type(module).__module__}.{type(module).__qualname__}",
              "weights": weights}
    return Loaded(module, source, {"weights": weights, "code": fingerprint.code(*classes)})


def unimportable_modules(loaded: Iterable[Loaded]) -> list:
    """The modules of loaded models' classes that another process cannot import by name (a suite folder's
    factory, loaded under a name of its path): an executor that ships models to workers pickles them by value."""
    names = {type(m).__module__ for source in loaded if source.module is not None for m in source.module.modules()}
    return [sys.modules[n] for n in sorted(names) if n.startswith(FACTORY_PREFIX) and n in sys.modules]


def describe(loaded_source: dict[str, Any]) -> str:
    """One line for the report."""
    kind = loaded_source["kind"]
    if kind == "in-memory":
        return f"in-memory module `{loaded_source['class']}` (weights {loaded_source['weights'][:12]})"
    where = (f"RobustBench {loaded_source['dataset']}/{loaded_source['threat_model']}/"
             f"{loaded_source['robustbench']}" if kind == "robustbench" else "checkpoint")
    builder = loaded_source["builder"]
    norm = (f", mean {loaded_source['mean']}, std {loaded_source['std']}" if "mean" in loaded_source else "")
    return (f"{where} `{Path(loaded_source['file']).name}` (sha256 {loaded_source['sha256'][:12]}) in "
            f"{builder} `{loaded_source[builder]}`{norm}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(entry: dict[str, Any], num_classes: int, where: str) -> tuple[nn.Module, str]:
    """The empty module of a loaded model, and a fingerprint of the code that building it ran (a factory's module
    and every module of ours or the user's it called into; torchvision's or timm's version)."""
    builder = MODEL_BUILDERS.get(entry["builder"])  # looked up first: the registry's code is not the model's
    with fingerprint.record() as ran:
        module = builder.build(entry, num_classes, where)
    if entry["builder"] == "factory":  # before the manifest classifies the files that ran
        installed_factory(entry["factory"], Path(entry["suite_dir"]))
    return module, fingerprint.digest(ran.manifest())


def installed_factory(spec: str, suite_dir: Path | None) -> dict[str, str | None]:
    """A factory imported from an installed package (site-packages, without -e): that distribution's files are
    hashed as ours in this process from now on (code_hashes.own_distribution), so the model's key and every
    stored result that ran its code follow its content, not its version: an edit reinstalled at the same version
    re-runs what it changes. Other libraries stay keyed by version. {distribution: version} (empty for a suite
    folder's factory or one outside site-packages, whose files are ours already)."""
    from benchmark import code_hashes
    from benchmark.builders import factory_files

    found = (code_hashes.own_distribution(f) for f in factory_files(spec, suite_dir))
    return dict(sorted(f for f in found if f is not None))


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pt/.pth (weights_only) or .safetensors file, unwrapped from RobustBench-style dicts."""
    if not path.name.endswith(".safetensors"):
        with open(path, "rb") as fh:
            head = fh.read(4)
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip format, or a pickle
            raise UserError(f"checkpoint {path} is corrupted or not a state dict (neither torch's zip format nor a "
                            "pickle)")
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about legacy pickles on stderr before refusing them
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except (IsADirectoryError, PermissionError, FileNotFoundError) as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001  (zip, pickle and safetensors errors of every kind)
        needs = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(exc)) or re.search(
            r"Unsupported operand|Unsupported global|REDUCE|BUILD", str(exc))
        if needs:
            what = needs.group(1) if needs.lastindex else "an object that is not a tensor"
            raise UserError(f"checkpoint {path} would need unpickling code to load ({what}); save "
                            "model.state_dict() instead (torch.save(model.state_dict(), path))") from None
        raise UserError(f"checkpoint {path} is corrupted or not a state dict ({type(exc).__name__})") from None
    state = _unwrap(obj)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"checkpoint {path} holds no state dict (found: {keys})")
    return state


def _unwrap(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict) or depth > 2:
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return tensors
    for key in WRAPPERS:
        if key in obj and (inner := _unwrap(obj[key], depth + 1)) is not None:
            return inner
    return None


def _variants(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The state as saved and with each wrapper prefix removed (in any order they were stacked)."""
    out = [state]
    for prefix in PREFIXES * 2:
        for v in list(out):
            if any(k.startswith(prefix) for k in v):
                out.append({k.removeprefix(prefix): t for k, t in v.items()})
    return out


def fit(module: nn.Module, state: dict[str, torch.Tensor], path: Path, builder: str, where: str) -> None:
    """Load `state` into `module` (or, for a Normalized wrapper, into its network: checkpoints of the bare
    architecture, as RobustBench's are); otherwise name up to three missing and three unexpected keys."""
    targets = [(module, "")] + ([(module.net, "net.")] if isinstance(module, models.Normalized) else [])
    best = None
    for target, prefix in targets:
        wanted = set(target.state_dict())
        for variant in _variants(state):
            missing, unexpected = sorted(wanted - set(variant)), sorted(set(variant) - wanted)
            if best is None or len(missing) + len(unexpected) < len(best[2]) + len(best[3]):
                best = (target, variant, [prefix + k for k in missing], unexpected)
    target, variant, missing, unexpected = best
    if missing or unexpected:
        raise UserError(f"{where}: {path.name} does not fit {builder}: missing {_few(missing)}; unexpected "
                        f"{_few(unexpected)}")
    own = target.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in variant.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise UserError(f"{where}: {path.name} does not fit {builder}: shapes differ for {_few(wrong)}")
    target.load_state_dict(variant, strict=True)


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def check_output(module: nn.Module, num_classes: int | None, sample: torch.Tensor | None, where: str) -> None:
    """One forward pass on one image: the module must accept the data's images and give one logit per class."""
    if sample is None or num_classes is None:
        return
    try:
        with torch.no_grad():
            out = module.eval()(sample)
    except Exception as exc:  # noqa: BLE001  (user code)
        raise UserError(f"{where}: forward pass on a {'x'.join(map(str, sample.shape[1:]))} image failed "
                        f"({one_line(exc)})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{where}: outputs {shape} for one image; the data has {num_classes} classes, so "
                        f"(1, {num_classes}) logits were expected")
