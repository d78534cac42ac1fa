"""Model checkpoints on disk: safetensors weights + a JSON config, written atomically.

Layout of one checkpoint directory (training adds optimizer/scheduler/loader state beside these):

    <ckpt>/model.safetensors   weights (tied embedding stored once)
    <ckpt>/model.json          {"config": {...model config...}, "meta": {...}}

A run directory holds `checkpoints/step_NNNNNNNN/` folders; `resolve_checkpoint` picks the newest
one that verifies. Loading never executes code: safetensors and JSON only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cart.config import config_from_dict, config_to_dict
from cart.model import build_model

WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (safetensors refuses aliases) and contiguous CPU copies."""
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_model(ckpt_dir: str | Path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Write weights + config into ckpt_dir (created); each file lands atomically."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    base = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(model_state(model), tmp)
        os.replace(tmp, ckpt_dir / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(ckpt_dir / MODEL_JSON, {"config": config_to_dict(base.config), "meta": meta or {}})
    return ckpt_dir


def _step_of(p: Path) -> int:
    try:
        return int(p.name.split("_")[-1])
    except ValueError:
        return -1


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_dir() and p.name.startswith("step_") and _step_of(p) >= 0), key=_step_of)


def verify_checkpoint(ckpt_dir: Path) -> str | None:
    """None if the checkpoint reads back, else the reason it does not."""
    w, j = ckpt_dir / WEIGHTS, ckpt_dir / MODEL_JSON
    if not w.is_file() or not j.is_file():
        return f"{ckpt_dir}: missing {WEIGHTS} or {MODEL_JSON}"
    try:
        json.loads(j.read_text())
        load_file(str(w))
    except (json.JSONDecodeError, SafetensorError, OSError, RuntimeError) as e:
        return f"{ckpt_dir}: unreadable ({type(e).__name__}: {e})"
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint dir, a model.safetensors file, or a run dir (its newest checkpoint that verifies)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name != WEIGHTS:
            raise ValueError(f"{p}: expected a checkpoint directory, a run directory or a {WEIGHTS} file")
        p = p.parent
    if (p / WEIGHTS).exists() or (p / MODEL_JSON).exists():
        return p
    ckpts = list_checkpoints(p)
    if not ckpts:
        raise FileNotFoundError(f"{p}: no checkpoints (expected {p}/checkpoints/step_*/ or {WEIGHTS})")
    problems = []
    for c in reversed(ckpts):
        why = verify_checkpoint(c)
        if why is None:
            return c
        problems.append(why)
    raise ValueError(f"{p}: no readable checkpoint: " + "; ".join(problems))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the model described by a checkpoint and load its weights. Returns (model, meta)."""
    ckpt = resolve_checkpoint(path)
    why = verify_checkpoint(ckpt)
    if why is not None:
        raise ValueError(f"corrupt checkpoint: {why}")
    info = json.loads((ckpt / MODEL_JSON).read_text())
    if "config" not in info:
        raise ValueError(f"{ckpt / MODEL_JSON}: missing field 'config'")
    cfg = config_from_dict(info["config"], source=str(ckpt / MODEL_JSON))
    model = build_model(cfg)
    state = load_file(str(ckpt / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(f"{ckpt / WEIGHTS}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(device)
    model.eval()
    return model, {"checkpoint": str(ckpt), **info.get("meta", {})}
