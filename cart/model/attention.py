"""Attention: MLA self-attention, the anchor K/V projection, causal cross-attention, dense MHA.

Every attention here is causal, including the core's cross-attention over the frozen anchor: the
published code once let h[t] read e[t+1] (which encodes the target) and its runs collapsed to
ppl ~ 1.02 (SPEC §6.1). All kernels go through `scaled_dot_product_attention`.

Notable:
- MLA (multi-head latent attention): K and V are up-projected from a d/4 latent; the decode
  cache stores only that latent. Q and the latent come from one fused [d + d/4, d] matmul.
- `causal_attend` handles the three shapes that occur: training/prefill (square, is_causal),
  single-token decode (no mask needed) and chunked prefill on top of a cache (offset mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cart.config import HEAD_DIM
from cart.model.cache import DecodeCache
from cart.model.layers import Rotary


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D]"""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H*D]"""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


def causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where the Tq queries are the LAST Tq of the Tk key positions."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if Tq == 1:
        return F.scaled_dot_product_attention(q, k, v)
    # bottom-right aligned causal mask: query i sits at absolute position Tk - Tq + i
    qpos = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
    kpos = torch.arange(Tk, device=q.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=kpos <= qpos)


class MLASelfAttention(nn.Module):
    """Q = W_q x (full rank); c = W_down x (d/4); K = W_kup c, V = W_vup c; RoPE on Q, K; causal.

    Parameters: 2d² (W_q, W_o) + 0.75d² (W_down, W_kup, W_vup) = 2.75d².
    """

    def __init__(self, d: int, d_latent: int, rotary: Rotary):
        super().__init__()
        self.d, self.d_latent, self.n_heads = d, d_latent, d // HEAD_DIM
        self.w_q_down = nn.Linear(d, d + d_latent, bias=False)  # [W_q; W_down] fused
        self.w_kv_up = nn.Linear(d_latent, 2 * d, bias=False)  # [W_kup; W_vup] fused
        self.w_o = nn.Linear(d, d, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: DecodeCache | None = None, key: str = "") -> torch.Tensor:
        start = cache.pos if cache is not None else 0
        q, c = self.w_q_down(x).split((self.d, self.d_latent), dim=-1)
        if cache is not None:
            c = cache.extend(key, c)
        q = self.rotary(_heads(q, self.n_heads), start)
        if cache is not None and x.shape[1] == 1:
            return self.w_o(_merge(self._decode_attend(q, c)))
        k, v = self.w_kv_up(c).split(self.d, dim=-1)
        k = self.rotary(_heads(k, self.n_heads), 0)
        y = causal_attend(q, k, _heads(v, self.n_heads))
        return self.w_o(_merge(y))

    def _decode_attend(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One new query per sequence (q [B, H, 1, D]) over the cached latents c [B, Tk, d/4], with V
        absorbed: softmax(q k^T / sqrt(D)) is applied to the latents, then each head's block of W_vup
        maps its d/4-wide result to D. V = W_vup c is never formed, which halves the per-token
        up-projection of the whole cache (K still needs it: RoPE acts on the up-projected K, so
        W_kup cannot be absorbed into the query)."""
        B, H, _, D = q.shape
        w_k, w_v = self.w_kv_up.weight.split(self.d, dim=0)  # [d, d/4] each
        k = self.rotary(_heads(F.linear(c, w_k), H), 0)  # [B, H, Tk, D]
        # bmm, not broadcasting matmul, which would copy c once per head and W_vup once per sequence
        scores = torch.bmm(q.reshape(B * H, 1, D), k.reshape(B * H, -1, D).transpose(1, 2))  # [B*H, 1, Tk]
        att = torch.softmax(scores.view(B, H, -1) * D ** -0.5, dim=-1)  # [B, H, Tk]
        lat = torch.bmm(att.to(c.dtype), c)  # [B, H, d/4]: all heads share the latents
        w_v = w_v.view(H, D, self.d_latent).transpose(1, 2).to(lat.dtype)  # [H, d/4, D]
        return torch.bmm(lat.transpose(0, 1), w_v).transpose(0, 1).unsqueeze(2)  # [B, H, 1, D]


class AnchorKV(nn.Module):
    """K_a, V_a = W_kup W_down e: the anchor's own MLA projection (0.75d²), no RoPE.

    CART computes this once per forward from the prelude output; with unfrozen K/V it is applied to
    the loop state every loop instead.
    """

    def __init__(self, d: int, d_latent: int):
        super().__init__()
        self.d, self.n_heads = d, d // HEAD_DIM
        self.w_down = nn.Linear(d, d_latent, bias=False)
        self.w_kv_up = nn.Linear(d_latent, 2 * d, bias=False)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.w_kv_up(self.w_down(e)).split(self.d, dim=-1)
        return _heads(k, self.n_heads), _heads(v, self.n_heads)


class CrossAttention(nn.Module):
    """Queries from the loop state, keys/values from the anchor; only W_q and W_o (2d²); no RoPE; causal."""

    def __init__(self, d: int):
        super().__init__()
        self.n_heads = d // HEAD_DIM
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = _heads(self.w_q(x), self.n_heads)
        return self.w_o(_merge(causal_attend(q, k, v)))


class MHASelfAttention(nn.Module):
    """The dense baseline's full-rank multi-head attention (4d²), RoPE, causal; caches K and V."""

    def __init__(self, d: int, rotary: Rotary):
        super().__init__()
        self.d, self.n_heads = d, d // HEAD_DIM
        self.w_qkv = nn.Linear(d, 3 * d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: DecodeCache | None = None, key: str = "") -> torch.Tensor:
        start = cache.pos if cache is not None else 0
        q, k, v = self.w_qkv(x).split(self.d, dim=-1)
        q = self.rotary(_heads(q, self.n_heads), start)
        k = self.rotary(_heads(k, self.n_heads), start)
        v = _heads(v, self.n_heads)
        if cache is not None:  # cached in [B, T, H, D] layout so the time axis is dim 1
            k = cache.extend(key + ".k", k.transpose(1, 2)).transpose(1, 2)
            v = cache.extend(key + ".v", v.transpose(1, 2)).transpose(1, 2)
        return self.w_o(_merge(causal_attend(q, k, v)))
