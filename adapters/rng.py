"""Per-image random draws: what an attack draws for an image depends on the attack's seed and the image's position
in the evaluation, never on how the evaluation was cut into attack batches (which on a GPU follows free memory).

    with per_image_rng(seed, positions, images[0].numel()) as draws:
        adv = some_attack(images)          # images[i] sits at evaluation position positions[i]
    draws.batch_invariant                  # False if the attack drew anything not tied to one image

Inside the context, a random draw shaped like the images (first dimension the batch, len(positions), and as many
values per row as an image has) is made row by row: row i from its own generator seeded by (seed,
positions[i], k), k counting the draws of this call. That covers the
random starts of torchattacks (`torch.empty_like(x).uniform_()`, `torch.rand(x.shape)`, `randn_like`, ...) and
of ART (`np.random.uniform(size=(n, d))` in `art.utils.random_sphere`, ...). Any other draw cannot be tied to an
image: it comes from the global generators (Python's `random`, numpy's, torch's), which the context seeds from
`seed` and restores afterwards, or from a private numpy generator made without a seed, which gets one derived
from `seed`; any such draw (seen between the attack's own reseeds, which are no draws) marks the call as not
batch-invariant, so a report can say so instead of pretending.

Why in-house: no toolkit offers counter-based per-example randomness; torch's and numpy's generators are
per-stream, and reseeding per batch replays one stream for every batch. The samplers are patched process-wide for
the duration of the block: one attack call at a time per process (executors scale out with processes).
"""
from __future__ import annotations

import contextlib
import math
import random
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch


def image_seeds(seed: int, positions: Sequence[int], draw: int) -> list[int]:
    """One 63-bit seed per image for the `draw`-th random draw of an attack call (numpy's SeedSequence mixing)."""
    return [int(np.random.SeedSequence([seed, int(p), draw]).generate_state(2, np.uint64)[0] >> np.uint64(1))
            for p in positions]


def image_generators(seed: int, positions: Sequence[int], draw: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in image_seeds(seed, positions, draw)]


# torch: the in-place samplers (Tensor methods) and the factories that draw, each factory with the in-place
# sampler it maps to. They are patched for the duration of a call, not intercepted through a TorchFunctionMode,
# which would tax every tensor operation of the attack (2x on a small CNN's JSMA).
_INPLACE = ("uniform_", "normal_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_", "geometric_")
_FACTORIES = {"rand_like": "uniform_", "randn_like": "normal_", "rand": "uniform_", "randn": "normal_"}
_ORIGINAL_INPLACE = {name: getattr(torch.Tensor, name) for name in _INPLACE}
_DATALOADER = str(Path("torch", "utils", "data", "dataloader.py"))


def _size(args: tuple, kwargs: dict) -> tuple[int, ...] | None:
    size = kwargs.get("size", args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
    try:
        return tuple(int(s) for s in size)
    except (TypeError, ValueError):
        return None


# numpy: the global-RNG functions ART calls, each with the Generator method that draws the same distribution and
# the position of `size` among its arguments (the same in both; None: the shape is the arguments themselves).
_NUMPY = {"uniform": ("uniform", 2), "normal": ("normal", 2), "random_sample": ("random", 0),
          "random": ("random", 0), "rand": ("random", None), "randn": ("standard_normal", None),
          "standard_normal": ("standard_normal", 0), "randint": ("integers", 2), "choice": ("choice", 1)}


class _Draws:
    def __init__(self, seed: int, positions: Sequence[int], features: int):
        self.seed, self.positions, self.n, self.count = seed, [int(p) for p in positions], len(positions), 0
        self.features = features

    def per_image(self, shape: Sequence[int]) -> bool:
        """A draw of one value per feature of every image; any other shape is no image's own."""
        return len(shape) > 0 and shape[0] == self.n and math.prod(shape[1:]) == self.features

    def _next(self) -> list[int]:
        self.count += 1
        return image_seeds(self.seed, self.positions, self.count)

    def torch_generators(self, device: torch.device) -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(s) for s in self._next()]

    def _fill_rows(self, out: torch.Tensor, sampler: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        original = _ORIGINAL_INPLACE[sampler]
        for row, gen in zip(out, self.torch_generators(out.device)):
            original(row, *args, **kwargs, generator=gen)
        return out

    def torch_inplace(self, name: str) -> Callable:
        original = _ORIGINAL_INPLACE[name]

        def draw(tensor: torch.Tensor, *args: Any, **kwargs: Any):
            if self.per_image(tensor.shape) and kwargs.get("generator") is None:
                return self._fill_rows(tensor, name, *args, **kwargs)
            if tensor.dim() == 0 and sys._getframe(1).f_code.co_filename.endswith(_DATALOADER):
                # Every DataLoader iteration (ART's predict) draws a seed for its worker processes; without
                # workers it is never used, so it must not advance the stream or count as a draw.
                with torch.random.fork_rng(devices=[]):
                    return original(tensor, *args, **kwargs)
            return original(tensor, *args, **kwargs)

        return draw

    def torch_factory(self, name: str, original: Callable) -> Callable:
        sampler = _FACTORIES[name]

        def draw(*args: Any, **kwargs: Any):
            if kwargs.get("generator") is None:
                if name.endswith("_like") and self.per_image(args[0].shape):
                    return self._fill_rows(torch.empty_like(*args, **kwargs), sampler)
                size = None if name.endswith("_like") else _size(args, kwargs)
                if size and self.per_image(size):
                    out = torch.empty(size, dtype=kwargs.get("dtype"), device=kwargs.get("device"))
                    return self._fill_rows(out, sampler)
            return original(*args, **kwargs)

        return draw

    def numpy_rows(self, name: str, original: Callable) -> Callable:
        method, size_at = _NUMPY[name]

        def draw(*args: Any, **kwargs: Any):
            if size_at is None:  # rand(d0, d1, ...), randn(d0, d1, ...)
                shape, call = tuple(args), lambda g: getattr(g, method)(size=shape[1:], **kwargs)
            else:
                positional = "size" not in kwargs and len(args) > size_at
                size = args[size_at] if positional else kwargs.get("size")
                shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size or ())
                rest = list(args)
                if positional:
                    rest[size_at] = shape[1:]
                call = lambda g: getattr(g, method)(*rest, **{**kwargs, **({} if positional else  # noqa: E731
                                                                             {"size": shape[1:]})})
            if not self.per_image(shape):
                return original(*args, **kwargs)
            return np.stack([call(np.random.default_rng(s)) for s in self._next()])

        return draw


