"""Training throughput under load: the `load` suite of `cart bench`, reproducible because it starts
the competing load itself.

A child process (`python -m cart.bench.load --size main`) trains CART at one of the bench's shapes
with the trainer's process settings (cart imported before torch, so OpenMP's wait policy is what
`cart/runtime.py` chose, or what the child's environment says; the tuned allocator; torch's default
thread count) and reports the start and end of every step. The parent alternates phases: quiet,
then `n_busy` busy-looping processes (one per core by default: "two busy processes on two cores"),
quiet again, loaded again, and compares the median step time of the quiet and the loaded phases of
the same child. Each OpenMP wait policy runs in its own child (the policy is fixed when torch loads):
cart's default (PASSIVE) and OpenMP's own default (spin 300,000 times, then sleep) for contrast.

The fair share of a 2-core machine with two busy processes beside a 2-thread job is about one half
of the quiet speed; the target is one quarter.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time

from cart.runtime import WAIT_POLICY_VARS

POLICIES = {
    "cart_default": {},  # cart/runtime.py: OMP_WAIT_POLICY=PASSIVE
    "openmp_default": {"GOMP_SPINCOUNT": "300000"},  # libgomp's default spin count: what torch does without cart
}
BUSY_LOOP = "while True: pass"


def _child_env(policy_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARS and k != "OMP_NUM_THREADS"}
    env.update(policy_env)
    return env


class _Child:
    """The training child: a reader thread collects its per-step records."""

    def __init__(self, size: str, policy_env: dict, threads: int = 0):
        argv = [sys.executable, "-m", "cart.bench.load", "--size", size] + (["--threads", str(threads)] if threads else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=_child_env(policy_env))
        self.steps: list[tuple[float, float]] = []
        self.meta: dict | None = None
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "ready" in rec:
                self.meta = rec
                self.ready.set()
            elif "t0" in rec:
                self.steps.append((rec["t0"], rec["t1"]))
        self.ready.set()  # EOF: unblock a waiter (the child died or finished)

    def steps_after(self, t: float) -> list[float]:
        return [b - a for a, b in list(self.steps) if a >= t]

    def stop(self) -> str:
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.stderr.read() if self.proc.stderr else ""


def _phase(child: _Child, n_steps: int, timeout_s: float, settle_s: float) -> tuple[list[float], bool]:
    """Step times of the next n_steps steps that start settle_s after now (fewer on timeout)."""
    start = time.monotonic() + settle_s
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.proc.poll() is None:
        got = child.steps_after(start)
        if len(got) >= n_steps:
            return got[:n_steps], False
        time.sleep(0.05)
    got = child.steps_after(start)
    return got, True


def under_load(size: str = "main", policy_env: dict | None = None, n_busy: int | None = None, steps_per_phase: int = 4,
               rounds: int = 2, phase_timeout_s: float = 90.0, settle_s: float = 0.5, threads: int = 0) -> dict:
    """Median step time of one training child in quiet phases and in phases with n_busy busy
    processes, alternating, `rounds` times each. Returns the JSON-ready record."""
    from cart.bench.timing import ForeignLoad

    n_busy = n_busy if n_busy is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    child = _Child(size, policy_env or {}, threads)
    busy: list[subprocess.Popen] = []
    quiet, loaded, timed_out, background = [], [], False, []
    try:
        if not child.ready.wait(timeout=600) or child.meta is None:
            raise RuntimeError(f"the training child did not start: {child.stop()[-2000:]}")
        for _ in range(rounds):
            with ForeignLoad() as fl:
                q, t = _phase(child, steps_per_phase, phase_timeout_s, settle_s)
            background.append(fl.cores)
            quiet += q
            timed_out |= t
            busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n_busy)]
            try:
                lo, t = _phase(child, steps_per_phase, phase_timeout_s, settle_s)
            finally:
                for p in busy:
                    p.kill()
                for p in busy:
                    p.wait()
                busy = []
            loaded += lo
            timed_out |= t
    finally:
        for p in busy:
            p.kill()
        err = child.stop()
    if not quiet or not loaded:
        raise RuntimeError(f"no complete steps measured (quiet {len(quiet)}, loaded {len(loaded)}): {err[-2000:]}")
    q, lo = statistics.median(quiet), statistics.median(loaded)
    bg = [b for b in background if b is not None]
    return {"quiet_step_s": q, "loaded_step_s": lo, "throughput_ratio": q / lo, "n_quiet": len(quiet), "n_loaded": len(loaded),
            "quiet_samples_s": quiet, "loaded_samples_s": loaded, "timed_out": timed_out, "n_busy": n_busy,
            "background_cores_in_quiet_phases": statistics.median(bg) if bg else None, **(child.meta or {})}


# ---------------------------------------------------------------------------------------------
# the child


def _child(size_name: str, threads: int) -> int:
    import cart  # noqa: F401  (before torch: OpenMP's wait policy, as in a `cart train` process)
    import torch

    from cart.bench import suites
    from cart.model import build_model
    from cart.runtime import omp_wait_policy, set_threads, tune_allocator

    sizes = {"main": suites.MAIN_SIZES, "d256_bf16": suites.CPU_BF16_SIZES, "d256_fp32": suites.CPU_SIZES,
             "quick": suites.QUICK_BF16_SIZES}
    s = sizes[size_name]
    tune_allocator()
    set_threads(threads)
    torch.manual_seed(0)
    model = build_model(suites.contender_configs(s)["cart"])
    step = suites.make_train_step(model, s, torch.device("cpu"))
    step()
    print(json.dumps({"ready": True, "size": s.label(), "threads": torch.get_num_threads(),
                      "omp_wait_policy": omp_wait_policy()}), flush=True)
    while True:
        t0 = time.monotonic()
        step()
        print(json.dumps({"t0": t0, "t1": time.monotonic()}), flush=True)
        if select.select([sys.stdin], [], [], 0)[0]:
            return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cart.bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="main", choices=["main", "d256_bf16", "d256_fp32", "quick"])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    return _child(args.size, args.threads)


if __name__ == "__main__":
    sys.exit(main())
