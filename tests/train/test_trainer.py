"""The training loop in process: determinism, metrics, checkpoints, corrupt-checkpoint fallback,
non-finite policies, bad input, activation checkpointing and truncated backprop."""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cart.train.trainer as trainer_mod
from cart.checkpoint import load_model, resolve_checkpoint
from cart.cli import main
from cart.config import CARTConfig, DenseConfig
from cart.model import build_model
from cart.train import NonFiniteError, evaluate_perplexity, train
from cart.train.distributed import apply_activation_checkpointing
from cart.train.loops import TruncatedBackprop
from tests.support import one_thread


def events(run_dir, kind=None):
    out = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in out if kind is None or e["event"] == kind]


def final_weights(run_dir):
    return load_file(str(resolve_checkpoint(run_dir) / "model.safetensors"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------- determinism, metrics
def test_same_seed_gives_identical_losses_and_weights(make_cfg):
    a = train(make_cfg("a", log_every=1))
    b = train(make_cfg("b", log_every=1))
    la = [e["loss"] for e in events(make_cfg("a").out_dir, "train")]
    lb = [e["loss"] for e in events(make_cfg("b").out_dir, "train")]
    assert len(la) == 12 and la == lb
    assert a["final"] == b["final"]
    assert_same_weights(final_weights(make_cfg("a").out_dir), final_weights(make_cfg("b").out_dir))
    c = train(make_cfg("c", log_every=1, seed=7))
    assert [e["loss"] for e in events(make_cfg("c").out_dir, "train")] != la
    assert c["step"] == 12


def test_ngram_floors_at_every_eval_or_off(make_cfg):
    """every_eval: each eval event carries the floors for the tokens trained so far (they change with
    the step); off: none anywhere."""
    cfg = make_cfg("every", eval_every=6, eval_tokens=64, final_eval_tokens=64, ngram_floors="every_eval")
    s = train(cfg)
    ev = events(cfg.out_dir, "eval")
    assert [(e["step"], e["final"]) for e in ev] == [(6, False), (12, True)]
    first, last = (next(iter(e["sets"].values())) for e in (ev[0], ev[1]))
    assert first["bigram_kn_ppl"] != last["bigram_kn_ppl"] and first["unigram_ppl"] > 1
    assert all("bigram_kn_ppl" in m for m in s["final"].values())
    assert json.loads((Path(cfg.out_dir) / "ngram_floors.json").read_text())["step"] == 12
    off = make_cfg("off", ngram_floors="off")
    s = train(off)
    assert not any("bigram_kn_ppl" in m for m in s["final"].values())
    assert not (Path(off.out_dir) / "ngram_floors.json").exists()


def test_log_and_eval_events_carry_the_stability_metrics(make_cfg):
    cfg = make_cfg(model={"n_loops": 3}, eval_every=6, tensorboard=True)
    s = train(cfg)
    tr = events(cfg.out_dir, "train")
    assert [e["step"] for e in tr] == [4, 8, 12]
    for e in tr:
        for k in ("loss", "lr", "grad_norm", "grad_norm_clipped", "tokens_per_s", "mfu", "rho_gate", "gate_min",
                  "gate_mean", "gate_max", "n_loops"):
            assert isinstance(e[k], (int, float)) and math.isfinite(e[k]), k
        assert e["grad_norm_clipped"] <= min(e["grad_norm"], cfg.grad_clip) + 1e-6
        assert len(e["hyper_weights"]) == 3 and len(e["contraction"]) == 2 and len(e["delta_norm"]) == 3
        assert e["gate_min"] <= e["gate_mean"] <= e["gate_max"] == e["rho_gate"] < 1
    ev = events(cfg.out_dir, "eval")
    assert [e["step"] for e in ev] == [6, 12] and ev[-1]["final"]
    for e in ev:
        assert set(e["sets"]) == {"stories", "notes", "code"} and e["sets"]["code"]["out_of_domain"]
        for m in e["sets"].values():
            assert m["ppl"] == pytest.approx(math.exp(m["loss"])) and m["bpb"] > 0 and m["tokens"] == 256
        assert e["loop_jacobian_norm"] > 0
    assert set(s["final"]) == {"stories", "notes", "code"}
    for k in ("rho_gate", "tokens_per_s", "mfu", "stored_params", "effective_params"):
        assert s[k] > 0
    assert json.loads((Path(cfg.out_dir) / "summary.json").read_text())["step"] == 12
    saved = json.loads((Path(cfg.out_dir) / "train_config.json").read_text())
    assert saved["config"] == cfg.to_dict() and "code_version" in saved
    assert list((Path(cfg.out_dir) / "tb").glob("events.out.tfevents.*"))


def test_mfu_peak_is_measured_unless_configured(make_cfg):
    """peak_flops = 0 (the presets' default): the trainer measures this machine's matmul peak for its MFU."""
    measured = train(make_cfg("measured", steps=1, log_every=1, ckpt_every=1, final_eval_tokens=64, peak_flops=0.0))
    assert measured["peak_flops_source"].startswith("measured (") and measured["peak_flops"] > 0
    assert events(make_cfg("measured").out_dir, "start")[0]["peak_flops"] == measured["peak_flops"]
    configured = train(make_cfg("configured", steps=1, log_every=1, ckpt_every=1, final_eval_tokens=64))
    assert (configured["peak_flops"], configured["peak_flops_source"]) == (1e11, "config")
    assert measured["mfu"] > 0 and configured["mfu"] > 0


def test_training_checkpoints_load_as_models(make_cfg):
    cfg = make_cfg(keep_checkpoints=2)
    train(cfg)
    ckpts = sorted(p.name for p in (Path(cfg.out_dir) / "checkpoints").iterdir())
    assert ckpts == ["step_00000008", "step_00000012"]  # retention: the newest two
    model, meta = load_model(cfg.out_dir)
    assert meta["step"] == 12 and isinstance(model.config, CARTConfig)
    files = {p.name for p in (Path(cfg.out_dir) / "checkpoints" / "step_00000012").iterdir()}
    assert {"model.safetensors", "model.json", "optimizer.pt", "trainer.pt", "train_config.json", "checksums.json"} <= files


def test_variable_r_training_samples_loops(make_cfg):
    cfg = make_cfg(log_every=1, loop_sampling={"kind": "uniform", "min_loops": 1, "max_loops": 4, "backprop_loops": 2})
    train(cfg)
    tr = events(cfg.out_dir, "train")
    rs = [e["n_loops"] for e in tr]
    assert set(rs) <= {1, 2, 3, 4} and len(set(rs)) > 1
    assert all(e["grad_loops"] == min(2, e["n_loops"]) for e in tr)
    assert all(len(e["contraction"]) == e["n_loops"] - 1 for e in tr if e["n_loops"] > 1)


def test_dense_baseline_trains(make_cfg):
    cfg = make_cfg(model={"kind": "dense", "n_layers": 2}, steps=4)
    s = train(cfg)
    assert s["status"] == "completed" and "rho_gate" not in s and s["final"]["stories"]["ppl"] > 1


def test_cli_trains_and_rerun_is_a_no_op(make_cfg, capsys):
    cfg = make_cfg(steps=4)
    argv = ["train", "--preset", "smoke", "--data", cfg.data, "--out-dir", cfg.out_dir, "--steps", "4", "--batch-size", "4",
            "--seq-len", "32", "--eval-every", "0", "--final-eval-tokens", "128", "--peak-flops", "1e11", "--tensorboard", "false"]
    assert main(argv) == 0
    n = len(events(cfg.out_dir))
    assert main(argv) == 0  # finished: nothing is trained again
    assert len(events(cfg.out_dir, "train")) == 1 and len(events(cfg.out_dir)) == n + 1  # one more "resume" event


# ---------------------------------------------------------------------- resume and corrupt checkpoints
def test_resume_continues_exactly_and_never_logs_a_step_twice(smoke_run, trained_copy):
    cfg = trained_copy("run")
    shutil.rmtree(Path(cfg.out_dir) / "checkpoints" / "step_00000012")  # as if killed after step 8's checkpoint
    (Path(cfg.out_dir) / "summary.json").unlink()
    train(cfg)
    assert events(cfg.out_dir, "resume")[-1]["checkpoint"].endswith("step_00000008")
    assert [e["step"] for e in events(cfg.out_dir, "train")] == [4, 8, 12]
    assert_same_weights(final_weights(smoke_run), final_weights(cfg.out_dir))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(smoke_run, trained_copy):
    cfg = trained_copy("run")
    root = Path(cfg.out_dir) / "checkpoints"
    (Path(cfg.out_dir) / "summary.json").unlink()
    shutil.rmtree(root / "step_00000012")
    opt = root / "step_00000008" / "optimizer.pt"
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    opt.write_bytes(bytes(data))
    s = train(cfg)
    resume = events(cfg.out_dir, "resume")[-1]
    assert resume["checkpoint"].endswith("step_00000004")
    assert "step_00000008" in resume["message"] and "checksum" in resume["message"]
    assert (root / "corrupt_step_00000008").is_dir()
    assert s["step"] == 12
    assert_same_weights(final_weights(smoke_run), final_weights(cfg.out_dir))


# ---------------------------------------------------------------------- non-finite policies
def _poison(monkeypatch, param: str, calls: set[int]):
    """Make the gradient of `param` NaN on the given backward passes (1 = the memory check)."""
    real = trainer_mod.build_model
    count = {"n": 0}

    def build(cfg):
        model = real(cfg)
        p = dict(model.named_parameters())[param]

        def hook(g):
            count["n"] += 1
            return g * float("nan") if count["n"] in calls else g

        p.register_hook(hook)
        return model

    monkeypatch.setattr(trainer_mod, "build_model", build)


def test_nonfinite_stop_names_step_and_parameters_and_keeps_the_checkpoint(make_cfg, monkeypatch):
    cfg = make_cfg()
    _poison(monkeypatch, "norm.weight", {1 + 6})  # step 6
    with pytest.raises(NonFiniteError, match=r"step 6 .*norm\.weight"):
        train(cfg)
    root = Path(cfg.out_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004"]
    from cart.checkpoint import verify
    assert verify(root / "step_00000004") is None
    ev = events(cfg.out_dir, "nonfinite")[-1]
    assert ev["first_step"] == 6 and ev["parameters"] == ["norm.weight"]
    assert not (Path(cfg.out_dir) / "summary.json").exists()


def test_nonfinite_skip_drops_isolated_steps(make_cfg, monkeypatch):
    cfg = make_cfg(nonfinite="skip", log_every=1)
    _poison(monkeypatch, "gate.a", {1 + 3, 1 + 9})
    s = train(cfg)
    assert s["status"] == "completed" and s["step"] == 12
    assert events(cfg.out_dir, "train")[-1]["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in final_weights(cfg.out_dir).values())


def test_nonfinite_skip_stops_after_max_skips_in_a_row(make_cfg, monkeypatch):
    cfg = make_cfg(nonfinite="skip", max_skips=2)
    _poison(monkeypatch, "gate.a", set(range(1 + 5, 100)))
    with pytest.raises(NonFiniteError, match="consecutive non-finite steps"):
        train(cfg)


# ---------------------------------------------------------------------- bad input: errors before anything is written
def test_vocab_mismatch_is_refused_before_writing(make_cfg):
    cfg = make_cfg(model={"vocab_size": 1000})
    with pytest.raises(ValueError, match="vocab_size"):
        train(cfg)
    assert not Path(cfg.out_dir).exists()


def test_missing_data_and_too_long_sequences(make_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        train(make_cfg(data=str(tmp_path / "nothing")))
    cfg = make_cfg(seq_len=300_000, model={"max_seq_len": 300_000})
    with pytest.raises(ValueError, match="seq_len"):
        train(cfg)
    assert not Path(cfg.out_dir).exists()


def test_out_of_memory_batch_is_a_clear_error(make_cfg, monkeypatch):
    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80 GiB")
    monkeypatch.setattr(trainer_mod.Trainer, "_forward_backward", oom)
    cfg = make_cfg()
    with pytest.raises(ValueError, match="out of memory.*batch_size=4.*grad_accum"):
        train(cfg)
    assert not Path(cfg.out_dir).exists()


def _snapshot(run_dir):
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file()}


def test_incompatible_resume_is_refused_and_touches_nothing(trained_copy, make_cfg):
    cfg = trained_copy("run")
    before = _snapshot(cfg.out_dir)
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        train(cfg.replace(lr=1e-2, steps=16))
    with pytest.raises(ValueError, match="n_loops"):
        train(make_cfg(steps=16, model={"n_loops": 3}))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(cfg.replace(steps=16), resume=False)
    assert _snapshot(cfg.out_dir) == before


# ---------------------------------------------------------------------- activation checkpointing, truncated backprop
def _grads(model, idx, **kw):
    model.zero_grad(set_to_none=True)
    loss = model.loss(idx[:, :-1], idx[:, 1:], **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("cfg", [
    CARTConfig(vocab_size=97, d_model=64, max_seq_len=24, n_prelude=2, n_loops=3),
    CARTConfig(vocab_size=97, d_model=64, max_seq_len=24, n_prelude=1, n_loops=2, freeze_kv=False, fidelity="paper"),
    DenseConfig(vocab_size=97, d_model=64, max_seq_len=24, n_layers=3, share_layers=True),
], ids=["cart", "cart-unfrozen-paper", "dense-shared"])
def test_activation_checkpointing_gives_the_same_gradients(cfg):
    torch.manual_seed(0)
    plain = build_model(cfg)
    ckpt = build_model(cfg)
    ckpt.load_state_dict(plain.state_dict())
    assert apply_activation_checkpointing(ckpt) > 0
    idx = torch.randint(0, 97, (2, 25))
    l1, g1 = _grads(plain, idx)
    l2, g2 = _grads(ckpt, idx)
    assert torch.equal(l1, l2)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], rtol=0, atol=1e-7, msg=n)
    assert set(dict(ckpt.named_parameters())) == set(dict(plain.named_parameters()))  # names unchanged


def test_activation_checkpointing_run_matches_plain_run(make_cfg):
    train(make_cfg("plain", steps=4, log_every=1))
    train(make_cfg("ac", steps=4, log_every=1, activation_checkpointing=True))
    a = [e["loss"] for e in events(make_cfg("plain").out_dir, "train")]
    b = [e["loss"] for e in events(make_cfg("ac").out_dir, "train")]
    assert a == pytest.approx(b, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("fidelity", ["paper", "stable"])
def test_truncated_backprop_equals_detaching_the_early_loops(fidelity):
    """Backprop through the last k of R loops == a reference that detaches every state produced by
    loops 0 .. R-k-1 wherever a later loop reads it (blend inputs). The prelude's output e, which fills
    the ring buffer before the first loop, is not a loop's state: a late loop that still reads it passes
    its gradient to the prelude. (Paper fidelity's blend reads older states with weight ~0.2; stable's
    starts at the pure residual, so only paper fidelity makes this test sensitive to that rule.)"""
    cfg = CARTConfig(vocab_size=97, d_model=64, max_seq_len=24, n_prelude=1, n_loops=4, fidelity=fidelity)
    torch.manual_seed(0)
    a, b = build_model(cfg), build_model(cfg)
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 97, (2, 17))
    R, k = 4, 2
    cut = R - k
    tb = TruncatedBackprop(a)
    a.zero_grad()
    with tb.window(R, k):
        la = a.loss(idx[:, :-1], idx[:, 1:])
    la.backward()
    assert torch.is_grad_enabled()
    calls = {"n": 0}

    def detach_old(module, args):
        r = calls["n"]
        calls["n"] += 1
        if r < cut:
            return None
        # at loop r the buffer is [h_{r-1}, h_{r-2}, h_{r-3}] with e where r-1-i < 0
        states = [s.detach() if r - cut <= i < r else s for i, s in enumerate(args[0])]
        return (states, *args[1:])

    b.hyper.register_forward_pre_hook(detach_old)
    lb = b.loss(idx[:, :-1], idx[:, 1:])
    b.zero_grad()
    lb.backward()
    torch.testing.assert_close(la, lb)
    # parameters used only in the early loops get no gradient through them; everything matches the reference
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        ga = pa.grad if pa.grad is not None else torch.zeros_like(pa)
        gb = pb.grad if pb.grad is not None else torch.zeros_like(pb)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7, msg=n)
    full = build_model(cfg)
    full.load_state_dict(a.state_dict())
    full.loss(idx[:, :-1], idx[:, 1:]).backward()
    assert not torch.allclose(full.cores[0].mlp.w_down.weight.grad, a.cores[0].mlp.w_down.weight.grad)


# ---------------------------------------------------------------------- validation perplexity
def test_evaluate_perplexity_matches_a_direct_computation(smoke_data):
    from cart.data import Manifest, TokenFile
    import numpy as np
    import torch.nn.functional as F
    man = Manifest.load(smoke_data)
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=man.vocab_size, d_model=64, max_seq_len=64, n_prelude=1, n_loops=2))
    res = evaluate_perplexity(model, man, seq_len=64, batch_size=5)
    for name, vs in man.val_sets.items():
        toks = torch.from_numpy(np.asarray(TokenFile(vs.path, man.vocab_size).tokens, dtype=np.int64))
        nats, n = 0.0, 0
        with torch.no_grad():
            for b in range(0, len(toks) - 1, 64):
                e = min(b + 64, len(toks) - 1)
                logits = model(toks[b:e][None])
                nats += F.cross_entropy(logits[0], toks[b + 1:e + 1], reduction="sum").item()
                n += e - b
        assert res[name]["tokens"] == n == len(toks) - 1
        assert res[name]["loss"] == pytest.approx(nats / n, rel=1e-5)
        assert res[name]["bpb"] == pytest.approx(nats / math.log(2) / vs.bytes, rel=1e-5)
    part = evaluate_perplexity(model, man, seq_len=64, max_tokens=200)
    assert all(v["tokens"] == 200 for v in part.values())


