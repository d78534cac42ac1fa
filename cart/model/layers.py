"""Building blocks shared by every model: RMSNorm, SwiGLU, rotary position embedding, init.

Notable: SwiGLU keeps its gate and up projections in one matrix (one matmul instead of two, same
parameter count 3df); RoPE tables are buffers built once per model for max_seq_len positions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up fused into one [2f, d] weight."""

    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.d_ff = d_ff
        self.w_gate_up = nn.Linear(d, 2 * d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).split(self.d_ff, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Rotary(nn.Module):
    """Rotary embedding tables (base 10,000 by default) for head dim `head_dim`, rotate-half layout."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_seq_len, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # [T, D/2]
        # persistent=False: derived from the config, never saved in checkpoints
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x [B, H, T, D] for positions start .. start+T-1."""
        T = x.shape[-2]
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} positions exceeds max_seq_len={self.max_seq_len}")
        cos = self.cos[start:start + T].to(x.dtype)
        sin = self.sin[start:start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def init_weights(module: nn.Module, std: float) -> None:
    """The paper's init: every Linear and the embedding N(0, std); norm weights 1 (set by RMSNorm)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
