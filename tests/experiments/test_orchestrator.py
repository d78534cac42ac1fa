"""Workers: each run executes exactly once across concurrent and killed workers; failures are bounded."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from collections import Counter

from cart.experiments.orchestrator import Worker
from cart.experiments.store import Store

from .conftest import fake_command, log_lines, make_study, progress, wait_until


def _work(path, name, lease_s, hb_s):
    Worker(path, fake_command, name=name, lease_s=lease_s, heartbeat_s=hb_s, poll_s=0.1).loop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def test_concurrent_workers_run_each_run_once(tmp_path, fake_env, monkeypatch):
    # no run passes its first step before all three workers hold one: every worker gets a share, however loaded the machine
    (tmp_path / "gate").mkdir()
    monkeypatch.setenv("FAKE_GATE", str(tmp_path / "gate"))
    monkeypatch.setenv("FAKE_GATE_N", "3")
    make_study(tmp_path, 9)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_work, args=(tmp_path, f"w{i}", 30, 0.1)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    starts, dones = Counter(log_lines(fake_env, "start")), Counter(log_lines(fake_env, "done"))
    assert len(dones) == 9 and set(dones.values()) == {1} and set(starts.values()) == {1}
    with Store(tmp_path) as s:
        assert s.counts()["done"] == 9
        assert len({a["worker"] for a in s.attempts()}) == 3  # the work really was shared
        assert all(len(s.attempts(r.id)) == 1 for r in s.runs())


def test_killed_worker_run_resumes_and_plan_completes(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_STEPS", "100000")  # the victim's run cannot finish before the kill, however slow the machine
    make_study(tmp_path, 3)
    ctx = mp.get_context("fork")
    victim = ctx.Process(target=_work, args=(tmp_path, "victim", 1.0, 0.1))
    victim.start()
    run_dir = wait_until(lambda: next((tmp_path / "runs").glob("*"), None) if (tmp_path / "runs").is_dir() else None,
                         "the victim to start a run")
    wait_until(lambda: progress(run_dir) >= 2, "the victim's run to checkpoint two steps")
    child_pid = int(fake_env.read_text().split("start ")[1].split()[1])
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    wait_until(lambda: not _alive(child_pid), "the killed worker's child to die (no PDEATHSIG?)", timeout=10)
    with Store(tmp_path) as s:
        assert s.counts()["running"] == 1  # still marked running until its lease expires
    killed_at = progress(run_dir)  # the child is dead: its last checkpoint is final
    monkeypatch.setenv("FAKE_STEPS", str(killed_at + 2))  # the resumed run trains two more steps
    _work(tmp_path, "survivor", 1.0, 0.1)
    dones = Counter(log_lines(fake_env, "done"))
    assert len(dones) == 3 and set(dones.values()) == {1}
    assert len(log_lines(fake_env, "resume")) == 1  # the second attempt resumed from the run's checkpoint
    with Store(tmp_path) as s:
        assert s.counts() == {"pending": 0, "running": 0, "done": 3, "failed": 0}
        outcomes = sorted(tuple(a["outcome"] for a in s.attempts(r.id)) for r in s.runs())
        assert outcomes == [("done",), ("done",), ("lost", "done")]
        assert len(s.finals()) == 3
        # one metrics row per (step, name), every step, though the resumed run was logged by two attempts
        for r in s.runs():
            assert [st for st, _ in s.metrics(r.id, "loss")] == list(range(1, killed_at + 3))


def test_rerun_of_finished_plan_is_a_noop(tmp_path, fake_env):
    make_study(tmp_path, 2)
    assert Worker(tmp_path, fake_command, poll_s=0.1).loop() == 2
    assert Worker(tmp_path, fake_command, poll_s=0.1).loop() == 0
    assert len(log_lines(fake_env, "start")) == 2
    with Store(tmp_path) as s:
        assert len(s.attempts()) == 2


def test_failures_recorded_and_retried_up_to_the_bound(tmp_path, fake_env, monkeypatch):
    make_study(tmp_path, 3, max_failures=3)
    monkeypatch.setenv("FAKE_FAIL_ALWAYS", "t0-")
    monkeypatch.setenv("FAKE_FAIL_ONCE", "t1-")
    Worker(tmp_path, fake_command, poll_s=0.1).loop()
    with Store(tmp_path) as s:
        runs = {r.name.split("-")[0]: r for r in s.runs()}
        assert runs["t0"].status == "failed" and runs["t0"].failures == 3
        assert "exit status 3" in runs["t0"].error and "fake failure" in runs["t0"].error
        assert [a["outcome"] for a in s.attempts(runs["t0"].id)] == ["failed"] * 3
        assert runs["t1"].status == "done" and [a["outcome"] for a in s.attempts(runs["t1"].id)] == ["failed", "done"]
        assert runs["t2"].status == "done" and runs["t2"].attempts == 1


def test_cli_sweep_run_status_export_print_commands(tmp_path, fake_env, monkeypatch, capsys):
    """The smoke plan through the CLI with the fake runner: run, rerun (no-op), status, export, report."""
    import cart.experiments.orchestrator as orch
    from cart.cli import main
    monkeypatch.setattr(orch, "install_signal_handlers", lambda stop: None)  # leave pytest's handlers alone
    study = tmp_path / "study"
    cmd = f"{sys.executable} {fake_command(None, tmp_path)[1]} {{run_dir}}"
    assert main(["sweep", "print-commands", "stage1", "--tier", "smoke", "--study", str(study)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("cart train --config ") and "--resume" in line for line in lines)
    assert main(["sweep", "run", "all", "--tier", "smoke", "--study", str(study), "--workers", "2", "--command", cmd,
                 "--heartbeat", "0.2", "--quiet"]) == 0
    with Store(study) as s:
        c = s.counts()
        assert c["pending"] == c["running"] == c["failed"] == 0 and c["done"] > 20
        assert {st for st in ("stage1", "stage2", "parity", "ablations", "control", "fidelity", "vary_r_train", "vary_r")} \
            == {m["stage"] for m in s.members()}
        der = s.stage_expanded("stage2")["derivation"]
        n_runs, n_attempts = len(s.runs()), len(s.attempts())
        # a derived stage is planned as soon as its inputs are done, and runs before later stages' runs
        starts = {r.plan: [] for r in s.runs()}
        for r in s.runs():
            starts[r.plan] += [a["started_at"] for a in s.attempts(r.id)]
        assert min(starts["stage2"]) < max(starts["ablations"])
    assert der["P"] == 2 and der["R_set"] == [der["R_star"], der["R_star"] + 1]
    capsys.readouterr()
    assert main(["sweep", "run", "all", "--study", str(study), "--command", cmd]) == 0
    assert "nothing to do" in capsys.readouterr().out
    with Store(study) as s:
        assert len(s.runs()) == n_runs and len(s.attempts()) == n_attempts
    assert main(["sweep", "status", "--study", str(study)]) == 0
    out = capsys.readouterr().out
    assert "stage2" in out and "failed" in out
    assert main(["sweep", "export", "--study", str(study), "--format", "json"]) == 0
    assert (study / "results.json").is_file()
    assert main(["report", str(study)]) == 0
    md = (study / "report" / "report.md").read_text()
    for section in ("Stage 1", "Stage 2", "Parity", "Gap decomposition", "Ablations", "Homogeneous control", "Published code vs the contractive (stable) gate",
                    "Variable R at inference", "findings"):
        assert section in md, section
    figs = sorted(p.name for p in (study / "report" / "figures").glob("*.png"))
    assert {"stage1_ppl_vs_R.png", "stage1_P_vs_R.png", "parity_gaps.png", "vary_r.png", "rho_contraction.png"} <= set(figs)
    assert main(["sweep", "status", "--study", str(tmp_path / "nope")]) == 2  # a clear error, no traceback


def test_sigterm_to_the_sweep_returns_runs_to_pending_without_spending_a_retry(tmp_path, fake_env):
    make_study(tmp_path, 2)
    code = ("import sys, threading\n"
            "from cart.experiments.orchestrator import install_signal_handlers, run_workers\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from conftest import fake_command\n"
            "stop = threading.Event(); install_signal_handlers(stop)\n"
            "run_workers(sys.argv[1], 1, stop=stop, command=fake_command, heartbeat_s=0.1, poll_s=0.1, grace_s=5)\n")
    env = {**os.environ, "FAKE_STEPS": "100000", "FAKE_STEP_S": "0.05"}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), os.path.dirname(__file__)], env=env)
    # the signal lands while a run is between its steps (it has checkpointed one; it cannot have finished)
    wait_until(lambda: p.poll() is not None or any(progress(d) >= 1 for d in (tmp_path / "runs").glob("*")),
               "the worker to start a run")
    assert p.poll() is None, "the sweep exited before it was signalled"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    with Store(tmp_path) as s:
        assert s.counts()["pending"] == 2
        (att,) = s.attempts()
        assert att["outcome"] == "interrupted" and all(r.failures == 0 for r in s.runs())
    assert not log_lines(fake_env, "done")


def test_print_commands_then_collect_records_externally_run_results(tmp_path, fake_env):
    """The SLURM path: print one command per run, run them elsewhere, collect the results once."""
    from cart.experiments.orchestrator import collect, print_commands
    make_study(tmp_path, 3)
    with Store(tmp_path) as s:
        lines = print_commands(tmp_path, s.runs(status="pending"), s, fake_command)
    assert len(lines) == 3
    for line in lines[:2]:  # an array job that ran two of its three tasks
        subprocess.run(line, shell=True, check=True, env=os.environ)
    with Store(tmp_path) as s:
        assert collect(tmp_path, s) == 2
        assert collect(tmp_path, s) == 0  # recorded once
        assert s.counts() == {"pending": 1, "running": 0, "done": 2, "failed": 0}
        assert len(s.finals()) == 2


def test_paper_tier_report_puts_published_numbers_beside_ours(tmp_path, fake_env, monkeypatch, capsys):
    """The whole paper plan (160-odd runs) through the fake runner: the report quotes SPEC §4 beside ours."""
    import cart.experiments.orchestrator as orch
    from cart.cli import main
    monkeypatch.setattr(orch, "install_signal_handlers", lambda stop: None)
    monkeypatch.setenv("FAKE_SETS", "wiki,tiny,edu")
    monkeypatch.setenv("FAKE_STEPS", "1")
    monkeypatch.setenv("FAKE_STEP_S", "0")
    study = tmp_path / "paper"
    cmd = f"{sys.executable} {fake_command(None, tmp_path)[1]} {{run_dir}}"
    assert main(["sweep", "run", "all", "--tier", "paper", "--study", str(study), "--workers", "4", "--command", cmd,
                 "--quiet"]) == 0
    with Store(study) as s:
        assert s.counts()["done"] > 140 and s.stage_expanded("stage2")["derivation"]["P"] == 6
    assert main(["report", str(study)]) == 0
    md = (study / "report" / "report.md").read_text()
    for published in ("R8: 97.73 / 6.04 / 82.0 / 0.8966", "| 20.35 |", "CART 20.35, dense 7L 20.13", "19.22", "0.905",
                      "R6 23.04 (163.7)", "32,393 tok/s", "| acc_norm 28.04 |", "| acc 58.11 |"):
        assert published in md, published
    # the paper's own 12-layer dense model at d = 1024 is what the effective-parity claim compares with
    assert "CART vs dense 12L" in md and "paper's depth | 12L" in md
    with Store(study) as s:  # zero-shot and 5-shot of the best d = 1024 model, on the paper's four tasks
        zs = s.members("zero_shot")
        assert sorted(m["tags"]["shots"] for m in zs) == [0, 5] and all(m["tags"]["d"] == 1024 for m in zs)
        assert s.run(zs[0]["run_id"]).spec["args"] == {"tasks": "paper", "fewshot_split": "validation"}


def test_a_users_own_plan_file_and_tier_mismatch(tmp_path, fake_env, monkeypatch, capsys):
    import cart.experiments.orchestrator as orch
    from cart.cli import main
    monkeypatch.setattr(orch, "install_signal_handlers", lambda stop: None)
    plan = tmp_path / "mine.toml"
    plan.write_text('tier = "mine"\nmetric = "stories"\ntrain_preset = "smoke"\n[model]\nvocab_size = 512\nmax_seq_len = 64\n'
                    '[stage.grid]\nkind = "grid"\nseeds = [1, 2]\ngrid = { d_model = [64], n_loops = [1, 3] }\n')
    study = tmp_path / "study"
    cmd = f"{sys.executable} {fake_command(None, tmp_path)[1]} {{run_dir}}"
    assert main(["sweep", "run", "all", "--tier", str(plan), "--study", str(study), "--command", cmd, "--quiet"]) == 0
    assert main(["sweep", "status", "--study", str(study)]) == 0  # the plan file is remembered
    assert "4/4" in capsys.readouterr().out
    assert main(["sweep", "run", "all", "--tier", "smoke", "--study", str(study)]) == 2  # another tier: refused
    assert "created with tier='mine'" in capsys.readouterr().err
