"""prepare(): determinism, split disjointness, counts, local sources, recipe errors, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cart.data import Manifest, load_recipe, prepare
from cart.data.prepare import iter_documents


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    return prepare("smoke", tmp_path_factory.mktemp("root"), workers=1, log=lambda *a: None)


def split_docs(tokens: np.ndarray, bos: int, eos: int) -> list[np.ndarray]:
    """Documents of a packed file: every document is BOS … EOS."""
    starts = np.flatnonzero(tokens == bos)
    ends = np.flatnonzero(tokens == eos)
    assert len(starts) == len(ends) and starts[0] == 0 and ends[-1] == len(tokens) - 1
    assert np.all(starts[1:] == ends[:-1] + 1), "tokens between documents"
    return [tokens[s + 1:e] for s, e in zip(starts, ends)]


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "stats.json"}


def test_layout_and_manifest(smoke):
    m = Manifest.load(smoke)
    assert (smoke / "manifest.json").exists() and m.tokenizer_path == smoke / "tokenizer.json"
    assert m.train_domains == ["stories", "notes"]
    assert {k: v.out_of_domain for k, v in m.val_sets.items()} == {"stories": False, "notes": False, "code": True}
    assert m.vocab_size == 512 and m.dtype == np.uint16 and (m.bos_id, m.eos_id) == (0, 1)
    assert m.cycle == {"stories": 2, "notes": 1} and "chunk_len" not in m.data["interleave"]
    for name, v in m.val_sets.items():
        assert v.tokens >= 4000 and v.path == smoke / "val" / f"{name}.bin"
        assert v.path.stat().st_size == 2 * v.tokens
    tok = m.load_tokenizer()
    assert tok.vocab_size == 512 and tok.sha256 == m.tokenizer_sha256
    data = json.loads((smoke / "manifest.json").read_text())
    assert data["cleaning"]["stories"]["kept"] == 1200
    assert data["sources"]["stories"] == {"source": "stories", "kind": "synthetic", "style": "stories", "docs": 1200, "seed": 0}


def test_counts_match_files(smoke):
    """docs, tokens and UTF-8 bytes in the manifest are those of the files (bytes: for bits per byte)."""
    m = Manifest.load(smoke)
    tok = m.load_tokenizer()
    for name, rec in [*m.train.items(), *m.val_sets.items()]:
        docs = split_docs(np.fromfile(rec.path, dtype=m.dtype), m.bos_id, m.eos_id)
        assert len(docs) == rec.docs, name
        assert sum(len(tok.decode(d.tolist()).encode("utf-8")) for d in docs) == rec.bytes, name


def test_split_disjoint_and_complete(smoke):
    m = Manifest.load(smoke)
    tok = m.load_tokenizer()
    text = lambda path: {tok.decode(d.tolist()) for d in split_docs(np.fromfile(path, dtype=m.dtype), m.bos_id, m.eos_id)}  # noqa: E731
    rec = load_recipe("smoke")
    for d in rec.train:
        train, val = text(m.train[d.name].path), text(m.val_sets[d.name].path)
        assert not train & val, f"{d.name}: validation documents in training"
        source = {t for t, _ in iter_documents(d, smoke.parent)}
        assert train | val == source, f"{d.name}: documents lost or invented"
    all_train = set().union(*(text(m.train[n].path) for n in m.train_domains))
    assert not text(m.val_sets["code"].path) & all_train


def test_deterministic_and_worker_independent(smoke, tmp_path):
    again = prepare("smoke", tmp_path / "a", workers=1, log=lambda *a: None)
    two = prepare("smoke", tmp_path / "b", workers=2, log=lambda *a: None)
    ref = files_of(smoke)
    assert files_of(again) == ref
    assert files_of(two) == ref


def test_prepared_folder_reused(smoke, capsys):
    before = (smoke / "train" / "stories.bin").stat().st_mtime_ns
    prepare("smoke", smoke.parent, workers=1)
    assert "up to date" in capsys.readouterr().out
    assert (smoke / "train" / "stories.bin").stat().st_mtime_ns == before


def test_local_files_sources(tmp_path):
    """txt (one per file / per paragraph), jsonl and parquet; an out-of-domain document that also
    occurs in training is dropped from the out-of-domain set."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from cart.data.synthetic import synthetic_documents
    src = tmp_path / "corpus"
    (src / "txt").mkdir(parents=True)
    stories = list(synthetic_documents("stories", 300, seed=7))
    for i, s in enumerate(stories):
        (src / "txt" / f"{i:03d}.txt").write_text(s)
    notes = list(synthetic_documents("notes", 200, seed=7))
    (src / "notes.jsonl").write_text("".join(json.dumps({"body": n}) + "\n" for n in notes))
    code = list(synthetic_documents("code", 100, seed=7)) + [stories[5]]
    pq.write_table(pa.table({"text": code}), src / "code.parquet")
    fresh = list(synthetic_documents("stories", 10, seed=8))
    (src / "paras.txt").write_text("\n\n".join(stories[:50] + fresh))
    recipe = tmp_path / "local.toml"
    recipe.write_text("""
name = "local"
val_tokens = 1500
[tokenizer]
kind = "bpe"
vocab_size = 400
[interleave]
cycle = { stories = 1, notes = 1 }
[[train]]
name = "stories"
source = { files = "corpus/txt/*.txt" }
[[train]]
name = "notes"
source = { files = ["corpus/notes.jsonl"], text_field = "body" }
[[ood]]
name = "code"
source = { files = "corpus/code.parquet" }
val_tokens = 100000
[[ood]]
name = "paras"
source = { files = "corpus/paras.txt", split = "paragraph" }
""")
    m = Manifest.load(prepare(recipe, tmp_path / "root", workers=1, log=lambda *a: None))
    data = m.data
    assert data["cleaning"]["stories"]["kept"] == 300 and data["cleaning"]["notes"]["kept"] == 200
    assert data["cleaning"]["code"]["dropped_in_training"] == 1
    assert m.val_sets["code"].docs == 100      # all of it: 100k tokens requested, fewer exist
    assert data["cleaning"]["paras"]["dropped_in_training"] == 50 and m.val_sets["paras"].docs == 10
    assert [f["file"] for f in data["sources"]["notes"]["files"]] == ["notes.jsonl"]


