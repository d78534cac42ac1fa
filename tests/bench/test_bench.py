"""`cart bench` plumbing: every suite runs at tiny sizes (--quick) and returns well-formed,
JSON-serialisable results with the ratio fields the targets need. Never asserts on timings."""
import json
import math

import pytest

from cart.bench import SCHEMA, format_table, run, targets
from cart.bench.suites import SUITES, contender_configs, expected_cache_bytes_per_token, QUICK_SIZES

CONTENDERS = {"cart", "dense_stored", "dense_effective", "cart_unfrozen_kv"}


def _run(suite, **kw):
    res = run([suite], quick=True, repeats=1, tune_malloc=False, **kw)
    json.loads(json.dumps(res))  # JSON round trip: no tensors, no NaN-only surprises
    assert res["schema"] == SCHEMA and res["meta"]["quick"] is True
    s = res["suites"][suite]
    assert s["status"] == "ok", s
    assert isinstance(format_table(res), str)
    return res, s


def _pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_contenders_use_parity_depths():
    cfgs = contender_configs(QUICK_SIZES)
    assert set(cfgs) == CONTENDERS
    assert cfgs["cart"].freeze_kv and not cfgs["cart_unfrozen_kv"].freeze_kv
    assert cfgs["dense_stored"].n_layers < cfgs["dense_effective"].n_layers


def test_peak():
    _, s = _run("peak")
    for k in ("fp32", "bf16"):
        assert _pos(s[k]["flops"]) and s[k]["n"] > 0 and s[k]["samples"]


@pytest.mark.parametrize("suite", ["train", "forward"])
def test_train_and_forward(suite):
    res, s = _run(suite)
    assert "peak" in res["suites"]  # MFU needs the measured peak: pulled in automatically
    assert [k.split()[-1] for k in s["sizes"]] == ["bf16", "fp32"]  # the bf16 targets' shape, and issue 7's fp32 one
    for entry in s["sizes"].values():
        assert set(entry["contenders"]) == CONTENDERS
        for c in entry["contenders"].values():
            for f in ("median_s", "min_s", "tokens_per_s", "achieved_flops", "mfu", "flops_per_step", "stored_params", "effective_params"):
                assert _pos(c[f]), (f, c[f])
            assert c["n_samples"] >= 1 and isinstance(c["contended"], bool)
            if suite == "train":
                assert _pos(c["activation_bytes"])
        r = entry["ratios"]
        for f in ("cart_vs_dense_stored_flops_per_s", "cart_vs_dense_effective_flops_per_s", "cart_vs_dense_stored_time",
                  "unfrozen_over_cart_time", "unfrozen_over_cart_flops"):
            assert _pos(r[f]), f
        assert r["unfrozen_over_cart_flops"] > 1  # recomputing K/V every loop costs FLOPs
        lo, hi = r["unfrozen_over_cart_time_range"]
        assert lo <= r["unfrozen_over_cart_time"] <= hi
    if suite == "train":
        tg = {t["id"]: t for t in targets(res)}
        assert {"train_flops_vs_dense", "train_faster_than_unfrozen", "train_mfu_fp32_cart"} <= set(tg)
        # quick sizes are not the main job's: the bf16 targets say so instead of judging
        assert tg["bf16_mfu_cart_main"]["passed"] is None and tg["gpu_mfu_cart_d1024"]["passed"] is None


def test_generate():
    res, s = _run("generate")
    for bs in ("1", "8"):
        e = s["batches"][bs]
        assert set(e["contenders"]) == CONTENDERS | {"cart_latent_cache", "cart_latent_k_cache", "cart_kv_cache"}
        assert e["contenders"]["cart"]["mla_cache"] == ("latent" if bs == "1" else "latent_k")  # auto
        for c in e["contenders"].values():
            assert _pos(c["tokens_per_s"]) and _pos(c["cache_bytes_per_token"])
        assert _pos(e["ratios"]["cart_vs_dense_effective_tokens_per_s"])
        assert _pos(e["ratios"]["cart_kv_cache_vs_dense_effective_tokens_per_s"])
        # the same model, caching rotated K (and V) beside or instead of the latent, holds more bytes
        b = {k: e["contenders"][k]["cache_bytes_per_token"] for k in ("cart_latent_cache", "cart_latent_k_cache", "cart_kv_cache")}
        assert b["cart_latent_cache"] < b["cart_latent_k_cache"] < b["cart_kv_cache"]
    tg = {t["id"]: t for t in targets(res)}
    assert {"decode_b8_latent_k_vs_dense", "decode_b1_cart_vs_baseline", "decode_b1_dense_effective_vs_baseline"} <= set(tg)
    assert isinstance(tg["decode_b8_latent_k_vs_dense"]["passed"], bool)


