"""Parameter groups (SPEC §6.4), the schedule, and the on-device skip of a non-finite step."""
import math

import pytest
import torch

from cart.config import CARTConfig, DenseConfig
from cart.model import build_model
from cart.train import TrainConfig
from cart.train.optim import WarmupCosine, build_optimizer, param_groups, skips_on_device

SMALL = dict(vocab_size=128, d_model=64, max_seq_len=32, n_prelude=1, n_loops=2)


def _groups(cfg, **kw):
    model = build_model(cfg)
    decayed, exempt = {}, {}
    for g in param_groups(model, 0.1, **kw):
        (decayed if g["weight_decay"] else exempt).update(dict.fromkeys(g["names"]))
    return model, set(decayed), set(exempt)


def test_stable_exempts_gates_blend_norms_and_loop_embedding():
    model, decayed, exempt = _groups(CARTConfig(fidelity="stable", **SMALL))
    assert {"gate.a", "hyper.logits", "loop_embed.proj.weight", "norm.weight", "coda.norm_attn.weight"} <= exempt
    assert exempt == model.no_decay_parameter_names()
    assert {"embed.weight", "cores.0.attn.w_q.weight", "prelude.0.mlp.w_down.weight"} <= decayed
    assert decayed | exempt == {n for n, _ in model.named_parameters()} and not decayed & exempt


def test_paper_fidelity_decays_everything():
    model, decayed, exempt = _groups(CARTConfig(fidelity="paper", **SMALL))
    assert not exempt and decayed == {n for n, _ in model.named_parameters()}
    # and the override works both ways
    _, _, exempt = _groups(CARTConfig(fidelity="paper", **SMALL), decay_everything=False)
    assert "gate.a" in exempt
    _, _, exempt = _groups(CARTConfig(fidelity="stable", **SMALL), decay_everything=True)
    assert not exempt


def test_dense_exempts_one_dimensional_parameters():
    model, decayed, exempt = _groups(DenseConfig(vocab_size=128, d_model=64, max_seq_len=32, n_layers=2))
    assert exempt == {n for n, p in model.named_parameters() if p.ndim == 1} and exempt


@pytest.mark.parametrize("fidelity,moves", [("paper", True), ("stable", False)])
def test_weight_decay_alone_moves_the_gate_only_in_paper_fidelity(fidelity, moves):
    """SPEC §6.4: with zero gradient, decoupled decay multiplies a by (1 - lr*wd) each step."""
    cfg = TrainConfig(model=CARTConfig(fidelity=fidelity, **SMALL), seq_len=32, optimizer="adamw")
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    a0 = model.gate.a.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(10):
        opt.step()
    expected = a0 * (1 - cfg.lr * cfg.weight_decay) ** 10 if moves else a0
    torch.testing.assert_close(model.gate.a.detach(), expected)


def test_fused_adamw_skips_on_device():
    cfg = TrainConfig(model=CARTConfig(**SMALL), seq_len=32)
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert skips_on_device(opt)
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    opt.found_inf = torch.ones(())
    opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_adamw8bit_off_cuda_is_a_clear_error():
    cfg = TrainConfig(model=CARTConfig(**SMALL), seq_len=32, optimizer="adamw8bit")
    with pytest.raises(ValueError, match="adamw8bit.*CUDA"):
        build_optimizer(build_model(cfg.model), cfg, torch.device("cpu"))


def test_warmup_then_cosine_to_the_floor():
    s = WarmupCosine(peak=3e-4, floor=3e-5, warmup=100, total=1000)
    assert s(0) == pytest.approx(3e-6) and s(99) == pytest.approx(3e-4)
    assert s(100) == pytest.approx(3e-4)
    assert s(550) == pytest.approx(3e-5 + 0.5 * (3e-4 - 3e-5) * (1 + math.cos(math.pi * 0.5)))
    assert s(1000) == pytest.approx(3e-5) and s(5000) == pytest.approx(3e-5)
    lrs = [s(i) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_decay_only_trajectory_is_what_adamw_does_with_zero_gradient():
    """The gate-vs-weight-decay analysis uses the trainer's own schedule; checked against torch's AdamW
    run for real on a parameter whose gradient is always zero."""
    import math

    from cart.train.optim import WarmupCosine, decay_only_trajectory

    sched = WarmupCosine(3e-3, 3e-4, 10, 120)
    a = torch.nn.Parameter(torch.full((4,), math.log(9.0), dtype=torch.float64))
    opt = torch.optim.AdamW([a], lr=sched(0), betas=(0.9, 0.95), weight_decay=0.1)
    seen = [a.item() if a.numel() == 1 else float(a[0])]
    for t in range(120):
        for g in opt.param_groups:
            g["lr"] = sched(t)
        a.grad = torch.zeros_like(a)
        opt.step()
        seen.append(float(a[0]))
    pred = decay_only_trajectory(math.log(9.0), sched, 0.1, 120)
    assert len(pred) == 121
    for x, y in zip(seen, pred):
        assert abs(x - y) < 1e-12
    assert 1 / (1 + math.exp(-pred[-1])) < 0.9
