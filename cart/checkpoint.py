"""Checkpoints: the one module that writes, verifies, finds and loads them.

One checkpoint is a directory (a run keeps them as `run_dir/checkpoints/step_NNNNNNNN/`):

    model.safetensors   weights (tied embedding stored once)
    model.json          {"config": {...model config...}, "meta": {...}}
    optimizer.pt        training only: optimizer state (tensors and plain containers)
    trainer.pt          training only: step, schedule, data-loader position, loop sampler, RNG states
    train_config.json   training only: the full TrainConfig, the code version
    checksums.json      sha256 of every file above, written last

Everything that reads weights (training's resume, `cart eval *`, `cart generate`, the lm-eval
adapter, sweeps) goes through `read` / `resolve` / `load_model` here. Notable features:
- atomic: a training checkpoint is written and fsynced into `checkpoints/.tmp-step_N-<pid>/` and
  renamed into place, so a kill at any moment leaves the old set of checkpoints or the new one;
- verified on every load, each file read once: its bytes are hashed against checksums.json and
  parsed from those same bytes, so nothing can change between the check and the use. A file that
  matches its checksum but is not what it should be (a safetensors header that does not parse,
  weights that do not fit the config, a pickle that `weights_only` refuses or that lacks the
  expected fields) is corrupt too. A checkpoint without checksums.json is refused;
- newest good: given a run dir, the newest checkpoint that verifies is used and every newer one
  is reported with one line naming the bad file (training sets those aside as corrupt_step_N);
- loading never executes code: safetensors, JSON, and `torch.load(weights_only=True)`;
- retention: the newest `keep` training checkpoints survive (0 = all).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from cart.config import config_from_dict, config_to_dict
from cart.model import build_model

WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
OPTIMIZER = "optimizer.pt"
TRAINER = "trainer.pt"
TRAIN_CONFIG = "train_config.json"
CHECKSUMS = "checksums.json"
MODEL_FILES = (WEIGHTS, MODEL_JSON)
TRAINING_FILES = (WEIGHTS, MODEL_JSON, OPTIMIZER, TRAINER, TRAIN_CONFIG)

Warn = Callable[[str], None]


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or not a checkpoint; the message is one line
    naming the file."""


def warn_stderr(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


# ============================================================================ writing
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


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with shared tensors stored once (safetensors refuses aliases) and contiguous CPU copies."""
    seen, out = set(), {}
    for name, t in _unwrap(model).state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def _write_model_files(ckpt_dir: Path, model: torch.nn.Module, meta: dict | None) -> None:
    from safetensors.torch import save_file
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".model.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(model_state(model), tmp)
        os.replace(tmp, ckpt_dir / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_json(ckpt_dir / MODEL_JSON, {"config": config_to_dict(_unwrap(model).config), "meta": meta or {}})


def _write_checksums(ckpt_dir: Path, files: tuple[str, ...]) -> None:
    atomic_write_json(ckpt_dir / CHECKSUMS, {f: _sha256(ckpt_dir / f) for f in files})


def save_model(ckpt_dir: str | Path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """A model-only checkpoint: weights + config + checksums.json, each file landing atomically
    (checksums last, so a checkpoint interrupted mid-write never verifies)."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / CHECKSUMS).unlink(missing_ok=True)
    _write_model_files(ckpt_dir, model, meta)
    _write_checksums(ckpt_dir, MODEL_FILES)
    return ckpt_dir


def ckpt_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save(run_dir: Path, step: int, model: torch.nn.Module, optimizer_state: dict, trainer_state: dict,
         train_config: dict, meta: dict, keep: int = 0) -> Path:
    """Write training checkpoint `step` atomically, then apply retention. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_model_files(tmp, model, {"step": step, **meta})
        _torch_save(optimizer_state, tmp / OPTIMIZER)
        _torch_save(trainer_state, tmp / TRAINER)
        atomic_write_json(tmp / TRAIN_CONFIG, {"config": train_config, **meta})
        _write_checksums(tmp, TRAINING_FILES)
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


# ============================================================================ finding
def _step_of(p: Path) -> int:
    try:
        return int(p.name.split("_")[-1])
    except ValueError:
        return -1


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """`run_dir/checkpoints/step_*` directories, oldest first (not verified)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_dir() and p.name.startswith("step_") and _step_of(p) >= 0), key=_step_of)


def _is_checkpoint_dir(p: Path) -> bool:
    return any((p / f).exists() for f in (WEIGHTS, MODEL_JSON, CHECKSUMS))


def checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory a path names, WITHOUT verifying it: for finding metadata beside it
    (train_config.json, the data dir), never for loading weights. A run dir gives its newest."""
    p = Path(path)
    if p.is_file() and p.name == WEIGHTS:
        return p.parent
    if p.is_dir() and not _is_checkpoint_dir(p):
        ckpts = list_checkpoints(p)
        if ckpts:
            return ckpts[-1]
    return p


# ============================================================================ reading and verifying
@dataclass
class Checkpoint:
    """A checkpoint read and verified: every field came from bytes that matched checksums.json."""

    path: Path
    config: object                       # CARTConfig | DenseConfig
    meta: dict
    weights: dict[str, torch.Tensor]
    optimizer: dict | None = None        # training=True only
    trainer: dict | None = None          # training=True only
    train_config: dict | None = None     # when the checkpoint holds train_config.json
    files: list[str] = field(default_factory=list)

    @property
    def step(self) -> int | None:
        s = self.meta.get("step")
        return s if isinstance(s, int) else None


def _read_verified(ckpt: Path, name: str, sums: dict) -> bytes:
    path = ckpt / name
    if name not in sums:
        raise CheckpointError(f"{ckpt / CHECKSUMS} does not list {name}: the checkpoint is incomplete or was modified")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (listed in {CHECKSUMS})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != sums[name]:
        raise CheckpointError(f"{path} does not match its checksum (corrupt or modified)")
    return data


def _not_a(what: str, path: Path, e: BaseException) -> CheckpointError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointError(f"{path} matches its checksum but is not {what} ({type(e).__name__}: {detail[:200]})")


def _parse_json(data: bytes, path: Path) -> dict:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _not_a("valid JSON", path, e) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse_pickle(data: bytes, path: Path) -> object:
    try:  # weights_only: tensors and plain containers only; anything else is refused, never executed
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse checksum-valid bytes means "not a state file"
        raise _not_a("a weights-only state file", path, e) from None


def _check_optimizer(obj, path: Path) -> dict:
    if not (isinstance(obj, dict) and isinstance(obj.get("state"), dict) and isinstance(obj.get("param_groups"), list)):
        raise CheckpointError(f"{path}: not an optimizer state (expected a dict with 'state' and 'param_groups')")
    return obj


def _check_trainer(obj, path: Path, step: int | None) -> dict:
    ok = (isinstance(obj, dict) and isinstance(obj.get("step"), int) and isinstance(obj.get("loader"), dict)
          and isinstance(obj.get("sampler"), dict) and isinstance(obj.get("rng"), dict)
          and {"torch", "numpy", "python"} <= set(obj["rng"]))
    if not ok:
        raise CheckpointError(f"{path}: not a trainer state (expected step, loader, sampler and rng)")
    if step is not None and obj["step"] != step:
        raise CheckpointError(f"{path}: records step {obj['step']}, but the checkpoint is step {step}")
    return obj


def _check_weights(weights: dict[str, torch.Tensor], cfg, path: Path) -> None:
    """The tensors must be exactly the ones the config's model holds (names, shapes, dtypes); a name
    that aliases another tensor (the tied head) may be absent, as `model_state` stores it once."""
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        expected = build_model(cfg).state_dict(keep_vars=True)
    first: dict[int, str] = {}
    aliases = set()
    for name, t in expected.items():
        if id(t) in first:
            aliases.add(name)
        first.setdefault(id(t), name)
    missing = sorted(k for k in set(expected) - set(weights) if k not in aliases)
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config in {MODEL_JSON} (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    for k, t in weights.items():
        e = expected[k]
        if tuple(t.shape) != tuple(e.shape) or t.dtype != e.dtype:
            raise CheckpointError(f"{path}: tensor {k!r} is {tuple(t.shape)} {t.dtype}, the config needs "
                                  f"{tuple(e.shape)} {e.dtype}")


def read(path: str | Path, training: bool = False) -> Checkpoint:
    """Read and verify one checkpoint directory (or its model.safetensors).

    training=False: the weights, model.json and (when present) train_config.json.
    training=True: also optimizer.pt and trainer.pt, as resuming needs them.
    Raises CheckpointError (one line naming the file) when anything is missing, fails its checksum,
    or does not parse as what it should be."""
    from safetensors.torch import load as load_safetensors

    ckpt = Path(path)
    if ckpt.is_file() and ckpt.name == WEIGHTS:
        ckpt = ckpt.parent
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: not a checkpoint directory")
    sums_path = ckpt / CHECKSUMS
    if not sums_path.is_file():
        what = "an incomplete checkpoint (interrupted while writing?)" if (ckpt / WEIGHTS).exists() else "not a checkpoint"
        raise CheckpointError(f"{sums_path}: missing, so the weights cannot be verified ({what})")
    try:
        sums = _parse_json(sums_path.read_bytes(), sums_path)
    except OSError as e:
        raise CheckpointError(f"{sums_path}: unreadable ({e.strerror or e})") from None
    if not all(isinstance(v, str) for v in sums.values()):
        raise CheckpointError(f"{sums_path}: expected file name -> sha256 hex strings")

    info = _parse_json(_read_verified(ckpt, MODEL_JSON, sums), ckpt / MODEL_JSON)
    if not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{ckpt / MODEL_JSON}: missing field 'config'")
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    try:
        cfg = config_from_dict(info["config"], source=str(ckpt / MODEL_JSON))
    except (ValueError, TypeError) as e:
        raise CheckpointError(str(e)) from None

    raw = _read_verified(ckpt, WEIGHTS, sums)
    try:
        weights = load_safetensors(raw)
    except Exception as e:  # noqa: BLE001 - any parse failure of checksum-valid bytes: not a weights file
        raise _not_a("a safetensors weights file", ckpt / WEIGHTS, e) from None
    del raw
    _check_weights(weights, cfg, ckpt / WEIGHTS)

    out = Checkpoint(path=ckpt, config=cfg, meta=meta, weights=weights, files=[MODEL_JSON, WEIGHTS])
    if training or TRAIN_CONFIG in sums:
        tc = _parse_json(_read_verified(ckpt, TRAIN_CONFIG, sums), ckpt / TRAIN_CONFIG)
        if not isinstance(tc.get("config"), dict):
            raise CheckpointError(f"{ckpt / TRAIN_CONFIG}: missing field 'config'")
        out.train_config = tc
        out.files.append(TRAIN_CONFIG)
    if training:
        step = _step_of(ckpt) if ckpt.name.startswith("step_") else None
        out.optimizer = _check_optimizer(_parse_pickle(_read_verified(ckpt, OPTIMIZER, sums), ckpt / OPTIMIZER), ckpt / OPTIMIZER)
        out.trainer = _check_trainer(_parse_pickle(_read_verified(ckpt, TRAINER, sums), ckpt / TRAINER), ckpt / TRAINER, step)
        out.files += [OPTIMIZER, TRAINER]
    return out


def verify(path: str | Path, training: bool = True) -> str | None:
    """None when the checkpoint reads back completely and verified, else the one-line reason."""
    try:
        read(path, training=training)
    except CheckpointError as e:
        return str(e)
    return None


def newest_good(run_dir: str | Path, training: bool = False) -> tuple[Checkpoint | None, list[str]]:
    """(the newest checkpoint of the run that verifies, or None; the reason for each newer one that did not)."""
    problems: list[str] = []
    for c in reversed(list_checkpoints(run_dir)):
        try:
            return read(c, training=training), problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, problems


def resolve(path: str | Path, training: bool = False, warn: Warn | None = warn_stderr) -> Checkpoint:
    """A checkpoint dir, a model.safetensors file, or a run dir (its newest checkpoint that verifies,
    each newer bad one reported through `warn`), read and verified."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.is_file():
        if p.name != WEIGHTS:
            raise CheckpointError(f"{p}: expected a checkpoint directory, a run directory or a {WEIGHTS} file")
        p = p.parent
    if _is_checkpoint_dir(p):
        return read(p, training=training)
    if not list_checkpoints(p):
        raise FileNotFoundError(f"{p}: no checkpoints (expected {p}/checkpoints/step_*/ or {WEIGHTS})")
    good, problems = newest_good(p, training=training)
    if good is None:
        raise CheckpointError(f"{p}: no readable checkpoint: " + "; ".join(problems))
    for why in problems if warn is not None else ():
        warn(f"using {good.path.name}, the newest checkpoint that verifies; skipped: {why}")
    return good


