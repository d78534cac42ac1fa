"""Tokenizers: one interface over HF BPE, SentencePiece and tiktoken; the GGUF → SentencePiece builder."""
from __future__ import annotations

import base64
import io

import pytest

from cart.data import load_tokenizer, train_bpe
from cart.data.synthetic import synthetic_documents
from cart.data.tokenizer import _check_reference, _sentencepiece_model_from_gguf

TEXTS = list(synthetic_documents("stories", 200)) + list(synthetic_documents("notes", 100))
ODD = "Grüße, 東京! ½ naïve — ‘quotes’ \t tabs\n\n  two spaces 🦙 end "


def check_interface(tok, bos, eos):
    assert (tok.bos_id, tok.eos_id) == (bos, eos)
    ids = tok.encode("Hello world")
    assert ids and bos not in ids and eos not in ids  # encode never adds BOS/EOS
    assert tok.encode_batch(["Hello world", ODD]) == [ids, tok.encode(ODD)]
    assert all(0 <= i < tok.vocab_size for i in tok.encode(ODD))
    assert len(tok.sha256) == 64 and tok.name


def test_bpe_roundtrip_exact(tmp_path):
    tok = train_bpe(iter(TEXTS), 400, tmp_path / "tok" / "tokenizer.json")
    check_interface(tok, 0, 1)
    assert tok.vocab_size == 400
    for text in [ODD, TEXTS[0], "  leading and trailing  ", "x"]:
        assert tok.decode(tok.encode(text)) == text  # byte-level: exact, so byte counts are exact
    again = train_bpe(iter(TEXTS), 400, tmp_path / "again.json")
    assert again.sha256 == tok.sha256                # training is deterministic
    assert load_tokenizer(tmp_path / "tok").sha256 == tok.sha256   # a folder holding tokenizer.json
    with pytest.raises(ValueError, match="too small"):
        train_bpe(iter(TEXTS), 100, tmp_path / "small.json")


def test_hf_tokenizer_config_specials(tmp_path):
    import json
    from tokenizers import Tokenizer, models, pre_tokenizers
    t = Tokenizer(models.WordLevel({"[UNK]": 0, "<start>": 1, "<stop>": 2, "hello": 3}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="BOS/EOS"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<start>"}, "eos_token": "<stop>"}))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.encode("hello")) == (1, 2, [3])


def test_sentencepiece_model(tmp_path):
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=400, model_type="bpe",
                                   byte_fallback=True, num_threads=1, minloglevel=2)
    (tmp_path / "sp.model").write_bytes(buf.getvalue())
    tok = load_tokenizer(tmp_path / "sp.model")
    check_interface(tok, 1, 2)
    assert tok.decode(tok.encode("Once upon a time")) == "Once upon a time"


def test_tiktoken_file(tmp_path):
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"he": 256, b"ll": 257, b"hell": 258})
    (tmp_path / "tiny.tiktoken").write_bytes(b"".join(base64.b64encode(k) + b" %d\n" % v for k, v in ranks.items()))
    tok = load_tokenizer(tmp_path / "tiny.tiktoken")
    check_interface(tok, 259, 259)
    assert tok.encode("hello") == [258, ord("o")] and tok.decode([258, 111, 259]) == "hello<|endoftext|>"


def test_gguf_to_sentencepiece(tmp_path):
    """The hand-written ModelProto: a tiny llama-style GGUF vocabulary behaves as SentencePiece BPE."""
    import gguf
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "h", "i", "▁h", "▁hi", "1", "2"]
    types = [2, 3, 3] + [6] * 256 + [1] * 7
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (tmp_path / "m.model").write_bytes(_sentencepiece_model_from_gguf(path))
    tok = load_tokenizer(tmp_path / "m.model")
    idx = {t: i for i, t in enumerate(tokens)}
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (len(tokens), 1, 2)
    assert tok.encode("hi hi") == [idx["▁hi"], idx["▁hi"]]
    assert tok.encode("x") == [idx["▁"], 3 + ord("x")]           # byte fallback
    assert tok.encode("12") == [idx["▁"], idx["1"], idx["2"]]    # digits stay split
    assert tok.encode("  hi") == [idx["▁"], idx["▁"], idx["▁hi"]]  # no whitespace removal
    assert tok.decode(tok.encode("hi x")) == "hi x"
    inp = "hi\n__ggml_vocab_test__\nx\n__ggml_vocab_test__\n".encode()
    out = f" {idx['▁hi']}\n {idx['▁']} {3 + ord('x')}\n".encode()
    assert _check_reference(tok, inp, out) == (2, 2)


def test_unknown_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="llama2"):
        load_tokenizer("nope")
    (tmp_path / "t.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown tokenizer file type"):
        load_tokenizer(tmp_path / "t.bin")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


SPECIAL_TEXT = "a <|bos|> b <|eos|> c <s> d </s> e <|endoftext|> f <unk>"


def _sentencepiece(tmp_path):
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=0, minloglevel=2)
    return load_tokenizer(tmp_path / "sp.model")


def _tiktoken(tmp_path):
    ranks = [bytes([i]) for i in range(256)] + [b"he", b"ll", b"hell", b"hello"]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(ranks)))
    return load_tokenizer(path)


@pytest.mark.parametrize("kind", ["hf", "sentencepiece", "tiktoken"])
def test_special_token_strings_in_text_stay_text(tmp_path, kind):
    """Only packing places BOS/EOS: a document that contains "<|bos|>" or "<s>" literally is encoded
    as those characters by every backend, and decodes back to them."""
    tok = {"hf": lambda p: train_bpe(iter(TEXTS), 400, p / "tokenizer.json"), "sentencepiece": _sentencepiece,
           "tiktoken": _tiktoken}[kind](tmp_path)
    specials = {tok.bos_id, tok.eos_id}
    for ids in (tok.encode(SPECIAL_TEXT), tok.encode_batch([SPECIAL_TEXT])[0]):
        assert not specials & set(ids), (kind, ids)
    if kind != "sentencepiece":  # SentencePiece normalises spaces; the byte-level backends round-trip exactly
        assert tok.decode(tok.encode(SPECIAL_TEXT)) == SPECIAL_TEXT
    assert "library" in tok.info() and tok.info()["library"].split()[0] in ("tokenizers", "sentencepiece", "tiktoken")
