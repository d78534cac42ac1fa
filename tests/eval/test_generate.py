"""Sampling and cached generation."""
import pytest
import torch

from cart.eval.generate import TextStreamer, decode_speed, filter_logits, generate, sample_next
from cart.eval.options import GREEDY, Run, Sampling
from tests.eval.helpers import ByteTokenizer, tiny_cart, tiny_dense


@pytest.mark.parametrize("make", [tiny_cart, lambda: tiny_cart(fidelity="paper"), tiny_dense])
@pytest.mark.parametrize("layout", ["latent", "latent_k", "kv"])
def test_greedy_generation_equals_uncached_argmax(make, layout):
    model = make()
    prompt = [256] + list(b"Once upon")
    g = generate(model, prompt, 12, GREEDY, mla_layout=layout)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):  # reference: the full forward pass over everything so far, every step
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert g.tokens[0] == seq[len(prompt):]
    assert g.stop_reason == ["length"] and g.cache_bytes_per_token > 0


def test_seed_reproduces_and_batch_rows_are_independent():
    model = tiny_cart()
    a = generate(model, [256, 65, 66], 10, Sampling(1.0, top_p=0.9, seed=7))
    b = generate(model, [256, 65, 66], 10, Sampling(1.0, top_p=0.9, seed=7))
    c = generate(model, [256, 65, 66], 10, Sampling(1.0, top_p=0.9, seed=8))
    assert a.tokens == b.tokens and a.tokens != c.tokens
    batch = generate(model, [[256, 65, 66], [256, 67, 68]], 5, GREEDY)
    assert batch.tokens[0] == generate(model, [256, 65, 66], 5, GREEDY).tokens[0]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus p=0.7: 0.5 < 0.7 so the second token is needed, and 0.8 >= 0.7 so the rest go
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]  # top token always kept
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, Sampling(1.0, top_k=2), generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, GREEDY)) == 0
    with pytest.raises(ValueError):
        Sampling(-1.0)


def test_eos_stops_and_streaming_callback():
    model = tiny_cart()
    first = generate(model, [256, 65], 1, GREEDY).tokens[0][0]
    seen = []
    g = generate(model, [256, 65], 20, GREEDY, eos_id=first, on_token=lambda s, t: seen.append(t[0]))
    assert g.tokens[0] == [first] and g.stop_reason == ["eos"] and seen == [first]


def test_prompt_longer_than_context_and_context_limit():
    model = tiny_cart(max_seq_len=16)
    with pytest.raises(ValueError, match="context is 16"):
        generate(model, list(range(16)), 4)
    g = generate(model, list(range(20)), 4, GREEDY, truncate=True)
    assert g.prompt_tokens == 15 and len(g.tokens[0]) == 1 and g.stop_reason == ["context"]
    g = generate(model, list(range(10)), 50, GREEDY)
    assert len(g.tokens[0]) == 6 and g.stop_reason == ["context"]
    with pytest.raises(ValueError, match="does not match"):
        generate(model, [300], 2)
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [], 2)


def test_text_streamer_waits_for_whole_characters():
    tok = ByteTokenizer()
    out = []
    s = TextStreamer(tok, out.append)
    for b in "né☕!".encode():
        s(0, [b])
    s.flush()
    assert "".join(out) == "né☕!" and all("\ufffd" not in piece for piece in out)


def test_decode_speed_reports_throughput_and_cache():
    model = tiny_cart()
    r = decode_speed(model, batch_size=2, prompt_len=8, new_tokens=4, mla_layout="latent")
    assert r["tokens_per_s"] > 0 and r["cache_bytes_per_token"] == (2 * 16 + 2 * 64) * 4
    dense = decode_speed(tiny_dense(), 1, 8, 4)
    assert dense["cache_bytes_per_token"] == 2 * 2 * 64 * 4
    with pytest.raises(ValueError, match="exceeds"):
        decode_speed(model, 1, 120, 20)


def test_sampling_options_are_validated_and_run_options_apply():
    for bad, match in [(dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
                       (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
                       (dict(seed=1.5), "seed")]:
        with pytest.raises(ValueError, match=match):
            Sampling(**bad)
    assert GREEDY.greedy and not Sampling().greedy
    model = tiny_cart()
    with pytest.raises(ValueError, match="custom forward"):
        generate(model, [256, 65], 2, GREEDY, Run(forward=lambda idx: model(idx)))
    # a Run's loop count reaches the model: R = 1 and R = 4 decode differently, each equal to its uncached argmax
    for r in (1, 4):
        seq = [256, 65, 66]
        got = generate(model, seq, 6, GREEDY, Run(n_loops=r)).tokens[0]
        with torch.no_grad():
            for _ in range(6):
                seq.append(int(model(torch.tensor([seq]), n_loops=r)[0, -1].argmax()))
        assert got == seq[3:]
