"""Variable loop count at inference (the paper's §6.7 table) and adaptive R.

`vary_r` runs one trained model at several loop counts R without any fine-tuning and tabulates,
per R: perplexity and bits per byte on each validation set, zero-shot task metrics, and the
measured per-loop contraction ||h_{r+1} − h_r|| / ||h_r − h_{r−1}|| of the loop (SPEC §6.3) on a
probe batch of validation text.

Adaptive R (`adaptive_forward`, `AdaptiveLoops`) runs CART's loop one `CART.loop_step` at a time
(the same maths as `CART.forward`) and stops updating a position once its relative state change
||h_{r+1} − h_r|| / ||h_r|| falls below `tol` (after `min_loops`, at most `max_loops`). The halted
state is carried unchanged through the remaining loops (its ring buffer too), and the loop ends
as soon as every position has halted.

Granularity: "token" (default) halts each position on its own state. That is causal: a position's
state depends only on tokens up to it, so its halting step does too; during generation (one new
token per sequence per step) it is exactly per-sequence halting. "sequence" halts a whole
sequence when its slowest position converges, as literally "per sequence"; over a scoring window
this lets later tokens decide how many loops earlier positions get (a mild look-ahead), so it is
offered for comparison only. With tol = 0 nothing halts and the result equals the fixed-R forward.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cart.eval.options import AdaptiveOptions, PplOptions, Run, TaskOptions
from cart.eval.perplexity import ValData, evaluate_set
from cart.eval.tasks import PRIMARY_METRIC, Task, evaluate_task
from cart.model.cart import CART


@torch.no_grad()
def adaptive_forward(model: CART, idx: torch.Tensor, opts: AdaptiveOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [B, T, V] and loops used per position [B, T] with per-position (or per-sequence) halting."""
    if not isinstance(model, CART):
        raise ValueError(f"adaptive R needs a CART model, got {type(model).__name__}")
    tol, min_loops, granularity = opts.tol, opts.min_loops, opts.granularity
    R = model.resolve_loops(opts.max_loops)
    e, kv = model.anchor_state(idx)
    states = [e, e, e]
    active = torch.ones(idx.shape + (1,), dtype=torch.bool, device=idx.device)
    used = torch.zeros(idx.shape, dtype=torch.float32, device=idx.device)
    for r in range(R):
        h, kv = model.loop_step(r, states, kv)
        prev = states[0]
        rel = (h - prev).float().norm(dim=-1) / prev.float().norm(dim=-1).clamp_min(1e-12)  # [B, T]
        new = [h, states[0], states[1]]
        states = [torch.where(active, n, o) for n, o in zip(new, states)]
        used += active.squeeze(-1).float()
        if r + 1 >= min_loops:
            if granularity == "sequence":
                rel = rel.amax(dim=1, keepdim=True).expand_as(rel)
            active = active & (rel >= tol)[..., None]
            if not bool(active.any()):
                break
    x = model.coda(states[0])
    return F.linear(model.norm(x), model.embed.weight), used


class AdaptiveLoops:
    """`adaptive_forward` as an idx -> logits callable that keeps count of the loops it used."""

    def __init__(self, model: CART, opts: AdaptiveOptions):
        self.model, self.opts = model, opts
        self.loops_sum, self.positions = 0.0, 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        logits, used = adaptive_forward(self.model, idx, self.opts)
        self.loops_sum += float(used.sum())
        self.positions += used.numel()
        return logits

    @property
    def mean_loops(self) -> float:
        return self.loops_sum / max(self.positions, 1)


@torch.no_grad()
def loop_contraction(model, probe: torch.Tensor, n_loops: int | None = None) -> dict:
    """Per-loop update norms and contraction ratios on a probe batch (the model's own loop stats)."""
    stats: dict = {}
    model(probe, n_loops=n_loops, stats=stats)
    dn = stats.get("delta_norm")
    cr = stats.get("contraction")
    out = {"delta_norm": dn.tolist() if dn is not None else [], "contraction": cr.tolist() if cr is not None else []}
    out["contraction_mean"] = float(np.mean(out["contraction"])) if out["contraction"] else None
    return out


def _probe(val_sets: Sequence[ValData], seq_len: int, vocab: int, rows: int = 4, device="cpu") -> torch.Tensor:
    for v in val_sets:
        n = len(v.tokens)
        if n >= seq_len:
            k = min(rows, n // seq_len)
            arr = np.asarray(v.tokens[: k * seq_len], dtype=np.int64).reshape(k, seq_len)
            return torch.from_numpy(arr).to(device)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (rows, seq_len), generator=g).to(device)


