"""Cleaning, sources and the download cache, offline."""
from __future__ import annotations

import json

import pytest

from cart.data.clean import CleanStats, clean_documents, decode_bytes, strip_gutenberg
from cart.data.fetch import Artifact, cached_artifact, fetch_artifact, sha256_file
from cart.data.sources import SOURCES, FilesSource, source_from_spec
from cart.data.synthetic import synthetic_documents

GUTENBERG = """The Project Gutenberg EBook of Hamlet, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost.

*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET, PRINCE OF DENMARK

Ber. Who's there?

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

Updated editions will replace the previous one.
"""


def test_strip_gutenberg():
    text, stripped = strip_gutenberg(GUTENBERG)
    assert stripped and text.strip() == "HAMLET, PRINCE OF DENMARK\n\nBer. Who's there?"
    assert strip_gutenberg("no markers here") == ("no markers here", False)
    old = "licence blah\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nThe book.\nEnd of Project Gutenberg's Book\nmore"
    assert strip_gutenberg(old)[0].strip() == "The book."


def test_decode_fallback():
    assert decode_bytes("£5 café".encode("utf-8")) == ("£5 café", False)
    assert decode_bytes("£5 café".encode("latin-1")) == ("£5 café", True)
    assert decode_bytes(b"\x93quoted\x94") == ("\u201cquoted\u201d", True)   # Windows-1252 curly quotes


def test_clean_counts():
    docs = ["a doc\r\n", b"caf\xe9", "", "  \n ", "a doc", "\ufeffanother\x00", GUTENBERG]
    stats = CleanStats()
    out = [t for t, _ in clean_documents(docs, stats, gutenberg=True)]
    assert out == ["a doc", "café", "another", "HAMLET, PRINCE OF DENMARK\n\nBer. Who's there?"]
    assert (stats.seen, stats.kept, stats.empty, stats.duplicate, stats.decode_fallback, stats.gutenberg_stripped) == (7, 4, 2, 1, 1, 1)
    assert stats.bytes_kept == sum(len(t.encode()) for t in out)


def test_synthetic_deterministic_and_varied():
    a = list(synthetic_documents("notes", 50, seed=3))
    assert a == list(synthetic_documents("notes", 50, seed=3))
    assert a != list(synthetic_documents("notes", 50, seed=4))
    assert len(set(a)) == 50
    with pytest.raises(ValueError, match="unknown synthetic style"):
        list(synthetic_documents("poems", 1))


def test_files_source_errors(tmp_path):
    src = FilesSource("x", ["missing/*.txt"], base=tmp_path)
    with pytest.raises(FileNotFoundError, match="no file matches"):
        src.fetch(tmp_path)
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(ValueError, match=r"a.jsonl:2: no field 'text'"):
        list(FilesSource("x", ["a.jsonl"], base=tmp_path).documents(tmp_path))
    (tmp_path / "lines.txt").write_text("one\ntwo\r\nthree\n")
    assert list(FilesSource("x", ["lines.txt"], split="line", base=tmp_path).documents(tmp_path)) == ["one", "two", "three", ""]
    with pytest.raises(ValueError, match="exactly one of files / hf / synthetic"):
        source_from_spec("x", {"files": "a", "hf": "b"}, tmp_path)
    with pytest.raises(ValueError, match="bad source table"):
        source_from_spec("x", {"synthetic": "stories", "docs": 3, "colour": "red"}, tmp_path)


def test_registry_covers_data_md():
    for name in ["news", "tweets", "news-uk", "shakespeare", "speeches", "fiction", "python-docs", "linux-docs",
                 "dictionary", "tinystories", "wikipedia", "fineweb-edu"]:
        assert name in SOURCES


def test_cache_verified_and_reused(tmp_path, monkeypatch):
    """A cached artifact is checksummed on use and never downloaded again; a changed file is refused."""
    art = Artifact("thing", "pip", "thing==1.0")
    calls = []

    def fake_client(artifact, tmpdir):
        calls.append(artifact.spec)
        (tmpdir / "thing-1.0.tar.gz").write_bytes(b"payload")
    monkeypatch.setattr("cart.data.fetch._run_client", fake_client)
    path = fetch_artifact(art, tmp_path, log=lambda *a: None)
    assert path == tmp_path / "raw" / "thing" / "thing-1.0.tar.gz" and calls == ["thing==1.0"]
    rec = json.loads((path.parent / "fetch.json").read_text())
    assert rec["sha256"] == sha256_file(path) and rec["command"] == "pip download --no-deps thing==1.0"
    assert fetch_artifact(art, tmp_path, log=lambda *a: None) == path and len(calls) == 1
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="checksum mismatch"):
        cached_artifact(art, tmp_path)
    assert cached_artifact(Artifact("thing", "pip", "thing==2.0"), tmp_path, verify=False) is None  # new version: fetch again
