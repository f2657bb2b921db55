import math

import numpy as np
import pytest
import torch
from torch import nn

from adapters import get_attack
from adapters.catalog import runnable
from benchmark.models import Normalized


def test_fgsm_adapter_equals_torchattacks_bit_for_bit(trained, batch):
    import torchattacks

    x, y = batch
    ours = get_attack("torchattacks.FGSM", eps=0.01)(trained, x, y)
    direct = torchattacks.FGSM(trained, eps=0.01)(x, y)
    assert torch.equal(ours, direct)
    assert torchattacks.FGSM(trained, eps=0.01).normalization_used is None  # no second normalization
    delta = (ours - x).abs()
    interior = (x > 0.02) & (x < 0.98)
    assert torch.allclose(delta[interior], torch.full_like(delta[interior], 0.01), atol=1e-6)
    assert float(delta.max()) <= 0.01 + 1e-6


@pytest.mark.parametrize("name,params", [("torchattacks.FGSM", {"eps": 0.05}),
                                         ("torchattacks.PGD", {"eps": 0.03, "steps": 3}),
                                         ("jsma-origin", {"gamma": 0.01}),
                                         ("jsma-origin", {"mode": "paper-code"}),
                                         ("art.SaliencyMapMethod", {"gamma": 0.01}),
                                         ("art.FastGradientMethod", {"eps": 0.05})])
def test_contract_shape_dtype_range_no_mutation(trained, batch, name, params):
    x, y = batch
    x_before, y_before = x.clone(), y.clone()
    adv = get_attack(name, **params)(trained, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert not trained.training


def test_art_jsma_equals_direct_art_call_with_same_targets(trained, batch):
    from art.attacks.evasion import SaliencyMapMethod
    from art.estimators.classification import PyTorchClassifier

    from adapters.via_art import choose_targets

    x, y = batch
    x, y = x[:16], y[:16]
    ours = get_attack("art.SaliencyMapMethod", theta=1.0, gamma=0.02, targets="random", seed=3)(trained, x, y)
    with torch.no_grad():
        targets = choose_targets("random", y, trained(x), seed=3)
    assert not bool((targets == y).any())
    classifier = PyTorchClassifier(trained, loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32), nb_classes=10,
                                   clip_values=(0.0, 1.0), device_type="cpu")
    direct = SaliencyMapMethod(classifier, theta=1.0, gamma=0.02, batch_size=16, verbose=False).generate(
        x.numpy(), y=np.eye(10, dtype=np.float32)[targets.numpy()])
    assert np.array_equal(ours.numpy(), direct)


def test_target_rules_never_pick_the_true_label():
    from adapters.via_art import choose_targets

    labels = torch.arange(10).repeat(20)
    logits = torch.randn(200, 10)
    for rule in ("random", "next", "least-likely"):
        assert not bool((choose_targets(rule, labels, logits, seed=0) == labels).any()), rule
    assert torch.equal(choose_targets("next", labels, logits, 0), (labels + 1) % 10)
    assert torch.equal(choose_targets("random", labels, logits, 5), choose_targets("random", labels, logits, 5))


def test_jsma_origin_respects_budget_and_beats_art(trained, batch):
    x, y = batch
    gamma = 0.01
    ours = get_attack("jsma-origin", theta=1.0, gamma=gamma)(trained, x, y)
    art = get_attack("art.SaliencyMapMethod", theta=1.0, gamma=gamma, targets="random")(trained, x, y)
    d = x[0].numel()
    l0 = ((ours - x).abs() > 0).flatten(1).sum(1)
    assert int(l0.max()) <= math.floor(gamma * d)
    with torch.no_grad():
        correct = trained(x).argmax(1) == y
        ours_success = ((trained(ours).argmax(1) != y) & correct).sum()
        art_success = ((trained(art).argmax(1) != y) & correct).sum()
    assert int(ours_success) >= int(art_success) > 0


def test_jsma_origin_leaves_misclassified_images_alone(trained, batch):
    x, y = batch
    wrong = (y + 1) % 10  # every image is "misclassified" against these labels: nothing to do
    assert torch.equal(get_attack("jsma-origin", gamma=0.05)(trained, x, wrong), x)


