"""CART (Context-Anchored Recurrent Transformer; Capps 2026) for Hugging Face `transformers`.

This file is self-contained: it imports only torch and transformers. `cart export hf` copies it
into the exported directory, so the model loads where the `cart` package is not installed:

    tok = AutoTokenizer.from_pretrained(DIR)
    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    out = model.generate(**tok("The president said", return_tensors="pt"), max_new_tokens=20)
    model(ids, n_loops=8).logits            # any loop count at call time (shared core)
    model.generate(ids, n_loops=8)          # in generate too

    tokens -> Embed -> P prelude layers -> e (the anchor)
                                 |-> anchor MLA projection -> K_a, V_a   (once per forward)
    h = e; buffer = [e, e, e]
    for r in 0..R-1:                    (ONE shared core block)
        h~ = blend(buffer) + W_lie pe(r)
        u  = h~ + CausalCrossAttn(norm(h~), K_a, V_a);  u += SwiGLU(norm(u))
        h  = gate(h~, u);  buffer = [h] + buffer[:2]
    coda layer -> final norm -> logits = h Emb^T (tied)

It re-implements cart's model code (cart/model/*.py) with the same parameter names and the same
arithmetic in the same order, so its logits equal cart's to fp32 rounding for every variant: both
fidelities ("stable": h = A*h~ + (u - h~), a convex blend starting at the pure residual; "paper":
h = A*h~ + u and softmax([1, 0, 0]), as published), every ablation field, and the dense baseline
and homogeneous control (`CartDenseForCausalLM`). What it adds is what transformers needs:
- `CartCache`, a `transformers.Cache` whose layers hold each MLA layer's latent (d/4 per token)
  for the prelude and coda, and the anchor K/V ONCE for all loops (per loop only where the
  ablation recomputes them: unfrozen K/V, or a self-attention core); greedy, sampling and beam
  search run on it (beam search reorders it);
- attention masks: left-padded batches get positions that count real tokens only, so a padded
  row gives the logits of the same row unpadded;
- `labels` -> loss (next-token, shifted inside), `logits_to_keep`, `output_hidden_states`
  (embeddings, each prelude layer, each loop state, the final normed state).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # init functions that leave loaded weights alone (transformers >= 5)
    from transformers import initialization as _init
except ImportError:  # pragma: no cover - older transformers
    _init = nn.init

HEAD_DIM = 64  # fixed by the paper: heads = d / 64
# transformers renamed `past_key_values` to `cache` (outputs and forward arguments) during 5.x
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def swiglu_hidden(d: int) -> int:
    """SwiGLU width: 8d/3 rounded up to a multiple of 256."""
    return 256 * math.ceil((8 * d // 3) / 256)


# ================================================================================== config
class CartConfig(PretrainedConfig):
    """cart's CARTConfig (kind="cart") or DenseConfig (kind="dense"), field for field.

    kind="cart": n_prelude, n_loops (the trained R; any R at call time with a shared core),
    fidelity, and the ablations freeze_kv, share_core, core_attention, hyper_connections, lti_gate,
    loop_embedding. kind="dense" (`CartDenseConfig`): n_layers, attention ("mha": the dense baseline;
    "mla": the homogeneous control), share_layers. Two config classes, because transformers maps a
    config class to one model class per process.
    """

    model_type = "cart"
    attribute_map = {"hidden_size": "d_model", "max_position_embeddings": "max_seq_len", "rms_norm_eps": "norm_eps",
                     "initializer_range": "init_std"}

    def __init__(self, kind="cart", vocab_size=32000, d_model=256, max_seq_len=1024, rope_base=10000.0, norm_eps=1e-6,
                 init_std=0.02, n_prelude=6, n_loops=6, fidelity="paper", freeze_kv=True, share_core=True,
                 core_attention="cross", hyper_connections=True, lti_gate=True, loop_embedding=True, loop_embed_dim=32,
                 gate_init=0.9, hyper_init_gap=16.0, n_layers=7, attention="mha", share_layers=False, use_cache=True,
                 **kwargs):
        self.kind, self.vocab_size, self.d_model, self.max_seq_len = kind, vocab_size, d_model, max_seq_len
        self.rope_base, self.norm_eps, self.init_std = float(rope_base), float(norm_eps), float(init_std)
        self.n_prelude, self.n_loops, self.fidelity = n_prelude, n_loops, fidelity
        self.freeze_kv, self.share_core, self.core_attention = freeze_kv, share_core, core_attention
        self.hyper_connections, self.lti_gate, self.loop_embedding = hyper_connections, lti_gate, loop_embedding
        self.loop_embed_dim, self.gate_init, self.hyper_init_gap = loop_embed_dim, float(gate_init), float(hyper_init_gap)
        self.n_layers, self.attention, self.share_layers = n_layers, attention, share_layers
        self.use_cache = use_cache
        kwargs.setdefault("tie_word_embeddings", True)  # the head IS the embedding (no lm_head weight exists)
        super().__init__(**kwargs)
        self._check()

    def _check(self) -> None:
        def need(ok: bool, field: str) -> None:
            if not ok:
                raise ValueError(f"CartConfig.{field} has an invalid value: {getattr(self, field)!r}")
        need(self.kind in ("cart", "dense"), "kind")
        for f in ("vocab_size", "d_model", "max_seq_len", "n_loops", "n_layers", "loop_embed_dim"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f)
        need(self.d_model % HEAD_DIM == 0, "d_model")
        need(isinstance(self.n_prelude, int) and self.n_prelude >= 0, "n_prelude")
        need(self.fidelity in ("stable", "paper"), "fidelity")
        need(self.core_attention in ("cross", "self"), "core_attention")
        need(self.attention in ("mha", "mla"), "attention")
        for f in ("freeze_kv", "share_core", "hyper_connections", "lti_gate", "loop_embedding", "share_layers"):
            need(isinstance(getattr(self, f), bool), f)
        need(self.core_attention == "cross" or self.freeze_kv, "freeze_kv")  # a self-attention core has no anchor K/V
        need(self.loop_embed_dim % 2 == 0, "loop_embed_dim")
        need(0 < self.gate_init < 1, "gate_init")

    @property
    def n_heads(self) -> int:
        return self.d_model // HEAD_DIM

    @property
    def d_latent(self) -> int:
        return self.d_model // 4

    @property
    def d_ff(self) -> int:
        return swiglu_hidden(self.d_model)


class CartDenseConfig(CartConfig):
    """The dense baseline or the homogeneous control (kind="dense")."""

    model_type = "cart_dense"

    def __init__(self, kind="dense", **kwargs):
        super().__init__(kind=kind, **kwargs)


# ================================================================================== cache
class CartCacheLayer(CacheLayerMixin):
    """One attention's per-token tensors, time on dim 1, grown by concatenation: an MLA layer's
    latent c [B, T, d/4]; the anchor's K_a, V_a [B, T, d]; a dense MHA layer's rotated K and V."""

    is_compileable = False
    is_croppable = True
    is_sliding = False
    supports_early_init = False

    def __init__(self):
        super().__init__()
        self.states: list[torch.Tensor] | None = None

    def lazy_initialization(self, *states: torch.Tensor) -> None:
        self.device = states[0].device
        self.states = [s[:, :0] for s in states]
        self.is_initialized = True

    def update(self, *states: torch.Tensor) -> list[torch.Tensor]:
        """Append the new positions; return every position's tensors."""
        if not self.is_initialized:
            self.lazy_initialization(*states)
        self.states = [torch.cat([old, new], dim=1) for old, new in zip(self.states, states)]
        return self.states

    def get_seq_length(self) -> int:
        return 0 if self.states is None else self.states[0].shape[1]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # its name before transformers 5.2x

    def _map(self, fn) -> None:
        if self.states is not None:
            self.states = [fn(s) for s in self.states]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda s: s.index_select(0, beam_idx.to(s.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda s: s.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda s: s[indices])

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last -tokens_to_remove positions (a negative count, as transformers' DynamicLayer)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove:
            self._map(lambda s: s[:, :tokens_to_remove])

    def reset(self) -> None:
        self.states, self.is_initialized = None, False

    def offload(self) -> None:
        self._map(lambda s: s.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        if self.states is not None and self.states[0].device != self.device:
            self._map(lambda s: s.to(self.device, non_blocking=True))


class CartCache(Cache):
    """The decoding cache: one `CartCacheLayer` per caching attention (`_slot` says which), and the
    loop count R it was filled with (a cache filled at one R cannot continue at another)."""

    def __init__(self):
        super().__init__(layers=[])
        self.n_loops: int | None = None


def _slot(cache: Cache, index: int) -> CartCacheLayer:
    """Layer `index` of any `transformers.Cache`, made a CartCacheLayer when still empty (a plain
    `DynamicCache()` passed by the caller works too)."""
    layers = cache.layers
    while len(layers) <= index:
        layers.append(CartCacheLayer())
    if not isinstance(layers[index], CartCacheLayer):
        if getattr(layers[index], "is_initialized", False):
            raise ValueError(f"cache layer {index} holds another model's states ({type(layers[index]).__name__})")
        layers[index] = CartCacheLayer()
    return layers[index]


# ================================================================================== positions and masks
def rope_tables(positions: torch.Tensor, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE tables [..., T, 64] for integer positions [..., T]: cos = [cos, cos] and the
    signed sin = [-sin, sin], computed in float64 and rounded once to fp32 (bit-equal to cart's table)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64, device=positions.device) / HEAD_DIM))
    freqs = positions.to(torch.float64)[..., None] * inv_freq
    cos, sin = freqs.cos(), freqs.sin()
    return torch.cat((cos, cos), -1).float(), torch.cat((-sin, sin), -1).float()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, D] rotated: x * cos + [x2, x1] * sin (x = [x1, x2] in halves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos.to(x.dtype), torch.cat((x2, x1), dim=-1), sin.to(x.dtype))


class Step:
    """What every attention of one forward call shares: the RoPE tables of the key positions (all
    cached and new tokens) and of the query positions (the new ones), and the attention mask.

    Without padding the mask is implicit (causal, bottom-right aligned: cart's `causal_attend`).
    With an attention mask holding zeros, positions count real tokens only and a query sees the real
    keys at or before it (and always itself, so a padding query is never left with no key)."""

    def __init__(self, n_new: int, past: int, device: torch.device, base: float, attention_mask: torch.Tensor | None):
        n_keys = past + n_new
        self.mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            real = attention_mask.to(device=device, dtype=torch.bool)
            if real.ndim != 2 or real.shape[1] != n_keys:
                raise ValueError(f"attention_mask must be [batch, {n_keys}] (cached plus new tokens), got {list(real.shape)}")
            positions = (real.long().cumsum(-1) - 1).clamp_min(0)  # [B, Tk]
            keys = torch.arange(n_keys, device=device)
            queries = torch.arange(past, n_keys, device=device)[:, None]
            self.mask = ((keys <= queries) & real[:, None, None, :]) | (keys == queries)  # [B, 1, Tq, Tk]
            cos, sin = rope_tables(positions, base)
            cos, sin = cos[:, None], sin[:, None]  # [B, 1, Tk, D]: per-row positions
        else:
            cos, sin = rope_tables(torch.arange(n_keys, device=device), base)  # [Tk, D]
        self.cos_k, self.sin_k = cos, sin
        self.cos_q, self.sin_q = cos[..., past:, :], sin[..., past:, :]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the new queries (the last Tq of the Tk key positions)."""
        if self.mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        n_q, n_k = q.shape[-2], k.shape[-2]
        if n_q == n_k:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if n_q == 1:
            return F.scaled_dot_product_attention(q, k, v)
        qpos = torch.arange(n_k - n_q, n_k, device=q.device)[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.arange(n_k, device=q.device)[None, :] <= qpos)


# ================================================================================== layers
def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D]"""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] -> [B, T, H*D]"""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
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


class MLASelfAttention(nn.Module):
    """Q = W_q x; latent c = W_down x (d/4, the only thing cached); K = W_kup c, V = W_vup c; RoPE on Q
    and K; causal. W_q/W_down and W_kup/W_vup are fused, as in cart."""

    def __init__(self, d: int, d_latent: int):
        super().__init__()
        self.d, self.d_latent, self.n_heads = d, d_latent, d // HEAD_DIM
        self.w_q_down = nn.Linear(d, d + d_latent, bias=False)
        self.w_kv_up = nn.Linear(d_latent, 2 * d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, step: Step, slot: CartCacheLayer | None = None) -> torch.Tensor:
        q, c = self.w_q_down(x).split((self.d, self.d_latent), dim=-1)
        q = rotate(_heads(q, self.n_heads), step.cos_q, step.sin_q)
        if slot is not None:
            (c,) = slot.update(c)  # every position's latent
        k, v = self.w_kv_up(c).split(self.d, dim=-1)
        k = rotate(_heads(k, self.n_heads), step.cos_k, step.sin_k)
        return self.w_o(_merge(step.attend(q, k, _heads(v, self.n_heads))))


class MHASelfAttention(nn.Module):
    """The dense baseline's full-rank multi-head attention (4d²), RoPE, causal; caches rotated K and V."""

    def __init__(self, d: int):
        super().__init__()
        self.d, self.n_heads = d, d // HEAD_DIM
        self.w_qkv = nn.Linear(d, 3 * d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, step: Step, slot: CartCacheLayer | None = None) -> torch.Tensor:
        q, k, v = self.w_qkv(x).split(self.d, dim=-1)
        q = rotate(_heads(q, self.n_heads), step.cos_q, step.sin_q)
        k = rotate(_heads(k, self.n_heads), step.cos_q, step.sin_q)  # the new tokens' positions
        v = _heads(v, self.n_heads)
        if slot is not None:  # stored [B, T, H, D]: time on dim 1
            k, v = (s.transpose(1, 2) for s in slot.update(k.transpose(1, 2), v.transpose(1, 2)))
        return self.w_o(_merge(step.attend(q, k, v)))


class AnchorKV(nn.Module):
    """K_a, V_a = W_kup W_down e: the anchor's own MLA projection (0.75d²), no RoPE."""

    def __init__(self, d: int, d_latent: int):
        super().__init__()
        self.d, self.n_heads = d, d // HEAD_DIM
        self.w_down = nn.Linear(d, d_latent, bias=False)
        self.w_kv_up = nn.Linear(d_latent, 2 * d, bias=False)

    def forward(self, e: torch.Tensor, slot: CartCacheLayer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.w_kv_up(self.w_down(e)).split(self.d, dim=-1)
        if slot is not None:
            k, v = slot.update(k, v)  # computed once per token, kept for every loop and later token
        return _heads(k, self.n_heads), _heads(v, self.n_heads)


class CrossAttention(nn.Module):
    """Queries from the loop state, keys/values the frozen anchor; only W_q and W_o; no RoPE; causal."""

    def __init__(self, d: int):
        super().__init__()
        self.n_heads = d // HEAD_DIM
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: Step) -> torch.Tensor:
        return self.w_o(_merge(step.attend(_heads(self.w_q(x), self.n_heads), k, v)))


class Block(nn.Module):
    """Pre-norm layer (prelude, coda, dense): x += Attn(norm(x)); x += SwiGLU(norm(x))."""

    def __init__(self, d: int, d_ff: int, attn: nn.Module, eps: float):
        super().__init__()
        self.norm_attn = RMSNorm(d, eps)
        self.attn = attn
        self.norm_mlp = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, x: torch.Tensor, step: Step, slot: CartCacheLayer | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x), step, slot)
        return x + self.mlp(self.norm_mlp(x))


# ================================================================================== the recurrence
def loop_code(r: int, dim: int, device) -> torch.Tensor:
    """Fixed sinusoidal code of loop index r (base 10,000), defined for every r."""
    i = torch.arange(0, dim, 2, dtype=torch.float64, device=device)
    ang = r / (10_000.0 ** (i / dim))
    out = torch.empty(dim, dtype=torch.float64, device=device)
    out[0::2], out[1::2] = ang.sin(), ang.cos()
    return out.float()


class LoopIndexEmbedding(nn.Module):
    """W_lie pe(r), W_lie: loop_embed_dim -> d."""

    def __init__(self, d: int, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, d, bias=False)

    def forward(self, r: int) -> torch.Tensor:
        w = self.proj.weight
        return self.proj(loop_code(r, self.dim, w.device).to(w.dtype))


class LTIGate(nn.Module):
    """A = sigmoid(a). "stable": h = A*h~ + (u - h~); "paper" (published): h = A*h~ + u."""

    def __init__(self, d: int, fidelity: str):
        super().__init__()
        self.fidelity = fidelity
        self.a = nn.Parameter(torch.empty(d))

    def forward(self, h_tilde: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        A = torch.sigmoid(self.a)
        coef = A if self.fidelity == "paper" else A - 1
        return torch.addcmul(u, coef.to(u.dtype), h_tilde)


class HyperBlend(nn.Module):
    """h~ = sum_i w_i buffer[i] over the last 3 loop states, w = softmax(logits) (+ the loop embedding)."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.empty(3))

    def forward(self, states: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        w = torch.softmax(self.logits.float(), dim=0).to(states[0].dtype)
        h = w[0] * states[0] if bias is None else torch.addcmul(bias.to(states[0].dtype), w[0], states[0])
        return torch.addcmul(torch.addcmul(h, w[1], states[1]), w[2], states[2])


class CoreBlock(nn.Module):
    """u = h~ + Attn(norm(h~)); u = u + SwiGLU(norm(u)). Attn: causal cross-attention to the anchor
    ("cross") or an MLA self-attention layer ("self", the self-attention-core ablation)."""

    def __init__(self, d: int, d_ff: int, d_latent: int, attention: str, eps: float):
        super().__init__()
        self.attention = attention
        self.norm_attn = RMSNorm(d, eps)
        self.attn = CrossAttention(d) if attention == "cross" else MLASelfAttention(d, d_latent)
        self.norm_mlp = RMSNorm(d, eps)
        self.mlp = SwiGLU(d, d_ff)

    def forward(self, h: torch.Tensor, step: Step, kv=None, slot: CartCacheLayer | None = None) -> torch.Tensor:
        x = self.norm_attn(h)
        a = self.attn(x, *kv, step) if self.attention == "cross" else self.attn(x, step, slot)
        u = h + a
        return u + self.mlp(self.norm_mlp(u))


# ================================================================================== the two backbones
class CartModel(nn.Module):
    """Embed -> prelude -> anchor -> R loops of the core -> coda -> final norm (cart/model/cart.py).

    Cache layers: prelude i -> i; coda -> P; the frozen anchor K/V -> P + 1; then one per loop where
    the ablation caches per loop (unfrozen K/V: that loop's anchor K/V; self core: its latent)."""

    def __init__(self, config: CartConfig):
        super().__init__()
        c = config
        d, f, dl = c.d_model, c.d_ff, c.d_latent
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, d)
        self.prelude = nn.ModuleList(Block(d, f, MLASelfAttention(d, dl), c.norm_eps) for _ in range(c.n_prelude))
        self.anchor = AnchorKV(d, dl) if c.core_attention == "cross" else None
        n_cores = 1 if c.share_core else c.n_loops
        self.cores = nn.ModuleList(CoreBlock(d, f, dl, c.core_attention, c.norm_eps) for _ in range(n_cores))
        self.hyper = HyperBlend() if c.hyper_connections else None
        self.loop_embed = LoopIndexEmbedding(d, c.loop_embed_dim) if c.loop_embedding else None
        self.gate = LTIGate(d, c.fidelity) if c.lti_gate else None
        self.coda = Block(d, f, MLASelfAttention(d, dl), c.norm_eps)
        self.norm = RMSNorm(d, c.norm_eps)

    def resolve_loops(self, n_loops: int | None) -> int:
        R = self.config.n_loops if n_loops is None else int(n_loops)
        if R < 1:
            raise ValueError(f"n_loops must be >= 1, got {R}")
        if not self.config.share_core and R != self.config.n_loops:
            raise ValueError(f"n_loops={R} requested, but this model has {self.config.n_loops} distinct core blocks "
                             f"(share_core=False) and can only run with n_loops={self.config.n_loops}")
        return R

    def forward(self, x: torch.Tensor, step: Step, cache: Cache | None, R: int, hidden: list | None) -> torch.Tensor:
        c = self.config
        slot = (lambda i: _slot(cache, i)) if cache is not None else (lambda i: None)
        P = len(self.prelude)
        for i, layer in enumerate(self.prelude):
            x = layer(x, step, slot(i))
            if hidden is not None:
                hidden.append(x)
        loops_at = P + 1  # cache layers of the per-loop states start here
        kv = None
        if self.anchor is not None and c.freeze_kv:
            kv = self.anchor(x, slot(loops_at))  # ONCE, for every loop
            loops_at += 1
        states = [x, x, x]  # ring buffer of the last 3 loop states, newest first
        for r in range(R):
            lie = self.loop_embed(r) if self.loop_embed is not None else None
            if self.hyper is not None:
                h_tilde = self.hyper(states, lie)
            else:
                h_tilde = states[0] if lie is None else states[0] + lie.to(states[0].dtype)
            core = self.cores[0 if c.share_core else r]
            if self.anchor is not None and not c.freeze_kv:
                kv = self.anchor(h_tilde, slot(loops_at + r))  # ablation: K/V recomputed from the loop state
            u = core(h_tilde, step, kv, slot(loops_at + r) if self.anchor is None else None)
            if self.gate is not None:
                h = self.gate(h_tilde, u)
            else:  # no gate = A fixed at 1: paper h = h~ + u (the published disable_lti), stable h = u
                h = h_tilde + u if c.fidelity == "paper" else u
            if hidden is not None:
                hidden.append(h)
            states = [h, states[0], states[1]]
        return self.norm(self.coda(states[0], step, slot(P)))


class DenseModel(nn.Module):
    """n_layers pre-norm blocks (full-rank MHA: the dense baseline; MLA: the homogeneous control),
    or one block run n_layers times (share_layers) (cart/model/dense.py). Cache layer i = depth i."""

    def __init__(self, config: CartConfig):
        super().__init__()
        c = config
        d = c.d_model
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, d)

        def make_attn():
            return MHASelfAttention(d) if c.attention == "mha" else MLASelfAttention(d, c.d_latent)

        n_unique = 1 if c.share_layers else c.n_layers
        self.layers = nn.ModuleList(Block(d, c.d_ff, make_attn(), c.norm_eps) for _ in range(n_unique))
        self.norm = RMSNorm(d, c.norm_eps)

    def resolve_loops(self, n_loops: int | None) -> int:
        if n_loops is None:
            return self.config.n_layers
        if not self.config.share_layers:
            raise ValueError(f"n_loops={n_loops} requested, but this dense model has {self.config.n_layers} unshared layers")
        if int(n_loops) < 1:
            raise ValueError(f"n_loops must be >= 1, got {n_loops}")
        return int(n_loops)

    def forward(self, x: torch.Tensor, step: Step, cache: Cache | None, R: int, hidden: list | None) -> torch.Tensor:
        for i in range(R):
            x = self.layers[0 if self.config.share_layers else i](x, step, _slot(cache, i) if cache is not None else None)
            if hidden is not None:
                hidden.append(x)
        return self.norm(x)


# ================================================================================== transformers models
class CartPreTrainedModel(PreTrainedModel):
    config_class = CartConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block", "CoreBlock"]
    _supports_sdpa = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: forward builds a CartCache

    def _init_weights(self, module: nn.Module) -> None:
        """cart's init: every Linear and the embedding N(0, init_std); norms 1; the gate at A = gate_init;
        the blend at the pure residual ("stable") or softmax([1, 0, 0]) ("paper")."""
        c = self.config
        if isinstance(module, (nn.Linear, nn.Embedding)):
            _init.normal_(module.weight, mean=0.0, std=c.init_std)
        elif isinstance(module, RMSNorm):
            _init.ones_(module.weight)
        elif isinstance(module, LTIGate):
            _init.constant_(module.a, math.log(c.gate_init / (1 - c.gate_init)))
        elif isinstance(module, HyperBlend):
            init = [1.0, 0.0, 0.0] if c.fidelity == "paper" else [0.0, -c.hyper_init_gap, -c.hyper_init_gap]
            with torch.no_grad():
                module.logits.copy_(torch.tensor(init))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        n_loops: int | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ):
        """Token ids [B, T] -> logits [B, T, V] (the last `logits_to_keep` positions when > 0).

        n_loops: run the core this many times (default config.n_loops, the trained R; with a shared
        core any R >= 1; for the dense control with share_layers, the depth).
        cache: a CartCache from an earlier call (positions continue from its length); a new one is
        made when use_cache (default config.use_cache) and none is given.
        labels: next-token targets aligned with input_ids (shifted inside; -100 is ignored).
        """
        cache = cache if cache is not None else past_key_values
        if kwargs.get("position_ids") is not None:
            raise ValueError("position_ids are not taken: positions follow from the cache length and the attention mask")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.model.embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        R = self.model.resolve_loops(n_loops)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache:
            cache = CartCache()
        past = cache.get_seq_length() if cache is not None else 0
        if cache is not None:
            held = getattr(cache, "n_loops", None) if past else None
            if held is not None and held != R:
                raise ValueError(f"this cache was filled with n_loops={held}; it cannot continue with n_loops={R}")
            cache.n_loops = R
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's max_seq_len={self.config.max_seq_len}")
        step = Step(T, past, x.device, self.config.rope_base, attention_mask)
        want_hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        hidden = [x] if want_hidden else None
        h = self.model(x, step, cache, R, hidden)
        if hidden is not None:
            hidden.append(h)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = F.linear(h, self.model.embed.weight)  # tied head
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=tuple(hidden) if hidden is not None else None,
                                     **{_CACHE_FIELD: cache})
        return out if return_dict is not False else out.to_tuple()


class CartForCausalLM(CartPreTrainedModel, GenerationMixin):
    """CART with its tied LM head. Weights: `model.<cart parameter name>`."""

    def __init__(self, config: CartConfig):
        super().__init__(config)
        if config.kind != "cart":
            raise ValueError(f"CartForCausalLM needs kind='cart', got {config.kind!r} (use CartDenseForCausalLM)")
        self.model = CartModel(config)
        self.post_init()


class CartDenseForCausalLM(CartPreTrainedModel, GenerationMixin):
    """The dense baseline or the homogeneous control, with its tied LM head."""

    config_class = CartDenseConfig

    def __init__(self, config: CartConfig):
        super().__init__(config)
        if config.kind != "dense":
            raise ValueError(f"CartDenseForCausalLM needs kind='dense', got {config.kind!r} (use CartForCausalLM)")
        self.model = DenseModel(config)
        self.post_init()


__all__ = ["CartCache", "CartConfig", "CartDenseConfig", "CartDenseForCausalLM", "CartForCausalLM"]
