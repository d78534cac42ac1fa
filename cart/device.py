"""Turning a device request (`auto`, `cpu`, `cuda`, `cuda:N`) into a `torch.device` that exists here.

One place for every command that takes `--device` (train, eval, generate, bench): a request this
machine cannot serve (CUDA asked for where there is none, a device index past the last GPU, a
misspelt device) is a one-line ValueError naming the value, never an error from deep inside torch.
"""
from __future__ import annotations

import torch


def resolve_device(pref: str | torch.device | None, local_rank: int = 0, what: str = "device") -> torch.device:
    """`auto`/None: cuda when available, else cpu. `cuda` means `cuda:<local_rank>` (one GPU per process)."""
    if isinstance(pref, torch.device):
        pref = str(pref)
    asked = pref
    if pref in (None, "", "auto"):
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        pref = f"cuda:{local_rank}"
    try:
        dev = torch.device(pref)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {pref!r} is not a device (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} {pref!r} is not supported (expected auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {asked!r}: CUDA is not available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {asked!r}: only {torch.cuda.device_count()} CUDA device(s) exist here")
    return dev


__all__ = ["resolve_device"]
