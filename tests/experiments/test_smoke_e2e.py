"""The `smoke` plan end to end with the real trainer and evaluator, then `cart report`."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cart.experiments.plans import plan_path
from cart.experiments.store import Store
from tests.support import subprocess_env

CART = [sys.executable, "-c", "import sys; from cart.cli import main; sys.exit(main())"]


@pytest.mark.slow
def test_smoke_plan_end_to_end_with_the_real_trainer(tmp_path, smoke_data):
    # the plan trains on data/smoke relative to the working directory, as a user's checkout would after
    # `cart data prepare smoke`: a scratch directory holding a copy of the session's smoke data (the
    # repository's own ./data and $CART_DATA_DIR are neither read nor written)
    work = tmp_path / "work"
    shutil.copytree(smoke_data, work / "data" / "smoke")
    # the smoke plan as shipped, with a nominal peak: ~30 runs would each spend 2 s measuring the matmul peak for
    # their MFU, which nothing here reads (the measured path: tests/train/test_trainer.py)
    text = plan_path("smoke").read_text()
    assert text.count("\n[train]\n") == 1
    plan = work / "smoke.toml"
    plan.write_text(text.replace("\n[train]\n", "\n[train]\npeak_flops = 1e11\n"))
    env = {k: v for k, v in subprocess_env().items() if k != "CART_DATA_DIR"}
    study = tmp_path / "study"
    r = subprocess.run(CART + ["sweep", "run", "all", "--tier", str(plan), "--study", str(study), "--workers", "2", "--quiet"],
                       cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with Store(study) as s:
        c = s.counts()
        assert c["failed"] == 0 and c["pending"] == 0 and c["done"] >= 20
        # every stage planned, every run recorded once, with final metrics from the trainer's summary
        assert {m["stage"] for m in s.members()} == {"stage1", "stage2", "parity", "ablations", "control", "fidelity",
                                                   "vary_r_train", "vary_r"}
        assert all(len(s.attempts(r.id)) == 1 for r in s.runs())
        finals = s.finals()
        train_runs = [r for r in s.runs() if r.kind == "train"]
        assert all("ppl.stories" in finals[r.id] and "tokens_per_s" in finals[r.id] for r in train_runs)
        assert all(s.summary(r.id)["peak_flops_source"] == "config" for r in train_runs)  # the plan's train table applied
        assert all(r.checkpoint and Path(r.checkpoint).is_dir() for r in train_runs)
        evals = [r for r in s.runs() if r.kind == "eval"]
        assert evals and all(any(k.startswith("vary_r.4.ppl.") for k in finals[r.id]) for r in evals)
        # metrics over training were ingested: rho and the per-loop contraction of a looped run
        some = next(r for r in train_runs if r.spec["model"].get("n_loops", 1) >= 2 and r.spec["model"].get("kind") == "cart")
        assert s.metrics(some.id, "rho_gate") and s.metrics(some.id, "contraction.0")
    rep = subprocess.run(CART + ["report", str(study)], cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert rep.returncode == 0, rep.stderr
    md = (study / "report" / "report.md").read_text()
    assert "## Stage 1" in md and "## Variable R at inference" in md and "## Ablations" in md
    assert len(list((study / "report" / "figures").glob("*.png"))) >= 5
    assert (study / "report" / "results.csv").is_file() and (study / "report" / "metrics.csv.gz").is_file()
