"""The results store of one study: an embedded SQLite database (`<study>/study.db`).

Notable features:
- a run is identified by the hash of everything that determines its outcome (model config,
  training recipe, seed, evaluation arguments); `runs.key` is UNIQUE, so a configuration that two
  stages share (e.g. the ablation baseline and a Stage 2 cell) is trained once and recorded once;
- stages point at runs through `members` (UNIQUE per stage and label), so which run plays which
  role in which stage is recorded, flags and all (SPEC §6.7: ablation flags were not recorded);
- runs are claimed in one `BEGIN IMMEDIATE` transaction, so two workers never get the same run;
  a claim is a lease renewed by heartbeats, and a run whose lease expired (its worker was killed)
  returns to `pending`, to be resumed from its checkpoint by the next attempt (SPEC §6.7: runs
  left "running" after a crash);
- every write of a finishing attempt is fenced by (worker, attempt number): a worker that lost
  its lease can no longer record anything;
- metrics are keyed by (run, step, event, name) and upserted, so a resumed run that logs a step
  again replaces it rather than duplicating it (SPEC §6.7: rows duplicated on resume);
- WAL mode, a busy timeout, and parameterised SQL everywhere; export to CSV and JSON.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from cart.paths import atomic_output

SCHEMA_VERSION = 1
DB_NAME = "study.db"
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    key           TEXT NOT NULL UNIQUE,            -- config hash: sha256 of the canonical spec
    name          TEXT NOT NULL UNIQUE,            -- human-readable, also the run directory name
    kind          TEXT NOT NULL CHECK (kind IN ('train', 'eval')),
    spec          TEXT NOT NULL,                   -- full JSON spec (model, recipe, seed, eval args)
    tier          TEXT NOT NULL,
    plan          TEXT NOT NULL,                   -- the stage that first asked for this run
    seed          INTEGER,
    priority      INTEGER NOT NULL DEFAULT 0,      -- lower runs first
    status        TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,      -- claims so far; also the fencing token of the current one
    failures      INTEGER NOT NULL DEFAULT 0,      -- failed or lost attempts (bounded by max_failures)
    max_failures  INTEGER NOT NULL DEFAULT 3,
    worker        TEXT,
    heartbeat_at  REAL,
    lease_until   REAL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    code_version  TEXT,
    run_dir       TEXT,
    checkpoint    TEXT,
    error         TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, priority, id);
CREATE TABLE IF NOT EXISTS stages (
    name         TEXT PRIMARY KEY,
    expanded_at  REAL NOT NULL,
    definition   TEXT NOT NULL,                    -- the stage as planned (JSON)
    derivation   TEXT                              -- what a derived stage chose, and why (JSON)
);
CREATE TABLE IF NOT EXISTS members (
    stage   TEXT NOT NULL,
    label   TEXT NOT NULL,
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    tags    TEXT NOT NULL,                         -- JSON: width, P, R, variant, target ...
    UNIQUE (stage, label)
);
CREATE INDEX IF NOT EXISTS members_run ON members (run_id);
CREATE TABLE IF NOT EXISTS attempts (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    attempt     INTEGER NOT NULL,
    worker      TEXT NOT NULL,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    outcome     TEXT,                              -- done | failed | lost | interrupted | busy
    returncode  INTEGER,
    error       TEXT,
    code_version TEXT,
    UNIQUE (run_id, attempt)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    step    INTEGER NOT NULL,
    event   TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   REAL,
    UNIQUE (run_id, step, event, name)
);
CREATE TABLE IF NOT EXISTS finals (
    run_id  INTEGER NOT NULL REFERENCES runs (id),
    name    TEXT NOT NULL,                         -- e.g. ppl.wiki, loss.wiki, rho_gate, vary_r.4.ppl.wiki
    value   REAL,
    UNIQUE (run_id, name)
);
CREATE TABLE IF NOT EXISTS results (
    run_id       INTEGER PRIMARY KEY REFERENCES runs (id),
    summary      TEXT NOT NULL,                    -- the run's own summary JSON, verbatim
    recorded_at  REAL NOT NULL
);
"""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def spec_key(spec: dict) -> str:
    """The config hash: sha256 of the canonical JSON of everything that determines a run."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Nested dict -> {"a.b.c": number}; non-numeric leaves are dropped, lists indexed."""
    out: dict[str, float] = {}
    items = d.items() if isinstance(d, dict) else enumerate(d)
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, bool):
            out[name] = float(v)
        elif isinstance(v, (int, float)):
            out[name] = float(v) if math.isfinite(v) else None  # type: ignore[assignment]
        elif isinstance(v, (dict, list, tuple)):
            out.update(flatten(v, name + "."))
    return out


