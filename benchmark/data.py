"""Data sources (original CIFAR-10 and CIFAR-100, image folders or their .tar.gz, a synthetic set) and batched augmentation.

Every source yields a `Dataset` of uint8 NCHW tensors plus an `identity` that every result carries, so a report
always says which pixels produced its numbers.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from benchmark.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
SOURCES = ("cifar10", "cifar100", "folder", "synthetic")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SYNTHETIC_SIZE = (5000, 2000)  # train, test: the synthetic source's default


class Shape(NamedTuple):
    train: int
    test: int
    classes: int


# What is known of a source before loading it (the synthetic source's split sizes are the suite's).
KNOWN_SHAPES = {"cifar10": Shape(50000, 10000, 10), "cifar100": Shape(50000, 10000, 100),
                "synthetic": Shape(*SYNTHETIC_SIZE, 10)}


def resolved(path: str | os.PathLike) -> Path:
    """The absolute path, or a UserError for a symbolic link loop (Path.resolve raises RuntimeError on one)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise UserError(f"data path {path}: {'a symbolic link loop' if isinstance(exc, RuntimeError) else exc}"
                        ) from None


def cache_dir() -> Path:
    """Where decoded arrays and the downloaded CIFAR-10/100 live: $BENCH_CACHE, else ~/.cache/adv-transfer-bench."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "adv-transfer-bench"))


@dataclass
class Dataset:
    train_x: torch.Tensor  # uint8, N x 3 x H x W
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    identity: dict = field(default_factory=dict)  # source, description, checksum: goes into every result

    def __post_init__(self):
        # One canonical layout whatever path the pixels took: decoded images come out channels-last (a stack of
        # HWC arrays transposed), cached ones contiguous, and convolutions round differently on the two.
        for name in ("train_x", "train_y", "test_x", "test_y"):
            setattr(self, name, getattr(self, name).contiguous())

    def to(self, device: torch.device | str) -> "Dataset":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Dataset(move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y),
                       self.classes, self.identity)


def load(source: str, path: str | os.PathLike | None = None, *, synthetic_size: tuple[int, int] = SYNTHETIC_SIZE
         ) -> Dataset:
    """Load a data source. `path` (the CLI's --data-dir or $BENCH_DATA_DIR) may name an image folder or its
    .tar.gz, which then stands in for CIFAR-10/100 (the offline JPEG copy is used this way)."""
    if source not in SOURCES:
        raise UserError(f"unknown data source {source!r}; valid: {', '.join(SOURCES)}")
    if source == "synthetic":
        return synthetic(*synthetic_size)
    path = path or os.environ.get("BENCH_DATA_DIR")
    if path is not None:
        resolved(path)
    if path is not None and Path(path).name.endswith(ARCHIVE_SUFFIXES) and not Path(path).is_file():
        raise UserError(f"data archive {path} does not exist")
    if path is not None and _is_image_folder(Path(path)):
        return image_folder(path, classes_required=CIFAR10_CLASSES if source == "cifar10" else None)
    if source == "folder":
        raise UserError(f"data source 'folder' needs an image folder or .tar.gz with train/<class>/ and "
                        f"test/<class>/; got {path!r} (pass --data-dir PATH)")
    return cifar100(path) if source == "cifar100" else cifar10(path)


def _is_image_folder(path: Path) -> bool:
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return True
    return path.is_dir() and any((p / "train").is_dir() for p in (path, *_subdirs(path)))


def _subdirs(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []


# ---------------------------------------------------------------------------------------------- CIFAR-10 (original)
def cifar10(root: str | os.PathLike | None = None) -> Dataset:
    """The original python-version batches, md5-checked by torchvision; downloaded when absent and online."""
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, "CIFAR-10", "cifar10", "cifar-10-batches-py", CIFAR10_MD5, root)


def cifar100(root: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-100 (100 fine labels), as `cifar10`: python batches md5-checked by torchvision, downloaded when
    absent and online."""
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, "CIFAR-100", "cifar100", "cifar-100-python", CIFAR100_MD5, root)


def _cifar(kind, title: str, source: str, folder: str, md5: str, root) -> Dataset:
    root = Path(root) if root else cache_dir() / source
    try:
        train = kind(str(root), train=True, download=False)
        test = kind(str(root), train=False, download=False)
    except RuntimeError:  # absent or corrupt: try the download, which checks the archive's md5
        created = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            train = kind(str(root), train=True, download=True)
            test = kind(str(root), train=False, download=True)
        except Exception as exc:  # noqa: BLE001  (offline: URLError, socket errors, md5 mismatch)
            if created:  # leave nothing behind but what was there
                shutil.rmtree(root, ignore_errors=True)
            raise UserError(f"{title} not found at {root} and not downloadable ({type(exc).__name__}); "
                            f"pass --data-dir PATH (a {folder} parent, an image folder or its "
                            f".tar.gz) or set BENCH_DATA_DIR") from None
    as_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    return Dataset(as_nchw(train.data), torch.tensor(train.targets), as_nchw(test.data), torch.tensor(test.targets),
                   list(train.classes),
                   {"source": source, "description": f"original {title} (python batches, md5-verified)",
                    "checksum": f"md5:{md5}", "lossy": False})


