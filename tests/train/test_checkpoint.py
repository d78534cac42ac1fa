"""`cart.checkpoint`, the one home of checkpoints: every load verifies checksums.json and parses the
same bytes it hashed; a bad newest checkpoint is skipped with one line naming the file, or the load
fails with one line; a checksum-valid file that is not what it should be counts as corrupt; a
malicious pickle is never executed; each file is read once."""
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

import cart.checkpoint as ck
from cart.checkpoint import CheckpointError, load_model, newest_good, read, resolve, save_model
from cart.config import CARTConfig
from cart.model import build_model
from cart.train import train

from .test_trainer import assert_same_weights, events, final_weights


def _reseal(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a file AND its checksum: the file then passes the hash, so only parsing can catch it."""
    (ckpt / name).write_bytes(data)
    sums = json.loads((ckpt / "checksums.json").read_text())
    sums[name] = hashlib.sha256(data).hexdigest()
    (ckpt / "checksums.json").write_text(json.dumps(sums))


def _flip(path: Path, at: int | None = None, n: int = 4096) -> None:
    """Corrupt n bytes in the middle of a file (as a failing disk would), size unchanged."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


class _Boom:
    """A pickle that runs a command when unpickled without weights_only."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def argparse_namespace():
    """An ordinary pickle of a class that weights_only does not allow."""
    import argparse
    return argparse.Namespace(step=8)


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    model = build_model(CARTConfig(vocab_size=97, d_model=64, max_seq_len=32, n_prelude=1, n_loops=2))
    return model, save_model(tmp_path / "ck", model, {"step": 3})


# ---------------------------------------------------------------------- model checkpoints
def test_save_model_writes_checksums_and_reads_back(tiny):
    model, path = tiny
    assert set(json.loads((path / "checksums.json").read_text())) == {"model.safetensors", "model.json"}
    loaded, meta = load_model(path)
    assert meta["step"] == 3 and meta["checkpoint"] == str(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_each_file_is_read_once_and_parsed_from_the_hashed_bytes(tiny, monkeypatch):
    _, path = tiny
    reads = []
    real = Path.read_bytes

    def counting(self):
        reads.append(self.name)
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", counting)
    monkeypatch.setattr("safetensors.torch.load_file", lambda *a, **k: pytest.fail("weights read a second time"))
    load_model(path)
    assert sorted(reads) == ["checksums.json", "model.json", "model.safetensors"]


def test_corrupted_weights_are_refused(tiny):
    _, path = tiny
    _flip(path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its checksum"):
        load_model(path)


def test_a_checkpoint_without_checksums_is_refused(tiny):
    _, path = tiny
    (path / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match=r"checksums\.json: missing, so the weights cannot be verified"):
        load_model(path)


@pytest.mark.parametrize("case", ["not-safetensors", "wrong-shapes", "extra-tensor", "bad-json", "no-config"])
def test_checksum_valid_files_that_are_not_weights_are_corrupt(tiny, case):
    model, path = tiny
    state = ck.model_state(model)
    if case == "not-safetensors":
        _reseal(path, "model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}...")
        match = "not a safetensors weights file"
    elif case == "wrong-shapes":
        state["embed.weight"] = torch.zeros(98, 64)
        _reseal(path, "model.safetensors", save_safetensors(state))
        match = r"tensor 'embed.weight' is \(98, 64\)"
    elif case == "extra-tensor":
        state["backdoor"] = torch.zeros(1)
        _reseal(path, "model.safetensors", save_safetensors(state))
        match = r"unexpected \['backdoor'\]"
    elif case == "bad-json":
        _reseal(path, "model.json", b"{oops")
        match = "not valid JSON"
    else:
        _reseal(path, "model.json", b'{"meta": {}}')
        match = "missing field 'config'"
    with pytest.raises(CheckpointError, match=match):
        read(path)


# ---------------------------------------------------------------------- a run dir: newest good, with a warning
@pytest.fixture
def run_with_two(trained_copy):
    """A trained run holding two checkpoints (steps 8 and 12)."""
    cfg = trained_copy("two")
    root = Path(cfg.out_dir) / "checkpoints"
    shutil.rmtree(root / "step_00000004")
    return cfg, root / "step_00000008", root / "step_00000012"


def test_eval_side_loading_falls_back_with_one_warning_naming_the_file(run_with_two):
    cfg, older, newer = run_with_two
    _flip(newer / "model.safetensors")
    warnings = []
    model, meta = load_model(cfg.out_dir, warn=warnings.append)
    assert meta["checkpoint"] == str(older)
    assert len(warnings) == 1 and str(newer / "model.safetensors") in warnings[0] and "checksum" in warnings[0]
    ref, _ = load_model(older)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, model.state_dict()[k])
    _flip(older / "model.json", n=8)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        load_model(cfg.out_dir, warn=warnings.append)


@pytest.mark.parametrize("case", ["structure", "refused-class", "malicious", "wrong-step"])
def test_resume_treats_a_checksum_valid_non_state_pickle_as_corrupt(smoke_run, trained_copy, case, tmp_path):
    """optimizer.pt / trainer.pt that hash correctly but are not the expected state: the trainer falls
    back to the previous checkpoint, sets the bad one aside, and ends bitwise-identical to a clean run."""
    cfg = trained_copy("run")
    root = Path(cfg.out_dir) / "checkpoints"
    (Path(cfg.out_dir) / "summary.json").unlink()
    shutil.rmtree(root / "step_00000012")
    bad = root / "step_00000008"
    marker = tmp_path / "executed"
    if case == "structure":  # a tensor-only pickle (weights_only accepts it) without the optimizer's fields
        buf = io.BytesIO()
        torch.save({"weights": torch.zeros(3)}, buf)
        name, data, why = "optimizer.pt", buf.getvalue(), "not an optimizer state"
    elif case == "refused-class":  # an ordinary pickle of a class weights_only does not allow
        name, data, why = "trainer.pt", pickle.dumps(argparse_namespace()), "not a weights-only state file"
    elif case == "malicious":
        name, data, why = "optimizer.pt", pickle.dumps(_Boom(marker)), "not a weights-only state file"
    else:
        buf = io.BytesIO()
        state = torch.load(bad / "trainer.pt", weights_only=True)
        state["step"] = 7
        torch.save(state, buf)
        name, data, why = "trainer.pt", buf.getvalue(), "records step 7"
    _reseal(bad, name, data)
    s = train(cfg)
    assert not marker.exists()  # never executed
    resume = events(cfg.out_dir, "resume")[-1]
    assert resume["checkpoint"].endswith("step_00000004")
    assert str(bad / name) in resume["message"] and why in resume["message"]
    assert (root / "corrupt_step_00000008").is_dir() and s["step"] == 12
    assert_same_weights(final_weights(smoke_run), final_weights(cfg.out_dir))


def test_training_resume_reads_each_checkpoint_file_once(trained_copy, monkeypatch):
    cfg = trained_copy("once")
    (Path(cfg.out_dir) / "summary.json").unlink()
    reads = []
    real = Path.read_bytes

    def counting(self):
        if "checkpoints" in self.parts:
            reads.append(self.name)
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", counting)
    monkeypatch.setattr(torch, "load", _only_from_memory(torch.load))
    train(cfg)
    assert sorted(reads) == sorted(["checksums.json", "model.json", "model.safetensors", "train_config.json",
                                    "optimizer.pt", "trainer.pt"])


def _only_from_memory(real):
    def load(f, *a, **k):
        assert isinstance(f, io.BytesIO), "a checkpoint file was read from disk a second time"
        return real(f, *a, **k)
    return load


def test_newest_good_reports_every_skipped_checkpoint(run_with_two):
    cfg, older, newer = run_with_two
    (newer / "trainer.pt").unlink()
    good, problems = newest_good(cfg.out_dir, training=True)
    assert good.path == older and len(problems) == 1 and "trainer.pt: missing" in problems[0]
    assert good.optimizer is not None and good.trainer["step"] == 8
    assert resolve(cfg.out_dir, warn=None).path == newer  # evaluation needs no trainer.pt


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_checkpoint(make_cfg, capfd, monkeypatch):
    import errno

    from cart.cli import main

    cfg = make_cfg("full", steps=8)
    real = ck._torch_save
    calls = {"n": 0}

    def full_disk(obj, path):
        calls["n"] += 1
        if calls["n"] > 2:  # step 4's optimizer.pt and trainer.pt are written; step 8's are not
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)
    monkeypatch.setattr(ck, "_torch_save", full_disk)
    argv = ["train", "--preset", "smoke", "--data", cfg.data, "--out-dir", cfg.out_dir, "--steps", "8", "--batch-size", "4",
            "--seq-len", "32", "--ckpt-every", "4", "--eval-every", "0", "--final-eval-tokens", "128", "--peak-flops", "1e11",
            "--tensorboard", "false"]
    capfd.readouterr()
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no space left on the device" in err and "Traceback" not in err
    root = Path(cfg.out_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004"]  # no half-written step_8, no temp folder
    assert ck.verify(root / "step_00000004") is None
    monkeypatch.undo()
    assert main(argv) == 0  # space freed: the rerun resumes from step 4 and finishes
    assert ck.read(root / "step_00000008", training=True).step == 8