@pytest.mark.slow
def test_compiled_training_matches_eager(make_cfg):
    """torch.compile (inductor, needs a C++ compiler on CPU): same losses as eager within float tolerance."""
    train(make_cfg("eager", steps=3, log_every=1))
    train(make_cfg("compiled", steps=3, log_every=1, compile=True))
    a = [e["loss"] for e in events(make_cfg("eager").out_dir, "train")]
    b = [e["loss"] for e in events(make_cfg("compiled").out_dir, "train")]
    assert b == pytest.approx(a, rel=1e-4)


def test_sigint_saves_a_checkpoint_and_returns_interrupted(make_cfg, monkeypatch):
    import os
    import signal
    real_save = trainer_mod.Trainer._save

    def save_then_interrupt(self, step):
        path = real_save(self, step)
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the step-4 checkpoint
        return path

    monkeypatch.setattr(trainer_mod.Trainer, "_save", save_then_interrupt)
    cfg = make_cfg(ckpt_every=4, log_every=1)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN when pytest runs as a background job
    s = train(cfg)
    assert s["status"] == "interrupted" and s["signal"] == "SIGINT" and s["step"] == 5
    assert (Path(cfg.out_dir) / "checkpoints" / "step_00000005").is_dir()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.undo()
    assert train(cfg)["step"] == 12


