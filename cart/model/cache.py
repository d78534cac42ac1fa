"""Incremental-decoding cache shared by every model.

One preallocated buffer per (layer, tensor) written in place, so a decode step copies only the new
token's entries. What each layer stores is its own choice: MLA layers store their latent (d/4 per
token), the CART anchor stores K/V once for all loops, dense MHA stores full K and V.

`mla_layout` chooses what MLA layers keep, trading memory for decode compute:
- "latent" (default, SPEC §1): the d/4 latent only. Each decode step re-projects K = W_kup c for
  every cached position (RoPE acts on the up-projected K, so W_kup cannot be absorbed into the
  query the way W_vup is): 2·Tk·(d/4)·d FLOPs per layer and sequence on top of the attention.
- "latent_k": the latent and the rotated K (d + d/4, 5x the latent): no re-projection; V stays
  absorbed (the softmax weights act on the latents, then W_vup per head).
- "kv": the rotated K and the V of every position (2d per token, like MHA, 8x the latent): no
  re-projection, so a decode step costs what a dense layer's does.
- "auto" (what generation uses by default): "latent" at batch 1, where the step is bound by streaming
  the weights and the smallest cache costs nothing, "latent_k" when batched, where re-projecting K
  for every cached position and sequence makes "latent" 0.85x dense (results/bench/PERF.md).
Every layout gives the same logits (tests/eval/test_cache.py); they differ in bytes and speed
(results/bench/PERF.md).
A cache also memoises values that depend only on the parameters (CART's loop constants), which
are fixed for the life of one generation.
"""
from __future__ import annotations

from typing import Callable

import torch

MLA_LAYOUTS = ("latent", "latent_k", "kv")


def resolve_mla_layout(mla_layout: str, batch_size: int) -> str:
    """"auto" -> "latent" at batch 1, "latent_k" for batches; any other layout as given (validated)."""
    if mla_layout == "auto":
        return "latent" if batch_size == 1 else "latent_k"
    if mla_layout not in MLA_LAYOUTS:
        raise ValueError(f"DecodeCache: mla_layout must be 'auto' or one of {', '.join(MLA_LAYOUTS)}; got {mla_layout!r}")
    return mla_layout


class DecodeCache:
    def __init__(self, batch_size: int, max_len: int, mla_layout: str = "latent"):
        mla_layout = resolve_mla_layout(mla_layout, batch_size)
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"DecodeCache: batch_size and max_len must be >= 1; got {batch_size}, {max_len}")
        self.batch_size = batch_size
        self.max_len = max_len
        self.mla_layout = mla_layout
        self.pos = 0  # tokens already absorbed
        self._store: dict[str, torch.Tensor] = {}
        self._memo: dict = {}

    def extend(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Write x [B, T_new, ...] at the current position under `key`; return all entries [B, pos+T_new, ...]."""
        B, T = x.shape[0], x.shape[1]
        if B != self.batch_size:
            raise ValueError(f"cache built for batch {self.batch_size}, got batch {B}")
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions; {end} requested (prompt plus new tokens exceeds the context)")
        buf = self._store.get(key)
        if buf is None:
            buf = x.new_zeros((B, self.max_len) + tuple(x.shape[2:]))
            self._store[key] = buf
        buf[:, self.pos:end] = x
        return buf[:, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def memo(self, key, compute: Callable[[], object]):
        """compute() once per cache (the parameters do not change during a generation), then reuse."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def repeat_interleave(self, counts: torch.Tensor) -> "DecodeCache":
        """A cache whose rows are row i of this one repeated counts[i] times (prefill once, score many)."""
        out = DecodeCache(int(counts.sum()), self.max_len, self.mla_layout)
        out.pos = self.pos
        out._store = {k: v.repeat_interleave(counts.to(v.device), dim=0) for k, v in self._store.items()}
        out._memo = dict(self._memo)
        return out

    def nbytes(self) -> int:
        """Bytes held for the positions absorbed so far (not the preallocated tail)."""
        return sum(b[:, : self.pos].numel() * b.element_size() for b in self._store.values())

    def bytes_per_token(self) -> float:
        return self.nbytes() / max(1, self.pos * self.batch_size)
