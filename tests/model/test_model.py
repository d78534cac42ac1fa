"""CART model family: causality, K/V-once, fidelity, gradients, any-R inference, config errors."""
from unittest import mock

import pytest
import torch

from cart.config import CARTConfig, DenseConfig, config_from_dict, config_to_dict, homogeneous_control
from cart.model import build_model
from cart.model.attention import AnchorKV
from cart.model.diagnostics import loop_jacobian_norm, loop_stats

V, T = 97, 12
BASE = dict(vocab_size=V, d_model=128, max_seq_len=32, n_prelude=2, n_loops=3)

CART_VARIANTS = {
    "stable": {"fidelity": "stable"},
    "paper": {"fidelity": "paper"},  # the default
    "unfrozen_kv": {"freeze_kv": False},
    "r1": {"n_loops": 1},
    "unshared_core": {"share_core": False},
    "unshared_self_attn_core": {"share_core": False, "core_attention": "self"},
    "shared_self_attn_core": {"core_attention": "self"},
    "no_hyper": {"hyper_connections": False},
    "no_gate": {"lti_gate": False},  # paper fidelity: h = h~ + u
    "no_gate_stable": {"fidelity": "stable", "lti_gate": False},  # h = u
    "no_loop_embedding": {"loop_embedding": False},
    "paper_unfrozen_unshared": {"fidelity": "paper", "freeze_kv": False, "share_core": False},
    "no_prelude": {"n_prelude": 0},
}
DENSE_VARIANTS = {
    "dense_mha": {"n_layers": 3},
    "homogeneous_unshared": {"n_layers": 4, "attention": "mla"},
    "homogeneous_shared": {"n_layers": 4, "attention": "mla", "share_layers": True},
}


def all_configs():
    for name, over in CART_VARIANTS.items():
        yield name, CARTConfig(**{**BASE, **over})
    dbase = {k: v for k, v in BASE.items() if k not in ("n_prelude", "n_loops")}
    for name, over in DENSE_VARIANTS.items():
        yield name, DenseConfig(**{**dbase, **over})


CONFIGS = dict(all_configs())


def _perturb_gate(model):
    """Move gate/blend away from init so fidelity-specific paths are exercised with generic values."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith(("gate.", "hyper.")):
                p.add_(torch.randn_like(p) * 0.5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_every_variant(name):
    """Changing tokens after t never changes logits at positions <= t (catches SPEC §6.1's leak)."""
    model = build_model(CONFIGS[name]).eval()
    _perturb_gate(model)
    x = torch.randint(0, V, (2, T))
    base = model(x)
    for t in (0, 4, T - 2):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, V, (2, T - t - 1))
        out = model(y)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5), f"{name}: position <= {t} saw the future"
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:]), f"{name}: later positions should change"


def test_noncausal_cross_attention_would_be_caught():
    """The causality test is not vacuous: the published bug (a non-causal core cross-attention,
    prelude and coda left causal) changes position 0 when only the last token changes."""
    import torch.nn.functional as F
    from cart.model.attention import CrossAttention, _heads, _merge

    def leaky_forward(self, x, k, v):
        return self.w_o(_merge(F.scaled_dot_product_attention(_heads(self.w_q(x), self.n_heads), k, v)))

    model = build_model(CONFIGS["stable"]).eval()
    x = torch.randint(0, V, (1, T))
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    assert torch.allclose(model(y)[:, 0], model(x)[:, 0], atol=1e-6)
    with mock.patch.object(CrossAttention, "forward", leaky_forward):
        assert not torch.allclose(model(y)[:, 0], model(x)[:, 0], atol=1e-6)


@pytest.mark.parametrize("freeze,expected", [(True, 1), (False, 3)])
def test_anchor_kv_computed_once_per_forward(freeze, expected):
    model = build_model(CARTConfig(**{**BASE, "freeze_kv": freeze})).eval()
    calls = []
    orig = AnchorKV.forward

    def counting(self, e):
        calls.append(1)
        return orig(self, e)

    with mock.patch.object(AnchorKV, "forward", counting):
        model(torch.randint(0, V, (1, T)))
    assert len(calls) == expected  # R=3: once when frozen, R times when unfrozen


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_every_parameter(name):
    model = build_model(CONFIGS[name])
    x = torch.randint(0, V, (2, T + 1))
    model.loss(x[:, :-1], x[:, 1:]).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {n}"


def test_fidelity_differs_exactly_in_gate_and_blend():
    """Same parameters; carried-state coefficient A (stable) vs 1 + A (paper); blend init per SPEC."""
    torch.manual_seed(1)
    s = build_model(CARTConfig(**{**BASE, "fidelity": "stable"}))
    torch.manual_seed(1)
    p = build_model(CARTConfig(**{**BASE, "fidelity": "paper"}))
    assert [n for n, _ in s.named_parameters()] == [n for n, _ in p.named_parameters()]
    A = torch.sigmoid(s.gate.a)
    assert torch.allclose(A, torch.full_like(A, 0.9))
    assert torch.allclose(s.carried_state_coefficient(), A)
    assert torch.allclose(p.carried_state_coefficient(), 1 + A)
    # the gate maths itself: h = A h~ + (u - h~) vs h = A h~ + u
    h, u = torch.randn(2, 3, 128), torch.randn(2, 3, 128)
    assert torch.allclose(p.gate(h, u) - s.gate(h, u), h, atol=1e-6)
    # blend: pure residual (to fp32 precision) vs softmax([1, 0, 0])
    ws, wp = s.hyper_weights(), p.hyper_weights()
    assert ws[0] > 1 - 1e-6 and ws[1:].max() < 1e-6 and torch.isclose(ws.sum(), torch.tensor(1.0))
    assert torch.allclose(wp, torch.tensor([0.5761, 0.2119, 0.2119]), atol=1e-4)
    # every other parameter identical at the same seed
    sd_s, sd_p = s.state_dict(), p.state_dict()
    diff = [k for k in sd_s if not torch.equal(sd_s[k], sd_p[k])]
    assert diff == ["hyper.logits"]