@pytest.mark.parametrize("variant", [dict(hyper_connections=False), dict(hyper_connections=False, loop_embedding=False, lti_gate=False),
                                     dict(freeze_kv=False), dict(share_core=False)], ids=["no-hyper", "bare-loop", "unfrozen", "unshared"])
def test_truncated_backprop_on_every_variant(variant):
    """Same forward; k = R is plain backprop; k < R drops the early loops' gradient and leaves grad mode on."""
    cfg = CARTConfig(vocab_size=97, d_model=64, max_seq_len=24, n_prelude=1, n_loops=3, **variant)
    torch.manual_seed(0)
    model = build_model(cfg)
    idx = torch.randint(0, 97, (2, 17))
    tb = TruncatedBackprop(model)
    _, full = _grads(model, idx)
    out = {}
    for k in (3, 1):
        model.zero_grad(set_to_none=True)
        with tb.window(3, k):
            loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        out[k] = (loss.detach(), {n: p.grad for n, p in model.named_parameters()})
        assert torch.is_grad_enabled()
    plain_loss = model.loss(idx[:, :-1], idx[:, 1:]).detach()
    assert torch.equal(out[3][0], plain_loss) and torch.equal(out[1][0], plain_loss)
    for n, g in full.items():
        torch.testing.assert_close(out[3][1][n], g, msg=n)
    assert out[1][1]["embed.weight"] is not None and torch.isfinite(out[1][1]["embed.weight"]).all()
    core = "cores.0.mlp.w_down.weight"
    if variant.get("share_core", True):
        assert not torch.allclose(out[1][1][core], full[core])
    else:  # the first two of three distinct cores ran without autograd
        assert out[1][1][core] is None and out[1][1]["cores.2.mlp.w_down.weight"] is not None