def vary_r(
    model,
    loops: Sequence[int],
    *,
    val_sets: Sequence[ValData] = (),
    tasks: Sequence[Task] = (),
    tokenizer=None,
    ppl: PplOptions | None = None,
    task_opts: TaskOptions = TaskOptions(),
    run: Run = Run(),
    adaptive: AdaptiveOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """One row per loop count (and one for adaptive R): perplexity per set, task metrics, contraction.
    `ppl` defaults to windows of the model's max_seq_len; `run` gives device and dtype (its n_loops is
    replaced by each R)."""
    if tasks and tokenizer is None:
        raise ValueError("task evaluation needs a tokenizer")
    ppl = ppl or PplOptions(seq_len=model.config.max_seq_len)
    for R in loops:
        model.resolve_loops(R)  # refuse an impossible R before any work
    probe = _probe(val_sets, min(ppl.seq_len, 128), model.config.vocab_size, device=run.device)
    rows = []

    def one(label, at: Run):
        row: dict = {"n_loops": label, "ppl": {}, "tasks": {}}
        for v in val_sets:
            row["ppl"][v.name] = evaluate_set(model, v, ppl, at).to_dict()
        for t in tasks:
            r = evaluate_task(model, tokenizer, t, task_opts, at)
            row["tasks"][t.name] = {**r["metrics"], "n": r["n"]}
        return row

    for R in loops:
        row = one(R, dataclasses.replace(run, n_loops=R, forward=None))
        row.update(loop_contraction(model, probe, R))
        rows.append(row)
        if log:
            log(format_row(row))
    if adaptive is not None:
        max_loops = adaptive.max_loops or max(loops)
        ad = AdaptiveLoops(model, dataclasses.replace(adaptive, max_loops=max_loops))
        row = one("adaptive", dataclasses.replace(run, n_loops=None, forward=ad))
        row.update({"tol": adaptive.tol, "max_loops": model.resolve_loops(max_loops), "granularity": adaptive.granularity,
                    "mean_loops": ad.mean_loops})
        rows.append(row)
        if log:
            log(format_row(row))
    return {"trained_loops": getattr(model.config, "n_loops", None), "rows": rows,
            "seq_len": ppl.seq_len, "max_tokens": ppl.max_tokens, "limit": task_opts.limit}


def format_row(row: dict) -> str:
    parts = [f"R={row['n_loops']}"]
    if row.get("mean_loops") is not None:
        parts.append(f"(mean R {row['mean_loops']:.2f}, tol {row['tol']:g})")
    for name, r in row["ppl"].items():
        parts.append(f"ppl_{name} {r['ppl']:.3f}")
    for name, m in row["tasks"].items():
        key = PRIMARY_METRIC.get(name, "acc")
        parts.append(f"{name} {key} {m[key]:.4f}")
        if "perplexity" in m:
            parts.append(f"{name} ppl {m['perplexity']:.2f}")
    if row.get("contraction_mean") is not None:
        parts.append(f"contraction {row['contraction_mean']:.3f}")
    return "  ".join(parts)


def format_table(result: dict) -> str:
    """Markdown table: one row per R."""
    rows = result["rows"]
    if not rows:
        return ""
    sets = list(rows[0]["ppl"])
    tasks = list(rows[0]["tasks"])
    head = ["R"] + [f"ppl {s}" for s in sets] + [f"bpb {s}" for s in sets]
    for t in tasks:
        head.append(f"{t} {PRIMARY_METRIC.get(t, 'acc')}")
        if "perplexity" in rows[0]["tasks"][t]:
            head.append(f"{t} ppl")
    head.append("contraction (mean)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        label = str(row["n_loops"]) if row.get("mean_loops") is None else f"adaptive ({row['mean_loops']:.2f})"
        cells = [label] + [f"{row['ppl'][s]['ppl']:.3f}" for s in sets]
        cells += [("-" if row["ppl"][s]["bpb"] is None else f"{row['ppl'][s]['bpb']:.4f}") for s in sets]
        for t in tasks:
            m = row["tasks"][t]
            cells.append(f"{100 * m[PRIMARY_METRIC.get(t, 'acc')]:.2f}")
            if "perplexity" in m:
                cells.append(f"{m['perplexity']:.1f}")
        cm = row.get("contraction_mean")
        cells.append("-" if cm is None else f"{cm:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["AdaptiveLoops", "adaptive_forward", "format_table", "loop_contraction", "vary_r"]
