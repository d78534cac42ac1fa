"""The results store: atomic claims, leases, fencing, dedupe, upserts, export."""
import json
import multiprocessing as mp
import time
from types import SimpleNamespace

import cart.experiments.store as store_mod
from cart.experiments.store import Store, spec_key

from .conftest import make_study, request


def _claim_all(path, name, q):
    s = Store(path)
    got = []
    while True:
        r = s.claim(name, lease_s=60)
        if r is None:
            break
        got.append(r.id)
        s.finish(r, summary={}, finals={}, metrics=[])
    q.put(got)


def test_concurrent_claims_never_overlap(tmp_path):
    make_study(tmp_path, 24)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(tmp_path, f"w{i}", q)) for i in range(4)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    ids = [i for g in got for i in g]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 24
    with Store(tmp_path) as s:
        assert s.counts() == {"pending": 0, "running": 0, "done": 24, "failed": 0}
        assert all(a["outcome"] == "done" for a in s.attempts()) and len(s.attempts()) == 24


def test_same_config_is_one_run_and_labels_are_members(tmp_path):
    make_study(tmp_path, 3)
    with Store(tmp_path) as s:
        r = request(0)
        assert s.add_stage("other", {"kind": "grid"}, None, [("again", {}, r)])
        assert not s.add_stage("other", {"kind": "grid"}, None, [("again", {}, r)])  # a stage is planned once
        assert len(s.runs()) == 3
        assert [m["run_id"] for m in s.members("other")] == [s.runs()[0].id]
        assert s.runs()[0].key == spec_key(r.spec)


def test_lease_expiry_returns_run_and_fences_the_old_worker(tmp_path, monkeypatch):
    make_study(tmp_path, 1, max_failures=3)
    clock = {"now": time.time()}
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(time=lambda: clock["now"], sleep=time.sleep))  # the store's clock, by hand
    with Store(tmp_path) as s:
        old = s.claim("old", lease_s=30)
        clock["now"] += 29
        assert s.claim("new", lease_s=60) is None  # 1 s of lease left: nothing to take
        clock["now"] += 2
        new = s.claim("new", lease_s=60)  # the expired lease is taken back first
        assert new is not None and new.id == old.id and new.attempts == 2
        assert not s.heartbeat(old, 60)
        assert not s.finish(old, summary={}, finals={"x": 1.0}, metrics=[])  # fenced: records nothing
        assert s.finals() == {}
        assert s.finish(new, summary={"ok": 1}, finals={"x": 2.0}, metrics=[])
        att = s.attempts(old.id)
        assert [a["outcome"] for a in att] == ["lost", "done"]
        assert s.run(old.id).failures == 1 and s.run(old.id).status == "done"


def test_failures_are_bounded(tmp_path):
    make_study(tmp_path, 1, max_failures=2)
    with Store(tmp_path) as s:
        r = s.claim("w", 60)
        assert s.fail(r, "boom 1", returncode=1)
        assert s.run(r.id).status == "pending"
        r = s.claim("w", 60)
        assert s.fail(r, "boom 2", returncode=1)
        assert s.run(r.id).status == "failed" and s.run(r.id).error == "boom 2"
        assert s.claim("w", 60) is None
        r2 = None
        # an interruption does not spend a retry
        assert s.retry_failed() == 1
        r2 = s.claim("w", 60)
        assert s.fail(r2, "stopped", count=False, outcome="interrupted")
        assert s.run(r2.id).status == "pending" and s.run(r2.id).failures == 0


def test_metrics_upsert_keeps_one_row_per_step(tmp_path):
    """A resumed run logs steps again: one row per (step, event, name), the last value kept."""
    make_study(tmp_path, 1)
    with Store(tmp_path) as s:
        r = s.claim("w", 60)
        rows = [(1, "train", "loss", 5.0), (2, "train", "loss", 4.0), (2, "train", "loss", 3.9), (3, "train", "loss", 3.0)]
        assert s.finish(r, summary={}, finals={"ppl.a": 9.0}, metrics=rows)
        assert s.metrics(r.id, "loss") == [(1, 5.0), (2, 3.9), (3, 3.0)]


def test_export_csv_and_json(tmp_path):
    make_study(tmp_path, 2)
    with Store(tmp_path) as s:
        r = s.claim("w", 60)
        s.finish(r, summary={}, finals={"ppl.a": 9.0}, metrics=[])
        s.export(tmp_path / "r.csv", "csv")
        s.export(tmp_path / "r.json", "json")
    text = (tmp_path / "r.csv").read_text().splitlines()
    assert len(text) == 3 and "ppl.a" in text[0] and "model.freeze_kv" in text[0]
    rows = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert {r["status"] for r in rows} == {"done", "pending"}


def test_tier_mismatch_is_refused(tmp_path):
    import pytest
    from cart.experiments.store import StudyMismatch
    with Store(tmp_path) as s:
        s.bind(tier="cpu")
        with pytest.raises(StudyMismatch, match="tier"):
            s.bind(tier="paper")
