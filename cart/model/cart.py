"""CART: the Context-Anchored Recurrent Transformer (Capps 2026), read top to bottom.

    tokens -> Embed -> P prelude layers -> e (the anchor)
                                 |-> anchor MLA projection -> K_a, V_a   (once per forward)
    h = e; buffer = [e, e, e]
    for r in 0..R-1:                    (ONE shared core block)
        h~ = blend(buffer) + W_lie pe(r)
        u  = h~ + CausalCrossAttn(norm(h~), K_a, V_a);  u += SwiGLU(norm(u))
        h  = gate(h~, u);  buffer = [h] + buffer[:2]
    coda layer -> final norm -> logits = h Emb^T (tied)

Notable features:
- every ablation of the paper is a config field (see `CARTConfig`); this file branches on
  structure only (which modules exist), the per-fidelity maths lives in `recurrence.py`;
- any loop count at inference (`n_loops=`), with no cap from the loop-index table;
- incremental decoding with `DecodeCache` (MLA latents for prelude/coda, anchor K/V once);
- opt-in, sync-free loop statistics (`stats=` dict) for the per-loop contraction;
- opt-in document masking (`doc_ids=`): every attention, the core's causal cross-attention to the
  anchor included, stays inside each token's document (block-diagonal causal mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cart.config import HEAD_DIM, CARTConfig
from cart.model.attention import AnchorKV, MLASelfAttention, cached_kv, document_mask
from cart.model.blocks import Block
from cart.model.cache import DecodeCache
from cart.model.layers import RMSNorm, Rotary, cross_entropy, init_weights
from cart.model.recurrence import CoreBlock, FixedGate, HyperBlend, LoopIndexEmbedding, LTIGate


class CART(nn.Module):
    def __init__(self, config: CARTConfig):
        super().__init__()
        self.config = c = config
        d, f, dl = c.d_model, c.d_ff, c.d_latent
        self.embed = nn.Embedding(c.vocab_size, d)
        self.rotary = Rotary(HEAD_DIM, c.max_seq_len, c.rope_base)
        self.prelude = nn.ModuleList(Block(d, f, MLASelfAttention(d, dl, self.rotary), c.norm_eps) for _ in range(c.n_prelude))
        self.anchor = AnchorKV(d, dl) if c.uses_anchor else None
        self.cores = nn.ModuleList(
            CoreBlock(d, f, dl, c.core_attention, c.norm_eps, self.rotary) for _ in range(c.n_core_blocks)
        )
        self.hyper = HyperBlend(c.fidelity, c.hyper_init_gap) if c.hyper_connections else None
        self.loop_embed = LoopIndexEmbedding(d, c.loop_embed_dim) if c.loop_embedding else None
        # no gate = the gate with A fixed at 1 (FixedGate), in both fidelities as the published ablation
        self.gate = LTIGate(d, c.gate_init, c.fidelity) if c.lti_gate else FixedGate(c.fidelity)
        self.coda = Block(d, f, MLASelfAttention(d, dl, self.rotary), c.norm_eps)
        self.norm = RMSNorm(d, c.norm_eps)
        init_weights(self, c.init_std)

    # ------------------------------------------------------------------ forward
    def resolve_loops(self, n_loops: int | None) -> int:
        R = self.config.n_loops if n_loops is None else int(n_loops)
        if R < 1:
            raise ValueError(f"n_loops must be >= 1, got {R}")
        if not self.config.share_core and R != self.config.n_loops:
            raise ValueError(
                f"n_loops={R} requested, but this model has {self.config.n_loops} distinct core blocks "
                f"(share_core=False) and can only run with n_loops={self.config.n_loops}"
            )
        return R

    def forward(
        self,
        idx: torch.Tensor,
        n_loops: int | None = None,
        cache: DecodeCache | None = None,
        stats: dict | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token ids [B, T] -> logits [B, T, V].

        n_loops: run the core this many times (default: the trained R).
        cache: absorb these tokens into an incremental-decoding cache (positions continue from cache.pos).
        stats: if a dict is given, fill it with sync-free loop statistics (tensors): "delta_norm" [R]
        = ||h_{r+1} - h_r|| and "contraction" [R-1] = delta_norm[1:] / delta_norm[:-1].
        doc_ids: per-token document ids [B, T]: attention does not cross documents (not with `cache`).
        """
        c = self.config
        R = self.resolve_loops(n_loops)
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > c.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds the model's max_seq_len={c.max_seq_len}")

        mask = _document_mask(doc_ids, idx, cache)
        e, kv = self.anchor_state(idx, cache, mask)

        states = [e, e, e]  # ring buffer of the last 3 loop states, newest first
        deltas = []
        for r in range(R):
            h, kv = self.loop_step(r, states, kv, cache, mask)
            if stats is not None:
                deltas.append((h - states[0]).float().norm())
            states = [h, states[0], states[1]]

        x = self.coda(states[0], cache, "coda", mask)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied head
        if cache is not None:
            cache.advance(T)
        if stats is not None:
            dn = torch.stack(deltas)
            stats["delta_norm"] = dn
            stats["contraction"] = dn[1:] / dn[:-1].clamp_min(1e-30)
        return logits

    def loop_step(self, r: int, states: list[torch.Tensor], kv, cache: DecodeCache | None = None,
                  doc_mask: torch.Tensor | None = None):
        """Loop r of the recurrence on the ring buffer `states` (newest first): blend + loop-index
        embedding -> core (cross-attending to `kv`) -> gate. Returns (h, kv); kv is recomputed from
        h~ only in the unfrozen-K/V ablation. The one definition of a loop iteration, used by the
        forward pass, the loop diagnostics and adaptive R."""
        c = self.config
        if cache is None:  # each per-loop module runs once per loop (TruncatedBackprop hooks on that)
            lie, blend_w, gate_coef = (self.loop_embed(r) if self.loop_embed is not None else None), None, None
        else:  # decoding: functions of the parameters only, computed once per generation
            lie, blend_w, gate_coef = cache.memo(("loop", r), lambda: self.loop_constants(r))
        if self.hyper is not None:
            h_tilde = self.hyper(states, lie, blend_w)  # blend and loop-index embedding in one pass
        else:
            h_tilde = states[0] if lie is None else states[0] + lie.to(states[0].dtype)
        if self.anchor is not None and not c.freeze_kv:
            kv = self._anchor_kv(h_tilde, cache, f"loop{r}.anchor")  # ablation: recompute every loop
        u = self.cores[0 if c.share_core else r](h_tilde, kv, cache, f"core{r}", doc_mask)
        return self.gate(h_tilde, u, gate_coef), kv

    def loop_constants(self, r: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Loop r's loop-index embedding, blend weights and gate coefficient (None where ablated)."""
        return (self.loop_embed(r) if self.loop_embed is not None else None,
                self.hyper.weights() if self.hyper is not None else None,
                self.gate.coefficient())

    def anchor_state(self, idx: torch.Tensor, cache: DecodeCache | None = None, doc_mask: torch.Tensor | None = None):
        """Embed + prelude -> the anchor e, and its frozen K/V (computed ONCE, reused by every loop;
        None when K/V are recomputed per loop or the core self-attends)."""
        x = self.embed(idx)
        for i, layer in enumerate(self.prelude):
            x = layer(x, cache, f"prelude{i}", doc_mask)
        kv = self._anchor_kv(x, cache, "anchor") if (self.anchor is not None and self.config.freeze_kv) else None
        return x, kv

    def _anchor_kv(self, x: torch.Tensor, cache: DecodeCache | None, key: str):
        k, v = self.anchor(x)
        return cached_kv(cache, key, k, v) if cache is not None else (k, v)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, n_loops: int | None = None, stats: dict | None = None,
             doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = self(idx, n_loops=n_loops, stats=stats, doc_ids=doc_ids)
        return cross_entropy(logits, targets)  # fused: no [tokens, vocab] temporaries (layers.py)

    # ------------------------------------------------------------------ diagnostics (no training code needed)
    @torch.no_grad()
    def gate_stats(self) -> dict[str, torch.Tensor]:
        """rho_gate = max_i sigmoid(a_i) (the paper's "spectral radius") plus min/mean/std. Empty
        without a learned gate."""
        if not isinstance(self.gate, LTIGate):
            return {}
        A = torch.sigmoid(self.gate.a.float())
        return {"rho_gate": A.max(), "gate_min": A.min(), "gate_mean": A.mean(), "gate_std": A.std(unbiased=False)}

    @torch.no_grad()
    def hyper_weights(self) -> torch.Tensor | None:
        """The blend weights in effect over [newest, previous, oldest] state (None when ablated)."""
        return None if self.hyper is None else self.hyper.weights()

    def carried_state_coefficient(self) -> torch.Tensor:
        """Per-channel coefficient on h~ in the loop update when the core's update is held fixed:
        A (stable), 1 + A (paper); without a learned gate A = 1: 1 (stable) or 2 (paper)."""
        if isinstance(self.gate, LTIGate):
            A = torch.sigmoid(self.gate.a.detach().float())
        else:
            A = torch.ones(self.config.d_model)
        return 1 + A if self.config.fidelity == "paper" else A

    def no_decay_parameter_names(self) -> set[str]:
        """Parameters that stable fidelity exempts from weight decay (SPEC §6.4): gates, blend
        weights, norms and the loop-index projection."""
        names = set()
        for n, p in self.named_parameters():
            if n.startswith(("gate.", "hyper.", "loop_embed.")) or p.ndim == 1:
                names.add(n)
        return names

    def num_params(self) -> int:
        """Stored (unique) parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())


def _document_mask(doc_ids: torch.Tensor | None, idx: torch.Tensor, cache: DecodeCache | None) -> torch.Tensor | None:
    """The block-diagonal causal mask of `doc_ids` (None: plain causal attention, the default)."""
    if doc_ids is None:
        return None
    if cache is not None:
        raise ValueError("doc_ids (document masking) applies to whole-sequence forward passes, not to cached decoding")
    if doc_ids.shape != idx.shape:
        raise ValueError(f"doc_ids has shape {tuple(doc_ids.shape)}, the tokens {tuple(idx.shape)}")
    return document_mask(doc_ids)
