"""`cart sweep run | status | export | print-commands | collect <plan> --tier T --study DIR`.

<plan> is `all`, a stage of the tier's plan (stage1, stage2, parity, ablations, control, fidelity,
vary_r_train, vary_r) or a comma-separated list; --tier is `paper`, `cpu`, `smoke` or a plan .toml.

On a cluster without a shared worker pool, let the scheduler run the commands and collect after:

    cart sweep print-commands stage1 --tier paper --study S > stage1.txt
    sbatch --array=1-$(wc -l < stage1.txt) --gres=gpu:1 --wrap 'eval "$(sed -n ${SLURM_ARRAY_TASK_ID}p stage1.txt)"'
    cart sweep collect stage1 --study S          # when the array is done; then print-commands stage2 ...

Each printed command resumes from its run directory's checkpoint, so requeued tasks lose nothing.
"""
from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from pathlib import Path

from cart.cli import CLIError
from cart.cli.common import check_output_file, positive_float, positive_int


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run the paper's experiment stages as resumable plans (results in a SQLite study)",
                       description="Example: cart sweep run all --tier cpu --study runs/study-cpu --workers 2")
    ssub = p.add_subparsers(dest="sweep_command", metavar="ACTION")

    def common(q, tier_required: bool = False):
        q.add_argument("plan", nargs="?", default="all", help="'all', a stage name, or a comma-separated list (default: all)")
        q.add_argument("--tier", required=False, default=None,
                       help="paper | cpu | smoke | path/to/plan.toml (default: the tier this study was created with)")
        q.add_argument("--study", required=True, help="study directory (holds study.db and runs/)")

    r = ssub.add_parser("run", help="plan and run every pending run of the stages (resumes; a finished plan does nothing)")
    common(r)
    r.add_argument("--workers", type=positive_int, default=1, help="runs at once (default 1; on GPU machines one per device)")
    r.add_argument("--devices", default=None, help="comma-separated CUDA devices, one per worker round-robin (e.g. 0,1,2,3)")
    r.add_argument("--threads", type=positive_int, default=None, help="CPU threads per run (OMP_NUM_THREADS; default cores / workers)")
    r.add_argument("--lease", type=positive_float, default=120.0, help="seconds without a heartbeat before a run is taken back (default 120)")
    r.add_argument("--heartbeat", type=positive_float, default=10.0, help="seconds between heartbeats (default 10)")
    r.add_argument("--command", default=None,
                   help="run each run with this command instead of `cart train`; placeholders {run_dir} {config} {python} {name}")
    r.add_argument("--retry-failed", action="store_true", help="give failed runs a fresh set of retries first")
    r.add_argument("--print-commands", action="store_true", help="plan, then print one command per pending run instead of running")
    r.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    r.set_defaults(func=run_sweep)

    s = ssub.add_parser("status", help="progress per stage, running runs with their heartbeats, failures with their errors")
    common(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_status)

    e = ssub.add_parser("export", help="export results (one row per stage member) as CSV or JSON")
    common(e)
    e.add_argument("--format", choices=["csv", "json"], default="csv")
    e.add_argument("--out", default=None, help="output file (default: <study>/results.<format>)")
    e.add_argument("--metrics", default=None, help="also write every logged metric (long CSV) here")
    e.set_defaults(func=run_export)

    c = ssub.add_parser("print-commands", help="plan, then print one `cart train` command per pending run (SLURM arrays)")
    common(c)
    c.set_defaults(func=run_print_commands)

    k = ssub.add_parser("collect", help="record runs that an external scheduler finished (their run directories hold results)")
    common(k)
    k.set_defaults(func=run_collect)


