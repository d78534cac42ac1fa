"""Suite-wide fixtures: a fixed seed for every test, one thread for the tiny-model directories, and the
expensive inputs built once per session and shared read-only (a test that wants to change one copies
it first; the session checks at the end that nobody wrote into them)."""
import os
from pathlib import Path

import cart  # noqa: F401  -- before torch: idle OpenMP threads sleep (cart/runtime.py), so a busy machine slows tests fairly
import pytest
import torch

from tests.support import one_thread, smoke_config, tree_digest

# deterministic, quiet CPU tests; 2 threads matches CI
torch.set_num_threads(min(2, os.cpu_count() or 1))

TESTS = Path(__file__).resolve().parent
# directories whose tests run tiny models: one thread each (module-scoped fixtures there use `with one_thread():`)
ONE_THREAD_DIRS = {"eval", "train", "export"}


def pytest_collection_modifyitems(config, items):
    """torch.func's jvp (the loop Jacobian estimate of a training run's evaluation) scripts decompositions on first
    use, which warns from inside torch; keep that out of the reports (fixture setup included)."""
    quiet = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script\w*` is deprecated:DeprecationWarning")
    for item in items:
        item.add_marker(quiet)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads(request):
    if Path(request.node.path).resolve().relative_to(TESTS).parts[0] in ONE_THREAD_DIRS:
        with one_thread():
            yield
    else:
        yield


def _read_only(path: Path):
    before = tree_digest(path)
    yield path
    assert tree_digest(path) == before, f"a test wrote into the shared {path} (copy it before changing it)"


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """The real `smoke` recipe (synthetic text, 512-token BPE), prepared once per session; read-only."""
    from cart.data import prepare
    yield from _read_only(prepare("smoke", data_root=tmp_path_factory.mktemp("data"), log=lambda *a, **k: None))


@pytest.fixture(scope="session")
def smoke_run(smoke_data, tmp_path_factory):
    """One tiny run the real trainer wrote (tests.support.SMOKE_TRAIN: 12 steps, checkpoints at 4, 8 and 12, the
    final evaluation and n-gram floors), trained once per session; read-only."""
    from cart.train import train
    out = tmp_path_factory.mktemp("smoke_run") / "run"
    with torch.random.fork_rng(), one_thread():
        train(smoke_config(smoke_data, out))
    yield from _read_only(out)