# ------------------------------------------------------------------------------------------------ image folders
def image_folder(path: str | os.PathLike, classes_required: list[str] | None = None) -> Dataset:
    """`train/<class>/*` and `test/<class>/*` (optionally under one top folder), a directory or a .tar.gz read in
    place. Classes sort alphabetically into labels; `classes_required`: the ones it must have (CIFAR-10's, where it stands in
    for CIFAR-10). Decoded once, then cached as uint8 arrays keyed by checksum (after every check: bad data leaves
    no cache behind)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"data path {path} does not exist")
    checksum = _checksum(path)
    from PIL import __version__ as pillow  # decoders differ between versions: part of the cache key

    cached = cache_dir() / "decoded" / f"{checksum.replace(':', '-')}-pillow{pillow}-v3.npz"
    if cached.exists():
        arrays = dict(np.load(cached, allow_pickle=False))
    else:
        arrays = _decode(path, classes_required)
        tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, **arrays)
            os.replace(tmp, cached)
        except OSError as exc:
            raise UserError(f"cannot write the decoded-data cache in {cached.parent} ({exc.strerror or exc}); set "
                            "BENCH_CACHE to a writable folder") from None
    lossy = any(str(s).lower().endswith((".jpg", ".jpeg")) for s in arrays["suffixes"])
    classes = [str(c) for c in arrays["classes"]]
    _require(path, classes, classes_required)
    converted = {m: int(n) for m, n in (str(c).split(":") for c in arrays.get("converted", []))}
    hidden = int(arrays["hidden"]) if "hidden" in arrays else 0
    notes = (["lossy JPEG copy, not the original pixels"] if lossy else []) + (
        [f"converted to RGB: {', '.join(f'{n} {mode}' for mode, n in converted.items())} image(s)"]
        if converted else []) + ([f"{hidden} hidden file(s) skipped (names starting with a dot)"] if hidden else [])
    return Dataset(torch.from_numpy(arrays["train_x"]), torch.from_numpy(arrays["train_y"]).long(),
                   torch.from_numpy(arrays["test_x"]), torch.from_numpy(arrays["test_y"]).long(), classes,
                   {"source": "folder", "path": path.name, "checksum": checksum, "lossy": lossy,
                    **({"converted_to_rgb": converted} if converted else {}),
                    "description": f"image folder {path.name}" + (f" ({'; '.join(notes)})" if notes else "")})


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return f"sha256:{digest.hexdigest()}"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):  # a folder: names and bytes of every file
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return f"sha256:{digest.hexdigest()}"


def _decode(path: Path, required: list[str] | None = None) -> dict[str, np.ndarray]:
    from PIL import Image

    entries: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    hidden = 0
    for name, read in _members(path):
        parts = Path(name).parts
        if len(parts) < 3 or not name.lower().endswith(IMAGE_SUFFIXES):
            continue
        if any(part.startswith(".") and part not in (".", "..") for part in parts):
            hidden += 1  # macOS resource forks (._x.png), editors' and tools' files: not images of the set
            continue
        split, cls = parts[-3], parts[-2]
        if split in entries:
            entries[split].setdefault(cls, []).append((name, read()))
    classes = sorted(entries["train"])
    if sorted(entries["test"]) != classes or not classes:
        only_train = sorted(set(classes) - set(entries["test"]))
        only_test = sorted(set(entries["test"]) - set(classes))
        found = (f"; classes only in train/: {', '.join(only_train)}" if only_train else "") + \
                (f"; classes only in test/: {', '.join(only_test)}" if only_test else "")
        raise UserError(f"{path}: expected train/<class>/<images> and test/<class>/<images> with the same classes"
                        + (found or " (no images found)"))
    if len(classes) < 2:
        raise UserError(f"{path}: one class ({classes[0]}) is no classification task; give at least two")
    _require(path, classes, required)
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    suffixes, converted = set(), {}
    for split, by_class in entries.items():
        images, labels, names = [], [], []
        for label, cls in enumerate(classes):
            for name, blob in sorted(by_class[cls]):
                try:
                    img = Image.open(io.BytesIO(blob))
                    if img.mode != "RGB":  # grayscale, palette, RGBA...: accepted, and the report says so
                        converted[img.mode] = converted.get(img.mode, 0) + 1
                    img = _to_rgb(img, name)
                except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                    # PIL's UnidentifiedImageError is an OSError; a decompression bomb is refused by name
                    raise UserError(f"{path}: cannot decode image {name} ({type(exc).__name__})") from None
                images.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
                labels.append(label)
                names.append(name)
                suffixes.add(Path(name).suffix.lower())
        shapes = [im.shape for im in images]
        common = max(set(shapes), key=shapes.count)
        odd = next((n for n, shape in zip(names, shapes) if shape != common), None)
        if odd is not None:
            h, w = images[names.index(odd)].shape[1:]
            raise UserError(f"{path}: images in {split}/ differ in size: {odd} is {w}x{h}, most are "
                            f"{common[2]}x{common[1]}")
        out[f"{split}_x"] = np.stack(images)
        out[f"{split}_y"] = np.array(labels, dtype=np.int64)
    out["suffixes"] = np.array(sorted(suffixes))
    out["hidden"] = np.array(hidden)
    out["converted"] = np.array([f"{mode}:{n}" for mode, n in sorted(converted.items())], dtype=str)
    return out


def _to_rgb(img, name: str):
    """8-bit RGB. 16-bit grayscale is scaled to 8 bits (Pillow's own convert clips it, which whitens nearly every
    pixel); 32-bit integer or float images have no range to scale from and are refused."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("I", "F"):
        raise ValueError(f"{name}: {img.mode} images (32-bit) have no known range")
    return img.convert("RGB")


