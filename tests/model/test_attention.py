"""Attention kernels: the explicit bf16 path used on CPU matches an fp32 reference as closely as
ATen's flash kernel does, is chosen exactly where it was measured to be faster, and stays causal."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from cart.model import attention
from cart.model.attention import EXPLICIT_ATTENTION_MAX_KEYS, causal_attend
from tests.model.test_model import CONFIGS, V, _perturb_gate

from cart.model import build_model


def _rel(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("amp", [1.0, 4.0])
def test_explicit_bf16_attention_is_as_accurate_as_flash(amp):
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 96, 64
    q32, k32, v32 = (torch.randn(B, H, T, D) * s for s in (amp, 1.0, 1.0))
    g = torch.randn(B, H, T, D)
    ref_in = [t.clone().requires_grad_() for t in (q32, k32, v32)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=True)
    ref.backward(g)

    def errors(fn):
        xs = [t.to(torch.bfloat16).requires_grad_() for t in (q32, k32, v32)]
        out = fn(*xs)
        out.backward(g.to(torch.bfloat16))
        return [_rel(out, ref)] + [_rel(x.grad, r.grad) for x, r in zip(xs, ref_in)]

    flash = errors(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    explicit = errors(attention._explicit_causal)
    for e_flash, e_explicit in zip(flash, explicit):
        assert e_explicit < 2.5 * e_flash + 1e-3, (flash, explicit)
        assert e_explicit < 3e-2


def test_explicit_bf16_attention_with_document_mask():
    """Document masking takes the same fast path in bf16: it matches the fp32 SDPA with that mask as
    closely as the bf16 SDPA does, and no position sees across a boundary."""
    from cart.model.attention import document_mask

    torch.manual_seed(1)
    B, H, T, D = 2, 2, 40, 64
    doc = torch.tensor([[0] * 15 + [1] * 25, [0] * 30 + [1] * 10])
    mask = document_mask(doc)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    bf = [t.to(torch.bfloat16) for t in (q, k, v)]
    got = causal_attend(*bf, doc_mask=mask)
    sdpa = F.scaled_dot_product_attention(*bf, attn_mask=mask)
    assert _rel(got, ref) < 2.5 * _rel(sdpa, ref) + 1e-3
    v2 = v.clone()
    v2[0, :, :15] += 5  # the first document's values: invisible to the second document's queries
    got2 = causal_attend(bf[0], bf[1], v2.to(torch.bfloat16), doc_mask=mask)
    assert torch.equal(got2[0, :, 15:], got[0, :, 15:]) and not torch.equal(got2[0, :, :15], got[0, :, :15])


def test_explicit_path_is_chosen_only_for_short_bf16_on_cpu():
    calls = []
    real = attention._explicit_causal

    def spy(q, k, v, doc_mask=None):
        calls.append(q.shape[-2])
        return real(q, k, v, doc_mask)

    def attend(T, dtype):
        q = torch.randn(1, 2, T, 64, dtype=dtype)
        return causal_attend(q, q, q)

    with mock.patch.object(attention, "_explicit_causal", spy):
        attend(16, torch.float32)  # fp32: ATen's flash kernel is the faster one
        attend(EXPLICIT_ATTENTION_MAX_KEYS + 1, torch.bfloat16)  # long: flash
        attend(16, torch.bfloat16)
        q = torch.randn(1, 2, 1, 64, dtype=torch.bfloat16)
        causal_attend(q, torch.randn(1, 2, 5, 64, dtype=torch.bfloat16), torch.randn(1, 2, 5, 64, dtype=torch.bfloat16))  # decode
    assert calls == [16]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_every_variant_in_bf16(name):
    """The bf16 explicit path builds its own mask: changing tokens after t never changes positions <= t."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    _perturb_gate(model)
    T = 12
    x = torch.randint(0, V, (2, T))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = model(x)
        for t in (0, 5, T - 2):
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, V, (2, T - t - 1))
            out = model(y)
            assert torch.equal(out[:, : t + 1], base[:, : t + 1]), f"{name}: position <= {t} saw the future (bf16)"
            assert not torch.equal(out[:, t + 1:], base[:, t + 1:])
