"""`cart bench`: CART's efficiency claims measured side by side, in one process (issue 7).

    from cart.bench import run, format_table
    result = run(["train", "cache"], quick=False)   # JSON-ready dict
    print(format_table(result))

Suites (`cart.bench.suites.SUITES`): peak (matmul FLOP/s, fp32 and bf16: the MFU denominator on
CPUs), train (CART P6 R6 vs dense at stored and effective parity vs CART with unfrozen K/V; tokens/s,
achieved FLOP/s, MFU, activation memory), forward, generate (cached decoding, batch 1 and 8, prompt
128, 128 new tokens), cache (bytes per token of a real DecodeCache at d=1024), data (tokenize-and-pack
MB/s, loader overhead as a fraction of a train step), compile (torch.compile on vs off).

Timing (`cart.bench.timing`): contenders alternate within each round, after warm-up, over several
rounds; medians are over the samples taken while other processes left the CPU alone, when there are
enough of them, and every entry says whether it was `contended`. Ratios are medians of same-round
ratios. Never assert on these numbers in tests; `run(..., quick=True)` exists to check the plumbing.

Targets (`targets(result)`): each issue-7 target with its measured value and whether it passed;
a target that cannot be measured on this device (GPU ones on a CPU) is reported as not measured.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys

import torch

from cart.runtime import allocator_tuned, omp_wait_policy, tune_allocator
from cart.bench.suites import SUITES, Bench
from cart.device import resolve_device

SCHEMA = "cart-bench/1"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(suites: list[str] | None = None, quick: bool = False, device: str | torch.device | None = None,
        repeats: int | None = None, data_recipe: str | None = None, data_dir: str | None = None,
        compile_backend: str = "inductor", tune_malloc: bool = True, threads: int | None = None, clock: str = "wall",
        log=lambda s: None) -> dict:
    """Run the named suites (default: all, in the order of SUITES) and return the JSON-ready result.

    tune_malloc: apply `cart.runtime.tune_allocator()` first (CPU: no page faults for the
    per-step reallocation of large tensors); recorded in meta["allocator_tuned"].
    threads: torch intra-op threads for the run (default: torch's choice). clock: "wall", or "cpu"
    (process CPU time; meaningful with threads=1 on a machine other processes keep busy)."""
    names = list(SUITES) if not suites else list(dict.fromkeys(suites))
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown bench suite(s) {unknown}; known: {list(SUITES)}")
    dev = resolve_device(device, what="--device")  # refuses cuda where there is none, in one line
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if tune_malloc:
        tune_allocator()
    if threads:
        torch.set_num_threads(int(threads))
    bench = Bench(quick=quick, device=dev, repeats=repeats, data_recipe=data_recipe, data_dir=data_dir,
                  compile_backend=compile_backend, clock=clock, log=log)
    from cart.train.mfu import device_name

    result = {
        "schema": SCHEMA,
        "meta": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "quick": quick, "device": device_name(dev), "device_type": dev.type, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "commit": _git_commit(), "suites": names, "argv": sys.argv[1:],
            "allocator_tuned": allocator_tuned(), "clock": clock, "omp_wait_policy": omp_wait_policy(),
        },
        "suites": bench.results,
    }
    for n in names:
        log(f"suite {n} ...")
        if n in bench.results:  # e.g. peak, already measured for an MFU
            continue
        try:
            bench.results[n] = SUITES[n](bench)
        except Exception as e:  # noqa: BLE001 - one failing suite must not lose the others' results
            bench.results[n] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    # keep the requested order (a suite may have pulled in `peak` first)
    result["suites"] = {k: bench.results[k] for k in names + [k for k in bench.results if k not in names]}
    result["targets"] = targets(result)
    return result


def _ok(res: dict, suite: str) -> dict | None:
    s = res["suites"].get(suite)
    return s if s and s.get("status") == "ok" else None


def targets(res: dict) -> list[dict]:
    """Issue 7's targets, each {"id", "target", "measured", "passed", "note"}; passed is None when
    this run did not measure it."""
    out = []

    def add(id_, target, measured, passed, note=""):
        out.append({"id": id_, "target": target, "measured": measured, "passed": passed, "note": note})

    tr = _ok(res, "train")
    cpu_entry = None
    if tr:
        for lbl, e in tr["sizes"].items():
            if "fp32" in lbl:
                cpu_entry = e
                break
    if cpu_entry:
        r, c = cpu_entry["ratios"], cpu_entry["contenders"]
        worst = min(r["cart_vs_dense_stored_flops_per_s"], r["cart_vs_dense_effective_flops_per_s"])
        add("train_flops_vs_dense", "CART achieved FLOP/s >= 0.90 x dense (both parities)", worst, worst >= 0.90,
            f"stored {r['cart_vs_dense_stored_flops_per_s']:.3f}, effective {r['cart_vs_dense_effective_flops_per_s']:.3f}")
        add("train_faster_than_unfrozen", "t(unfrozen K/V) / t(CART) >= FLOP ratio", r["unfrozen_over_cart_time"],
            r["unfrozen_over_cart_time"] >= r["unfrozen_over_cart_flops"], f"FLOP ratio {r['unfrozen_over_cart_flops']:.4f}"
            + ("; per-round ratios {:.3f}-{:.3f}".format(*r["unfrozen_over_cart_time_range"])
               if "unfrozen_over_cart_time_range" in r else ""))
        for k in ("cart", "dense_stored", "dense_effective"):
            mfu = c[k]["mfu"]
            add(f"train_mfu_{k}", "training MFU (fp32, vs measured matmul peak) >= 0.50", mfu,
                None if mfu is None else mfu >= 0.50, cpu_entry["label"])
    else:
        add("train_flops_vs_dense", "CART achieved FLOP/s >= 0.90 x dense", None, None, "train suite not run")
    gen = _ok(res, "generate")
    if gen:
        for bs, e in gen["batches"].items():
            v = e["ratios"]["cart_vs_dense_effective_tokens_per_s"]
            add(f"decode_b{bs}_vs_dense_effective", "CART decode tokens/s >= 0.9 x dense (effective parity)", v, v >= 0.9,
                f"batch {bs}, latent MLA cache (the 5x-smaller one)")
            for lay, what in (("latent_k", "latent + rotated K"), ("kv", "rotated K and V")):
                v2 = e["ratios"].get(f"cart_{lay}_cache_vs_dense_effective_tokens_per_s")
                if v2 is not None:
                    add(f"decode_b{bs}_vs_dense_effective_{lay}_cache", "CART decode tokens/s >= 0.9 x dense (effective parity)",
                        v2, v2 >= 0.9, f"batch {bs}, {what} MLA cache (speed for memory: see the cache suite)")
    else:
        g = res["suites"].get("generate", {})
        add("decode_vs_dense_effective", "CART decode tokens/s >= 0.9 x dense (effective parity)", None, None,
            g.get("reason") or g.get("error") or "generate suite not run")
    ca = _ok(res, "cache")
    if ca:
        v = ca["ratios"]["dense_effective_over_cart"]
        add("cache_bytes_vs_dense_effective", "cache bytes/token >= 5x smaller than dense (effective parity) at d=1024",
            v, v >= 5.0 if "d=1024" in ca["label"] else None, ca["label"])
    da = _ok(res, "data")
    if da:
        v = da["loader_overhead_fraction"]
        add("loader_overhead", "loader overhead < 2 % of a train step", v, v < 0.02, f"recipe {da['recipe']}")
    gpu = None
    if tr:
        for lbl, e in tr["sizes"].items():
            if "bf16" in lbl and "d=1024" in lbl:
                gpu = e
    if gpu:
        mfu = gpu["contenders"]["cart"]["mfu"]
        add("gpu_mfu_cart_d1024", "GPU d=1024 R6 P6 bf16 MFU >= 0.45", mfu, None if mfu is None else mfu >= 0.45,
            f"{gpu['contenders']['cart']['tokens_per_s']:.0f} tok/s (paper: 32,393 on an RTX 3090)")
    else:
        add("gpu_mfu_cart_d1024", "GPU d=1024 R6 P6 bf16 MFU >= 0.45", None, None, "no GPU in this run")
    return out


# ---------------------------------------------------------------------------------------------
# the table for people


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for f, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= f:
            return f"{x / f:.2f} {p}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))  # noqa: E731
    return "\n".join([line(headers), line(["-" * x for x in w])] + [line(r) for r in rows])


def format_table(res: dict) -> str:
    m = res["meta"]
    parts = [f"cart bench  {m['date']}  {m['device']}  torch {m['torch']}  clock {m.get('clock', 'wall')}  "
             f"malloc {'tuned' if m.get('allocator_tuned') else 'default'}  {'QUICK (plumbing only)' if m['quick'] else ''}".rstrip()]
    S = res["suites"]
    for name, s in S.items():
        if s.get("status") != "ok":
            parts.append(f"\n[{name}] {s.get('status')}: {s.get('reason') or s.get('error')}")
            continue
        if name == "peak":
            parts.append(f"\n[peak] matmul: fp32 {_si(s['fp32']['flops'], 'FLOP/s')} (n={s['fp32']['n']}), "
                         f"bf16 {_si(s['bf16']['flops'], 'FLOP/s')} (n={s['bf16']['n']}), {s['threads']} threads"
                         + ("  [contended]" if s['fp32']['contended'] else ""))
        elif name in ("train", "forward"):
            for lbl, e in s["sizes"].items():
                rows = []
                for k, c in e["contenders"].items():
                    rows.append([k, c["model"], f"{c['stored_params'] / 1e6:.2f}M", f"{c['effective_params'] / 1e6:.2f}M",
                                 f"{c['median_s'] * 1e3:.1f}", f"{c['tokens_per_s']:.0f}", _si(c["achieved_flops"], "FLOP/s"),
                                 _pct(c["mfu"]), _si(c.get("activation_bytes"), "B") if c.get("activation_bytes") else "-",
                                 f"{c['n_clean']}/{c['n_samples']}"])
                parts.append(f"\n[{name}] {lbl}  (MFU vs {_si(e['peak_flops'], 'FLOP/s')})")
                parts.append(_table(["contender", "model", "stored", "effective", "ms/step", "tok/s", "achieved", "MFU",
                                     "act. mem", "clean"], rows))
                r = e["ratios"]
                parts.append(f"CART FLOP/s vs dense: stored {r['cart_vs_dense_stored_flops_per_s']:.3f}, effective "
                             f"{r['cart_vs_dense_effective_flops_per_s']:.3f};  t(unfrozen)/t(CART) {r['unfrozen_over_cart_time']:.3f} "
                             f"vs FLOP ratio {r['unfrozen_over_cart_flops']:.4f}")
        elif name == "generate":
            rows = []
            for bs, e in s["batches"].items():
                for k, c in e["contenders"].items():
                    rows.append([f"b{bs} {k}", c["model"], c.get("mla_cache", "latent"), f"{c['tokens_per_s']:.1f}",
                                 f"{c['prefill_tokens_per_s']:.0f}", f"{c['cache_bytes_per_token']:.0f}"])
            parts.append(f"\n[generate] {s['label']}, prompt {s['prompt_len']}, {s['new_tokens']} new tokens")
            parts.append(_table(["batch contender", "model", "MLA cache", "decode tok/s", "prefill tok/s", "cache B/tok"], rows))
            parts.append("CART/dense(effective) decode: " + ", ".join(
                f"b{bs} {e['ratios']['cart_vs_dense_effective_tokens_per_s']:.3f}"
                + "".join(f", {lay} cache {e['ratios'][f'cart_{lay}_cache_vs_dense_effective_tokens_per_s']:.3f}"
                          for lay in ("latent_k", "kv") if f"cart_{lay}_cache_vs_dense_effective_tokens_per_s" in e["ratios"])
                for bs, e in s["batches"].items()))
        elif name == "cache":
            rows = [[k, c["model"], f"{c['cache_bytes_per_token']:.0f}", f"{c['expected_bytes_per_token']}"]
                    for k, c in s["contenders"].items()]
            parts.append(f"\n[cache] {s['label']}")
            parts.append(_table(["contender", "model", "bytes/token", "expected"], rows))
            parts.append("over CART (latent cache): " + ", ".join(f"{k.replace('_over_cart', '')} {v:.2f}x" for k, v in s["ratios"].items()))
        elif name == "data":
            t = s["tokenize"]
            parts.append(f"\n[data] recipe {s['recipe']}: tokenize+pack {t['mb_per_s']:.2f} MB/s ({t['tokens_per_s']:.0f} tok/s, "
                         f"{t['workers']} worker(s), {t['tokenizer']}); loader {s['loader']['batch_s'] * 1e3:.3f} ms/batch = "
                         f"{_pct(s['loader_overhead_fraction'])} of a {s['train_step_s'] * 1e3:.0f} ms train step")
        elif name == "compile":
            rows = []
            for k, c in s["contenders"].items():
                if c["status"] != "ok":
                    rows.append([k, "failed", "-", "-", c["error"][:60]])
                else:
                    rows.append([k, f"{c['compile_s']:.1f}", f"{c['eager']['median_s'] * 1e3:.1f}",
                                 f"{c['compiled']['median_s'] * 1e3:.1f}", f"{c['speedup']:.3f}x"])
            parts.append(f"\n[compile] {s['label']} (train step)")
            parts.append(_table(["model", "compile s", "eager ms", "compiled ms", "speedup"], rows))
    tg = res.get("targets") or []
    if tg:
        rows = [[t["id"], t["target"], "-" if t["measured"] is None else f"{t['measured']:.3f}",
                 {True: "PASS", False: "MISS", None: "n/a"}[t["passed"]], t["note"]] for t in tg]
        parts.append("\n[targets]")
        parts.append(_table(["target", "requirement", "measured", "", "note"], rows))
    return "\n".join(parts)


__all__ = ["run", "targets", "format_table", "SUITES", "SCHEMA"]
