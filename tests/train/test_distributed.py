"""torchrun on CPU (gloo): two processes reach the same losses as one process with the same global
batch, with DDP and with FSDP2, and their checkpoints resume under a different world size."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cart.checkpoint import resolve_checkpoint
from cart.train import train

from tests.support import one_thread, subprocess_env

from .conftest import train_argv

RUN = dict(steps=6, batch_size=4, grad_accum=2, seq_len=32, log_every=1, ckpt_every=3, final_eval_tokens=256)


def close_weights(b, a):
    for k in a:
        # the blend logits start at [0, -16, -16], where their gradient is at float-rounding level;
        # Adam normalises that noise to steps of ~lr, so they agree only to ~lr, not to rounding
        atol = 1e-3 if k == "hyper.logits" else 1e-5
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=atol, msg=k)


def losses(run_dir):
    ev = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in ev if e["event"] == "train"]


def torchrun(cfg, nproc=2):
    argv = train_argv(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *argv[1:]]
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def single(smoke_data, tmp_path_factory):
    from cart.train import TrainConfig
    cfg = TrainConfig.from_preset("smoke", data=str(smoke_data), out_dir=str(tmp_path_factory.mktemp("single") / "run"),
                                  eval_every=0, peak_flops=1e11, tensorboard=False, **RUN)
    with one_thread():
        train(cfg)
    return cfg


def _drop_last(run_dir):
    shutil.rmtree(Path(run_dir) / "checkpoints" / "step_00000006")
    (Path(run_dir) / "summary.json").unlink()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(make_cfg, single, parallel):
    cfg = make_cfg(parallel, parallel=parallel, **RUN)
    torchrun(cfg)
    one, two = losses(single.out_dir), losses(cfg.out_dir)
    assert len(one) == len(two) == RUN["steps"]
    assert two == pytest.approx(one, rel=1e-5, abs=1e-5)
    a = load_file(str(resolve_checkpoint(single.out_dir) / "model.safetensors"))
    close_weights(load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors")), a)
    # only rank 0 wrote: one start event, one line per step
    ev = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "start" for e in ev) == 1 and ev[0]["world_size"] == 2
    if parallel == "ddp":  # the 2-process checkpoint of step 3 resumes in 1 process
        _drop_last(cfg.out_dir)
        train(cfg)
        close_weights(load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors")), a)
        assert losses(cfg.out_dir) == pytest.approx(one, rel=1e-5, abs=1e-5)


def test_one_process_checkpoint_resumes_in_two(make_cfg, single):
    cfg = make_cfg("one_then_two", **RUN)
    shutil.copytree(single.out_dir, cfg.out_dir)
    _drop_last(cfg.out_dir)
    torchrun(cfg)
    a = load_file(str(resolve_checkpoint(single.out_dir) / "model.safetensors"))
    close_weights(load_file(str(resolve_checkpoint(cfg.out_dir) / "model.safetensors")), a)
    assert losses(cfg.out_dir) == pytest.approx(losses(single.out_dir), rel=1e-5, abs=1e-5)
