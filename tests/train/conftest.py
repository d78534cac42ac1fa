import shutil
import sys
from pathlib import Path

import pytest

from cart.train import TrainConfig
from tests.support import smoke_config


@pytest.fixture
def make_cfg(smoke_data, tmp_path):
    """A fast smoke config (tests.support.SMOKE_TRAIN) in tmp_path; keyword arguments override TrainConfig fields.
    make_cfg("ref") is the configuration of the session's `smoke_run`."""
    def make(name: str = "run", **over) -> TrainConfig:
        return smoke_config(over.pop("data", smoke_data), tmp_path / name, **over)
    return make


@pytest.fixture
def trained_copy(smoke_run, make_cfg):
    """make_cfg(name), trained to the end: a copy of the session's `smoke_run` (the same configuration), to damage
    or resume at will."""
    def copy(name: str = "run") -> TrainConfig:
        cfg = make_cfg(name)
        shutil.copytree(smoke_run, cfg.out_dir)
        return cfg
    return copy


def train_argv(cfg: TrainConfig, *extra: str) -> list[str]:
    """`python -m cart.train --config <cfg as json>` for a subprocess."""
    import json
    path = Path(cfg.out_dir + ".json")
    path.write_text(json.dumps(cfg.to_dict()))
    return [sys.executable, "-m", "cart.train", "--config", str(path), *extra]
