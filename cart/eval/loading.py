"""Everything an evaluation needs besides the model code: the checkpoint, its tokenizer, its data.

Notable features:
- `load_for_eval` accepts what `cart.checkpoint.load_model` accepts (a run dir, a checkpoint dir or a
  model.safetensors file) and finds the tokenizer the model was trained with: `--tokenizer` if
  given, else the manifest of `--data`, else the `"data"` field of the run's `train_config.json`;
- a tokenizer that cannot belong to the model (larger vocabulary than the embedding, a clearly
  different vocabulary size, or a sha256 that differs from the one the run recorded) is refused
  with a message naming both sides, instead of producing silently meaningless numbers;
- `cart.data` is imported lazily, so the evaluation code itself works with any object that has the
  tokenizer interface (`encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`).
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cart.checkpoint import checkpoint_dir, load_model, warn_stderr
from cart.device import resolve_device as _resolve_device

# A vocabulary may be padded (e.g. to a multiple of 64) for matmul efficiency; a gap larger than this
# between the embedding and the tokenizer means another tokenizer.
MAX_VOCAB_PADDING = 128


class Tokenizer(Protocol):
    """The interface of `cart.data.load_tokenizer(...)` that evaluation relies on."""

    vocab_size: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass
class EvalSetup:
    model: torch.nn.Module
    tokenizer: Any | None
    data_dir: Path | None
    meta: dict
    checkpoint: Path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`--device`: auto (None), cpu, cuda or cuda:N; refused in one line when this machine has no such device."""
    return _resolve_device(device, what="--device")


def autocast(device: torch.device, dtype: str | torch.dtype | None):
    """bf16/fp16 autocast on the given device, or nothing for fp32 (the model's weights stay fp32)."""
    dt = parse_dtype(dtype)
    if dt == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r} (expected one of {sorted(table)})")
    return table[dtype]


def _run_dir_candidates(ckpt: Path) -> list[Path]:
    """The checkpoint dir and the folders above it that may be its run dir (run/checkpoints/step_X)."""
    out = [ckpt]
    p = ckpt
    for _ in range(3):
        p = p.parent
        out.append(p)
    return out