# ---------------------------------------------------------------------- skipped steps are NaN; a skipped eval is rerun
def test_a_skipped_step_logs_nan_in_the_jsonl_tensorboard_and_the_store(make_cfg, monkeypatch, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cart.experiments.orchestrator import read_metrics
    from cart.experiments.store import Store
    from tests.experiments.conftest import make_study

    cfg = make_cfg(nonfinite="skip", log_every=1, tensorboard=True)
    _poison(monkeypatch, "gate.a", {1 + 3})  # step 3 is skipped
    train(cfg)
    ev = {e["step"]: e for e in events(cfg.out_dir, "train")}
    assert math.isnan(ev[3]["loss"]) and math.isnan(ev[3]["grad_norm_max"]) and ev[3]["skipped_steps"] == 1
    assert all(math.isfinite(ev[s]["loss"]) for s in ev if s != 3)
    acc = EventAccumulator(str(Path(cfg.out_dir) / "tb"))
    acc.Reload()
    tb = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert math.isnan(tb[3]) and math.isfinite(tb[4])
    make_study(tmp_path / "study", 1)
    with Store(tmp_path / "study") as s:
        run = s.claim("w", lease_s=60)
        assert s.finish(run, summary={}, finals={}, metrics=read_metrics(Path(cfg.out_dir) / "metrics.jsonl"))
        loss = dict(s.metrics(run.id, "loss", event="train"))
        assert math.isnan(loss[3]) and loss[4] == pytest.approx(ev[4]["loss"])


def test_an_eval_skipped_by_a_stop_signal_runs_first_on_resume(make_cfg, monkeypatch):
    """SIGTERM during the training step of an eval step: the run checkpoints and leaves without that eval;
    the resumed run evaluates that step before training on, so the log equals an uninterrupted run's."""
    import os
    import signal

    ref = make_cfg("ref", eval_every=4)
    train(ref)
    cfg = make_cfg("run", eval_every=4)
    real_step = trainer_mod.Trainer._train_step

    def step_then_term(self, step, log_now):
        R = real_step(self, step, log_now)
        if step + 1 == 8:
            os.kill(os.getpid(), signal.SIGTERM)  # lands on step 8, an eval step
        return R

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", step_then_term)
    s = train(cfg)
    assert s["status"] == "interrupted" and s["step"] == 8
    assert [e["step"] for e in events(cfg.out_dir, "eval")] == [4]  # step 8's eval was not run
    monkeypatch.undo()
    train(cfg)
    got = [(e["step"], e["sets"]) for e in events(cfg.out_dir, "eval")]
    want = [(e["step"], e["sets"]) for e in events(ref.out_dir, "eval")]
    assert [g[0] for g in got] == [4, 8, 12] and got == want
    assert_same_weights(final_weights(ref.out_dir), final_weights(cfg.out_dir))


def test_cpu_peak_is_timed_by_cpu_time_so_contention_cannot_lower_it(monkeypatch):
    """A run started beside busy processes measured a low wall-clock peak and logged MFU > 100 %. On a CPU the
    peak is timed by process CPU time per thread: here the wall clock runs 3x the CPU clock (the process held the
    core a third of the time) and the measured peak is the CPU-time rate, 3x what the wall clock says."""
    import cart.train.mfu as mfu

    clocks = {"wall": 0.0, "cpu": 0.0}

    class FakeTime:
        @staticmethod
        def perf_counter():
            clocks["wall"] += 0.003
            return clocks["wall"]

        @staticmethod
        def process_time():
            clocks["cpu"] += 0.001
            return clocks["cpu"]

    monkeypatch.setattr(mfu, "time", FakeTime)
    with one_thread():
        by_cpu = mfu.measure_matmul_flops(torch.device("cpu"), torch.float32, n=8, seconds=0.01, repeats=1)
        by_wall = mfu.measure_matmul_flops(torch.device("cpu"), torch.float32, n=8, seconds=0.01, repeats=1, clock="wall")
    assert by_cpu == pytest.approx(3 * by_wall)
    with pytest.raises(ValueError, match="clock"):
        mfu.measure_matmul_flops(torch.device("cpu"), torch.float32, n=8, clock="gpu")
