"""The timing harness: alternation, clean-sample selection and paired ratios (synthetic data, no timing asserts)."""
import itertools

from cart.bench import timing
from cart.bench.timing import Measurement, Timing, measure


def test_measure_alternates_and_counts():
    calls = []
    m = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1, max_rounds=3)
    assert calls[:2] == ["a", "b"]  # warm-up
    assert calls.count("a") == calls.count("b") == 1 + m.rounds
    assert calls[2:4] == ["a", "b"] and calls[4:6] == ["b", "a"]  # order rotates each round
    for t in m.timings.values():
        assert len(t.samples_s) == m.rounds and t.median_s >= 0


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
    ticks = itertools.count(0, 50)  # the machine's busy time grows 0.5 s per read
    monkeypatch.setattr(timing, "_sys_busy_s", lambda: next(ticks) / 100)
    with timing.ForeignLoad() as fl:
        pass
    assert fl.cores is None or fl.cores >= 0
    monkeypatch.setattr(timing, "_sys_busy_s", lambda: None)
    with timing.ForeignLoad() as fl:
        pass
    assert fl.cores is None
