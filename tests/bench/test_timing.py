"""The timing harness: alternation, clean-sample selection and paired ratios (synthetic data, no timing asserts)."""
from types import SimpleNamespace

import pytest

from cart.bench import timing
from cart.bench.timing import Measurement, Timing, measure


def test_measure_alternates_and_counts(monkeypatch):
    clock = {"t": 0.0}

    def work(name, seconds):
        def run():
            calls.append(name)
            clock["t"] += seconds  # each call takes a known time on a fake clock
        return run

    calls = []
    monkeypatch.setitem(timing.CLOCKS, "wall", lambda: clock["t"])
    m = measure({"a": work("a", 1.0), "b": work("b", 3.0)}, repeats=3, warmup=1, max_rounds=3)
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls.count("a") == calls.count("b") == 1 + m.rounds
    assert calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]  # order rotates each round
    for name, t in m.timings.items():
        assert len(t.samples_s) == m.rounds and t.samples_s == [{"a": 1.0, "b": 3.0}[name]] * m.rounds
    assert m.paired_ratio("b", "a") == 3.0


def test_clean_samples_preferred():
    t = Timing("x", samples_s=[1.0, 5.0, 1.1, 9.0, 1.2], foreign_cores=[0.0, 1.5, 0.1, 1.2, 0.0], min_clean=3)
    assert not t.contended and t.median_s == 1.1
    t2 = Timing("x", samples_s=[1.0, 5.0, 9.0], foreign_cores=[0.0, 1.5, 1.2], min_clean=3)
    assert t2.contended and t2.median_s == 5.0  # too few clean samples: all of them


def test_paired_ratio_uses_same_round():
    a = Timing("a", samples_s=[2.0, 4.0, 6.0], foreign_cores=[0, 0, 0])
    b = Timing("b", samples_s=[1.0, 2.0, 3.0], foreign_cores=[0, 0, 0])
    assert Measurement({"a": a, "b": b}, 3).paired_ratio("a", "b") == 2.0
    c = Timing("c", samples_s=[1.0, 8.0, 2.0], foreign_cores=[0, 0, 0])
    m = Measurement({"a": a, "c": c}, 3)
    assert m.paired_ratios("a", "c") == [2.0, 0.5, 3.0] and m.paired_ratio("a", "c") == 2.0


def test_foreign_load_reading(monkeypatch):
    """cores = (machine busy time - this process's CPU time) / wall time, clamped at 0; None when /proc/stat is unreadable."""
    def readings(*values):
        it = iter(values)
        return lambda: next(it)

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=readings(100.0, 102.0)))
    monkeypatch.setattr(timing, "_sys_busy_s", readings(10.0, 10.9))  # the machine: 0.9 s busy
    monkeypatch.setattr(timing, "_own_cpu_s", readings(1.0, 1.3))  # of which this process: 0.3 s
    with timing.ForeignLoad() as fl:
        pass
    assert fl.wall == 2.0 and fl.cores == pytest.approx(0.3)
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=readings(100.0, 101.0)))
    monkeypatch.setattr(timing, "_sys_busy_s", readings(10.0, 10.01))  # one tick: less than this process's own CPU
    monkeypatch.setattr(timing, "_own_cpu_s", readings(1.0, 1.2))
    with timing.ForeignLoad() as fl:
        pass
    assert fl.cores == 0.0
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=readings(100.0, 101.0)))
    monkeypatch.setattr(timing, "_sys_busy_s", lambda: None)
    monkeypatch.setattr(timing, "_own_cpu_s", readings(1.0, 1.2))
    with timing.ForeignLoad() as fl:
        pass
    assert fl.cores is None
