"""Training configuration: one validated dataclass; the tiers are TOML presets.

- `TrainConfig`: every knob of a run. Defaults are the paper's recipe (SPEC §3): AdamW (0.9, 0.95),
  weight decay 0.1, peak lr 3e-4, 100 warmup steps, cosine to 3e-5, clip 1.0, bf16 where supported.
  Validated on construction, so a typo or an impossible value fails before any work starts; every
  message names the field and the value.
- `LoopSampling`: training-time variable R (Huginn/Parcae-style): R drawn per step from a
  distribution, optionally backpropagating through only the last k loops. The paper names it as
  the fix for its variable-R result (SPEC §4, §5).
- `TrainConfig.from_preset(name, **overrides)`: the tiers `smoke`, `cpu`, `paper` and the README's
  `main` job live in `cart/presets/train/*.toml`. A tier is data, never a code path.
- `to_dict` / `from_dict`: the on-disk form (`train_config.json` in every run directory and
  checkpoint), unknown fields refused.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cart.config import CARTConfig, DenseConfig, ModelConfig, config_fields, config_from_dict, config_to_dict

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "train"

# TrainConfig fields added after runs and studies were recorded, with the value every earlier run had:
# a checkpoint without them resumes as that value, and at that value they stay out of a study's run
# spec, so the run keys of existing studies do not change
ADDED_FIELDS: dict[str, Any] = {"doc_masking": False}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class LoopSampling:
    """How many loops R each training step runs.

    kind="fixed": the model's n_loops every step (the paper).
    kind="uniform": R ~ U{min_loops .. max_loops}.
    kind="poisson_lognormal": Huginn/Parcae-style heavy-tailed R: tau ~ N(log(mean) - sigma²/2, sigma),
      R = Poisson(e^tau) clipped to [min_loops, max_loops] (max_loops=0: no upper clip), E[R] ~ mean.
    backprop_loops=k > 0: only the last k loops of a step get gradients (the first R - k run without
      autograd: truncated backprop, constant memory in R); 0 backpropagates through every loop.
    """

    kind: Literal["fixed", "uniform", "poisson_lognormal"] = "fixed"
    min_loops: int = 1
    max_loops: int = 0
    mean: float = 0.0  # poisson_lognormal only; 0 = the model's n_loops
    sigma: float = 0.5
    backprop_loops: int = 0

    def __post_init__(self) -> None:
        _check(self.kind in ("fixed", "uniform", "poisson_lognormal"),
               f"loop_sampling.kind must be 'fixed', 'uniform' or 'poisson_lognormal', got {self.kind!r}")
        for f in ("min_loops", "max_loops", "backprop_loops"):
            _check(_is_int(getattr(self, f)), f"loop_sampling.{f} must be an integer, got {getattr(self, f)!r}")
        _check(self.min_loops >= 1, f"loop_sampling.min_loops must be >= 1, got {self.min_loops}")
        _check(self.max_loops >= 0, f"loop_sampling.max_loops must be >= 0 (0 = no upper bound), got {self.max_loops}")
        _check(self.backprop_loops >= 0, f"loop_sampling.backprop_loops must be >= 0 (0 = every loop), got {self.backprop_loops}")
        _check(self.mean >= 0 and self.sigma >= 0, f"loop_sampling.mean and .sigma must be >= 0, got {self.mean}, {self.sigma}")
        if self.kind == "uniform":
            _check(self.max_loops >= self.min_loops,
                   f"loop_sampling.kind='uniform' needs max_loops >= min_loops, got [{self.min_loops}, {self.max_loops}]")
        if self.kind == "poisson_lognormal" and self.max_loops:
            _check(self.max_loops >= self.min_loops, f"loop_sampling.max_loops={self.max_loops} < min_loops={self.min_loops}")

    @property
    def variable(self) -> bool:
        return self.kind != "fixed"


@dataclass(frozen=True)
class TrainConfig:
    # ---- what to train, on what, where
    model: ModelConfig = field(default_factory=CARTConfig)  # a dict is accepted and validated
    data: str = "data/smoke"  # a prepared data folder (`cart data prepare <recipe>`)
    out_dir: str = "runs/default"  # the run directory: checkpoints/, metrics.jsonl, summary.json, tb/
    # ---- batch: tokens per optimizer step = batch_size * grad_accum * seq_len, whatever the world size
    steps: int = 3000
    batch_size: int = 32  # sequences per micro-step summed over ALL processes (each rank takes batch_size / world_size)
    grad_accum: int = 1  # micro-steps per optimizer step
    seq_len: int = 512
    # ---- optimizer and schedule (SPEC §3)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # the paper used 8-bit AdamW (bitsandbytes, CUDA only)
    lr: float = 3e-4
    min_lr: float = 3e-5  # the cosine's floor
    warmup_steps: int = 100  # linear warmup, then cosine from lr to min_lr at `steps`
    weight_decay: float = 0.1
    # None: the model decides (stable fidelity exempts gates, blend weights, norms and the loop-index
    # projection, SPEC §6.4; paper fidelity decays everything, as published). True/False forces it.
    decay_everything: bool | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 = off
    # ---- numerics and speed
    # auto: bf16 autocast where the device has native bf16 (GPUs with bf16; CPUs with AVX512-BF16/AMX), fp32 elsewhere
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute every block in backward (same gradients, less memory)
    loop_sampling: LoopSampling = field(default_factory=LoopSampling)
    # attention stays inside each document packed into a training row (block-diagonal causal mask, also
    # in validation); off as in the paper, whose rows attend across document boundaries
    doc_masking: bool = False
    seed: int = 42  # initialisation and loop sampling; the data order is fixed (as in the paper)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    parallel: Literal["ddp", "fsdp"] = "ddp"  # with more than one process: replicate (DDP) or shard (FSDP2)
    # ---- evaluation, logging, checkpoints
    eval_every: int = 500  # steps between validation passes; 0 = only at the end
    eval_tokens: int = 0  # predicted tokens per validation set on eval steps; 0 = the whole set
    final_eval_tokens: int = 0  # the same for the final evaluation in summary.json; 0 = the whole set
    # n-gram floors: unigram and Kneser-Ney bigram counted on exactly the tokens the run has trained on,
    # scored on the evaluation's tokens, beside the model's ppl: at the final evaluation (summary.json,
    # ngram_floors.json), at every evaluation (metrics.jsonl too: how fast a model clears its floor), or off
    ngram_floors: Literal["off", "final", "every_eval"] = "final"
    eval_batch_size: int = 0  # sequences per eval forward; 0 = batch_size
    log_every: int = 10  # the only steps that synchronise with the device
    ckpt_every: int = 500  # 0 = only at the end (and on SIGTERM/SIGINT)
    keep_checkpoints: int = 3  # newest checkpoints kept; 0 = keep all
    nonfinite: Literal["stop", "skip"] = "stop"  # what a non-finite loss or gradient does
    max_skips: int = 5  # with nonfinite="skip": more consecutive non-finite steps than this stops anyway
    peak_flops: float = 0.0  # MFU denominator in FLOP/s per device; 0 = from the GPU table or measured once on CPU
    tensorboard: bool = True  # write tb/ when tensorboard is installed

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", config_from_dict(self.model, source="TrainConfig.model"))
        _check(isinstance(self.model, (CARTConfig, DenseConfig)),
               f"TrainConfig.model must be a CARTConfig, DenseConfig or dict, got {type(self.model).__name__}")
        if isinstance(self.loop_sampling, dict):
            object.__setattr__(self, "loop_sampling", _build(LoopSampling, self.loop_sampling, "TrainConfig.loop_sampling"))
        _check(isinstance(self.loop_sampling, LoopSampling), f"TrainConfig.loop_sampling must be a LoopSampling or dict, got {self.loop_sampling!r}")
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        for name, ok in _CHOICES.items():
            _check(getattr(self, name) in ok, f"TrainConfig.{name} must be one of {list(ok)}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "log_every"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, f"TrainConfig.{name} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "eval_every", "eval_tokens", "final_eval_tokens", "eval_batch_size", "ckpt_every",
                     "keep_checkpoints", "max_skips", "seed"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 0, f"TrainConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip", "peak_flops"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, f"TrainConfig.{name} must be a number >= 0, got {v!r}")
        _check(self.lr > 0, f"TrainConfig.lr must be > 0, got {self.lr}")
        _check(self.min_lr <= self.lr, f"TrainConfig.min_lr={self.min_lr} must not exceed lr={self.lr}")
        _check(self.eps > 0, f"TrainConfig.eps must be > 0, got {self.eps}")
        _check(len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
               f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        _check(self.decay_everything in (None, True, False), f"TrainConfig.decay_everything must be true, false or unset, got {self.decay_everything!r}")
        for name in ("compile", "activation_checkpointing", "tensorboard", "doc_masking"):
            _check(isinstance(getattr(self, name), bool), f"TrainConfig.{name} must be true/false, got {getattr(self, name)!r}")
        _check(isinstance(self.data, str) and self.data != "", f"TrainConfig.data must be a path to a prepared data folder, got {self.data!r}")
        _check(isinstance(self.out_dir, str) and self.out_dir != "", f"TrainConfig.out_dir must be a path, got {self.out_dir!r}")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _check(self.seq_len <= self.model.max_seq_len,
               f"TrainConfig.seq_len={self.seq_len} exceeds the model's max_seq_len={self.model.max_seq_len}: "
               f"lower seq_len or raise model.max_seq_len")
        self._check_loops()

    def _check_loops(self) -> None:
        ls, m = self.loop_sampling, self.model
        loops_vary = isinstance(m, CARTConfig) and m.share_core or isinstance(m, DenseConfig) and m.share_layers
        if ls.variable:
            _check(loops_vary, "TrainConfig.loop_sampling: a variable loop count needs a shared core (CART with share_core=true) "
                               f"or shared layers (dense with share_layers=true); this {m.kind} model has distinct blocks per loop")
        if ls.backprop_loops:
            _check(loops_vary, "TrainConfig.loop_sampling.backprop_loops needs a shared core (CART with share_core=true) or "
                               "shared layers (dense with share_layers=true): distinct blocks in the truncated loops would never train")
            _check(not self.compile, "TrainConfig: loop_sampling.backprop_loops (truncated backprop) does not combine with "
                                     "compile=true: the no-grad switch between loops would break the compiled graph")

    # ------------------------------------------------------------------ derived
    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ on-disk form
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["model"] = config_to_dict(self.model)
        d["loop_sampling"] = dataclasses.asdict(self.loop_sampling)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "train config") -> "TrainConfig":
        d = dict(d)
        if isinstance(d.get("model"), dict):
            d["model"] = config_from_dict(d["model"], source=f"{source}: model")
        if isinstance(d.get("loop_sampling"), dict):
            d["loop_sampling"] = _build(LoopSampling, d["loop_sampling"], f"{source}: loop_sampling")
        return _build(cls, d, source)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """A preset by name (`smoke`, `cpu`, `paper`, `main`) or a .toml/.json file, with overrides.

        `model=` and `loop_sampling=` overrides given as dicts update the preset's tables field by
        field; a `kind` that differs from the preset's keeps only the fields both kinds share."""
        return cls.from_dict(merge(load_preset(name), overrides), source=f"preset {name!r}")