def _open(args, create: bool):
    """(study dir, store, plan, stages). A study that does not exist yet is created only after its plan
    and stage selection have been checked, and removed again if anything else about it fails: a
    refused invocation leaves no study.db behind."""
    from cart.experiments.plans import PlanError, check_scope, load_plan
    from cart.experiments.store import DB_NAME, Store, StudyMismatch

    study = Path(args.study)
    new = not (study / DB_NAME).exists()
    if new and not create:
        raise CLIError(f"no study at {study} (expected {study / DB_NAME}); start one with `cart sweep run ... --study {study}`")
    if study.exists() and not study.is_dir():
        raise CLIError(f"--study {study}: exists and is not a directory")
    if new:
        if args.tier is None:
            raise CLIError("--tier is required for a new study (paper, cpu, smoke, or a plan .toml)")
        try:
            load_plan(args.tier).select(args.plan)  # a bad tier, plan file or stage name fails before anything is created
        except PlanError as e:
            raise CLIError(str(e)) from None
    made_dir = new and not study.exists()
    store = None
    try:
        store = Store(study)
        tier = args.tier or store.meta("plan_source") or store.meta("tier")
        if tier is None:
            raise CLIError("--tier is required for a new study (paper, cpu, smoke, or a plan .toml)")
        plan = load_plan(tier)
        store.bind(tier=plan.tier, metric=plan.metric, floor_margin=str(plan.floor_margin))
        store.set_meta_default("plan_source", str(tier))
        stages = plan.select(args.plan)
        if create:
            check_scope(plan, store, stages)
    except (PlanError, StudyMismatch) as e:
        _abandon(study, store, new, made_dir)
        raise CLIError(str(e)) from None
    except BaseException:
        _abandon(study, store, new, made_dir)
        raise
    return study, store, plan, stages


def _is_new(study: str) -> tuple[bool, bool]:
    """(no study.db there yet, not even the folder)."""
    from cart.experiments.store import DB_NAME
    p = Path(study)
    return not (p / DB_NAME).exists(), not p.exists()


