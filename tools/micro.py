"""Each optimisation of issue 7 as a micro-benchmark: the plain-PyTorch form it replaced against the
form in `cart/model`, forward + backward at the training shapes (d=256, T=256, B=8, V=8192), in
one process, alternating (the `cart.bench.timing` harness).

    python -m tools.micro [--threads 1 --clock cpu] [--only ce rope ...]

Prints per-call medians, the same-round ratio new/old and how many calls one CART P6 R6 training
step makes, so the saving per step can be read off. The "old" forms are copied here verbatim from
the code before issue 7 (commit bba02a1).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

from cart.bench.timing import measure
from cart.model.layers import RMSNorm, Rotary, SwiGLU, cross_entropy

B, T, D_MODEL, V, HEAD = 8, 256, 256, 8192, 64
H = D_MODEL // HEAD
D_FF = 768


def _old_rotary(rot_cos_half, rot_sin_half, x):
    cos, sin = rot_cos_half[: x.shape[-2]], rot_sin_half[: x.shape[-2]]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def cases() -> dict:
    """name -> (calls per CART P6 R6 training step, {"old": fn, "new": fn})."""
    torch.manual_seed(0)
    out = {}

    # 1. tied-head cross-entropy (includes the head matmul both ways)
    h = torch.randn(B * T, D_MODEL, requires_grad=True)
    W = (torch.randn(V, D_MODEL) * 0.02).requires_grad_()
    y = torch.randint(0, V, (B * T,))
    out["ce"] = (1, {
        "old": lambda: F.cross_entropy(F.linear(h, W).float(), y).backward(),
        "new": lambda: cross_entropy(F.linear(h, W), y).backward(),
    })

    # 2. rotary embedding on q or k [B, H, T, D] (a transposed view, as in the model)
    rot = Rotary(HEAD, T, 10_000.0)
    inv = 1.0 / (10_000.0 ** (torch.arange(0, HEAD, 2, dtype=torch.float64) / HEAD))
    f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    cos_h, sin_h = f.cos().float(), f.sin().float()
    xq = torch.randn(B, T, D_MODEL, requires_grad=True)
    gq = torch.randn(B, H, T, HEAD)
    heads = lambda: xq.view(B, T, H, HEAD).transpose(1, 2)  # noqa: E731
    out["rope"] = (14, {
        "old": lambda: _old_rotary(cos_h, sin_h, heads()).backward(gq),
        "new": lambda: rot(heads()).backward(gq),
    })

    # 3. RMSNorm
    norm = RMSNorm(D_MODEL)
    xn = torch.randn(B, T, D_MODEL, requires_grad=True)
    gn = torch.randn(B, T, D_MODEL)
    out["rmsnorm"] = (27, {
        "old": lambda: F.rms_norm(xn, (D_MODEL,), norm.weight, 1e-6).backward(gn),
        "new": lambda: norm(xn).backward(gn),
    })

    # 4. SwiGLU
    mlp = SwiGLU(D_MODEL, D_FF)

    def swiglu_old():
        gate, up = mlp.w_gate_up(xn).split(D_FF, dim=-1)
        mlp.w_down(F.silu(gate) * up).backward(gn)

    out["swiglu"] = (13, {"old": swiglu_old, "new": lambda: mlp(xn).backward(gn)})

    # 5. hyper blend + loop-index embedding + LTI gate (one loop iteration)
    s0, s1, s2, u = (torch.randn(B, T, D_MODEL, requires_grad=True) for _ in range(4))
    logits = torch.tensor([0.0, -16.0, -16.0], requires_grad=True)
    lie = torch.randn(D_MODEL, requires_grad=True)
    a = torch.full((D_MODEL,), 2.197, requires_grad=True)

    def loop_old():
        w = torch.softmax(logits, 0)
        ht = w[0] * s0 + w[1] * s1 + w[2] * s2
        ht = ht + lie
        A = torch.sigmoid(a)
        (A * ht + (u - ht)).backward(gn)

    def loop_new():
        w = torch.softmax(logits, 0)
        ht = torch.addcmul(torch.addcmul(torch.addcmul(lie, w[0], s0), w[1], s1), w[2], s2)
        torch.addcmul(u, torch.sigmoid(a) - 1, ht).backward(gn)

    out["blend_gate"] = (6, {"old": loop_old, "new": loop_new})
    return out


def decode_cases(batch: int = 8, ctx: int = 192) -> dict:
    """MLA self-attention for one new token over `ctx` cached latents: up-projecting K and V for the
    whole cache (old) vs absorbed V with bmm (new); 7 calls per decoded token of CART P6."""
    from cart.model.attention import MLASelfAttention, _merge
    from cart.model.cache import DecodeCache

    torch.manual_seed(0)
    rot = Rotary(HEAD, ctx + 1, 10_000.0)
    attn = MLASelfAttention(D_MODEL, D_MODEL // 4, rot).eval()
    x = torch.randn(batch, 1, D_MODEL)
    c_cache = torch.randn(batch, ctx, D_MODEL // 4)

    @torch.no_grad()
    def old():
        q, c = attn.w_q_down(x).split((D_MODEL, D_MODEL // 4), dim=-1)
        c = torch.cat((c_cache, c), 1)
        k, v = attn.w_kv_up(c).split(D_MODEL, dim=-1)
        q = rot(q.view(batch, 1, H, HEAD).transpose(1, 2), ctx)
        k = rot(k.view(batch, -1, H, HEAD).transpose(1, 2), 0)
        y = F.scaled_dot_product_attention(q, k, v.view(batch, -1, H, HEAD).transpose(1, 2))
        return attn.w_o(_merge(y))

    @torch.no_grad()
    def new():
        cache = DecodeCache(batch, ctx + 1)
        cache._store["k"] = torch.cat((c_cache, torch.zeros(batch, 1, D_MODEL // 4)), 1)
        cache.pos = ctx
        return attn(x, cache, "k")

    torch.testing.assert_close(new(), old(), atol=1e-4, rtol=1e-4)
    return {"decode_mla": (7, {"old": old, "new": new})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.micro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--inner", type=int, default=5, help="calls per sample")
    ap.add_argument("--only", nargs="+", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_cases = {**cases(), **decode_cases()}
    print(f"{torch.get_num_threads()} thread(s), clock {args.clock}; per call, forward + backward (decode: forward)")
    for name, (calls, fns) in all_cases.items():
        if args.only and name not in args.only:
            continue

        def rep(fn):
            def g():
                for _ in range(args.inner):
                    fn()
            return g

        m = measure({k: rep(f) for k, f in fns.items()}, repeats=args.repeats, warmup=2, max_rounds=args.repeats * 2,
                    time_budget_s=60, clock=args.clock)
        old, new = (m.timings[k].median_s / args.inner for k in ("old", "new"))
        r = m.paired_ratio("new", "old")
        flag = " (contended)" if args.clock == "wall" and any(t.contended for t in m.timings.values()) else ""
        print(f"{name:11s} old {old * 1e3:8.3f} ms  new {new * 1e3:8.3f} ms  new/old {r:.3f}   x{calls} per "
              f"{'decoded token' if name == 'decode_mla' else 'step'}: {calls * (old - new) * 1e3:+7.1f} ms saved{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