def test_peer_is_the_dense_baseline_in_transformers():
    pytest.importorskip("transformers")
    from cart.bench.suites import QUICK_BF16_SIZES, llama_peer

    dense = contender_configs(QUICK_BF16_SIZES)["dense_effective"]
    peer = llama_peer(dense)
    from cart.accounting import account
    assert sum(p.numel() for p in peer.parameters()) == account(dense, 32).stored
    res, s = _run("peer")
    (entry,) = s["sizes"].values()
    assert set(entry["contenders"]) == {"hf_llama", "dense_effective", "cart"}
    assert entry["contenders"]["hf_llama"]["train_flops_per_token"] == entry["contenders"]["dense_effective"]["train_flops_per_token"]
    for f in ("dense_vs_peer_tokens_per_s", "cart_vs_peer_flops_per_s", "cart_vs_peer_tokens_per_s"):
        assert _pos(entry["ratios"][f])
    tg = {t["id"]: t for t in targets(res)}
    assert isinstance(tg[f"peer_dense_{entry['label']}"]["passed"], bool)


def _busy_children() -> list[int]:
    import os
    from pathlib import Path

    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid() \
                    and b"while True" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


@pytest.mark.slow  # two training children, each beside busy processes: ~30 s on 2 cores
def test_load_suite_runs_each_wait_policy_and_leaves_no_busy_process():
    res, s = _run("load")
    pol = s["policies"]
    assert "set by cart" in pol["cart_default"]["omp_wait_policy"]  # the child imports cart before torch
    assert pol["openmp_default"]["omp_wait_policy"] == "GOMP_SPINCOUNT=300000 (environment)"
    for p in pol.values():
        assert _pos(p["quiet_step_s"]) and _pos(p["loaded_step_s"]) and _pos(p["throughput_ratio"])
        assert p["n_quiet"] >= 1 and p["n_loaded"] >= 1 and p["n_busy"] >= 1
    (t,) = [t for t in targets(res) if t["id"] == "load_ratio"]
    assert isinstance(t["passed"], bool)
    assert _busy_children() == []


def test_cache_matches_spec():
    res, s = _run("cache")
    for k, c in s["contenders"].items():
        assert c["cache_bytes_per_token"] == c["expected_bytes_per_token"], k
    # CART keeps d/4 per prelude/coda layer plus the anchor K/V once; dense keeps 2d per layer
    assert s["ratios"]["dense_effective_over_cart"] > s["ratios"]["dense_stored_over_cart"] > 1
    assert s["ratios"]["cart_unfrozen_kv_over_cart"] > 1
    assert s["contenders"]["cart_kv_cache"]["mla_cache"] == "kv" and s["ratios"]["cart_kv_cache_over_cart"] > 1
    (t,) = [t for t in targets(res) if t["id"] == "cache_bytes_vs_dense_effective"]
    assert t["passed"] is None  # quick runs at d=128: the d=1024 target is not judged


def test_expected_cache_bytes_at_paper_width():
    cfgs = contender_configs(QUICK_SIZES.__class__(d_model=1024, seq_len=64, vocab_size=32000, batch_size=1))
    cart = expected_cache_bytes_per_token(cfgs["cart"])
    assert cart == (7 * 256 + 2 * 1024) * 4
    assert expected_cache_bytes_per_token(cfgs["dense_effective"]) / cart >= 5
    # rotated K/V per MLA layer instead of the latent: 7 x 2d + anchor 2d
    assert expected_cache_bytes_per_token(cfgs["cart"], mla_layout="kv") == (7 * 2048 + 2 * 1024) * 4
    assert expected_cache_bytes_per_token(cfgs["cart"], mla_layout="latent_k") == (7 * 1280 + 2 * 1024) * 4


