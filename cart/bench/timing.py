"""Timing harness for `cart bench`: contenders measured in one process, alternating, with warm-up
and repeats; medians, minima and same-round (paired) ratios.

Shared machines: on a CPU that other processes also use, a 2-thread OpenMP program is slowed by
a large and erratic factor whenever another process holds a core (a thread waiting at a barrier
for its descheduled sibling). Every sample therefore records how much CPU *other* processes used
during it (Linux: /proc/stat minus this process's own CPU time; elsewhere unknown). A sample is
"clean" when that foreign load stays under `clean_threshold` cores; medians are taken over the
clean samples when there are enough of them, over all samples otherwise, and the result says
which (`contended`). Ratios between contenders are medians of per-round ratios (the two samples
of a round are seconds apart, so they share the machine's state), which are far more stable than
ratios of medians on a busy machine.

Clocks: "wall" (default; what a user waits for) or "cpu" (this process's CPU time). With ONE
thread, CPU time counts the work done and not the time another process held the core, so it gives
usable numbers on a machine that others keep busy; with more threads it also counts threads
spinning at barriers, so use it with one thread only.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


def _sys_busy_s() -> float | None:
    """Seconds of CPU time spent by the whole machine (all cores, user+system), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = sum(v) - v[3] - v[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class ForeignLoad:
    """Context manager measuring the CPU (in cores) other processes used while it was open."""

    def __enter__(self):
        self.t0, self.s0, self.o0 = time.perf_counter(), _sys_busy_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        s1 = _sys_busy_s()
        if self.s0 is None or s1 is None or self.wall <= 0:
            self.cores = None
        else:
            # /proc/stat ticks are 10 ms: a short window can read one tick of noise either way
            self.cores = max(0.0, ((s1 - self.s0) - (_own_cpu_s() - self.o0)) / self.wall)
        return False


@dataclass
class Timing:
    name: str
    samples_s: list[float] = field(default_factory=list)
    foreign_cores: list[float | None] = field(default_factory=list)
    clean_threshold: float = 0.25
    min_clean: int = 3

    def _clean_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.foreign_cores) if f is not None and f < self.clean_threshold]

    @property
    def used_idx(self) -> list[int]:
        clean = self._clean_idx()
        return clean if len(clean) >= self.min_clean else list(range(len(self.samples_s)))

    @property
    def contended(self) -> bool:
        return len(self._clean_idx()) < self.min_clean

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s[i] for i in self.used_idx)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    def summary(self) -> dict:
        fl = [f for f in self.foreign_cores if f is not None]
        return {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "n_samples": len(self.samples_s),
            "n_clean": len(self._clean_idx()),
            "contended": self.contended,
            "foreign_cores_median": statistics.median(fl) if fl else None,
        }


@dataclass
class Measurement:
    timings: dict[str, Timing]
    rounds: int

    def paired_ratios(self, num: str, den: str) -> list[float]:
        """time(num) / time(den) of each round, clean rounds only when there are enough."""
        a, b = self.timings[num], self.timings[den]
        n = min(len(a.samples_s), len(b.samples_s))
        ca, cb = set(a._clean_idx()), set(b._clean_idx())
        clean = [i for i in range(n) if i in ca and i in cb]
        idx = clean if len(clean) >= a.min_clean else list(range(n))
        return [a.samples_s[i] / b.samples_s[i] for i in idx]

    def paired_ratio(self, num: str, den: str) -> float:
        """Median over rounds of time(num) / time(den), using clean rounds when there are enough."""
        return statistics.median(self.paired_ratios(num, den))

    def summary(self) -> dict:
        return {k: t.summary() for k, t in self.timings.items()}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(
    contenders: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
    max_rounds: int | None = None,
    time_budget_s: float | None = None,
    clean_threshold: float = 0.25,
    clock: str = "wall",
) -> Measurement:
    """Run every contender `warmup` times, then in rounds (order rotated each round) until each has
    `repeats` clean samples, or `max_rounds` rounds (default 2 x repeats), or `time_budget_s`."""
    sync = sync or (lambda: None)
    now = CLOCKS[clock]
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
            sync()
    timings = {n: Timing(n, clean_threshold=clean_threshold, min_clean=min(3, repeats)) for n in names}
    max_rounds = max_rounds if max_rounds is not None else 2 * repeats
    start = time.perf_counter()
    r = 0
    while r < max(repeats, max_rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            with ForeignLoad() as fl:
                t0 = now()
                contenders[n]()
                sync()
                dt = now() - t0
            timings[n].samples_s.append(dt)
            timings[n].foreign_cores.append(fl.cores)
        r += 1
        if r >= repeats:
            enough = all(len(t._clean_idx()) >= repeats for t in timings.values())
            out_of_time = time_budget_s is not None and time.perf_counter() - start > time_budget_s
            if enough or out_of_time:
                break
    return Measurement(timings, r)


__all__ = ["CLOCKS", "ForeignLoad", "Timing", "Measurement", "measure"]

