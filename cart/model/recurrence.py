"""The recurrent part of CART: loop-index embedding, hyper-connection blend, LTI gate, core block.

Fidelity lives here and only here (SPEC §6):
- gate, "stable": h = A*h~ + (u - h~): the carried state is multiplied by A = sigmoid(a) < 1.
  gate, "paper": h = A*h~ + u = (1 + A)*h~ + delta (the published double residual).
- no gate (the ablation) is the same gate with A fixed at 1, as the published code's `disable_lti`:
  "paper": h = h~ + u = 2*h~ + delta; "stable": h = h~ + delta = u (the plain residual).
- hyper blend, "stable": softmax logits [0, -gap, -gap] -> the pure residual [1, 0, 0] to fp32
  precision; convex at all times, so the carried-state gain stays <= max A < 1.
  hyper blend, "paper": softmax([1, 0, 0]) = [0.576, 0.212, 0.212], as published.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cart.model.attention import CrossAttention, MLASelfAttention
from cart.model.layers import RMSNorm, Rotary, SwiGLU


def sinusoid(r: int, dim: int, device=None) -> torch.Tensor:
    """Fixed sinusoidal code of loop index r (transformer-style, base 10,000). Defined for every r,
    so no loop count is ever capped; r < 16 reproduces the paper's 16-row table."""
    i = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    ang = r / (10_000.0 ** (i / dim))
    out = torch.empty(dim, dtype=torch.float64, device=device)
    out[0::2], out[1::2] = ang.sin(), ang.cos()
    return out.float()


class LoopIndexEmbedding(nn.Module):
    """h~ += W_lie pe(r), W_lie: 32 -> d (no bias)."""

    def __init__(self, d: int, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, d, bias=False)
        self._codes: dict[tuple[int, str], torch.Tensor] = {}

    def forward(self, r: int) -> torch.Tensor:
        w = self.proj.weight
        key = (r, str(w.device))
        code = self._codes.get(key)
        if code is None:  # computed once per (loop index, device), then reused without host work
            code = self._codes[key] = sinusoid(r, self.dim, w.device)
        return self.proj(code.to(w.dtype))


class LTIGate(nn.Module):
    """A = sigmoid(a), a in R^d initialised so that A = gate_init (0.9 -> a = ln 9)."""

    def __init__(self, d: int, init: float, fidelity: str):
        super().__init__()
        self.fidelity = fidelity
        self.a = nn.Parameter(torch.full((d,), math.log(init / (1 - init))))

    def reset_parameters(self, init: float) -> None:
        nn.init.constant_(self.a, math.log(init / (1 - init)))

    def coefficient(self) -> torch.Tensor:
        """The [d] factor on h~ added to u: A (published: A h~ + u = (1 + A) h~ + delta) or A - 1
        (contractive: A h~ + (u - h~) = A h~ + delta)."""
        A = torch.sigmoid(self.a)
        return A if self.fidelity == "paper" else A - 1

    def forward(self, h_tilde: torch.Tensor, u: torch.Tensor, coefficient: torch.Tensor | None = None) -> torch.Tensor:
        """One fused multiply-add over the state; `coefficient` may be given precomputed (decoding)."""
        coef = self.coefficient() if coefficient is None else coefficient
        return torch.addcmul(u, coef.to(u.dtype), h_tilde)


class FixedGate(nn.Module):
    """The "no LTI gate" ablation: the gate with A fixed at 1 and no parameter.

    paper:  h = 1*h~ + u          = 2 h~ + delta  (the published `disable_lti`)
    stable: h = 1*h~ + (u - h~)   = u             (the plain residual)
    """

    def __init__(self, fidelity: str):
        super().__init__()
        self.fidelity = fidelity

    def coefficient(self) -> None:
        return None  # nothing learned: nothing to precompute for decoding

    def forward(self, h_tilde: torch.Tensor, u: torch.Tensor, coefficient: None = None) -> torch.Tensor:
        return u + h_tilde if self.fidelity == "paper" else u


class HyperBlend(nn.Module):
    """h~ = sum_i w_i buffer[i] over the last 3 loop states, w = softmax(logits)."""

    def __init__(self, fidelity: str, gap: float):
        super().__init__()
        self.fidelity, self.gap = fidelity, gap
        self.logits = nn.Parameter(torch.zeros(3))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init = [1.0, 0.0, 0.0] if self.fidelity == "paper" else [0.0, -self.gap, -self.gap]
        with torch.no_grad():
            self.logits.copy_(torch.tensor(init))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=0)

    def forward(self, states: list[torch.Tensor], bias: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """sum_i w_i states[i] (+ bias, broadcast: the loop-index embedding), as three fused
        multiply-adds over the list (the ring buffer is never stacked or copied); `weights` may be
        given precomputed (decoding)."""
        w = (self.weights() if weights is None else weights).to(states[0].dtype)
        h = w[0] * states[0] if bias is None else torch.addcmul(bias.to(states[0].dtype), w[0], states[0])
        return torch.addcmul(torch.addcmul(h, w[1], states[1]), w[2], states[2])


class CoreBlock(nn.Module):
    """u = h~ + Attn(norm(h~)); u = u + SwiGLU(norm(u)).

    attention="cross": causal cross-attention to the anchor K/V (2d²).
    attention="self": an MLA self-attention layer (2.75d², RoPE), for the self-attention-core ablation.
    """

    def __init__(self, d: int, d_ff: int, d_latent: int, attention: str, eps: float, rotary: Rotary | None):
        super().__init__()
        self.attention = attention
        self.norm_attn = RMSNorm(d, eps)
        self.attn = CrossAttention(d) if attention == "cross" else MLASelfAttention(d, d_latent, rotary)
        self.norm_mlp = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, h: torch.Tensor, kv=None, cache=None, key: str = "", doc_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm_attn(h)
        extra = {} if doc_mask is None else {"doc_mask": doc_mask}  # the unmasked call stays as it was
        a = self.attn(x, *kv, **extra) if self.attention == "cross" else self.attn(x, cache, key, **extra)
        u = h + a
        return u + self.mlp(self.norm_mlp(u))
