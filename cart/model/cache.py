"""Incremental-decoding cache shared by every model.

One preallocated buffer per (layer, tensor) written in place, so a decode step copies only the new
token's entries. What each layer stores is its own choice: MLA layers store their latent (d/4 per
token), the CART anchor stores K/V once for all loops, dense MHA stores full K and V.
"""
from __future__ import annotations

import torch


class DecodeCache:
    def __init__(self, batch_size: int, max_len: int):
        self.batch_size = batch_size
        self.max_len = max_len
        self.pos = 0  # tokens already absorbed
        self._store: dict[str, torch.Tensor] = {}

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

    def nbytes(self) -> int:
        """Bytes held for the positions absorbed so far (not the preallocated tail)."""
        return sum(b[:, : self.pos].numel() * b.element_size() for b in self._store.values())

    def bytes_per_token(self) -> float:
        return self.nbytes() / max(1, self.pos * self.batch_size)
