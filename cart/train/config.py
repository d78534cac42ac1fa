"""Training configuration: one validated dataclass; the tiers are TOML presets.

- `TrainConfig`: every knob of a run. Defaults are the paper's recipe (SPEC §3): AdamW (0.9, 0.95),
  weight decay 0.1, peak lr 3e-4, 100 warmup steps, cosine to 3e-5, clip 1.0, bf16 where supported.
  Validated on construction (`cart.validation`: each field's type and `option(...)` constraints), so
  a typo or an impossible value fails before any work starts; every message names the field and the
  value. Each field's description is its `cart train` flag's help: a new field is a new flag.
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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from cart.config import CARTConfig, DenseConfig, ModelConfig, config_fields, config_from_dict, config_to_dict
from cart.validation import Check, ConfigError, from_dict, non_negative, option, positive, validate

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "train"

# TrainConfig fields added after runs and studies were recorded, with the value every earlier run had:
# a checkpoint without them resumes as that value, and at that value they stay out of a study's run
# spec, so the run keys of existing studies do not change
ADDED_FIELDS: dict[str, Any] = {"doc_masking": False, "threads": 0}


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

    kind: Literal["fixed", "uniform", "poisson_lognormal"] = option(
        "fixed", "R per step (fixed: n_loops)", flag="--loop-sampling")
    min_loops: int = option(1, "smallest R", positive, flag="--loop-min")
    max_loops: int = option(0, "largest R (0: unbounded poisson_lognormal)", non_negative, flag="--loop-max")
    mean: float = option(0.0, "poisson_lognormal mean R (0: n_loops)", non_negative, flag="--loop-mean")
    sigma: float = option(0.5, "poisson_lognormal sigma", non_negative, flag="--loop-sigma")
    backprop_loops: int = option(0, "backprop through the last K loops (0: all)", non_negative, metavar="K")

    def __post_init__(self) -> None:
        validate(self)
        if self.kind == "uniform" and self.max_loops < self.min_loops:
            raise ConfigError(f"loop_sampling.kind='uniform' needs max_loops >= min_loops, got [{self.min_loops}, {self.max_loops}]")
        if self.kind == "poisson_lognormal" and self.max_loops and self.max_loops < self.min_loops:
            raise ConfigError(f"loop_sampling.max_loops={self.max_loops} < min_loops={self.min_loops}")

    @property
    def variable(self) -> bool:
        return self.kind != "fixed"


def _model(value: dict, where: str) -> ModelConfig:
    return config_from_dict(value, where=where)


_DEVICE = Check(lambda v: v in ("auto", "cpu") or v.startswith("cuda"), "'auto', 'cpu', 'cuda' or 'cuda:N'")


@dataclass(frozen=True)
class TrainConfig:
    # ---- what to train, on what, where
    model: ModelConfig = option(help="the model config (a dict is accepted and validated)", factory=CARTConfig, convert=_model)
    data: str = option("data/smoke", "prepared data folder (`cart data prepare`)",
                       Check(bool, "a path to a prepared data folder"))
    out_dir: str = option("runs/default", "run directory: checkpoints, metrics, summary",
                          Check(bool, "a path"))
    # ---- batch: tokens per optimizer step = batch_size * grad_accum * seq_len, whatever the world size
    steps: int = option(3000, "optimizer steps", positive)
    # summed over ALL processes: each rank takes batch_size / world_size
    batch_size: int = option(32, "sequences per micro-step, all processes", positive)
    grad_accum: int = option(1, "micro-steps per optimizer step", positive)
    seq_len: int = option(512, "tokens per training sequence", positive)
    # ---- optimizer and schedule (SPEC §3)
    optimizer: Literal["adamw", "adamw8bit"] = option("adamw", "adamw8bit: the paper's (CUDA only)")
    lr: float = option(3e-4, "peak learning rate", positive)
    min_lr: float = option(3e-5, "the cosine's floor", non_negative)
    warmup_steps: int = option(100, "linear warmup, then cosine to min_lr", non_negative)
    weight_decay: float = option(0.1, "AdamW weight decay", non_negative)
    # None: the model decides (stable fidelity exempts gates, blend weights, norms and the loop-index
    # projection, SPEC §6.4; paper fidelity decays everything, as published). True/False forces it.
    decay_everything: bool | None = option(None, "decay every parameter (unset: the fidelity decides)")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas", Check(lambda b: all(0 <= x < 1 for x in b),
                                                                           "two numbers in [0, 1)"), metavar="B1,B2")
    eps: float = option(1e-8, "AdamW epsilon", positive)
    grad_clip: float = option(1.0, "global-norm clip (0: off)", non_negative)
    # ---- numerics and speed
    # auto: bf16 autocast where the device has native bf16 (GPUs with bf16; CPUs with AVX512-BF16/AMX), fp32 elsewhere
    dtype: Literal["auto", "fp32", "bf16"] = option("auto", "auto: bf16 autocast where native")
    compile: bool = option(False, "torch.compile the forward pass and the loss")
    # 0 = torch's default (one per physical core); OpenMP's wait policy: cart/runtime.py
    threads: int = option(0, "CPU intra-op threads (0: torch's default)", non_negative)
    activation_checkpointing: bool = option(False, "recompute blocks in backward")
    loop_sampling: LoopSampling = option(help="training-time variable R", factory=LoopSampling)
    # attention stays inside each document packed into a training row (block-diagonal causal mask, also
    # in validation); off as in the paper, whose rows attend across document boundaries
    doc_masking: bool = option(False, "attend within each packed document")
    seed: int = option(42, "seed of init and loop sampling", non_negative)
    device: str = option("auto", "auto | cpu | cuda | cuda:N", _DEVICE)
    parallel: Literal["ddp", "fsdp"] = option("ddp", "several processes: DDP or FSDP2 sharding")
    # ---- evaluation, logging, checkpoints
    eval_every: int = option(500, "steps between evals (0: only at the end)", non_negative)
    eval_tokens: int = option(0, "tokens per validation set (0: all)", non_negative)
    final_eval_tokens: int = option(0, "the same at the final eval (0: all)", non_negative)
    # n-gram floors: unigram and Kneser-Ney bigram counted on exactly the tokens the run has trained on,
    # scored on the evaluation's tokens, beside the model's ppl: at the final evaluation (summary.json,
    # ngram_floors.json), at every evaluation (metrics.jsonl too: how fast a model clears its floor), or off
    ngram_floors: Literal["off", "final", "every_eval"] = option("final", "n-gram floors beside the ppl")
    eval_batch_size: int = option(0, "sequences per eval forward (0: batch_size)", non_negative)
    log_every: int = option(10, "steps between logs (device syncs)", positive)
    ckpt_every: int = option(500, "steps between checkpoints (0: at end)", non_negative)
    keep_checkpoints: int = option(3, "newest checkpoints kept (0: all)", non_negative)
    nonfinite: Literal["stop", "skip"] = option("stop", "what a non-finite loss or gradient does")
    max_skips: int = option(5, "consecutive skips before stopping", non_negative)
    # 0 = from the GPU table, or measured once on CPU
    peak_flops: float = option(0.0, "MFU peak FLOP/s per device (0: look up)", non_negative)
    tensorboard: bool = option(True, "write tb/ if tensorboard is installed")

    # ------------------------------------------------------------------ cross-field rules
    def __post_init__(self) -> None:
        validate(self)
        if self.min_lr > self.lr:
            raise ConfigError(f"TrainConfig.min_lr={self.min_lr} must not exceed lr={self.lr}")
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(f"TrainConfig.seq_len={self.seq_len} exceeds the model's max_seq_len={self.model.max_seq_len}: "
                              f"lower seq_len or raise model.max_seq_len")
        ls, m = self.loop_sampling, self.model
        loops_vary = isinstance(m, CARTConfig) and m.share_core or isinstance(m, DenseConfig) and m.share_layers
        if ls.variable and not loops_vary:
            raise ConfigError("TrainConfig.loop_sampling: a variable loop count needs a shared core (CART with share_core=true) "
                              f"or shared layers (dense with share_layers=true); this {m.kind} model has distinct blocks per loop")
        if ls.backprop_loops and not loops_vary:
            raise ConfigError("TrainConfig.loop_sampling.backprop_loops needs a shared core (CART with share_core=true) or "
                              "shared layers (dense with share_layers=true): distinct blocks in the truncated loops would never train")
        if ls.backprop_loops and self.compile:
            raise ConfigError("TrainConfig: loop_sampling.backprop_loops (truncated backprop) does not combine with "
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
        return from_dict(cls, d, source)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """A preset by name (`smoke`, `cpu`, `paper`, `main`) or a .toml/.json file, with overrides.

        `model=` and `loop_sampling=` overrides given as dicts update the preset's tables field by
        field; a `kind` that differs from the preset's keeps only the fields both kinds share."""
        return cls.from_dict(merge(load_preset(name), overrides), source=f"preset {name!r}")


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
