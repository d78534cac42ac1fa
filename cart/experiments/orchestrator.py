"""Run a study's pending runs: claim atomically, execute each in a subprocess, record the outcome.

Notable features:
- every run executes in its own subprocess (`cart train --config run.json --resume`, or an
  evaluation command), so a worker that dies loses nothing but time: its lease expires, the run
  returns to `pending`, and the next attempt resumes from the checkpoint in the run directory;
- on Linux each child is started with PR_SET_PDEATHSIG, so a SIGKILLed worker takes its child
  with it, and the child holds an flock on its run directory, so even an orphan that survived on
  another platform can never share a run directory with a second attempt;
- heartbeats renew the lease while the child runs; a worker that finds its lease taken (it was
  suspended past expiry) kills its child and records nothing (writes are fenced by attempt);
- failures (non-zero exit, no summary) are recorded with the tail of the run's log and retried
  up to the run's bound; SIGINT/SIGTERM to the sweep forward SIGTERM to the children (the trainer
  checkpoints on SIGTERM) and return their runs to pending without spending a retry;
- the command is a parameter (`command(run, run_dir) -> argv`), so tests use a trivial fake
  runner, clusters can wrap it (e.g. in torchrun), and `print_commands` emits the same commands
  for external schedulers (SLURM arrays), with `collect` to record what they produced;
- workers call `refill` when they run dry, which expands any derived stage whose inputs are now
  complete (Stage 2 from Stage 1, the variable-R evaluation from the best model).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

from cart import provenance
from cart.paths import contained
from cart.experiments.store import Run, Store, flatten

try:  # POSIX only; elsewhere PDEATHSIG/flock are skipped and leases alone guard a run
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

Command = Callable[[Run, Path], list]
Refill = Callable[[Store], int]

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
RUN_JSON = "run.json"
EVAL_JSON = "eval.json"
LOCK = ".lock"

# Started in front of every child on Linux: die with the worker (PR_SET_PDEATHSIG = 1), and
# refuse to start if the worker already died between fork and prctl. No `cart` import: fast.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(75)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
# `python -m cart.cli` needs a cart/cli/__main__.py; this works whether or not it exists.
CART_MAIN = "import sys; from cart.cli import main; sys.exit(main())"


def cart_argv(*args: str) -> list[str]:
    """argv that runs `cart ARGS...` with this interpreter."""
    return [sys.executable, "-c", CART_MAIN, *args]


def source_hash() -> str:
    """sha256 (12 hex) of every .py file of the package: tells apart runs made by different code even
    when the changes are uncommitted (git describe only says "-dirty")."""
    return provenance.source_hash(provenance.PACKAGE.rglob("*.py"))[:12]


def code_version() -> str:
    """git describe of the code (with -dirty if modified) and the source hash, e.g. `d2598a7-dirty+src.3fa9c1e2b7d0`."""
    git = provenance.git_describe()  # read per claim: a long sweep sees edits made while it runs
    if git is None:
        import cart
        git = f"cart-{cart.__version__}"
    return f"{git}+src.{source_hash()}"


def run_dir_for(study: Path, run: Run) -> Path:
    """`<study>/runs/<run name>`, the name checked and the directory proved to lie inside the study."""
    return contained(Path(study) / "runs", run.name, what="run name")


# ---------------------------------------------------------------------- the default commands
def materialize(run: Run, run_dir: Path, store: Store | None = None) -> Path:
    """Write the run's input file into its directory (idempotent) and return it.

    train: run.json = the trainer's config (recipe + model + seed + out_dir);
    eval:  eval.json request = the spec with the evaluated run's directory resolved."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if run.kind == "train":
        cfg = dict(run.spec["train"])
        cfg["model"] = run.spec["model"]
        cfg["seed"] = run.spec["seed"]
        cfg["out_dir"] = str(run_dir.resolve())
        if isinstance(cfg.get("data"), str) and cfg["data"] and not os.path.isabs(cfg["data"]):
            cfg["data"] = str(Path(cfg["data"]).resolve())  # the hashed spec keeps it relative
        path = run_dir / RUN_JSON
    else:
        cfg = dict(run.spec)
        if store is not None:
            target = store.run_by_key(run.spec["of"])
            if target is None or not target.run_dir:
                raise RuntimeError(f"{run.name}: the run it evaluates ({run.spec['of'][:8]}) has no run directory yet")
            cfg["of_dir"] = target.run_dir
        path = run_dir / "request.json"
    text = json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def default_command(run: Run, run_dir: Path, store: Store | None = None) -> list[str]:
    """`cart train --config run.json --out-dir DIR --resume`, or `cart eval vary-r|tasks ...` for eval runs."""
    path = materialize(run, run_dir, store)
    if run.kind == "train":
        return cart_argv("train", "--config", str(path.resolve()), "--out-dir", str(run_dir.resolve()), "--resume")
    spec = run.spec
    if spec["eval"] == "vary_r":
        req = json.loads(path.read_text())
        args = ["eval", "vary-r", req["of_dir"], "--loops", ",".join(str(r) for r in spec["loops"]),
                "--out", str((run_dir / EVAL_JSON).resolve())]
        for k, v in sorted((spec.get("args") or {}).items()):
            args += [f"--{k.replace('_', '-')}", str(v)]
        return cart_argv(*args)
    if spec["eval"] == "tasks":
        req = json.loads(path.read_text())
        args = ["eval", "tasks", req["of_dir"], "--shots", str(int(spec.get("shots", 0))), "--out", str((run_dir / EVAL_JSON).resolve())]
        for k, v in sorted((spec.get("args") or {}).items()):
            args += [f"--{k.replace('_', '-')}", str(v)]
        return cart_argv(*args)
    raise ValueError(f"{run.name}: unknown evaluation {spec['eval']!r}")


