"""Perplexity over whole token streams: every target exactly once, against a brute-force computation."""
import math

import numpy as np
import pytest
import torch

from cart.eval.options import PplOptions, Run
from cart.eval.perplexity import ValData, evaluate_set, stream_sums, window_spans
from tests.eval.helpers import tiny_cart


@pytest.mark.parametrize("n, T, stride, full_last", [(1, 4, None, False), (2, 4, None, False), (5, 4, None, False),
                                                     (100, 16, None, False), (100, 16, 5, False), (97, 16, 16, True),
                                                     (97, 16, 3, True), (10, 16, None, True), (33, 8, 1, False)])
def test_every_target_scored_exactly_once(n, T, stride, full_last):
    spans = window_spans(n, T, stride, full_last)
    hits = np.zeros(n, dtype=int)
    for b, e, k in spans:
        assert 0 <= b < e <= n - 1 and e - b <= T and 1 <= k <= e - b
        hits[e - k + 1:e + 1] += 1  # targets are tokens begin+1..end; the last k of them scored
    assert hits[0] == 0 and (hits[1:] == 1).all()
    if stride and stride < T:  # every scored target after the first window sees >= T - stride tokens of context
        for b, e, k in spans[1:]:
            assert (e - k) - b >= T - stride - 1


def brute_nll(model, tokens, T, stride):
    """Each target t scored with the window of the span that scores it, computed one window at a time."""
    total, count = 0.0, 0
    for b, e, k in window_spans(len(tokens), T, stride):
        x = torch.tensor(tokens[b:e])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0].double(), -1)
        for j in range(e - b - k, e - b):
            total -= logp[j, tokens[b + j + 1]].item()
            count += 1
    return total, count


@pytest.mark.parametrize("stride", [None, 7])
def test_stream_nll_matches_brute_force(stride):
    model = tiny_cart()
    g = np.random.default_rng(0)
    tokens = g.integers(0, 258, size=203).astype(np.uint16)
    s = stream_sums(model, tokens, PplOptions(seq_len=32, stride=stride, batch_size=3))
    nats, count = s.nats, s.count
    want, wcount = brute_nll(model, tokens.tolist(), 32, stride)
    assert count == wcount == 202
    assert nats == pytest.approx(want, rel=1e-5)


def test_bits_per_byte_and_quick_look():
    model = tiny_cart()
    tokens = np.random.default_rng(1).integers(0, 258, size=129)
    r = evaluate_set(model, ValData("x", tokens, n_bytes=300), PplOptions(seq_len=32))
    assert r.tokens == 128 and not r.bpb_estimated
    assert r.bpb == pytest.approx(r.nats / (math.log(2) * 300))
    assert r.ppl == pytest.approx(math.exp(r.loss))
    q = evaluate_set(model, ValData("x", tokens, n_bytes=300), PplOptions(seq_len=32, max_tokens=64))
    assert q.tokens == 64 and q.bpb_estimated
    assert q.bpb == pytest.approx(q.nats / (math.log(2) * 300 * 64 / 128))
    assert evaluate_set(model, ValData("x", tokens), PplOptions(seq_len=32)).bpb is None


def test_bf16_close_to_fp32():
    model = tiny_cart()
    tokens = np.random.default_rng(2).integers(0, 258, size=257)
    a = evaluate_set(model, ValData("x", tokens), PplOptions(seq_len=64), Run(dtype="fp32"))
    b = evaluate_set(model, ValData("x", tokens), PplOptions(seq_len=64), Run(dtype="bf16"))
    assert b.loss == pytest.approx(a.loss, rel=0.05)


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="stride"):
        window_spans(100, 16, 17)
    with pytest.raises(ValueError, match="seq_len"):
        window_spans(100, 0)


def test_exclude_first_token_leaves_out_the_predictions_after_bos():
    model = tiny_cart()
    g = np.random.default_rng(3)
    docs = [[256] + g.integers(0, 256, size=n).tolist() + [257] for n in (30, 5, 61, 17)]
    tokens = np.asarray(sum(docs, []))
    v = ValData("x", tokens, n_bytes=200, bos_id=256)
    inc = evaluate_set(model, v, PplOptions(seq_len=32, stride=16))
    exc = evaluate_set(model, v, PplOptions(seq_len=32, stride=16, exclude_first_token=True))
    # brute force: per-target NLL from the windows, then drop the targets whose previous token is BOS
    per = {}
    for b, e, k in window_spans(len(tokens), 32, 16):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor(tokens[b:e].tolist())[None])[0].double(), -1)
        for j in range(e - b - k, e - b):
            per[b + j + 1] = -logp[j, int(tokens[b + j + 1])].item()
    firsts = [t for t in per if tokens[t - 1] == 256]
    assert len(firsts) == len(docs) == inc.first_tokens == exc.first_tokens
    assert (inc.first_token, exc.first_token) == ("included", "excluded")
    assert inc.tokens == len(per) and exc.tokens == len(per) - len(docs)
    assert exc.nats == pytest.approx(sum(v for t, v in per.items() if t not in firsts), rel=1e-5)
    assert exc.bpb == inc.bpb == pytest.approx(sum(per.values()) / (math.log(2) * 200), rel=1e-5)
    with pytest.raises(ValueError, match="BOS id"):
        evaluate_set(model, ValData("y", tokens), PplOptions(seq_len=32, exclude_first_token=True))
