"""cart's tokenizers as Hugging Face `tokenizer.json` files that `AutoTokenizer` loads offline.

- a trained byte-level BPE (already a `tokenizers` JSON): the same model, plus a post-processor
  that puts BOS in front of every encoded text, as cart's generation and task evaluation do;
- a SentencePiece BPE `.model` (Llama-2): rebuilt as a `tokenizers` BPE with byte fallback, the
  merges ranked by the merged piece's score (SentencePiece merges the highest-scoring pair first),
  the dummy prefix and the whitespace escape as normalizers;
- a `.tiktoken` rank file (GPT-2): a byte-level BPE (GPT-2's byte-to-character table and
  pre-tokenisation pattern), the merges ranked by the merged token's rank.
No converter from transformers is used (so exporting needs only `tokenizers`), and none is trusted:
`check_ids` encodes difficult strings and sample documents with both tokenizers and the export
stops on the first text whose ids differ.
"""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizerModel
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

# Strings that have broken tokenizer conversions before: whitespace runs, leading spaces, digits,
# contractions, accents, CJK, emoji (byte fallback), control characters, code.
HARD_TEXTS = [
    "Hello world", " Hello  world ", "  leading and trailing  ", "\n\nnew\nlines\n", "\t tabs\t\t and  spaces",
    "1234567890 3.14159 -42 1,000,000", "I'm can't won't they're we've she'll he'd", "Café naïve résumé façade Ångström",
    "日本語のテキストと中文", "emoji 🙂🚀👍🏽 and ☕", "zero\u200bwidth \u00a0nbsp", "def f(x):\n    return x ** 2  # square",
    "<html><body>tag soup</body></html>", "A" * 50, "a b c d e f g", "MiXeD CaSe WoRdS", "..., !!! ??? ;;; :::",
    "über-straße", "x", " ",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table: the printable Latin-1 bytes stand for
    themselves; the other 68 bytes (controls, space, a few others) become U+0100 onwards, in order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bos_post_processor(bos: str, bos_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)])


# --------------------------------------------------------------------------------------------- SentencePiece
def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: varints as int, length-delimited as
    bytes, fixed32 as the raw 4 bytes (enough for sentencepiece's ModelProto)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((field, value))
    return out


_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_USER, _SP_UNUSED, _SP_BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_to_hf(path: Path) -> HFTokenizerModel:
    """A SentencePiece BPE model (identity normaliser, no whitespace removal) as a `tokenizers` BPE."""
    pieces: list[tuple[str, float, int]] = []
    trainer: dict[int, int | bytes] = {}
    norm: dict[int, int | bytes] = {}
    for field, value in _proto_fields(Path(path).read_bytes()):
        if field == 1:  # SentencePiece {piece = 1, score = 2, type = 3 (default NORMAL)}
            p = dict(_proto_fields(value))
            score = struct.unpack("<f", p[2])[0] if 2 in p else 0.0
            pieces.append((p[1].decode("utf-8"), score, p.get(3, _SP_NORMAL)))
        elif field == 2:
            trainer = dict(_proto_fields(value))
        elif field == 3:
            norm = dict(_proto_fields(value))
    if trainer.get(3, 1) != 2:
        raise ValueError(f"{path}: only SentencePiece BPE models can be exported (model_type {trainer.get(3, 1)}, BPE is 2)")
    name = norm.get(1, b"nmt_nfkc").decode()
    if name != "identity" or norm.get(4, 1):
        raise ValueError(f"{path}: only an identity normaliser without whitespace removal can be exported "
                         f"(normaliser {name!r}, remove_extra_whitespaces={bool(norm.get(4, 1))})")
    if any(t == _SP_USER for _, _, t in pieces):
        raise ValueError(f"{path}: user-defined pieces are not supported by the export")
    add_prefix, escape, byte_fallback = bool(norm.get(3, 1)), bool(norm.get(5, 1)), bool(trainer.get(35, 0))

    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for i, (piece, score, kind) in enumerate(pieces):
        if kind != _SP_NORMAL or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-score, i, k, left, right))
    merges.sort()
    unk = next((p for p, _, t in pieces if t == _SP_UNKNOWN), None)
    tok = HFTokenizerModel(models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk,
                                      fuse_unk=True, byte_fallback=byte_fallback))
    steps = ([normalizers.Prepend("▁")] if add_prefix else []) + ([normalizers.Replace(" ", "▁")] if escape else [])
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    dec = ([decoders.Replace("▁", " ")] if escape else []) + ([decoders.ByteFallback()] if byte_fallback else [])
    dec += [decoders.Fuse()] + ([decoders.Strip(" ", 1, 0)] if add_prefix else [])
    tok.decoder = decoders.Sequence(dec)
    tok.add_special_tokens([p for p, _, t in pieces if t in (_SP_UNKNOWN, _SP_CONTROL)])
    return tok


