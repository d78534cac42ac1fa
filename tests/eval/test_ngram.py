"""N-gram floors: the Kneser-Ney maths against a direct implementation, proper distributions, and
"the tokens a run saw" equal to the batches the loader actually handed out."""
import json
import math
from collections import Counter

import numpy as np
import pytest

from cart.cli import main
from cart.eval.ngram import count_streams, fit, floors, floors_for_loader, score
from cart.eval.perplexity import ValData


def _direct_kn(train: list[list[int]], V: int):
    """Interpolated KN bigram written out with dicts, as in the textbook."""
    c = Counter()
    for s in train:
        c.update(zip(s[:-1], s[1:]))
    ctx = Counter()
    types = Counter()
    cont = Counter()
    for (v, w), n in c.items():
        ctx[v] += n
        types[v] += 1
        cont[w] += 1

    def disc(values):
        n1 = sum(1 for x in values if x == 1)
        n2 = sum(1 for x in values if x == 2)
        return 0.5 if n1 == 0 else n1 / (n1 + 2 * n2)

    D, D1 = disc(c.values()), disc(cont.values())
    T = sum(cont.values())
    p_cont = {w: max(cont[w] - D1, 0) / T + D1 * len(cont) / T / V for w in range(V)}

    def p(v, w):
        if ctx[v] == 0:
            return p_cont[w]
        return max(c[(v, w)] - D, 0) / ctx[v] + D * types[v] / ctx[v] * p_cont[w]
    return p


def test_kneser_ney_equals_a_direct_implementation_and_sums_to_one():
    rng = np.random.default_rng(0)
    V = 11
    train = [list(rng.integers(0, V - 2, 60)), list(rng.integers(0, V - 1, 25))]  # token V-1 never follows anything
    m = fit(count_streams([(np.array(s), 1) for s in train], V))
    p = _direct_kn(train, V)
    val = rng.integers(0, V, 200)
    val[5] = V - 1  # an unseen continuation and (next) an unseen context
    _, nats, n = score(m, val)
    assert n == len(val) - 1
    assert nats == pytest.approx(-sum(math.log(p(int(a), int(b))) for a, b in zip(val[:-1], val[1:])), rel=1e-12)
    for v in range(V):  # a proper distribution after every context, seen or not
        total = sum(math.exp(-score(m, np.array([v, w]))[1]) for w in range(V))
        assert total == pytest.approx(1.0, abs=1e-12)


def test_repeated_streams_and_chunking_count_the_same():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 50, 1000)
    once = count_streams([(s, 2)], 50)
    twice = count_streams([(s, 1), (s, 1)], 50, chunk=7)  # chunk boundaries keep every pair exactly once
    assert np.array_equal(once.pair_codes, twice.pair_codes) and np.array_equal(once.pair_counts, twice.pair_counts)
    assert once.tokens == 2 * (len(s) - 1) and once.unigram.sum() == once.tokens


def test_bigram_beats_unigram_on_its_training_text_and_bpb_is_consistent():
    rng = np.random.default_rng(2)
    # a Markov chain: the bigram must win by a wide margin
    V, P = 30, np.random.default_rng(3).dirichlet(np.full(30, 0.1), size=30)
    s = [0]
    for _ in range(20000):
        s.append(rng.choice(V, p=P[s[-1]]))
    s = np.array(s)
    rep = floors(count_streams([(s[:15000], 1)], V), [ValData("val", s[15000:], n_bytes=12345)])
    r = rep.sets["val"]
    assert r.bigram_kn_ppl < 0.6 * r.unigram_ppl
    assert r.bigram_kn_bpb == pytest.approx(math.log(r.bigram_kn_ppl) * r.tokens / (math.log(2) * 12345))


@pytest.mark.parametrize("wrap", [False, True])  # a few steps, or until every domain wrapped (plus a partial epoch)
def test_the_tokens_a_run_saw_are_the_loaders_batches(smoke_data, wrap):
    from cart.data import Manifest, TrainLoader

    man = Manifest.load(smoke_data)
    loader = TrainLoader(man, batch_size=16, seq_len=64)
    direct = Counter()
    while loader.step < 3 or (wrap and (min(loader.epochs_completed.values()) < 1 or loader.step % 7)):
        b = next(loader).numpy()
        for row in b:
            direct.update(zip(row[:-1].tolist(), row[1:].tolist()))
    steps = loader.step
    assert min(loader.epochs_completed.values()) >= (1 if wrap else 0)
    V = man.vocab_size
    counted = count_streams([(t[:n + 1], k) for _, t, n, k in loader.seen_spans()], V)
    got = {(int(c) // V, int(c) % V): int(n) for c, n in zip(counted.pair_codes, counted.pair_counts)}
    assert got == dict(direct)
    assert counted.tokens == loader.tokens_seen == steps * 16 * 64


def test_cli_planned_run_and_bad_input(smoke_data, tmp_path, capsys):
    out = tmp_path / "f.json"
    assert main(["eval", "ngram", "--data", str(smoke_data), "--steps", "20", "--batch-size", "4", "--seq-len", "32",
                 "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["train_tokens"] == 20 * 4 * 32 and rep["step"] == 20
    for r in rep["sets"].values():
        assert r["bigram_kn_ppl"] > 1 and r["unigram_ppl"] > 1
    capsys.readouterr()
    assert main(["eval", "ngram", "--data", str(smoke_data), "--steps", "0", "--batch-size", "4", "--seq-len", "32"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["eval", "ngram", str(tmp_path / "missing")]) == 2


def test_floors_for_loader_match_the_cli_numbers(smoke_data):
    from cart.data import Manifest, TrainLoader
    from cart.eval.perplexity import val_sets_from_manifest

    loader = TrainLoader(Manifest.load(smoke_data), batch_size=4, seq_len=32)
    loader.step = 20
    rep = floors_for_loader(loader, val_sets_from_manifest(smoke_data), max_tokens=100)
    assert all(r.tokens == 100 for r in rep.sets.values())
