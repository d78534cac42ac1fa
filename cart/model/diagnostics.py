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
    c = model.config
    R = model.resolve_loops(n_loops)
    with torch.no_grad():
        e, kv = model.anchor_state(idx)
        states = [e, e, e]
        # run R-1 loops to reach the state the last loop starts from
        for r in range(R):
            h_tilde = model.hyper(states) if model.hyper is not None else states[0]
            if model.loop_embed is not None:
                h_tilde = h_tilde + model.loop_embed(r)
            core = model.cores[0 if c.share_core else r]
            kv_r = model.anchor(h_tilde) if (model.anchor is not None and not c.freeze_kv) else kv
            u = core(h_tilde, kv_r)
            h = model.gate(h_tilde, u) if model.gate is not None else u
            states = [h, states[0], states[1]]
    r_last = R - 1
    core = model.cores[0 if c.share_core else r_last]

    def step(h: torch.Tensor) -> torch.Tensor:
        h_tilde = h + model.loop_embed(r_last) if model.loop_embed is not None else h
        kv_r = model.anchor(h_tilde) if (model.anchor is not None and not c.freeze_kv) else kv
        u = core(h_tilde, kv_r)
        return model.gate(h_tilde, u) if model.gate is not None else u

    h0 = states[0].detach()
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
