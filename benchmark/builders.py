"""Model builders: what builds the empty module a loaded model's checkpoint fills (benchmark.sources).

A suite's loaded model names exactly one builder by its key, `arch = "resnet18-cifar"`, `factory = "net:make"`,
`torchvision = "resnet18"` or `timm = "..."`. Each registers here, or in another package's module under the
entry-point group `adv_transfer_bench.model_builders`:

    @model_builder("mine", check=check_mine)          # check(value, entry, where, fail, suite_dir): parse time
    def build_mine(entry, num_classes, where) -> nn.Module: ...

`check` refuses a bad value in one line while the suite is validated (nothing is built then) and may add keys
to the entry (what its cache key hashes); `build` makes the module, normalization inside when the entry gives
`mean` and `std`. `default_norm`: the entry normalizes with the paper's 0.5 unless it says otherwise (registry
architectures); other builders' modules normalize themselves unless mean and std are given.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from adapters.registry import Registry
from benchmark import models
from benchmark.errors import UserError, one_line

FACTORY_PREFIX = "_suite_factory_"  # module names of factories imported from a suite's folder


@dataclass(frozen=True)
class Builder:
    name: str
    build: Callable[[dict, int, str], nn.Module]
    check: Callable[..., None]
    default_norm: bool = False


MODEL_BUILDERS = Registry("model builder", group="adv_transfer_bench.model_builders", item_type=Builder)


def model_builder(name: str, *, check: Callable[..., None] | None = None, default_norm: bool = False):
    """Register the decorated `build(entry, num_classes, where)` as the builder keyed `name` in a suite."""
    def register(build):
        MODEL_BUILDERS.register(name, Builder(name, build, check or (lambda *a: None), default_norm))
        return build

    return register


def normalized(net: nn.Module, entry: dict) -> nn.Module:
    return models.Normalized(net, entry["mean"], entry["std"]) if entry["mean"] is not None else net


# ---------------------------------------------------------------------------------------------- the builders
def _check_arch(value: str, entry: dict, where: str, fail, suite_dir: Path) -> None:
    if models.ARCHITECTURES.get(value) is None:
        raise fail(f"{where}arch must be one of {', '.join(models.ARCHITECTURES.names())}, got {value!r}")


@model_builder("arch", check=_check_arch, default_norm=True)
def build_arch(entry: dict, num_classes: int, where: str) -> nn.Module:
    return models.build(entry["arch"], mean=entry["mean"], std=entry["std"], num_classes=num_classes)


def _check_factory(value: str, entry: dict, where: str, fail, suite_dir: Path) -> None:
    if not re.fullmatch(r"[\w.]+:[\w.]+", value):
        raise fail(f"{where}factory must be \"module:callable\", got {value!r}")
    entry["suite_dir"] = str(suite_dir.resolve())


@model_builder("factory", check=_check_factory)
def build_factory(entry: dict, num_classes: int, where: str) -> nn.Module:
    name = entry["factory"]
    fn, _ = import_factory(name, Path(entry["suite_dir"]), where)
    takes = inspect.signature(fn).parameters if _has_signature(fn) else {}
    norm_inside = entry["mean"] is not None and {"mean", "std"} <= set(takes)
    kwargs = {"mean": entry["mean"], "std": entry["std"]} if norm_inside else {}
    try:
        net = fn(num_classes=num_classes, **kwargs)
    except Exception as exc:  # noqa: BLE001  (user code: any failure is the user's to see in one line)
        raise UserError(f"{where}: factory {name} failed: {one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"{where}: factory {name} returned {type(net).__name__}, not a torch.nn.Module")
    return net if norm_inside else normalized(net, entry)


def _check_torchvision(value: str, entry: dict, where: str, fail, suite_dir: Path) -> None:
    from torchvision.models import list_models

    if value not in list_models():
        raise fail(f"{where}torchvision: unknown model {value!r} (see torchvision.models.list_models())")


@model_builder("torchvision", check=_check_torchvision)
def build_torchvision(entry: dict, num_classes: int, where: str) -> nn.Module:
    from torchvision.models import get_model

    return normalized(get_model(entry["torchvision"], weights=None, num_classes=num_classes), entry)


def _timm(fail: Callable[[str], UserError], where: str):
    try:
        import timm
    except ImportError:
        raise fail(f"{where}timm needs the optional timm package (pip install timm)") from None
    return timm


def _check_timm(value: str, entry: dict, where: str, fail, suite_dir: Path) -> None:
    if not _timm(fail, where).is_model(value):
        raise fail(f"{where}timm: unknown model {value!r} (see timm.list_models())")


@model_builder("timm", check=_check_timm)
def build_timm(entry: dict, num_classes: int, where: str) -> nn.Module:
    timm = _timm(lambda m: UserError(m), f"{where}.")
    return normalized(timm.create_model(entry["timm"], pretrained=False, num_classes=num_classes), entry)


# ------------------------------------------------------------------------------------------------- factories
def _has_signature(fn) -> bool:
    try:
        inspect.signature(fn)
        return True
    except (TypeError, ValueError):
        return False


def import_factory(spec: str, suite_dir: Path, where: str):
    """`module:callable`, the module looked for in the suite's folder first (a file or package there, loaded
    under a name of its path so two suites' `net.py` never collide), then on the Python path."""
    module_name, attr = spec.split(":")
    rel = Path(*module_name.split("."))
    local = next((p for p in (suite_dir / rel.with_suffix(".py"), suite_dir / rel / "__init__.py") if p.is_file()),
                 None)
    try:
        if local is not None:
            unique = f"{FACTORY_PREFIX}{hashlib.sha256(str(local).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(unique, local)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[unique] = module  # dataclasses and pickling look modules up here
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
        else:
            module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (user code: any import failure, sys.exit too, is one line)
        raise UserError(f"{where}: factory {spec}: cannot import {module_name} from {suite_dir} or the Python "
                        f"path ({one_line(exc)})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise UserError(f"{where}: factory {spec}: {module_name} has no callable {attr}")
    return fn, module


def factory_files(spec: str, suite_dir: Path | None) -> list[str]:
    """The files of a built factory's module and of the module that defines its callable, where the module came
    from the Python path (imported by import_factory; in another process, imported here by name), none for a
    suite folder's file (loaded by its path, and hashed as ours already): what benchmark.sources hands to
    code_hashes.own_distribution."""
    module_name, attr = spec.split(":")
    rel = Path(*module_name.split("."))
    if suite_dir is not None and any(p.is_file() for p in (suite_dir / rel.with_suffix(".py"),
                                                         suite_dir / rel / "__init__.py")):
        return []
    try:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except (Exception, SystemExit):  # noqa: BLE001  (the driver imported it; a worker that cannot fails later)
        return []
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    defining = sys.modules.get(getattr(fn, "__module__", None) or "")
    return sorted({f for m in (module, defining) if isinstance(f := getattr(m, "__file__", None), str)})
