import torch

from benchmark import models
from benchmark.train import Schedule, fit, predict


def _train(data, seed=0):
    torch.manual_seed(seed)
    model = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3)
    fit(model, data.train_x[:600], data.train_y[:600], epochs=1, batch_size=100, schedule=Schedule(), seed=seed,
        augment=True)
    return model


def test_training_raises_accuracy_above_90_percent(synthetic, trained):
    torch.manual_seed(0)
    untrained = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3).eval()
    before = (predict(untrained, synthetic.test_x) == synthetic.test_y).float().mean()
    after = (predict(trained, synthetic.test_x) == synthetic.test_y).float().mean()
    assert before < 0.3 and after > 0.9


def test_training_is_bit_deterministic_on_cpu(synthetic):
    a, b = _train(synthetic), _train(synthetic)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c = _train(synthetic, seed=1)
    assert not torch.equal(a.state_dict()["net.0.weight"], c.state_dict()["net.0.weight"])


def test_early_stop_restores_best_epoch(synthetic):
    torch.manual_seed(0)
    model = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3)
    val = (synthetic.test_x[:200], synthetic.test_y[:200])
    history = fit(model, synthetic.train_x[:200], synthetic.train_y[:200], epochs=30, batch_size=50,
                  schedule=Schedule(lr=3e-3), seed=0, val=val, patience=2)
    losses = [e["val_loss"] for e in history.epochs]
    assert history.stopped_early and len(losses) < 30
    assert history.best_epoch == 1 + losses.index(min(losses))


def test_slow_start_fast_decay_schedule():
    s = Schedule("slow-start-fast-decay", lr=1e-3, warmup=0.25, final=0.01)
    lrs = [s.at(i, 8) for i in range(8)]
    assert lrs[:2] == [5e-4, 1e-3]  # linear warm-up over 2 of 8 steps
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # then strictly decaying
    assert abs(lrs[-1] - 1e-5) < 1e-12
    assert Schedule("constant", lr=1e-3).at(5, 8) == 1e-3


def test_killed_training_resumes_from_its_checkpoint_to_the_same_weights(synthetic, tmp_path):
    import pytest

    from benchmark.store import Store
    from benchmark.train import Checkpoint

    x, y, val = synthetic.train_x[:400], synthetic.train_y[:400], (synthetic.test_x[:200], synthetic.test_y[:200])

    def run(checkpoint=None, init_seed=0):
        torch.manual_seed(init_seed)
        model = models.build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3)
        history = fit(model, x, y, epochs=4, batch_size=100, schedule=Schedule(), seed=0, augment=True, val=val,
                      patience=10, checkpoint=checkpoint)
        return model, history

    reference, reference_history = run()

    class Killed(Exception):
        pass

    store = Store(tmp_path)

    def save_then_die(state):
        store.put_state("checkpoints", "k", state)
        if len(state["epochs"]) == 2:
            raise Killed

    with pytest.raises(Killed):
        run(Checkpoint(load=lambda: None, save=save_then_die, every_s=0))
    # A different initialisation proves the weights come from the checkpoint, not from the seed.
    resumed, history = run(Checkpoint(load=lambda: store.get_tensors("checkpoints", "k"), save=lambda s: None,
                                      every_s=0), init_seed=1)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4] and history.epochs == reference_history.epochs
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name


def test_the_cuda_step_policy_runs_on_a_cpu():
    """The CUDA-only branches of a training step (channels_last layout, bf16 autocast), executed on the CPU by
    handing fit the policy CUDA gets: the same lines run, the weights stay fp32 and training still learns."""
    from benchmark.data import synthetic
    from benchmark.models import build
    from benchmark.train import Schedule, StepPolicy, fit

    assert StepPolicy.on(torch.device("cuda")) == StepPolicy(channels_last=True, bf16=True)
    assert StepPolicy.on(torch.device("cuda"), mixed_precision=False).bf16 is False
    assert StepPolicy.on(torch.device("cpu")) == StepPolicy(channels_last=False, bf16=False)
    data = synthetic(256, 10)
    torch.manual_seed(0)
    model = build("small-cnn", mean=[0.5] * 3, std=[0.5] * 3)
    seen = []
    model.net[0].register_forward_hook(lambda m, inp, out: seen.append(
        (out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last))))
    history = fit(model, data.train_x, data.train_y, epochs=2, batch_size=64, schedule=Schedule(lr=1e-2), seed=0,
                  augment=True, policy=StepPolicy(channels_last=True, bf16=True))
    assert seen[0] == (torch.bfloat16, True)  # autocast and the layout acted in the step
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert history.epochs[1]["train_loss"] < history.epochs[0]["train_loss"]
