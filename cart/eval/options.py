"""The options of an evaluation, as small typed objects instead of long parameter lists.

- `Run`: how the model is run (loop count, device, autocast dtype, or any idx -> logits callable);
- `PplOptions`: how a validation stream is cut into windows and scored (`cart eval ppl`, vary-R);
- `TaskOptions`: how benchmark requests are batched and encoded (`cart eval tasks`, vary-R);
- `AdaptiveOptions`: adaptive R (halt a position when its state stops moving);
- `Sampling`: how generation picks each next token (temperature, top-k, top-p, seed; `GREEDY`).
Each validates itself on construction; the functions of `cart.eval` take them whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def _positive(name: str, v, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class Run:
    """How to run the model: `n_loops` (None = as trained), device, autocast `dtype` ("bf16"/None) and an
    optional `forward` (idx -> logits) used instead of `model(idx, n_loops=...)` (e.g. adaptive R)."""

    n_loops: int | None = None
    device: str | torch.device = "cpu"
    dtype: str | torch.dtype | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        _positive("n_loops", self.n_loops, allow_none=True)

    def logits_fn(self, model) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.forward is not None:
            return self.forward
        n_loops = self.n_loops
        return lambda idx: model(idx, n_loops=n_loops)


@dataclass(frozen=True)
class PplOptions:
    """Windows of `seq_len` tokens (sliding by `stride` when given), `batch_size` windows per forward pass,
    the first `max_tokens` predictions only (None = the whole set), and whether the predictions of each
    document's first token are left out of loss and perplexity."""

    seq_len: int
    stride: int | None = None
    batch_size: int = 8
    max_tokens: int | None = None
    exclude_first_token: bool = False

    def __post_init__(self) -> None:
        _positive("seq_len", self.seq_len)
        _positive("batch_size", self.batch_size)
        _positive("max_tokens", self.max_tokens, allow_none=True)
        if self.stride is not None:
            _positive("stride", self.stride)
            if self.stride > self.seq_len:
                raise ValueError(f"stride must be in [1, seq_len={self.seq_len}], got {self.stride}")


@dataclass(frozen=True)
class TaskOptions:
    """The first `limit` items of each task (None = all), `batch_tokens` tokens per forward pass, and
    whether contexts start with BOS."""

    limit: int | None = None
    batch_tokens: int = 4096
    add_bos: bool = True

    def __post_init__(self) -> None:
        _positive("limit", self.limit, allow_none=True)
        _positive("batch_tokens", self.batch_tokens)


@dataclass(frozen=True)
class AdaptiveOptions:
    """Adaptive R: stop a position's loop when ||h_{r+1} - h_r|| / ||h_r|| < tol, after at least
    `min_loops` and at most `max_loops` (None = the model's R); per position ("token", causal) or per
    whole sequence."""

    tol: float
    max_loops: int | None = None
    min_loops: int = 1
    granularity: str = "token"

    def __post_init__(self) -> None:
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or self.tol < 0:
            raise ValueError(f"adaptive tol must be a number >= 0 (0: nothing halts), got {self.tol!r}")
        _positive("max_loops", self.max_loops, allow_none=True)
        _positive("min_loops", self.min_loops)
        if self.granularity not in ("token", "sequence"):
            raise ValueError(f"granularity must be 'token' or 'sequence', got {self.granularity!r}")


__all__ = ["Run", "PplOptions", "TaskOptions", "AdaptiveOptions"]


@dataclass(frozen=True)
class Sampling:
    """How `generate` picks each next token: softmax at `temperature` (0 = greedy argmax) over the top-k
    tokens and the top-p nucleus (None: no filter), drawn from a CPU generator seeded with `seed` (None: a
    fresh random seed), so that one seed gives one sample on any device."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0 or t == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be an integer >= 0 (0: no filter), got {self.top_k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling(temperature=0.0)
