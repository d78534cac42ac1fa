"""Process-level CPU settings: OpenMP's wait policy is chosen before torch loads (passive unless
the environment says otherwise), the trainer applies `threads` and records both."""
import json
import os
import subprocess
import sys

import pytest
import torch

from cart.runtime import omp_wait_policy, set_threads
from cart.train import train
from tests.train.test_trainer import events

PROBE = ("import json, os, sys{pre}; import cart; from cart.runtime import omp_wait_policy, omp_wait_policy_passive; "
         "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), omp_wait_policy(), omp_wait_policy_passive()]))")


def _probe(env_extra: dict, pre: str = "") -> list:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_cart_makes_openmp_threads_sleep_when_idle():
    env, desc, passive = _probe({})
    assert env == "PASSIVE" and passive and "set by cart" in desc


@pytest.mark.parametrize("var,value,passive", [("OMP_WAIT_POLICY", "ACTIVE", False), ("GOMP_SPINCOUNT", "300000", False),
                                               ("GOMP_SPINCOUNT", "0", True)])
def test_a_policy_in_the_environment_is_kept(var, value, passive):
    env, desc, got = _probe({var: value})
    assert env == (value if var == "OMP_WAIT_POLICY" else None)
    assert f"{var}={value} (environment)" in desc and got is passive


def test_too_late_when_torch_came_first():
    env, desc, passive = _probe({}, pre="; import torch")
    assert env is None and not passive and "export OMP_WAIT_POLICY=PASSIVE" in desc


def test_set_threads():
    before = torch.get_num_threads()
    try:
        assert set_threads(0) == before  # 0 keeps torch's choice
        assert set_threads(1) == 1
        with pytest.raises(ValueError, match="threads must be >= 0"):
            set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_trainer_applies_threads_and_records_the_wait_policy(make_cfg):
    cfg = make_cfg("threads", steps=2, log_every=1, threads=1)
    torch.set_num_threads(2)
    train(cfg)
    assert torch.get_num_threads() == 1
    (ev,) = events(cfg.out_dir, "start")
    assert ev["threads"] == 1
    assert ev["omp_wait_policy"] == omp_wait_policy()  # pytest imported torch first: the OpenMP default, said so