class _Globals:
    """The process-wide generators (Python's `random`, numpy's, torch's CPU and current CUDA one), seeded from the
    attack's seed for a call and restored after it. Whether the call drew from them is read off their states
    between reseeds: every reseed inside the call (torchattacks' APGD, FAB and Square call
    `torch.random.manual_seed`) first checks for a draw since the last known state and then takes the new state
    as known, so a reseed neither raises a false alarm nor hides the draws before it."""

    def __init__(self, seed: int):
        self.seed, self.drew, self.fresh = seed, False, 0
        self.devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []

    def unseeded(self) -> int:
        """A private generator made without a seed (ART's Boundary, HopSkipJump and BrendelBethge attacks call
        `np.random.RandomState()`: OS entropy) gets one derived from the attack's seed, and counts as a draw no
        image owns."""
        self.drew, self.fresh = True, self.fresh + 1
        return int(np.random.SeedSequence([self.seed, 0x5EED, self.fresh]).generate_state(1)[0])

    def generator_factories(self) -> list[tuple[Any, str, Any]]:
        owner = self
        original_rng, original_state = np.random.default_rng, np.random.RandomState

        class RandomState(original_state):
            def __init__(self, seed=None):
                super().__init__(owner.unseeded() if seed is None else seed)

        def default_rng(seed=None):
            return original_rng(owner.unseeded() if seed is None else seed)

        return [(np.random, "RandomState", RandomState), (np.random, "default_rng", default_rng)]

    def states(self) -> tuple:
        return (random.getstate(), _numpy_fingerprint(), torch.get_rng_state().numpy().tobytes(),
                *(torch.cuda.get_rng_state(d).numpy().tobytes() for d in self.devices))

    def checkpoint(self) -> None:
        """Note whether anything was drawn since the last known state; the present state becomes the known one."""
        now = self.states()
        self.drew |= now != self.known
        self.known = now

    def watching(self, reseed: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any):
            self.checkpoint()
            try:
                return reseed(*args, **kwargs)
            finally:
                self.known = self.states()

        return wrapped

    @contextlib.contextmanager
    def seeded(self):
        saved = random.getstate(), np.random.get_state()
        reseeds = [(random, "seed"), (np.random, "seed"), (torch, "manual_seed"), (torch.random, "manual_seed")]
        originals = [getattr(owner, name) for owner, name in reseeds]
        factories = self.generator_factories()
        factory_originals = [getattr(owner, name) for owner, name, _ in factories]
        with torch.random.fork_rng(devices=self.devices):
            random.seed(self.seed)
            np.random.seed(self.seed % 2 ** 32)
            torch.manual_seed(self.seed)
            self.known = self.states()
            try:
                for (owner, name), fn in zip(reseeds, originals):
                    setattr(owner, name, self.watching(fn))
                for owner, name, replacement in factories:
                    setattr(owner, name, replacement)
                yield self
            finally:
                for (owner, name), fn in zip(reseeds, originals):
                    setattr(owner, name, fn)
                for (owner, name, _), fn in zip(factories, factory_originals):
                    setattr(owner, name, fn)
                self.checkpoint()
                random.setstate(saved[0])
                np.random.set_state(saved[1])


@contextlib.contextmanager
def per_image_rng(seed: int, positions: Sequence[int], features: int):
    """Make every image-shaped random draw of the enclosed attack call per-image (module docstring); `features`:
    values per image. Yields an object whose `batch_invariant` says, after the block, whether nothing else was
    drawn."""
    draws = _Draws(seed, positions, features)
    originals = {name: getattr(np.random, name) for name in _NUMPY}
    factories = {name: getattr(torch, name) for name in _FACTORIES}
    own_methods = {name: vars(torch.Tensor).get(name) for name in _INPLACE}  # None: inherited from the C base
    with _Globals(seed).seeded() as globals_:
        try:
            for name, fn in originals.items():
                setattr(np.random, name, draws.numpy_rows(name, fn))
            for name, fn in factories.items():
                setattr(torch, name, draws.torch_factory(name, fn))
            for name in _INPLACE:
                setattr(torch.Tensor, name, draws.torch_inplace(name))
            yield draws
        finally:
            for name, fn in originals.items():
                setattr(np.random, name, fn)
            for name, fn in factories.items():
                setattr(torch, name, fn)
            for name, method in own_methods.items():
                if method is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, method)
    draws.batch_invariant = not globals_.drew


def _numpy_fingerprint() -> tuple:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, keys.tobytes(), pos, has_gauss, cached
