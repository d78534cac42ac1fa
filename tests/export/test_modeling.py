"""The transformers modelling file (cart/export/modeling_cart.py) against cart's own model, weight for
weight: logits, any loop count, the cache, generation (greedy, sampling, beam search), padding, loss."""
import ast
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from cart.checkpoint import model_state  # noqa: E402
from cart.config import CARTConfig, DenseConfig, config_to_dict  # noqa: E402
from cart.eval.generate import generate as cart_generate  # noqa: E402
from cart.eval.options import GREEDY, Run  # noqa: E402
from cart.export import modeling_cart as mc  # noqa: E402
from cart.model import build_model  # noqa: E402
from tests.eval.helpers import sharpen  # noqa: E402
from tests.model.test_model import BASE, CART_VARIANTS, DENSE_VARIANTS  # noqa: E402
from tests.support import one_thread  # noqa: E402

V = BASE["vocab_size"]
BOS, EOS = 0, 1
VARIANTS = {**{k: ("cart", v) for k, v in CART_VARIANTS.items()}, **{k: ("dense", v) for k, v in DENSE_VARIANTS.items()}}


def cart_model(kind: str, over: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "cart":
        cfg = CARTConfig(**{**BASE, **over})
    else:
        cfg = DenseConfig(**{**{k: v for k, v in BASE.items() if k not in ("n_prelude", "n_loops")}, **over})
    return sharpen(build_model(cfg).eval())


def hf_twin(model: torch.nn.Module):
    """The transformers model with the same weights (what `cart export hf` writes, in memory)."""
    fields = config_to_dict(model.config)
    conf, cls = (mc.CartConfig, mc.CartForCausalLM) if fields["kind"] == "cart" else (mc.CartDenseConfig, mc.CartDenseForCausalLM)
    cfg = conf(**fields, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    hf = cls(cfg).eval()
    hf.load_state_dict({"model." + k: v for k, v in model_state(model).items()}, strict=True)
    return hf


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request):
    kind, over = VARIANTS[request.param]
    with one_thread():
        model = cart_model(kind, over)
        return model, hf_twin(model)


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(2, V, (B, T), generator=torch.Generator().manual_seed(seed))


def shares_loops(model) -> bool:
    c = model.config
    return c.share_core if isinstance(c, CARTConfig) else c.share_layers


def test_the_file_imports_only_torch_and_transformers():
    tree = ast.parse(Path(mc.__file__).read_text())
    roots = {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert roots <= {"__future__", "math", "torch", "transformers"}, roots


@torch.no_grad()
def test_logits_equal_carts(pair):
    model, hf = pair
    x = ids(2, 12)
    torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf(x, use_cache=False).logits, model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hf(inputs_embeds=model.embed(x)).logits, model(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_any_loop_count_at_call_time(pair):
    model, hf = pair
    x = ids(1, 10)
    if not shares_loops(model):
        if isinstance(model.config, CARTConfig):
            with pytest.raises(ValueError, match="share_core=False"):
                hf(x, n_loops=model.config.n_loops + 1)
        else:
            with pytest.raises(ValueError, match="unshared layers"):
                hf(x, n_loops=2)
        return
    for R in (1, 5, 9):
        torch.testing.assert_close(hf(x, n_loops=R).logits, model(x, n_loops=R), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_loops must be >= 1"):
        hf(x, n_loops=0)


@torch.no_grad()
def test_decoding_with_the_cache_equals_the_full_forward(pair):
    model, hf = pair
    x = ids(2, 16)
    full = model(x)
    out = hf(x[:, :7], use_cache=True)
    cache, got = out.cache if hasattr(out, "cache") else out.past_key_values, [out.logits]
    assert isinstance(cache, mc.CartCache) and cache.get_seq_length() == 7
    for t in range(7, 12):  # one token at a time
        got.append(hf(x[:, t:t + 1], cache=cache).logits)
    got.append(hf(x[:, 12:16], cache=cache).logits)  # a chunk on top of the cache
    torch.testing.assert_close(torch.cat(got, 1), full, rtol=1e-5, atol=1e-5)


def test_the_cache_holds_latents_and_the_anchor_once():
    B, T, P, R = 2, 9, BASE["n_prelude"], BASE["n_loops"]
    d, L = BASE["d_model"], BASE["d_model"] // 4

    def layers(kind, over):
        cache = mc.CartCache()
        with torch.no_grad():
            hf_twin(cart_model(kind, over))(ids(B, T), cache=cache)
        return [[tuple(s.shape) for s in layer.states] for layer in cache.layers]

    latent, kv = [(B, T, L)], [(B, T, d), (B, T, d)]
    # prelude latents, the coda's latent, then the anchor's K/V ONCE (not per loop)
    assert layers("cart", {}) == [latent] * P + [latent] + [kv]
    assert layers("cart", {"freeze_kv": False}) == [latent] * (P + 1) + [kv] * R  # the ablation recomputes per loop
    assert layers("cart", {"core_attention": "self"}) == [latent] * (P + 1) + [latent] * R
    assert layers("dense", {"n_layers": 3}) == [[(B, T, d // 64, 64)] * 2] * 3
    assert layers("dense", {"n_layers": 3, "attention": "mla", "share_layers": True}) == [latent] * 3


def test_a_cache_cannot_change_its_loop_count():
    hf = hf_twin(cart_model("cart", {}))
    cache = mc.CartCache()
    with torch.no_grad():
        hf(ids(1, 5), cache=cache, n_loops=3)
        with pytest.raises(ValueError, match="filled with n_loops=3"):
            hf(ids(1, 1), cache=cache, n_loops=4)


@torch.no_grad()
def test_greedy_generate_equals_cart_generate(pair):
    model, hf = pair
    prompt = [BOS] + ids(1, 6)[0].tolist()
    for R in ([None, 5] if shares_loops(model) else [None]):
        want = cart_generate(model, prompt, 14, GREEDY, Run(n_loops=R)).tokens[0]
        got = hf.generate(torch.tensor([prompt]), max_new_tokens=14, do_sample=False, eos_token_id=None, n_loops=R)
        assert got[0, len(prompt):].tolist() == want
    # stopping at EOS: make a later greedy token (its first occurrence) the end-of-sequence id in both
    plain = cart_generate(model, prompt, 14, GREEDY).tokens[0]
    eos = next((t for k, t in enumerate(plain) if k >= 2 and t not in plain[:k]), plain[0])
    want = cart_generate(model, prompt, 14, GREEDY, eos_id=eos).tokens[0]
    got = hf.generate(torch.tensor([prompt]), max_new_tokens=14, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert got[0, len(prompt):].tolist()[:len(want)] == want and want[-1] == eos


@torch.no_grad()
def test_sampling_runs_and_a_seed_reproduces_it():
    hf = hf_twin(cart_model("cart", {}))
    prompt = torch.tensor([[BOS, 5, 6, 7]])
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(hf.generate(prompt, max_new_tokens=12, do_sample=True, temperature=0.9, top_k=50, top_p=0.95,
                                eos_token_id=None)[0].tolist())
    assert runs[0] == runs[1] != runs[2]
    assert all(0 <= t < V for t in runs[0])


@pytest.mark.parametrize("name", ["stable", "unfrozen_kv", "shared_self_attn_core", "dense_mha"])
@torch.no_grad()
def test_beam_search_reorders_the_cache(name):
    """Beam search with the cache (reordered every step) finds what beam search without it finds."""
    kind, over = VARIANTS[name]
    hf = hf_twin(cart_model(kind, over))
    prompt = torch.tensor([[BOS, 9, 10, 11, 12]])
    kw = dict(max_new_tokens=8, num_beams=4, num_return_sequences=3, do_sample=False, eos_token_id=None)
    cached, uncached = hf.generate(prompt, use_cache=True, **kw), hf.generate(prompt, use_cache=False, **kw)
    assert cached.shape == (3, 13) and torch.equal(cached, uncached)


@torch.no_grad()
def test_left_padded_batches_give_each_rows_own_result(pair):
    model, hf = pair
    short, long = [BOS, 20, 21], [BOS] + ids(1, 6)[0].tolist()
    batch = torch.tensor([[EOS] * (len(long) - len(short)) + short, long])
    mask = torch.tensor([[0] * (len(long) - len(short)) + [1] * len(short), [1] * len(long)])
    logits = hf(batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0, -len(short):], model(torch.tensor([short]))[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], model(torch.tensor([long]))[0], rtol=1e-5, atol=1e-5)
    out = hf.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)
    for row, prompt in enumerate((short, long)):
        assert out[row, len(long):].tolist() == cart_generate(model, prompt, 8, GREEDY).tokens[0]
    with pytest.raises(ValueError, match="attention_mask must be"):
        hf(batch, attention_mask=mask[:, 1:])


@torch.no_grad()
def test_labels_give_carts_loss_and_hidden_states_every_stage(pair):
    model, hf = pair
    x = ids(2, 12)
    out = hf(x, labels=x, output_hidden_states=True)
    assert out.loss.item() == pytest.approx(model.loss(x[:, :-1], x[:, 1:]).item(), rel=1e-5)
    c = model.config
    stages = c.n_prelude + c.n_loops if isinstance(c, CARTConfig) else c.n_layers
    assert len(out.hidden_states) == stages + 2  # embeddings ... final normed state
    torch.testing.assert_close(out.hidden_states[0], model.embed(x))
    assert hf(x, logits_to_keep=1).logits.shape == (2, 1, V)


def test_fresh_models_start_where_carts_do():
    for fidelity, blend in (("stable", [0.0, -16.0, -16.0]), ("paper", [1.0, 0.0, 0.0])):
        torch.manual_seed(0)
        cfg = mc.CartConfig(**config_to_dict(CARTConfig(**BASE, fidelity=fidelity)))
        hf = mc.CartForCausalLM(cfg)
        assert hf.model.hyper.logits.tolist() == blend
        assert torch.allclose(torch.sigmoid(hf.model.gate.a), torch.tensor(0.9))
        assert torch.equal(hf.model.norm.weight, torch.ones(BASE["d_model"]))
        assert abs(hf.model.embed.weight.std().item() - 0.02) < 2e-3
        assert abs(hf.model.prelude[0].attn.w_o.weight.std().item() - 0.02) < 2e-3


def test_bad_configs_and_calls_are_refused():
    with pytest.raises(ValueError, match="CartConfig.fidelity"):
        mc.CartConfig(fidelity="published")
    with pytest.raises(ValueError, match="CartConfig.freeze_kv"):
        mc.CartConfig(core_attention="self", freeze_kv=False)
    with pytest.raises(ValueError, match="CartConfig.d_model"):
        mc.CartConfig(d_model=100)
    with pytest.raises(ValueError, match="use CartDenseForCausalLM"):
        mc.CartForCausalLM(mc.CartDenseConfig(vocab_size=V, d_model=64, n_layers=1))
    hf = hf_twin(cart_model("cart", {}))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        hf()
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len=32"):
        hf(ids(1, 33))
    with pytest.raises(ValueError, match="position_ids are not taken"):
        hf(ids(1, 3), position_ids=torch.arange(3)[None])


@torch.no_grad()
def test_bf16_weights_run():
    model = cart_model("cart", {})
    hf = hf_twin(model).to(torch.bfloat16)
    x = ids(1, 10)
    got = hf(x).logits.float()
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - model(x)).abs().max() < 0.1 * model(x).abs().max()  # bf16 rounding, not a different model