def _abandon(study: Path, store, new: bool, made_dir: bool) -> None:
    """Close the store; if this invocation created the study, remove what it created."""
    from cart.experiments.store import DB_NAME

    if store is not None:
        store.close()
    if not new:
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        (study / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    if made_dir:
        try:
            study.rmdir()
        except OSError:
            pass


def _command(template: str | None):
    if template is None:
        return None
    parts = shlex.split(template)

    def command(run, run_dir: Path) -> list[str]:
        subs = {"run_dir": str(run_dir.resolve()), "config": str((run_dir / "run.json").resolve()), "python": sys.executable,
                "name": run.name}
        return [p.format(**subs) for p in parts]
    return command


def run_sweep(args) -> int:
    from cart.experiments.orchestrator import install_signal_handlers, print_commands, run_workers
    from cart.experiments.plans import PlanError, expand

    if args.heartbeat >= args.lease:
        raise CLIError(f"--heartbeat {args.heartbeat:g} must be shorter than --lease {args.lease:g} (a run would lose its "
                       f"lease between two heartbeats)")
    new, made_dir = _is_new(args.study)
    study, store, plan, stages = _open(args, create=True)
    names = [s.name for s in stages]
    try:
        if args.retry_failed:
            n = store.retry_failed(names)
            print(f"cart sweep: {n} failed run(s) get a fresh set of retries")
        try:
            expand(plan, store, stages)
        except BaseException:
            _abandon(study, store, new, made_dir)  # a study this invocation created is not left half-planned
            raise
        if args.print_commands:
            for line in print_commands(study, store.runs(names, status="pending"), store, _command(args.command)):
                print(line)
            return 0
        before = store.counts(names)
    finally:
        store.close()
    if before["pending"] == 0 and before["running"] == 0 and all(_expanded(study, s) for s in names):
        print(f"cart sweep: nothing to do: {before['done']} done, {before['failed']} failed in {', '.join(names)}")
        return 0 if before["failed"] == 0 else 1
    print(f"cart sweep: {plan.tier} tier, stages {', '.join(names)}: {before['pending']} pending, {before['done']} done, "
          f"{before['running']} running elsewhere, {before['failed']} failed; {args.workers} worker(s)", flush=True)

    reported: set[str] = set()

    def refill(s) -> int:
        try:
            return expand(plan, s, stages)
        except PlanError as e:  # e.g. a derived stage whose inputs all failed: say so once, keep running the rest
            if str(e) not in reported:
                reported.add(str(e))
                print(f"cart sweep: cannot plan a stage yet: {e}", file=sys.stderr, flush=True)
            return 0

    stop = threading.Event()
    install_signal_handlers(stop)
    log = None if args.quiet else (lambda msg: print(time.strftime("%H:%M:%S ") + msg, flush=True))
    devices = args.devices.split(",") if args.devices else _auto_devices(args.workers)
    t0 = time.time()
    done = run_workers(study, args.workers, devices=devices, threads=args.threads, stop=stop, command=_command(args.command),
                       lease_s=args.lease, heartbeat_s=args.heartbeat, stages=names, refill=refill, log=log)
    from cart.experiments.store import Store
    with Store(study) as s:
        after = s.counts(names)
        failed = s.runs(names, status="failed")
    print(f"cart sweep: {done} run(s) finished here in {(time.time() - t0) / 60:.1f} min; now {after['done']} done, "
          f"{after['pending']} pending, {after['running']} running, {after['failed']} failed")
    for r in failed:
        print(f"  FAILED {r.name} after {r.failures} failure(s): {(r.error or '').splitlines()[0] if r.error else ''}")
    unplanned = [n for n in names if not _expanded(study, n)]
    if unplanned and not stop.is_set():
        print(f"cart sweep: not planned: {', '.join(unplanned)} (see the messages above)")
        return 1
    if stop.is_set():
        return 130
    return 1 if after["failed"] else 0


def _expanded(study: Path, stage: str) -> bool:
    from cart.experiments.store import Store
    with Store(study) as s:
        return s.stage_expanded(stage) is not None


def _auto_devices(workers: int) -> list[str] | None:
    try:
        import torch
        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return None
    return [str(i) for i in range(n)] if n and workers > 1 else None


def run_status(args) -> int:
    study, store, plan, stages = _open(args, create=False)
    try:
        from cart.experiments.progress import progress

        p = progress(store, plan, stages)
        if args.json:
            eta = p.pop("eta")
            print(json.dumps({"study": str(study), "tier": plan.tier, **p,
                              "eta": None if eta is None else {"worker_s": eta.worker_s, "wall_s": eta.wall_s, "workers": eta.workers,
                                                               "finished_runs": eta.finished}}, indent=2))
            return 0
        print(f"study {study} ({plan.tier} tier)")
        w = max(len(n) for n in p["stages"])
        for name, s in p["stages"].items():
            if not s["planned"]:
                print(f"  {name:<{w}}  not planned yet" + (" (waits for " + ", ".join(s["waits_for"]) + ")" if s["waits_for"] else ""))
                continue
            print(f"  {name:<{w}}  {_bar(s['done'], s['runs'])} {s['done']:>3}/{s['runs']:<3} done  {s['running']} running  "
                  f"{s['pending']} pending  {s['failed']} failed")
        eta = p["eta"]
        if eta is not None:
            print(f"  remaining planned training: ~{eta.worker_s / 60:.0f} worker-min (~{eta.wall_s / 60:.0f} min with "
                  f"{eta.workers} worker(s)) at the median pace of {eta.finished} finished runs; stages not planned yet are not counted")
        for r in p["running"]:
            stale = "  (lease expired: will be taken back)" if r["lease_expired"] else ""
            print(f"  running {r['run']} on {r['worker']}, attempt {r['attempt']}, heartbeat {r['heartbeat_age_s']:.0f}s ago{stale}")
        for r in p["failed"]:
            print(f"  FAILED  {r['run']} ({r['failures']} failures): {(r['error'] or '').splitlines()[0] if r['error'] else ''}")
        return 0
    finally:
        store.close()


def _bar(done: int, total: int, width: int = 20) -> str:
    k = 0 if total == 0 else round(width * done / total)
    return "[" + "#" * k + "." * (width - k) + "]"


def run_export(args) -> int:
    check_output_file(args.out, "--out")
    check_output_file(args.metrics, "--metrics")
    study, store, plan, stages = _open(args, create=False)
    try:
        out = Path(args.out) if args.out else study / f"results.{args.format}"
        store.export(out, args.format, [s.name for s in stages])
        print(f"wrote {out}")
        if args.metrics:
            store.export_metrics(args.metrics, [s.name for s in stages])
            print(f"wrote {args.metrics}")
        return 0
    finally:
        store.close()


def run_print_commands(args) -> int:
    from cart.experiments.orchestrator import print_commands
    from cart.experiments.plans import expand

    new, made_dir = _is_new(args.study)
    study, store, plan, stages = _open(args, create=True)
    try:
        try:
            expand(plan, store, stages)
        except BaseException:
            _abandon(study, store, new, made_dir)
            raise
        lines = print_commands(study, store.runs([s.name for s in stages], status="pending"), store)
        for line in lines:
            print(line)
        waiting = [s.name for s in stages if store.stage_expanded(s.name) is None]
        if waiting:
            print(f"# not planned yet (derived from unfinished stages): {', '.join(waiting)}; after running the above, "
                  f"`cart sweep collect {args.plan} --study {study}` then print-commands again", file=sys.stderr)
        return 0
    finally:
        store.close()


def run_collect(args) -> int:
    from cart.experiments.orchestrator import collect

    study, store, plan, stages = _open(args, create=False)
    try:
        n = collect(study, store, [s.name for s in stages])
        print(f"recorded {n} externally finished run(s)")
        return 0
    finally:
        store.close()