def _nan_if_null(v):
    return float("nan") if v is None else v


@dataclass
class Run:
    id: int
    key: str
    name: str
    kind: str
    spec: dict
    tier: str
    plan: str
    seed: int | None
    status: str
    attempts: int
    failures: int
    max_failures: int
    worker: str | None = None
    heartbeat_at: float | None = None
    lease_until: float | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    code_version: str | None = None
    run_dir: str | None = None
    checkpoint: str | None = None
    error: str | None = None
    priority: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        d = dict(row)
        d["spec"] = json.loads(d["spec"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class StudyMismatch(ValueError):
    pass


class Store:
    """One study's database. Open one per thread or process (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0):
        path = Path(path)
        if path.is_dir() or path.suffix != ".db":
            path = path / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: autocommit; transactions are explicit (BEGIN IMMEDIATE) below
        self.db = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(_SCHEMA)  # CREATE ... IF NOT EXISTS: idempotent, safe from several processes
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so read-then-write is atomic across processes."""
        for attempt in range(50):
            try:
                self.db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:  # busy beyond busy_timeout: rare, retry
                if "locked" not in str(e) or attempt == 49:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ study identity
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def bind(self, **values: str) -> None:
        """Record study-wide facts (tier, plan file); refuse to mix a study with another tier."""
        with self.transaction() as db:
            for k, v in values.items():
                row = db.execute("SELECT value FROM meta WHERE key = ?", (k,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (k, str(v)))
                elif row["value"] != str(v):
                    raise StudyMismatch(f"{self.path}: this study was created with {k}={row['value']!r}, not {v!r}; "
                                        f"use another --study directory")

    def set_meta_default(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    # ------------------------------------------------------------------ planning
    def stage_expanded(self, stage: str) -> dict | None:
        row = self.db.execute("SELECT * FROM stages WHERE name = ?", (stage,)).fetchone()
        if row is None:
            return None
        return {"name": row["name"], "expanded_at": row["expanded_at"], "definition": json.loads(row["definition"]),
                "derivation": json.loads(row["derivation"]) if row["derivation"] else None}

    def add_stage(self, stage: str, definition: dict, derivation: dict | None,
                  members: list[tuple[str, dict, "RunRequest"]]) -> bool:
        """Insert a stage and its runs in one transaction. Returns False if another process got there first.

        members: (label, tags, request). A request whose key already exists reuses that run.
        """
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM stages WHERE name = ?", (stage,)).fetchone():
                return False
            now = time.time()
            for label, tags, req in members:
                run_id = self._insert_run(db, req, stage, now)
                row = db.execute("SELECT run_id FROM members WHERE stage = ? AND label = ?", (stage, label)).fetchone()
                if row is not None and row["run_id"] != run_id:
                    raise StudyMismatch(f"stage {stage!r} label {label!r} already names another run; labels must be unique")
                db.execute("INSERT OR IGNORE INTO members (stage, label, run_id, tags) VALUES (?, ?, ?, ?)",
                           (stage, label, run_id, canonical_json(tags)))
            db.execute("INSERT INTO stages (name, expanded_at, definition, derivation) VALUES (?, ?, ?, ?)",
                       (stage, now, canonical_json(definition), canonical_json(derivation) if derivation is not None else None))
        return True

    def _insert_run(self, db: sqlite3.Connection, req: "RunRequest", stage: str, now: float) -> int:
        key = spec_key(req.spec)
        db.execute(
            "INSERT INTO runs (key, name, kind, spec, tier, plan, seed, priority, max_failures, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (key, f"{req.name}-{key[:8]}", req.kind, canonical_json(req.spec), req.tier, stage, req.seed,
             req.priority, req.max_failures, now),
        )
        return db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()["id"]

    # ------------------------------------------------------------------ claiming and leases
    def _expire_leases(self, db: sqlite3.Connection, now: float) -> None:
        """Runs whose worker stopped heartbeating go back to pending (or fail if out of retries)."""
        for row in db.execute("SELECT id, attempts, failures, max_failures, worker FROM runs "
                              "WHERE status = 'running' AND lease_until < ?", (now,)).fetchall():
            failures = row["failures"] + 1
            status = "failed" if failures >= row["max_failures"] else "pending"
            msg = f"lease expired: worker {row['worker']} stopped heartbeating (killed?) during attempt {row['attempts']}"
            db.execute("UPDATE runs SET status = ?, failures = ?, worker = NULL, lease_until = NULL, error = ? "
                       "WHERE id = ? AND status = 'running' AND attempts = ?",
                       (status, failures, msg, row["id"], row["attempts"]))
            db.execute("UPDATE attempts SET ended_at = ?, outcome = 'lost', error = ? WHERE run_id = ? AND attempt = ?",
                       (now, msg, row["id"], row["attempts"]))

    def claim(self, worker: str, lease_s: float, code_version: str | None = None,
              stages: Iterable[str] | None = None) -> Run | None:
        """Atomically take the next pending run (optionally only members of `stages`)."""
        with self.transaction() as db:
            now = time.time()
            self._expire_leases(db, now)
            sql = "SELECT id FROM runs WHERE status = 'pending'"
            args: list = []
            if stages is not None:
                stages = list(stages)
                sql += f" AND id IN (SELECT run_id FROM members WHERE stage IN ({','.join('?' * len(stages))}))"
                args += stages
            row = db.execute(sql + " ORDER BY priority, id LIMIT 1", args).fetchone()
            if row is None:
                return None
            run_id = row["id"]
            db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, worker = ?, heartbeat_at = ?, "
                       "lease_until = ?, started_at = COALESCE(started_at, ?), code_version = ?, error = NULL "
                       "WHERE id = ? AND status = 'pending'",
                       (worker, now, now + lease_s, now, code_version, run_id))
            run = Run.from_row(db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
            db.execute("INSERT INTO attempts (run_id, attempt, worker, started_at, code_version) VALUES (?, ?, ?, ?, ?)",
                       (run_id, run.attempts, worker, now, code_version))
            return run

    def heartbeat(self, run: Run, lease_s: float) -> bool:
        """Renew the lease. False means the run is no longer ours (lease expired and reclaimed)."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute("UPDATE runs SET heartbeat_at = ?, lease_until = ? "
                             "WHERE id = ? AND status = 'running' AND worker = ? AND attempts = ?",
                             (now, now + lease_s, run.id, run.worker, run.attempts))
            return cur.rowcount == 1

    def set_run_dir(self, run: Run, run_dir: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET run_dir = ? WHERE id = ?", (run_dir, run.id))

    def _owned(self, db: sqlite3.Connection, run: Run) -> bool:
        row = db.execute("SELECT status, worker, attempts FROM runs WHERE id = ?", (run.id,)).fetchone()
        return row is not None and row["status"] == "running" and row["worker"] == run.worker and row["attempts"] == run.attempts

    def finish(self, run: Run, *, summary: dict, finals: dict[str, float], metrics: list[tuple[int, str, str, float]],
               checkpoint: str | None = None, returncode: int = 0) -> bool:
        """Record a successful attempt: results, finals and metrics, all or nothing. Fenced."""
        with self.transaction() as db:
            if not self._owned(db, run):
                return False
            now = time.time()
            db.executemany("INSERT INTO metrics (run_id, step, event, name, value) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (run_id, step, event, name) DO UPDATE SET value = excluded.value",
                           [(run.id, int(s), e, n, v) for s, e, n, v in metrics])
            db.executemany("INSERT INTO finals (run_id, name, value) VALUES (?, ?, ?) "
                           "ON CONFLICT (run_id, name) DO UPDATE SET value = excluded.value",
                           [(run.id, n, v) for n, v in finals.items()])
            db.execute("INSERT INTO results (run_id, summary, recorded_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (run_id) DO UPDATE SET summary = excluded.summary, recorded_at = excluded.recorded_at",
                       (run.id, canonical_json(summary), now))
            db.execute("UPDATE runs SET status = 'done', finished_at = ?, worker = NULL, lease_until = NULL, "
                       "checkpoint = ?, error = NULL WHERE id = ?", (now, checkpoint, run.id))
            db.execute("UPDATE attempts SET ended_at = ?, outcome = 'done', returncode = ? WHERE run_id = ? AND attempt = ?",
                       (now, returncode, run.id, run.attempts))
            return True

    def fail(self, run: Run, error: str, returncode: int | None = None, count: bool = True, outcome: str = "failed") -> bool:
        """Record a failed attempt. The run goes back to pending until it has failed max_failures times.

        count=False (interrupted by the user, run directory busy) returns it to pending without
        spending a retry."""
        with self.transaction() as db:
            if not self._owned(db, run):
                return False
            now = time.time()
            row = db.execute("SELECT failures, max_failures FROM runs WHERE id = ?", (run.id,)).fetchone()
            failures = row["failures"] + (1 if count else 0)
            status = "failed" if count and failures >= row["max_failures"] else "pending"
            db.execute("UPDATE runs SET status = ?, failures = ?, worker = NULL, lease_until = NULL, error = ?, "
                       "finished_at = CASE WHEN ? = 'failed' THEN ? ELSE finished_at END WHERE id = ?",
                       (status, failures, error, status, now, run.id))
            db.execute("UPDATE attempts SET ended_at = ?, outcome = ?, returncode = ?, error = ? WHERE run_id = ? AND attempt = ?",
                       (now, outcome, returncode, error, run.id, run.attempts))
            return True

    def retry_failed(self, stages: Iterable[str] | None = None) -> int:
        """Give failed runs a fresh set of retries (`cart sweep run --retry-failed`)."""
        with self.transaction() as db:
            sql = "UPDATE runs SET status = 'pending', failures = 0 WHERE status = 'failed'"
            args: list = []
            if stages is not None:
                stages = list(stages)
                sql += f" AND id IN (SELECT run_id FROM members WHERE stage IN ({','.join('?' * len(stages))}))"
                args = stages
            return db.execute(sql, args).rowcount

    def record_external(self, run: Run, worker: str, **kw) -> bool:
        """Record the result of a run executed outside the orchestrator (e.g. a SLURM array task)."""
        claimed = None
        with self.transaction() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run.id,)).fetchone()
            if row["status"] == "done":
                return False
            now = time.time()
            db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, worker = ?, lease_until = ? WHERE id = ?",
                       (worker, now + 60, run.id))
            claimed = Run.from_row(db.execute("SELECT * FROM runs WHERE id = ?", (run.id,)).fetchone())
            db.execute("INSERT INTO attempts (run_id, attempt, worker, started_at) VALUES (?, ?, ?, ?)",
                       (run.id, claimed.attempts, worker, now))
        return self.finish(claimed, **kw)

    # ------------------------------------------------------------------ queries
    def runs(self, stages: Iterable[str] | None = None, status: str | None = None) -> list[Run]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if stages is not None:
            stages = list(stages)
            sql += f" AND id IN (SELECT run_id FROM members WHERE stage IN ({','.join('?' * len(stages))}))"
            args += stages
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [Run.from_row(r) for r in self.db.execute(sql + " ORDER BY priority, id", args)]

    def run(self, run_id: int) -> Run:
        return Run.from_row(self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())

    def run_by_key(self, key: str) -> Run | None:
        """The run with this spec hash (an evaluation's `of`), or None."""
        row = self.db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else Run.from_row(row)

    def members(self, stage: str | None = None) -> list[dict]:
        sql = ("SELECT m.stage, m.label, m.tags, r.id AS run_id, r.name, r.status, r.seed, r.kind "
               "FROM members m JOIN runs r ON r.id = m.run_id")
        args: tuple = ()
        if stage is not None:
            sql += " WHERE m.stage = ?"
            args = (stage,)
        out = []
        for row in self.db.execute(sql + " ORDER BY m.rowid", args):
            d = dict(row)
            d["tags"] = json.loads(d["tags"])
            out.append(d)
        return out

    def finals(self, run_ids: Iterable[int] | None = None) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        sql, args = "SELECT run_id, name, value FROM finals", []
        if run_ids is not None:
            ids = list(run_ids)
            if not ids:
                return {}
            sql += f" WHERE run_id IN ({','.join('?' * len(ids))})"
            args = ids
        for row in self.db.execute(sql, args):
            out.setdefault(row["run_id"], {})[row["name"]] = row["value"]
        return out

    def metrics(self, run_id: int, name: str, event: str | None = None) -> list[tuple[int, float]]:
        sql, args = "SELECT step, value FROM metrics WHERE run_id = ? AND name = ?", [run_id, name]
        if event is not None:
            sql += " AND event = ?"
            args.append(event)
        # SQLite has no NaN: a non-finite value (a skipped step's loss) is stored as NULL and read back as NaN
        return [(r["step"], _nan_if_null(r["value"])) for r in self.db.execute(sql + " ORDER BY step", args)]

    def metric_names(self, run_id: int) -> list[tuple[str, str]]:
        return [(r["event"], r["name"]) for r in
                self.db.execute("SELECT DISTINCT event, name FROM metrics WHERE run_id = ? ORDER BY event, name", (run_id,))]

    def summary(self, run_id: int) -> dict | None:
        row = self.db.execute("SELECT summary FROM results WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else json.loads(row["summary"])

    def summaries(self) -> dict[int, dict]:
        """Every recorded result summary, by run id."""
        return {r["run_id"]: json.loads(r["summary"]) for r in self.db.execute("SELECT run_id, summary FROM results")}

    def attempts(self, run_id: int | None = None) -> list[dict]:
        sql, args = "SELECT * FROM attempts", ()
        if run_id is not None:
            sql, args = sql + " WHERE run_id = ?", (run_id,)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY run_id, attempt", args)]

    def counts(self, stages: Iterable[str] | None = None) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for r in self.runs(stages):
            c[r.status] += 1
        return c

    # ------------------------------------------------------------------ export
    def table(self, stages: Iterable[str] | None = None) -> list[dict]:
        """One row per (stage, label): the run's identity, flags and tags, and its final metrics."""
        stages = list(stages) if stages is not None else None
        runs = {r.id: r for r in self.runs(stages)}
        finals = self.finals(runs)
        rows = []
        for m in self.members():
            if stages is not None and m["stage"] not in stages:
                continue
            r = runs.get(m["run_id"])
            if r is None:
                continue
            row: dict[str, Any] = {"stage": m["stage"], "label": m["label"], "run": r.name, "run_key": r.key, "kind": r.kind,
                                   "status": r.status, "seed": r.seed, "attempts": r.attempts, "failures": r.failures,
                                   "code_version": r.code_version, "checkpoint": r.checkpoint}
            row.update({f"tag.{k}": v for k, v in m["tags"].items()})
            model = r.spec.get("model") or {}
            row.update({f"model.{k}": v for k, v in model.items()})
            row.update({f"train.{k}": v for k, v in (r.spec.get("train") or {}).items()
                        if not isinstance(v, (dict, list))})
            row.update(finals.get(r.id, {}))
            rows.append(row)
        return rows

    def export(self, out: str | Path, fmt: str = "csv", stages: Iterable[str] | None = None) -> Path:
        if fmt not in ("csv", "json"):
            raise ValueError(f"export format must be 'csv' or 'json', got {fmt!r}")
        rows = self.table(stages)
        out = Path(out)
        with atomic_output(out) as tmp:  # an existing file is replaced only by a complete export
            if fmt == "json":
                payload = {"study": {k: self.meta(k) for k in ("tier", "plan_source")}, "runs": rows}
                tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
            else:
                cols: list[str] = []
                for r in rows:
                    cols += [k for k in r if k not in cols]
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=cols)
                    w.writeheader()
                    w.writerows(rows)
        return out

    def export_metrics(self, out: str | Path, stages: Iterable[str] | None = None) -> Path:
        """Long-format CSV (gzipped if the name ends in .gz) of every logged metric: run, step, event, name, value."""
        ids = [r.id for r in self.runs(stages)]
        names = {r.id: r.name for r in self.runs(stages)}
        out = Path(out)
        with atomic_output(out) as tmp:
            opener = (lambda: gzip.open(tmp, "wt", newline="")) if out.suffix == ".gz" else (lambda: open(tmp, "w", newline=""))
            with opener() as f:
                w = csv.writer(f)
                w.writerow(["run", "step", "event", "name", "value"])
                for i in ids:
                    for row in self.db.execute("SELECT step, event, name, value FROM metrics WHERE run_id = ? ORDER BY step, event, name", (i,)):
                        w.writerow([names[i], row["step"], row["event"], row["name"], _nan_if_null(row["value"])])
        return out


@dataclass
class RunRequest:
    """What a plan asks for: a run's spec (hashed into its key) plus scheduling facts."""
    name: str
    kind: str  # "train" | "eval"
    spec: dict
    tier: str
    seed: int | None
    priority: int = 0
    max_failures: int = 3

    @property
    def key(self) -> str:
        return spec_key(self.spec)


def open_store(study: str | Path) -> Store:
    return Store(Path(study))


__all__ = ["Store", "Run", "RunRequest", "StudyMismatch", "spec_key", "canonical_json", "flatten", "open_store", "DB_NAME"]