def _linear_model():
    """Logits = W @ normalized pixels on 3x1x1 images, with W chosen so every sign below is hand-checkable."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, -2.0]]))
    return Normalized(net, [0.5] * 3, [0.5] * 3).eval()


def test_paper_code_fgsm_matches_the_authors_formula_by_hand():
    # z = (x - .5) / .5 = [-0.6, 0.2, 0.8]; for y = 0 the CE gradient has the sign of W1 - W0 = [-2, 2, -4];
    # z + 0.01 * sign = [-0.61, 0.21, 0.79]; clamp to [0,1] -> [0, 0.21, 0.79]; pixels: [0.5, 0.605, 0.895].
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1)
    adv = get_attack("torchattacks.FGSM", eps=0.01, space="normalized")(_linear_model(), x, torch.tensor([0]))
    assert torch.allclose(adv.flatten(), torch.tensor([0.5, 0.605, 0.895]), atol=1e-6)


def test_paper_code_jsma_matches_the_authors_formula_by_hand():
    # s = grad(z_0 - z_0 - z_1) = -W1 = [1, -1, 2]; z + 0.01 * sign(s) = [-0.59, 0.19, 0.81]; clamp -> [0, .19,
    # .81]; pixels: [0.5, 0.595, 0.905].
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1)
    adv = get_attack("jsma-origin", mode="paper-code", eps=0.01)(_linear_model(), x, torch.tensor([0]))
    assert torch.allclose(adv.flatten(), torch.tensor([0.5, 0.595, 0.905]), atol=1e-6)


def test_normalized_space_with_zero_eps_is_the_clamp_alone(trained, batch):
    x, y = batch
    adv = get_attack("torchattacks.FGSM", eps=0.0, space="normalized")(trained, x, y)
    assert torch.allclose(adv, x.clamp(min=0.5), atol=1e-6)


@pytest.mark.parametrize("adapter, params", [("torchattacks.Square", {"n_queries": 5}), ("torchattacks.CW", {"steps": 2})])
def test_normalized_space_clamps_the_images_an_attack_hands_back_unchanged(trained, batch, adapter, params):
    # Misclassified against these labels: Square and CW return such images untouched, and the clamp of every
    # output (FGSM's own clip does it) must still act, or they would escape what the other attacks all apply.
    x, _ = batch
    with torch.no_grad():
        wrong = (trained(x).argmax(1) + 1) % 10
    adv = get_attack(adapter, space="normalized", **params)(trained, x, wrong)
    assert torch.allclose(adv, x.clamp(min=0.5), atol=1e-6)


def test_seeded_attacks_repeat_and_leave_global_rng_alone(trained, batch):
    x, y = batch
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = get_attack("torchattacks.PGD", eps=0.03, steps=2, random_start=True, seed=7)(trained, x, y)
    assert torch.equal(state, torch.get_rng_state())
    b = get_attack("torchattacks.PGD", eps=0.03, steps=2, random_start=True, seed=7)(trained, x, y)
    c = get_attack("torchattacks.PGD", eps=0.03, steps=2, random_start=True, seed=8)(trained, x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name,params,match", [
    ("foolbox.FGSM", {}, "unknown attack"),
    ("torchattacks.NoSuch", {}, "valid: .*FGSM"),
    ("torchattacks.FGSM", {"epsilon": 0.1}, "unknown parameter.*valid: eps"),
    ("torchattacks.FGSM", {"eps": -0.1}, "eps must be >= 0"),
    ("torchattacks.FGSM", {"space": "logit"}, "space must be"),
    ("art.SaliencyMapMethod", {"targets": "nearest"}, "targets must be"),
    ("art.NoSuch", {}, "unknown ART"),
    ("jsma-origin", {"mode": "greedy"}, "mode must be"),
    ("jsma-origin", {"gamma": 2.0}, "gamma must be"),
    ("jsma-origin", {"alpha": 1}, "unknown parameter"),
])
def test_bad_parameters_raise_value_error(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_attack(name, **params)


def test_list_attacks_names_every_family_with_defaults():
    listing = runnable()
    assert listing["torchattacks.FGSM"]["eps"] == pytest.approx(8 / 255)
    assert listing["art.SaliencyMapMethod"]["theta"] == 0.1 and listing["art.SaliencyMapMethod"]["targets"] == "random"
    assert listing["jsma-origin"]["mode"] == "iterative"


def test_a_trial_cut_short_leaves_grad_mode_as_it_was(monkeypatch):
    """The time limit can land just after a toolkit's `torch.no_grad().__enter__` switched grad off: the trial
    restores the mode, so a later attack still gets gradients (seen under a loaded CPU as FGSM's 'element 0 of
    tensors does not require grad' in an unrelated test)."""
    from adapters import catalog

    attack = get_attack("torchattacks.FGSM", eps=0.01)

    def cut_short(*args, **kwargs):
        torch.set_grad_enabled(False)  # what no_grad().__enter__ does first
        raise catalog._TimeUp

    monkeypatch.setattr(attack, "perturb", cut_short)
    try:
        catalog.trial(attack)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)