# ---------------------------------------------------------------------- collecting results
def read_metrics(path: Path) -> list[tuple[int, str, str, float]]:
    """metrics.jsonl -> (step, event, name, value) rows, numbers only, nested keys dotted.

    A resumed run may log a step twice; the store keeps the last value for each key."""
    rows: list[tuple[int, str, str, float]] = []
    if not path.is_file():
        return rows
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            step, event = int(rec["step"]), str(rec.get("event", "train"))
            for name, value in flatten({k: v for k, v in rec.items() if k not in ("step", "event")}).items():
                rows.append((step, event, name, value))
    return rows


def summary_finals(summary: dict) -> dict[str, float]:
    """The trainer's summary.json -> flat final metrics: ppl.<set>, loss.<set>, bpb.<set>, rho_gate, ..."""
    out: dict[str, float] = {}
    for valset, m in (summary.get("final") or {}).items():
        if isinstance(m, dict):
            for k, v in m.items():
                if isinstance(v, (int, float)):  # bools too: out_of_domain.<set> = 1.0 marks a held-out domain
                    out[f"{k}.{valset}"] = float(v)
    for k, v in flatten({k: v for k, v in summary.items() if k != "final"}).items():
        out[k] = v
    return out


def eval_finals(result: dict) -> dict[str, float]:
    """A `cart eval vary-r` result -> vary_r.<R>.ppl.<set>, vary_r.<R>.bpb.<set>, vary_r.<R>.<task>.<metric>,
    vary_r.<R>.contraction (R is the loop count, or "adaptive"); a `cart eval tasks` result ->
    tasks.<task>.<metric>."""
    out: dict[str, float] = {}
    for task, m in (result.get("results") or {}).items():
        if isinstance(m, dict):
            out.update({f"tasks.{task}.{k}": v for k, v in flatten(m).items()})
    for row in result.get("rows") or []:
        R = row.get("n_loops")
        for name, m in (row.get("ppl") or {}).items():
            for k in ("ppl", "bpb", "loss"):
                if isinstance(m.get(k), (int, float)):
                    out[f"vary_r.{R}.{k}.{name}"] = float(m[k])
        for task, m in (row.get("tasks") or {}).items():
            out.update({f"vary_r.{R}.{task}.{k}": v for k, v in flatten(m).items()})
        for k in ("contraction_mean", "mean_loops"):
            if isinstance(row.get(k), (int, float)):
                out[f"vary_r.{R}.{k}"] = float(row[k])
    return out


def default_collect(run: Run, run_dir: Path) -> tuple[dict, dict[str, float], list, str | None]:
    """(summary, finals, metric rows, checkpoint) from a finished run directory."""
    if run.kind == "train":
        path = run_dir / SUMMARY
        if not path.is_file():
            raise RuntimeError(f"the command exited 0 but wrote no {path}")
        summary = json.loads(path.read_text())
        ckpt = None
        try:
            from cart.checkpoint import resolve_checkpoint
            ckpt = str(resolve_checkpoint(run_dir))
        except (FileNotFoundError, ValueError, ImportError):
            pass
        return summary, summary_finals(summary), read_metrics(run_dir / METRICS), ckpt
    path = run_dir / EVAL_JSON
    if not path.is_file():
        raise RuntimeError(f"the command exited 0 but wrote no {path}")
    result = json.loads(path.read_text())
    return result, eval_finals(result), [], None


