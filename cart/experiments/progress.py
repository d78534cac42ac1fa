"""Where a study stands: per-stage run counts, running and failed runs, and the time left.

Experiment logic, kept out of the CLI (which only prints it): `progress(store, plan, stages)` and
`eta(store, names)` read the store and return plain data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from cart.experiments.plans import Plan, Stage, run_cost
from cart.experiments.store import Store

STATUSES = ("pending", "running", "done", "failed")


@dataclass
class Eta:
    worker_s: float   # training time left at the median pace, summed over runs
    workers: int      # workers running now (at least 1)
    finished: int     # finished runs the pace is measured on

    @property
    def wall_s(self) -> float:
        return self.worker_s / self.workers


def eta(store: Store, names: list[str]) -> Eta | None:
    """Remaining planned training at the pace of the finished runs (seconds per training FLOP, so big runs
    count more; the median, robust to a run that waited on a busy machine). Stages not yet planned are not
    counted. None before any training run has finished or when nothing is left."""
    rates = []
    for r in store.runs(names, status="done"):
        if r.kind != "train":
            continue
        att = [a for a in store.attempts(r.id) if a["outcome"] == "done" and a["ended_at"]]
        cost = run_cost(r.spec)
        if att and cost:
            rates.append((att[-1]["ended_at"] - att[-1]["started_at"]) / cost)
    todo = [r for r in store.runs(names) if r.status in ("pending", "running") and r.kind == "train"]
    if not rates or not todo:
        return None
    rate = sorted(rates)[len(rates) // 2]
    workers = max(1, len({r.worker for r in store.runs(names, status="running")}))
    return Eta(sum(run_cost(r.spec) for r in todo) * rate, workers, len(rates))


def progress(store: Store, plan: Plan, stages: list[Stage], now: float | None = None) -> dict:
    """{"stages": {name: {planned, runs, pending, running, done, failed, waits_for}}, "running": [...],
    "failed": [...], "eta": Eta | None} for the selected stages."""
    now = time.time() if now is None else now
    names = [s.name for s in stages]
    out: dict = {"stages": {}}
    for st in stages:
        members = store.members(st.name)
        c = {k: 0 for k in STATUSES}
        for m in members:
            c[m["status"]] += 1
        out["stages"][st.name] = {"planned": store.stage_expanded(st.name) is not None, "runs": len(members), **c,
                                  "waits_for": list(plan.stages[st.name].after)}
    out["running"] = [{"run": r.name, "worker": r.worker, "attempt": r.attempts, "heartbeat_age_s": now - (r.heartbeat_at or now),
                       "lease_expired": bool(r.lease_until and r.lease_until < now)}
                      for r in store.runs(names, status="running")]
    out["failed"] = [{"run": r.name, "failures": r.failures, "error": r.error} for r in store.runs(names, status="failed")]
    out["eta"] = eta(store, names)
    return out


__all__ = ["Eta", "eta", "progress"]
