"""Reading prepared data: the manifest, validated token files, and the model/data vocabulary check.

Notable features:
- `Manifest.load(dir or manifest.json)`: typed access to what `prepare` wrote (domains, validation
  sets with their in/out-of-domain flag, token/byte/document counts, tokenizer identity, dtype,
  interleave cycle); `verify()` re-hashes every file against the recorded sha256;
- `TokenFile`: a read-only memmap that refuses a file whose size is not a multiple of its dtype,
  whose length disagrees with the manifest, that holds an id >= vocab_size, or (when asked) whose
  sha256 is not the manifest's: ids and hash are checked in one pass of 16M-token slices, so memory
  stays flat whatever the file size; every field the manifest names is checked on load, and the
  files it lists must lie inside its folder;
- `validate_against_model`: training refuses data tokenized for another vocabulary, naming both.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cart.data.fetch import sha256_file

__all__ = ["Manifest", "ValSet", "TrainDomain", "TokenFile", "validate_against_model", "dtype_for_vocab", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "cart-data/1"
_SCAN = 1 << 24  # tokens per slice when checking ids


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class TokenFile:
    """A flat token file as a validated, read-only memmap. `len(tf)` tokens; `tf.tokens[i:j]`."""

    def __init__(self, path: str | os.PathLike, vocab_size: int | None = None, dtype=None, expected_tokens: int | None = None,
                 check_ids: bool = True, expected_sha256: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"token file {self.path} not found")
        if dtype is None:
            dtype = dtype_for_vocab(vocab_size) if vocab_size is not None else self._dtype_from_manifest()
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        size = self.path.stat().st_size
        if size % self.dtype.itemsize:
            raise ValueError(f"{self.path}: {size} bytes is not a multiple of {self.dtype.itemsize} ({self.dtype}): "
                             f"the file is truncated or not a {self.dtype} token file")
        n = size // self.dtype.itemsize
        if expected_tokens is not None and n != expected_tokens:
            raise ValueError(f"{self.path}: holds {n} tokens but the manifest records {expected_tokens}: the file is "
                             f"truncated or from another preparation (run `cart data prepare` again)")
        if n == 0:
            raise ValueError(f"{self.path}: empty token file")
        self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(n,))
        if (check_ids and vocab_size is not None) or expected_sha256:
            self._scan(vocab_size if check_ids else None, expected_sha256)

    def _dtype_from_manifest(self) -> np.dtype:
        for folder in (self.path.parent, self.path.parent.parent):
            m = folder / "manifest.json"
            if m.exists():
                return np.dtype(json.loads(m.read_text())["dtype"])
        raise ValueError(f"{self.path}: cannot tell the token dtype: pass dtype= or vocab_size=, or keep manifest.json beside it")

    def _scan(self, vocab_size: int | None, expected_sha256: str | None) -> None:
        """One pass in 16M-token slices: the largest id against vocab_size, and the sha256 of the bytes."""
        h = hashlib.sha256() if expected_sha256 else None
        for start in range(0, len(self.tokens), _SCAN):
            block = self.tokens[start:start + _SCAN]
            if h is not None:
                h.update(memoryview(block).cast("B"))
            if vocab_size is not None:
                hi = int(block.max())
                if hi >= vocab_size:
                    pos = start + int(np.argmax(block >= vocab_size))
                    raise ValueError(f"{self.path}: token id {hi} at position {pos} is >= vocab_size {vocab_size}: the file "
                                     f"is corrupt or was tokenized with another tokenizer")
        if h is not None and h.hexdigest() != expected_sha256:
            raise ValueError(f"{self.path}: sha256 {h.hexdigest()[:16]}… differs from the manifest's {expected_sha256[:16]}…: "
                             f"the file changed or is corrupt (prepare the data again: `cart data prepare --force`)")

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self)}, dtype={self.dtype})"


@dataclass
class TrainDomain:
    name: str
    path: Path
    docs: int
    bytes: int
    tokens: int
    sha256: str


@dataclass
class ValSet:
    name: str
    path: Path
    docs: int
    bytes: int     # UTF-8 bytes of the documents' text (no BOS/EOS): the denominator of bits per byte
    tokens: int    # tokens in the file, BOS and EOS of every document included
    sha256: str
    out_of_domain: bool


def _field(obj: dict, key: str, kind: type, prefix: str = ""):
    """obj[key], required and of type `kind` (an int field refuses bools), else a ValueError naming it."""
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"missing field '{prefix}{key}'")
    v = obj[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ValueError(f"field '{prefix}{key}': expected {kind.__name__}, got {v!r}")
    return v


def _inside(root: Path, rel: str, field: str) -> Path:
    """A file the manifest names, which must lie inside its folder (a manifest never points elsewhere)."""
    p = (root / rel).resolve()
    if root.resolve() not in p.parents:
        raise ValueError(f"field '{field}': {rel!r} is outside the prepared folder")
    return root / rel


class Manifest:
    """What `prepare` wrote into a prepared folder (`<root>/<recipe>/manifest.json`)."""

    def __init__(self, data: dict, root: Path):
        where = root / "manifest.json"
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{where}: format {got!r}, expected {MANIFEST_FORMAT!r}")
        self.data, self.root = data, root
        try:
            tok = _field(data, "tokenizer", dict)
            self.name: str = _field(_field(data, "recipe", dict), "name", str, "recipe.")
            self.vocab_size: int = _field(tok, "vocab_size", int, "tokenizer.")
            self.bos_id: int = _field(tok, "bos_id", int, "tokenizer.")
            self.eos_id: int = _field(tok, "eos_id", int, "tokenizer.")
            self.tokenizer_name: str = _field(tok, "name", str, "tokenizer.")
            self.tokenizer_sha256: str = _field(tok, "sha256", str, "tokenizer.")
            self.tokenizer_path: Path = _inside(root, _field(tok, "file", str, "tokenizer."), "tokenizer.file")
            try:
                self.dtype = np.dtype(_field(data, "dtype", str))
            except TypeError:
                raise ValueError(f"field 'dtype': {data['dtype']!r} is not a numpy dtype") from None
            self.cycle: dict[str, int] = dict(_field(_field(data, "interleave", dict), "cycle", dict, "interleave."))
            self.train: dict[str, TrainDomain] = {}
            for k, v in _field(data, "train", dict).items():
                f = f"train.{k}."
                self.train[k] = TrainDomain(k, _inside(root, _field(v, "path", str, f), f + "path"), _field(v, "docs", int, f),
                                            _field(v, "bytes", int, f), _field(v, "tokens", int, f), _field(v, "sha256", str, f))
            self.val_sets: dict[str, ValSet] = {}
            for k, v in _field(data, "val", dict).items():
                f = f"val.{k}."
                self.val_sets[k] = ValSet(k, _inside(root, _field(v, "path", str, f), f + "path"), _field(v, "docs", int, f),
                                          _field(v, "bytes", int, f), _field(v, "tokens", int, f), _field(v, "sha256", str, f),
                                          _field(v, "out_of_domain", bool, f))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        self.train_domains: list[str] = list(self.train)
        if dtype_for_vocab(self.vocab_size) != self.dtype:
            raise ValueError(f"{where}: dtype {self.dtype} does not fit vocab_size {self.vocab_size}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        p = Path(path)
        if p.is_dir():
            p = p / "manifest.json"
        if not p.exists():
            raise FileNotFoundError(f"no manifest at {p}: prepare the data first (`cart data prepare <recipe>`)")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        return cls(data, p.parent.resolve())

    def load_tokenizer(self):
        """The tokenizer this data was made with; refused if the file beside the manifest changed."""
        from cart.data.tokenizer import load_tokenizer
        if not self.tokenizer_path.exists():
            raise FileNotFoundError(f"{self.tokenizer_path} (the tokenizer named in {self.root / 'manifest.json'}) is missing")
        got = sha256_file(self.tokenizer_path)
        if got != self.tokenizer_sha256:
            raise ValueError(f"{self.tokenizer_path}: sha256 {got[:12]}… is not the tokenizer this data was tokenized with "
                             f"({self.tokenizer_name!r}, sha256 {self.tokenizer_sha256[:12]}…)")
        tok = load_tokenizer(self.tokenizer_path, name=self.tokenizer_name)
        if tok.vocab_size != self.vocab_size:
            raise ValueError(f"{self.tokenizer_path}: vocab_size {tok.vocab_size} differs from the manifest's {self.vocab_size}")
        return tok

    def train_file(self, domain: str, check_ids: bool = True, verify: bool = False) -> TokenFile:
        """A training token file; verify=True also checks its sha256 against the manifest (same pass)."""
        if domain not in self.train:
            raise ValueError(f"{self.root}: no training domain {domain!r} (have {self.train_domains})")
        d = self.train[domain]
        return TokenFile(d.path, self.vocab_size, self.dtype, expected_tokens=d.tokens, check_ids=check_ids,
                         expected_sha256=d.sha256 if verify else None)

    def val_file(self, name: str, check_ids: bool = True, verify: bool = False) -> TokenFile:
        """A validation token file; verify=True also checks its sha256 against the manifest (same pass)."""
        if name not in self.val_sets:
            raise ValueError(f"{self.root}: no validation set {name!r} (have {list(self.val_sets)})")
        v = self.val_sets[name]
        return TokenFile(v.path, self.vocab_size, self.dtype, expected_tokens=v.tokens, check_ids=check_ids,
                         expected_sha256=v.sha256 if verify else None)

    def verify(self) -> None:
        """Re-hash every token file and the tokenizer against the manifest; raise on the first mismatch."""
        items = [(d.path, d.sha256) for d in self.train.values()] + [(v.path, v.sha256) for v in self.val_sets.values()]
        items.append((self.tokenizer_path, self.tokenizer_sha256))
        for path, sha in items:
            if not path.exists():
                raise FileNotFoundError(f"{path} (listed in {self.root / 'manifest.json'}) is missing")
            got = sha256_file(path)
            if got != sha:
                raise ValueError(f"{path}: sha256 {got[:16]}… differs from the manifest's {sha[:16]}…: the file changed or is corrupt")

    def summary(self) -> str:
        """A human-readable table of the manifest (what `cart data info` prints)."""
        tok = self.data["tokenizer"]
        lines = [f"recipe {self.name}  ({self.root})",
                 f"tokenizer {tok['name']} [{tok['kind']}] vocab {self.vocab_size:,}  bos {self.bos_id} eos {self.eos_id}  "
                 f"sha256 {self.tokenizer_sha256[:12]}…  dtype {self.dtype}",
                 "interleave: one training row per chunk, cycle " + " ".join(f"{k}×{v}" for k, v in self.cycle.items()),
                 "", f"{'split':<6} {'name':<14} {'docs':>9} {'MB':>8} {'tokens':>12} {'bytes/tok':>9}  kind"]
        for d in self.train.values():
            lines.append(f"{'train':<6} {d.name:<14} {d.docs:>9,} {d.bytes / 1e6:>8.2f} {d.tokens:>12,} {d.bytes / d.tokens:>9.2f}")
        for v in self.val_sets.values():
            lines.append(f"{'val':<6} {v.name:<14} {v.docs:>9,} {v.bytes / 1e6:>8.2f} {v.tokens:>12,} {v.bytes / v.tokens:>9.2f}  "
                         f"{'out-of-domain' if v.out_of_domain else 'held-out'}")
        tt = sum(d.tokens for d in self.train.values())
        lines.append(f"\ntraining tokens: {tt:,}")
        return "\n".join(lines)


def validate_against_model(manifest, vocab_size: int, allow_padded: bool = False) -> None:
    """Refuse data whose tokenizer does not match the model's vocabulary.

    `allow_padded=True` accepts a model vocabulary larger than the tokenizer's (embedding rows
    padded to a multiple of 64 or 128 for speed); the default requires equality.
    """
    m = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    ok = vocab_size == m.vocab_size or (allow_padded and vocab_size > m.vocab_size)
    if not ok:
        raise ValueError(f"data {m.root} was tokenized with {m.tokenizer_name!r} (vocab_size {m.vocab_size:,}) but the model "
                         f"has vocab_size {vocab_size:,}: set the model's vocab_size to {m.vocab_size} or prepare the data "
                         f"with a matching tokenizer")
