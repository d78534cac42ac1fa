"""The suites of `cart bench`. Each takes a `Bench` context and returns a JSON-ready dict with a
"status" ("ok", "skipped" with a "reason", or "failed" with an "error").

Contenders (train, forward, generate, cache): CART (P6, R6 by default), the dense baselines at
stored and at effective parameter parity (depths from `cart.accounting.parity`), and the same CART
with K/V recomputed every loop (unfrozen). FLOPs come from `cart.accounting.account` (the paper's
convention: attention counted over the full context, LM head included); MFU divides achieved
FLOP/s by the matmul peak measured in the same process (CPU) or the vendor figure (GPU, beside
the measured one).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from cart.accounting import account, dense_for, parity
from cart.bench.timing import ForeignLoad, measure
from cart.config import HEAD_DIM, CARTConfig, DenseConfig, ModelConfig
from cart.model import build_model

# ---------------------------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class Sizes:
    d_model: int
    seq_len: int
    vocab_size: int
    batch_size: int
    n_prelude: int = 6
    n_loops: int = 6
    dtype: str = "fp32"  # training/forward precision: fp32, or bf16 autocast

    def label(self) -> str:
        return f"d={self.d_model} T={self.seq_len} V={self.vocab_size} B={self.batch_size} P{self.n_prelude} R{self.n_loops} {self.dtype}"


CPU_SIZES = Sizes(d_model=256, seq_len=256, vocab_size=8192, batch_size=8)  # issue 7's fp32 shape
CPU_BF16_SIZES = Sizes(d_model=256, seq_len=256, vocab_size=8192, batch_size=8, dtype="bf16")
# the README's main job (cart/presets/train/main.toml), in the precision it trains in on CPUs with native bf16
MAIN_SIZES = Sizes(d_model=192, seq_len=256, vocab_size=8192, batch_size=16, n_prelude=2, n_loops=4, dtype="bf16")
GPU_SIZES = Sizes(d_model=1024, seq_len=1024, vocab_size=32000, batch_size=8, dtype="bf16")
QUICK_SIZES = Sizes(d_model=64, seq_len=32, vocab_size=512, batch_size=2)
QUICK_BF16_SIZES = Sizes(d_model=64, seq_len=32, vocab_size=512, batch_size=2, n_prelude=2, n_loops=2, dtype="bf16")
CONTENDERS = ("cart", "dense_stored", "dense_effective", "cart_unfrozen_kv")


@dataclass
class Bench:
    """Settings of one `cart bench` run and what earlier suites found (later suites reuse it)."""

    quick: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    repeats: int | None = None
    data_recipe: str | None = None
    data_dir: str | None = None
    compile_backend: str = "inductor"
    clock: str = "wall"  # "cpu": process CPU time (robust on a shared machine, with one thread)
    log: Callable[[str], None] = lambda s: None
    results: dict = field(default_factory=dict)
    _peak: dict | None = None

    @property
    def n_repeats(self) -> int:
        return self.repeats or (2 if self.quick else 5)

    @property
    def max_rounds(self) -> int:
        """Rounds allowed while waiting for uncontended samples (none extra with --quick)."""
        return self.n_repeats if self.quick else self.n_repeats * 3

    @property
    def budget_s(self) -> float:
        """Time after which a measurement stops waiting for uncontended samples."""
        return 5.0 if self.quick else 240.0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def sizes(self) -> list[Sizes]:
        """Training sizes to run: the main job's shape and the d=256 bench shape in bf16, and d=256
        in fp32 (issue 7's numbers); on a GPU the paper's d=1024 too."""
        if self.quick:
            return [QUICK_BF16_SIZES, QUICK_SIZES]
        cpu = [MAIN_SIZES, CPU_BF16_SIZES, CPU_SIZES]
        return cpu + [GPU_SIZES] if self.device.type == "cuda" else cpu

    def bf16_sizes(self) -> list[Sizes]:
        """The shapes the bf16 targets (and the peer comparison) are judged at."""
        return [s for s in self.sizes() if s.dtype == "bf16"]

    def peak(self) -> dict:
        if self._peak is None:
            self._peak = self.results.get("peak") if self.results.get("peak", {}).get("status") == "ok" else suite_peak(self)
            self.results.setdefault("peak", self._peak)
        return self._peak


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _autocast(device: torch.device, dtype: str):
    return nullcontext() if dtype == "fp32" else torch.autocast(device.type, dtype=_dtype(dtype))


def contender_configs(s: Sizes, max_seq_len: int | None = None) -> dict[str, ModelConfig]:
    cart = CARTConfig(vocab_size=s.vocab_size, d_model=s.d_model, max_seq_len=max_seq_len or s.seq_len,
                      n_prelude=s.n_prelude, n_loops=s.n_loops)
    return {
        "cart": cart,
        "dense_stored": dense_for(cart, parity(cart, "stored").n_layers),
        "dense_effective": dense_for(cart, parity(cart, "effective").n_layers),
        "cart_unfrozen_kv": cart.replace(freeze_kv=False),
    }


def describe(cfg: ModelConfig, seq_len: int) -> dict:
    a = account(cfg, seq_len)
    if isinstance(cfg, CARTConfig):
        kind = f"CART P{cfg.n_prelude} R{cfg.n_loops}" + ("" if cfg.freeze_kv else " unfrozen K/V")
    else:
        kind = f"Dense {cfg.n_layers}L ({cfg.attention})"
    return {"model": kind, "stored_params": a.stored, "effective_params": a.effective,
            "fwd_flops_per_token": a.fwd_flops_per_token, "train_flops_per_token": a.train_flops_per_token}


def _optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as the trainer builds it (fused kernel on CPU/CUDA)."""
    kw = dict(lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    try:
        return torch.optim.AdamW(model.parameters(), fused=device.type in ("cpu", "cuda"), **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(model.parameters(), **kw)


def _batch(s: Sizes, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, s.vocab_size, (s.batch_size, s.seq_len + 1), generator=g).to(device)
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def make_train_step(model, s: Sizes, device: torch.device, loss_fn=None) -> Callable[[], None]:
    """One optimizer step: forward + loss (model.loss: the fused tied-head cross-entropy), backward,
    global grad-norm clip (foreach, no host sync) and fused AdamW."""
    opt = _optimizer(model, device)
    inp, tgt = _batch(s, device)
    loss_fn = loss_fn or model.loss
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with _autocast(device, s.dtype):
            loss = loss_fn(inp, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def activation_bytes(model, s: Sizes, device: torch.device) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for the backward of one forward
    pass + loss: the activation memory of a training step (a device-independent peak-memory measure)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    inp, tgt = _batch(s, device)

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(device, s.dtype):
        loss = model.loss(inp, tgt)
    del loss
    return sum(seen.values())


def _mfu_peak(bench: Bench, dtype: str) -> tuple[float | None, str]:
    pk = bench.peak()
    if pk.get("status") != "ok":
        return None, "no peak"
    key = "bf16" if dtype == "bf16" else "fp32"
    entry = pk.get(key) or {}
    if bench.device.type == "cuda" and entry.get("table_flops"):
        return entry["table_flops"], "vendor table"
    return entry.get("flops"), "measured matmul peak (this run)"


# ---------------------------------------------------------------------------------------------
# peak


def suite_peak(bench: Bench) -> dict:
    """Matmul FLOP/s of square n x n x n products, fp32 and bf16: the MFU denominator on CPUs.

    Timed with the same harness and clock as the other suites (median over uncontended samples), so
    a step's MFU compares like with like; the trainer's own measurement
    (`cart.train.mfu.measure_matmul_flops`, best of a few runs timed by CPU time per thread) is reported beside it."""
    from cart.train.mfu import device_name, measure_matmul_flops, table_peak

    dev = bench.device
    sizes = [256] if bench.quick else ([1024, 2048] if dev.type == "cpu" else [4096, 8192])
    target_s = 0.02 if bench.quick else 0.3
    out: dict = {"status": "ok", "device": device_name(dev), "threads": torch.get_num_threads(), "sizes": sizes,
                 "clock": bench.clock}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rows = []
        for n in sizes:
            a = torch.randn(n, n, device=dev).to(dt)
            b = torch.randn(n, n, device=dev).to(dt)
            a @ b
            bench.sync()
            t0 = time.perf_counter()
            a @ b
            bench.sync()
            inner = max(1, int(target_s / max(time.perf_counter() - t0, 1e-6)))

            def mm(a=a, b=b, inner=inner):
                for _ in range(inner):
                    a @ b

            t = measure({"mm": mm}, repeats=bench.n_repeats, warmup=1, sync=bench.sync, max_rounds=bench.max_rounds,
                        time_budget_s=bench.budget_s / 3, clock=bench.clock).timings["mm"]
            f = 2 * n ** 3 * inner
            rows.append({"n": n, "flops": f / t.median_s, "best_flops": f / t.min_s, "contended": t.contended,
                         "n_samples": len(t.samples_s), "n_clean": t.summary()["n_clean"]})
        best = max(rows, key=lambda r: r["flops"])
        trainer = measure_matmul_flops(dev, dt, n=best["n"], seconds=target_s / 2, repeats=2) if bench.clock == "wall" else None
        out[name] = {"flops": best["flops"], "n": best["n"], "contended": best["contended"], "samples": rows,
                     "trainer_measurement": trainer, "table_flops": table_peak(dev, dt)}
    return out


# ---------------------------------------------------------------------------------------------
# train / forward


def _run_contenders(bench: Bench, s: Sizes, make: Callable[[torch.nn.Module, Sizes], Callable[[], None]],
                    flops_key: str) -> dict:
    cfgs = contender_configs(s)
    torch.manual_seed(0)
    models = {k: build_model(c).to(bench.device) for k, c in cfgs.items()}
    fns = {k: make(m, s) for k, m in models.items()}
    m = measure(fns, repeats=bench.n_repeats, warmup=1 if bench.quick else 2, sync=bench.sync,
                max_rounds=bench.max_rounds, time_budget_s=bench.budget_s, clock=bench.clock)
    peak, peak_src = _mfu_peak(bench, s.dtype)
    tokens = s.batch_size * s.seq_len
    rows = {}
    for k, cfg in cfgs.items():
        t = m.timings[k].summary()
        d = describe(cfg, s.seq_len)
        flops = d[flops_key] * tokens
        rows[k] = {**d, **t, "tokens_per_s": tokens / t["median_s"], "flops_per_step": flops,
                   "achieved_flops": flops / t["median_s"], "mfu": (flops / t["median_s"] / peak) if peak else None}
    return {"cfgs": cfgs, "models": models, "measurement": m, "rows": rows, "peak": peak, "peak_source": peak_src}


def _ratios(res: dict, flops_key: str) -> dict:
    """Same-round ratios. flops_per_s ratio = (FLOPs_a / FLOPs_b) / paired median of (t_a / t_b)."""
    m, rows = res["measurement"], res["rows"]
    out = {}
    for base in ("dense_stored", "dense_effective"):
        tr = m.paired_ratio("cart", base)
        out[f"cart_vs_{base}_time"] = tr
        out[f"cart_vs_{base}_flops_per_s"] = rows["cart"]["flops_per_step"] / rows[base]["flops_per_step"] / tr
    tr = m.paired_ratio("cart_unfrozen_kv", "cart")
    out["unfrozen_over_cart_time"] = tr
    per_round = m.paired_ratios("cart_unfrozen_kv", "cart")  # the spread says whether 1-2 % is resolved
    out["unfrozen_over_cart_time_range"] = [min(per_round), max(per_round)]
    out["unfrozen_over_cart_flops"] = rows["cart_unfrozen_kv"]["flops_per_step"] / rows["cart"]["flops_per_step"]
    return out


def suite_train(bench: Bench) -> dict:
    out: dict = {"status": "ok", "step": "forward + model.loss (fused CE) + backward + clip + fused AdamW",
                 "flops_convention": "cart.accounting.account: 3 x forward, attention over the full context, head included",
                 "sizes": {}}
    for s in bench.sizes():
        bench.log(f"train: {s.label()}")
        res = _run_contenders(bench, s, lambda mdl, sz: make_train_step(mdl, sz, bench.device), "train_flops_per_token")
        rows = res["rows"]
        for k, mdl in res["models"].items():
            rows[k]["activation_bytes"] = activation_bytes(mdl, s, bench.device)
            if bench.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(bench.device)
                make_train_step(mdl, s, bench.device)()
                rows[k]["peak_memory_bytes"] = torch.cuda.max_memory_allocated(bench.device)
        entry = {"label": s.label(), "peak_flops": res["peak"], "peak_source": res["peak_source"],
                 "contenders": rows, "ratios": _ratios(res, "train_flops_per_token"), "rounds": res["measurement"].rounds}
        if bench.device.type == "cuda" and s.dtype == "bf16":
            entry["paper_tokens_per_s_rtx3090"] = 32393  # d1024 R6, SPEC §4
        out["sizes"][s.label()] = entry
        del res
    return out


def suite_forward(bench: Bench) -> dict:
    out: dict = {"status": "ok", "pass": "no_grad forward to logits", "sizes": {}}

    def make(mdl, s):
        inp, _ = _batch(s, bench.device)
        mdl.eval()

        def fwd():
            with torch.no_grad(), _autocast(bench.device, s.dtype):
                mdl(inp)
        return fwd

    for s in bench.sizes():
        bench.log(f"forward: {s.label()}")
        res = _run_contenders(bench, s, make, "fwd_flops_per_token")
        out["sizes"][s.label()] = {"label": s.label(), "peak_flops": res["peak"], "contenders": res["rows"],
                                   "ratios": _ratios(res, "fwd_flops_per_token"), "rounds": res["measurement"].rounds}
        del res
    return out


# ---------------------------------------------------------------------------------------------
# generation and cache


def suite_generate(bench: Bench) -> dict:
    try:
        from cart.eval.generate import decode_speed
        from cart.eval.options import Run
    except ImportError as e:
        return {"status": "skipped", "reason": f"cart.eval.generate.decode_speed not available ({e})"}
    s = QUICK_SIZES if bench.quick else CPU_SIZES
    prompt, new = (8, 8) if bench.quick else (128, 128)
    cfgs = {k: v for k, v in contender_configs(s, max_seq_len=max(s.seq_len, prompt + new)).items()}
    torch.manual_seed(0)
    built = {k: build_model(c).to(bench.device).eval() for k, c in cfgs.items()}
    # contender -> (model, MLA cache layout): CART with generation's default ("auto": latent at batch 1,
    # latent_k batched) and with each layout named; the dense models have no MLA layers
    runs = {k: (k, "auto" if k == "cart" else "latent") for k in cfgs} | {
        "cart_latent_cache": ("cart", "latent"), "cart_latent_k_cache": ("cart", "latent_k"), "cart_kv_cache": ("cart", "kv")}
    models = {name: built[k] for name, (k, _) in runs.items()}
    dtype = "bf16" if bench.device.type == "cuda" else "fp32"
    out: dict = {"status": "ok", "label": f"d={s.d_model} V={s.vocab_size} P{s.n_prelude} R{s.n_loops} {dtype}",
                 "prompt_len": prompt, "new_tokens": new, "clock": bench.clock,
                 "measured_by": "cart.eval.generate.decode_speed" + (" (tokens_per_s re-timed on the CPU clock)" if bench.clock == "cpu" else ""),
                 "batches": {}}
    for bs in (1, 8):
        samples: dict[str, list[tuple[float, float | None, dict]]] = {k: [] for k in models}
        reps = bench.n_repeats if not bench.quick else 1
        names = list(models)
        for r in range(reps):
            for k in names[r % len(names):] + names[: r % len(names)]:
                layout = runs[k][1]
                with ForeignLoad() as fl:
                    res = decode_speed(models[k], bs, prompt, new, Run(device=bench.device, dtype=dtype), mla_layout=layout)
                if bench.clock == "cpu":  # the same decoding, timed with this process's CPU time
                    res = {**res, "wall_tokens_per_s": res["tokens_per_s"],
                           "tokens_per_s": _decode_cpu_tokens_per_s(models[k], bs, prompt, new, bench.device, res["mla_layout"])}
                samples[k].append((res["tokens_per_s"], fl.cores, res))
        rows = {}
        for k, ss in samples.items():
            clean = [x for x in ss if x[1] is not None and x[1] < 0.25]
            use = clean if len(clean) >= min(2, len(ss)) else ss
            rows[k] = {**describe(cfgs[runs[k][0]], prompt + new), "mla_cache": ss[-1][2]["mla_layout"],
                       "tokens_per_s": statistics.median(x[0] for x in use),
                       "samples_tokens_per_s": [x[0] for x in ss], "n_clean": len(clean), "contended": use is ss and len(clean) < len(ss),
                       "prefill_tokens_per_s": statistics.median(x[2]["prefill_tokens_per_s"] for x in use),
                       "cache_bytes_per_token": ss[-1][2]["cache_bytes_per_token"]}
        ratios = {f"cart_vs_{b}_tokens_per_s": rows["cart"]["tokens_per_s"] / rows[b]["tokens_per_s"]
                  for b in ("dense_stored", "dense_effective", "cart_unfrozen_kv")}
        for lay in ("latent", "latent_k", "kv"):
            ratios[f"cart_{lay}_cache_vs_dense_effective_tokens_per_s"] = (
                rows[f"cart_{lay}_cache"]["tokens_per_s"] / rows["dense_effective"]["tokens_per_s"])
        out["batches"][str(bs)] = {"contenders": rows, "ratios": ratios}
    return out


@torch.inference_mode()  # as decode_speed
def _decode_cpu_tokens_per_s(model, bs: int, prompt_len: int, new: int, device: torch.device,
                             mla_layout: str = "latent") -> float:
    """decode_speed's measurement (greedy, cached, after a prefill of random tokens) on the CPU clock."""
    from cart.model.cache import DecodeCache

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, model.config.vocab_size, (bs, prompt_len), generator=g).to(device)
    cache = DecodeCache(bs, prompt_len + new, mla_layout)
    nxt = model(prompt, cache=cache)[:, -1].argmax(-1)
    t0 = time.process_time()
    for _ in range(new):
        nxt = model(nxt[:, None], cache=cache)[:, -1].argmax(-1)
    return bs * new / max(time.process_time() - t0, 1e-9)


def expected_cache_bytes_per_token(cfg: ModelConfig, elem: int = 4, mla_layout: str = "latent") -> int:
    """What SPEC §1 says each model caches per token: per MLA layer its latent (d/4; plus the rotated
    K, d + d/4, with mla_layout="latent_k"; rotated K and V, 2d, with "kv"), for CART's prelude and coda (and each loop of a self-attention core)
    plus the anchor K/V once (R times when unfrozen); full K and V per layer for dense MHA."""
    d = cfg.d_model
    mla = {"latent": d // 4, "latent_k": d + d // 4, "kv": 2 * d}[mla_layout]
    if isinstance(cfg, CARTConfig):
        n = (cfg.n_prelude + 1) * mla
        if cfg.uses_anchor:
            n += 2 * d * (1 if cfg.freeze_kv else cfg.n_loops)
        else:
            n += cfg.n_loops * mla
    else:
        n = cfg.n_layers * (2 * d if cfg.attention == "mha" else mla)
    return n * elem


def suite_cache(bench: Bench) -> dict:
    """Bytes per token held by a real DecodeCache after a short prefill, at d=1024 (the paper's
    width, V=32,000; a short prompt keeps it cheap), fp32."""
    from cart.model.cache import DecodeCache

    d, V = (128, 512) if bench.quick else (1024, 32000)
    prompt = 8 if bench.quick else 16
    base = CARTConfig(vocab_size=V, d_model=d, max_seq_len=64)
    cfgs = {"cart": base, "dense_stored": dense_for(base, parity(base, "stored").n_layers),
            "dense_effective": dense_for(base, parity(base, "effective").n_layers),
            "cart_unfrozen_kv": base.replace(freeze_kv=False)}
    rows = {}
    idx = torch.randint(0, V, (1, prompt), generator=torch.Generator().manual_seed(0)).to(bench.device)
    for k, cfg in cfgs.items():
        model = build_model(cfg).to(bench.device).eval()
        extra = (("cart_latent_k_cache", "latent_k"), ("cart_kv_cache", "kv")) if k == "cart" else ()
        for name, layout in ((k, "latent"),) + extra:
            cache = DecodeCache(1, prompt, layout)
            with torch.no_grad():
                model(idx, cache=cache)
            rows[name] = {**describe(cfg, prompt), "mla_cache": layout, "cache_bytes_per_token": cache.bytes_per_token(),
                          "expected_bytes_per_token": expected_cache_bytes_per_token(cfg, mla_layout=layout)}
            del cache
        del model
    c = rows["cart"]["cache_bytes_per_token"]
    return {"status": "ok", "label": f"d={d} V={V} P6 R6 fp32, prefill {prompt} tokens, batch 1",
            "contenders": rows,
            "ratios": {f"{b}_over_cart": rows[b]["cache_bytes_per_token"] / c
                       for b in ("dense_stored", "dense_effective", "cart_unfrozen_kv", "cart_latent_k_cache", "cart_kv_cache")}}


# ---------------------------------------------------------------------------------------------
# data


def suite_data(bench: Bench) -> dict:
    try:
        from cart.data import Manifest, TrainLoader, bench_tokenize, prepare
    except ImportError as e:
        return {"status": "skipped", "reason": f"cart.data (bench_tokenize, TrainLoader) not available ({e})"}
    recipe = bench.data_recipe or ("smoke" if bench.quick else "cpu")
    tmp = tempfile.TemporaryDirectory() if (bench.quick and bench.data_dir is None) else None
    root = tmp.name if tmp else bench.data_dir
    try:
        tok = bench_tokenize(recipe, root, max_mb=None if bench.quick else 16)
        manifest = Manifest.load(prepare(recipe, root, log=lambda *a, **k: None))
        s = QUICK_SIZES if bench.quick else CPU_SIZES
        loader = TrainLoader(manifest, batch_size=s.batch_size, seq_len=s.seq_len)
        inner = 20

        def fetch():
            for _ in range(inner):
                next(loader)

        t = measure({"loader": fetch}, repeats=bench.n_repeats, warmup=1, max_rounds=bench.max_rounds,
                    time_budget_s=bench.budget_s, clock=bench.clock).timings["loader"]
        batch_s = t.median_s / inner
        step_s, source = _cart_step_s(bench, s)
        out = {"status": "ok", "recipe": recipe, "tokenize": tok,
               "loader": {"batch_s": batch_s, "batch_shape": [s.batch_size, s.seq_len + 1], "n_samples": len(t.samples_s),
                          "contended": t.contended},
               "train_step_s": step_s, "train_step_source": source,
               "loader_overhead_fraction": batch_s / step_s}
    finally:
        if tmp:
            tmp.cleanup()
    return out


def _cart_step_s(bench: Bench, s: Sizes) -> tuple[float, str]:
    tr = bench.results.get("train")
    if tr and tr.get("status") == "ok" and s.label() in tr["sizes"]:
        return tr["sizes"][s.label()]["contenders"]["cart"]["median_s"], "train suite (this run)"
    torch.manual_seed(0)
    model = build_model(contender_configs(s)["cart"]).to(bench.device)
    t = measure({"step": make_train_step(model, s, bench.device)}, repeats=bench.n_repeats, warmup=1,
                sync=bench.sync, max_rounds=bench.max_rounds, time_budget_s=bench.budget_s, clock=bench.clock).timings["step"]
    return t.median_s, "measured here (CART train step)"


# ---------------------------------------------------------------------------------------------
# torch.compile


def suite_compile(bench: Bench) -> dict:
    """Train step with the model's loss compiled by torch.compile (default mode) vs eager, for CART
    and the dense baseline at stored parity. The first compiled call (compilation) is timed apart."""
    s = bench.sizes()[-1] if bench.device.type == "cuda" else bench.sizes()[0]  # CPU: the main job's shape, bf16
    cfgs = contender_configs(s)
    out: dict = {"status": "ok", "label": s.label(), "backend": bench.compile_backend, "contenders": {}}
    for k in ("cart", "dense_stored"):
        torch.manual_seed(0)
        eager = build_model(cfgs[k]).to(bench.device)
        torch.manual_seed(0)
        comp = build_model(cfgs[k]).to(bench.device)
        try:
            torch._dynamo.reset()
            loss_fn = torch.compile(comp.loss, backend=bench.compile_backend)
            step_c = make_train_step(comp, s, bench.device, loss_fn=loss_fn)
            t0 = time.perf_counter()
            step_c()
            bench.sync()
            compile_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - any backend failure is a result here, not a crash
            out["contenders"][k] = {"status": "failed", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            continue
        m = measure({"eager": make_train_step(eager, s, bench.device), "compiled": step_c}, repeats=bench.n_repeats,
                    warmup=1, sync=bench.sync, max_rounds=bench.max_rounds, time_budget_s=bench.budget_s, clock=bench.clock)
        te, tc = m.timings["eager"].summary(), m.timings["compiled"].summary()
        tokens = s.batch_size * s.seq_len
        flops = describe(cfgs[k], s.seq_len)["train_flops_per_token"] * tokens
        peak, _ = _mfu_peak(bench, s.dtype)
        for t in (te, tc):
            t["tokens_per_s"] = tokens / t["median_s"]
            t["mfu"] = flops / t["median_s"] / peak if peak else None
        out["contenders"][k] = {"status": "ok", "compile_s": compile_s, "eager": te, "compiled": tc,
                                "speedup": m.paired_ratio("eager", "compiled")}
        del eager, comp, step_c
    if all(v.get("status") == "failed" for v in out["contenders"].values()):
        out["status"] = "failed"
        out["error"] = "; ".join(f"{k}: {v['error']}" for k, v in out["contenders"].items())
    return out


# ---------------------------------------------------------------------------------------------
# a peer: Hugging Face transformers' Llama


def llama_peer(cfg: DenseConfig):
    """transformers.LlamaForCausalLM with exactly the architecture of cart's dense baseline `cfg`:
    width, depth, heads of 64, SwiGLU width, RMSNorm eps, RoPE base, tied embedding, no biases, and
    the same init std, so the same parameters and FLOPs per token. Raises ImportError without
    transformers (`pip install 'cart[bench]'`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if cfg.attention != "mha" or cfg.share_layers:
        raise ValueError("the Llama peer mirrors the dense MHA baseline only")
    lc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                     num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.d_model // HEAD_DIM,
                     num_key_value_heads=cfg.d_model // HEAD_DIM, head_dim=HEAD_DIM, hidden_act="silu",
                     max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True,
                     attention_bias=False, mlp_bias=False, initializer_range=cfg.init_std,
                     rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)})
    return LlamaForCausalLM(lc)


def suite_peer(bench: Bench) -> dict:
    """A real peer, in the same process, precision and harness: Hugging Face transformers'
    LlamaForCausalLM (its default attention, SDPA, and its own loss: `model(input_ids, labels=...)`)
    built as cart's dense baseline at effective parity (same width, depth, parameters and FLOPs per
    token), against cart's dense model of that config and CART itself. Same train step otherwise:
    bf16 autocast, backward, global-norm clip, fused AdamW."""
    try:
        import transformers
    except ImportError as e:
        return {"status": "skipped", "reason": f"transformers is not installed ({e}): pip install 'cart[bench]'"}
    out: dict = {"status": "ok", "transformers": transformers.__version__,
                 "peer": "transformers.LlamaForCausalLM (attn_implementation sdpa), dense at effective parity", "sizes": {}}
    for s in bench.bf16_sizes():
        bench.log(f"peer: {s.label()}")
        cfgs = contender_configs(s)
        torch.manual_seed(0)
        cart = build_model(cfgs["cart"]).to(bench.device)
        dense = build_model(cfgs["dense_effective"]).to(bench.device)
        torch.manual_seed(0)
        peer = llama_peer(cfgs["dense_effective"]).to(bench.device).train()
        n_peer = sum(p.numel() for p in peer.parameters())
        d_dense = describe(cfgs["dense_effective"], s.seq_len)
        if n_peer != d_dense["stored_params"]:
            return {"status": "failed", "error": f"Llama peer has {n_peer:,} parameters, cart dense {d_dense['stored_params']:,}"}

        def peer_loss(inp, tgt, m=peer):
            return m(input_ids=inp, labels=inp).loss  # HF shifts the labels itself

        fns = {"hf_llama": make_train_step(peer, s, bench.device, loss_fn=peer_loss),
               "dense_effective": make_train_step(dense, s, bench.device),
               "cart": make_train_step(cart, s, bench.device)}
        m = measure(fns, repeats=bench.n_repeats, warmup=1 if bench.quick else 2, sync=bench.sync,
                    max_rounds=bench.max_rounds, time_budget_s=bench.budget_s, clock=bench.clock)
        peak, peak_src = _mfu_peak(bench, s.dtype)
        tokens = s.batch_size * s.seq_len
        rows = {}
        for k, cfg in (("hf_llama", cfgs["dense_effective"]), ("dense_effective", cfgs["dense_effective"]), ("cart", cfgs["cart"])):
            t = m.timings[k].summary()
            d = describe(cfg, s.seq_len)
            if k == "hf_llama":
                d["model"] = f"HF Llama {cfg.n_layers}L (transformers {transformers.__version__})"
            flops = d["train_flops_per_token"] * tokens
            rows[k] = {**d, **t, "tokens_per_s": tokens / t["median_s"], "flops_per_step": flops,
                       "achieved_flops": flops / t["median_s"], "mfu": flops / t["median_s"] / peak if peak else None}
        t_dense = m.paired_ratio("hf_llama", "dense_effective")  # t_peer / t_dense
        t_cart = m.paired_ratio("hf_llama", "cart")
        ratios = {"dense_vs_peer_tokens_per_s": t_dense,
                  "cart_vs_peer_tokens_per_s": t_cart,
                  "cart_vs_peer_flops_per_s": t_cart * rows["cart"]["flops_per_step"] / rows["hf_llama"]["flops_per_step"]}
        out["sizes"][s.label()] = {"label": s.label(), "peak_flops": peak, "peak_source": peak_src, "contenders": rows,
                                   "ratios": ratios, "rounds": m.rounds}
        del cart, dense, peer, fns
    return out


# ---------------------------------------------------------------------------------------------
# under load


def suite_load(bench: Bench) -> dict:
    """CART training (the main job's shape) in a child process, quiet vs beside one busy-looping
    process per core, with cart's default OpenMP wait policy and with OpenMP's own (spinning)
    default; see `cart.bench.load`."""
    from cart.bench import load

    if bench.device.type != "cpu":
        return {"status": "skipped", "reason": "the load suite measures CPU training"}
    if not hasattr(os, "sched_getaffinity"):
        return {"status": "skipped", "reason": "needs Linux (sched_getaffinity)"}
    size = "quick" if bench.quick else "main"
    kw = dict(steps_per_phase=2, rounds=1, phase_timeout_s=30.0, settle_s=0.1) if bench.quick else {}
    out: dict = {"status": "ok", "size": (QUICK_BF16_SIZES if bench.quick else MAIN_SIZES).label(), "policies": {}}
    for name, env in load.POLICIES.items():
        bench.log(f"load: {name}")
        out["policies"][name] = {"env": env, **load.under_load(size, env, **kw)}
    # each policy's own quiet phases already suffer from whatever else runs on the machine; against the
    # best quiet step of the suite, a policy that collapses without the added load shows as such
    best = min(p["quiet_step_s"] for p in out["policies"].values())
    for p in out["policies"].values():
        p["throughput_ratio_vs_best_quiet"] = best / p["loaded_step_s"]
    return out


SUITES: dict[str, Callable[[Bench], dict]] = {
    "peak": suite_peak,
    "train": suite_train,
    "forward": suite_forward,
    "generate": suite_generate,
    "cache": suite_cache,
    "data": suite_data,
    "compile": suite_compile,
    "peer": suite_peer,
    "load": suite_load,
}

__all__ = ["SUITES", "Bench", "Sizes", "CPU_SIZES", "GPU_SIZES", "QUICK_SIZES", "contender_configs",
           "make_train_step", "expected_cache_bytes_per_token"]
