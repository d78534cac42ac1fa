"""scripts/gpu_check.sh cannot rot: its --dry-run runs every step on the CPU at toy sizes and writes
the same files a GPU run would (the measurements mean nothing there)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # the whole script at toy sizes: data, three bench parts, a short training run (~60 s on 2 cores)
def test_gpu_check_dry_run_writes_every_part(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=str(Path(os.sys.executable)))
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_cpu-dry-run.json").read_text())
    assert summary["dry_run"] is True
    assert set(summary["steps"]) == {"env", "bench_train", "bench_compile", "bench_generate", "data", "train"}
    assert all(s["ok"] for s in summary["steps"].values()), summary["steps"]
    for part in ("env", "train", "compile", "generate", "paper_run"):
        assert (tmp_path / f"gpu_cpu-dry-run_{part}.json").is_file(), part
    assert summary["paper_run"]["status"] == "completed" and summary["paper_run"]["step"] == 3
    ids = {t["id"] for t in summary["targets"]}
    assert {"gpu_mfu_cart_d1024", "decode_b8_latent_k_vs_dense"} <= ids
    env_facts = json.loads((tmp_path / "gpu_cpu-dry-run_env.json").read_text())
    assert env_facts["device"] == "cpu" and env_facts["torch"]


def test_gpu_check_refuses_unknown_arguments():
    out = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --frobnicate" in out.stderr
