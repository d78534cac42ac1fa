"""Data recipes: TOML files that say which sources become which training domains and validation sets.

A tier (`smoke`, `cpu`, `paper`) is one file in `cart/presets/data/`; any other path works too.
Schema (every key is checked; errors name the file and the field):

    name = "cpu"                 # the prepared folder: <data root>/<name>/
    description = "..."
    seed = 0                     # fixes the train/validation split and the document order
    val_tokens = 150_000         # default size of each validation set, in tokens (whole documents)

    [tokenizer]
    kind = "bpe"                 # bpe (trained on the training split) | llama2 | gpt2 | file
    vocab_size = 8192            # bpe only
    sample_bytes = 50_000_000    # bpe only, optional: at most this much text per training domain
    path = "tok/tokenizer.json"  # file only (relative to the recipe's folder)

    [interleave]                 # a chunk is one training row (seq_len + 1 tokens, set by training)
    cycle = { news = 3, speeches = 3, python-docs = 4 }   # chunks per domain in one cycle, in order

    [[train]]                    # a training domain, with an in-domain validation set
    name = "news"
    source = "news"              # a registry name, or {files = ...} / {hf = ...} / {synthetic = ...}
    order = "hash"               # hash: documents placed by a hash of their text (a fixed shuffle; the
                                 #   held-out set is the lowest hashes) | source: the source's order
                                 #   (the held-out set is the first documents; training stops at train_tokens)
    val_tokens = 150_000         # optional; 0 = no held-out set
    validation = { shards = "40" }   # optional: the held-out set comes from its own selection (these
                                 #   fields replace the source's, or a whole source table), not the stream
    train_tokens = 300_000_000   # optional cap on the training tokens
    max_bytes = 1_400_000_000    # optional cap on the text read from the source

    [[ood]]                      # an out-of-domain validation set: a source never trained on
    name = "shakespeare"
    source = "shakespeare"
    order = "hash"               # as above: which documents fill its val_tokens

docs/recipes.md is the reference, with worked examples.
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cart.data.sources import Source, source_from_spec
from cart.paths import check_name
from cart.validation import Check, ConfigError, each, from_dict, non_negative, option, positive

__all__ = ["Domain", "Recipe", "load_recipe", "list_recipes", "PRESET_DIR"]

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "data"


# ---------------------------------------------------------------------- the file's tables, as typed schemas
@dataclass(kw_only=True)
class _Tokenizer:
    kind: Literal["bpe", "llama2", "gpt2", "file"] = option(help="bpe (trained on the training split) | llama2 | gpt2 | file")
    vocab_size: int | None = option(None, "bpe: the vocabulary to train", positive)
    sample_bytes: int | None = option(None, "bpe: at most this much text per training domain", positive)
    min_frequency: int | None = option(None, "bpe: the fewest occurrences of a merged pair", non_negative)
    path: str | None = option(None, "file: a tokenizer file, relative to the recipe's folder")


_TOKENIZER_KEYS = {"bpe": {"vocab_size", "sample_bytes", "min_frequency"}, "file": {"path"}}  # kind -> keys it takes


@dataclass(kw_only=True)
class _Interleave:
    cycle: dict[str, int] | None = option(None, "chunks per training domain in one cycle", each(positive))


@dataclass(kw_only=True)
class _OodDomain:
    name: str | None = option(None, "names the validation set (default: the registry source's name)")
    source: str | dict = option(help="a registry name, or a table with files / hf / synthetic")
    order: Literal["hash", "source"] = option("hash", "which documents are held out (see the module docstring)")
    val_tokens: int | None = option(None, "size of the held-out set (default: the recipe's val_tokens)", non_negative)
    max_bytes: int | None = option(None, "cap on the text read from the source", positive)


@dataclass(kw_only=True)
class _TrainDomain(_OodDomain):
    train_tokens: int | None = option(None, "cap on the training tokens", positive)
    validation: dict | None = option(None, "the held-out set's own selection",
                                     Check(bool, "a table (a source, or fields of this domain's source to replace)"))


@dataclass(kw_only=True)
class _RecipeFile:
    name: str | None = option(None, "the prepared folder's name (default: the file's stem)")
    description: str = ""
    seed: int = option(0, "fixes the train/validation split and the document order")
    val_tokens: int = option(0, "default size of each validation set, in tokens", non_negative)
    tokenizer: _Tokenizer = option(help="how text becomes tokens")
    interleave: _Interleave = option(help="how training interleaves its domains", factory=_Interleave)
    train: list[_TrainDomain] = option(help="training domains ([[train]])", factory=list)
    ood: list[_OodDomain] = option(help="out-of-domain validation sets ([[ood]])", factory=list)


@dataclass
class Domain:
    name: str
    source: Source
    out_of_domain: bool
    val_tokens: int
    train_tokens: int | None = None
    max_bytes: int | None = None
    order: str = "hash"               # hash | source (see the module docstring)
    validation: Source | None = None  # a held-out set from its own selection (training domains only)


@dataclass
class Recipe:
    name: str
    description: str
    path: Path
    sha256: str            # of the recipe file's bytes: a prepared folder is current iff this matches
    seed: int
    tokenizer: dict
    cycle: dict[str, int]
    train: list[Domain]
    ood: list[Domain]
    raw: dict              # the parsed TOML, recorded in the manifest

    @property
    def domains(self) -> list[Domain]:
        return self.train + self.ood


def list_recipes() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A preset by name (`smoke`, `cpu`, `paper`) or a recipe file by path."""
    p = Path(name_or_path)
    if p.suffix != ".toml" and not p.exists():
        p = PRESET_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise FileNotFoundError(f"no data recipe {str(name_or_path)!r}: presets are {list_recipes()}, or give a .toml path")
    if not p.exists():
        raise FileNotFoundError(f"data recipe {p} not found")
    data = p.read_bytes()
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: invalid TOML: {e}") from None
    return _parse(raw, p.resolve(), hashlib.sha256(data).hexdigest())


