"""Parameters, FLOPs and parity: the one place they are computed (SPEC §2).

Everything here is a closed-form function of a config; tests check it against a count of the built
model's parameters for every variant, and against the paper's published values.

Conventions:
- stored    = every unique parameter, the tied embedding counted once;
- ablations: by default only parameters the ablated model has and uses are counted (the built model
  has no unused parameter: `cart params` agrees with `model.num_params()`). `count_unused=True`
  counts as the published code does, which builds the gate vector (d), the hyper-connection weights
  (3) and the loop-index projection (32d) whatever its disable flags say
  (`cart params --count-unused`);
- effective = stored + the parameters that run again on every extra loop: (R - 1) * N_core for a
  shared core (+ (R - 1) * KV when K/V are recomputed each loop), (n_layers - 1) * L for a shared
  homogeneous stack;
- forward FLOPs per token = 2 * (weights applied per token) + attention (QK^T and AV:
  4 * d * T_ctx per attention application). T_ctx = T (the PaLM/MFU convention and the paper's,
  default) or (T + 1) / 2 with causal=True (the work a causal kernel actually needs). The paper's
  figures exclude the LM head (include_head=False); MFU includes it. Training = 3 x forward.
  The loop-index projection W_lie pe(r) is the same for every position, so it costs no per-token FLOPs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from cart.config import CARTConfig, DenseConfig, ModelConfig


def _layer_params(d: int, f: int, attention: str) -> int:
    """One pre-norm block: attention + SwiGLU (3df) + two norm weights (2d)."""
    attn = {"mla": 11 * d * d // 4, "mha": 4 * d * d, "cross": 2 * d * d}[attention]  # 2.75d², 4d², 2d²
    return attn + 3 * d * f + 2 * d


def kv_params(d: int) -> int:
    """The anchor MLA projection: W_down (d x d/4) + W_kup, W_vup (d/4 x d each) = 0.75d²."""
    return 3 * d * d // 4


def core_params(cfg: CARTConfig) -> int:
    """N_core: one core block (2d² + 3df + 2d with cross-attention; a full MLA layer when self)."""
    return _layer_params(cfg.d_model, cfg.d_ff, "cross" if cfg.core_attention == "cross" else "mla")


@dataclass(frozen=True)
class Accounting:
    stored: int
    effective: int
    leverage: float
    core: int  # N_core (CART) or one layer (dense)
    fwd_flops_per_token: float
    train_flops_per_token: float
    seq_len: int
    n_loops: int  # the R (or depth) these numbers are for

    def to_dict(self) -> dict:
        return asdict(self)


def stored_params(cfg: ModelConfig, count_unused: bool = False) -> int:
    """Unique parameters. count_unused: also the gate, blend and loop-index parameters an ablation
    leaves unused (the published code's convention)."""
    d, V, f = cfg.d_model, cfg.vocab_size, cfg.d_ff
    if isinstance(cfg, DenseConfig):
        n_unique = 1 if cfg.share_layers else cfg.n_layers
        return V * d + n_unique * _layer_params(d, f, cfg.attention) + d
    n = V * d + (cfg.n_prelude + 1) * _layer_params(d, f, "mla")
    if cfg.uses_anchor:
        n += kv_params(d)
    n += cfg.n_core_blocks * core_params(cfg)
    n += d  # final norm
    n += d if (cfg.lti_gate or count_unused) else 0
    n += cfg.loop_embed_dim * d if (cfg.loop_embedding or count_unused) else 0
    n += 3 if (cfg.hyper_connections or count_unused) else 0
    return n


def effective_params(cfg: ModelConfig, n_loops: int | None = None, count_unused: bool = False) -> int:
    """Stored + what extra loops re-run. n_loops overrides R (or the shared depth) for inference."""
    if isinstance(cfg, DenseConfig):
        depth = cfg.n_layers if n_loops is None else n_loops
        d, V = cfg.d_model, cfg.vocab_size
        return V * d + depth * _layer_params(d, cfg.d_ff, cfg.attention) + d
    R = cfg.n_loops if n_loops is None else n_loops
    n = stored_params(cfg, count_unused)
    if cfg.share_core:
        n += (R - 1) * core_params(cfg)
    if cfg.uses_anchor and not cfg.freeze_kv:
        n += (R - 1) * kv_params(cfg.d_model)
    return n


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, n_loops: int | None = None, include_head: bool = True, causal: bool = False) -> float:
    d, V = cfg.d_model, cfg.vocab_size
    t_ctx = (seq_len + 1) / 2 if causal else seq_len
    attn = 4 * d * t_ctx  # QK^T + AV for one attention application, per query token
    head = 2 * V * d if include_head else 0
    if isinstance(cfg, DenseConfig):
        depth = cfg.n_layers if n_loops is None else n_loops
        w = _layer_params(d, cfg.d_ff, cfg.attention) - 2 * d
        return depth * (2 * w + attn) + head
    R = cfg.n_loops if n_loops is None else n_loops
    layer_w = _layer_params(d, cfg.d_ff, "mla") - 2 * d
    core_w = core_params(cfg) - 2 * d
    flops = (cfg.n_prelude + 1) * (2 * layer_w + attn)  # prelude + coda
    if cfg.uses_anchor:
        flops += 2 * kv_params(d) * (1 if cfg.freeze_kv else R)  # the anchor: once, unless unfrozen
    flops += R * (2 * core_w + attn)
    return flops + head


