"""Attention: MLA self-attention, the anchor K/V projection, causal cross-attention, dense MHA.

Every attention here is causal, including the core's cross-attention over the frozen anchor: the
published code once let h[t] read e[t+1] (which encodes the target) and its runs collapsed to
ppl ~ 1.02 (SPEC §6.1). Kernels: `scaled_dot_product_attention`, except square causal attention
in bf16 on a CPU (training, prefill; up to 512 keys), which is faster as two bf16 batched matmuls
and a softmax (`_explicit_causal`).

Notable:
- MLA (multi-head latent attention): K and V are up-projected from a d/4 latent; the decode
  cache stores only that latent (or, by choice, the rotated K and V: `DecodeCache.mla_layout`).
  Q and the latent come from one fused [d + d/4, d] matmul.
- `causal_attend` handles the three shapes that occur: training/prefill (square, is_causal),
  single-token decode (no mask needed) and chunked prefill on top of a cache (offset mask).
- document masking (off by default, as in the paper): `document_mask(doc_ids)` turns per-token
  document ids into a block-diagonal causal mask that every attention here (self, dense and the
  core's cross-attention to the anchor) takes instead of is_causal, so no position attends to an
  earlier document packed into the same row. Without it the is_causal call is unchanged.
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


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Per-token document ids [B, T] -> bool [B, 1, T, T]: t may attend to s iff s <= t and both lie
    in the same document (block-diagonal and causal; the diagonal is always allowed)."""
    T = doc_ids.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril_()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


# ATen's CPU flash-attention kernel runs bf16 at a fraction of the bf16 matmul rate: at T = 256 its
# forward + backward takes 2.4-2.8x as long as explicit attention (scores by a bf16 batched matmul,
# softmax, a second bmm; results/bench/PERF.md, change 12), which at these lengths keeps only a
# [B·H, T, T] bf16 score tensor (6 MB per layer for the main job). The gap closes near T = 1024, where
# the scores also grow too large to keep, so explicit attention is used up to this many keys. In fp32
# the flash kernel is the faster one (by ~15 %) and stays.
EXPLICIT_ATTENTION_MAX_KEYS = 512


def _explicit_attention_ok(q: torch.Tensor, k: torch.Tensor) -> bool:
    # also under torch.compile: inductor turns these plain ops into two GEMMs and one fused softmax,
    # while SDPA stays ATen's slow bf16 kernel (compiled CART step 0.83x eager this way, 1.17x with SDPA)
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS


_CAUSAL_BIAS: dict[tuple, torch.Tensor] = {}


def _causal_bias(T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[T, T]: 0 on and below the diagonal, -inf above. The top-left corner of one table per (dtype,
    device) for the longest sequence the explicit path takes (512 KB in bf16), built once."""
    key = (dtype, device)
    if key not in _CAUSAL_BIAS:
        n = EXPLICIT_ATTENTION_MAX_KEYS
        upper = torch.ones(n, n, dtype=torch.bool, device=device).triu_(1)
        _CAUSAL_BIAS[key] = torch.zeros(n, n, dtype=dtype, device=device).masked_fill_(upper, float("-inf"))
    return _CAUSAL_BIAS[key][:T, :T]


def _explicit_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Square causal attention [B, H, T, D] as baddbmm (scores + the -inf mask above the diagonal, in
    one GEMM), softmax and bmm; `doc_mask` (bool [B, 1, T, T], causal already) also blanks the
    scores across document boundaries. The scores are rounded to bf16 before the softmax (as in any
    bf16 matmul attention); the flash kernel keeps them in fp32. Measured against an fp32 reference,
    the output and gradient errors are 1.3-1.8x the flash kernel's, both at the bf16 level (~1e-2 at
    most; tests/model/test_attention.py)."""
    B, H, T, D = q.shape
    s = torch.baddbmm(_causal_bias(T, q.dtype, q.device), q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2),
                      alpha=D ** -0.5)
    if doc_mask is not None:
        s = s.view(B, H, T, T).masked_fill(~doc_mask, float("-inf")).view(B * H, T, T)
    return torch.bmm(torch.softmax(s, dim=-1), v.reshape(B * H, T, D)).view(B, H, T, D)


def causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention where the Tq queries are the LAST Tq of the Tk key positions; with `doc_mask`
    (from `document_mask`, square shapes only) the causal mask is also cut at document boundaries."""
    if doc_mask is not None:
        if _explicit_attention_ok(q, k):
            return _explicit_causal(q, k, v, doc_mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=doc_mask)
    Tq, Tk = q.shape[-2], k.shape[-2]
    if Tq == Tk:
        if _explicit_attention_ok(q, k):
            return _explicit_causal(q, k, v)
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

    def forward(self, x: torch.Tensor, cache: DecodeCache | None = None, key: str = "",
                doc_mask: torch.Tensor | None = None) -> torch.Tensor:
        if doc_mask is not None and cache is not None:
            raise ValueError("document masking applies to whole-sequence forward passes, not to cached decoding")
        start = cache.pos if cache is not None else 0
        q, c = self.w_q_down(x).split((self.d, self.d_latent), dim=-1)
        q = self.rotary(_heads(q, self.n_heads), start)
        layout = cache.mla_layout if cache is not None else None
        if layout == "kv":  # cache the rotated K and V of the new tokens only
            k, v = self.w_kv_up(c).split(self.d, dim=-1)
            k, v = cached_kv(cache, key, self.rotary(_heads(k, self.n_heads), start), _heads(v, self.n_heads))
            return self.w_o(_merge(causal_attend(q, k, v)))
        if layout == "latent_k":  # the rotated K of the new tokens, plus the latent; V absorbed
            w_k = self.w_kv_up.weight[: self.d]
            k = self.rotary(_heads(F.linear(c, w_k), self.n_heads), start)
            k = cached_heads(cache, key + ".k", k)
            c = cache.extend(key, c)
            # softmax(q kᵀ) applied to the latents (shared by all heads: an expanded view, not a copy)
            lat = causal_attend(q, k, c[:, None].expand(-1, self.n_heads, -1, -1))  # [B, H, Tq, d/4]
            return self.w_o(_merge(self._absorb_v(lat)))
        if cache is not None:
            c = cache.extend(key, c)
            if x.shape[1] == 1:
                return self.w_o(_merge(self._decode_attend(q, c)))
        k, v = self.w_kv_up(c).split(self.d, dim=-1)
        k = self.rotary(_heads(k, self.n_heads), 0)
        y = causal_attend(q, k, _heads(v, self.n_heads), doc_mask)
        return self.w_o(_merge(y))

    def _decode_attend(self, q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """One new (rotated) query per sequence, q [B, H, 1, D], over the cached latents c [B, Tk, d/4].

        Neither K nor V is formed. With rotate-half RoPE, pair f of head h (dims f and f + D/2) gives
            q . R(n) k_n = cos(n θ_f) (q_f k_f + q_f' k_f') + sin(n θ_f) (q_f' k_f - q_f k_f')
        and k_n = W_h c_n, so each of the 2·(D/2) bracketed sums is c_n dotted with a query-dependent
        latent-space row Z[b, h] (built from q and W_kup: [D, d/4] per head, tiny). The scores are then
        one batched matmul c @ Zᵀ (the same FLOPs as re-projecting K, the irreducible cost of the latent
        cache) and one weighted sum against the [cos | sin] table: the rotated K is never materialised.
        V is absorbed on the other side: the softmax weights act on the latents, then each head's block
        of W_vup maps its d/4-wide result to D."""
        B, H, _, D = q.shape
        Tk, L, h = c.shape[1], self.d_latent, D // 2
        W = self.w_kv_up.weight[: self.d].to(c.dtype).view(1, H, 2, h, L)  # W_kup, rows by head and half
        W1, W2 = W[:, :, 0], W[:, :, 1]  # rows f and f + D/2 of each head: [1, H, h, L]
        qs = (q.to(c.dtype) * D ** -0.5).reshape(B, H, 2, h, 1)  # the softmax scale, on the small side
        q1, q2 = qs[:, :, 0], qs[:, :, 1]  # [B, H, h, 1]
        Z = c.new_empty(B, H, D, L)  # [q1 W1 + q2 W2 ; q2 W1 - q1 W2], written in place (no temporaries)
        top, bot = Z[:, :, :h], Z[:, :, h:]
        torch.mul(q1, W1, out=top).addcmul_(q2, W2)
        torch.mul(q2, W1, out=bot).addcmul_(q1, W2, value=-1)
        G = torch.bmm(c, Z.view(B, H * D, L).transpose(1, 2)).view(B, Tk, H, D)
        trig = self.rotary.trig[:Tk, None].to(c.dtype)  # [Tk, 1, D] = [cos_f | sin_f]
        scores = G.mul_(trig).sum(-1)  # [B, Tk, H]
        att = torch.softmax(scores, dim=1)
        lat = torch.bmm(att.transpose(1, 2), c)  # [B, H, L]: all heads share the latents
        return self._absorb_v(lat.unsqueeze(2)).to(q.dtype)  # [B, H, 1, D]

    def _absorb_v(self, lat: torch.Tensor) -> torch.Tensor:
        """Attention-weighted latents [B, H, Tq, d/4] -> each head's output [B, H, Tq, D] through its
        block of W_vup (one bmm over heads; V = W_vup c is never formed)."""
        B, H, Tq, L = lat.shape
        w_v = self.w_kv_up.weight[self.d:].to(lat.dtype).view(H, -1, L).transpose(1, 2)  # [H, L, D]
        y = torch.bmm(lat.transpose(0, 1).reshape(H, B * Tq, L), w_v)  # [H, B*Tq, D]
        return y.view(H, B, Tq, -1).transpose(0, 1)


def cached_heads(cache: DecodeCache, key: str, x: torch.Tensor) -> torch.Tensor:
    """Append the new positions of a per-head tensor x [B, H, T, D] to the cache; return all of them.
    Stored [B, T, H, D], so the time axis is dim 1 and a step writes one contiguous row per sequence."""
    return cache.extend(key, x.transpose(1, 2)).transpose(1, 2)


def cached_kv(cache: DecodeCache, key: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the new positions' K and V ([B, H, T, D]) to the cache and return all of them."""
    return cached_heads(cache, key + ".k", k), cached_heads(cache, key + ".v", v)


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
        # contiguous per head once here, rather than a layout copy in each of the R loops that read them
        return _heads(k, self.n_heads).contiguous(), _heads(v, self.n_heads).contiguous()


