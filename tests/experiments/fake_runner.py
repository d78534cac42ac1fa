"""A stand-in for `cart train` / `cart eval vary-r` in orchestrator tests: no torch, fast.

usage: python fake_runner.py RUN_DIR

Reads the run's inputs (run.json or request.json), "trains" for FAKE_STEPS steps of FAKE_STEP_S
seconds each, checkpointing its step to RUN_DIR/progress (atomically, as the real trainer does) so a
new attempt resumes, appends `start`/`done` lines to FAKE_LOG (O_APPEND, one write per line), and
writes metrics.jsonl + summary.json (or eval.json) with a deterministic, paper-shaped perplexity.
Failure injection: FAKE_FAIL_ALWAYS / FAKE_FAIL_ONCE = a substring of run directory names.
Rendezvous: FAKE_GATE = a folder and FAKE_GATE_N = n: a training run first marks its worker (the parent
process) in the folder, then waits (at most 60 s) until runs of n different workers have started.
"""
import json
import math
import os
import sys
import time
from pathlib import Path


SETS = os.environ.get("FAKE_SETS", "stories,code").split(",")  # validation sets; the last is out-of-domain


def log(line: str) -> None:
    path = os.environ.get("FAKE_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, (line + "\n").encode())
        os.close(fd)


def checkpoint(path: Path, step: int) -> None:
    """Write the step whole or not at all: a kill mid-write leaves the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(step))
    os.replace(tmp, path)


def rendezvous() -> None:
    gate, n = os.environ.get("FAKE_GATE"), int(os.environ.get("FAKE_GATE_N", "0"))
    if not gate:
        return
    (Path(gate) / str(os.getppid())).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(gate).iterdir())) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def ppl_of(model: dict, seed: int, steps: int) -> float:
    d = model.get("d_model", 64)
    noise = 1 + ((seed * 2654435761) % 1000) / 1000 * 0.01
    if model.get("kind") == "dense":
        depth = model["n_layers"] * (1.0 if not model.get("share_layers") else 0.7)
        return 60 * (64 / d) ** 0.5 * (1 - 0.02 * depth) * noise * (100 / (100 + steps))
    P, R = model["n_prelude"], model["n_loops"]
    base = 60 * (64 / d) ** 0.5 * (1 - 0.03 * P) * (1 - 0.012 * R + 0.001 * R * R)
    base *= 0.97 if not model.get("share_core", True) else 1.0
    return base * noise * (100 / (100 + steps))


def main() -> int:
    run_dir = Path(sys.argv[1])
    name = run_dir.name
    log(f"start {name} {os.getpid()}")
    for var, once in (("FAKE_FAIL_ALWAYS", False), ("FAKE_FAIL_ONCE", True)):
        sub = os.environ.get(var)
        if sub and sub in name:
            marker = run_dir / "failed_once"
            if not once or not marker.exists():
                marker.touch()
                print(f"fake failure in {name}", file=sys.stderr)
                log(f"fail {name}")
                return 3
    steps = int(os.environ.get("FAKE_STEPS", "4"))
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    prog = run_dir / "progress"
    start = int(prog.read_text()) if prog.exists() else 0
    if start:
        log(f"resume {name} {start}")
    if (run_dir / "request.json").exists():
        req = json.loads((run_dir / "request.json").read_text())
        of = json.loads((Path(req["of_dir"]) / "run.json").read_text())
        if "shots" in req:  # a zero-/few-shot evaluation (cart eval tasks)
            acc = 0.25 + 0.001 * of["model"]["d_model"] / 64 + 0.01 * req["shots"]
            time.sleep(step_s)
            (run_dir / "eval.json").write_text(json.dumps({"results": {t: {"acc": acc, "acc_norm": acc + 0.01}
                                                                       for t in ("hellaswag", "piqa")}}))
            log(f"done {name}")
            return 0
        trained = of["model"]["n_loops"]
        rows = []
        for R in req["loops"]:
            m = dict(of["model"], n_loops=R)
            p = ppl_of(m, of["seed"], of["steps"]) * (1 + 0.05 * abs(R - trained))
            rows.append({"n_loops": R, "ppl": {s: {"ppl": p * (i + 1), "loss": math.log(p * (i + 1))} for i, s in enumerate(SETS)},
                         "tasks": {}, "contraction_mean": 0.5 + 0.01 * R})
        time.sleep(step_s)
        (run_dir / "eval.json").write_text(json.dumps({"trained_loops": trained, "rows": rows}))
        log(f"done {name}")
        return 0
    cfg = json.loads((run_dir / "run.json").read_text())
    rendezvous()
    with open(run_dir / "metrics.jsonl", "a") as f:
        for step in range(start + 1, steps + 1):
            time.sleep(step_s)
            rec = {"step": step, "event": "train", "loss": 5.0 - 0.1 * step, "rho_gate": 0.9 - 0.001 * step,
                   "contraction": [0.5, 0.6]}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            checkpoint(prog, step)
    p = ppl_of(cfg["model"], cfg["seed"], cfg.get("steps", 10))
    final = {s: {"loss": math.log(p * (i + 1)), "ppl": p * (i + 1), "bpb": 1.0 + i, "out_of_domain": i == len(SETS) - 1,
                 "tokens": 1000, "bigram_kn_ppl": 3 * p * (i + 1), "unigram_ppl": 9 * p * (i + 1)}
             for i, s in enumerate(SETS)}
    summary = {"step": cfg.get("steps", steps), "final": final,
               "rho_gate": 0.89, "tokens_per_s": 1000.0, "mfu": 0.01, "stored_params": 1, "effective_params": 2}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    log(f"done {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
