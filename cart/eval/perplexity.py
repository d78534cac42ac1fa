"""Perplexity and bits per byte on whole validation token streams.

A validation set is one flat stream of documents wrapped BOS … EOS (as in training). Every token
after the first is predicted exactly once:

- non-overlapping windows (default, stride = seq_len): window i reads tokens [i·T, i·T + T) and
  predicts [i·T + 1, i·T + T]; the last window is shorter;
- sliding windows (stride S < T): each window reads T tokens but scores only the targets no
  earlier window scored, so every prediction after the first window sees at least T − S tokens of
  context (the usual "strided perplexity").

The prediction of each document's first token (the target after a BOS) is counted by default, as
in training and as the harness's rolling log-likelihood counts it (the first token is predicted
from the prefix token); `exclude_first_token=True` (`cart eval ppl --exclude-first-token`) leaves
those predictions out of loss and perplexity (they carry no context, so perplexity drops). Either
way the output says which (`first_token`) and how many such predictions the set holds. The
prediction of BOS after each EOS is part of the packed stream and always counted.

Bits per byte = total nats / (ln 2 · UTF-8 bytes of the set's text): a tokenizer-independent number,
so models with different vocabularies compare. It always counts every prediction (it is the cost of
the whole text), whatever `exclude_first_token` says. The manifest records the bytes of each set.

Notable features: windows batched (all full-length windows in [B, T] batches, the short tail
alone); fp32 or bf16 autocast with fp32 log-softmax and float64 accumulation; `max_tokens` for a
quick look (bpb then scales the set's bytes by the fraction of tokens read and says so);
`forward=` to evaluate any callable idx -> logits (used by adaptive R).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from cart.eval.loading import autocast, load_manifest
from cart.eval.options import PplOptions, Run


@dataclass
class ValData:
    """One validation set: its token stream and the UTF-8 bytes of the text it encodes."""

    name: str
    tokens: np.ndarray  # 1-D, any integer dtype (a np.memmap is fine)
    n_bytes: int | None = None
    out_of_domain: bool = False
    bos_id: int | None = None  # marks each document's first token (the target after it)


@dataclass
class PerplexityResult:
    name: str
    tokens: int  # predictions scored (for loss and ppl)
    nats: float  # their total negative log-likelihood
    loss: float  # mean nats per token
    ppl: float
    bpb: float | None  # bits per byte over every prediction (None when the set's byte count is unknown)
    bpb_estimated: bool  # True when only part of the set was read (bytes scaled by the token fraction)
    out_of_domain: bool
    windows: int
    seq_len: int
    stride: int
    set_tokens: int  # tokens in the whole set
    first_token: str = "included"  # whether documents' first-token predictions are in tokens/nats/loss/ppl
    first_tokens: int = 0  # document-first-token predictions among those read (0 when the set's BOS id is unknown)

    def to_dict(self) -> dict:
        return asdict(self)


def window_spans(n_tokens: int, seq_len: int, stride: int | None = None, full_last: bool = False) -> list[tuple[int, int, int]]:
    """(begin, end, n_scored) per window: inputs tokens[begin:end], targets tokens[begin+1:end+1], of
    which the last n_scored are scored. Every target index 1..n_tokens-1 is scored exactly once.

    full_last: start the last window early so that it too reads seq_len tokens (scoring only what is
    left): the harness's rolling-window convention, more context for the tail."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    stride = seq_len if stride is None else int(stride)
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    last = n_tokens - 1  # number of targets
    spans, prev_end = [], 0
    begin = 0
    while prev_end < last:
        end = min(begin + seq_len, last)
        if full_last and end == last:
            begin = max(0, end - seq_len)
        spans.append((begin, end, end - prev_end))
        prev_end = end
        begin += stride
    return spans


@dataclass
class StreamSums:
    """One pass over a token stream: totals over every prediction, and over the documents' first tokens alone."""

    nats: float = 0.0
    count: int = 0
    first_nats: float = 0.0  # predictions whose previous token is `bos_id`
    first_count: int = 0
    windows: int = 0


