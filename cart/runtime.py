"""Process-level settings for CPU speed: OpenMP's wait policy, intra-op threads, the C allocator.

This module never imports torch at module level: `cart/__init__.py` imports it first, so that the
OpenMP default below is in the environment before torch loads its OpenMP runtime.

- **OpenMP wait policy (shared machines).** Between parallel regions, and at every barrier inside
  one, an idle OpenMP thread spins before it sleeps (libgomp, which torch's Linux wheels use: 300,000
  spins by default). On a machine where other processes also want the cores, a spinning thread burns
  the time slice its descheduled sibling needs, and every barrier waits for that sibling: a 2-thread
  training step on 2 shared cores ran 4-30x slower than its fair share (results/bench/PERF.md,
  "Under load"). With `OMP_WAIT_POLICY=PASSIVE` idle threads sleep at once and the step degrades
  in proportion to the load. libgomp reads the policy once, when torch is imported, so it cannot
  be changed later from Python: `import cart` sets `OMP_WAIT_POLICY=PASSIVE` unless the environment
  already chooses (`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT` or `KMP_BLOCKTIME` set) or torch was
  imported before cart (then nothing can be done here; `omp_wait_policy()` says so and the trainer
  logs it). To keep the spinning default, export `OMP_WAIT_POLICY=ACTIVE` or `GOMP_SPINCOUNT=300000`.
- **Threads.** `set_threads(n)`: torch's intra-op threads (0 keeps torch's default, one per
  physical core). `TrainConfig.threads` uses it.
- **The C allocator.** glibc's malloc serves every allocation above a (dynamic, at most 32 MB)
  threshold with a fresh mmap and returns it to the kernel on free, and trims the heap's free top
  above another threshold. A training step allocates and frees the same large tensors every step
  (at d=256, V=8192 and 2,048 tokens the logits alone are 67 MB), so each step page-faults ~100-300
  MB of fresh, zeroed pages back in: about 1 µs per 4 KB page on the VMs measured, several per cent
  of a step. `tune_allocator()` keeps freed memory in the process instead (no mmap per allocation,
  no trimming), so after the first step the same pages are reused. The cost is that the process's
  resident size stays at its high-water mark, which a training process reaches every step anyway.
  Linux/glibc only; a no-op elsewhere. Call it once, early (the trainer and `cart bench` do).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

# Any of these in the environment means the user chose how OpenMP threads wait: leave it alone.
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
DEFAULT_WAIT_POLICY = "PASSIVE"

_state: dict = {"tuned": False, "wait_policy": None, "passive": False}


def _is_passive(env: dict) -> bool:
    return (env.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" or env.get("GOMP_SPINCOUNT", "").strip() == "0"
            or env.get("KMP_BLOCKTIME", "").strip() == "0")


def apply_omp_default() -> str:
    """Set OMP_WAIT_POLICY=PASSIVE for this process if nothing chose a policy and torch (hence
    OpenMP) is not loaded yet; returns the description `omp_wait_policy()` gives. Idempotent: the
    first call (at `import cart`) decides."""
    if _state["wait_policy"] is None:
        chosen = {v: os.environ[v] for v in WAIT_POLICY_VARS if v in os.environ}
        if chosen:
            _state["wait_policy"] = ", ".join(f"{k}={v}" for k, v in chosen.items()) + " (environment)"
            _state["passive"] = _is_passive(chosen)
        elif "torch" in sys.modules:
            _state["wait_policy"] = ("OpenMP default: spin, then sleep (torch was imported before cart; on a shared machine "
                                     f"export OMP_WAIT_POLICY={DEFAULT_WAIT_POLICY} before starting Python)")
        else:
            os.environ["OMP_WAIT_POLICY"] = DEFAULT_WAIT_POLICY
            _state["wait_policy"] = f"OMP_WAIT_POLICY={DEFAULT_WAIT_POLICY} (set by cart)"
            _state["passive"] = True
    return _state["wait_policy"]


def omp_wait_policy() -> str:
    """How this process's OpenMP threads wait, and who chose it."""
    return apply_omp_default()


def omp_wait_policy_passive() -> bool:
    """True when idle OpenMP threads sleep at once (the policy that degrades gracefully under load)."""
    apply_omp_default()
    return _state["passive"]


def set_threads(n: int) -> int:
    """Use n intra-op threads (n >= 1), or keep torch's default (n = 0). Returns the count in effect."""
    import torch

    if n < 0:
        raise ValueError(f"threads must be >= 0 (0 = torch's default), got {n}")
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


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


__all__ = ["apply_omp_default", "omp_wait_policy", "omp_wait_policy_passive", "set_threads", "tune_allocator",
           "allocator_tuned", "WAIT_POLICY_VARS", "DEFAULT_WAIT_POLICY"]