# --------------------------------------------------------------------------------------------- tiktoken
def tiktoken_to_hf(path: Path) -> HFTokenizerModel:
    """A GPT-2 `.tiktoken` rank file as a byte-level `tokenizers` BPE; `<|endoftext|>` is the next id."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    table = _bytes_to_unicode()
    as_text = {t: "".join(table[b] for b in t) for t in ranks}
    merges = []
    for token, rank in ranks.items():
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in ranks and right in ranks:
                merges.append((rank, k, as_text[left], as_text[right]))
    merges.sort()
    tok = HFTokenizerModel(models.BPE(vocab={as_text[t]: r for t, r in ranks.items()}, merges=[(m[2], m[3]) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's pattern
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    if tok.token_to_id("<|endoftext|>") != len(ranks):
        raise ValueError(f"{path}: <|endoftext|> did not get id {len(ranks)}")
    return tok


# --------------------------------------------------------------------------------------------- the export
def to_hf(cart_tok) -> HFTokenizerModel:
    """The `tokenizers` model equivalent to a cart tokenizer (`cart.data.load_tokenizer`), BOS prepended
    on encoding with special tokens (transformers' default). `encode_special_tokens` is not saved in
    tokenizer.json: `tokenizer_files` writes it to tokenizer_config.json as split_special_tokens."""
    kind = getattr(cart_tok, "kind", None)
    if kind == "hf":
        tok = HFTokenizerModel.from_file(str(cart_tok.path))
    elif kind == "sentencepiece":
        tok = sentencepiece_to_hf(cart_tok.path)
    elif kind == "tiktoken":
        tok = tiktoken_to_hf(cart_tok.path)
    else:
        raise ValueError(f"tokenizer {getattr(cart_tok, 'name', cart_tok)!r}: cannot export a {kind or type(cart_tok).__name__} "
                         f"tokenizer (expected a tokenizer.json, a SentencePiece .model or a .tiktoken file)")
    # SentencePiece and tiktoken read "<s>" or "<|endoftext|>" in a text as plain text; so does the
    # export (transformers' split_special_tokens); a trained BPE's tokenizer.json matches them, in cart too
    tok.encode_special_tokens = kind != "hf"
    bos = tok.id_to_token(cart_tok.bos_id)
    tok.post_processor = _bos_post_processor(bos, cart_tok.bos_id)
    return tok


def check_ids(cart_tok, hf_tok: HFTokenizerModel, texts: list[str]) -> int:
    """Encode every text with both; raise on the first difference. Returns how many texts agreed."""
    for text in texts:
        want = list(cart_tok.encode(text))
        got = hf_tok.encode(text, add_special_tokens=False).ids
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise ValueError(f"exported tokenizer disagrees with {cart_tok.name!r} on {text[:60]!r}: ids differ from "
                             f"position {at} (cart {want[at:at + 5]}, exported {got[at:at + 5]})")
    return len(texts)


def tokenizer_files(cart_tok, max_len: int) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json (file name -> text) for an export."""
    tok = to_hf(cart_tok)
    bos, eos = tok.id_to_token(cart_tok.bos_id), tok.id_to_token(cart_tok.eos_id)
    unk = tok.id_to_token(0) if getattr(cart_tok, "kind", None) == "sentencepiece" else None
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "add_bos_token": True, "add_eos_token": False, "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "split_special_tokens": tok.encode_special_tokens}
    if unk is not None:
        config["unk_token"] = unk
    return {"tokenizer.json": tok.to_str(pretty=True), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


__all__ = ["HARD_TEXTS", "check_ids", "sentencepiece_to_hf", "tiktoken_to_hf", "to_hf", "tokenizer_files"]
