"""Text generation with incremental decoding, and the decode-speed measurement for `cart bench`.

Each step feeds only the newest token: the prompt is prefilled once into a `DecodeCache` (prelude
and coda layers keep their MLA latent, d/4 per token; CART's core keeps the anchor K/V of past
tokens, computed once for all loops), then every new token costs one pass of the model over one
position. A run with a cache uses one fixed loop count (`n_loops`).

Sampling: temperature (0 = greedy), top-k, top-p (nucleus: the smallest set of tokens whose
probability reaches p), all with a seeded generator so a seed reproduces a sample exactly;
`on_token` is called after every step (streaming); generation stops at EOS (per sequence), at
`max_new_tokens`, or at the model's context length.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cart.eval.loading import autocast
from cart.eval.options import GREEDY, Run, Sampling
from cart.model.cache import DecodeCache


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k / top-p nucleus to -inf. logits: [B, V] float."""
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, sampling: Sampling = GREEDY, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids [B] from logits [B, V]."""
    logits = logits.float()
    if sampling.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p).softmax(-1)
    # sample on the CPU generator's stream so that one seed gives one sample on any device
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per sequence (EOS included when it was produced)
    stop_reason: list[str]  # "eos", "length" (max_new_tokens) or "context" (model's max_seq_len)
    prompt_tokens: int
    seconds: float
    cache_bytes_per_token: float


def _unpack(model: torch.nn.Module, run: Run | None) -> tuple[int | None, torch.device, str | torch.dtype | None]:
    """(n_loops, device, dtype) of a Run; without one: as trained, on the model's device, no autocast."""
    if run is None:
        return None, next(model.parameters()).device, None
    if run.forward is not None:
        raise ValueError("generation runs the model with its decode cache: a Run with a custom forward cannot be used")
    return run.n_loops, torch.device(run.device), run.dtype


@torch.inference_mode()  # no autograd bookkeeping (version counters, view tracking) per op
def generate(
    model: torch.nn.Module,
    prompts: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    run: Run | None = None,
    *,
    eos_id: int | None = None,
    on_token: Callable[[int, list[int]], None] | None = None,
    truncate: bool = False,
    mla_layout: str = "auto",
) -> Generation:
    """Sample up to max_new_tokens after each prompt (prompts of one batch have equal length).

    sampling: temperature, top-k, top-p and seed (`GREEDY`: argmax). run: loop count, device and autocast
    dtype (default: as trained, on the model's device, no autocast).
    on_token(step, tokens) receives the new token of every sequence after each step.
    A prompt longer than the model's context raises, unless truncate=True keeps its last tokens.
    mla_layout: what MLA layers cache: "latent" (d/4 per token), "latent_k" (plus the rotated K:
    5x the bytes) or "kv" (rotated K and V: 8x); the last two skip the per-step re-projection of K
    (`cart.model.cache`); "auto" (default): latent at batch 1, latent_k for batches. Same tokens every way.
    """
    n_loops, device, dtype = _unpack(model, run)
    if isinstance(prompts, torch.Tensor):
        idx = prompts.long()
        idx = idx[None] if idx.ndim == 1 else idx
    else:
        flat = len(prompts) > 0 and not isinstance(prompts[0], (list, tuple, torch.Tensor))
        rows = [[int(t) for t in prompts]] if flat else [[int(t) for t in p] for p in prompts]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("empty prompt: give at least one token (e.g. BOS)")
        if len({len(r) for r in rows}) != 1:
            raise ValueError("prompts in one batch must have the same length (generate them one at a time)")
        idx = torch.tensor(rows, dtype=torch.long)
    idx = idx.to(device)
    B, T = idx.shape
    max_len = model.config.max_seq_len
    if T >= max_len:
        if not truncate:
            raise ValueError(f"the prompt has {T} tokens but the model's context is {max_len}: shorten it "
                             f"(or truncate to its last {max_len - 1} tokens)")
        idx = idx[:, -(max_len - 1):]
        T = idx.shape[1]
    V = model.config.vocab_size
    if int(idx.max()) >= V or int(idx.min()) < 0:
        raise ValueError(f"prompt token ids must be in [0, {V}); the tokenizer does not match the model")
    steps = min(max_new_tokens, max_len - T)
    seed = sampling.seed if sampling.seed is not None else random.randrange(2**63)
    gen = torch.Generator().manual_seed(seed)
    cache = DecodeCache(B, T + max(steps, 1), mla_layout)
    out: list[list[int]] = [[] for _ in range(B)]
    reason = ["length" if steps == max_new_tokens else "context"] * B
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    t0 = time.perf_counter()
    with autocast(device, dtype):
        logits = model(idx, n_loops=n_loops, cache=cache)[:, -1]
    for step in range(steps):
        nxt = sample_next(logits, sampling, gen)
        if eos_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
        toks = nxt.tolist()
        for b in range(B):
            if not finished[b]:
                out[b].append(toks[b])
        if on_token is not None:
            on_token(step, toks)
        if eos_id is not None:
            newly = (nxt == eos_id) & ~finished
            for b in torch.nonzero(newly).flatten().tolist():
                reason[b] = "eos"
            finished |= newly
            if bool(finished.all()):
                break
        if step + 1 < steps:
            with autocast(device, dtype):
                logits = model(nxt[:, None], n_loops=n_loops, cache=cache)[:, -1]
    return Generation(tokens=out, stop_reason=reason, prompt_tokens=T, seconds=time.perf_counter() - t0,
                      cache_bytes_per_token=cache.bytes_per_token())


