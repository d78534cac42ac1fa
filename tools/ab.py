"""Before/after: the model code of a git revision against the working tree, in one process.

    python -m tools.ab --rev bba02a1 --model cart dense_effective --what train --threads 1 --cpu-time
    python -m tools.ab --rev 4165501 --d 192 --prelude 2 --loops 4 --batch 16 --dtype bf16   # the main job's shape

The revision's `cart/config.py`, `cart/accounting.py`, `cart/validation.py` (when it has one) and
`cart/model/*.py` are read with `git show` (nothing in the repository changes) into a throw-away
package `cart_rev_<sha>` under a temporary directory, so both versions are built with the same seed
and measured alternately in the same process. `--cpu-time` times with the process's CPU time instead of the wall clock: with one
thread it counts the work done and not the time other processes held the core, which makes
before/after comparisons usable on a shared machine (the wall clock is reported too).

What is timed (`--what`): train (forward + loss + backward + fused AdamW), forward (no_grad), or
decode (greedy cached decoding of --new tokens after a --prompt prefill at --batch).
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

from cart.bench.timing import measure

_FILES = ["cart/config.py", "cart/accounting.py", "cart/validation.py"]  # those a revision has (validation.py: newer ones)


def _repo_root() -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent, check=True)
    return Path(out.stdout.strip())


def load_revision(rev: str, workdir: Path):
    """Import the model code of `rev` as a separate package; returns (config, accounting, model) modules."""
    root = _repo_root()
    sha = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=root, check=True).stdout.strip()
    name = f"cart_rev_{sha}"
    pkg = workdir / name
    (pkg / "model").mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "cart/model/"], capture_output=True, text=True,
                           cwd=root, check=True).stdout.split()
    present = subprocess.run(["git", "ls-tree", "--name-only", rev, *_FILES], capture_output=True, text=True,
                             cwd=root, check=True).stdout.split()
    for f in present + [f for f in files if f.endswith(".py")]:
        src = subprocess.run(["git", "show", f"{rev}:{f}"], capture_output=True, text=True, cwd=root, check=True).stdout
        src = src.replace("from cart.", f"from {name}.").replace("import cart.", f"import {name}.")
        (pkg / f.removeprefix("cart/")).write_text(src)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(workdir))
    return tuple(importlib.import_module(f"{name}.{m}") for m in ("config", "accounting", "model"))


def _build(mods, which: str, d: int, T: int, V: int, max_len: int, prelude: int = 6, loops: int = 6):
    cfgm, acc, model = mods
    c = cfgm.CARTConfig(vocab_size=V, d_model=d, max_seq_len=max_len, n_prelude=prelude, n_loops=loops)
    cfg = {
        "cart": c, "cart_unfrozen_kv": c.replace(freeze_kv=False),
        "dense_stored": acc.dense_for(c, acc.parity(c, "stored").n_layers),
        "dense_effective": acc.dense_for(c, acc.parity(c, "effective").n_layers),
    }[which]
    torch.manual_seed(0)
    return model.build_model(cfg), importlib.import_module(model.__name__ + ".cache").DecodeCache


def _task(m, DecodeCache, args):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    inp, tgt = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.dtype == "bf16" else nullcontext
    if args.what == "train":
        opt = torch.optim.AdamW(m.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

        def f():
            with amp():
                loss = m.loss(inp, tgt)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return f, args.batch * args.seq
    if args.what == "forward":
        m.eval()

        def f():
            with torch.no_grad(), amp():
                m(inp)
        return f, args.batch * args.seq
    m.eval()
    prompt = inp[:, : args.prompt]

    def f():
        with torch.no_grad(), amp():
            cache = DecodeCache(args.batch, args.prompt + args.new)
            nxt = m(prompt, cache=cache)[:, -1].argmax(-1)
            for _ in range(args.new):
                nxt = m(nxt[:, None], cache=cache)[:, -1].argmax(-1)
    return f, args.batch * args.new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", default="HEAD", help="the 'before' git revision (default HEAD)")
    ap.add_argument("--model", nargs="+", default=["cart"], choices=["cart", "cart_unfrozen_kv", "dense_stored", "dense_effective"])
    ap.add_argument("--what", default="train", choices=["train", "forward", "decode"])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prelude", type=int, default=6, help="CART prelude layers P (default 6)")
    ap.add_argument("--loops", type=int, default=6, help="CART loops R (default 6)")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="fp32, or bf16 autocast (as the trainer)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    ap.add_argument("--tune-malloc", action="store_true", help="apply cart.runtime.tune_allocator() first")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds to keep waiting for uncontended samples")
    args = ap.parse_args(argv)
    if args.tune_malloc:
        from cart.runtime import tune_allocator
        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    from cart import accounting as acc_new, config as cfg_new, model as model_new

    max_len = max(args.seq, args.prompt + args.new)
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        print(f"before = {args.rev}, after = working tree; {args.what}, d={args.d} T={args.seq} V={args.vocab} "
              f"B={args.batch} P{args.prelude} R{args.loops} {args.dtype}, {torch.get_num_threads()} thread(s), clock = {'process CPU' if args.cpu_time else 'wall'}")
        for which in args.model:
            fns = {}
            for tag, mods in (("before", old), ("after", (cfg_new, acc_new, model_new))):
                m, DC = _build(mods, which, args.d, args.seq, args.vocab, max_len, args.prelude, args.loops)
                fns[tag], units = _task(m, DC, args)
            m = measure(fns, repeats=args.repeats, warmup=2, max_rounds=args.repeats * 3, time_budget_s=args.budget,
                        clock="cpu" if args.cpu_time else "wall")
            tb, ta = m.timings["before"], m.timings["after"]
            ratio = m.paired_ratio("after", "before")
            b, a = tb.median_s, ta.median_s
            clean = "" if args.cpu_time else f"  clean samples {tb.summary()['n_clean']}+{ta.summary()['n_clean']}/{len(tb.samples_s) * 2}" + (
                " (CONTENDED)" if tb.contended or ta.contended else "")
            print(f"{which:17s} before {b * 1e3:9.1f} ms  after {a * 1e3:9.1f} ms  after/before {ratio:.3f} "
                  f"(paired median)  {units / b:.0f} -> {units / a:.0f} tok/s{clean}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