def _require(path: Path, classes: list[str], required: list[str] | None) -> None:
    if required is not None and sorted(classes) != sorted(required):
        found = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
        raise UserError(f"{path}: source 'cifar10' needs the 10 CIFAR-10 classes as folders, found "
                        f"{len(classes)} ({found}); for other images use source = \"folder\"")


def _members(path: Path):
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield str(file.relative_to(path)), file.read_bytes
        return
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    blob = tar.extractfile(member).read()
                    yield member.name, (lambda b=blob: b)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read archive {path}: not a readable tar archive ({first})") from None


# ------------------------------------------------------------------------------------------------- synthetic
def synthetic(n_train: int = 5000, n_test: int = 2000, *, seed: int = 0, size: int = 32) -> Dataset:
    """Ten classes, each a smooth random colour template; an image is its template under random brightness and
    pixel noise. Deterministic from `seed`; a small CNN exceeds 90% test accuracy on it in seconds on a CPU, and
    FGSM at eps 4/255 roughly halves that, so tests can watch attacks and fine-tuning act."""
    rng = np.random.default_rng(seed)
    coarse = 0.5 + rng.uniform(-0.12, 0.12, size=(10, 3, 4, 4))
    templates = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                                align_corners=False).numpy()

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = rng.integers(0, 10, size=n)
        images = (templates[labels] + rng.uniform(-0.1, 0.1, size=(n, 1, 1, 1))
                  + rng.normal(0.0, 0.3, size=(n, 3, size, size)))
        pixels = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
        return torch.from_numpy(pixels), torch.from_numpy(labels.astype(np.int64))

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return Dataset(train_x, train_y, test_x, test_y, [f"class{i}" for i in range(10)],
                   {"source": "synthetic", "description": f"synthetic 10-class templates (seed {seed}, "
                    f"{n_train}/{n_test} images)", "checksum": f"synthetic:{seed}:{n_train}:{n_test}:{size}",
                    "lossy": False})


# --------------------------------------------------------------------------------------- batched augmentation
def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding `pad` and horizontal flip, for a whole batch at once on its device
    (torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, without a per-sample Python loop)."""
    shifts, flips = augmentation_draws(generator, [len(images)], pad)
    return crop_flip(images, shifts.to(images.device), flips.to(images.device), pad)


def augmentation_draws(generator: torch.Generator, batches: list[int], pad: int = 4
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The crop offsets (2 x N) and flips (N) of consecutive batches of these sizes, drawn on the CPU from
    `generator` in the order per-batch `augment` calls would draw them (offsets, then flips, batch by batch),
    so drawing a whole epoch at once gives the same numbers and one host-to-device copy instead of one
    blocking copy per step."""
    shifts, flips = [], []
    for n in batches:
        shifts.append(torch.randint(0, 2 * pad + 1, (2, n), generator=generator))
        flips.append(torch.rand(n, generator=generator) < 0.5)
    return torch.cat(shifts, 1), torch.cat(flips)


def crop_flip(images: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """`images` cropped at `shifts` from their zero-padded versions and flipped where `flips`, on their device."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = shifts[0][:, None] + torch.arange(h, device=images.device)  # n x h
    cols = shifts[1][:, None] + torch.arange(w, device=images.device)  # n x w
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
