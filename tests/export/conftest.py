"""Fixtures for the export tests: run dirs holding tiny models that use the session's smoke data (a real trained
BPE tokenizer)."""
import json
import os
from pathlib import Path

import pytest
import torch

from cart.config import CARTConfig, DenseConfig
from cart.model import build_model
from tests.eval.helpers import save_checkpoint, sharpen

VOCAB = 512  # the smoke recipe's BPE


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No hub: everything here is local (one thread for the tiny models comes from tests/conftest.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def tiny(kind: str = "cart", **over) -> torch.nn.Module:
    """A tiny model on the smoke vocabulary, its weights scaled so that outputs differ visibly."""
    torch.manual_seed(0)
    if kind == "cart":
        cfg = CARTConfig(**{"vocab_size": VOCAB, "d_model": 64, "n_prelude": 1, "n_loops": 2, "max_seq_len": 64, **over})
    else:
        cfg = DenseConfig(**{"vocab_size": VOCAB, "d_model": 64, "n_layers": 2, "max_seq_len": 64, **over})
    return sharpen(build_model(cfg).eval())


def make_run(root: Path, model, data: Path, summary: dict | None = None) -> Path:
    """A run dir as training leaves it (checkpoints/step_00000010, train_config.json naming the data)."""
    save_checkpoint(model, root, data)
    if summary is not None:
        (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture
def run_factory(smoke_data, tmp_path):
    def make(name: str = "run", kind: str = "cart", summary: dict | None = None, **over) -> tuple[Path, torch.nn.Module]:
        model = tiny(kind, **over)
        return make_run(tmp_path / name, model, smoke_data, summary), model
    return make


def site_packages() -> list[str]:
    """The interpreter's site-packages folders (where torch and transformers live), not the repository."""
    import site
    import sysconfig
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    return [p for p in paths if os.path.isdir(p)]
