"""The hand-written kernels behind the training speed-ups give the plain ops' values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from cart.model.layers import Rotary, RMSNorm, SwiGLU, _RMSNormCPU, _SiluMul, cross_entropy


@pytest.mark.parametrize("V,N", [(97, 24), (8192, 300)])
@pytest.mark.parametrize("mult", [1.7, -0.5])
@pytest.mark.parametrize("bf16", [False, True])
def test_cross_entropy_matches_torch(V, N, mult, bf16):
    torch.manual_seed(0)
    h = torch.randn(N, 32, requires_grad=True)
    W = (torch.randn(V, 32) * 0.3).requires_grad_()
    t = torch.randint(0, V, (N,))
    t[::7] = -100  # ignored targets

    def run(fn):
        h.grad = W.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            lg = F.linear(h, W).view(2, N // 2, V)
            loss = fn(lg, t.view(2, N // 2))
        (loss * mult).backward()
        return loss.detach(), h.grad.clone(), W.grad.clone()

    ref = run(lambda lg, tt: F.cross_entropy(lg.float().view(-1, V), tt.reshape(-1)))
    got = run(cross_entropy)
    if not bf16:
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        return
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)  # the loss is computed in fp32 either way
    # The gradient reaching the bf16 logits is rounded to bf16 once in the reference; here once more
    # when the backward's multiplier is not a power of two (1.7): within one bf16 ulp (2^-8) in norm.
    bound = 2.0 ** -8 if mult == 1.7 else 1e-4
    for a, b in zip(ref[1:], got[1:]):
        assert ((b - a).norm() / a.norm()).item() < bound


def test_cross_entropy_refuses_to_corrupt_shared_logits():
    h = torch.randn(4, 8, requires_grad=True)
    W = torch.randn(10, 8, requires_grad=True)
    lg = h @ W.t()
    loss = lg.pow(2).sum() * 0.01 + cross_entropy(lg, torch.randint(0, 10, (4,)))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_cross_entropy_consumes_its_logits_and_needs_one_exp_pass():
    """The logits are overwritten with their gradient in the forward pass (documented), so the
    backward is a pass-through at grad 1."""
    torch.manual_seed(1)
    lg = torch.randn(6, 13, requires_grad=True)
    t = torch.randint(0, 13, (6,))
    t[2] = -100
    want = torch.func.grad(lambda z: F.cross_entropy(z, t))(lg.detach())
    work = lg.detach().clone().requires_grad_()
    view = work * 1.0  # a non-leaf, like a model's logits
    loss = cross_entropy(view, t)
    torch.testing.assert_close(view.detach(), want, rtol=1e-5, atol=1e-7)  # already the gradient
    torch.testing.assert_close(loss, F.cross_entropy(lg.detach(), t))
    loss.backward()
    torch.testing.assert_close(work.grad, want, rtol=1e-5, atol=1e-7)
    assert view.detach()[2].abs().max() == 0  # an ignored row has no gradient


def test_cross_entropy_without_grad_is_plain():
    lg = torch.randn(3, 5, 11)
    t = torch.randint(0, 11, (3, 5))
    torch.testing.assert_close(cross_entropy(lg, t), F.cross_entropy(lg.view(-1, 11), t.view(-1)))


def test_rmsnorm_function_gradcheck_and_matches_plain():
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _RMSNormCPU.apply(a, b, 1e-6), (x, w))
    n = RMSNorm(16)
    with torch.no_grad():
        n.weight.add_(torch.randn(16))
    x = torch.randn(4, 5, 16, requires_grad=True)
    g = torch.randn(4, 5, 16)
    y = n(x)
    y.backward(g)
    got = (y.detach(), x.grad.clone(), n.weight.grad.clone())
    x.grad = n.weight.grad = None
    y2 = F.rms_norm(x, (16,), n.weight, 1e-6)
    y2.backward(g)
    for a, b in zip(got, (y2.detach(), x.grad, n.weight.grad)):
        torch.testing.assert_close(a, b)


def test_swiglu_function_gradcheck_and_matches_plain():
    gu = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _SiluMul.apply(t, 5), (gu,))
    s = SwiGLU(16, 24)
    x = torch.randn(2, 5, 16, requires_grad=True)
    s(x).square().sum().backward()
    got = (x.grad.clone(), s.w_gate_up.weight.grad.clone(), s.w_down.weight.grad.clone())
    x.grad = None
    s.zero_grad()
    gate, up = s.w_gate_up(x).split(24, -1)
    s.w_down(F.silu(gate) * up).square().sum().backward()
    for a, b in zip(got, (x.grad, s.w_gate_up.weight.grad, s.w_down.weight.grad)):
        torch.testing.assert_close(a, b)


def test_rotary_is_the_rotate_half_formula():
    r = Rotary(64, 100, 10_000.0)
    x = torch.randn(2, 3, 40, 64)
    inv = 1.0 / (10_000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    f = torch.outer(torch.arange(100, dtype=torch.float64), inv)[5:45]
    c, s = f.cos().float(), f.sin().float()
    x1, x2 = x.chunk(2, -1)
    torch.testing.assert_close(r(x, 5), torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), -1))
