"""Training-time variable R: a seeded sampler for the loop count, and truncated backprop.

The paper trains at one R and finds quality falls on both sides of it at inference (SPEC §4); it
names training over a distribution of R as the fix. This module is that recipe option, applied
from outside the model (the model already runs any R):

- `LoopSampler`: R per step from `LoopSampling` (fixed / uniform / Poisson-lognormal), drawn from
  its own seeded CPU generator (no device sync; its state is checkpointed, so resume is exact);
- `TruncatedBackprop`: backprop through only the last k loops, Huginn-style: the first R - k loops
  run with autograd off (no graph, no activation memory), the last k with it on. It works by
  switching grad mode in forward pre-hooks on the modules that run once per loop (loop embedding,
  blend, core, gate), so the model code stays free of training concerns.
  The anchor K/V is computed before the loops with autograd on, so the prelude still learns
  through the last k loops' cross-attention.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from cart.config import CARTConfig
from cart.train.config import LoopSampling


class LoopSampler:
    def __init__(self, spec: LoopSampling, model_config, seed: int):
        self.spec = spec
        self.default = model_config.n_loops if isinstance(model_config, CARTConfig) else model_config.n_layers
        self.generator = torch.Generator(device="cpu").manual_seed(seed + 0x5EED)

    def sample(self) -> int:
        """The loop count of the next step."""
        s = self.spec
        if s.kind == "fixed":
            return self.default
        if s.kind == "uniform":
            return int(torch.randint(s.min_loops, s.max_loops + 1, (1,), generator=self.generator))
        mean = s.mean or self.default
        tau = torch.normal(math.log(mean) - s.sigma ** 2 / 2, s.sigma, (1,), generator=self.generator)
        r = int(torch.poisson(tau.exp(), generator=self.generator))
        r = max(r, s.min_loops)
        return min(r, s.max_loops) if s.max_loops else r

    def max_loops(self) -> int:
        """The largest R a step can draw (the memory check uses it); unbounded draws report 2x the mean."""
        s = self.spec
        if s.kind == "fixed":
            return self.default
        if s.kind == "uniform" or s.max_loops:
            return s.max_loops
        return max(s.min_loops, 2 * int(math.ceil(s.mean or self.default)))

    def grad_loops(self, R: int) -> int:
        """How many of R loops get gradients."""
        k = self.spec.backprop_loops
        return R if k == 0 else min(k, R)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def per_loop_modules(model: nn.Module) -> list[tuple[nn.Module, int | None]]:
    """Every module that runs once in each loop iteration, with the loop it belongs to when that is
    fixed (an unshared block) or None when its call count is the loop index (a shared module)."""
    c = model.config
    if isinstance(c, CARTConfig):
        shared = [m for m in (model.loop_embed, model.hyper, model.gate) if m is not None]
        if model.anchor is not None and not c.freeze_kv:
            shared.append(model.anchor)  # recomputed every loop (the unfrozen-K/V ablation)
        out = [(m, None) for m in shared]
        out += [(m, None) for m in model.cores] if c.share_core else [(m, i) for i, m in enumerate(model.cores)]
        return out
    return [(model.layers[0], None)] if c.share_layers else [(m, i) for i, m in enumerate(model.layers)]


class TruncatedBackprop:
    """Runs loops 0 .. R-k-1 with autograd off. Use `with tb.window(R, k): model(...)`.

    Every module of a loop sets the grad mode of its loop before it runs, so the switch does not
    depend on the order of the calls inside a loop iteration."""

    def __init__(self, model: nn.Module):
        self._cut = 0
        self._loop_of: dict[int, int | None] = {}
        self._calls: dict[int, int] = {}
        self._handles = []
        for m, fixed in per_loop_modules(model):
            self._loop_of[id(m)] = fixed
            self._handles.append(m.register_forward_pre_hook(self._hook))

    def _hook(self, module, args):
        if not self._cut:
            return
        r = self._loop_of[id(module)]
        if r is None:
            r = self._calls.get(id(module), 0)
            self._calls[id(module)] = r + 1
        torch.set_grad_enabled(r >= self._cut)

    @contextmanager
    def window(self, n_loops: int, grad_loops: int):
        self._calls.clear()
        self._cut = n_loops - grad_loops if torch.is_grad_enabled() and grad_loops < n_loops else 0
        try:
            with torch.enable_grad() if self._cut else _null():  # restores grad mode even if the forward raises
                yield
        finally:
            self._cut = 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@contextmanager
def _null():
    yield