def test_data(tmp_path):
    _, s = _run("data", data_dir=str(tmp_path))
    assert s["recipe"] == "smoke"
    assert _pos(s["tokenize"]["mb_per_s"]) and _pos(s["loader"]["batch_s"]) and _pos(s["train_step_s"])
    assert _pos(s["loader_overhead_fraction"])


def test_compile_eager_backend():
    # the inductor backend compiles C++ for minutes on a small CPU; the eager backend checks the plumbing
    _, s = _run("compile", compile_backend="eager")
    assert s["backend"] == "eager"
    for c in s["contenders"].values():
        assert c["status"] == "ok", c
        assert _pos(c["speedup"]) and _pos(c["compile_s"])


def test_unknown_suite_is_refused():
    with pytest.raises(ValueError, match="unknown bench suite"):
        run(["nope"], quick=True, tune_malloc=False)


def test_failing_suite_is_reported_not_raised(monkeypatch):
    def boom(bench):
        raise RuntimeError("kaput")

    monkeypatch.setitem(SUITES, "cache", boom)
    res = run(["cache"], quick=True, tune_malloc=False)
    assert res["suites"]["cache"] == {"status": "failed", "error": "RuntimeError: kaput"}
    assert "failed" in format_table(res)


def test_cli_writes_json_and_table(tmp_path, capsys):
    from cart.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--suite", "cache", "--json", str(out), "--quiet", "--no-tune-malloc"]) == 0
    res = json.loads(out.read_text())
    assert res["suites"]["cache"]["status"] == "ok" and "targets" in res
    assert "[cache]" in capsys.readouterr().out


def test_cli_rejects_bad_suite(capsys):
    from cart.cli import main

    assert main(["bench", "--suite", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'nope'" in err


def test_cpu_clock_one_thread():
    import torch

    before = torch.get_num_threads()
    try:
        res = run(["peak", "train", "generate"], quick=True, repeats=1, tune_malloc=False, threads=1, clock="cpu")
    finally:
        torch.set_num_threads(before)
    assert res["meta"]["clock"] == "cpu" and res["meta"]["threads"] == 1
    assert res["suites"]["peak"]["clock"] == "cpu" and res["suites"]["peak"]["fp32"]["trainer_measurement"] is None
    for bs in ("1", "8"):
        for c in res["suites"]["generate"]["batches"][bs]["contenders"].values():
            assert _pos(c["tokens_per_s"])
    json.loads(json.dumps(res))


def test_bad_clock_is_refused():
    with pytest.raises(ValueError, match="clock"):
        run(["cache"], quick=True, tune_malloc=False, clock="sundial")


def test_micro_benchmarks_run(capsys):
    from tools import micro

    assert micro.main(["--repeats", "1", "--inner", "1", "--only", "rope", "blend_gate", "decode_mla"]) == 0
    out = capsys.readouterr().out
    assert "rope" in out and "decode_mla" in out and "new/old" in out


def test_ab_against_a_git_revision(capsys):
    import shutil
    import subprocess

    from tools import ab

    if shutil.which("git") is None or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    assert ab.main(["--rev", "HEAD", "--d", "64", "--seq", "16", "--vocab", "128", "--batch", "1", "--repeats", "1",
                    "--budget", "1"]) == 0
    assert "after/before" in capsys.readouterr().out


def test_profile_categorises_a_real_step():
    from tools.step_profile import category, profile_step

    assert category("aten::mm") == "matmul (projections, head)"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu_backward").startswith("attention")
    assert category("aten::exp_").startswith("cross-entropy") and category("aten::copy_").startswith("copies")
    assert category("something::new") == "framework / other"
    r = profile_step("main", "dense_stored", threads=1, steps=1, top=5)
    assert abs(sum(r["categories"].values()) - 1) < 1e-6 and r["categories"]["matmul (projections, head)"] > 0.2
    assert len(r["top"]) == 5 and r["top"][0][0] == "aten::mm"
