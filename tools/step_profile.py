"""Where a training step's time goes: `torch.profiler` over a few steps of a bench shape, self CPU
time grouped into categories (matmul, attention, elementwise, cross-entropy, copies/conversions,
optimizer, framework) and the top operators.

    python -m tools.step_profile --shape main --model cart --threads 1
    python -m tools.step_profile --shape d256_bf16 --model dense_effective --top 30

Profiler times are wall times: on a machine others keep busy, read the shares, not the milliseconds.
"""
from __future__ import annotations

import argparse
import collections
import sys

import cart  # noqa: F401  (before torch: OpenMP's wait policy, as in a training process)
import torch

from cart.bench.suites import CPU_BF16_SIZES, CPU_SIZES, MAIN_SIZES, contender_configs, make_train_step
from cart.model import build_model
from cart.runtime import set_threads, tune_allocator

SHAPES = {"main": MAIN_SIZES, "d256_bf16": CPU_BF16_SIZES, "d256_fp32": CPU_SIZES}

# operator name -> category; the first matching rule wins
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("matmul (projections, head)", ("aten::mm", "aten::addmm")),
    ("attention (bmm, softmax, SDPA)", ("aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data",
                                       "scaled_dot_product", "flash_attention")),
    ("copies / dtype conversions", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous")),
    ("cross-entropy (exp, max, log, gather)", ("aten::exp", "aten::amax", "aten::log", "aten::logsumexp", "aten::gather",
                                               "aten::index_put", "CrossEntropy", "nll_loss", "log_softmax")),
    ("optimizer + clip", ("adam", "foreach", "Optimizer")),
    ("elementwise (norms, SwiGLU, RoPE, residual, gate)", ("aten::mul", "aten::add", "aten::sub", "aten::silu", "aten::div",
                                                          "aten::cat", "aten::sum", "aten::mean", "aten::pow", "aten::rsqrt",
                                                          "aten::where", "aten::fill", "aten::sigmoid", "aten::neg",
                                                          "rms_norm", "aten::zero", "aten::addcmul")),
)


def category(op: str) -> str:
    for name, keys in _RULES:
        if any(k in op for k in keys):
            return name
    return "framework / other"


def profile_step(shape: str = "main", model: str = "cart", threads: int = 0, steps: int = 3, top: int = 20) -> dict:
    """{"categories": {name: share}, "top": [(op, share, calls per step)], "ms_per_step": profiler total}."""
    from torch.profiler import ProfilerActivity, profile

    s = SHAPES[shape]
    tune_allocator()
    set_threads(threads)
    torch.manual_seed(0)
    m = build_model(contender_configs(s)[model])
    step = make_train_step(m, s, torch.device("cpu"))
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            step()
    ka = p.key_averages()
    total = sum(e.self_cpu_time_total for e in ka) or 1.0
    cats: collections.Counter = collections.Counter()
    for e in ka:
        cats[category(e.key)] += e.self_cpu_time_total
    ops = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"shape": s.label(), "model": model, "threads": torch.get_num_threads(), "ms_per_step": total / steps / 1e3,
            "categories": {k: v / total for k, v in cats.most_common()},
            "top": [(e.key, e.self_cpu_time_total / total, e.count / steps) for e in ops]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.step_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="main", choices=list(SHAPES))
    ap.add_argument("--model", default="cart", choices=["cart", "dense_stored", "dense_effective", "cart_unfrozen_kv"])
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    r = profile_step(args.shape, args.model, args.threads, args.steps, args.top)
    print(f"{r['model']} at {r['shape']}, {r['threads']} thread(s): {r['ms_per_step']:.1f} ms/step (profiler wall time)")
    for k, v in r["categories"].items():
        print(f"  {k:52s} {100 * v:5.1f} %")
    print("top operators (share of self time, calls per step):")
    for op, share, calls in r["top"]:
        print(f"  {op[:60]:60s} {100 * share:5.1f} %  {calls:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
