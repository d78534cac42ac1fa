"""The training loop: `train(cfg, resume=True) -> summary`.

Read top to bottom: `Trainer.__init__` checks everything that can be wrong and builds the run
(data, resume point, model, memory check, parallelism, optimizer) WITHOUT writing anything, so a
bad input fails before any checkpoint is touched; `Trainer.run` then trains, evaluates, logs and
checkpoints; `train` wraps both with the process group.

Notable features:
- one host sync per log step and none in between: losses, grad norms and non-finite flags are
  accumulated on the device; the optimizer skips a non-finite step on the device (fused AdamW's
  `found_inf`), and the flag is read at the next log or checkpoint step;
- exact resume: weights, optimizer, loader position, loop sampler and RNG states are checkpointed;
  a run killed with SIGKILL and resumed ends with the same weights as an uninterrupted run (CPU);
- resume reads the newest checkpoint that verifies (`cart.checkpoint`: checksums, each file read
  once, a checksum-valid file that is not the expected state counts as corrupt); newer bad ones are
  reported and set aside as corrupt_step_N; the token files are hashed once at start;
- SIGTERM/SIGINT finish the current step, save a checkpoint and exit (a second SIGINT aborts); an
  eval due at that step is recorded in the checkpoint and run first on resume;
- non-finite loss or gradients: "stop" names the step and the parameters and leaves the last good
  checkpoint untouched; "skip" drops isolated bad steps and stops after `max_skips` in a row; a log
  interval whose every step was skipped logs loss NaN (never 0);
- per log step: loss, lr, grad norm before/after clipping, tokens/s, MFU, rho_gate and the gate's
  min/mean/max, the hyper-connection weights and the measured per-loop contraction (from that
  step's own forward pass); per eval step: loss/ppl/bpb per validation set and the loop
  Jacobian norm estimate (SPEC §6.3).
"""
from __future__ import annotations

import json
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cart.accounting import account
from cart.runtime import omp_wait_policy, omp_wait_policy_passive, set_threads, tune_allocator
from cart import checkpoint as ckpt
from cart.checkpoint import atomic_write_json, list_checkpoints
from cart.config import CARTConfig, config_to_dict
from cart.model import build_model
from cart.model.layers import cross_entropy
from cart.provenance import code_version
from cart.train import distributed
from cart.train.config import ADDED_FIELDS, TrainConfig
from cart.train.evaluate import evaluate_perplexity
from cart.train.loops import LoopSampler, TruncatedBackprop
from cart.train.metrics import Metrics
from cart.train.mfu import device_name, peak_flops
from cart.train.optim import WarmupCosine, build_optimizer, skips_on_device

SUMMARY = "summary.json"
NGRAM_FLOORS = "ngram_floors.json"
_FINAL_FIELDS = ("loss", "ppl", "bpb", "tokens", "out_of_domain", "unigram_ppl", "bigram_kn_ppl", "unigram_bpb", "bigram_kn_bpb")

# Fields that must not change when a run resumes: they define the model, the data stream or the
# optimisation trajectory. Everything else (steps, logging, eval, checkpoint cadence, device,
# compile, activation checkpointing, ...) may change between attempts.
RESUME_MUST_MATCH = ("model", "seq_len", "batch_size", "grad_accum", "optimizer", "lr", "min_lr", "warmup_steps",
                     "weight_decay", "decay_everything", "betas", "eps", "grad_clip", "loop_sampling", "seed", "dtype",
                     "doc_masking")


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient; the message names the step and parameters."""


def train(cfg: TrainConfig, resume: bool = True) -> dict:
    """Train `cfg`; continue from the newest good checkpoint in cfg.out_dir when `resume`.

    Returns the summary (also written to out_dir/summary.json when the run completes):
    {"status", "step", "final": {val set: {"loss", "ppl", "bpb", "tokens", "out_of_domain"}},
    "rho_gate", "gate_min", "gate_mean", "contraction", "tokens_per_s", "mfu", "stored_params",
    "effective_params", ...}. status is "completed" or "interrupted" (SIGTERM/SIGINT: a checkpoint
    was saved, no summary.json). Raises ValueError/FileNotFoundError on bad input (before touching
    any checkpoint) and NonFiniteError when the loss or gradients stop being finite.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train() expects a TrainConfig, got {type(cfg).__name__}")
    d = distributed.setup(cfg.device)
    try:
        return Trainer(cfg, d, resume).run()
    finally:
        distributed.teardown(d)


