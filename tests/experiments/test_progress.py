"""Study progress and the time left, as data (the CLI only prints them)."""
import time

import pytest

from cart.experiments.plans import parse_plan
from cart.experiments.progress import eta, progress
from cart.experiments.store import Store

from .conftest import make_study


def test_progress_counts_and_eta_from_the_pace_of_finished_runs(tmp_path):
    make_study(tmp_path, 4, stage="s")
    plan = parse_plan({"tier": "test", "metric": "m", "stage": {"s": {"kind": "grid", "grid": {"d_model": [64]}},
                                                               "t": {"kind": "grid", "derive": {"from": "s"}, "grid": {}}}})
    with Store(tmp_path) as s:
        assert eta(s, ["s"]) is None  # nothing finished yet: no pace
        run = s.claim("w1", 60)
        with s.transaction() as db:  # this attempt took 100 s
            db.execute("UPDATE attempts SET started_at = started_at - 100 WHERE run_id = ?", (run.id,))
        assert s.finish(run, summary={}, finals={}, metrics=[])
        s.claim("w1", 60)
        p = progress(s, plan, list(plan.stages.values()), now=time.time())
        assert p["stages"]["s"] == {"planned": True, "runs": 4, "pending": 2, "running": 1, "done": 1, "failed": 0, "waits_for": []}
        assert p["stages"]["t"]["planned"] is False and p["stages"]["t"]["waits_for"] == ["s"]
        assert [r["worker"] for r in p["running"]] == ["w1"] and p["failed"] == []
        e = p["eta"]
        # the three runs left cost what the finished one cost, per training FLOP (the same recipe here)
        from cart.experiments.plans import run_cost
        costs = [run_cost(r.spec) for r in s.runs(["s"])]
        assert e.finished == 1 and e.workers == 1
        assert e.worker_s == pytest.approx(100 / costs[0] * sum(costs[1:]), rel=0.02)