_CHOICES = {
    "optimizer": ("adamw", "adamw8bit"),
    "dtype": ("auto", "fp32", "bf16"),
    "parallel": ("ddp", "fsdp"),
    "nonfinite": ("stop", "skip"),
    "ngram_floors": ("off", "final", "every_eval"),
}


def _build(cls, d: dict[str, Any], source: str):
    """cls(**d) with unknown fields and wrong scalar types named (TOML/JSON give ints for floats)."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    d = dict(d)
    for k, v in d.items():
        if hints[k] is float and _is_int(v):
            d[k] = float(v)
        elif hints[k] is int and not _is_int(v):
            raise ValueError(f"{source}: field {k!r} must be an integer, got {v!r}")
        elif hints[k] is bool and not isinstance(v, bool):
            raise ValueError(f"{source}: field {k!r} must be true/false, got {v!r}")
        elif hints[k] is str and not isinstance(v, str):
            raise ValueError(f"{source}: field {k!r} must be a string, got {v!r}")
    return cls(**d)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The dict form of a preset (by name) or of a .toml/.json config file (by path). A file may
    name a base preset under the key "preset" and override any of its fields."""
    p = Path(name)
    if p.suffix in (".toml", ".json"):
        if not p.is_file():
            raise FileNotFoundError(f"train config file {p} not found")
    else:
        p = PRESET_DIR / f"{name}.toml"
        if not p.is_file():
            raise ValueError(f"unknown train preset {name!r}; presets: {list_presets()} (or give a .toml/.json path)")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            import json
            d = json.loads(text)
        else:
            d = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{p}: cannot parse ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: expected a table of TrainConfig fields, got {type(d).__name__}")
    base = d.pop("preset", None)
    if base is not None:
        base = str(base)
        if Path(base).suffix in (".toml", ".json") and not Path(base).is_absolute():
            base = str(p.parent / base)  # a base file is relative to the file naming it
        if Path(base).resolve() == p.resolve():
            raise ValueError(f"{p}: a config cannot name itself as its base preset")
        d = merge(load_preset(base), d)
    return d


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset dict updated by overrides; model/loop_sampling dicts merge field by field."""
    out = dict(base)
    for k, v in overrides.items():
        if k == "model" and isinstance(v, dict):
            out[k] = merge_model(out.get("model") or {}, v)
        elif k == "loop_sampling" and isinstance(v, dict):
            out[k] = {**(out.get(k) or {}), **v}
        elif isinstance(v, (CARTConfig, DenseConfig)):
            out[k] = config_to_dict(v)
        elif isinstance(v, LoopSampling):
            out[k] = dataclasses.asdict(v)
        else:
            out[k] = v
    return out


def merge_model(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    if isinstance(base, (CARTConfig, DenseConfig)):
        base = config_to_dict(base)
    kind = over.get("kind", base.get("kind", "cart"))
    if kind != base.get("kind", "cart"):  # switching family: keep what both families share
        cls = CARTConfig if kind == "cart" else DenseConfig
        shared = {f.name for f in config_fields(cls)}
        base = {k: v for k, v in base.items() if k in shared}
    return {**base, **over}
