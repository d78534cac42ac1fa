"""Helpers shared by the whole suite (fixtures that use them live in tests/conftest.py).

- `one_thread()`: run tiny models on one intra-op thread;
- `SMOKE_TRAIN` / `smoke_config()`: the fast training recipe every training test starts from;
- `subprocess_env()`: the environment for a subprocess that must import this checkout's `cart`;
- `tree_digest()`: a hash of every file under a folder (to prove a shared fixture was left unchanged).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def one_thread():
    """Tiny models: one thread is faster than two and immune to a busy second core (an OpenMP barrier
    waiting for a descheduled thread turns a 1 ms forward into 500 ms). Subprocesses get
    OMP_NUM_THREADS=1 from `subprocess_env`, so in-process and subprocess runs do the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# the smoke preset made faster: 12 steps of 4 x 32 tokens, a checkpoint every 4 steps, evaluation only at the end
SMOKE_TRAIN = dict(steps=12, batch_size=4, seq_len=32, eval_every=0, eval_tokens=256, final_eval_tokens=256, log_every=4,
                   ckpt_every=4, keep_checkpoints=0, peak_flops=1e11, tensorboard=False)


def smoke_config(data: str | os.PathLike, out_dir: str | os.PathLike, **over):
    """A `TrainConfig` of the smoke preset on prepared data; keyword arguments override SMOKE_TRAIN and the preset."""
    from cart.train import TrainConfig
    return TrainConfig.from_preset("smoke", **{**SMOKE_TRAIN, "data": str(data), "out_dir": str(out_dir), **over})


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} for every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}
