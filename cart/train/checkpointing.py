"""Training checkpoints: everything needed to continue a run exactly, on top of the model layout.

One checkpoint is a directory `run_dir/checkpoints/step_NNNNNNNN/`:

    model.safetensors, model.json   the weights and model config (`cart.checkpoint.save_model`), so
                                    any evaluation code loads it with `cart.checkpoint.load_model`
    optimizer.pt                    optimizer state (tensors and plain containers)
    trainer.pt                      step, schedule, data-loader position, loop sampler, RNG states
    train_config.json               the full TrainConfig, the code version
    checksums.json                  sha256 of every file above, written last

Notable features:
- atomic: everything is written and fsynced into `checkpoints/.tmp-step_NNNNNNNN-<pid>/`, then the
  directory is renamed into place; a kill at any moment leaves either the old set of checkpoints
  or the new one, never a half-written `step_` directory (stale temp dirs are removed on resume);
- verified on load: every file re-hashed against checksums.json; a checkpoint that fails is
  reported, set aside as `corrupt_step_NNNNNNNN` and the previous good one is used;
- loaded with `torch.load(weights_only=True)`: reading a checkpoint never executes code;
- retention: the newest `keep` checkpoints survive (0 = all).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import torch

from cart.checkpoint import MODEL_JSON, WEIGHTS, atomic_write_json, list_checkpoints, save_model, verify_checkpoint

OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.pt"
TRAIN_CONFIG = "train_config.json"
CHECKSUMS = "checksums.json"
FILES = (WEIGHTS, MODEL_JSON, OPTIMIZER, TRAINER, TRAIN_CONFIG)


def ckpt_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _torch_save(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus `git describe` of the source tree when it is a repository."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("cart")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return f"{v}+{out.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return v


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer_state: dict, trainer_state: dict,
         train_config: dict, meta: dict, keep: int = 0) -> Path:
    """Write checkpoint `step` atomically, then apply retention. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(tmp, model, {"step": step, **meta})
        _torch_save(optimizer_state, tmp / OPTIMIZER)
        _torch_save(trainer_state, tmp / TRAINER)
        atomic_write_json(tmp / TRAIN_CONFIG, {"config": train_config, **meta})
        atomic_write_json(tmp / CHECKSUMS, {f: _sha256(tmp / f) for f in FILES})
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (after resuming from an earlier one): swap, then drop the old
            old = root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def verify(ckpt: Path) -> str | None:
    """None when the checkpoint is complete and every file matches its checksum, else why not."""
    why = verify_checkpoint(ckpt)
    if why is not None:
        return why
    try:
        sums = json.loads((ckpt / CHECKSUMS).read_text())
    except (OSError, ValueError) as e:
        return f"{ckpt}: missing or unreadable {CHECKSUMS} ({e})"
    for f in FILES:
        p = ckpt / f
        if not p.is_file():
            return f"{ckpt}: missing {f}"
        if f not in sums or _sha256(p) != sums[f]:
            return f"{ckpt}: {f} does not match its checksum (corrupt or modified)"
    return None


def find_latest(run_dir: Path) -> tuple[Path | None, list[str]]:
    """(newest checkpoint that verifies or None, reasons for each newer one that did not)."""
    problems = []
    for c in reversed(list_checkpoints(run_dir)):
        why = verify(c)
        if why is None:
            return c, problems
        problems.append(why)
    return None, problems


def set_aside(run_dir: Path, newer_than: int) -> list[Path]:
    """Rename checkpoints after step `newer_than` (they failed verification) to corrupt_step_*, and
    remove temp dirs left by a kill mid-write. Returns the new paths."""
    root = Path(run_dir) / "checkpoints"
    moved = []
    for c in list_checkpoints(run_dir):
        if int(c.name.split("_")[-1]) > newer_than:
            dest = root / f"corrupt_{c.name}"
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(c, dest)
            moved.append(dest)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
    return moved


def read_train_config(ckpt: Path) -> dict:
    """{"config": TrainConfig dict, "code_version", "data", "step", ...} of a checkpoint."""
    return json.loads((ckpt / TRAIN_CONFIG).read_text())


def load_state(ckpt: Path, name: str, map_location="cpu"):
    return torch.load(ckpt / name, map_location=map_location, weights_only=True)
