"""Peak FLOP/s of a device: the denominator of MFU.

MFU = achieved training FLOP/s / peak, with the FLOPs from `cart.accounting` (the one place they
are computed). The peak comes from, in order: an explicit override (TrainConfig.peak_flops); the
vendor's dense tensor-core figure for known GPUs; otherwise a measurement: the best of a few
timed square matmuls in the training dtype, once per process (~1 s, at the start of a run). On a
CPU the measured matmul rate is the honest ceiling (vendor figures assume vector units the BLAS may
not reach); it is timed by the process's CPU time per thread, so that a run started beside busy
processes still measures the machine's ceiling (a wall-clock measurement there came out low and put
MFU above 100 %), and contention shows as a lower MFU.
"""
from __future__ import annotations

import functools
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) peak FLOP/s per GPU from vendor data sheets: (bf16 tensor core, fp32 non-tensor).
GPU_PEAK_FLOPS = {
    "h200": (989e12, 67e12),
    "h100 sxm": (989e12, 67e12),
    "h100 nvl": (835e12, 60e12),
    "h100": (756e12, 51e12),  # PCIe
    "gh200": (989e12, 67e12),
    "a100": (312e12, 19.5e12),
    "a10g": (70e12, 31.2e12),
    "a10": (125e12, 31.2e12),
    "l40s": (362e12, 91.6e12),
    "l4": (121e12, 30.3e12),
    "rtx 4090": (165e12, 82.6e12),
    "rtx 3090": (71e12, 35.6e12),  # the paper's GPU
    "a6000": (155e12, 38.7e12),
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_name()} x{torch.get_num_threads()} threads"


def table_peak(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, (bf16, fp32) in GPU_PEAK_FLOPS.items():  # ordered: specific names before their prefixes
        if key in name:
            return bf16 if dtype == torch.bfloat16 else fp32
    return None


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 0.5, repeats: int = 3,
                         clock: str = "auto") -> float:
    """Best-of-`repeats` rate of n x n x n matmuls (2n³ FLOPs each) on `device` in `dtype`
    (n = 1024 on CPU, 8192 on GPU, where small matmuls cannot fill the device).

    clock: "wall", or "cpu": on a CPU, the process's CPU time per thread (time.process_time() /
    threads), the time the matmul actually held the cores. "auto" = "cpu" on a CPU, "wall" on a GPU.
    A CPU peak measured by the wall clock while other processes share the cores comes out low and
    puts MFU above 100 %; measured by CPU time it is the machine's ceiling, and contention shows as
    a lower MFU instead (the trainer's throughput is wall-clock)."""
    n = n or (8192 if device.type == "cuda" else 1024)
    if clock == "auto":
        clock = "cpu" if device.type != "cuda" else "wall"
    if clock not in ("wall", "cpu") or (clock == "cpu" and device.type == "cuda"):
        raise ValueError(f"clock must be 'wall', or 'cpu' on a CPU device, got {clock!r} on {device.type}")
    threads = max(1, torch.get_num_threads())

    def now() -> float:
        return time.process_time() / threads if clock == "cpu" else time.perf_counter()

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    a @ b
    sync()
    per = max(time.perf_counter() - t0, 1e-6)
    iters = max(1, int(seconds / per))
    best = 0.0
    for _ in range(repeats):
        t0 = now()
        for _ in range(iters):
            a @ b
        sync()
        best = max(best, 2 * n ** 3 * iters / max(now() - t0, 1e-9))
    return best


@functools.lru_cache(maxsize=None)
def _measured(device: torch.device, dtype: torch.dtype) -> float:
    return measure_matmul_flops(device, dtype)


def peak_flops(device: torch.device, dtype: torch.dtype, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from)."""
    if override:
        return float(override), "config"
    t = table_peak(device, dtype)
    if t is not None:
        return t, f"table ({torch.cuda.get_device_name(device)})"
    name = f"{device_name(device)}, {str(dtype).replace('torch.', '')} matmul"
    return _measured(device, dtype), f"measured ({name})"
