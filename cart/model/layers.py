"""Building blocks shared by every model: RMSNorm, SwiGLU, rotary position embedding, init.

Notable: SwiGLU keeps its gate and up projections in one matrix (one matmul instead of two, same
parameter count 3df); RoPE tables are buffers built once per model for max_seq_len positions;
`cross_entropy` is the tied head's loss without the [tokens, vocab] temporaries of
`F.cross_entropy` (its forward turns the logits into their own gradient, in place, chunk by chunk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _RMSNormCPU(torch.autograd.Function):
    """RMSNorm for CPU training: ATen's fused forward kernel (one pass, also returns 1/rms) and a
    hand-written backward. With autograd on, F.rms_norm runs as its composite (pow, mean, add,
    rsqrt, two products) and differentiates through each of them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = torch.ops.aten._fused_rms_norm(x, [x.shape[-1]], weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        xhat = x * rstd
        dw = (dy * xhat).sum(dim=tuple(range(dy.ndim - 1))) if ctx.needs_input_grad[1] else None
        g = dy * weight
        # dx = rstd * (g - xhat * mean(g * xhat))
        dx = g.sub_(xhat.mul_((g * xhat).mean(-1, keepdim=True))).mul_(rstd)
        return dx, dw, None


_HAS_FUSED_RMS = hasattr(torch.ops.aten, "_fused_rms_norm")
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _custom_autograd_ok() -> bool:
    """The hand-written autograd Functions here serve ordinary eager autograd only: under
    torch.compile (the compiler fuses the plain ops itself) and under torch.func transforms
    (jvp/vmap, e.g. the loop Jacobian diagnostic) the plain ops are used."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling() and not _functorch_active()


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_HAS_FUSED_RMS and x.device.type == "cpu" and x.dtype == self.weight.dtype
                and (x.requires_grad or self.weight.requires_grad) and _custom_autograd_ok()):
            return _RMSNormCPU.apply(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class _SiluMul(torch.autograd.Function):
    """silu(gate) * up from the fused [.., 2f] projection, keeping only that projection for the
    backward (autograd would also keep silu(gate), f floats per token) and writing both halves of
    its gradient straight into one [.., 2f] buffer (autograd would concatenate them: one more copy)."""

    @staticmethod
    def forward(ctx, gu: torch.Tensor, d_ff: int) -> torch.Tensor:
        gate, up = gu.split(d_ff, dim=-1)
        out = F.silu(gate)
        out.mul_(up)
        ctx.save_for_backward(gu)
        ctx.d_ff = d_ff
        return out

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (gu,) = ctx.saved_tensors
        gate, up = gu.split(ctx.d_ff, dim=-1)
        dgu = torch.empty_like(gu)
        dgate, dup = dgu.split(ctx.d_ff, dim=-1)
        torch.mul(dy, up, out=dup)  # scratch: dy * up
        torch.ops.aten.silu_backward.grad_input(dup, gate, grad_input=dgate)  # dy * up * silu'(gate)
        torch.ops.aten.silu.out(gate, out=dup)
        dup.mul_(dy)  # dy * silu(gate)
        return dgu, None


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); gate and up fused into one [2f, d] weight."""

    def __init__(self, d: int, d_ff: int):
        super().__init__()
        self.d_ff = d_ff
        self.w_gate_up = nn.Linear(d, 2 * d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gu = self.w_gate_up(x)
        if gu.requires_grad and gu.is_contiguous() and _custom_autograd_ok():
            return self.w_down(_SiluMul.apply(gu, self.d_ff))
        gate, up = gu.split(self.d_ff, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Rotary(nn.Module):
    """Rotary embedding tables (base 10,000 by default) for head dim `head_dim`, rotate-half layout.

    out = x * [cos, cos] + [x2, x1] * [-sin, sin] (x = [x1, x2] split in halves): two full-width
    tables, so a rotation is one concatenation and one fused multiply-add instead of four
    half-width products, a subtraction, an addition and a concatenation."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        t = torch.arange(max_seq_len, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # [T, D/2]
        cos, sin = freqs.cos(), freqs.sin()
        # persistent=False: derived from the config, never saved in checkpoints
        self.register_buffer("cos", torch.cat((cos, cos), -1).float(), persistent=False)  # [T, D]
        self.register_buffer("sin", torch.cat((-sin, sin), -1).float(), persistent=False)  # [T, D], signed
        # [cos_f | sin_f] per position (f < D/2): the rotation as decode-time attention applies it on
        # the query side (attention.MLASelfAttention._decode_attend)
        self.register_buffer("trig", torch.cat((cos, sin), -1).float(), persistent=False)  # [T, D]
        self.max_seq_len = max_seq_len

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate x [B, H, T, D] for positions start .. start+T-1."""
        T = x.shape[-2]
        if start + T > self.max_seq_len:
            raise ValueError(f"sequence of {start + T} positions exceeds max_seq_len={self.max_seq_len}")
        cos = self.cos[start:start + T].to(x.dtype)
        sin = self.sin[start:start + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        # the concatenation is contiguous [B, H, T, D], and the result takes its layout: attention can
        # then view heads as one batch without copying (x itself is usually a transposed view)
        return torch.addcmul(torch.cat((x2, x1), dim=-1) * sin, x, cos)


def init_weights(module: nn.Module, std: float) -> None:
    """The paper's init: every Linear and the embedding N(0, std); norm weights 1 (set by RMSNorm)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)


# ---------------------------------------------------------------------------------------------
# Cross-entropy on the tied head without [tokens, vocab] temporaries.
#
# F.cross_entropy materialises log_softmax (one [N, V] tensor) in the forward pass and, in the
# backward, a zero-filled [N, V] NLL gradient plus the [N, V] log_softmax gradient: three passes
# over, and three fresh allocations of, the largest tensor of a small model (at d=256, V=8192 and
# 2,048 tokens: 67 MB each, page-faulted in anew on every step on CPU). Here the forward turns the
# logits, in place and a cache-sized chunk of rows at a time, into their own gradient: one exp per
# logit gives the log-sum-exp (the loss) and the softmax together, each row is scaled by
# valid / count, and the target entries get (softmax_t - 1) * valid / count, computed in fp32 from
# the log-sum-exp and the target's logit. The backward only multiplies by the incoming gradient
# (skipped when it is 1, the usual case) and hands that same storage on. One exp pass over the
# logits instead of two (the log-sum-exp, then the softmax again in the backward); in bf16 also one
# conversion to fp32 instead of two (results/bench/PERF.md, change 13).
_CE_CHUNK_BYTES = {"cpu": 1 << 21}  # CPU: ~2 MB of fp32 logits per chunk (cache-sized)
_CE_CHUNK_BYTES_OTHER = 1 << 30  # accelerators: few, large chunks (each one is a few kernel launches)


def _ce_chunks(n_rows: int, vocab: int, device: torch.device):
    step = max(1, _CE_CHUNK_BYTES.get(device.type, _CE_CHUNK_BYTES_OTHER) // (4 * vocab))
    return range(0, n_rows, step), step


class _InPlaceCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
        x = logits.view(-1, logits.shape[-1])
        t = targets.reshape(-1)
        valid = t != ignore_index
        t_safe = torch.where(valid, t, torch.zeros_like(t))
        picked = x.gather(1, t_safe[:, None]).squeeze(1).float()  # read before the logits are overwritten
        count = valid.sum().float()
        weight = valid.float() / count  # d loss / d logit[n, v] = weight[n] * (softmax[n, v] - [v == t[n]])
        lse = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        starts, step = _ce_chunks(x.shape[0], x.shape[1], x.device)
        for i in starts:
            c = x[i:i + step]
            p = c if c.dtype == torch.float32 else c.float()
            m = p.amax(-1, keepdim=True)
            p.sub_(m).exp_()
            total = p.sum(-1, keepdim=True)
            torch.add(m.squeeze(-1), total.squeeze(-1).log(), out=lse[i:i + step])
            p.mul_(weight[i:i + step, None] / total)
            if p is not c:
                c.copy_(p)
        loss = torch.where(valid, lse - picked, torch.zeros_like(lse)).sum() / count
        target_grad = (torch.exp(picked - lse) - 1) * weight  # fp32, then rounded once to the logits' dtype
        # index_put_, not scatter_: ATen's CPU scatter into a bf16 tensor copies the whole of it first
        x.index_put_((torch.arange(x.shape[0], device=x.device), t_safe), target_grad.to(x.dtype))
        # The caller's logits now hold d loss / d logits. Not marked dirty (autograd allows a Function
        # that modifies a view in place only one output), but the in-place writes bump the version
        # counter, so an earlier op that saved these logits for its backward raises there.
        ctx.save_for_backward(logits)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        (g,) = ctx.saved_tensors
        # Reading the scalar is free on a CPU (and lets the usual 1.0 skip a pass); elsewhere it would
        # be a sync, so the multiply stays on the device.
        if g.device.type == "cpu":
            scale = float(grad_loss)
            if scale != 1.0:
                g.mul_(scale)
        else:
            g.mul_(grad_loss)
        return g, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean token cross-entropy in fp32 of logits [..., V] against targets [...]; the same value and
    gradient as F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1)).

    With autograd on, the logits are CONSUMED: their storage is overwritten with their gradient
    (so pass logits that nothing else needs; autograd raises, rather than computing garbage, if an
    earlier op saved them for its backward). Without autograd, under torch.compile and under
    torch.func transforms the plain F.cross_entropy is used and the logits are left alone."""
    if not (logits.requires_grad and logits.is_contiguous() and _custom_autograd_ok()):
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)
    return _InPlaceCrossEntropy.apply(logits, targets, ignore_index)
