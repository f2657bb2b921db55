"""CUDA-only branches run on a CPU where they can be forced (no GPU has run this code yet): the CUDA generator's
state in the attacks' RNG guard (adapters.rng), with torch.cuda's RNG functions standing in for a device. The
training step's branches: tests/test_train.py::test_the_cuda_step_policy_runs_on_a_cpu; the attack batch's
out-of-memory fallback: tests/test_numbers_trustworthy.py (a planted torch.OutOfMemoryError)."""
from __future__ import annotations

import torch

from adapters import Attack


class FakeCudaGenerator:
    """torch.cuda's RNG functions over one fake device: a state that a draw advances."""

    def __init__(self):
        self.state = torch.zeros(16, dtype=torch.uint8)
        self.sets = 0

    def draw(self):
        self.state = self.state + 1

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=0: self.state.clone())

        def set_state(state, device=0):
            self.sets += 1
            self.state = state.clone()

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
        monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: None)
        monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)


class DrawsOnCuda(Attack):
    name = "draws-on-cuda"

    def __init__(self, generator, draw: bool):
        super().__init__()
        self.generator, self.draw = generator, draw

    def perturb(self, model, images, labels, *, positions):
        if self.draw:
            self.generator.draw()  # as a toolkit's torch.rand(..., device="cuda") would
        return images.clone()


def test_a_draw_from_the_cuda_generator_is_seen_and_its_state_restored(monkeypatch):
    generator = FakeCudaGenerator()
    generator.install(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images, labels = torch.rand(2, 3, 2, 2), torch.tensor([0, 1])
    quiet = DrawsOnCuda(generator, draw=False)
    quiet(model, images, labels)
    assert quiet.batch_invariant and generator.sets >= 1  # the guard forked and restored the CUDA state
    drawing = DrawsOnCuda(generator, draw=True)
    drawing(model, images, labels)
    assert not drawing.batch_invariant  # a draw no image owns: flagged batch-dependent
    assert torch.equal(generator.state, torch.zeros(16, dtype=torch.uint8))  # restored after the call
