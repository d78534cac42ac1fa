"""Everything that is not single-device maths: process groups, DDP/FSDP2, activation checkpointing,
torch.compile, and gathering full state for checkpoints. Applied to the model from outside (the
model files hold single-device code only).

Launch with torchrun; nothing else is needed (gloo on CPU, NCCL on GPU):

    # one node, 8 GPUs (or CPU processes)
    torchrun --standalone --nproc_per_node=8 -m cart.train --preset paper --out-dir runs/p
    # two nodes: run on each node, with the same rendezvous endpoint (host:port of node 0)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 \
        --rdzv_id=cart-run -m cart.train --preset paper --out-dir /shared/runs/p

`batch_size` is the global micro-batch: every rank reads the same global batch from the loader and
keeps its own rows, so the data stream, the loss and the checkpoints do not depend on the world
size (a run saved on 8 processes resumes on 2, and a 2-process run matches a 1-process run with the
same batch_size within floating-point tolerance). Only rank 0 writes files; the run directory must
be on a filesystem every node sees.

Parallelism: "ddp" replicates the model and all-reduces gradients (NCCL/gloo); "fsdp" (FSDP2,
`fully_shard`) shards parameters, gradients and optimizer state, each prelude/coda layer its own
unit and the looped core in the root unit (it runs R times per forward, so it stays gathered for
the whole loop). Checkpoints always hold full, unsharded tensors.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from cart.device import resolve_device as _resolve_device
from cart.model.blocks import Block
from cart.model.recurrence import CoreBlock


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # we initialised the default process group (so we tear it down)
    cpu_group: object = None  # gloo group for host-side flags (stop requests) without touching the GPU stream

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    return _resolve_device(pref, local_rank, what="TrainConfig.device")


def setup(device_pref: str) -> Dist:
    """Join the process group torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local)
    if world == 1:
        return Dist(0, 0, 1, device)
    owns = not dist.is_initialized()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    cpu_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Dist(dist.get_rank(), local, dist.get_world_size(), device, owns, cpu_group)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if `flag` is true on any (a host-side all-reduce; no device sync)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.cpu_group)
    return bool(t.item())


def all_reduce_(t: torch.Tensor, d: Dist, op=None) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


# ---------------------------------------------------------------------- applied from outside the model
def blocks(model: nn.Module) -> list[nn.Module]:
    """Every transformer block (prelude, core, coda; dense layers) in forward order."""
    return [m for m in model.modules() if isinstance(m, (Block, CoreBlock))]


_AC_ENABLED = True


@contextmanager
def activation_checkpointing_disabled():
    """Run checkpointed blocks plainly (for torch.func transforms such as the loop Jacobian estimate)."""
    global _AC_ENABLED
    prev, _AC_ENABLED = _AC_ENABLED, False
    try:
        yield
    finally:
        _AC_ENABLED = prev


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every block's activations in backward instead of storing them. Same gradients
    (non-reentrant checkpointing replays the identical ops). Parameter names are unchanged: only
    each block's `forward` is replaced on the instance. A shared core is checkpointed per loop."""
    n = 0
    for block in blocks(model):
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if not (_AC_ENABLED and torch.is_grad_enabled()):
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        n += 1
    return n


def wrap(model: nn.Module, d: Dist, parallel: str) -> nn.Module:
    """The module to call for training: the model itself, DDP(model), or the model sharded in place."""
    if not d.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in list(getattr(model, "prelude", [])) + [m for m in (getattr(model, "coda", None),) if m is not None]:
            fully_shard(layer)
        if not hasattr(model, "prelude"):  # dense: each unshared layer is a unit
            if not model.config.share_layers:
                for layer in model.layers:
                    fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    # device_ids=None: inputs are already on the device, and the `stats` dict passed to forward
    # must reach the model as the same object (DDP would copy it when moving inputs)
    # buffers (RoPE tables) are built identically on every rank: no per-forward broadcast
    import inspect
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters else {"broadcast_buffers": False}
    return DDP(model, device_ids=None, **no_sync)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU state dict (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name, full tensors on CPU: loads under any world size."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
