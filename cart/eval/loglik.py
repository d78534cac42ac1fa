"""Log-likelihood of token continuations given token contexts: the engine under the zero-shot tasks
and the lm-eval-harness adapter.

For each request (context ids, continuation ids) it returns the summed log-probability of the
continuation and whether greedy decoding would have produced it token by token (the harness's
`is_greedy`, which LAMBADA accuracy uses).

Efficient on a model with an incremental-decoding cache:
- identical contexts (the choices of one multiple-choice item, or any repeated prompt) are run
  ONCE: the context is prefilled into a `DecodeCache`, the cache is replicated once per
  continuation, and all continuations go through one more forward pass on top of it;
- contexts of equal token length are batched together (a cache needs one position per batch row,
  so rows of one batch share their length); groups are processed longest first and batched up to
  `batch_tokens` tokens per forward pass; continuations are right-padded (padding after the scored
  tokens cannot change them: attention is causal);
- the first continuation token is scored from the context's last logits, so single-token
  continuations need no second pass.

`forward=` (any callable idx -> logits, e.g. adaptive R) takes the plain path instead: each row is
context + continuation, rows sorted by length and right-padded, no sharing.

Contexts longer than the model allows are cut from the left (as the harness does); a continuation
that alone does not fit raises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cart.eval.loading import autocast
from cart.eval.options import Run
from cart.model.cache import DecodeCache


@dataclass
class Scored:
    logprob: float
    is_greedy: bool
    truncated: bool = False  # the context was cut from the left to fit the model


def _fit(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[int], bool]:
    if len(cont) > max_len:
        raise ValueError(f"a continuation of {len(cont)} tokens does not fit the model's context of {max_len} tokens")
    if not ctx:
        raise ValueError("empty context: prepend a BOS token (the model needs one position to predict the first token)")
    keep = max_len + 1 - len(cont)  # the last continuation token is never an input
    if len(ctx) > keep:
        return ctx[-keep:], True
    return ctx, False


def _score_rows(logprobs: torch.Tensor, targets: list[list[int]]) -> list[tuple[float, bool]]:
    """logprobs [N, L, V] (row i predicts targets[i] at positions 0..len-1)."""
    out = []
    L = logprobs.shape[1]
    tgt = torch.zeros((len(targets), L), dtype=torch.long, device=logprobs.device)
    for i, t in enumerate(targets):
        tgt[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    picked = logprobs.gather(-1, tgt[..., None]).squeeze(-1).double()
    greedy = logprobs.argmax(-1) == tgt
    for i, t in enumerate(targets):
        k = len(t)
        out.append((picked[i, :k].sum().item(), bool(greedy[i, :k].all().item())))
    return out


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    run: Run = Run(),
    *,
    batch_tokens: int = 4096,
    max_len: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Scored]:
    """Score each (context_ids, continuation_ids) with the model run as `run` says; results in request order.
    With `run.forward` (any idx -> logits) contexts are not shared between requests."""
    device, dtype, forward, n_loops = torch.device(run.device), run.dtype, run.forward, run.n_loops
    max_len = max_len or model.config.max_seq_len
    fitted = []
    for ctx, cont in requests:
        ctx2, cut = _fit(list(ctx), list(cont), max_len)
        fitted.append((tuple(ctx2), tuple(cont), cut))
    results: list[Scored | None] = [None] * len(fitted)
    for i, (_, cont, cut) in enumerate(fitted):
        if not cont:
            results[i] = Scored(0.0, True, cut)
    todo = [i for i in range(len(fitted)) if results[i] is None]
    if forward is not None:
        _plain(forward, fitted, todo, results, batch_tokens, device, dtype, progress)
    else:
        _shared(model, fitted, todo, results, n_loops, batch_tokens, device, dtype, progress)
    return results  # type: ignore[return-value]


def _shared(model, fitted, todo, results, n_loops, batch_tokens, device, dtype, progress) -> None:
    # unique (context, continuation) pairs grouped under unique contexts
    units: dict[tuple, dict[tuple, list[int]]] = {}
    for i in todo:
        ctx, cont, _ = fitted[i]
        units.setdefault(ctx, {}).setdefault(cont, []).append(i)
    by_len: dict[int, list[tuple]] = {}
    for ctx in units:
        by_len.setdefault(len(ctx), []).append(ctx)
    done, total = 0, len(todo)
    for L in sorted(by_len, reverse=True):
        # contexts with the most continuation tokens first, so a batch's padding stays small
        ctxs = sorted(by_len[L], key=lambda c: max(len(k) for k in units[c]), reverse=True)
        i = 0
        while i < len(ctxs):
            # grow the batch while prefill rows*L and continuation rows*Lc stay within the budget
            batch, rows, lc_max = [], 0, 1
            while i < len(ctxs):
                conts = list(units[ctxs[i]])
                lc = max(lc_max, max(len(c) for c in conts))
                new_rows = rows + len(conts)
                if batch and ((len(batch) + 1) * L > batch_tokens or new_rows * (lc - 1) > batch_tokens):
                    break
                batch.append(ctxs[i])
                rows, lc_max = new_rows, lc
                i += 1
            _shared_batch(model, batch, units, fitted, results, L, lc_max, n_loops, device, dtype)
            done += sum(len(v) for c in batch for v in units[c].values())
            if progress:
                progress(done, total)


def _shared_batch(model, batch, units, fitted, results, L, lc_max, n_loops, device, dtype) -> None:
    U = len(batch)
    ctx_ids = torch.tensor(batch, dtype=torch.long, device=device)  # [U, L]
    cache = DecodeCache(U, L + lc_max - 1)
    with autocast(device, dtype):
        last = model(ctx_ids, n_loops=n_loops, cache=cache)[:, -1].float().log_softmax(-1)  # [U, V]
    conts = [list(units[c]) for c in batch]
    flat = [(u, cont) for u, cs in enumerate(conts) for cont in cs]
    first_lp = last[[u for u, _ in flat], [cont[0] for _, cont in flat]].double()
    first_greedy = last.argmax(-1)[[u for u, _ in flat]] == torch.tensor([cont[0] for _, cont in flat], device=device)
    scores = [(first_lp[j].item(), bool(first_greedy[j].item())) for j in range(len(flat))]
    if lc_max > 1:
        counts = torch.tensor([len(cs) for cs in conts])
        big = cache.repeat_interleave(counts)
        inp = torch.zeros((len(flat), lc_max - 1), dtype=torch.long, device=device)
        for j, (_, cont) in enumerate(flat):
            inp[j, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
        with autocast(device, dtype):
            lp = model(inp, n_loops=n_loops, cache=big).float().log_softmax(-1)  # [N, lc_max-1, V]
        rest = _score_rows(lp, [list(cont[1:]) for _, cont in flat])
        scores = [(a + b, ga and gb) for (a, ga), (b, gb) in zip(scores, rest)]
    for (u, cont), (lp_sum, greedy) in zip(flat, scores):
        for idx in units[batch[u]][cont]:
            results[idx] = Scored(lp_sum, greedy, fitted[idx][2])


def _plain(forward, fitted, todo, results, batch_tokens, device, dtype, progress) -> None:
    order = sorted(todo, key=lambda i: len(fitted[i][0]) + len(fitted[i][1]), reverse=True)
    done = 0
    i = 0
    while i < len(order):
        T = len(fitted[order[i]][0]) + len(fitted[order[i]][1]) - 1
        n = max(1, batch_tokens // max(T, 1))
        chunk = order[i:i + n]
        i += len(chunk)
        inp = torch.zeros((len(chunk), T), dtype=torch.long, device=device)
        for r, j in enumerate(chunk):
            ctx, cont, _ = fitted[j]
            seq = list(ctx) + list(cont[:-1])
            inp[r, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        with autocast(device, dtype):
            lp = forward(inp).float().log_softmax(-1)
        # continuation token k of row r is predicted at position len(ctx) - 1 + k
        Lc = max(len(fitted[j][1]) for j in chunk)
        sel = torch.stack([
            torch.nn.functional.pad(lp[r, len(fitted[j][0]) - 1:len(fitted[j][0]) - 1 + len(fitted[j][1])],
                                    (0, 0, 0, Lc - len(fitted[j][1])))
            for r, j in enumerate(chunk)
        ])
        for j, (s, g) in zip(chunk, _score_rows(sel, [list(fitted[j][1]) for j in chunk])):
            results[j] = Scored(s, g, fitted[j][2])
        done += len(chunk)
        if progress:
            progress(done, len(order))


__all__ = ["Scored", "loglikelihoods"]