@torch.no_grad()
def stream_sums(model: torch.nn.Module, tokens: np.ndarray, ppl: PplOptions, run: Run = Run(), *,
                full_last: bool = False, bos_id: int | None = None) -> StreamSums:
    """NLL totals (nats) of a token stream, every target exactly once; with `bos_id`, the targets right after
    a BOS (documents' first tokens) are also summed apart."""
    device = torch.device(run.device)
    n = len(tokens)
    if ppl.max_tokens is not None:
        n = min(n, int(ppl.max_tokens) + 1)
    out = StreamSums()
    if n < 2:
        return out
    forward = run.logits_fn(model)
    spans = window_spans(n, ppl.seq_len, ppl.stride, full_last)
    out.windows = len(spans)
    # full-length windows batched together; windows of another length (the tail) go alone
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for s in spans:
        groups.setdefault(s[1] - s[0], []).append(s)
    for length, group in groups.items():
        for i in range(0, len(group), ppl.batch_size):
            chunk = group[i:i + ppl.batch_size]
            rows = np.stack([np.asarray(tokens[b:e + 1], dtype=np.int64) for b, e, _ in chunk])
            batch = torch.from_numpy(rows).to(device)
            x, y = batch[:, :-1], batch[:, 1:]
            with autocast(device, run.dtype):
                logits = forward(x)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)
            scored = torch.zeros_like(nll, dtype=torch.bool)
            for r, (_, _, k) in enumerate(chunk):
                scored[r, length - k:] = True
            out.nats += nll[scored].double().sum().item()
            out.count += int(scored.sum().item())
            if bos_id is not None:
                first = scored & (x == bos_id)
                out.first_nats += nll[first].double().sum().item()
                out.first_count += int(first.sum().item())
    return out


def evaluate_set(model, val: ValData, ppl: PplOptions, run: Run = Run()) -> PerplexityResult:
    """Loss, perplexity and bits per byte of one validation set."""
    if ppl.exclude_first_token and val.bos_id is None:
        raise ValueError(f"{val.name}: excluding documents' first tokens needs the set's BOS id")
    s = stream_sums(model, val.tokens, ppl, run, bos_id=val.bos_id)
    set_tokens = len(val.tokens)
    nats, count = s.nats, s.count
    if ppl.exclude_first_token:
        nats, count = s.nats - s.first_nats, s.count - s.first_count
    loss = nats / max(count, 1)
    bpb, estimated = None, False
    if val.n_bytes:
        full = max(set_tokens - 1, 1)
        frac = s.count / full
        estimated = s.count < full
        bpb = s.nats / (math.log(2) * val.n_bytes * frac) if s.count else float("nan")
    return PerplexityResult(
        name=val.name, tokens=count, nats=nats, loss=loss, ppl=math.exp(min(loss, 700.0)), bpb=bpb, bpb_estimated=estimated,
        out_of_domain=val.out_of_domain, windows=s.windows, seq_len=ppl.seq_len, stride=ppl.stride or ppl.seq_len,
        set_tokens=set_tokens, first_token="excluded" if ppl.exclude_first_token else "included", first_tokens=s.first_count,
    )


def evaluate_perplexity_sets(model, val_sets: Iterable[ValData], ppl: PplOptions, run: Run = Run()) -> dict[str, PerplexityResult]:
    """`evaluate_set` on each set."""
    return {v.name: evaluate_set(model, v, ppl, run) for v in val_sets}


def val_sets_from_manifest(data_dir: str | Path, names: list[str] | None = None) -> list[ValData]:
    """The validation sets of a prepared data dir (cart.data manifest), token files memory-mapped."""
    from cart.data import TokenFile

    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    sets = dict(manifest.val_sets)
    if not sets:
        raise ValueError(f"{data_dir}/manifest.json lists no validation sets")
    if names:
        unknown = sorted(set(names) - set(sets))
        if unknown:
            raise ValueError(f"unknown validation set(s) {unknown}; {data_dir} has {sorted(sets)}")
        sets = {k: sets[k] for k in names}
    out = []
    for name, vs in sets.items():
        path = Path(vs.path)
        if not path.is_absolute():
            path = data_dir / path
        tokens = TokenFile(path, manifest.vocab_size, expected_sha256=getattr(vs, "sha256", None)).tokens  # verified once
        out.append(ValData(name=name, tokens=tokens, n_bytes=getattr(vs, "bytes", None),
                           out_of_domain=bool(getattr(vs, "out_of_domain", False)), bos_id=manifest.bos_id))
    return out


__all__ = ["PerplexityResult", "PplOptions", "Run", "StreamSums", "ValData", "evaluate_perplexity_sets", "evaluate_set", "stream_sums",
           "val_sets_from_manifest", "window_spans"]