# ---------------------------------------------------------------------- one worker
def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _lock(run_dir: Path):
    """An exclusive flock on the run directory, or None if another process (an orphan) holds it."""
    f = open(run_dir / LOCK, "a+")
    if fcntl is None:
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _stop_child(p: subprocess.Popen, grace_s: float) -> None:
    if p.poll() is not None:
        return
    try:
        p.terminate()  # the trainer saves a checkpoint on SIGTERM
        p.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


class Worker:
    """Claims and executes runs until none are left in scope (or `stop` is set)."""

    def __init__(self, study: str | Path, command: Command | None = None, collect=default_collect, *,
                 name: str | None = None, lease_s: float = 120.0, heartbeat_s: float = 10.0, poll_s: float = 2.0,
                 stages: Iterable[str] | None = None, refill: Refill | None = None, env: dict | None = None,
                 stop: threading.Event | None = None, grace_s: float = 60.0, log: Callable[[str], None] | None = None):
        self.study = Path(study)
        self.command = command
        self.collect = collect
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_s, self.heartbeat_s, self.poll_s, self.grace_s = lease_s, heartbeat_s, poll_s, grace_s
        self.stages = list(stages) if stages is not None else None
        self.refill = refill
        self.env = env or {}
        self.stop = stop or threading.Event()
        self.log = log or (lambda msg: None)
        self.version = code_version()
        self.done = 0

    def _argv(self, store: Store, run: Run, run_dir: Path) -> list[str]:
        if self.command is None:
            return default_command(run, run_dir, store)
        materialize(run, run_dir, store)  # the run's inputs are on disk whatever command runs it
        return [str(a) for a in self.command(run, run_dir)]

    def loop(self, max_runs: int | None = None) -> int:
        store = Store(self.study)
        try:
            while not self.stop.is_set() and (max_runs is None or self.done < max_runs):
                self.version = code_version()  # per claim: the code a run's child will import, edits included
                if self.refill is not None:
                    self.refill(store)  # plan derived stages as soon as their inputs are complete: they run first
                run = store.claim(self.name, self.lease_s, self.version, self.stages)
                if run is None:
                    c = store.counts(self.stages)
                    if c["running"] == 0 and c["pending"] == 0:
                        return self.done
                    self.stop.wait(self.poll_s)  # others are running: their runs may come back, or unlock a stage
                    continue
                self.execute(store, run)
            return self.done
        finally:
            store.close()

    def execute(self, store: Store, run: Run) -> str:
        try:
            run_dir = run_dir_for(self.study, run)
        except ValueError as e:  # a name from a damaged or hand-edited database: never a path outside the study
            store.fail(run, f"refused: {e}")
            return "failed"
        run_dir.mkdir(parents=True, exist_ok=True)
        store.set_run_dir(run, str(run_dir.resolve()))
        lock = _lock(run_dir)
        if lock is None:
            store.fail(run, f"run directory {run_dir} is locked by another process (an orphaned attempt?)",
                       count=False, outcome="busy")
            self.stop.wait(self.poll_s)
            return "busy"
        try:
            try:
                argv = self._argv(store, run, run_dir)
            except Exception as e:  # noqa: BLE001 - a bad spec is a recorded failure, not a crash
                store.fail(run, f"could not build the command: {type(e).__name__}: {e}")
                return "failed"
            logs = run_dir / "logs"
            logs.mkdir(exist_ok=True)
            log_path = logs / f"attempt-{run.attempts:02d}.log"
            self.log(f"[{self.name}] start {run.name} (attempt {run.attempts}); log {log_path}")
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
            full = argv
            pass_fds: tuple = ()
            if sys.platform.startswith("linux"):
                full = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *argv]
            if fcntl is not None:
                pass_fds = (lock.fileno(),)  # the child holds the run-directory lock for as long as it lives
            t0 = time.time()
            with open(log_path, "w") as out:
                out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} worker {self.name} attempt {run.attempts}\n# {shlex.join(argv)}\n")
                out.flush()
                try:
                    p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         pass_fds=pass_fds, start_new_session=True)
                except OSError as e:
                    store.fail(run, f"could not start {argv[0]}: {e}")
                    return "failed"
                outcome = self._watch(store, run, p)
            if outcome == "lost":
                self.log(f"[{self.name}] lost the lease on {run.name}; child killed, nothing recorded")
                return outcome
            if outcome == "interrupted":
                store.fail(run, "interrupted (the sweep was stopped); resumes on the next `cart sweep run`",
                           returncode=p.returncode, count=False, outcome="interrupted")
                return outcome
            rc = p.returncode
            if rc != 0:
                err = f"exit status {rc} after {time.time() - t0:.0f}s; log {log_path}:\n{_tail(log_path)}"
                store.fail(run, err, returncode=rc)
                self.log(f"[{self.name}] FAILED {run.name} (exit {rc}); see {log_path}")
                return "failed"
            try:
                summary, finals, metrics, ckpt = self.collect(run, run_dir)
            except Exception as e:  # noqa: BLE001
                store.fail(run, f"exit 0 but results unreadable: {type(e).__name__}: {e}", returncode=rc)
                return "failed"
            if store.finish(run, summary=summary, finals=finals, metrics=metrics, checkpoint=ckpt, returncode=rc):
                self.done += 1
                self.log(f"[{self.name}] done {run.name} in {time.time() - t0:.0f}s")
                return "done"
            self.log(f"[{self.name}] finished {run.name} but the lease had been taken; result not recorded")
            return "lost"
        finally:
            lock.close()

    def _watch(self, store: Store, run: Run, p: subprocess.Popen) -> str:
        while True:
            try:
                p.wait(timeout=self.heartbeat_s)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            if self.stop.is_set():
                _stop_child(p, self.grace_s)
                return "interrupted"
            try:
                ours = store.heartbeat(run, self.lease_s)
            except sqlite3.OperationalError:
                continue  # the database was busy for a long time; try again next beat
            if not ours:
                p.kill()
                p.wait()
                return "lost"


