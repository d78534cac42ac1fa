import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from cart.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config, items):
    """torch.func's jvp (the loop Jacobian estimate on eval steps) scripts decompositions on first use,
    which warns from inside torch; keep that out of this directory's reports (setup included)."""
    quiet = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script\w*` is deprecated:DeprecationWarning")
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(quiet)


@contextmanager
def one_thread():
    """Tiny models: one thread is faster than two and immune to a busy second core; subprocesses
    get OMP_NUM_THREADS=1 too, so in-process and subprocess runs do the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():  # module-scoped fixtures use `with one_thread():` themselves
        yield


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """The real `smoke` recipe (synthetic text, 512-token BPE), prepared once per session (~3 s)."""
    from cart.data import prepare
    return prepare("smoke", data_root=tmp_path_factory.mktemp("data"), log=lambda *a, **k: None)


@pytest.fixture
def make_cfg(smoke_data, tmp_path):
    """A fast smoke config in tmp_path; keyword arguments override TrainConfig fields."""
    def make(name: str = "run", **over) -> TrainConfig:
        base = dict(data=str(smoke_data), out_dir=str(tmp_path / name), steps=12, batch_size=4, seq_len=32,
                    eval_every=0, eval_tokens=256, final_eval_tokens=256, log_every=4, ckpt_every=4,
                    keep_checkpoints=0, peak_flops=1e11, tensorboard=False)
        base.update(over)
        return TrainConfig.from_preset("smoke", **base)
    return make


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_argv(cfg: TrainConfig, *extra: str) -> list[str]:
    """`python -m cart.train --config <cfg as json>` for a subprocess."""
    import json
    path = Path(cfg.out_dir + ".json")
    path.write_text(json.dumps(cfg.to_dict()))
    return [sys.executable, "-m", "cart.train", "--config", str(path), *extra]
