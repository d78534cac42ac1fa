"""Process-level settings that make CPU training faster: the C allocator.

glibc's malloc serves every allocation above a (dynamic, at most 32 MB) threshold with a fresh
mmap and returns it to the kernel on free, and trims the heap's free top above another threshold.
A training step allocates and frees the same large tensors every step (at d=256, V=8192 and 2,048
tokens the logits alone are 67 MB), so each step page-faults ~100-300 MB of fresh, zeroed pages
back in: about 1 µs per 4 KB page on the VMs measured (results/bench/PERF.md), several per cent of
a step. `tune_allocator()` keeps freed memory in the process instead (no mmap per allocation, no
trimming), so after the first step the same pages are reused. The cost is that the process's
resident size stays at its high-water mark, which for a training process it reaches every step
anyway.

Linux/glibc only; a no-op elsewhere. Call it once, early (before the model is built). The trainer
can call it on CPU runs too (`from cart.bench.host import tune_allocator`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_state: dict = {"tuned": False}


def tune_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Stop glibc from mmap-ing large blocks and from trimming up to `trim_threshold` bytes of free
    heap. Returns True when the settings were applied (idempotent)."""
    if _state["tuned"]:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, min(int(trim_threshold), 2**31 - 1)) == 1
    except (OSError, AttributeError):
        return False
    _state["tuned"] = bool(ok)
    return _state["tuned"]


def allocator_tuned() -> bool:
    return _state["tuned"]


__all__ = ["tune_allocator", "allocator_tuned"]
