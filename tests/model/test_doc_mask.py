"""Document masking: with per-token document ids, attention does not cross documents packed into one
row (every variant, CART's causal cross-attention to the anchor included); off by default."""
from unittest import mock

import pytest
import torch

from cart.model import build_model
from cart.model.attention import CrossAttention, document_mask
from cart.model.cache import DecodeCache
from tests.model.test_model import CONFIGS, T, V, _perturb_gate

# three documents packed into one row of T = 12 tokens: [0, 5), [5, 9), [9, 12)
DOCS = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [3] * 7 + [4] * 5])


def test_document_mask_is_block_diagonal_and_causal():
    m = document_mask(torch.tensor([[0, 0, 1, 1, 1]]))[0, 0]
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert m.shape == (5, 5) and torch.equal(m, want)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_earlier_documents_cannot_change_later_outputs(name):
    model = build_model(CONFIGS[name]).eval()
    _perturb_gate(model)
    x = torch.randint(0, V, (2, T))
    y = x.clone()
    y[0, :5] = torch.randint(0, V, (5,))   # row 0: rewrite document 0
    y[1, :7] = torch.randint(0, V, (7,))   # row 1: rewrite document 3
    with torch.no_grad():
        masked_x, masked_y = model(x, doc_ids=DOCS), model(y, doc_ids=DOCS)
        plain_x, plain_y = model(x), model(y)
    assert torch.allclose(masked_x[0, 5:], masked_y[0, 5:], atol=1e-5), f"{name}: a later document saw document 0"
    assert torch.allclose(masked_x[1, 7:], masked_y[1, 7:], atol=1e-5), f"{name}: a later document saw document 3"
    # off by default: without doc_ids the same change reaches the later documents
    assert not torch.allclose(plain_x[0, 5:], plain_y[0, 5:], atol=1e-5), f"{name}: masking should be off by default"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_masked_documents_equal_documents_run_alone(name):
    """Each document of a masked row gives the logits it gets on its own (RoPE is relative), and the
    masked forward stays causal within a document."""
    model = build_model(CONFIGS[name]).eval()
    _perturb_gate(model)
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        masked = model(x, doc_ids=DOCS)
        for row, spans in ((0, [(0, 5), (5, 9), (9, 12)]), (1, [(0, 7), (7, 12)])):
            for a, b in spans:
                alone = model(x[row:row + 1, a:b])[0]
                assert torch.allclose(masked[row, a:b], alone, atol=1e-4), f"{name}: document [{a}, {b}) of row {row}"
        y = x.clone()
        y[:, 7:] = torch.randint(0, V, (2, T - 7))
        assert torch.allclose(model(y, doc_ids=DOCS)[:, :7], masked[:, :7], atol=1e-5), f"{name}: masked forward saw the future"


def test_one_document_is_the_plain_causal_forward():
    model = build_model(CONFIGS["stable"]).eval()
    x = torch.randint(0, V, (2, T))
    with torch.no_grad():
        assert torch.allclose(model(x, doc_ids=torch.zeros(2, T, dtype=torch.long)), model(x), atol=1e-5)


def test_an_unmasked_anchor_attention_would_be_caught():
    """The test is not vacuous: a core cross-attention that ignores the document mask (prelude and
    coda masked) lets a later document see an earlier one through the anchor."""
    import torch.nn.functional as F
    from cart.model.attention import _heads, _merge

    def causal_only(self, x, k, v, doc_mask=None):
        return self.w_o(_merge(F.scaled_dot_product_attention(_heads(self.w_q(x), self.n_heads), k, v, is_causal=True)))

    model = build_model(CONFIGS["stable"]).eval()
    x = torch.randint(0, V, (2, T))
    y = x.clone()
    y[0, :5] = (y[0, :5] + 1) % V
    with torch.no_grad():
        assert torch.allclose(model(x, doc_ids=DOCS)[0, 5:], model(y, doc_ids=DOCS)[0, 5:], atol=1e-5)
        with mock.patch.object(CrossAttention, "forward", causal_only):
            assert not torch.allclose(model(x, doc_ids=DOCS)[0, 5:], model(y, doc_ids=DOCS)[0, 5:], atol=1e-5)


def test_doc_ids_refused_with_a_cache_or_a_wrong_shape():
    model = build_model(CONFIGS["stable"]).eval()
    x = torch.randint(0, V, (2, T))
    with pytest.raises(ValueError, match="not to cached decoding"):
        model(x, cache=DecodeCache(2, 32), doc_ids=DOCS)
    with pytest.raises(ValueError, match="doc_ids has shape"):
        model(x, doc_ids=DOCS[:, :5])
