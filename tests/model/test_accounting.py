"""Accounting equals the built model's parameter count for every variant, and the paper's values."""
import pytest

from cart.accounting import account, effective_params, forward_flops_per_token, parity, stored_params
from cart.config import CARTConfig, DenseConfig
from cart.model import build_model

from .test_model import CONFIGS


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stored_params_equal_counted(name):
    cfg = CONFIGS[name]
    assert stored_params(cfg) == build_model(cfg).num_params()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_effective_params_count_reused_weights(name):
    cfg = CONFIGS[name]
    model = build_model(cfg)
    if isinstance(cfg, CARTConfig):
        R = cfg.n_loops
        core = sum(p.numel() for p in model.cores[0].parameters())
        kv = sum(p.numel() for p in model.anchor.parameters()) if model.anchor is not None else 0
        extra = (R - 1) * core if cfg.share_core else 0
        extra += (R - 1) * kv if (model.anchor is not None and not cfg.freeze_kv) else 0
    else:
        layer = sum(p.numel() for p in model.layers[0].parameters())
        extra = (cfg.n_layers - 1) * layer if cfg.share_layers else 0
    assert effective_params(cfg) == model.num_params() + extra


PAPER = dict(vocab_size=32_000, n_prelude=6, fidelity="paper")


def test_published_values_d256():
    cfg = CARTConfig(d_model=256, n_loops=6, **PAPER)
    assert stored_params(cfg) == 14_365_187
    assert effective_params(cfg) == 17_972_227
    assert effective_params(cfg.replace(n_loops=8)) == 19_415_043
    assert build_model(cfg).num_params() == 14_365_187


def test_published_values_d1024():
    cfg = CARTConfig(d_model=1024, n_loops=8, **PAPER)
    assert stored_params(cfg) == 125_093_891
    assert effective_params(cfg) == 200_343_555
    assert round(effective_params(cfg.replace(n_loops=6)) / 1e6, 2) == 178.84


def test_published_dense_baselines():
    d7 = DenseConfig(vocab_size=32_000, d_model=1024, n_layers=7)
    d12 = d7.replace(n_layers=12)
    assert round(stored_params(d7) / 1e6, 2) == 122.70
    assert round(stored_params(d12) / 1e6, 2) == 186.93


def test_published_forward_flops_per_sequence():
    """Paper convention: no LM head, full-T attention. Dense 7L 214 G, CART R6/8/10 355/407/460 G, Dense 17L 520 G."""
    T = 1024
    g = lambda cfg: round(forward_flops_per_token(cfg, T, include_head=False) * T / 1e9)  # noqa: E731
    dense = DenseConfig(vocab_size=32_000, d_model=1024, n_layers=7)
    cart = CARTConfig(d_model=1024, n_loops=6, **PAPER)
    assert g(dense) == 214
    assert [g(cart.replace(n_loops=R)) for R in (6, 8, 10)] == [355, 407, 460]
    assert g(dense.replace(n_layers=17)) == 520


def test_unfrozen_kv_costs_more_flops_and_attention_variants():
    cfg = CARTConfig(d_model=256, n_loops=6, vocab_size=8000)
    f = forward_flops_per_token(cfg, 256)
    fu = forward_flops_per_token(cfg.replace(freeze_kv=False), 256)
    assert fu - f == pytest.approx(2 * 0.75 * 256 ** 2 * 5)
    assert forward_flops_per_token(cfg, 256, causal=True) < f
    acc = account(cfg, 256)
    assert acc.train_flops_per_token == 3 * acc.fwd_flops_per_token
    assert acc.leverage == pytest.approx(acc.effective / acc.stored)


def test_parity_solver_picks_nearest_depth():
    cfg = CARTConfig(d_model=1024, n_loops=6, **PAPER)
    s, e = parity(cfg, "stored"), parity(cfg, "effective")
    assert s.n_layers == 7 and abs(s.rel_error) < 0.02
    # R=6 effective 178.84M: 11 layers (174.09M, -2.7%) is nearer than the paper's hand-picked 12 (186.93M, +4.5%)
    assert e.n_layers == 11 and e.below[0] == 11 and e.above[0] == 12
    for m in (s, e):
        assert abs(m.dense_params - m.target_params) <= min(abs(m.below[1] - m.target_params), abs(m.above[1] - m.target_params))
    with pytest.raises(ValueError, match="parity target"):
        parity(cfg, "flops")


@pytest.mark.parametrize("ablation,unused", [({"lti_gate": False}, 128), ({"hyper_connections": False}, 3),
                                             ({"loop_embedding": False}, 32 * 128), ({}, 0)])
def test_count_unused_adds_what_the_published_code_keeps(ablation, unused):
    """Default: what the ablated model has (== the built model); count_unused: + the parameters the
    published code constructs whatever its disable flags (gate d, blend 3, loop-index 32d)."""
    cfg = CONFIGS["stable"].replace(**ablation)
    full = CONFIGS["stable"]
    assert stored_params(cfg) == build_model(cfg).num_params()
    assert stored_params(cfg, count_unused=True) == stored_params(cfg) + unused == stored_params(full)
    assert effective_params(cfg, count_unused=True) - effective_params(cfg) == unused
