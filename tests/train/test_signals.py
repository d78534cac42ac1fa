"""Never lose work: a real SIGKILL of a training subprocess, then --resume, ends with the same weights
as an uninterrupted run; SIGTERM saves a checkpoint before exiting."""
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cart.checkpoint import resolve_checkpoint
from cart.train import train

from tests.support import one_thread, subprocess_env

from .conftest import train_argv

# variable R with truncated backprop, gradient accumulation and a warmup/cosine schedule: every
# piece of state (weights, AdamW moments, loader position, loop sampler, step) must survive the kill
RUN = dict(steps=160, batch_size=4, grad_accum=2, seq_len=32, log_every=10, ckpt_every=10, keep_checkpoints=2, eval_tokens=256,
           loop_sampling={"kind": "uniform", "min_loops": 1, "max_loops": 3, "backprop_loops": 2})


@pytest.fixture(scope="module")
def reference(smoke_data, tmp_path_factory):
    from cart.train import TrainConfig
    cfg = TrainConfig.from_preset("smoke", data=str(smoke_data), out_dir=str(tmp_path_factory.mktemp("ref") / "run"),
                                  eval_every=0, final_eval_tokens=256, peak_flops=1e11, tensorboard=False, **RUN)
    with torch.random.fork_rng(), one_thread():
        train(cfg)
    return load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors"))


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("training subprocess made no progress")


def _ckpt_steps(run_dir):
    root = Path(run_dir) / "checkpoints"
    return sorted(int(p.name.split("_")[1]) for p in root.glob("step_*")) if root.is_dir() else []


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_identical_weights(make_cfg, reference):
    cfg = make_cfg("killed", **RUN)
    argv = train_argv(cfg)
    rng = random.Random(0)
    for kill in range(2):
        proc = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen = _ckpt_steps(cfg.out_dir)
        # the first kill lands right after a checkpoint appears, the second at a random moment later
        progressed = _wait_for(lambda: _ckpt_steps(cfg.out_dir) != seen, proc)
        if kill:
            time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert progressed, proc.stderr.read().decode()[-2000:]
    assert _ckpt_steps(cfg.out_dir)[-1] < RUN["steps"], "the run finished before it could be killed"
    summary = train(cfg)  # --resume, in process
    assert summary["step"] == RUN["steps"]
    _same(reference, load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors")))
    steps = [e["step"] for e in map(json.loads, (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines())
             if e["event"] == "train"]
    assert steps == sorted(set(steps))  # resumed parts never duplicate a logged step


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(make_cfg, reference):
    cfg = make_cfg("termed", **RUN)
    proc = subprocess.Popen(train_argv(cfg), env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_for(lambda: bool(_ckpt_steps(cfg.out_dir)), proc)
    proc.send_signal(signal.SIGTERM)  # the trainer checks for it after every step: it stops past this checkpoint
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()[-2000:]
    ev = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    stop = [e for e in ev if e["event"] == "interrupted"]
    assert len(stop) == 1 and stop[0]["signal"] == "SIGTERM"
    step = stop[0]["step"]
    assert step < RUN["steps"] and _ckpt_steps(cfg.out_dir)[-1] == step  # saved at the step it stopped on
    assert not (Path(cfg.out_dir) / "summary.json").exists()  # not finished
    train(cfg)
    _same(reference, load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors")))
