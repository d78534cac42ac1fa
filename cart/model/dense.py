"""Dense baseline (SPEC §2) and the homogeneous control.

attention="mha": full-rank multi-head attention (4d²) with RoPE at every layer, the paper's
baseline. attention="mla": CART's own prelude layer at every depth, no prelude/anchor/core/coda
split (the control the paper asks for); share_layers=True runs one such block n_layers times
(a classic looped transformer that recomputes K/V at every step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cart.config import HEAD_DIM, DenseConfig
from cart.model.attention import MHASelfAttention, MLASelfAttention
from cart.model.blocks import Block
from cart.model.cache import DecodeCache
from cart.model.cart import _document_mask
from cart.model.layers import RMSNorm, Rotary, cross_entropy, init_weights


class Dense(nn.Module):
    def __init__(self, config: DenseConfig):
        super().__init__()
        self.config = c = config
        d = c.d_model
        self.embed = nn.Embedding(c.vocab_size, d)
        self.rotary = Rotary(HEAD_DIM, c.max_seq_len, c.rope_base)

        def make_attn():
            return MHASelfAttention(d, self.rotary) if c.attention == "mha" else MLASelfAttention(d, c.d_latent, self.rotary)

        n_unique = 1 if c.share_layers else c.n_layers
        self.layers = nn.ModuleList(Block(d, c.d_ff, make_attn(), c.norm_eps) for _ in range(n_unique))
        self.norm = RMSNorm(d, c.norm_eps)
        init_weights(self, c.init_std)

    def resolve_loops(self, n_loops: int | None) -> int:
        """Depth to run: n_layers, or any depth when the layers are shared (variable-depth inference)."""
        if n_loops is None:
            return self.config.n_layers
        if not self.config.share_layers:
            raise ValueError(f"n_loops={n_loops} requested, but this dense model has {self.config.n_layers} unshared layers")
        if int(n_loops) < 1:
            raise ValueError(f"n_loops must be >= 1, got {n_loops}")
        return int(n_loops)

    def forward(self, idx: torch.Tensor, n_loops: int | None = None, cache: DecodeCache | None = None, stats: dict | None = None,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, T] -> logits; doc_ids [B, T]: attention does not cross documents (as CART.forward)."""
        c = self.config
        depth = self.resolve_loops(n_loops)
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > c.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's max_seq_len={c.max_seq_len}")
        mask = _document_mask(doc_ids, idx, cache)
        x = self.embed(idx)
        deltas = []
        for i in range(depth):
            y = self.layers[0 if c.share_layers else i](x, cache, f"layer{i}", mask)
            if stats is not None:
                deltas.append((y - x).float().norm())
            x = y
        logits = F.linear(self.norm(x), self.embed.weight)
        if cache is not None:
            cache.advance(T)
        if stats is not None and deltas:
            dn = torch.stack(deltas)
            stats["delta_norm"] = dn
            stats["contraction"] = dn[1:] / dn[:-1].clamp_min(1e-30)
        return logits

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, n_loops: int | None = None, stats: dict | None = None,
             doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self(idx, n_loops=n_loops, stats=stats, doc_ids=doc_ids)
        return cross_entropy(logits, targets)  # fused: no [tokens, vocab] temporaries (layers.py)

    def gate_stats(self) -> dict[str, torch.Tensor]:
        return {}

    def hyper_weights(self):
        return None

    def no_decay_parameter_names(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.ndim == 1}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
