"""Optimizer, parameter groups and learning-rate schedule.

- `param_groups`: who gets weight decay. Stable fidelity exempts the gate logits, hyper-connection
  weights, norms and the loop-index projection (the model names them: `no_decay_parameter_names`);
  paper fidelity decays everything, as the published code did. That choice matters: with zero
  gradient, AdamW's decoupled decay alone walks sigmoid(a) from 0.9 to ~0.79 over the paper's
  schedule, which is the published "spectral radius" band (SPEC §6.4). Dense models exempt 1-D
  parameters (norms), the usual convention.
- `build_optimizer`: AdamW, fused where PyTorch has a fused kernel (CPU and CUDA), so a step with a
  non-finite gradient is skipped on the device (`found_inf`) without a host sync; 8-bit AdamW from
  bitsandbytes as the paper used, where it works (CUDA).
- `WarmupCosine`: linear warmup to the peak, then cosine to the floor at the last step. The
  schedule is a pure function of the step, so resuming needs only the step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from cart.config import CARTConfig


def decays_everything(model_config, decay_everything: bool | None = None) -> bool:
    if decay_everything is not None:
        return decay_everything
    return isinstance(model_config, CARTConfig) and model_config.fidelity == "paper"


def param_groups(model: nn.Module, weight_decay: float, decay_everything: bool | None = None) -> list[dict]:
    """Two AdamW groups: decayed and exempt. Each group also carries "names" (parameter names, in
    order), so a saved optimizer state can be checked against the model it is loaded into."""
    exempt = set() if decays_everything(model.config, decay_everything) else model.no_decay_parameter_names()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append((name, p))
    groups = [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def fused_supported(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")


def build_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.decay_everything)
    if cfg.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ValueError("TrainConfig.optimizer='adamw8bit' needs a CUDA device (bitsandbytes' 8-bit AdamW); "
                             f"this run is on {device.type}: use optimizer='adamw'")
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ValueError("TrainConfig.optimizer='adamw8bit' needs bitsandbytes: pip install 'cart[bnb]' "
                             f"(import failed: {e}); or use optimizer='adamw'") from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    fused = fused_supported(device) and all(not getattr(p, "_is_dtensor", False) for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """True when the optimizer honours `optimizer.found_inf` (skips the update on the device)."""
    return all(g.get("fused") for g in optimizer.param_groups) and getattr(optimizer, "_step_supports_amp_scaling", False)


class WarmupCosine:
    """lr(step): linear warmup over `warmup` steps to `peak`, then cosine to `floor` at `total`."""

    def __init__(self, peak: float, floor: float, warmup: int, total: int):
        self.peak, self.floor, self.warmup, self.total = peak, floor, warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + 0.5 * (self.peak - self.floor) * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return {"kind": "warmup_cosine", "peak": self.peak, "floor": self.floor, "warmup": self.warmup, "total": self.total}


def decay_only_trajectory(a0: float, schedule: WarmupCosine, weight_decay: float, steps: int) -> list[float]:
    """A parameter's value after 0, 1, ..., `steps` optimizer steps with zero gradient: AdamW's
    decoupled weight decay alone, a <- a * (1 - lr_t * wd) with this run's own schedule (the update
    term is exactly zero when the gradient is: m = v = 0). Element 0 is a0."""
    out, a = [a0], a0
    for t in range(steps):
        a *= 1.0 - schedule(t) * weight_decay
        out.append(a)
    return out
