"""Cached (incremental) decoding gives the logits of the full forward pass, for every model that decodes."""
import pytest
import torch

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
def test_cached_decoding_matches_full_forward(name, chunks):
    model = VARIANTS[name]()
    idx = torch.randint(0, 258, (2, sum(chunks)))
    with torch.no_grad():
        full = model(idx)
        cache = DecodeCache(2, 32)
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