def run_workers(study: str | Path, n_workers: int = 1, *, devices: list[str] | None = None, threads: int | None = None,
                stop: threading.Event | None = None, **worker_kw) -> int:
    """Run n workers as threads of this process (each run is a subprocess, so the GIL is idle).

    devices: one CUDA device per worker (CUDA_VISIBLE_DEVICES), round-robin.
    threads: intra-op threads per child (OMP_NUM_THREADS), default cores / workers."""
    stop = stop or threading.Event()
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // max(1, n_workers))
    base_env = dict(worker_kw.pop("env", None) or {})
    workers = []
    for i in range(n_workers):
        env = dict(base_env)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = str(devices[i % len(devices)])
        workers.append(Worker(study, stop=stop, env=env, name=f"{socket.gethostname()}:{os.getpid()}:w{i}", **worker_kw))
    results = [0] * n_workers

    def target(i: int) -> None:
        results[i] = workers[i].loop()

    ts = [threading.Thread(target=target, args=(i,), name=f"cart-worker-{i}", daemon=True) for i in range(n_workers)]
    for i, t in enumerate(ts):
        t.start()
        if i + 1 < n_workers:
            time.sleep(0.2)  # stagger: the first worker expands stages before the others look
    while any(t.is_alive() for t in ts):
        for t in ts:
            t.join(timeout=0.5)
    return sum(results)


# ---------------------------------------------------------------------- external schedulers
def print_commands(study: str | Path, runs: list[Run], store: Store, command: Command | None = None) -> list[str]:
    """One shell line per run (its inputs written to its run directory), for SLURM arrays & co."""
    lines = []
    for run in runs:
        run_dir = run_dir_for(Path(study), run)
        store.set_run_dir(run, str(run_dir.resolve()))
        if command is None:
            argv = default_command(run, run_dir, store)
        else:
            materialize(run, run_dir, store)
            argv = [str(a) for a in command(run, run_dir)]
        if argv[:3] == [sys.executable, "-c", CART_MAIN]:
            argv = ["cart", *argv[3:]]
        lines.append(shlex.join(argv))
    return lines


def collect(study: str | Path, store: Store, stages: Iterable[str] | None = None, collect_fn=default_collect) -> int:
    """Record runs executed outside the orchestrator whose directories hold complete results."""
    n = 0
    for run in store.runs(stages):
        if run.status == "done":
            continue
        run_dir = run_dir_for(Path(study), run)
        if run.kind == "train":
            path = run_dir / SUMMARY
            if not path.is_file():
                continue
            s = json.loads(path.read_text())
            steps = run.spec["train"].get("steps")
            if steps is not None and s.get("step") is not None and int(s["step"]) < int(steps):
                continue  # an interrupted external run: not finished
        elif not (run_dir / EVAL_JSON).is_file():
            continue
        if run.status == "running":
            continue  # a local worker holds it
        summary, finals, metrics, ckpt = collect_fn(run, run_dir)
        store.set_run_dir(run, str(run_dir.resolve()))
        if store.record_external(run, "external", summary=summary, finals=finals, metrics=metrics, checkpoint=ckpt):
            n += 1
    return n


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT/SIGTERM: stop claiming, SIGTERM the children (they checkpoint), return runs to pending."""
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"cart sweep: signal {signum}: stopping the runs (they checkpoint and go back to pending)...", file=sys.stderr)
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


__all__ = ["Worker", "run_workers", "default_command", "default_collect", "print_commands", "collect", "code_version",
           "run_dir_for", "materialize", "read_metrics", "summary_finals", "cart_argv", "install_signal_handlers"]
