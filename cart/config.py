"""Model configurations, validated on construction.

- `CARTConfig`: the Context-Anchored Recurrent Transformer (SPEC §1), its two fidelity modes and
  every ablation of the paper as a typed field.
- `DenseConfig`: the dense baseline (full-rank MHA, SPEC §2) and the homogeneous control the paper
  asks for (the same MLA block at every layer, shared or not).
- `config_from_dict` / `config_to_dict`: the on-disk form (JSON/TOML), with unknown fields refused.

Derived sizes (heads, latent width, SwiGLU width) are properties, never stored, so a config can
never disagree with itself.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

HEAD_DIM = 64  # fixed by the paper: heads = d / 64


def swiglu_hidden(d: int) -> int:
    """SwiGLU width: 8d/3 rounded up to a multiple of 256 (768, 1536, 2048, 2816 for d=256..1024)."""
    return 256 * math.ceil((8 * d // 3) / 256)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class _Common:
    vocab_size: int = 32_000  # Llama-2 SentencePiece in the paper
    d_model: int = 256
    max_seq_len: int = 1024  # longest sequence the RoPE tables and position checks allow
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02  # N(0, 0.02) for every Linear and the embedding (a N(0,1) tied head hits denormals on CPU)

    @property
    def n_heads(self) -> int:
        return self.d_model // HEAD_DIM

    @property
    def d_latent(self) -> int:
        return self.d_model // 4

    @property
    def d_ff(self) -> int:
        return swiglu_hidden(self.d_model)

    def _validate_common(self) -> None:
        name = type(self).__name__
        for f in ("vocab_size", "d_model", "max_seq_len"):
            v = getattr(self, f)
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name}.{f} must be a positive integer, got {v!r}")
        _check(self.d_model % HEAD_DIM == 0, f"{name}.d_model must be a multiple of the head dim {HEAD_DIM}, got {self.d_model}")
        _check(self.d_model % 4 == 0, f"{name}.d_model must be divisible by 4 (MLA latent d/4), got {self.d_model}")
        _check(self.rope_base > 0, f"{name}.rope_base must be > 0, got {self.rope_base}")
        _check(0 < self.norm_eps < 1, f"{name}.norm_eps must be in (0, 1), got {self.norm_eps}")
        _check(self.init_std > 0, f"{name}.init_std must be > 0, got {self.init_std}")

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CARTConfig(_Common):
    """CART: P prelude layers -> anchor K/V (once) -> one core block looped R times -> coda -> tied head.

    Ablation fields mirror the paper's §6 diagnostics; defaults are the full model.
    """

    n_prelude: int = 6  # P unique prelude layers (MLA self-attention + SwiGLU)
    n_loops: int = 6  # R: how many times the core runs in training (any R works at inference)
    # "stable": contractive gate h = A*h~ + delta and a convex hyper blend starting at the pure residual.
    # "paper": the published code bit for bit (h = A*h~ + u, softmax over [1, 0, 0]); SPEC §6.2, §6.5.
    fidelity: Literal["stable", "paper"] = "stable"
    # --- ablations (SPEC §3) ---
    freeze_kv: bool = True  # False: recompute K/V from the loop state every loop ("unfrozen K/V")
    share_core: bool = True  # False: R distinct core blocks ("unshared core")
    core_attention: Literal["cross", "self"] = "cross"  # "self": MLA self-attention core ("unshared self-attn core" with share_core=False)
    hyper_connections: bool = True  # False: h~ = latest state
    # False: the gate with A fixed at 1 and no learned vector, as the published `disable_lti`:
    # fidelity "paper" -> h = h~ + u = 2h~ + delta; "stable" -> h = h~ + delta = u (plain residual).
    lti_gate: bool = True
    loop_embedding: bool = True  # False: no loop-index embedding
    # Width of the fixed sinusoidal loop-index code. The paper's table has 16 rows; here pe(r) is
    # computed for any r, so R is never capped (rows < 16 equal the paper's table exactly).
    loop_embed_dim: int = 32
    gate_init: float = 0.9  # A = sigmoid(a) starts here (a = ln 9)
    # stable fidelity: softmax logits start at [0, -gap, -gap] so the blend is the pure residual to
    # fp32 precision (1 - 2e^-gap ~ 1 - 2e-7) yet still trainable by Adam.
    hyper_init_gap: float = 16.0

    def __post_init__(self) -> None:
        self._validate_common()
        _check(isinstance(self.n_prelude, int) and self.n_prelude >= 0, f"CARTConfig.n_prelude must be an integer >= 0, got {self.n_prelude!r}")
        _check(isinstance(self.n_loops, int) and self.n_loops >= 1, f"CARTConfig.n_loops must be an integer >= 1, got {self.n_loops!r}")
        _check(self.fidelity in ("stable", "paper"), f"CARTConfig.fidelity must be 'stable' or 'paper', got {self.fidelity!r}")
        _check(self.core_attention in ("cross", "self"), f"CARTConfig.core_attention must be 'cross' or 'self', got {self.core_attention!r}")
        for f in ("freeze_kv", "share_core", "hyper_connections", "lti_gate", "loop_embedding"):
            _check(isinstance(getattr(self, f), bool), f"CARTConfig.{f} must be a bool, got {getattr(self, f)!r}")
        _check(
            self.core_attention == "cross" or self.freeze_kv,
            "CARTConfig: core_attention='self' and freeze_kv=False are incompatible: a self-attention core has no "
            "anchor K/V to unfreeze (it recomputes its own K/V every loop by construction); keep freeze_kv=True",
        )
        _check(self.loop_embed_dim > 0 and self.loop_embed_dim % 2 == 0, f"CARTConfig.loop_embed_dim must be a positive even integer, got {self.loop_embed_dim}")
        _check(0 < self.gate_init < 1, f"CARTConfig.gate_init must be in (0, 1), got {self.gate_init}")
        _check(self.hyper_init_gap > 0, f"CARTConfig.hyper_init_gap must be > 0, got {self.hyper_init_gap}")

    @property
    def kind(self) -> str:
        return "cart"

    @property
    def uses_anchor(self) -> bool:
        return self.core_attention == "cross"

    @property
    def n_core_blocks(self) -> int:
        """Distinct core blocks stored."""
        return 1 if self.share_core else self.n_loops


@dataclass(frozen=True)
class DenseConfig(_Common):
    """A plain decoder: n_layers pre-norm blocks, RoPE everywhere, SwiGLU, tied head.

    attention="mha" is the paper's dense baseline (full-rank 4d² attention). attention="mla" with
    the CART layer is the homogeneous control: the same block at every depth, no
    prelude/anchor/core/coda split; share_layers=True loops one such block n_layers times.
    """

    n_layers: int = 7
    attention: Literal["mha", "mla"] = "mha"
    share_layers: bool = False

    def __post_init__(self) -> None:
        self._validate_common()
        _check(isinstance(self.n_layers, int) and self.n_layers >= 1, f"DenseConfig.n_layers must be an integer >= 1, got {self.n_layers!r}")
        _check(self.attention in ("mha", "mla"), f"DenseConfig.attention must be 'mha' or 'mla', got {self.attention!r}")
        _check(isinstance(self.share_layers, bool), f"DenseConfig.share_layers must be a bool, got {self.share_layers!r}")

    @property
    def kind(self) -> str:
        return "dense"


ModelConfig = Union[CARTConfig, DenseConfig]
_KINDS = {"cart": CARTConfig, "dense": DenseConfig}


def config_fields(cls) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if f.init]


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    d = {"kind": cfg.kind}
    d.update({f.name: getattr(cfg, f.name) for f in config_fields(type(cfg))})
    return d


def config_from_dict(d: dict[str, Any], source: str = "config") -> ModelConfig:
    """Build a config from its dict form; unknown or mistyped fields raise naming `source` and the field."""
    d = dict(d)
    kind = d.pop("kind", "cart")
    if kind not in _KINDS:
        raise ValueError(f"{source}: unknown model kind {kind!r} (expected one of {sorted(_KINDS)})")
    cls = _KINDS[kind]
    known = {f.name: f for f in config_fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}")
    for k, v in d.items():
        default = known[k].default
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{source}: field {k!r} must be true/false, got {v!r}")
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{source}: field {k!r} must be an integer, got {v!r}")
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{source}: field {k!r} must be a number, got {v!r}")
            d[k] = float(v)
    return cls(**d)


def homogeneous_control(cfg: CARTConfig, share_layers: bool) -> DenseConfig:
    """The control the paper names but never ran: P + R + 1 identical MLA blocks (CART's depth)."""
    return DenseConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, max_seq_len=cfg.max_seq_len, rope_base=cfg.rope_base,
        norm_eps=cfg.norm_eps, init_std=cfg.init_std,
        n_layers=cfg.n_prelude + cfg.n_loops + 1, attention="mla", share_layers=share_layers,
    )
