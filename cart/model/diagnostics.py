"""Stability diagnostics of the loop, computed from a model without any training code (SPEC §6.3).

- `loop_stats`: per-loop update norms ||h_{r+1} - h_r|| and their ratios (the measured contraction);
- `loop_jacobian_norm`: power-iteration estimate of the spectral norm of the Jacobian of one loop
  step h -> gate(h~, core(h~)) at the final loop state, with the blend collapsed to that state
  (the map a fixed point of the recurrence would have to contract);
- `gate_stats` / `hyper_weights` live on the model itself.

The published "spectral radius" is max sigmoid(a): a property of one parameter vector, not of the
loop. These measure the loop.
"""
from __future__ import annotations

import torch
from torch.func import jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from cart.model.cart import CART


@torch.no_grad()
def loop_stats(model, idx: torch.Tensor, n_loops: int | None = None) -> dict[str, list[float]]:
    stats: dict = {}
    model(idx, n_loops=n_loops, stats=stats)
    return {k: v.tolist() for k, v in stats.items()}


def loop_jacobian_norm(model: CART, idx: torch.Tensor, n_loops: int | None = None, iters: int = 8, seed: int = 0) -> float:
    """Estimate ||J||_2 of the loop step at the last loop state (power iteration on J^T J)."""
    if not isinstance(model, CART):
        raise TypeError("loop_jacobian_norm applies to CART models")
    R = model.resolve_loops(n_loops)
    with torch.no_grad():
        e, kv = model.anchor_state(idx)
        states = [e, e, e]
        for r in range(R):  # all R loops: the Jacobian is taken at the final loop state
            h, kv = model.loop_step(r, states, kv)
            states = [h, states[0], states[1]]
        h0 = states[0]

    def step(h: torch.Tensor) -> torch.Tensor:
        # loop R-1's map with the blend collapsed onto one state (the weights sum to 1: blend([h, h, h]) = h)
        return model.loop_step(R - 1, [h, h, h], kv)[0]

    h0 = h0.detach()
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(h0.shape, generator=g).to(h0)
    v = v / v.norm()
    sigma = 0.0
    # the math SDPA backend is made of ordinary ops, so forward-mode AD (jvp) works through it
    with sdpa_kernel(SDPBackend.MATH):
        _, pullback = vjp(step, h0)
        for _ in range(iters):
            _, jv = jvp(step, (h0,), (v,))
            (jtjv,) = pullback(jv)
            sigma = jv.norm().item()
            v = jtjv / jtjv.norm().clamp_min(1e-30)
    return sigma
