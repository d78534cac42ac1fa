"""N-gram floors: the perplexity a count-based model reaches on the same training tokens.

A neural model that does not beat a bigram counted on exactly the tokens it trained on has not yet
learned word-pair statistics; no architecture finding should rest on it. This module fits

- `unigram`: add-one (Laplace) unigram over the vocabulary;
- `bigram_kn`: interpolated Kneser-Ney bigram (Chen & Goodman 1998, one discount per order,
  D = n1 / (n1 + 2 n2) from the counts of counts), whose lower order is the continuation
  unigram, itself interpolated with the uniform distribution so every token has mass;

on the token pairs a training run consumed, and scores them on a validation stream the way
`cart eval ppl` scores a model: every target token t_j (j >= 1) given its predecessor t_{j-1}.

"The tokens a run saw" is exact: the training loader's order is a pure function of the row index
(`TrainLoader.seen_spans`), so the rows of the first `step` steps are known per domain, including
the one-token overlap of consecutive rows and whole extra epochs (counted again).

Everything is vectorised numpy over sorted pair codes (prev * V + next): no [V, V] table, so a
32k vocabulary costs what its observed pairs cost.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["NGramFloor", "NGramCounts", "FloorReport", "count_streams", "fit", "score", "floors", "floors_for_loader",
           "floors_for_loader_state"]


@dataclass
class NGramCounts:
    """Bigram and unigram counts of a set of training streams (targets t_j with predecessor t_{j-1})."""

    vocab_size: int
    pair_codes: np.ndarray   # sorted unique prev * V + next (int64)
    pair_counts: np.ndarray  # their counts (int64)
    unigram: np.ndarray      # [V] target counts (int64)
    tokens: int              # training targets counted (= sum of pair counts)


def _merge(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(codes, return_inverse=True)
    out = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(out, inv, counts)
    return uniq, out


def count_streams(streams: list[tuple[np.ndarray, int]], vocab_size: int, chunk: int = 1 << 24) -> NGramCounts:
    """Counts over streams given as (tokens, times): every adjacent pair of `tokens` counted `times`
    times. Streams are read in chunks of `chunk` pairs, so memory follows the distinct pairs, not the
    corpus (a memory-mapped 1B-token stream is fine)."""
    V = int(vocab_size)
    codes, counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    for toks, times in streams:
        if times <= 0 or len(toks) < 2:
            continue
        for b in range(0, len(toks) - 1, chunk):
            t = np.asarray(toks[b:b + chunk + 1], dtype=np.int64)
            if t.min() < 0 or t.max() >= V:
                raise ValueError(f"token id outside the vocabulary [0, {V}): min {t.min()}, max {t.max()}")
            c, n = np.unique(t[:-1] * V + t[1:], return_counts=True)
            codes, counts = _merge(np.concatenate([codes, c]), np.concatenate([counts, n.astype(np.int64) * int(times)]))
    if not len(codes):
        raise ValueError("no training tokens to count (the run consumed no complete row)")
    unigram = np.bincount(codes % V, weights=counts, minlength=V).astype(np.int64)
    return NGramCounts(V, codes, counts, unigram, int(counts.sum()))


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    if n1 == 0:
        return 0.5  # no singletons (a tiny or repeated corpus): a conventional middle value
    return n1 / (n1 + 2 * n2)


@dataclass
class _KN:
    V: int
    codes: np.ndarray
    counts: np.ndarray
    D: float
    ctx_total: np.ndarray  # [V] c(v .) summed over next tokens
    ctx_types: np.ndarray  # [V] N1+(v .)
    p_cont: np.ndarray     # [V] continuation unigram (interpolated with uniform)
    p_uni: np.ndarray      # [V] add-one unigram


def fit(c: NGramCounts) -> _KN:
    V = c.vocab_size
    prev, nxt = c.pair_codes // V, c.pair_codes % V
    ctx_total = np.bincount(prev, weights=c.pair_counts, minlength=V)
    ctx_types = np.bincount(prev, minlength=V).astype(np.float64)
    # continuation counts N1+(. w): distinct predecessors of w, discounted and interpolated with uniform
    cont = np.bincount(nxt, minlength=V).astype(np.float64)
    types_total = cont.sum()
    D1 = _discount(cont[cont > 0].astype(np.int64))
    p_cont = np.maximum(cont - D1, 0) / types_total + (D1 * (cont > 0).sum() / types_total) / V
    p_uni = (c.unigram + 1.0) / (c.tokens + V)
    return _KN(V, c.pair_codes, c.pair_counts.astype(np.float64), _discount(c.pair_counts), ctx_total, ctx_types, p_cont, p_uni)


@dataclass
class NGramFloor:
    """One validation set's floors."""

    name: str
    tokens: int                 # predictions scored
    unigram_ppl: float
    bigram_kn_ppl: float
    unigram_bpb: float | None
    bigram_kn_bpb: float | None
    out_of_domain: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def score(m: _KN, tokens: np.ndarray) -> tuple[float, float, int]:
    """(unigram nats, bigram-KN nats, predictions) over targets t_1 .. t_{n-1}, each given t_{j-1}."""
    t = np.asarray(tokens, dtype=np.int64)
    if len(t) < 2:
        return 0.0, 0.0, 0
    if t.min() < 0 or t.max() >= m.V:
        raise ValueError(f"validation token id outside the vocabulary [0, {m.V})")
    prev, nxt = t[:-1], t[1:]
    code = prev * m.V + nxt
    pos = np.searchsorted(m.codes, code)
    pos_c = np.minimum(pos, len(m.codes) - 1)
    found = m.codes[pos_c] == code
    c_vw = np.where(found, m.counts[pos_c], 0.0)
    c_v = m.ctx_total[prev]
    seen_ctx = c_v > 0
    safe_cv = np.where(seen_ctx, c_v, 1.0)
    lam = m.D * m.ctx_types[prev] / safe_cv
    p = np.where(seen_ctx, np.maximum(c_vw - m.D, 0.0) / safe_cv + lam * m.p_cont[nxt], m.p_cont[nxt])
    return float(-np.log(m.p_uni[nxt]).sum()), float(-np.log(p).sum()), len(nxt)