class CrossAttention(nn.Module):
    """Queries from the loop state, keys/values from the anchor; only W_q and W_o (2d²); no RoPE; causal."""

    def __init__(self, d: int):
        super().__init__()
        self.n_heads = d // HEAD_DIM
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = _heads(self.w_q(x), self.n_heads)
        return self.w_o(_merge(causal_attend(q, k, v, doc_mask)))


class MHASelfAttention(nn.Module):
    """The dense baseline's full-rank multi-head attention (4d²), RoPE, causal; caches K and V."""

    def __init__(self, d: int, rotary: Rotary):
        super().__init__()
        self.d, self.n_heads = d, d // HEAD_DIM
        self.w_qkv = nn.Linear(d, 3 * d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)
        self.rotary = rotary

    def forward(self, x: torch.Tensor, cache: DecodeCache | None = None, key: str = "",
                doc_mask: torch.Tensor | None = None) -> torch.Tensor:
        if doc_mask is not None and cache is not None:
            raise ValueError("document masking applies to whole-sequence forward passes, not to cached decoding")
        start = cache.pos if cache is not None else 0
        q, k, v = self.w_qkv(x).split(self.d, dim=-1)
        q = self.rotary(_heads(q, self.n_heads), start)
        k = self.rotary(_heads(k, self.n_heads), start)
        v = _heads(v, self.n_heads)
        if cache is not None:
            k, v = cached_kv(cache, key, k, v)
        return self.w_o(_merge(causal_attend(q, k, v, doc_mask)))