def _cpu_has_bf16() -> bool:
    """Native bf16 matmul units (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for "bf16", and for "auto" where the device does bf16 natively; None = fp32."""
    if cfg.dtype == "bf16":
        return torch.bfloat16
    if cfg.dtype == "auto":
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and _cpu_has_bf16()
        return torch.bfloat16 if native else None
    return None


def _data_identity(manifest) -> dict:
    return {"root": str(manifest.root), "recipe": manifest.name, "tokenizer_sha256": manifest.tokenizer_sha256,
            "vocab_size": manifest.vocab_size, "train_sha256": {k: v.sha256 for k, v in manifest.train.items()}}


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


class Trainer:
    # ================================================================== set-up: checks, no writes
    def __init__(self, cfg: TrainConfig, d: distributed.Dist, resume: bool):
        from cart.data import Manifest, TrainLoader, validate_against_model

        self.cfg, self.dist = cfg, d
        self.run_dir = Path(cfg.out_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"TrainConfig.out_dir {self.run_dir}: exists and is not a directory")
        self.device = d.device
        mcfg = cfg.model
        if self.device.type == "cpu":  # reuse freed pages instead of page-faulting ~100 MB anew every step
            tune_allocator()
            set_threads(cfg.threads)  # OpenMP's wait policy was fixed at `import cart` (cart/runtime.py)

        # ---- data
        self.manifest = Manifest.load(cfg.data)
        validate_against_model(self.manifest, mcfg.vocab_size)
        if cfg.batch_size % d.world_size:
            raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} (the global micro-batch) must be divisible by the "
                             f"number of processes ({d.world_size})")
        self.local_batch = cfg.batch_size // d.world_size
        # the loader hashes its token files once, here; the validation files are hashed once too
        self.loader = TrainLoader(self.manifest, self.local_batch, cfg.seq_len, rank=d.rank, world_size=d.world_size,
                                  document_ids=cfg.doc_masking)
        for name in self.manifest.val_sets:
            self.manifest.val_file(name, verify=True)

        # ---- where to start
        # the newest checkpoint that verifies, every file read once (its weights, optimizer and trainer state)
        loaded, self.corrupt = ckpt.newest_good(self.run_dir, training=True) if resume else (None, [])
        self.resume_from = loaded.path if loaded is not None else None
        if not resume and list_checkpoints(self.run_dir):
            raise ValueError(f"{self.run_dir} already holds checkpoints: resume it (--resume) or choose another out_dir")
        self.start_step, self.saved = 0, None
        if d.enabled:  # every rank must resume from the same checkpoint (the run dir is shared)
            seen = [None] * d.world_size
            torch.distributed.all_gather_object(seen, str(self.resume_from))
            if len(set(seen)) > 1:
                raise ValueError(f"ranks disagree on the checkpoint to resume from ({seen}): is {self.run_dir} on a "
                                 f"filesystem every node sees?")
        if loaded is not None:
            self.saved = loaded.train_config["config"]
            self._check_resumable(loaded.train_config)

        # ---- model
        torch.manual_seed(cfg.seed)
        self.model = build_model(mcfg)
        if loaded is not None:
            self._load_weights(loaded)
        self.model.to(self.device)
        self.autocast = _autocast_dtype(cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cfg.activation_checkpointing:
            distributed.apply_activation_checkpointing(self.model)
        self.sampler = LoopSampler(cfg.loop_sampling, mcfg, cfg.seed)
        self.truncation = TruncatedBackprop(self.model) if cfg.loop_sampling.backprop_loops else None
        self.fsdp = d.enabled and cfg.parallel == "fsdp"
        self.wrapped = distributed.wrap(self.model, d, cfg.parallel)  # the model, DDP(model), or the model sharded
        self.fwd = self._logits_and_loss
        if cfg.compile:  # forward AND loss in one graph: the loss fuses with the head (no fp32 [N, V] copies)
            self.fwd = torch.compile(self._logits_and_loss)
        self._check_memory()

        # ---- optimizer, schedule, state
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.device_skip = skips_on_device(self.optimizer)
        self.schedule = WarmupCosine(cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps)
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.train_time, self.run_flops = 0.0, 0.0  # this session's training time and FLOPs (for the summary)
        self.eval_due: int | None = None  # an eval step skipped by a stop signal: run first on resume
        if loaded is not None:
            self._load_state(loaded)
        del loaded

        acc = account(mcfg, cfg.seq_len)
        self.stored, self.effective = acc.stored, acc.effective
        self.peak, self.peak_source = peak_flops(self.device, self.autocast or torch.float32, cfg.peak_flops)
        self._flops_cache: dict[tuple[int, int], float] = {}
        self.stop_signal: int | None = None
        if d.enabled:
            torch.distributed.barrier()  # every rank has read the run dir before rank 0 starts writing to it

    def _check_resumable(self, meta: dict) -> None:
        """The checkpoint's config must agree with this one on everything that defines the run."""
        saved, mine = meta["config"], self.cfg.to_dict()
        saved = {**ADDED_FIELDS, **saved}  # a checkpoint from before a field existed ran with its old value
        diff = [k for k in RESUME_MUST_MATCH if saved.get(k) != mine[k]]
        if diff:
            detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {mine[k]!r}" for k in diff)
            raise ValueError(f"cannot resume {self.resume_from}: the config differs in {diff} ({detail}). "
                             f"Use the original settings, or a new out_dir for a new run")
        then, now = meta.get("data", {}), _data_identity(self.manifest)
        for key in ("tokenizer_sha256", "train_sha256"):
            if key in then and then[key] != now[key]:
                raise ValueError(f"cannot resume {self.resume_from}: the training data differs ({key} changed; "
                                 f"checkpoint data {then.get('root')}, now {now['root']})")

    def _load_weights(self, loaded: ckpt.Checkpoint) -> None:
        if config_to_dict(loaded.config) != config_to_dict(self.cfg.model):
            raise ValueError(f"cannot resume {loaded.path}: its {ckpt.MODEL_JSON} describes another model than the config")
        self.model.load_state_dict(loaded.weights, strict=False)  # names and shapes were verified by ckpt.read

    def _check_memory(self) -> None:
        """One forward/backward of a micro-batch at the largest R a step can draw, before anything is
        written: a batch that does not fit fails here with advice, not at step 1 after a checkpoint."""
        R = self.sampler.max_loops()
        x = torch.zeros(self.local_batch, self.cfg.seq_len, dtype=torch.long, device=self.device)
        try:
            # compiled: the stats dict as every step passes it (no recompile at step 1)
            self._forward_backward(x, x, R, 1.0, stats={} if self.cfg.compile else None,
                                   doc_ids=x if self.cfg.doc_masking else None)
        except Exception as e:
            if not _is_oom(e):
                raise
            raise ValueError(f"out of memory on {self.device} for one micro-batch of batch_size={self.cfg.batch_size} "
                             f"(per process {self.local_batch}) x seq_len={self.cfg.seq_len} at R={R}: lower batch_size and "
                             f"raise grad_accum (same tokens per step), or enable activation_checkpointing") from None
        finally:
            self.model.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _load_state(self, loaded: ckpt.Checkpoint) -> None:
        distributed.load_optimizer_state(self.model, self.optimizer, loaded.optimizer)
        st = loaded.trainer
        self.start_step = int(st["step"])
        self.eval_due = st.get("eval_due")
        self.loader.load_state_dict(st["loader"])
        self.sampler.load_state_dict(st["sampler"])
        rng = st["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(("MT19937", rng["numpy"][0].numpy().astype(np.uint32), *rng["numpy"][1]))
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))

    # ================================================================== the step
    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor, R: int, scale: float, stats: dict | None,
                          doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        n_loops = None if R == self.sampler.default else R
        grad_loops = self.sampler.grad_loops(R)
        window = self.truncation.window(R, grad_loops) if self.truncation else nullcontext()
        masking = {} if doc_ids is None else {"doc_ids": doc_ids}  # document masking (cfg.doc_masking)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None), window:
            loss = self.fwd(x, y, n_loops, stats, **masking)
        (loss * scale).backward()
        return loss.detach()

    def _logits_and_loss(self, x: torch.Tensor, y: torch.Tensor, n_loops: int | None, stats: dict | None,
                         **masking) -> torch.Tensor:
        """The model (through its DDP/FSDP wrapper) and the loss: eager, `cross_entropy` (the same value and
        gradient without [tokens, vocab] temporaries, cart.model.layers); compiled, the plain loss, which
        the compiler fuses itself."""
        logits = self.wrapped(x, n_loops=n_loops, stats=stats, **masking)
        if torch.compiler.is_compiling():
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        return cross_entropy(logits, y)

    def _train_step(self, step: int, log_now: bool) -> int:
        """One optimizer step (grad_accum micro-steps). Returns the R it ran. No host sync."""
        cfg, acc = self.cfg, self.acc
        lr = self.schedule(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        R = self.sampler.sample()
        loss = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1
            batch, doc_ids = next(self.loader), None
            if cfg.doc_masking:
                batch, doc_ids = batch
            if self.device.type == "cuda":
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
            if doc_ids is not None:
                doc_ids = doc_ids.to(self.device, non_blocking=True)[:, :-1]
            # compiled: always collect the (cheap) loop stats, so log steps do not trigger a recompile
            stats = {} if (log_now and micro == 0) or cfg.compile else None
            if self.fsdp:
                self.model.set_requires_gradient_sync(last)
                sync = nullcontext()
            else:
                sync = self.wrapped.no_sync() if (self.dist.enabled and not last) else nullcontext()
            with sync:
                loss += self._forward_backward(batch[:, :-1], batch[:, 1:], R, 1.0 / cfg.grad_accum, stats, doc_ids)
            if stats and log_now:
                self.loop_stats = stats
        loss /= cfg.grad_accum

        # global grad norm, clipping, and the non-finite check: all on the device
        for _, p in self.params:
            if p.grad is None:  # a parameter no loop reached this step (never under DDP): count it as zero
                p.grad = torch.zeros_like(p)
        grads = [p.grad for _, p in self.params]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        norms = torch._foreach_norm(local)
        sq = torch.stack([n.float() for n in norms]).pow(2)
        total_sq = sq.sum()
        if self.fsdp:  # each rank holds a shard of every gradient
            distributed.all_reduce_(total_sq, self.dist)
        total = total_sq.sqrt()
        bad = ~(torch.isfinite(total) & torch.isfinite(loss))
        coef = (cfg.grad_clip / (total + 1e-6)).clamp(max=1.0) if cfg.grad_clip else torch.ones((), device=self.device)
        if cfg.grad_clip:
            torch._foreach_mul_(grads, coef)
        if self.device_skip:
            self.optimizer.found_inf = bad.float()
            self.optimizer.step()
        elif not bool(bad):  # bitsandbytes has no device-side skip: this path syncs every step
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        # device-side bookkeeping, read at log steps
        acc["loss"] += torch.where(bad, 0.0, loss)
        acc["good"] += (~bad).float()
        acc["gnorm_max"] = torch.maximum(acc["gnorm_max"], torch.where(bad, 0.0, total))
        acc["gnorm"], acc["gnorm_clipped"] = total, total * coef
        first = bad & (acc["first_bad"] < 0)
        acc["first_bad"] = torch.where(first, step + 1, acc["first_bad"])
        acc["first_bad_loss"] = torch.where(first, loss, acc["first_bad_loss"])
        acc["bad_params"] = torch.where(first, ~torch.isfinite(sq), acc["bad_params"])
        acc["consecutive"] = (acc["consecutive"] + 1) * bad
        acc["max_consecutive"] = torch.maximum(acc["max_consecutive"], acc["consecutive"])
        acc["skipped"] += bad.float()
        return R

    def _new_accumulators(self) -> dict[str, torch.Tensor]:
        z = lambda: torch.zeros((), device=self.device)  # noqa: E731
        return {"loss": z(), "good": z(), "gnorm_max": z(), "gnorm": z(), "gnorm_clipped": z(),
                "first_bad": torch.full((), -1, dtype=torch.long, device=self.device), "first_bad_loss": z(),
                "bad_params": torch.zeros(len(self.params), dtype=torch.bool, device=self.device),
                "consecutive": z(), "max_consecutive": z(), "skipped": z()}

    def _train_flops_per_token(self, R: int) -> float:
        """From `cart.accounting`: forward + 2x backward; loops without autograd cost a forward only."""
        k = self.sampler.grad_loops(R)
        if (R, k) not in self._flops_cache:
            fwd = lambda n: account(self.cfg.model, self.cfg.seq_len, n_loops=n).fwd_flops_per_token  # noqa: E731
            self._flops_cache[(R, k)] = 3 * fwd(R) if k == R else fwd(R) + 2 * fwd(k)
        return self._flops_cache[(R, k)]

    # ================================================================== the run
    def run(self) -> dict:
        cfg, d = self.cfg, self.dist
        self._prepare_run_dir()
        self.metrics = Metrics(self.run_dir, d.is_main, self.start_step, cfg.steps, cfg.tensorboard)
        self._log_start()
        try:
            if self.start_step >= cfg.steps:
                done = self.run_dir / SUMMARY
                if done.is_file():
                    s = json.loads(done.read_text())
                    if s.get("step") == self.start_step:
                        return s  # already finished: nothing to do
                return self._finish(self.start_step, self.resume_from)
            return self._loop()
        finally:
            self.metrics.close()

    def _prepare_run_dir(self) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.set_aside(self.run_dir, self.start_step if self.resume_from is not None else -1)
        if self.start_step < self.cfg.steps:
            (self.run_dir / SUMMARY).unlink(missing_ok=True)  # summary.json marks a finished run
        atomic_write_json(self.run_dir / "train_config.json", self._meta() | {"config": self.cfg.to_dict()})

    def _meta(self) -> dict:
        return {"code_version": code_version(), "data": _data_identity(self.manifest), "world_size": self.dist.world_size}

    def _log_start(self) -> None:
        cfg, d = self.cfg, self.dist
        ev = {"step": self.start_step, "event": "resume" if self.resume_from is not None else "start",
              "world_size": d.world_size, "device": device_name(self.device), "dtype": str(self.autocast or torch.float32),
              "stored_params": self.stored, "effective_params": self.effective, "tokens_per_step": cfg.tokens_per_step,
              "peak_flops": self.peak, "peak_flops_source": self.peak_source}
        if self.device.type == "cpu":
            ev.update(threads=torch.get_num_threads(), omp_wait_policy=omp_wait_policy())
        if self.resume_from is not None:
            ev["checkpoint"] = str(self.resume_from)
            changed = {k: [self.saved.get(k), v] for k, v in cfg.to_dict().items() if k not in RESUME_MUST_MATCH and self.saved.get(k) != v}
            if changed:
                ev["config_changes"] = changed
        if self.corrupt:
            ev["corrupt_checkpoints"] = self.corrupt
            ev["message"] = f"{len(self.corrupt)} newer checkpoint(s) failed verification and were set aside: " + "; ".join(self.corrupt)
            if d.is_main and self.resume_from is None:
                self.metrics.note("no checkpoint verifies: starting from scratch")
        self.metrics.log(ev)
        if self.corrupt:
            self.metrics.note(f"warning: {ev['message']}")
        if self.device.type == "cpu" and not omp_wait_policy_passive():
            self.metrics.note(f"note: {omp_wait_policy()}; idle OpenMP threads spin, which slows training many times over "
                              f"when other processes share these cores (cart/runtime.py)")
        self.metrics.note(f"training {cfg.model.kind} ({self.stored:,} stored / {self.effective:,} effective params) on "
                          f"{device_name(self.device)} x{d.world_size}, {cfg.tokens_per_step:,} tokens/step, "
                          f"steps {self.start_step} -> {cfg.steps}, run dir {self.run_dir}")

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
            self.stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _loop(self) -> dict:
        cfg = self.cfg
        self.acc = self._new_accumulators()
        self.loop_stats: dict = {}
        previous = self._install_signals()
        step = self.start_step
        last_ckpt = self.resume_from
        interval_flops, interval_tokens, interval_R = 0.0, 0, []
        t_last = time.perf_counter()
        paused = 0.0  # eval/checkpoint time inside the current log interval
        self.model.train()
        try:
            if self.eval_due is not None and self.eval_due == step:  # the eval a stop signal skipped, before anything else
                self._evaluate(step, cfg.eval_tokens)
            self.eval_due = None
            while step < cfg.steps:
                log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
                R = self._train_step(step, log_now)
                step += 1
                interval_flops += cfg.tokens_per_step * self._train_flops_per_token(R)
                interval_tokens += cfg.tokens_per_step
                interval_R.append(R)
                self.metrics.advance()
                stop = distributed.any_rank(self.stop_signal is not None, self.dist)

                if log_now:
                    ev = self._read_interval(step, interval_R)  # the one host sync of the interval
                    dt = time.perf_counter() - t_last - paused
                    self.train_time += dt
                    self.run_flops += interval_flops
                    ev["tokens_per_s"] = interval_tokens / max(dt, 1e-9)
                    ev["mfu"] = interval_flops / max(dt, 1e-9) / (self.peak * self.dist.world_size)
                    ev["step_time_s"] = dt / len(interval_R)
                    self.metrics.log(ev)
                    self._last_train_event = ev
                    self._check_nonfinite(step)
                    interval_flops, interval_tokens, interval_R = 0.0, 0, []
                    t_last, paused = time.perf_counter(), 0.0

                t0 = time.perf_counter()
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                    if stop:  # leave promptly; the checkpoint below records the eval as due, resume runs it
                        self.eval_due = step
                    else:
                        self._evaluate(step, cfg.eval_tokens)
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps or stop:
                    self._check_nonfinite(step)
                    last_ckpt = self._save(step)
                paused += time.perf_counter() - t0
                if stop and step < cfg.steps:
                    sig = self.stop_signal or signal.SIGTERM
                    name = signal.Signals(sig).name
                    self.metrics.log({"step": step, "event": "interrupted", "signal": name,
                                      "message": f"{name}: checkpoint saved at step {step}; rerun with --resume to continue"})
                    self.metrics.note(f"{name}: saved {last_ckpt}; resume with the same command")
                    return {"status": "interrupted", "signal": name, "step": step, "checkpoint": str(last_ckpt),
                            "run_dir": str(self.run_dir)}
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return self._finish(step, last_ckpt)

    def _read_interval(self, step: int, Rs: list[int]) -> dict:
        """Gather the interval's device accumulators and the log step's loop statistics in one sync."""
        acc = self.acc
        totals = torch.stack([acc["loss"], acc["good"]])
        if self.dist.enabled:  # the loss differs per rank (different rows): average it
            distributed.all_reduce_(totals, self.dist)
            totals /= self.dist.world_size
        scalars = {"loss": totals[0], "good": totals[1], "grad_norm": acc["gnorm"], "grad_norm_clipped": acc["gnorm_clipped"],
                   "grad_norm_max": acc["gnorm_max"], "skipped": acc["skipped"], **self.model.gate_stats()}
        vectors = {k: self.loop_stats[k] for k in ("contraction", "delta_norm") if k in self.loop_stats}
        hyper = self.model.hyper_weights()
        if hyper is not None:
            vectors["hyper_weights"] = hyper
        tensors = [_full(t).reshape(-1).float() for t in [*scalars.values(), *vectors.values()]]
        flat = torch.cat(tensors).tolist()  # the sync
        out, i = {}, 0
        for k, t in zip([*scalars, *vectors], tensors):
            out[k] = flat[i] if k in scalars else flat[i:i + t.numel()]
            i += t.numel()
        # an interval whose every step was skipped (non-finite) has no loss and no finite gradient norm:
        # NaN, never the 0.0 the device accumulators hold for skipped steps
        loss_sum, good = out.pop("loss"), out.pop("good")
        if not good:
            out["grad_norm_max"] = float("nan")
        ev = {"step": step, "event": "train", "loss": loss_sum / good if good else float("nan"),
              "lr": self.schedule(step - 1), "tokens": step * self.cfg.tokens_per_step, "n_loops": Rs[-1],
              "skipped_steps": int(out.pop("skipped"))}
        ev.update(out)
        if "rho_gate" in ev:
            ev["gate_max"] = ev["rho_gate"]  # rho_gate = max_i sigmoid(a_i)
        if self.cfg.loop_sampling.variable:
            ev["n_loops_mean"] = sum(Rs) / len(Rs)
        if self.cfg.loop_sampling.backprop_loops:
            ev["grad_loops"] = self.sampler.grad_loops(Rs[-1])
        if self.device.type == "cuda":
            ev["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        for k in ("loss", "good", "gnorm_max"):
            acc[k].zero_()
        return ev

    def _check_nonfinite(self, step: int) -> None:
        """Stop (policy "stop", or "skip" past max_skips in a row) with a report; no checkpoint is written."""
        acc, cfg = self.acc, self.cfg
        first, worst = int(acc["first_bad"]), int(acc["max_consecutive"])
        if first < 0 or (cfg.nonfinite == "skip" and worst <= cfg.max_skips):
            return
        names = [n for (n, _), b in zip(self.params, acc["bad_params"].tolist()) if b]
        loss = float(acc["first_bad_loss"])
        what = f"loss {loss}" + (f"; non-finite gradients in {len(names)} parameter(s): {names[:12]}" + (" ..." if len(names) > 12 else "")
                                 if names else "; gradients finite")
        if cfg.nonfinite == "stop":
            msg = (f"non-finite loss/gradients at step {first} ({what}). The update was skipped and training stopped; "
                   f"the last good checkpoint is untouched. Lower lr, raise warmup_steps, or set nonfinite='skip'")
        else:
            msg = (f"{worst} consecutive non-finite steps (more than max_skips={cfg.max_skips}); the first at step {first} "
                   f"({what}). Training stopped; the last good checkpoint is untouched")
        self.metrics.log({"step": step, "event": "nonfinite", "first_step": first, "loss": loss, "parameters": names,
                          "consecutive": worst, "message": msg})
        raise NonFiniteError(msg)

    # ================================================================== eval, checkpoints, summary
    def _evaluate(self, step: int, max_tokens: int, final: bool = False) -> dict:
        cfg = self.cfg
        res = evaluate_perplexity(self.model, self.manifest, cfg.seq_len, max_tokens or None,
                                  cfg.eval_batch_size or self.local_batch, dtype=self.autocast, doc_masking=cfg.doc_masking)
        ev = {"step": step, "event": "eval", "final": final, "sets": res}
        mode, floors = cfg.ngram_floors, None
        if self.dist.is_main and (mode == "every_eval" or (final and mode == "final")):
            floors = self._floors(max_tokens)
            for name, r in res.items():
                if name in floors["sets"]:
                    r.update({f: floors["sets"][name][f] for f in ("unigram_ppl", "bigram_kn_ppl", "unigram_bpb", "bigram_kn_bpb")})
        jac = self._jacobian_norm()
        if jac is not None:
            ev["loop_jacobian_norm"] = jac
        self.metrics.log(ev)
        return ev | {"floors": floors}

    def _jacobian_norm(self) -> float | None:
        """Power-iteration estimate of the loop map's Jacobian norm on one validation window (CART)."""
        if not isinstance(self.cfg.model, CARTConfig) or self.fsdp:
            return None
        from cart.data import TokenFile
        from cart.model.diagnostics import loop_jacobian_norm
        vs = next(iter(self.manifest.val_sets.values()))
        T = min(self.cfg.seq_len, 128, vs.tokens)
        idx = torch.from_numpy(np.asarray(TokenFile(vs.path, self.manifest.vocab_size).tokens[:T], dtype=np.int64))[None].to(self.device)
        was = self.model.training
        self.model.eval()
        try:
            with distributed.activation_checkpointing_disabled():
                return float(loop_jacobian_norm(self.model, idx))
        finally:
            self.model.train(was)

    def _save(self, step: int) -> Path:
        d = self.dist
        model, opt_state = self.model, None
        if self.fsdp:  # gather full tensors (collectives: every rank), then rank 0 writes a plain copy
            full = distributed.full_model_state(self.model)
            opt_state = distributed.full_optimizer_state(self.model, self.optimizer)
            if d.is_main:  # with cpu_offload only rank 0 receives the full tensors
                model = build_model(self.cfg.model)
                model.load_state_dict(full)
        path = ckpt.ckpt_dir(self.run_dir, step)
        if d.is_main:
            if opt_state is None:
                opt_state = distributed.full_optimizer_state(self.model, self.optimizer)
            rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
                   "numpy": _numpy_rng(), "python": _python_rng()}
            trainer_state = {"step": step, "tokens": step * self.cfg.tokens_per_step, "schedule": self.schedule.state_dict(),
                             "loader": self.loader.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng,
                             "world_size": d.world_size, "eval_due": self.eval_due}
            meta = self._meta() | {"step": step}
            path = ckpt.save(self.run_dir, step, model, opt_state, trainer_state, self.cfg.to_dict(), meta, self.cfg.keep_checkpoints)
            self.metrics.sync()
            self.metrics.log({"step": step, "event": "checkpoint", "path": str(path)})
        if d.enabled:
            torch.distributed.barrier()
        return path

    def _floors(self, max_tokens: int) -> dict | None:
        """Unigram / Kneser-Ney bigram floors counted on the exact rows this run has trained on (all ranks)."""
        from cart.eval.ngram import floors_for_loader
        from cart.eval.perplexity import val_sets_from_manifest

        return floors_for_loader(self.loader, val_sets_from_manifest(self.manifest.root), max_tokens or None).to_dict() \
            | {"step": self.loader.step}

    def _finish(self, step: int, last_ckpt) -> dict:
        cfg = self.cfg
        ev = self._evaluate(step, cfg.final_eval_tokens, final=True)
        floors = ev.pop("floors", None)
        last = getattr(self, "_last_train_event", {})
        gate = {k: float(v) for k, v in self.model.gate_stats().items()}
        tokens_run = (step - self.start_step) * cfg.tokens_per_step
        tps = tokens_run / self.train_time if self.train_time else None
        summary = {
            "status": "completed", "step": step, "tokens": step * cfg.tokens_per_step,
            "final": {k: {m: v[m] for m in _FINAL_FIELDS if m in v} for k, v in ev["sets"].items()},
            **gate,
            "gate_max": gate.get("rho_gate"),
            "hyper_weights": last.get("hyper_weights"), "contraction": last.get("contraction"),
            "loop_jacobian_norm": ev.get("loop_jacobian_norm"),
            "final_train_loss": last.get("loss"),
            "tokens_per_s": tps,
            "mfu": self.run_flops / self.train_time / (self.peak * self.dist.world_size) if self.train_time else None,
            "peak_flops": self.peak, "peak_flops_source": self.peak_source,
            "stored_params": self.stored, "effective_params": self.effective, "leverage": self.effective / self.stored,
            "train_time_s": self.train_time, "world_size": self.dist.world_size, "device": device_name(self.device),
            "dtype": str(self.autocast or torch.float32).replace("torch.", ""),
            "checkpoint": str(last_ckpt) if last_ckpt else None, "run_dir": str(self.run_dir),
            "code_version": code_version(),
        }
        if self.dist.is_main:
            if floors is not None:
                atomic_write_json(self.run_dir / NGRAM_FLOORS, floors)
            self.metrics.log({"step": step, "event": "end", **{k: v for k, v in summary.items() if k != "final"}})
            atomic_write_json(self.run_dir / SUMMARY, summary)
            text = "  ".join(f"{n}: ppl {m['ppl']:.2f} bpb {m['bpb']:.3f}"
                             + (f" (bigram floor {m['bigram_kn_ppl']:.2f})" if "bigram_kn_ppl" in m else "")
                             for n, m in summary["final"].items())
            self.metrics.note(f"done at step {step}: {text}" + (f"  rho_gate {summary['rho_gate']:.4f}" if "rho_gate" in summary else ""))
        return summary


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP) as its full value; any other tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _numpy_rng() -> tuple:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (torch.from_numpy(keys.astype(np.int64)), (int(pos), int(has_gauss), float(cached)))


def _python_rng() -> tuple:
    version, state, gauss = random.getstate()
    return (version, list(state), gauss)
