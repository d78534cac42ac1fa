"""cart.data: real corpora → cleaned documents → tokenizers → packed, domain-interleaved token files.

Public API (used by training and evaluation):
- `prepare(recipe, data_root=None, workers=None) -> Path`: build `<root>/<recipe>/` from a recipe
  (`smoke`, `cpu`, `paper`, or a .toml path; docs/recipes.md is the reference), resumable;
- `Manifest.load(dir)`: what was prepared (`.train_domains`, `.val_sets`, `.vocab_size`, `.dtype`,
  `.tokenizer_path`, `.load_tokenizer()`); `validate_against_model(manifest, vocab_size)`;
- `TokenFile(path, vocab_size)`: a validated read-only memmap of a token file;
- `TrainLoader(manifest, batch_size, seq_len, rank, world_size, document_ids=False)`: [B, T+1] windows,
  resumable (with per-token document ids for document masking);
- `load_tokenizer("llama2" | "gpt2" | path)`: one interface for every backend;
- `bench_tokenize(recipe)`: tokenize-and-pack throughput for `cart bench`;
- `SOURCES`, `fetch_source(name)`: the registry of corpora and their cached downloads.

Layout of a prepared recipe: manifest.json, the tokenizer file beside it, train/<domain>.bin and
val/<name>.bin (flat uint16 when the vocabulary fits, else uint32; every document is BOS … EOS).
"""
from cart.data.fetch import data_root
from cart.data.loader import TrainLoader
from cart.data.manifest import Manifest, TokenFile, TrainDomain, ValSet, validate_against_model
from cart.data.prepare import bench_tokenize, prepare
from cart.data.recipe import list_recipes, load_recipe
from cart.data.sources import SOURCES, TOKENIZER_ARTIFACTS, get_source
from cart.data.tokenizer import Tokenizer, build_gpt2, build_llama2, load_tokenizer, train_bpe


def fetch_source(name: str, root=None, log=print) -> None:
    """Fetch a source of the registry, or the raw files of the `llama2` / `gpt2` tokenizers (built too)."""
    if name in TOKENIZER_ARTIFACTS:
        (build_llama2 if name == "llama2" else build_gpt2)(root, log)
    else:
        get_source(name).fetch(data_root(root), log)


__all__ = ["prepare", "bench_tokenize", "Manifest", "ValSet", "TrainDomain", "TokenFile", "TrainLoader",
           "validate_against_model", "load_tokenizer", "Tokenizer", "train_bpe", "data_root", "SOURCES", "get_source",
           "fetch_source", "load_recipe", "list_recipes"]