def resolve_checkpoint(path: str | Path, warn: Warn | None = None) -> Path:
    """The directory `resolve` would load (verified). Reads the files: use `checkpoint_dir` when
    only the location of metadata is wanted."""
    return resolve(path, warn=warn).path


def instantiate(ck: Checkpoint, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a verified checkpoint, weights loaded, in eval mode on `device`."""
    model = build_model(ck.config)
    model.load_state_dict(ck.weights, strict=False)  # aliases (tied head) were checked by `read`
    model.to(device)
    model.eval()
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu", warn: Warn | None = warn_stderr
               ) -> tuple[torch.nn.Module, dict]:
    """Build the model a checkpoint describes and load its verified weights (each file read once).
    Returns (model, meta); meta["checkpoint"] is the directory used."""
    ck = resolve(path, warn=warn)
    model = instantiate(ck, device)
    return model, {"checkpoint": str(ck.path), **ck.meta}


def set_aside(run_dir: Path, newer_than: int) -> list[Path]:
    """Rename checkpoints after step `newer_than` (they failed verification) to corrupt_step_*, and
    remove temp dirs left by a kill mid-write. Returns the new paths."""
    root = Path(run_dir) / "checkpoints"
    moved = []
    for c in list_checkpoints(run_dir):
        if _step_of(c) > newer_than:
            dest = root / f"corrupt_{c.name}"
            shutil.rmtree(dest, ignore_errors=True)
            os.rename(c, dest)
            moved.append(dest)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)
    return moved


__all__ = ["Checkpoint", "CheckpointError", "save", "save_model", "read", "verify", "resolve", "resolve_checkpoint",
           "newest_good", "load_model", "instantiate", "list_checkpoints", "checkpoint_dir", "ckpt_dir", "set_aside",
           "model_state", "atomic_write_bytes", "atomic_write_json", "warn_stderr", "WEIGHTS", "MODEL_JSON", "OPTIMIZER",
           "TRAINER", "TRAIN_CONFIG", "CHECKSUMS"]