@pytest.mark.parametrize("fidelity", ["stable", "paper"])
def test_no_gate_is_the_gate_with_A_fixed_at_1(fidelity):
    """The no-LTI ablation as the published `disable_lti`: paper h = h~ + u (= 2h~ + delta), stable
    h = h~ + delta = u; the whole model equals the gated one with sigmoid(a) = 1 to fp32."""
    h, u = torch.randn(2, 3, 128), torch.randn(2, 3, 128)
    torch.manual_seed(3)
    nogate = build_model(CARTConfig(**BASE, fidelity=fidelity, lti_gate=False)).eval()
    expected = u + h if fidelity == "paper" else u
    assert torch.equal(nogate.gate(h, u), expected)
    assert "gate.a" not in dict(nogate.named_parameters())
    assert torch.equal(nogate.carried_state_coefficient(), torch.full((128,), 2.0 if fidelity == "paper" else 1.0))
    assert nogate.gate_stats() == {}
    gated = build_model(CARTConfig(**BASE, fidelity=fidelity)).eval()
    sd = dict(nogate.state_dict())
    sd["gate.a"] = torch.full((128,), 40.0)  # sigmoid(40) == 1.0 in fp32
    gated.load_state_dict(sd)
    assert torch.sigmoid(gated.gate.a).eq(1.0).all()
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        torch.testing.assert_close(nogate(x), gated(x), rtol=0, atol=1e-5)


def test_stable_loop_contracts_paper_loop_does_not():
    """Measured at init: stable's loop map is (nearly) contractive, the published double residual is not."""
    torch.manual_seed(0)
    x = torch.randint(0, V, (2, T))
    js = loop_jacobian_norm(build_model(CARTConfig(**{**BASE, "n_loops": 4, "fidelity": "stable"})).eval(), x)
    torch.manual_seed(0)
    jp = loop_jacobian_norm(build_model(CARTConfig(**{**BASE, "n_loops": 4, "fidelity": "paper"})).eval(), x)
    assert jp > 1.5 and js < 1.2 and jp > js + 0.5
    st = loop_stats(build_model(CARTConfig(**{**BASE, "n_loops": 4, "fidelity": "paper"})).eval(), x)
    assert len(st["delta_norm"]) == 4 and len(st["contraction"]) == 3


@pytest.mark.parametrize("R", [1, 2, 16, 17, 40])
def test_any_loop_count_at_inference(R):
    """The loop-index code is a function of r, not a 16-row table: R beyond 16 works."""
    model = build_model(CARTConfig(**BASE)).eval()
    out = model(torch.randint(0, V, (1, T)), n_loops=R)
    assert out.shape == (1, T, V) and torch.isfinite(out).all()


def test_loop_code_matches_paper_table_rows():
    from cart.model.recurrence import sinusoid
    import math
    for r in range(16):
        code = sinusoid(r, 32)
        for i in range(16):
            assert math.isclose(code[2 * i].item(), math.sin(r / 10000 ** (2 * i / 32)), abs_tol=1e-6)
            assert math.isclose(code[2 * i + 1].item(), math.cos(r / 10000 ** (2 * i / 32)), abs_tol=1e-6)


def test_unshared_core_refuses_other_loop_counts():
    model = build_model(CARTConfig(**{**BASE, "share_core": False}))
    with pytest.raises(ValueError, match="distinct core blocks"):
        model(torch.randint(0, V, (1, 4)), n_loops=5)


def test_sequence_longer_than_context_is_refused():
    model = build_model(CARTConfig(**BASE))
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model(torch.randint(0, V, (1, 33)))


@pytest.mark.parametrize(
    "over,match",
    [
        ({"d_model": 100}, "d_model"),
        ({"n_loops": 0}, "n_loops"),
        ({"fidelity": "exact"}, "fidelity"),
        ({"core_attention": "self", "freeze_kv": False}, "core_attention='self' and freeze_kv=False"),
        ({"gate_init": 1.0}, "gate_init"),
        ({"share_core": "no"}, "share_core"),
    ],
)
def test_bad_configs_name_the_field(over, match):
    with pytest.raises(ValueError, match=match):
        CARTConfig(**{**BASE, **over})


def test_config_dict_round_trip_and_unknown_fields():
    for cfg in CONFIGS.values():
        assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_loop'\]"):
        config_from_dict({"kind": "cart", "n_loop": 3}, source="x.toml")
    with pytest.raises(ValueError, match="CARTConfig.n_loops must be an integer, got '3'"):
        config_from_dict({"kind": "cart", "n_loops": "3"})
    with pytest.raises(ValueError, match="unknown model kind"):
        config_from_dict({"kind": "rnn"})


def test_homogeneous_control_matches_cart_depth():
    cfg = CARTConfig(**BASE)
    h = homogeneous_control(cfg, share_layers=True)
    assert h.n_layers == cfg.n_prelude + cfg.n_loops + 1 and h.attention == "mla" and h.share_layers


def test_init_distribution():
    model = build_model(CARTConfig(**{**BASE, "d_model": 256}))
    w = model.embed.weight
    assert abs(w.std().item() - 0.02) < 0.002
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