def account(cfg: ModelConfig, seq_len: int | None = None, n_loops: int | None = None, include_head: bool = True,
            causal: bool = False, count_unused: bool = False) -> Accounting:
    T = seq_len or cfg.max_seq_len
    s, e = stored_params(cfg, count_unused), effective_params(cfg, n_loops, count_unused)
    fwd = forward_flops_per_token(cfg, T, n_loops, include_head, causal)
    if isinstance(cfg, CARTConfig):
        core, R = core_params(cfg), (cfg.n_loops if n_loops is None else n_loops)
    else:
        core, R = _layer_params(cfg.d_model, cfg.d_ff, cfg.attention), (cfg.n_layers if n_loops is None else n_loops)
    return Accounting(stored=s, effective=e, leverage=e / s, core=core, fwd_flops_per_token=fwd,
                      train_flops_per_token=3 * fwd, seq_len=T, n_loops=R)


@dataclass(frozen=True)
class ParityMatch:
    target: str  # "stored" or "effective"
    target_params: int
    n_layers: int
    dense_params: int
    rel_error: float  # (dense - target) / target
    below: tuple[int, int]  # (depth, params) of the deepest dense model at or under the target
    above: tuple[int, int]  # (depth, params) of the shallowest dense model above the target


def dense_for(cfg: CARTConfig, n_layers: int) -> DenseConfig:
    return DenseConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, max_seq_len=cfg.max_seq_len,
                       rope_base=cfg.rope_base, norm_eps=cfg.norm_eps, init_std=cfg.init_std, n_layers=n_layers)


def parity(cfg: CARTConfig, target: str = "stored") -> ParityMatch:
    """The dense depth (full-rank MHA baseline, same width and vocabulary) whose stored parameter
    count is nearest to CART's stored ("stored") or effective ("effective") count."""
    if target not in ("stored", "effective"):
        raise ValueError(f"parity target must be 'stored' or 'effective', got {target!r}")
    goal = stored_params(cfg) if target == "stored" else effective_params(cfg)
    base = stored_params(dense_for(cfg, 1)) - _layer_params(cfg.d_model, cfg.d_ff, "mha")  # embedding + final norm
    per = _layer_params(cfg.d_model, cfg.d_ff, "mha")
    lo = max(1, (goal - base) // per)
    hi = lo + 1
    p_lo, p_hi = base + lo * per, base + hi * per
    n, p = (lo, p_lo) if abs(p_lo - goal) <= abs(p_hi - goal) else (hi, p_hi)
    return ParityMatch(target, goal, n, p, (p - goal) / goal, (lo, p_lo), (hi, p_hi))