def _data_field(value: Any) -> str | None:
    """A data dir from a recorded "data" value: a path, or a dict naming it (the trainer records
    {"root": <prepared dir>, "recipe", "tokenizer_sha256", ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for k in ("root", "dir", "path", "data_dir"):
            if isinstance(value.get(k), str):
                return value[k]
    return None


def read_train_config(checkpoint: str | Path) -> tuple[dict, Path] | None:
    """The nearest train_config.json (the checkpoint's own, else its run dir's) and the folder holding it."""
    ckpt = Path(checkpoint)
    for d in _run_dir_candidates(ckpt):
        f = d / "train_config.json"
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: unreadable ({e})") from e
            if not isinstance(cfg, dict):
                raise ValueError(f"{f}: expected a JSON object")
            return cfg, d
    return None


def training_seq_len(checkpoint: str | Path) -> int | None:
    """The sequence length the run trained with, if its train_config.json records one."""
    found = read_train_config(checkpoint)
    if found is None:
        return None
    cfg = found[0]
    for scope in (cfg.get("config"), cfg):
        if isinstance(scope, dict) and isinstance(scope.get("seq_len"), int):
            return scope["seq_len"]
    return None


def find_data_dir(checkpoint: str | Path, meta: dict | None = None) -> Path | None:
    """The prepared-data dir recorded by training (train_config.json "data", or the checkpoint meta)."""
    ckpt = checkpoint_dir(checkpoint)
    recorded: list[tuple[str, Path]] = []
    v = _data_field((meta or {}).get("data"))
    if v:
        recorded.append((v, ckpt))
    found = read_train_config(ckpt)
    if found is not None:
        cfg, d = found
        for value in (cfg.get("data"), (cfg.get("config") or {}).get("data") if isinstance(cfg.get("config"), dict) else None):
            v = _data_field(value)
            if v:
                recorded.append((v, d))
    for v, base in recorded:
        for cand in (Path(v).expanduser(), base / v):  # as recorded (relative to where training ran), or to the run dir
            if (cand / "manifest.json").is_file():
                return cand.resolve()
    if recorded:
        raise FileNotFoundError(f"the run records data dir {recorded[0][0]!r}, but no manifest.json is there "
                                "(prepare the data again or pass --data / --tokenizer)")
    return None


def load_tokenizer(spec: str | Path):
    """`cart.data.load_tokenizer` (a path or a named tokenizer)."""
    try:
        from cart.data import load_tokenizer as _load
    except ImportError as e:  # cart.data not installed in this checkout
        raise ValueError(f"cannot load tokenizer {spec!r}: cart.data is unavailable ({e})") from e
    return _load(str(spec))


def load_manifest(data_dir: str | Path):
    try:
        from cart.data import Manifest
    except ImportError as e:
        raise ValueError(f"cannot read the data manifest in {data_dir}: cart.data is unavailable ({e})") from e
    p = Path(data_dir)
    if not (p / "manifest.json").is_file():
        raise FileNotFoundError(f"{p}: no manifest.json (expected a prepared data dir, see `cart data prepare`)")
    return Manifest.load(p)


def check_tokenizer(model: torch.nn.Module, tokenizer, expected_sha256: str | None = None, source: str = "") -> None:
    """Refuse a tokenizer that cannot belong to this model."""
    V = model.config.vocab_size
    tv = int(tokenizer.vocab_size)
    name = getattr(tokenizer, "name", type(tokenizer).__name__)
    if tv > V:
        raise ValueError(f"tokenizer mismatch: {name} has {tv:,} tokens but the model's embedding has {V:,}{source}")
    if V - tv >= MAX_VOCAB_PADDING:
        raise ValueError(f"tokenizer mismatch: {name} has {tv:,} tokens, the model was built for {V:,}{source} "
                         "(pass the tokenizer the model was trained with: --tokenizer or --data)")
    sha = getattr(tokenizer, "sha256", None)
    if expected_sha256 and sha and sha != expected_sha256:
        raise ValueError(f"tokenizer mismatch: {name} has sha256 {sha[:16]}…, the run recorded {expected_sha256[:16]}…{source}")


def _recorded_tokenizer_sha(meta: dict, ckpt: Path, manifest) -> str | None:
    """The tokenizer sha256 the run recorded (checkpoint meta or train_config.json), else the manifest's."""
    sources = [meta]
    found = read_train_config(ckpt)
    if found is not None:
        sources.append(found[0])
    for src in sources:
        if isinstance(src.get("tokenizer_sha256"), str):
            return src["tokenizer_sha256"]
        for key in ("data", "tokenizer"):  # the trainer records {"data": {"tokenizer_sha256": ...}}
            held = src.get(key)
            if isinstance(held, dict):
                for k in ("tokenizer_sha256", "sha256"):
                    if isinstance(held.get(k), str):
                        return held[k]
    return getattr(manifest, "tokenizer_sha256", None) if manifest is not None else None


def load_for_eval(
    checkpoint: str | Path,
    *,
    device: str | None = None,
    tokenizer: str | Path | Any | None = None,
    data: str | Path | None = None,
    need_tokenizer: bool = True,
    warn=warn_stderr,
) -> EvalSetup:
    """Load a checkpoint for evaluation with its tokenizer (and data dir, when one is known).

    The weights are verified against the checkpoint's checksums.json (`cart.checkpoint`); given a run
    dir, a newer checkpoint that fails is skipped with a one-line `warn` naming the bad file."""
    dev = resolve_device(device)
    model, meta = load_model(checkpoint, dev, warn=warn)
    ckpt = Path(meta.get("checkpoint", checkpoint))
    if data is not None:
        data_dir = Path(data).resolve()
    else:
        try:
            data_dir = find_data_dir(ckpt, meta)
        except FileNotFoundError:
            if tokenizer is None:
                raise
            data_dir = None  # the recorded data moved, but the caller named the tokenizer itself
    manifest = load_manifest(data_dir) if data_dir is not None else None
    tok = None
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        tok = tokenizer  # an object with the tokenizer interface
    elif tokenizer is not None:
        tok = load_tokenizer(tokenizer)
    elif manifest is not None:
        tok = manifest.load_tokenizer()
    if tok is None and need_tokenizer:
        raise ValueError(f"{ckpt}: no tokenizer known for this checkpoint (no train_config.json with a data dir); "
                         "pass --tokenizer PATH_OR_NAME or --data PREPARED_DIR")
    if tok is not None:
        check_tokenizer(model, tok, _recorded_tokenizer_sha(meta, ckpt, manifest), f" (checkpoint {ckpt})")
    return EvalSetup(model=model, tokenizer=tok, data_dir=data_dir, meta=meta, checkpoint=ckpt)


__all__ = ["EvalSetup", "Tokenizer", "autocast", "check_tokenizer", "find_data_dir", "load_for_eval", "load_manifest",
           "load_tokenizer", "parse_dtype", "read_train_config", "resolve_device", "training_seq_len"]
