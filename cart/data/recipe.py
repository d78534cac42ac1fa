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

from cart.data.sources import Source, source_from_spec
from cart.paths import check_name

__all__ = ["Domain", "Recipe", "load_recipe", "list_recipes", "PRESET_DIR"]

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets" / "data"
_TOKENIZER_KINDS = {"bpe": {"vocab_size", "sample_bytes", "min_frequency"}, "llama2": set(), "gpt2": set(), "file": {"path"}}


ORDERS = ("hash", "source")


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
    def err(field: str, msg: str) -> ValueError:
        return ValueError(f"{path}: {field}: {msg}")

    def pos_int(v, field: str, allow_zero: bool = False) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and not allow_zero):
            raise err(field, f"expected a {'non-negative' if allow_zero else 'positive'} integer, got {v!r}")
        return v

    unknown = set(raw) - {"name", "description", "seed", "val_tokens", "tokenizer", "interleave", "train", "ood"}
    if unknown:
        raise err(", ".join(sorted(unknown)), "unknown key(s)")
    name = raw.get("name", path.stem)
    try:  # it names the prepared folder under the data root
        check_name(name, "name")
    except ValueError as e:
        raise err("name", str(e)) from None
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise err("seed", f"expected an integer, got {seed!r}")
    default_val = pos_int(raw.get("val_tokens", 0), "val_tokens", allow_zero=True)

    tok = dict(raw.get("tokenizer", {}))
    kind = tok.get("kind")
    if kind not in _TOKENIZER_KINDS:
        raise err("tokenizer.kind", f"expected one of {sorted(_TOKENIZER_KINDS)}, got {kind!r}")
    extra = set(tok) - {"kind"} - _TOKENIZER_KINDS[kind]
    if extra:
        raise err("tokenizer", f"key(s) {sorted(extra)} do not apply to kind {kind!r}")
    if kind == "bpe":
        pos_int(tok.get("vocab_size"), "tokenizer.vocab_size")
        if "sample_bytes" in tok:
            pos_int(tok["sample_bytes"], "tokenizer.sample_bytes")
    if kind == "file":
        if not isinstance(tok.get("path"), str):
            raise err("tokenizer.path", "a tokenizer file path is required for kind 'file'")
        tok["path"] = str((path.parent / tok["path"]).resolve())

    def domains(key: str, ood: bool) -> list[Domain]:
        out = []
        items = raw.get(key, [])
        if not isinstance(items, list):
            raise err(key, "expected an array of tables ([[" + key + "]])")
        for i, d in enumerate(items):
            where = f"{key}[{i}]"
            if not isinstance(d, dict):
                raise err(where, f"expected a table, got {d!r}")
            bad = set(d) - {"name", "source", "val_tokens", "train_tokens", "max_bytes", "order", "validation"}
            if ood:
                bad |= {"train_tokens", "validation"} & set(d)
            if bad:
                raise err(f"{where}", f"unknown key(s) {sorted(bad)}")
            dname = d.get("name", d.get("source") if isinstance(d.get("source"), str) else None)
            try:  # it names token files (train/<name>.bin, val/<name>.bin) and cache folders
                check_name(dname, "name")
            except ValueError as e:
                raise err(f"{where}.name", str(e)) from None
            if "source" not in d:
                raise err(f"{where}.source", "missing")
            try:
                src = source_from_spec(dname, d["source"], path.parent)
            except ValueError as e:
                raise err(f"{where}.source", str(e)) from None
            max_bytes = pos_int(d["max_bytes"], f"{where}.max_bytes") if "max_bytes" in d else None
            order = d.get("order", "hash")
            if order not in ORDERS:
                raise err(f"{where}.order", f"expected one of {list(ORDERS)}, got {order!r}")
            val_tokens = pos_int(d.get("val_tokens", default_val), f"{where}.val_tokens", allow_zero=not ood)
            validation = None
            if "validation" in d:
                spec = d["validation"]
                if not isinstance(spec, dict) or not spec:
                    raise err(f"{where}.validation", f"expected a table (a source, or fields of this domain's source "
                                                     f"to replace), got {spec!r}")
                if not val_tokens:
                    raise err(f"{where}.validation", "a validation selection needs val_tokens > 0")
                try:
                    if any(k in spec for k in ("files", "hf", "synthetic")):
                        validation = source_from_spec(f"{dname}-validation", spec, path.parent)
                    else:
                        validation = src.with_overrides(spec)
                except (ValueError, TypeError) as e:
                    raise err(f"{where}.validation", str(e)) from None
            out.append(Domain(dname, src, ood, val_tokens,
                              pos_int(d["train_tokens"], f"{where}.train_tokens") if "train_tokens" in d else None, max_bytes,
                              order, validation))
        return out

    train, ood = domains("train", False), domains("ood", True)
    if not train:
        raise err("train", "a recipe needs at least one [[train]] domain")
    names = [d.name for d in train + ood]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise err("train/ood names", f"duplicated: {dup} (each names a validation set)")

    inter = raw.get("interleave", {})
    if "chunk_len" in inter:  # the loader's chunk is one training row: its length is training's seq_len
        raise err("interleave.chunk_len", "not a recipe setting: a single-domain chunk is one training row of "
                  "seq_len + 1 tokens, so its length is the training config's seq_len; remove the key")
    bad = set(inter) - {"cycle"}
    if bad:
        raise err("interleave", f"unknown key(s) {sorted(bad)}")
    cycle = inter.get("cycle", {d.name: 1 for d in train})
    if not isinstance(cycle, dict):
        raise err("interleave.cycle", f"expected a table of domain = chunks, got {cycle!r}")
    if set(cycle) != {d.name for d in train}:
        raise err("interleave.cycle", f"must name exactly the training domains {[d.name for d in train]}, got {list(cycle)}")
    for k, v in cycle.items():
        pos_int(v, f"interleave.cycle.{k}")
    return Recipe(name, raw.get("description", ""), path, sha, seed, tok, dict(cycle), train, ood, raw)