def test_train_tokens_cap(tmp_path):
    recipe = tmp_path / "cap.toml"
    recipe.write_text(load_recipe("smoke").path.read_text().replace('name = "notes"', 'name = "notes"\ntrain_tokens = 20000')
                      .replace('name = "smoke"', 'name = "cap"'))
    m = Manifest.load(prepare(recipe, tmp_path, workers=1, log=lambda *a: None))
    assert 20000 <= m.train["notes"].tokens < 20000 + 1000


@pytest.mark.parametrize("edit, field", [
    (("cycle = { stories = 2, notes = 1 }", "cycle = { stories = 2 }"), "interleave.cycle"),
    (('kind = "bpe"', 'kind = "wordpiece"'), "tokenizer.kind"),
    (("vocab_size = 512", "vocab_size = -3"), "tokenizer.vocab_size"),
    (('name = "notes"', 'name = "stories"'), "duplicated"),
    (("seed = 0", "seed = 0\nshuffle = true"), "shuffle"),
    (('source = { synthetic = "code", docs = 300 }', 'source = "no-such-source"'), "unknown source 'no-such-source'"),
])
def test_recipe_errors_name_file_and_field(tmp_path, edit, field):
    text = load_recipe("smoke").path.read_text()
    assert edit[0] in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ValueError) as e:
        load_recipe(bad)
    assert str(bad) in str(e.value) and field in str(e.value)


def test_unknown_recipe():
    with pytest.raises(FileNotFoundError, match="presets are"):
        load_recipe("no-such-recipe")


def test_paper_recipe_fails_clearly_without_hub(tmp_path):
    """Here the hub is unreachable: one clear error, quickly, before anything else is fetched."""
    import time
    from cart.data.hub import MIRROR_ENV, hub_unreachable
    if hub_unreachable() is None:
        pytest.skip("the Hugging Face hub is reachable from this machine")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=f"needs the Hugging Face hub, which this machine cannot reach .*{MIRROR_ENV}") as e:
        prepare("paper", tmp_path, log=lambda *a: None)
    assert "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "paper").exists()
    assert not (tmp_path / "raw" / "llama-cpp-python").exists()  # failed before fetching anything else


def test_presets_parse():
    cpu, paper = load_recipe("cpu"), load_recipe("paper")
    assert [d.name for d in cpu.train] == ["news", "speeches", "python-docs"]
    assert all(d.out_of_domain for d in cpu.ood) and cpu.tokenizer == {"kind": "bpe", "vocab_size": 8192}
    assert paper.cycle == {"tinystories": 3, "wikipedia": 3, "fineweb-edu": 4} and paper.tokenizer["kind"] == "llama2"
    assert sum(d.train_tokens for d in paper.train) == 1_000_000_000
    assert [d.train_tokens / 1e9 for d in paper.train] == [0.3, 0.3, 0.4]
    # the paper's selections: source order, its training shards, its three validation sets of 500k tokens
    tiny, wiki, edu = paper.train
    assert all(d.order == "source" and d.val_tokens == 500_000 and d.validation is not None for d in paper.train)
    assert tiny.source.data_files == ["data/train-*.parquet"] and tiny.validation.data_files == ["data/validation-*.parquet"]
    assert (wiki.source.dataset, wiki.source.data_files, wiki.source.num_shards) == ("wikimedia/wikipedia", ["20231101.en/train-*.parquet"], 41)
    assert wiki.source.shards == list(range(40)) and wiki.validation.shards == [40] and wiki.validation.shuffle_seed is None
    assert (edu.source.shard_by, edu.source.num_shards, edu.source.shards) == ("rows", 98, list(range(97)))
    assert edu.validation.shards == [97] and edu.validation.shuffle_seed == 42
    assert all(len(d.source.revision) == 40 for d in paper.train) and not paper.ood