def _parse(raw: dict, path: Path, sha: str) -> Recipe:
    """The recipe in `raw` (the parsed TOML of `path`): every table checked against its schema above,
    then the rules that relate fields to each other."""
    def err(field: str, msg: str) -> ConfigError:
        return ConfigError(f"{field}: {msg}", source=str(path))

    if isinstance(raw.get("interleave"), dict) and "chunk_len" in raw["interleave"]:
        # the loader's chunk is one training row: its length is training's seq_len
        raise err("interleave.chunk_len", "not a recipe setting: a single-domain chunk is one training row of "
                  "seq_len + 1 tokens, so its length is the training config's seq_len; remove the key")
    rec = from_dict(_RecipeFile, raw, source=str(path), where="")
    name = rec.name if rec.name is not None else path.stem
    try:  # it names the prepared folder under the data root
        check_name(name, "name")
    except ValueError as e:
        raise err("name", str(e)) from None

    tok = dict(raw["tokenizer"])
    extra = set(tok) - {"kind"} - _TOKENIZER_KEYS.get(rec.tokenizer.kind, set())
    if extra:
        raise err("tokenizer", f"key(s) {sorted(extra)} do not apply to kind {rec.tokenizer.kind!r}")
    if rec.tokenizer.kind == "bpe" and rec.tokenizer.vocab_size is None:
        raise err("tokenizer.vocab_size", "required for kind 'bpe'")
    if rec.tokenizer.kind == "file":
        if rec.tokenizer.path is None:
            raise err("tokenizer.path", "a tokenizer file path is required for kind 'file'")
        tok["path"] = str((path.parent / rec.tokenizer.path).resolve())

    def domain(d: _OodDomain, where: str, ood: bool) -> Domain:
        dname = d.name if d.name is not None else d.source if isinstance(d.source, str) else None
        try:  # it names token files (train/<name>.bin, val/<name>.bin) and cache folders
            check_name(dname, "name")
        except ValueError as e:
            raise err(f"{where}.name", str(e)) from None
        try:
            src = source_from_spec(dname, d.source, path.parent)
        except ValueError as e:
            raise err(f"{where}.source", str(e)) from None
        val_tokens = rec.val_tokens if d.val_tokens is None else d.val_tokens
        if ood and not val_tokens:
            raise ConfigError(f"{where}.val_tokens must be a positive integer for an out-of-domain set, got 0", str(path))
        validation = None
        if not ood and d.validation is not None:
            if not val_tokens:
                raise err(f"{where}.validation", "a validation selection needs val_tokens > 0")
            try:
                if any(k in d.validation for k in ("files", "hf", "synthetic")):
                    validation = source_from_spec(f"{dname}-validation", d.validation, path.parent)
                else:
                    validation = src.with_overrides(d.validation)
            except (ValueError, TypeError) as e:
                raise err(f"{where}.validation", str(e)) from None
        return Domain(dname, src, ood, val_tokens, None if ood else d.train_tokens, d.max_bytes, d.order, validation)

    train = [domain(d, f"train[{i}]", False) for i, d in enumerate(rec.train)]
    ood = [domain(d, f"ood[{i}]", True) for i, d in enumerate(rec.ood)]
    if not train:
        raise err("train", "a recipe needs at least one [[train]] domain")
    names = [d.name for d in train + ood]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise err("train/ood names", f"duplicated: {dup} (each names a validation set)")
    cycle = rec.interleave.cycle if rec.interleave.cycle is not None else {d.name: 1 for d in train}
    if set(cycle) != {d.name for d in train}:
        raise err("interleave.cycle", f"must name exactly the training domains {[d.name for d in train]}, got {list(cycle)}")
    return Recipe(name, rec.description, path, sha, rec.seed, tok, dict(cycle), train, ood, raw)