class TextStreamer:
    """Decode tokens as they arrive and emit only the new text (waits while a UTF-8 character or a
    merge is incomplete, i.e. while the decoded text ends in U+FFFD)."""

    def __init__(self, tokenizer, write: Callable[[str], None], skip_ids: Sequence[int] = ()):
        self.tok, self.write = tokenizer, write
        self.skip = set(skip_ids)  # e.g. EOS: never shown as text
        self.ids: list[int] = []
        self.shown = 0

    def __call__(self, step: int, tokens: list[int]) -> None:
        if tokens[0] in self.skip:
            return
        self.ids.append(tokens[0])
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        if len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)

    def flush(self) -> None:
        text = self.tok.decode(self.ids)
        if len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)


@torch.inference_mode()  # no autograd bookkeeping (version counters, view tracking) per op
def decode_speed(model: torch.nn.Module, batch_size: int, prompt_len: int, new_tokens: int, run: Run | None = None,
                 *, warmup_tokens: int = 2, seed: int = 0, mla_layout: str = "auto") -> dict:
    """Greedy cached decoding speed: tokens_per_s = batch_size * new_tokens / decode time (after a
    prefill of prompt_len random tokens), and the cache's bytes per token at the end."""
    n_loops, device, dtype = _unpack(model, run)
    max_len = model.config.max_seq_len
    if prompt_len < 1 or new_tokens < 1 or batch_size < 1:
        raise ValueError("batch_size, prompt_len and new_tokens must be >= 1")
    if prompt_len + new_tokens > max_len:
        raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the model's context {max_len}")
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=g).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(n_new: int):
        cache = DecodeCache(batch_size, prompt_len + n_new, mla_layout)
        sync()
        t0 = time.perf_counter()
        with autocast(device, dtype):
            nxt = model(prompt, n_loops=n_loops, cache=cache)[:, -1].argmax(-1)
        sync()
        t1 = time.perf_counter()
        with autocast(device, dtype):
            for _ in range(n_new):
                nxt = model(nxt[:, None], n_loops=n_loops, cache=cache)[:, -1].argmax(-1)
        sync()
        return t1 - t0, time.perf_counter() - t1, cache

    if warmup_tokens:
        run(min(warmup_tokens, new_tokens))
    prefill_s, decode_s, cache = run(new_tokens)
    return {
        "tokens_per_s": batch_size * new_tokens / decode_s,
        "cache_bytes_per_token": cache.bytes_per_token(),
        "prefill_tokens_per_s": batch_size * prompt_len / prefill_s,
        "decode_s": decode_s,
        "prefill_s": prefill_s,
        "batch_size": batch_size, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "n_loops": model.resolve_loops(n_loops), "mla_layout": cache.mla_layout,
    }


__all__ = ["Generation", "TextStreamer", "decode_speed", "filter_logits", "generate", "sample_next"]
