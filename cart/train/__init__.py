"""cart.train: the paper's training recipe with exact resume, stability metrics and torchrun scale-out.

Public API:
- `TrainConfig` (validated on construction; `TrainConfig.from_preset("smoke" | "cpu" | "paper" |
  "main", **overrides)`, `.to_dict()` / `.from_dict()`) and `LoopSampling` (training-time variable R);
- `train(cfg, resume=True) -> summary dict`;
- `evaluate_perplexity(model, manifest, seq_len, max_tokens=None, batch_size=8)`.

Modules, one concern each: `config` (the dataclass and presets), `optim` (parameter groups, AdamW,
schedule), `loops` (variable R, truncated backprop), `trainer` (the loop), `distributed` (torchrun,
DDP/FSDP2, activation checkpointing), `metrics` (JSONL, TensorBoard, progress), `mfu` (device peak
FLOP/s), `evaluate` (validation perplexity). Checkpoints (atomic save, verified resume) live in
`cart.checkpoint`, shared with evaluation. `python -m cart.train` (or `torchrun ... -m cart.train`)
= `cart train`.
"""
from cart.train.config import LoopSampling, TrainConfig, list_presets
from cart.train.evaluate import evaluate_perplexity
from cart.train.trainer import NonFiniteError, train

__all__ = ["TrainConfig", "LoopSampling", "list_presets", "train", "evaluate_perplexity", "NonFiniteError"]
