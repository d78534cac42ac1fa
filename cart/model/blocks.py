"""The pre-norm transformer layer used for CART's prelude and coda, the dense baseline and the
homogeneous control: x += Attn(norm(x)); x += SwiGLU(norm(x))."""
from __future__ import annotations

import torch
from torch import nn

from cart.model.cache import DecodeCache
from cart.model.layers import RMSNorm, SwiGLU


class Block(nn.Module):
    def __init__(self, d: int, d_ff: int, attn: nn.Module, eps: float):
        super().__init__()
        self.norm_attn = RMSNorm(d, eps)
        self.attn = attn
        self.norm_mlp = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, x: torch.Tensor, cache: DecodeCache | None = None, key: str = "",
                doc_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm_attn(x)
        x = x + (self.attn(h, cache, key) if doc_mask is None else self.attn(h, cache, key, doc_mask=doc_mask))
        return x + self.mlp(self.norm_mlp(x))
