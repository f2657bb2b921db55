import pytest
import torch

from benchmark import models
from benchmark.errors import UserError


@pytest.mark.parametrize("arch", sorted(models.ARCHITECTURES))
def test_shapes(arch):
    model = models.build(arch, mean=[0.5] * 3, std=[0.5] * 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cifar_stem_and_torchvision_stem_differ():
    cifar = models.build("resnet18-cifar", mean=[0.5] * 3, std=[0.5] * 3).net
    tv = models.build("resnet18-torchvision", mean=[0.5] * 3, std=[0.5] * 3).net
    assert cifar.conv1.kernel_size == (3, 3) and isinstance(cifar.maxpool, torch.nn.Identity)
    assert tv.conv1.kernel_size == (7, 7) and isinstance(tv.maxpool, torch.nn.MaxPool2d)


def test_normalization_is_inside_the_model():
    model = models.build("small-cnn", mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.5]).eval()
    x = torch.rand(3, 3, 32, 32)
    manual = (x - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net(manual))
    assert torch.allclose(model.denormalize(model.normalize(x)), x, atol=1e-6)


def test_unknown_arch():
    with pytest.raises(UserError, match="valid: resnet18-cifar"):
        models.build("vgg", mean=[0.5] * 3, std=[0.5] * 3)
