"""Model configurations, validated on construction.

- `CARTConfig`: the Context-Anchored Recurrent Transformer (SPEC §1), its two fidelity modes and
  every ablation of the paper as a typed field.
- `DenseConfig`: the dense baseline (full-rank MHA, SPEC §2) and the homogeneous control the paper
  asks for (the same MLA block at every layer, shared or not).
- `config_from_dict` / `config_to_dict`: the on-disk form (JSON/TOML), with unknown fields refused.

Every field is validated on construction from its type and its `option(...)` constraints
(`cart.validation`); a rule relating two fields is an explicit check in `__post_init__`.

Derived sizes (heads, latent width, SwiGLU width) are properties, never stored, so a config can
never disagree with itself.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Union

from cart.validation import Check, ConfigError, config_fields, from_dict, interval, multiple_of, non_negative, option, positive, validate

HEAD_DIM = 64  # fixed by the paper: heads = d / 64


def swiglu_hidden(d: int) -> int:
    """SwiGLU width: 8d/3 rounded up to a multiple of 256 (768, 1536, 2048, 2816 for d=256..1024)."""
    return 256 * math.ceil((8 * d // 3) / 256)


@dataclass(frozen=True)
class _Common:
    vocab_size: int = option(32_000, "vocabulary size", positive)
    d_model: int = option(256, "width d (heads = d/64, MLA latent d/4)", positive, multiple_of(HEAD_DIM, "the head dim "))
    max_seq_len: int = option(1024, "longest sequence the model accepts", positive)
    rope_base: float = option(10_000.0, "RoPE base", positive)
    norm_eps: float = option(1e-6, "RMSNorm epsilon", interval("(0, 1)"))
    # a N(0,1) tied head hits denormals on CPU
    init_std: float = option(0.02, "std of the normal init", positive)

    @property
    def n_heads(self) -> int:
        return self.d_model // HEAD_DIM

    @property
    def d_latent(self) -> int:
        return self.d_model // 4

    @property
    def d_ff(self) -> int:
        return swiglu_hidden(self.d_model)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CARTConfig(_Common):
    """CART: P prelude layers -> anchor K/V (once) -> one core block looped R times -> coda -> tied head.

    Ablation fields mirror the paper's §6 diagnostics; defaults are the full model.
    """

    n_prelude: int = option(6, "P: unique prelude layers", non_negative)
    n_loops: int = option(6, "R: core loops in training", positive)
    # "paper" (default): the published code bit for bit (h = A*h~ + u, softmax over [1, 0, 0], weight decay on
    # everything); SPEC §6.2, §6.5. The default because it trained best in the cpu study's Q1 (results/cpu/).
    # "stable": contractive gate h = A*h~ + delta and a convex hyper blend starting at the pure residual.
    fidelity: Literal["stable", "paper"] = option("paper", "stable: the contractive gate h = A*h~ + delta")
    # --- ablations (SPEC §3) ---
    freeze_kv: bool = option(True, "false: recompute K/V every loop")
    share_core: bool = option(True, "false: R distinct core blocks")
    core_attention: Literal["cross", "self"] = option("cross", "self: a self-attention core")
    hyper_connections: bool = option(True, "false: no hyper-connection blend")
    # False: the gate with A fixed at 1 and no learned vector, as the published `disable_lti`:
    # fidelity "paper" -> h = h~ + u = 2h~ + delta; "stable" -> h = h~ + delta = u (plain residual).
    lti_gate: bool = option(True, "false: gate A fixed at 1 (disable_lti)")
    loop_embedding: bool = option(True, "false: no loop-index embedding")
    # The paper's table has 16 rows; here pe(r) is computed for any r, so R is never capped (rows < 16
    # equal the paper's table exactly).
    loop_embed_dim: int = option(32, "sinusoidal loop-index code width",
                                 Check(lambda v: v > 0 and v % 2 == 0, "a positive even integer"))
    gate_init: float = option(0.9, "initial gate A = sigmoid(a)", interval("(0, 1)"))
    # stable fidelity: softmax logits start at [0, -gap, -gap] so the blend is the pure residual to
    # fp32 precision (1 - 2e^-gap ~ 1 - 2e-7) yet still trainable by Adam.
    hyper_init_gap: float = option(16.0, "stable: blend logits start at -gap", positive)

    def __post_init__(self) -> None:
        validate(self)
        if self.core_attention == "self" and not self.freeze_kv:
            raise ConfigError(
                "CARTConfig: core_attention='self' and freeze_kv=False are incompatible: a self-attention core has no "
                "anchor K/V to unfreeze (it recomputes its own K/V every loop by construction); keep freeze_kv=True")

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

    n_layers: int = option(7, "layers", positive)
    attention: Literal["mha", "mla"] = option("mha", "mla: the homogeneous control")
    share_layers: bool = option(False, "true: one layer looped n_layers times")

    def __post_init__(self) -> None:
        validate(self)

    @property
    def kind(self) -> str:
        return "dense"


ModelConfig = Union[CARTConfig, DenseConfig]
_KINDS = {"cart": CARTConfig, "dense": DenseConfig}


def config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    d = {"kind": cfg.kind}
    d.update({f.name: getattr(cfg, f.name) for f in config_fields(type(cfg))})
    return d


def config_from_dict(d: dict[str, Any], source: str | None = None, where: str | None = None) -> ModelConfig:
    """Build a config from its dict form (`kind` chooses the family, default cart); unknown or mistyped
    fields raise naming `source` and the field (its path from `where`, default the class name)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'model config'} must be a table of model fields, got {d!r}", source)
    d = dict(d)
    kind = d.pop("kind", "cart")
    if kind not in _KINDS:
        raise ConfigError(f"{where + ': ' if where else ''}unknown model kind {kind!r} (expected one of {sorted(_KINDS)})",
                          source)
    return from_dict(_KINDS[kind], d, source, where)


def homogeneous_control(cfg: CARTConfig, share_layers: bool) -> DenseConfig:
    """The control the paper names but never ran: P + R + 1 identical MLA blocks (CART's depth)."""
    return DenseConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, max_seq_len=cfg.max_seq_len, rope_base=cfg.rope_base,
        norm_eps=cfg.norm_eps, init_std=cfg.init_std,
        n_layers=cfg.n_prelude + cfg.n_loops + 1, attention="mla", share_layers=share_layers,
    )
