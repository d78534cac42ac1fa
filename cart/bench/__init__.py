"""`cart bench`: CART's efficiency claims measured side by side, in one process (issues 7 and 12).

    from cart.bench import run, format_table
    result = run(["train", "cache"], quick=False)   # JSON-ready dict
    print(format_table(result))

Suites (`cart.bench.suites.SUITES`): peak (matmul FLOP/s, fp32 and bf16: the MFU denominator on
CPUs), train (CART vs dense at stored and effective parity vs CART with unfrozen K/V at the main
job's shape in bf16, d=256 in bf16 and d=256 in fp32; tokens/s, achieved FLOP/s, MFU, activation
memory), forward, generate (cached decoding, batch 1 and 8, prompt 128, 128 new tokens, each MLA
cache layout), cache (bytes per token of a real DecodeCache at d=1024), data (tokenize-and-pack
MB/s, loader overhead as a fraction of a train step), compile (torch.compile on vs off), peer
(Hugging Face transformers' Llama of the dense baseline's exact config vs cart dense vs CART),
load (training beside one busy process per core, which the suite starts itself; `cart.bench.load`).

Timing (`cart.bench.timing`): contenders alternate within each round, after warm-up, over several
rounds; medians are over the samples taken while other processes left the CPU alone, when there are
enough of them, and every entry says whether it was `contended`. Ratios are medians of same-round
ratios. Never assert on these numbers in tests; `run(..., quick=True)` exists to check the plumbing.

Targets (`targets(result)`): each issue-12 target, and each issue-7 target that still stands, with
its measured value and PASS/MISS; a target that this run cannot measure (GPU ones on a CPU, a suite
not run) reads n/a.
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


# Issue 12's batch-1 decode target is relative to the code as it was: the committed issue-7 result
# (results/bench/cpu.json, commit 2642cd9, `cart bench` on 2 quiet threads of this AMD EPYC VM, fp32,
# prompt 128 + 128 new tokens, latent cache). A ratio against it is meaningful only on that machine
# type; elsewhere the target reads "n/a".
DECODE_B1_BASELINE = {"device": "AMD EPYC x2 threads", "source": "results/bench/cpu.json @ 2642cd9",
                      "tokens_per_s": {"cart": 230.7, "dense_effective": 219.2}}


def _train_entry(res: dict, pred) -> dict | None:
    tr = _ok(res, "train")
    for lbl, e in (tr or {}).get("sizes", {}).items():
        if pred(lbl):
            return e
    return None


def targets(res: dict) -> list[dict]:
    """Issue 12's targets, then issue 7's that still stand, each {"id", "issue", "target", "measured",
    "passed", "note"}; passed is None when this run did not measure it (or cannot, e.g. GPU targets on
    a CPU)."""
    out = []

    def add(id_, issue, target, measured, passed, note=""):
        out.append({"id": id_, "issue": issue, "target": target, "measured": measured, "passed": passed, "note": note})

    # ---- issue 12: bf16 training near the peak
    from cart.bench.suites import CPU_BF16_SIZES, MAIN_SIZES

    on_cpu = res["meta"].get("device_type") == "cpu"
    for name, size in (("main", MAIN_SIZES), ("d256", CPU_BF16_SIZES)):
        e = _train_entry(res, lambda lbl, size=size: lbl == size.label())
        if e and not on_cpu:
            add(f"bf16_mfu_cart_{name}", 12, "CART bf16 training >= 50 % of the measured bf16 matmul peak (a CPU target)",
                e["contenders"]["cart"]["mfu"], None, "not judged on a GPU (these shapes are far too small for one)")
        elif e:
            c = e["contenders"]["cart"]
            add(f"bf16_mfu_cart_{name}", 12, "CART bf16 training >= 50 % of the measured bf16 matmul peak", c["mfu"],
                None if c["mfu"] is None else c["mfu"] >= 0.50,
                f"{e['label']}: {c['median_s'] * 1e3:.0f} ms/step, {c['tokens_per_s']:.0f} tok/s; dense "
                f"{e['contenders']['dense_effective']['mfu'] * 100 if e['contenders']['dense_effective']['mfu'] else 0:.1f} %")
        else:
            add(f"bf16_mfu_cart_{name}", 12, "CART bf16 training >= 50 % of the measured bf16 matmul peak", None, None,
                "train suite not run at this shape")
    # ---- issue 12: a real peer
    pe = _ok(res, "peer")
    if pe:
        for lbl, e in pe["sizes"].items():
            r = e["ratios"]
            tag = "main" if lbl == MAIN_SIZES.label() else "d256" if lbl == CPU_BF16_SIZES.label() else lbl
            add(f"peer_dense_{tag}", 12, "cart dense tokens/s >= 1.2 x HF Llama (same config)", r["dense_vs_peer_tokens_per_s"],
                r["dense_vs_peer_tokens_per_s"] >= 1.2, f"{lbl}; transformers {pe['transformers']}")
            add(f"peer_cart_{tag}", 12, "CART FLOP/s >= 1.1 x HF Llama's (equal FLOPs)", r["cart_vs_peer_flops_per_s"],
                r["cart_vs_peer_flops_per_s"] >= 1.1, f"{lbl}; tokens/s ratio {r['cart_vs_peer_tokens_per_s']:.3f}")
    else:
        p = res["suites"].get("peer", {})
        add("peer", 12, "cart vs HF Llama", None, None, p.get("reason") or p.get("error") or "peer suite not run")
    # ---- issue 12: decoding
    gen = _ok(res, "generate")
    if gen:
        e8 = gen["batches"].get("8")
        if e8:
            v = e8["ratios"]["cart_latent_k_cache_vs_dense_effective_tokens_per_s"]
            add("decode_b8_latent_k_vs_dense", 12, "CART batch-8 decode, latent_k cache, >= 0.95 x dense (effective parity)",
                v, v >= 0.95, f"auto picks latent_k at batch 8: {e8['contenders']['cart']['tokens_per_s']:.0f} tok/s")
        e1 = gen["batches"].get("1")
        for k in ("cart", "dense_effective"):
            base = DECODE_B1_BASELINE["tokens_per_s"][k]
            if e1 is None:
                continue
            now = e1["contenders"][k]["tokens_per_s"]
            same = res["meta"]["device"] == DECODE_B1_BASELINE["device"] and res["meta"]["device_type"] == "cpu"
            add(f"decode_b1_{k}_vs_baseline", 12, "batch-1 decode tokens/s >= 2 x the issue-12 baseline", now / base if same else None,
                (now / base >= 2.0) if same else None,
                f"{now:.0f} vs {base} tok/s ({DECODE_B1_BASELINE['source']})" if same else f"baseline is for {DECODE_B1_BASELINE['device']}")
        if e1:
            v = e1["ratios"]["cart_vs_dense_effective_tokens_per_s"]
            add("decode_b1_vs_dense", 7, "CART batch-1 decode >= 0.9 x dense (effective parity), latent cache", v, v >= 0.9,
                f"{e1['contenders']['cart']['mla_cache']} cache")
    else:
        g = res["suites"].get("generate", {})
        add("decode", 12, "decode targets", None, None, g.get("reason") or g.get("error") or "generate suite not run")
    # ---- issue 12: under load
    ld = _ok(res, "load")
    if ld:
        pol = ld["policies"]["cart_default"]
        other = ld["policies"].get("openmp_default")
        add("load_ratio", 12, "training throughput with one busy process per core >= 1/4 of quiet", pol["throughput_ratio"],
            pol["throughput_ratio"] >= 0.25,
            f"{pol['omp_wait_policy']}: {pol['quiet_step_s'] * 1e3:.0f} -> {pol['loaded_step_s'] * 1e3:.0f} ms/step, "
            f"{pol['n_busy']} busy"
            + (f"; OpenMP's spinning default: {other['throughput_ratio']:.3f} of its own quiet, "
               f"{other['throughput_ratio_vs_best_quiet']:.3f} of the best quiet" if other else ""))
    else:
        lo = res["suites"].get("load", {})
        add("load_ratio", 12, "training throughput under load >= 1/4 of quiet", None, None,
            lo.get("reason") or lo.get("error") or "load suite not run")
    # ---- issue 12: GPU (compiled when the compile suite ran at that shape, else eager)
    gpu = _train_entry(res, lambda lbl: "bf16" in lbl and "d=1024" in lbl)
    co = _ok(res, "compile")
    comp = co["contenders"].get("cart") if co and "d=1024" in co["label"] else None
    if comp and comp.get("status") == "ok":
        c, how = comp["compiled"], "torch.compile"
    elif gpu:
        c, how = gpu["contenders"]["cart"], "eager"
    else:
        c = None
    if c:
        add("gpu_mfu_cart_d1024", 12, "GPU d=1024 P6 R6 bf16 MFU >= 0.45 (paper: 49 %)", c["mfu"],
            None if c["mfu"] is None else c["mfu"] >= 0.45, f"{how}: {c['tokens_per_s']:.0f} tok/s (paper: 32,393 on an RTX 3090)")
    else:
        add("gpu_mfu_cart_d1024", 12, "GPU d=1024 P6 R6 bf16 MFU >= 0.45 (paper: 49 %)", None, None,
            "no GPU in this run (scripts/gpu_check.sh runs it on one)")

    # ---- issue 7 (still standing)
    fp32 = _train_entry(res, lambda lbl: "fp32" in lbl)
    if fp32:
        r, c = fp32["ratios"], fp32["contenders"]
        worst = min(r["cart_vs_dense_stored_flops_per_s"], r["cart_vs_dense_effective_flops_per_s"])
        add("train_flops_vs_dense", 7, "CART achieved FLOP/s >= 0.90 x dense (both parities)", worst, worst >= 0.90,
            f"stored {r['cart_vs_dense_stored_flops_per_s']:.3f}, effective {r['cart_vs_dense_effective_flops_per_s']:.3f}")
        add("train_faster_than_unfrozen", 7, "t(unfrozen K/V) / t(CART) >= FLOP ratio", r["unfrozen_over_cart_time"],
            r["unfrozen_over_cart_time"] >= r["unfrozen_over_cart_flops"], f"FLOP ratio {r['unfrozen_over_cart_flops']:.4f}"
            + ("; per-round ratios {:.3f}-{:.3f}".format(*r["unfrozen_over_cart_time_range"])
               if "unfrozen_over_cart_time_range" in r else ""))
        mfu = c["cart"]["mfu"]
        add("train_mfu_fp32_cart", 7, "CART fp32 training MFU (vs measured fp32 matmul peak) >= 0.50", mfu,
            None if mfu is None else mfu >= 0.50, fp32["label"])
    ca = _ok(res, "cache")
    if ca:
        v = ca["ratios"]["dense_effective_over_cart"]
        add("cache_bytes_vs_dense_effective", 7, "latent cache bytes/token >= 5x smaller than dense (effective parity) at d=1024",
            v, v >= 5.0 if "d=1024" in ca["label"] else None, ca["label"])
    da = _ok(res, "data")
    if da:
        v = da["loader_overhead_fraction"]
        add("loader_overhead", 7, "loader overhead < 2 % of a train step", v, v < 0.02, f"recipe {da['recipe']}")
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
                parts.append(f"\n[{name}] {lbl}  (MFU vs {_si(e['peak_flops'], 'FLOP/s')} measured {lbl.split()[-1]} matmul peak)")
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
            parts.append("CART/dense(effective) decode: " + "; ".join(
                f"b{bs} auto ({e['contenders']['cart']['mla_cache']}) {e['ratios']['cart_vs_dense_effective_tokens_per_s']:.3f}"
                + "".join(f", {lay} {e['ratios'][f'cart_{lay}_cache_vs_dense_effective_tokens_per_s']:.3f}"
                          for lay in ("latent", "latent_k", "kv") if f"cart_{lay}_cache_vs_dense_effective_tokens_per_s" in e["ratios"])
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
        elif name == "peer":
            for lbl, e in s["sizes"].items():
                rows = [[k, c["model"], f"{c['stored_params'] / 1e6:.2f}M", f"{c['median_s'] * 1e3:.1f}", f"{c['tokens_per_s']:.0f}",
                         _si(c["achieved_flops"], "FLOP/s"), _pct(c["mfu"]), f"{c['n_clean']}/{c['n_samples']}"]
                        for k, c in e["contenders"].items()]
                parts.append(f"\n[peer] {lbl}  (transformers {s['transformers']}; MFU vs {_si(e['peak_flops'], 'FLOP/s')})")
                parts.append(_table(["contender", "model", "params", "ms/step", "tok/s", "achieved", "MFU", "clean"], rows))
                r = e["ratios"]
                parts.append(f"cart dense / HF Llama tokens/s {r['dense_vs_peer_tokens_per_s']:.3f}; CART / HF Llama FLOP/s "
                             f"{r['cart_vs_peer_flops_per_s']:.3f} (tokens/s {r['cart_vs_peer_tokens_per_s']:.3f})")
        elif name == "load":
            rows = [[k, p["omp_wait_policy"][:48], f"{p['threads']}", f"{p['quiet_step_s'] * 1e3:.0f}", f"{p['loaded_step_s'] * 1e3:.0f}",
                     f"{p['throughput_ratio']:.3f}", f"{p['throughput_ratio_vs_best_quiet']:.3f}",
                     "-" if p["background_cores_in_quiet_phases"] is None
                     else f"{p['background_cores_in_quiet_phases']:.2f}", f"{p['n_quiet']}/{p['n_loaded']}" + (" (timed out)" if p["timed_out"] else "")]
                    for k, p in s["policies"].items()]
            n_busy = next(iter(s["policies"].values()))["n_busy"]
            parts.append(f"\n[load] {s['size']}: CART training quiet vs beside {n_busy} busy-looping processes")
            parts.append(_table(["policy", "OpenMP wait", "threads", "quiet ms", "loaded ms", "ratio", "vs best quiet",
                                 "bg cores", "steps"], rows))
        elif name == "compile":
            rows = []
            for k, c in s["contenders"].items():
                if c["status"] != "ok":
                    rows.append([k, "failed", "-", "-", c["error"][:60], "-", "-"])
                else:
                    rows.append([k, f"{c['compile_s']:.1f}", f"{c['eager']['median_s'] * 1e3:.1f}",
                                 f"{c['compiled']['median_s'] * 1e3:.1f}", f"{c['speedup']:.3f}x",
                                 f"{c['compiled'].get('tokens_per_s', 0):.0f}", _pct(c["compiled"].get("mfu"))])
            parts.append(f"\n[compile] {s['label']} (train step, backend {s['backend']})")
            parts.append(_table(["model", "compile s", "eager ms", "compiled ms", "speedup", "compiled tok/s", "compiled MFU"], rows))
    tg = res.get("targets") or []
    if tg:
        rows = [[t["id"], str(t.get("issue", "")), t["target"], "-" if t["measured"] is None else f"{t['measured']:.3f}",
                 {True: "PASS", False: "MISS", None: "n/a"}[t["passed"]], t["note"]] for t in tg]
        parts.append("\n[targets]")
        parts.append(_table(["target", "issue", "requirement", "measured", "", "note"], rows))
    return "\n".join(parts)


__all__ = ["run", "targets", "format_table", "SUITES", "SCHEMA"]
