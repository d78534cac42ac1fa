import sys
import time
from pathlib import Path

import pytest

from cart.config import CARTConfig, config_to_dict
from cart.experiments.store import RunRequest, Store

FAKE = Path(__file__).with_name("fake_runner.py")


def fake_command(run, run_dir):
    return [sys.executable, str(FAKE), str(run_dir)]


def model(d=64, P=2, R=2, **kw):
    return config_to_dict(CARTConfig(vocab_size=512, max_seq_len=64, d_model=d, n_prelude=P, n_loops=R, **kw))


def request(i: int, seed: int = 42, max_failures: int = 3, **kw) -> RunRequest:
    m = model(P=1 + i % 3, R=1 + i // 3, **kw)
    spec = {"kind": "train", "model": m, "train": {"steps": 4, "data": "data/none"}, "seed": seed}
    return RunRequest(name=f"t{i}", kind="train", spec=spec, tier="test", seed=seed, max_failures=max_failures)


def make_study(path: Path, n: int, stage: str = "s", **kw) -> Path:
    with Store(path) as s:
        s.bind(tier="test")
        members = []
        for i in range(n):
            r = request(i, **kw)
            t = r.spec["model"]
            members.append((f"m{i}", {"arch": "cart", "d": t["d_model"], "P": t["n_prelude"], "R": t["n_loops"]}, r))
        assert s.add_stage(stage, {"kind": "grid"}, None, members)
    return path


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    log = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_STEPS", "3")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")
    return log


def log_lines(log: Path, kind: str) -> list[str]:
    if not log.exists():
        return []
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def wait_until(pred, what: str, timeout: float = 60.0, poll: float = 0.02):
    """Poll `pred` until it returns something truthy (returned); fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return got


def progress(run_dir: Path) -> int:
    """The step a fake run has checkpointed (0 before its first)."""
    p = run_dir / "progress"
    return int(p.read_text()) if p.exists() else 0
