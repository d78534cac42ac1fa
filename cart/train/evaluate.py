"""Validation perplexity during training: every set in the data manifest, non-overlapping windows.

Window i reads tokens [i·T, i·T + T) and predicts [i·T + 1, i·T + T]; every target after the first
token is predicted once, the last window is shorter. `max_tokens` reads only the first windows
of each set (a quick look on eval steps); bits per byte then scale the set's bytes by the fraction
of its predictions read. Under torchrun the windows are split across ranks and the sums
all-reduced; every rank makes the same number of forward calls (FSDP needs that), padding with a
zero-weight window when it runs out. `cart eval ppl` is the fuller tool (sliding windows, any
checkpoint); this is the one the trainer calls.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


def _windows(n_tokens: int, seq_len: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """(begin, end) per window: inputs tokens[begin:end], targets tokens[begin+1:end+1]."""
    last = n_tokens - 1
    if max_tokens:
        last = min(last, int(max_tokens))
    return [(b, min(b + seq_len, last)) for b in range(0, last, seq_len)]


@torch.no_grad()
def evaluate_perplexity(model, manifest, seq_len: int, max_tokens: int | None = None, batch_size: int = 8, *,
                        n_loops: int | None = None, dtype: torch.dtype | None = None, doc_masking: bool = False) -> dict[str, dict]:
    """{val set: {"loss", "ppl", "bpb", "tokens", "out_of_domain"}} for every validation set of `manifest`.

    model: any callable idx -> logits [B, T, V] with a `n_loops=` keyword (a model, or its DDP/FSDP form).
    dtype: autocast dtype (e.g. torch.bfloat16), None for fp32.
    doc_masking: attention stays inside each document of a window (as a run trained with doc_masking saw it).
    """
    from cart.data import TokenFile
    from cart.data.loader import document_ids

    param = next(model.parameters())
    device = param.device
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, vs in manifest.val_sets.items():
            tokens = TokenFile(vs.path, manifest.vocab_size).tokens
            spans = _windows(len(tokens), seq_len, max_tokens)
            full = [s for s in spans if s[1] - s[0] == seq_len]
            tail = [s for s in spans if s[1] - s[0] != seq_len]
            total = torch.zeros(2, dtype=torch.float64, device=device)  # nats, predictions
            for group in (full, tail):
                mine = group[rank::world]
                per_rank = math.ceil(len(group) / world)
                for i in range(0, per_rank, batch_size):
                    chunk = mine[i:i + batch_size]
                    weight = 1.0 if chunk else 0.0
                    chunk = chunk or group[:1]  # keep the forward call count equal on every rank
                    rows = np.stack([np.asarray(tokens[b:e + 1], dtype=np.int64) for b, e in chunk])
                    batch = torch.from_numpy(rows).to(device, non_blocking=True)
                    x, y = batch[:, :-1], batch[:, 1:]
                    masking = {"doc_ids": document_ids(x, manifest.bos_id)} if doc_masking else {}
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        logits = model(x, n_loops=n_loops, **masking)
                    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
                    total += weight * torch.stack([nll.double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=device)])
            if world > 1:
                dist.all_reduce(total)
            nats, count = total.tolist()
            loss = nats / max(count, 1.0)
            predictable = max(len(tokens) - 1, 1)
            n_bytes = vs.bytes * count / predictable
            out[name] = {
                "loss": loss,
                "ppl": math.exp(min(loss, 700.0)),
                "bpb": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
                "tokens": int(count),
                "out_of_domain": bool(vs.out_of_domain),
            }
    finally:
        model.train(was_training)
    return out
