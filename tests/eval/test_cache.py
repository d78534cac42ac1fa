"""Cached (incremental) decoding gives the logits of the full forward pass, for every model that decodes."""
import pytest
import torch

from cart.eval.generate import decode_speed
from cart.model import DecodeCache

from tests.eval.helpers import tiny_cart, tiny_dense

VARIANTS = {
    "cart-stable": lambda: tiny_cart(n_prelude=2, n_loops=3),
    "cart-paper": lambda: tiny_cart(n_prelude=2, n_loops=3, fidelity="paper"),
    "cart-unfrozen-kv": lambda: tiny_cart(n_loops=3, freeze_kv=False),
    "cart-self-attn-core": lambda: tiny_cart(n_loops=3, core_attention="self"),
    "cart-unshared": lambda: tiny_cart(n_loops=3, share_core=False),
    "cart-unshared-self-attn": lambda: tiny_cart(n_loops=3, share_core=False, core_attention="self"),
    "cart-no-hyper-gate-lie": lambda: tiny_cart(hyper_connections=False, lti_gate=False, loop_embedding=False),
    "cart-no-prelude": lambda: tiny_cart(n_prelude=0),
    "dense-mha": lambda: tiny_dense(),
    "dense-mla": lambda: tiny_dense(attention="mla"),
    "dense-mla-shared": lambda: tiny_dense(attention="mla", share_layers=True, n_layers=3),
    "dense-mha-shared": lambda: tiny_dense(share_layers=True, n_layers=3),
}


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("chunks", [[9, 1, 1, 5, 1, 3], [1] * 20])
@pytest.mark.parametrize("layout", ["latent", "latent_k", "kv"])
def test_cached_decoding_matches_full_forward(name, chunks, layout):
    model = VARIANTS[name]()
    idx = torch.randint(0, 258, (2, sum(chunks)))
    with torch.no_grad():
        full = model(idx)
        cache = DecodeCache(2, 32, layout)
        outs, s = [], 0
        for c in chunks:
            outs.append(model(idx[:, s:s + c], cache=cache))
            s += c
    inc = torch.cat(outs, 1)
    assert cache.pos == idx.shape[1]
    assert full.abs().max() > 0.5  # the comparison is not between near-zero logits
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["cart-stable", "cart-paper", "dense-mla-shared"])
def test_cached_decoding_at_another_loop_count(name):
    model = VARIANTS[name]()
    idx = torch.randint(0, 258, (1, 12))
    with torch.no_grad():
        full = model(idx, n_loops=5)
        cache = DecodeCache(1, 12)
        inc = torch.cat([model(idx[:, :6], n_loops=5, cache=cache)] + [model(idx[:, t:t + 1], n_loops=5, cache=cache) for t in range(6, 12)], 1)
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=1e-5)


def test_cache_bytes_per_token_mla_latents_and_anchor_kv():
    """CART caches d/4 per prelude/coda layer plus the anchor K and V (2d); dense MHA caches 2d per layer."""
    d = 64
    cart, dense = VARIANTS["cart-stable"](), VARIANTS["dense-mha"]()
    idx = torch.randint(0, 258, (1, 10))
    for model, floats in ((cart, 3 * d // 4 + 2 * d), (dense, 2 * 2 * d)):
        cache = DecodeCache(1, 10)
        with torch.no_grad():
            model(idx, cache=cache)
        assert cache.bytes_per_token() == floats * 4


def test_cache_overflow_is_a_clear_error():
    model = VARIANTS["cart-stable"]()
    cache = DecodeCache(1, 4)
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="exceeds the context"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cache_bytes_per_token_for_both_mla_layouts(name):
    """What each layout holds equals the accounting in cart.bench (latent d/4 or rotated K and V 2d per
    MLA layer, anchor K/V once, MHA K and V), for every variant that decodes."""
    from cart.bench.suites import expected_cache_bytes_per_token

    model = VARIANTS[name]()
    idx = torch.randint(0, 258, (1, 6))
    for layout in ("latent", "latent_k", "kv"):
        cache = DecodeCache(1, 6, layout)
        with torch.no_grad():
            model(idx, cache=cache)
        assert cache.bytes_per_token() == expected_cache_bytes_per_token(model.config, mla_layout=layout), layout


def test_latent_decode_attention_never_forms_k():
    """The latent path's scores equal q . RoPE(W_kup c) computed the long way, at every position."""
    from cart.model.attention import MLASelfAttention, _heads
    from cart.model.layers import Rotary

    torch.manual_seed(0)
    rot = Rotary(64, 64, 10_000.0)
    attn = MLASelfAttention(128, 32, rot)
    c = torch.randn(3, 40, 32)
    q = rot(torch.randn(3, 2, 1, 64), 39)
    with torch.no_grad():
        got = attn._decode_attend(q, c)
        k, v = attn.w_kv_up(c).split(128, dim=-1)
        k = rot(_heads(k, 2), 0)
        want = torch.softmax(q @ k.transpose(-1, -2) / 8, dim=-1) @ _heads(v, 2)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_unknown_mla_layout_is_refused():
    with pytest.raises(ValueError, match="mla_layout.*'full'"):
        DecodeCache(1, 4, "full")


def test_auto_layout_is_latent_alone_and_latent_k_batched():
    assert DecodeCache(1, 4, "auto").mla_layout == "latent"
    assert DecodeCache(2, 4, "auto").mla_layout == "latent_k"
    model = VARIANTS["cart-stable"]()
    for bs, layout in ((1, "latent"), (3, "latent_k")):
        g = decode_speed(model, bs, 4, 3, warmup_tokens=0)  # generation's default is "auto"
        assert g["mla_layout"] == layout


def test_loop_constants_computed_once_per_generation():
    model = VARIANTS["cart-stable"]()
    calls = []
    model.loop_embed.register_forward_hook(lambda *a: calls.append(1))
    idx = torch.randint(0, 258, (1, 8))
    with torch.no_grad():
        cache = DecodeCache(1, 8)
        model(idx[:, :4], cache=cache)
        for t in range(4, 8):
            model(idx[:, t:t + 1], cache=cache)
    assert len(calls) == model.config.n_loops  # not once per loop per token
    with torch.no_grad():
        model(idx)
    assert len(calls) == 2 * model.config.n_loops  # without a cache: once per loop


def test_repeat_interleave_keeps_rows_and_layout():
    model = VARIANTS["cart-stable"]()
    idx = torch.randint(0, 258, (2, 5))
    with torch.no_grad():
        cache = DecodeCache(2, 8, "kv")
        model(idx, cache=cache)
        big = cache.repeat_interleave(torch.tensor([2, 1]))
        nxt = torch.randint(0, 258, (2, 1))
        want = model(nxt, cache=cache)
        got = model(nxt[[0, 0, 1]], cache=big)
    assert big.mla_layout == "kv" and big.batch_size == 3
    torch.testing.assert_close(got, want[[0, 0, 1]], atol=1e-5, rtol=1e-5)
