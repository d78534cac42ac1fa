import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The models here are tiny: one thread is faster than two, and immune to a busy second core
    (an OpenMP barrier waiting for a descheduled thread turns a 1 ms forward into 500 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
