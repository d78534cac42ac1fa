"""Variable R and adaptive R."""
import numpy as np
import pytest
import torch

from cart.eval.options import AdaptiveOptions, PplOptions
from cart.eval.perplexity import ValData
from cart.eval.tasks import TaskSource, load_task
from cart.eval.vary_r import AdaptiveLoops, adaptive_forward, format_table, vary_r
from tests.eval.helpers import LAMBADA_ITEMS, ByteTokenizer, lambada_rows, tiny_cart, tiny_dense, write_task

VARIANTS = {
    "stable": dict(n_loops=3),
    "paper": dict(n_loops=3, fidelity="paper"),
    "unfrozen-kv": dict(n_loops=3, freeze_kv=False),
    "self-attn-core": dict(n_loops=3, core_attention="self"),
    "unshared": dict(n_loops=3, share_core=False),
    "no-hyper-gate-lie": dict(n_loops=3, hyper_connections=False, lti_gate=False, loop_embedding=False),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_adaptive_with_zero_tolerance_is_the_fixed_r_forward(name):
    model = tiny_cart(**VARIANTS[name])
    idx = torch.randint(0, 258, (2, 17))
    logits, used = adaptive_forward(model, idx, AdaptiveOptions(tol=0.0, max_loops=3))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx, n_loops=3), atol=1e-5, rtol=1e-5)
    assert (used == 3).all()


def test_adaptive_halting_after_one_loop_is_r1():
    model = tiny_cart(n_loops=3)
    idx = torch.randint(0, 258, (2, 9))
    logits, used = adaptive_forward(model, idx, AdaptiveOptions(tol=1e9, max_loops=8))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx, n_loops=1), atol=1e-5, rtol=1e-5)
    assert (used == 1).all()


@pytest.mark.parametrize("kw", [dict(), dict(core_attention="self")])
def test_token_halting_is_causal(kw):
    model = tiny_cart(n_loops=3, fidelity="stable", **kw)  # the contractive loop: some positions halt
    a = torch.randint(0, 258, (1, 16))
    b = a.clone()
    b[0, 10:] = torch.randint(0, 258, (6,))
    tol = 0.3
    la, ua = adaptive_forward(model, a, AdaptiveOptions(tol, max_loops=8))
    lb, ub = adaptive_forward(model, b, AdaptiveOptions(tol, max_loops=8))
    assert 1 < ua.mean() < 8  # some positions halted, some did not: the test exercises halting
    torch.testing.assert_close(la[:, :10], lb[:, :10])
    assert torch.equal(ua[:, :10], ub[:, :10])


def test_sequence_halting_and_counter():
    model = tiny_cart(n_loops=3)
    idx = torch.randint(0, 258, (3, 12))
    _, used = adaptive_forward(model, idx, AdaptiveOptions(0.3, max_loops=8, granularity="sequence"))
    assert all(len(set(row.tolist())) == 1 for row in used)
    ad = AdaptiveLoops(model, AdaptiveOptions(0.3, 8))
    ad(idx)
    assert 1 <= ad.mean_loops <= 8
    with pytest.raises(ValueError, match="needs a CART model"):
        adaptive_forward(tiny_dense(), idx, AdaptiveOptions(0.1))


def test_vary_r_table(tmp_path):
    model = tiny_cart(n_loops=3)
    write_task(tmp_path, "lambada", "bpb_0shot", lambada_rows(LAMBADA_ITEMS))
    task = load_task("lambada", TaskSource(tmp_path))
    val = [ValData("a", np.random.default_rng(0).integers(0, 258, 300), n_bytes=400),
           ValData("b", np.random.default_rng(1).integers(0, 258, 200))]
    out = vary_r(model, [1, 2, 4], val_sets=val, tasks=[task], tokenizer=ByteTokenizer(), ppl=PplOptions(seq_len=64),
                 adaptive=AdaptiveOptions(0.2, max_loops=6))
    rows = out["rows"]
    assert [r["n_loops"] for r in rows] == [1, 2, 4, "adaptive"]
    assert len(rows[2]["contraction"]) == 3 and len(rows[2]["delta_norm"]) == 4 and rows[0]["contraction"] == []
    assert rows[1]["ppl"]["a"]["ppl"] != rows[2]["ppl"]["a"]["ppl"]
    assert "perplexity" in rows[0]["tasks"]["lambada"]
    assert 1 <= rows[3]["mean_loops"] <= 6
    table = format_table(out)
    assert table.count("\n") == 5 and "adaptive" in table
    with pytest.raises(ValueError, match="distinct core blocks"):
        vary_r(tiny_cart(n_loops=3, share_core=False), [2], val_sets=val)
