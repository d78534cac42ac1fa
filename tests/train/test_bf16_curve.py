"""The bf16 CPU fast paths (explicit attention instead of ATen's flash kernel, the cross-entropy that
turns logits into their gradient in the forward) leave the loss curve unchanged to bf16 noise.

"bf16 noise" is measured, not assumed: the reference is the same bf16 run through the plain ops
(SDPA, F.cross_entropy); the yardstick is how far that reference itself strays from the fp32 run of
the same seed. The fast paths may move the curve by no more than that (the largest gap over the
run) and must end within 1 % of the reference loss."""
from unittest import mock

import torch.nn.functional as F

from cart.model import attention
from cart.train import train
import cart.train.trainer as trainer_mod
from tests.train.test_trainer import events


def _plain_ce(logits, y, ignore_index=-100):
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1), ignore_index=ignore_index)


def _losses(cfg):
    train(cfg)
    return [e["loss"] for e in events(cfg.out_dir, "train")]


def test_bf16_fast_paths_keep_the_loss_curve(make_cfg):
    common = dict(steps=16, log_every=2, batch_size=8, seq_len=64, ckpt_every=0, model={"d_model": 128})
    fp32 = _losses(make_cfg("fp32", dtype="fp32", **common))
    fast = _losses(make_cfg("fast", dtype="bf16", **common))
    with mock.patch.object(attention, "_explicit_attention_ok", lambda q, k: False), \
            mock.patch.object(trainer_mod, "cross_entropy", _plain_ce):
        plain = _losses(make_cfg("plain", dtype="bf16", **common))
    assert len(fp32) == len(fast) == len(plain) == 8
    assert fast != plain  # the fast paths did run (different rounding), else this test proves nothing
    noise = max(abs(a - b) for a, b in zip(plain, fp32))
    gap = max(abs(a - b) for a, b in zip(fast, plain))
    assert gap <= max(noise, 1e-3), (gap, noise)
    assert abs(fast[-1] - plain[-1]) <= 0.01 * plain[-1]
    assert fast[-1] < fast[0] - 0.5  # and it learns
