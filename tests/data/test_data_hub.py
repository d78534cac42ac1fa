"""Hub sources offline: names, globs, shard selections, the dataset card, a mirror, a (faked) remote
hub with shard-by-shard downloads, and the `paper` recipe on a local directory laid out like the hub."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cart.data import Manifest, load_recipe, prepare
from cart.data import hub
from cart.data.fetch import contained_path
from cart.data.recipe import PRESET_DIR
from cart.data.sources import HubSource
from hubfixture import (EDU_ROWS, TINY_DOCS, TINY_TRAIN, TINY_VAL, WIKI_DOCS, edu_doc, edu_global_rows, make_hub,
                        tiny_doc, wiki_doc)

quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def use_mirror(mirror, monkeypatch) -> Path:
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    return mirror


def docs_of(path: Path, tok, dtype) -> list[str]:
    """The documents of a packed token file (every document is BOS … EOS), decoded."""
    t = np.fromfile(path, dtype=dtype)
    starts, ends = np.flatnonzero(t == tok.bos_id), np.flatnonzero(t == tok.eos_id)
    assert len(starts) == len(ends) and starts[0] == 0 and ends[-1] == len(t) - 1
    return [tok.decode(t[s + 1:e].tolist()) for s, e in zip(starts, ends)]


# ------------------------------------------------------------------------------ names and paths

@pytest.mark.parametrize("check, bad", [
    (hub.check_dataset, "../etc"), (hub.check_dataset, "a/b/c"), (hub.check_dataset, "a/.."), (hub.check_dataset, "a"),
    (hub.check_dataset, "/abs/x"), (hub.check_dataset, "a/b..c"), (hub.check_config, "../x"), (hub.check_config, "a/b"),
    (hub.check_split, "train/../x"), (hub.check_split, "a b"), (hub.check_revision, "../main"),
    (hub.check_revision, "main/../../x"), (hub.check_revision, "x.lock"), (hub.check_revision, "refs//pr"),
    (hub.check_pattern, "../*.parquet"), (hub.check_pattern, "/data/*"), (hub.check_pattern, "a/./b"),
    (hub.check_pattern, "a\\b"), (hub.check_pattern, "a/../../b"), (hub.check_pattern, ""),
])
def test_strict_names(check, bad):
    with pytest.raises(ValueError):
        check(bad)


def test_good_names_pass():
    assert hub.check_dataset("HuggingFaceFW/fineweb-edu") and hub.check_config("20231101.en")
    assert hub.check_split("validation") and hub.check_revision("refs/convert/parquet")
    assert hub.check_revision("b04c8d1ceb2f5cd4588862100d08de323dccfbaa") and hub.check_pattern("sample/10BT/*.parquet")


def test_contained_path(tmp_path):
    assert contained_path(tmp_path, "raw", "hub") == (tmp_path / "raw" / "hub").resolve()
    for parts in (("..",), ("a", ".."), ("/etc",), ("a/b",), ("",)):
        with pytest.raises(ValueError):
            contained_path(tmp_path, *parts)
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError, match="outside"):
        contained_path(tmp_path, "link", "etc")


def test_recipe_refuses_bad_hub_names(tmp_path):
    base = '[tokenizer]\nkind = "bpe"\nvocab_size = 300\n[[train]]\nname = "x"\n'
    for source, field in [('{ hf = "../../etc/x" }', "hub dataset"), ('{ hf = "a/b", revision = "../x" }', "hub revision"),
                          ('{ hf = "a/b", data_files = "../../*.parquet" }', "data_files pattern"),
                          ('{ hf = "a/b", split = "a/b" }', "hub split"), ('{ hf = "a/b", shard_by = "bytes" }', "shard_by"),
                          ('{ hf = "a/b", shard_by = "rows" }', "needs num_shards"),
                          ('{ hf = "a/b", num_shards = 4, shards = "2-7" }', "out of range"),
                          ('{ hf = "a/b", shards = "3-1" }', "backwards")]:
        (tmp_path / "r.toml").write_text(base + f"source = {source}\n")
        with pytest.raises(ValueError) as e:
            load_recipe(tmp_path / "r.toml")
        assert str(tmp_path / "r.toml") in str(e.value) and "train[0].source" in str(e.value) and field in str(e.value), str(e.value)


def test_recipe_errors_for_new_keys(tmp_path):
    base = '[tokenizer]\nkind = "bpe"\nvocab_size = 300\n[[train]]\nname = "x"\nsource = { hf = "a/b" }\n'
    for extra, field in [('order = "random"', "train[0].order"), ('validation = { colour = "red" }', "train[0].validation"),
                         ('val_tokens = 0\nvalidation = { shards = "1" }', "val_tokens > 0"),
                         ('validation = "shard 40"', "train[0].validation")]:
        (tmp_path / "r.toml").write_text(base + extra + "\n")
        with pytest.raises(ValueError) as e:
            load_recipe(tmp_path / "r.toml")
        assert field in str(e.value), str(e.value)
    (tmp_path / "r.toml").write_text(base + '[[ood]]\nname = "y"\nsource = { hf = "a/c" }\nvalidation = { shards = "1" }\n')
    with pytest.raises(ValueError, match="ood\\[0\\].*unknown field"):
        load_recipe(tmp_path / "r.toml")


# ------------------------------------------------------------------------------ selection maths

def test_glob():
    r = hub.glob_regex("20231101.en/train-*.parquet")
    assert r.match("20231101.en/train-00040-of-00041.parquet")
    assert not r.match("20231101.fr/train-00000-of-00001.parquet") and not r.match("x/20231101.en/train-1.parquet")
    assert not hub.glob_regex("data/*").match("data/a/b.parquet") and hub.glob_regex("data/**").match("data/a/b.parquet")
    assert hub.glob_regex("**/train-*").match("a/b/train-1") and hub.glob_regex("**/train-*").match("train-1")
    assert hub.glob_regex("sample/10BT/0[0-1]?_00000.parquet").match("sample/10BT/013_00000.parquet")


def test_parse_shards():
    assert hub.parse_shards("0-39") == list(range(40)) and hub.parse_shards("40") == [40] and hub.parse_shards(97) == [97]
    assert hub.parse_shards([3, 1, 1]) == [1, 3] and hub.parse_shards("0-2, 5") == [0, 1, 2, 5]
    assert hub.format_shards(hub.parse_shards("0-2,5,7-9")) == "0-2,5,7-9"
    for bad in ("5-3", "a", -1, True, [], "1-"):
        with pytest.raises(ValueError):
            hub.parse_shards(bad)


def test_contiguous_shard_is_datasets_split():
    """Dataset.shard(num_shards, index) (contiguous): the first n % num_shards shards get one extra row."""
    assert [hub.contiguous_shard(10, 3, i) for i in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert hub.contiguous_shard(1295, 98, 97) == (1282, 1295) and hub.contiguous_shard(1295, 98, 0) == (0, 14)
    spans = [hub.contiguous_shard(9_672_101, 98, i) for i in range(98)]
    assert spans[0][0] == 0 and spans[-1][1] == 9_672_101 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def repo(mirror, dataset, revision="main"):
    return hub.MirrorRepo(mirror, dataset, revision)


def texts(sel, r, **kw):
    return [t for t, _ in sel.stream(r, **kw)]


def test_selection_by_file(mirror):
    r = repo(mirror, "wikimedia/wikipedia")
    sel = hub.Selection(["20231101.en/train-*.parquet"], num_shards=41, shards=hub.parse_shards("0-39")).resolve(r)
    assert [s.path for s in sel.segments] == [f"20231101.en/train-{i:05d}-of-00041.parquet" for i in range(40)]
    val = hub.Selection(["20231101.en/train-*.parquet"], num_shards=41, shards=[40]).resolve(r)
    assert texts(val, r)[2:] == [wiki_doc(40, i) for i in range(2, WIKI_DOCS)]
    with pytest.raises(ValueError, match="hold 41 files, but the recipe expects num_shards = 98"):
        hub.Selection(["20231101.en/train-*.parquet"], num_shards=98).resolve(r)
    with pytest.raises(ValueError, match=r"shard\(s\) \[41\] out of range"):
        hub.Selection(["20231101.en/train-*.parquet"], shards=[41]).resolve(r)
    with pytest.raises(ValueError, match="no file matches"):
        hub.Selection(["20231101.de/*.parquet"]).resolve(r)


def test_selection_by_row_group_and_rows(mirror):
    r = repo(mirror, "HuggingFaceFW/fineweb-edu")
    groups = sum(-(-n // 16) for n in EDU_ROWS)
    sel = hub.Selection(["sample/10BT/*.parquet"], shard_by="row_group", num_shards=groups, shards=[5]).resolve(r)
    assert len(sel.files) == 14 and texts(sel, r) == [edu_doc(1, i) for i in range(16, 32)]  # file 0 has 4 groups
    total, rows = sum(EDU_ROWS), edu_global_rows()
    for i in (0, 13, 97):
        sel = hub.Selection(["sample/10BT/*.parquet"], shard_by="rows", num_shards=98, shards=[i]).resolve(r)
        lo, hi = hub.contiguous_shard(total, 98, i)
        assert sel.rows == hi - lo and texts(sel, r) == [edu_doc(f, j) for f, j in rows[lo:hi]]
    # resuming mid-way gives the rest of the stream
    sel = hub.Selection(["sample/10BT/*.parquet"], shard_by="rows", num_shards=98, shards=hub.parse_shards("0-96")).resolve(r)
    full = list(sel.stream(r))
    assert [t for t, _ in full] == [edu_doc(f, j) for f, j in rows[:hub.contiguous_shard(total, 98, 97)[0]]]
    assert texts(sel, r, resume=full[100][1]) == [t for t, _ in full[101:]]


def test_shuffle_is_datasets_permutation(mirror):
    """shuffle(seed) of datasets permutes rows with np.random.default_rng(seed).permutation(n)."""
    r = repo(mirror, "HuggingFaceFW/fineweb-edu")
    sel = hub.Selection(["sample/10BT/*.parquet"], shard_by="rows", num_shards=98, shards=[97], shuffle_seed=42).resolve(r)
    lo, hi = hub.contiguous_shard(sum(EDU_ROWS), 98, 97)
    shard = edu_global_rows()[lo:hi]
    perm = np.random.default_rng(42).permutation(hi - lo)
    got = list(sel.stream(r))
    assert [t for t, _ in got] == [edu_doc(*shard[p]) for p in perm]
    assert [t for t, _ in sel.stream(r, resume=got[4][1])] == [edu_doc(*shard[p]) for p in perm[5:]]
    # a shuffle across many row groups and files reads every row exactly once
    big = hub.Selection(["sample/10BT/*.parquet"], shuffle_seed=7).resolve(r)
    assert sorted(texts(big, r)) == sorted(edu_doc(f, j) for f, j in edu_global_rows())


def test_shard_and_shuffle_match_datasets(mirror):
    """Cross-check against the `datasets` library itself, where it is installed."""
    datasets = pytest.importorskip("datasets")
    files = sorted(str(p) for p in (mirror / "HuggingFaceFW" / "fineweb-edu" / "sample" / "10BT").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    want = list(ds.shard(num_shards=98, index=97).shuffle(seed=42)["text"])
    r = repo(mirror, "HuggingFaceFW/fineweb-edu")
    sel = hub.Selection(["sample/10BT/*.parquet"], shard_by="rows", num_shards=98, shards=[97], shuffle_seed=42).resolve(r)
    assert texts(sel, r) == want


def test_dataset_card_configs(mirror):
    r = repo(mirror, "wikimedia/wikipedia")
    sel = hub.Selection(None, config="20231101.en", split="train").resolve(r)
    assert len(sel.files) == 41 and all(f.path.startswith("20231101.en/") for f in sel.files)
    with pytest.raises(ValueError, match="no config '20231101.de'"):
        hub.Selection(None, config="20231101.de").resolve(r)
    with pytest.raises(ValueError, match="has no split 'validation'"):
        hub.Selection(None, config="20231101.en", split="validation").resolve(r)
    with pytest.raises(ValueError, match="declares no `configs`.*data_files"):
        hub.Selection(None).resolve(repo(mirror, "roneneldan/TinyStories"))


def test_mirror_checks_the_pinned_revision(tmp_path):
    make_hub(tmp_path)
    d = tmp_path / "roneneldan" / "TinyStories"
    meta = d / ".cache" / "huggingface" / "download" / "data"
    meta.mkdir(parents=True)
    sha = "691b0d9bd48ade766778c940011ca1c549f6359b"
    etag = "e" * 64
    (meta / f"{Path(TINY_VAL).name}.metadata").write_text(f"{sha}\n{etag}\n1712656091.1\n")
    r = hub.MirrorRepo(tmp_path, "roneneldan/TinyStories", sha)
    assert r.commit == sha and next(f for f in r.files() if f.path == TINY_VAL).sha256 == etag
    with pytest.raises(ValueError, match="holds roneneldan/TinyStories at commit 691b0d9.*pins revision 1111"):
        hub.MirrorRepo(tmp_path, "roneneldan/TinyStories", "1" * 40)
    with pytest.raises(FileNotFoundError, match="no folder"):
        hub.MirrorRepo(tmp_path, "nobody/nothing", "main")


# ------------------------------------------------------------------------------ the paper recipe

def paper_like(tmp_path: Path, **sizes) -> Path:
    """The real paper.toml with a small BPE instead of Llama-2 and small token budgets (nothing else changed)."""
    text = (PRESET_DIR / "paper.toml").read_text()
    sizes = {"tiny": 10**9, "wiki": 10**9, "edu": 4_000, "val": 400, **sizes}
    for old, new in [('kind = "llama2"', 'kind = "bpe"\nvocab_size = 400'), ("val_tokens = 500_000", f"val_tokens = {sizes['val']}"),
                     ("train_tokens = 300_000_000\n\n[[train]]\nname = \"wikipedia\"", f"train_tokens = {sizes['tiny']}\n\n[[train]]\nname = \"wikipedia\""),
                     ("train_tokens = 300_000_000", f"train_tokens = {sizes['wiki']}"),
                     ("train_tokens = 400_000_000", f"train_tokens = {sizes['edu']}"), ('name = "paper"', 'name = "paperlet"')]:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "paperlet.toml"
    path.write_text(text)
    return path


def test_paper_recipe_builds_the_papers_splits(tmp_path, use_mirror):
    """Done-when of issue 18: which shards and documents land in each split, on a hub-like folder."""
    out = prepare(paper_like(tmp_path), tmp_path / "root", workers=1, log=quiet)
    m = Manifest.load(out)
    tok = m.load_tokenizer()
    train = {d: docs_of(m.train[d].path, tok, m.dtype) for d in m.train_domains}
    val = {v: docs_of(m.val_sets[v].path, tok, m.dtype) for v in m.val_sets}
    assert m.cycle == {"tinystories": 3, "wikipedia": 3, "fineweb-edu": 4} and "chunk_len" not in m.data["interleave"]
    assert not any(v.out_of_domain for v in m.val_sets.values())

    # TinyStories: every train shard, in order; validation = the official validation split's first documents
    assert train["tinystories"] == [tiny_doc("train", f, i) for f in range(len(TINY_TRAIN)) for i in range(TINY_DOCS)]
    assert val["tinystories"] == [tiny_doc("validation", 0, i) for i in range(len(val["tinystories"]))]
    # Wikipedia: shards 0-39 in order, never shard 40; validation = shard 40's first documents, less the
    # one that repeats a training document (shard 1 doc 4)
    assert train["wikipedia"] == [wiki_doc(s, i) for s in range(40) for i in range(WIKI_DOCS)]
    assert val["wikipedia"] == [wiki_doc(40, i) for i in [0] + list(range(2, WIKI_DOCS))][:len(val["wikipedia"])]
    # FineWeb-Edu: rows of shards 0-96 of 98 in order, until 4,000 tokens; validation = shard 97 of 98
    # (contiguous rows) shuffled with seed 42, its first documents
    rows = edu_global_rows()
    lo, hi = hub.contiguous_shard(len(rows), 98, 97)
    n = len(train["fineweb-edu"])
    assert train["fineweb-edu"] == [edu_doc(*rows[i]) for i in range(n)] and n < lo
    assert m.train["fineweb-edu"].tokens >= 4_000 and m.train["fineweb-edu"].tokens - 4_000 < 100
    perm = np.random.default_rng(42).permutation(hi - lo)
    assert val["fineweb-edu"] == [edu_doc(*rows[lo + p]) for p in perm[:len(val["fineweb-edu"])]]
    for name, docs in val.items():  # first documents until 400 tokens: one document fewer would not reach it
        assert m.val_sets[name].tokens >= 400 and len(docs) >= 2
    assert not set(train["wikipedia"]) & set(val["wikipedia"])

    data = json.loads((out / "manifest.json").read_text())
    wiki = data["sources"]["wikipedia"]
    assert wiki["revision"] == "b04c8d1ceb2f5cd4588862100d08de323dccfbaa" and wiki["shards"] == "0-39" and wiki["num_shards"] == 41
    assert [f["path"] for f in wiki["files"]] == [f"20231101.en/train-{i:05d}-of-00041.parquet" for i in range(40)]
    assert wiki["validation"]["shards"] == "40" and len(wiki["validation"]["files"]) == 1
    assert data["sources"]["fineweb-edu"]["validation"]["shuffle_seed"] == 42
    assert data["cleaning"]["wikipedia"]["validation"]["dropped_in_training"] == 1
    assert data["train"]["fineweb-edu"]["until"]["file"].startswith("sample/10BT/00")
    assert "shards 97 of 98 by rows; shuffled with seed 42" in data["val"]["fineweb-edu"]["definition"]
    assert data["train"]["wikipedia"]["until"] == {"file": "20231101.en/train-00039-of-00041.parquet", "next_row": WIKI_DOCS}
    assert not (tmp_path / "root" / ".paperlet.work").exists()
    # unchanged recipe and sources: reused
    logs = []
    prepare(paper_like(tmp_path), tmp_path / "root", workers=1, log=logs.append)
    assert "up to date" in logs[0]


def test_source_order_holdout_from_the_stream(tmp_path):
    """order = "source" without a validation selection: the stream's first documents are held out."""
    docs = [f"document number {i} " + " ".join(["words"] * (i % 7 + 3)) for i in range(300)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (tmp_path / "r.toml").write_text('name = "r"\nval_tokens = 200\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                     '[[train]]\nname = "a"\norder = "source"\ntrain_tokens = 1500\nsource = { files = "a.jsonl" }\n')
    m = Manifest.load(prepare(tmp_path / "r.toml", tmp_path / "root", workers=1, log=quiet))
    tok = m.load_tokenizer()
    val, train = docs_of(m.val_sets["a"].path, tok, m.dtype), docs_of(m.train["a"].path, tok, m.dtype)
    assert val + train == docs[:len(val) + len(train)] and m.val_sets["a"].tokens >= 200 and 1500 <= m.train["a"].tokens < 1600
    assert m.data["train"]["a"]["until"] == {"documents_read": len(val) + len(train)}


# ------------------------------------------------------------------------------ a remote hub, faked

class FakeApi:
    """huggingface_hub.HfApi's three calls, answered from a local folder."""

    def __init__(self, folder: Path, commit: str):
        self.folder, self.commit = folder, commit

    def dataset_info(self, repo_id, revision=None):
        if revision not in ("main", self.commit):
            raise RuntimeError(f"404 Revision Not Found for {revision}")
        return type("Info", (), {"sha": self.commit})()

    def list_repo_tree(self, repo_id, recursive=False, revision=None, repo_type=None):
        from cart.data.fetch import sha256_file
        for p in sorted(self.folder.rglob("*")):
            if p.is_file():
                yield type("F", (), {"path": p.relative_to(self.folder).as_posix(), "size": p.stat().st_size,
                                     "lfs": {"sha256": sha256_file(p)}})()


def test_remote_downloads_one_shard_at_a_time(tmp_path, mirror, monkeypatch):
    import shutil

    import huggingface_hub
    commit = "c" * 40
    folder = mirror / "wikimedia" / "wikipedia"
    present, downloads = [], []

    def fake_download(repo_id, filename, repo_type, revision, local_dir):
        assert revision == commit and repo_type == "dataset"
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / filename, dest)
        downloads.append(filename)
        present.append(len(list(Path(local_dir).rglob("*.parquet"))))
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(hub, "open_repo", lambda root, ds, rev: hub.RemoteRepo(root, ds, rev, api=FakeApi(folder, commit)))
    (tmp_path / "r.toml").write_text('name = "r"\nval_tokens = 300\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                     '[[train]]\nname = "wiki"\norder = "source"\n'
                                     'source = { hf = "wikimedia/wikipedia", data_files = "20231101.en/train-*.parquet", num_shards = 41, shards = "0-5" }\n'
                                     'validation = { shards = "40" }\n')
    out = prepare(tmp_path / "r.toml", tmp_path / "root", workers=1, log=quiet)
    shard = "20231101.en/train-{:05d}-of-00041.parquet".format
    # the BPE tokenizer reads the training stream once, then packing reads it again; then shard 40
    assert downloads == [shard(i) for i in range(6)] * 2 + [shard(40)]
    assert max(present) == 1  # each shard deleted once read: disk holds one shard at a time
    cache = tmp_path / "root" / "raw" / "hub" / "wikimedia" / "wikipedia" / commit
    assert cache.is_dir() and not list(cache.rglob("*.parquet"))
    data = json.loads((out / "manifest.json").read_text())
    assert data["sources"]["wiki"]["commit"] == commit and data["train"]["wiki"]["docs"] == 6 * WIKI_DOCS

    # a download whose sha256 differs from the hub's record is refused and deleted
    def corrupt(repo_id, filename, repo_type, revision, local_dir):
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"not the file")
        return str(dest)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", corrupt)
    src = HubSource("w", "wikimedia/wikipedia", data_files="20231101.en/train-*.parquet", shards=[7])
    with pytest.raises(ValueError, match="sha256 differs from the hub's record"):
        list(src.documents(tmp_path / "root2"))
    assert not list((tmp_path / "root2").rglob("*.parquet"))


def test_remote_errors_are_one_line(tmp_path, mirror):
    folder = mirror / "wikimedia" / "wikipedia"
    with pytest.raises(ValueError, match="cannot resolve dataset 'wikimedia/wikipedia' at revision 'v9'") as e:
        hub.RemoteRepo(tmp_path, "wikimedia/wikipedia", "v9", api=FakeApi(folder, "c" * 40))
    assert "\n" not in str(e.value)