@dataclass
class FloorReport:
    train_tokens: int
    domain_tokens: dict[str, int]  # training targets per domain (repeats of a wrapped domain counted again)
    sets: dict[str, NGramFloor] = field(default_factory=dict)
    method: str = ("unigram: add-one; bigram_kn: interpolated Kneser-Ney (one discount per order, "
                   "continuation unigram interpolated with uniform); trained on the run's exact training pairs")

    def to_dict(self) -> dict:
        return {"train_tokens": self.train_tokens, "domain_tokens": self.domain_tokens, "method": self.method,
                "sets": {k: v.to_dict() for k, v in self.sets.items()}}


def floors(counts: NGramCounts, val_sets, domain_tokens: dict[str, int] | None = None,
           max_tokens: int | None = None) -> FloorReport:
    """Floors on each `cart.eval.perplexity.ValData` set (its first `max_tokens` predictions if given,
    as the model's evaluation reads them)."""
    m = fit(counts)
    rep = FloorReport(counts.tokens, domain_tokens or {})
    for v in val_sets:
        toks = v.tokens if not max_tokens else v.tokens[:int(max_tokens) + 1]
        un, bi, n = score(m, toks)
        full = max(len(v.tokens) - 1, 1)
        bpb = (lambda nats: nats / (math.log(2) * v.n_bytes * n / full)) if (v.n_bytes and n) else (lambda nats: None)
        rep.sets[v.name] = NGramFloor(v.name, n, math.exp(un / max(n, 1)), math.exp(bi / max(n, 1)), bpb(un), bpb(bi),
                                      bool(v.out_of_domain))
    return rep


def floors_for_loader(loader, val_sets, max_tokens: int | None = None) -> FloorReport:
    """Floors trained on exactly the rows `loader` (a `cart.data.TrainLoader`) had handed out by its
    current step, across all ranks."""
    streams, per_domain = [], {}
    for domain, tokens, n_pairs, times in loader.seen_spans():
        streams.append((tokens[:n_pairs + 1], times))
        per_domain[domain] = per_domain.get(domain, 0) + n_pairs * times
    return floors(count_streams(streams, loader.manifest.vocab_size), val_sets, per_domain, max_tokens)


def floors_for_loader_state(manifest, loader_state: dict, val_sets, max_tokens: int | None = None) -> FloorReport:
    """Floors for a saved training-loader state (a checkpoint's trainer.pt "loader")."""
    from cart.data import TrainLoader

    try:
        batch, seq_len, step = int(loader_state["global_batch"]), int(loader_state["seq_len"]), int(loader_state["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"loader state lacks global_batch/seq_len/step ({e})") from None
    loader = TrainLoader(manifest, batch_size=batch, seq_len=seq_len, cycle=loader_state.get("cycle"))
    loader.step = step
    return floors_for_loader(loader, val_sets, max_tokens)