def test_cli(tmp_path, capsys):
    from cart.cli import main
    assert main(["data", "prepare", "smoke", "--data-dir", str(tmp_path), "--workers", "1"]) == 0
    assert main(["data", "info", str(tmp_path / "smoke"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "held-out" in out and "out-of-domain" in out and "verified" in out
    assert main(["data", "info", "smoke", "--data-dir", str(tmp_path)]) == 0
    assert main(["data", "sources", "--data-dir", str(tmp_path)]) == 0
    assert "news" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no manifest" in err
    assert main(["data", "fetch", "no-such-source", "--data-dir", str(tmp_path)]) == 2
    assert main(["data", "bench", "smoke", "--data-dir", str(tmp_path), "--workers", "1"]) == 0
    assert "MB/s" in capsys.readouterr().out


def test_bench_tokenize(smoke):
    from cart.data import bench_tokenize
    r = bench_tokenize("smoke", smoke.parent, workers=1)
    assert r["mb_per_s"] > 0 and r["tokens_per_s"] > 0 and r["tokens"] > 0


def test_changed_source_file_rebuilds(tmp_path, capsys):
    lines = [f"line {i} of the first file, with words" for i in range(400)]
    (tmp_path / "a.txt").write_text("\n".join(lines))
    (tmp_path / "r.toml").write_text('name = "r"\nval_tokens = 300\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                     '[[train]]\nname = "a"\nsource = { files = "a.txt", split = "line" }\n')
    prepare(tmp_path / "r.toml", tmp_path / "root", workers=1)
    prepare(tmp_path / "r.toml", tmp_path / "root", workers=1)
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "a.txt").write_text("\n".join(lines[:300]))
    m = Manifest.load(prepare(tmp_path / "r.toml", tmp_path / "root", workers=1))
    assert "up to date" not in capsys.readouterr().out
    assert m.train["a"].docs + m.val_sets["a"].docs == 300


def test_interleave_chunk_len_is_refused_with_the_reason(tmp_path):
    """A chunk is one training row, so its length is the training seq_len: a recipe cannot set it."""
    text = (Path(load_recipe("smoke").path).read_text().replace("[interleave]\n", "[interleave]\nchunk_len = 64\n"))
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(ValueError, match=r"interleave\.chunk_len: not a recipe setting.*seq_len"):
        load_recipe(tmp_path / "r.toml")


@pytest.mark.parametrize("change", ["code", "library", "recipe"])
def test_prepared_data_is_refreshed_when_code_library_or_recipe_change(tmp_path, monkeypatch, change):
    import sys
    P = sys.modules["cart.data.prepare"]  # the module (cart.data.prepare is also the function's name)
    root = tmp_path / "root"
    out = prepare("smoke", root, log=lambda *a: None)
    data = json.loads((out / "manifest.json").read_text())
    assert data["code"]["sha256"] == P.pipeline_code()["sha256"] and data["code"]["files"] == list(P.PIPELINE_FILES)
    assert data["tokenizer"]["library"].startswith("tokenizers ")
    notes = []
    assert prepare("smoke", root, log=notes.append) == out and "up to date" in notes[-1]
    if change == "code":
        monkeypatch.setattr(P, "pipeline_code", lambda: {"sha256": "0" * 64, "files": []})
        reason = "data-pipeline code changed"
    elif change == "library":
        monkeypatch.setattr(P, "library_version", lambda kind: "tokenizers 99.0")
        reason = "tokenizer library changed"
    else:
        recipe = tmp_path / "smoke.toml"
        recipe.write_text(Path(load_recipe("smoke").path).read_text().replace("seed = 0", "seed = 1"))
        monkeypatch.setattr(P, "load_recipe", lambda r: load_recipe(recipe))
        reason = "recipe changed"
    notes.clear()
    prepare("smoke", root, log=notes.append)
    assert any(reason in n for n in notes), notes
    assert not any("up to date" in n for n in notes)
