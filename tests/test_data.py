import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark import data
from benchmark.errors import UserError
from conftest import SHARED_JPEG


def _write_folder(root, classes=("cat", "dog"), per_split=3, suffix=".png"):
    rng = np.random.default_rng(0)
    expected = {}
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_split):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:04d}{suffix}")
                expected[(split, cls, i)] = pixels
    return expected


def test_image_folder_directory_decodes_exact_pixels_and_labels(tmp_path):
    expected = _write_folder(tmp_path / "imgs")
    ds = data.image_folder(tmp_path / "imgs")
    assert ds.classes == ["cat", "dog"]
    assert ds.train_x.shape == (6, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(ds.test_x[4].permute(1, 2, 0).numpy(), expected[("test", "dog", 1)])
    assert ds.identity["lossy"] is False and ds.identity["checksum"].startswith("sha256:")


def test_image_folder_tar_gz_read_in_place_and_cached(tmp_path):
    _write_folder(tmp_path / "src" / "top", suffix=".jpg")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "top", arcname="top")
    first = data.load("folder", archive)  # a 2-class archive: a `folder` source (cifar10 needs its 10 classes)
    assert first.identity["source"] == "folder" and first.identity["lossy"] is True
    cached = list((data.cache_dir() / "decoded").glob("*.npz"))
    assert len(cached) == 1
    second = data.image_folder(archive)
    assert torch.equal(first.train_x, second.train_x) and first.identity == second.identity


def test_image_folder_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.image_folder(tmp_path / "nope")
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="expected train"):
        data.image_folder(tmp_path / "bad")


def test_cifar10_python_batches_format(tmp_path, monkeypatch):
    """The original format, on a generated fixture (torchvision's md5 check is what we bypass here)."""
    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        blob = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (base / name).write_bytes(pickle.dumps(blob))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": data.CIFAR10_CLASSES}))
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(CIFAR10, "_load_meta", lambda self: setattr(self, "classes", data.CIFAR10_CLASSES))
    ds = data.cifar10(tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.identity["checksum"] == f"md5:{data.CIFAR10_MD5}" and not ds.identity["lossy"]


def test_cifar10_absent_offline_names_path_and_flag(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    def offline(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(UserError, match=r"not found at .*--data-dir"):
        data.load("cifar10", tmp_path / "empty")
    assert not (tmp_path / "empty").exists()  # the failed download leaves nothing behind
    with pytest.raises(UserError, match=r"data archive .*missing.tar.gz does not exist"):
        data.load("cifar10", tmp_path / "missing.tar.gz")
    assert not (tmp_path / "missing.tar.gz").exists()


def test_synthetic_is_deterministic(synthetic):
    again = data.synthetic(2000, 500)
    assert torch.equal(again.train_x, synthetic.train_x) and torch.equal(again.test_y, synthetic.test_y)
    assert sorted(synthetic.train_y.unique().tolist()) == list(range(10))


def test_augment_is_a_crop_of_the_padded_image_possibly_flipped():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = data.augment(images, gen, pad=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        views = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], v) or torch.equal(out[i], v.flip(-1)) for v in views)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_JPEG.exists(), reason="shared CIFAR-10 JPEG copy absent")
def test_shared_jpeg_copy_loads_as_cifar10():
    ds = data.load("cifar10", SHARED_JPEG)
    assert ds.classes == data.CIFAR10_CLASSES
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.identity["lossy"] and "JPEG" in ds.identity["description"]


def test_an_epoch_of_augmentation_drawn_at_once_equals_drawing_it_batch_by_batch():
    """fit draws an epoch's crops and flips in one go (one host-to-device copy, not a blocking one per step):
    the same numbers, so the same training, as per-batch `augment` calls on the same generator."""
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    per_batch, gen = [], torch.Generator().manual_seed(3)
    for start in range(0, 23, 5):
        per_batch.append(data.augment(images[start:start + 5], gen, pad=2))
    after_per_batch = torch.rand(1, generator=gen)
    gen = torch.Generator().manual_seed(3)
    shifts, flips = data.augmentation_draws(gen, [5, 5, 5, 5, 3], pad=2)
    at_once = [data.crop_flip(images[s:s + 5], shifts[:, s:s + 5], flips[s:s + 5], pad=2) for s in range(0, 23, 5)]
    assert all(torch.equal(a, b) for a, b in zip(per_batch, at_once)) and len(at_once) == 5
    assert torch.equal(torch.rand(1, generator=gen), after_per_batch)  # the generator left where it was
