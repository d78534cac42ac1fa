import os

import cart  # noqa: F401  -- before torch: idle OpenMP threads sleep (cart/runtime.py), so a busy machine slows tests fairly
import pytest
import torch

# deterministic, quiet CPU tests; 2 threads matches CI
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
