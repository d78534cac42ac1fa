"""The Hugging Face hub as the paper used it: a dataset at a pinned revision, a selection of its
files and shards, read one shard at a time.

Notable features:
- `HubRepo`: one dataset at one revision — its file listing (path, size, sha256), the commit the
  revision resolved to, parquet footers (row counts, row groups) and local copies of files. Two
  kinds behind one interface: `RemoteRepo` (huggingface_hub: listing and commit from the API,
  footers by HTTP range reads, files downloaded one at a time into the data root and checked
  against the hub's sha256) and `MirrorRepo` (a local directory laid out like the hub,
  `$CART_HUB_MIRROR/<owner>/<name>/<path in the repo>`, e.g. made with `hf download --repo-type
  dataset <owner>/<name> --local-dir $CART_HUB_MIRROR/<owner>/<name>`): air-gapped clusters and
  the tests use it, and it verifies a pinned revision against huggingface_hub's download records
  where they exist;
- `Selection`: `data_files` globs (or a dataset card's `configs` for a config and split), then
  shards — by file, by parquet row group, or by contiguous rows exactly as
  `datasets.Dataset.shard(num_shards, index)` cuts them — then an optional seeded shuffle, the
  permutation `datasets.Dataset.shuffle(seed=...)` applies. It resolves to segments (file, first
  row, end row) and reads them in order with a resumable position;
- every user-supplied name that reaches a path (dataset, config, split, revision, data_files,
  listed files) is checked against a strict pattern, and every cache path is checked to stay
  inside the data root.
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from cart.data.fetch import contained_path, sha256_file

__all__ = ["HubFile", "HubRepo", "MirrorRepo", "RemoteRepo", "Selection", "Segment", "open_repo", "parse_shards",
           "format_shards", "check_dataset", "check_config", "check_split", "check_revision", "check_pattern", "hub_unreachable",
           "MIRROR_ENV", "SHARD_UNITS"]

MIRROR_ENV = "CART_HUB_MIRROR"
SHARD_UNITS = ("file", "row_group", "rows")

# ----------------------------------------------------------------------------------------------
# strict names: anything that becomes part of a path or a hub request

_SEG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_DATASET = re.compile(rf"^{_SEG}/{_SEG}$")
_CONFIG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SPLIT = re.compile(r"^\w+(\.\w+)*$", re.ASCII)  # the hub's own rule for split names
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PATTERN = re.compile(r"^[A-Za-z0-9._*?\[\]=+/-]{1,512}$")
_REPO_PATH = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*(/[A-Za-z0-9_=+-][A-Za-z0-9._=+-]*)*$")


def _no_dots(value: str) -> bool:
    return ".." not in value and "//" not in value and not value.endswith(("/", "."))


def check_dataset(value) -> str:
    if not isinstance(value, str) or not _DATASET.match(value) or ".." in value:
        raise ValueError(f"hub dataset {value!r}: expected 'owner/name' (letters, digits, . _ -)")
    return value


def check_config(value) -> str | None:
    if value is not None and (not isinstance(value, str) or not _CONFIG.match(value) or ".." in value):
        raise ValueError(f"hub config {value!r}: expected a simple name (letters, digits, . _ -)")
    return value


def check_split(value) -> str:
    if not isinstance(value, str) or not _SPLIT.match(value):
        raise ValueError(f"hub split {value!r}: expected a name like 'train' or 'validation' (letters, digits, _ and .)")
    return value


def check_revision(value) -> str:
    if not isinstance(value, str) or not _REVISION.match(value) or not _no_dots(value) or value.endswith(".lock"):
        raise ValueError(f"hub revision {value!r}: expected a commit sha, a branch or a tag name")
    return value


def check_pattern(value) -> str:
    """A data_files glob relative to the repository root: no absolute path, no '..', no '\\'."""
    if (not isinstance(value, str) or not _PATTERN.match(value) or value.startswith("/")
            or any(part in ("", ".", "..") for part in value.split("/"))):
        raise ValueError(f"data_files pattern {value!r}: expected a relative glob inside the dataset "
                         f"(letters, digits, . _ - = + and * ? [ ] /; no '..', no leading '/')")
    return value


def _check_repo_path(path: str, dataset: str) -> str:
    if not _REPO_PATH.match(path) or any(part in (".", "..") for part in path.split("/")):
        raise ValueError(f"{dataset}: refusing file {path!r}: its name is not a plain relative path")
    return path


def glob_regex(pattern: str) -> re.Pattern:
    """fsspec-style glob as the hub's data_files use it: `*` and `?` stay within one folder, `**`
    crosses folders, `[...]` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                raise ValueError(f"data_files pattern {pattern!r}: unclosed '['")
            out.append("[" + pattern[i + 1:j].replace("\\", "") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def parse_shards(spec, where: str = "shards") -> list[int] | None:
    """`shards` in a recipe: 7, [0, 3], "0-39", "40", "0-9,20-29" -> sorted unique indices."""
    if spec is None:
        return None
    items: list[int] = []
    if isinstance(spec, bool):
        raise ValueError(f"{where}: expected an index, a list of indices or a range like '0-39', got {spec!r}")
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in spec) and spec:
        items = list(spec)
    elif isinstance(spec, str) and re.fullmatch(r"\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*", spec):
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            lo_i, hi_i = int(lo), int(hi) if hi.strip() else int(lo)
            if hi_i < lo_i:
                raise ValueError(f"{where}: range {part.strip()!r} runs backwards")
            items.extend(range(lo_i, hi_i + 1))
    else:
        raise ValueError(f"{where}: expected an index, a list of indices or a range like '0-39', got {spec!r}")
    if any(i < 0 for i in items):
        raise ValueError(f"{where}: shard indices are >= 0, got {spec!r}")
    return sorted(set(items))


def contiguous_shard(n_rows: int, num_shards: int, index: int) -> tuple[int, int]:
    """Rows [start, end) of shard `index` when n_rows are cut into num_shards contiguous pieces, the
    first n_rows % num_shards of them one row longer (datasets.Dataset.shard's contiguous split)."""
    div, mod = divmod(n_rows, num_shards)
    start = div * index + min(index, mod)
    return start, start + div + (1 if index < mod else 0)


def hub_unreachable(timeout: float = 5.0) -> str | None:
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


# ----------------------------------------------------------------------------------------------
# a dataset at a revision

@dataclass(frozen=True)
class HubFile:
    path: str                 # relative to the repository root
    size: int
    sha256: str | None        # from the hub's LFS record (None for small non-LFS files until read)


class HubRepo(ABC):
    """One dataset at one revision: what files it has, their footers, and local copies of them."""

    dataset: str
    revision: str
    commit: str | None        # the resolved commit sha (None: a mirror without download records)

    @abstractmethod
    def files(self) -> list[HubFile]:
        """Every file of the repository at this revision, sorted by path (dotfiles left out)."""

    @abstractmethod
    def local(self, path: str) -> Path:
        """A local copy of `path` (downloaded if needed; a remote download is checked against its sha256)."""

    def release(self, path: str) -> None:
        """Forget a local copy this process downloaded (bounded disk); a no-op for files that were already there."""

    def footer(self, path: str):
        """The parquet footer (pyarrow FileMetaData) of `path`."""
        import pyarrow.parquet as pq
        return pq.ParquetFile(self.local(path)).metadata

    def read_text(self, path: str) -> str | None:
        """A small file's text (the dataset card), or None when the repository has no such file."""
        if not any(f.path == path for f in self.files()):
            return None
        return self.local(path).read_text(encoding="utf-8")

    def sha256(self, f: HubFile) -> str:
        return f.sha256 if f.sha256 else sha256_file(self.local(f.path))

    def where(self) -> str:
        return f"{self.dataset}@{self.revision}"


class MirrorRepo(HubRepo):
    """A local copy of the hub: `<mirror>/<owner>/<name>/<path>`."""

    def __init__(self, mirror: Path, dataset: str, revision: str):
        self.dataset, self.revision = check_dataset(dataset), check_revision(revision)
        self.dir = contained_path(mirror, *dataset.split("/"))
        if not self.dir.is_dir():
            raise FileNotFoundError(f"{MIRROR_ENV}={mirror}: no folder {self.dir} for dataset {dataset!r} "
                                    f"(lay it out as <mirror>/<owner>/<name>/<files as in the repository>)")
        self._files: list[HubFile] | None = None
        self.commit = self._recorded_commit()

    def _meta(self, path: str) -> list[str] | None:
        """huggingface_hub's record of a `--local-dir` download: [commit, etag, time], if there is one."""
        p = self.dir / ".cache" / "huggingface" / "download" / f"{path}.metadata"
        return p.read_text().split("\n") if p.is_file() else None

    def _recorded_commit(self) -> str | None:
        commits = {m[0].strip() for f in self.files() if (m := self._meta(f.path)) and _COMMIT.match(m[0].strip())}
        if len(commits) > 1:
            raise ValueError(f"mirror {self.dir} mixes files from commits {sorted(commits)}: download one revision")
        commit = next(iter(commits), None)
        if _COMMIT.match(self.revision) and commit is not None and commit != self.revision:
            raise ValueError(f"mirror {self.dir} holds {self.dataset} at commit {commit}, but the recipe pins revision "
                             f"{self.revision}: download that revision into the mirror, or change the recipe")
        return commit

    def files(self) -> list[HubFile]:
        if self._files is None:
            out = []
            for p in sorted(self.dir.rglob("*")):
                rel = p.relative_to(self.dir).as_posix()
                if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
                    meta = self._meta(rel)
                    etag = meta[1].strip() if meta and len(meta) > 1 else ""
                    out.append(HubFile(rel, p.stat().st_size, etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None))
            self._files = out
        return self._files

    def local(self, path: str) -> Path:
        p = contained_path(self.dir, *_check_repo_path(path, self.dataset).split("/"))
        if not p.is_file():
            raise FileNotFoundError(f"mirror {self.dir}: {path} is missing")
        return p

    def where(self) -> str:
        return f"{self.dataset}@{self.revision} (mirror {self.dir})"


class RemoteRepo(HubRepo):
    """The Hugging Face hub through huggingface_hub. Downloads land in `<data root>/raw/hub/<owner>/<name>/<commit>/`."""

    def __init__(self, root: Path, dataset: str, revision: str, api=None):
        self.dataset, self.revision = check_dataset(dataset), check_revision(revision)
        from huggingface_hub import HfApi
        self.api = api if api is not None else HfApi()
        try:
            self.commit = self.api.dataset_info(dataset, revision=revision).sha
        except Exception as e:
            raise ValueError(f"Hugging Face hub: cannot resolve dataset {dataset!r} at revision {revision!r}: "
                             f"{_one_line(e)}") from None
        if not isinstance(self.commit, str) or not _COMMIT.match(self.commit):
            raise ValueError(f"Hugging Face hub: {dataset}@{revision} resolved to {self.commit!r}, not a commit sha")
        self.cache = contained_path(root, "raw", "hub", *dataset.split("/"), self.commit)
        self._files: list[HubFile] | None = None
        self._downloaded: set[str] = set()   # downloaded by this process: released once read
        self._verified: set[str] = set()     # checked against the hub's sha256 in this process

    def files(self) -> list[HubFile]:
        if self._files is None:
            try:
                entries = self.api.list_repo_tree(self.dataset, recursive=True, revision=self.commit, repo_type="dataset")
                out = []
                for e in entries:
                    if not hasattr(e, "size") or any(part.startswith(".") for part in e.path.split("/")):
                        continue  # a folder, or .gitattributes and friends
                    lfs = getattr(e, "lfs", None)
                    out.append(HubFile(e.path, int(e.size), (lfs.sha256 if hasattr(lfs, "sha256") else lfs["sha256"]) if lfs else None))
            except Exception as e:
                raise ValueError(f"Hugging Face hub: cannot list the files of {self.where()}: {_one_line(e)}") from None
            self._files = sorted(out, key=lambda f: f.path)
        return self._files

    def _info(self, path: str) -> HubFile:
        for f in self.files():
            if f.path == path:
                return f
        raise FileNotFoundError(f"{self.where()} has no file {path!r}")

    def local(self, path: str) -> Path:
        _check_repo_path(path, self.dataset)
        info = self._info(path)
        dest = contained_path(self.cache, *path.split("/"))
        if dest.is_file() and (path in self._verified or (dest.stat().st_size == info.size and
                                                           (info.sha256 is None or sha256_file(dest) == info.sha256))):
            self._verified.add(path)
            return dest
        from huggingface_hub import hf_hub_download
        try:
            got = Path(hf_hub_download(self.dataset, path, repo_type="dataset", revision=self.commit, local_dir=self.cache))
        except Exception as e:
            raise ValueError(f"Hugging Face hub: cannot download {path} of {self.where()}: {_one_line(e)}") from None
        if got.resolve() != dest.resolve():
            raise ValueError(f"Hugging Face hub: {path} of {self.dataset} landed at {got}, outside {self.cache}")
        if info.sha256 is not None and sha256_file(dest) != info.sha256:
            dest.unlink()
            raise ValueError(f"{path} of {self.where()}: the download's sha256 differs from the hub's record; deleted it, "
                             f"run again to download it afresh")
        self._downloaded.add(path)
        self._verified.add(path)
        return dest

    def release(self, path: str) -> None:
        self._verified.discard(path)
        if path in self._downloaded:
            contained_path(self.cache, *path.split("/")).unlink(missing_ok=True)
            meta = self.cache / ".cache" / "huggingface" / "download" / f"{path}.metadata"
            meta.unlink(missing_ok=True)
            self._downloaded.discard(path)

    def footer(self, path: str):
        """Read the footer of a file not downloaded yet by HTTP range requests (a few hundred kB)."""
        import pyarrow.parquet as pq
        dest = contained_path(self.cache, *_check_repo_path(path, self.dataset).split("/"))
        if dest.is_file():
            return pq.ParquetFile(dest).metadata
        from huggingface_hub import HfFileSystem
        try:
            with HfFileSystem().open(f"datasets/{self.dataset}@{self.commit}/{path}", "rb") as f:
                return pq.ParquetFile(f).metadata
        except Exception as e:
            raise ValueError(f"Hugging Face hub: cannot read the parquet footer of {path} of {self.where()}: "
                             f"{_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def open_repo(root: Path, dataset: str, revision: str) -> HubRepo:
    """The mirror named by $CART_HUB_MIRROR if set, else the hub itself (one clear line when it is unreachable)."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return MirrorRepo(Path(mirror).expanduser().resolve(), dataset, revision)
    check_dataset(dataset)
    check_revision(revision)
    try:
        import huggingface_hub  # noqa: F401  (installed with `tokenizers`; named for the message)
    except ImportError:
        raise ValueError(f"dataset {dataset!r} comes from the Hugging Face hub and needs huggingface_hub: "
                         f"pip install huggingface_hub") from None
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    reason = "HF_HUB_OFFLINE is set" if offline else hub_unreachable()
    if reason:  # fail in a second, not after a half-minute of retries
        raise ValueError(f"dataset {dataset!r} needs the Hugging Face hub, which this machine cannot reach ({reason}). "
                         f"Point {MIRROR_ENV} at a local copy laid out as <owner>/<name>/<files>, or use the `cpu` "
                         f"recipe (registry corpora) or local files")
    return RemoteRepo(root, dataset, revision)


# ----------------------------------------------------------------------------------------------
# the dataset card's `configs`: which files make a config's split

def card_data_files(card: str | None, config: str | None, split: str, where: str) -> list[str]:
    """data_files patterns of (config, split) from a dataset card's YAML header (`configs:`)."""
    import yaml
    header = None
    if card and card.startswith("---"):
        end = card.find("\n---", 3)
        if end > 0:
            header = yaml.safe_load(card[3:end])
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list):
        raise ValueError(f"{where}: the dataset card declares no `configs`, so config {config!r} / split {split!r} "
                         f"cannot be resolved: name the files with data_files = \"...\"")
    name = config or "default"
    for c in configs:
        if isinstance(c, dict) and c.get("config_name", "default") == name:
            df = c.get("data_files")
            if isinstance(df, (str, list)) and (isinstance(df, str) or all(isinstance(x, str) for x in df)):
                df = [{"split": "train", "path": df}]
            for entry in df or []:
                if isinstance(entry, dict) and entry.get("split") == split:
                    paths = entry.get("path")
                    return [check_pattern(p) for p in ([paths] if isinstance(paths, str) else list(paths or []))]
            splits = [e.get("split") for e in (df or []) if isinstance(e, dict)]
            raise ValueError(f"{where}: config {name!r} has no split {split!r} (splits: {splits})")
    names = [c.get("config_name", "default") for c in configs if isinstance(c, dict)]
    raise ValueError(f"{where}: no config {name!r} in the dataset card (configs: {names})")


# ----------------------------------------------------------------------------------------------
# a selection: files -> shards -> (optional) shuffle -> segments

@dataclass(frozen=True)
class Segment:
    path: str
    start: int = 0
    stop: int | None = None   # end row (exclusive); None = to the end of the file


@dataclass
class Selection:
    data_files: list[str] | None = None
    config: str | None = None
    split: str = "train"
    shard_by: str = "file"
    num_shards: int | None = None
    shards: list[int] | None = None
    shuffle_seed: int | None = None
    text_field: str = "text"
    # resolved
    files: list[HubFile] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    rows: int | None = None   # rows in the selection (known when shuffled or sharded by rows/row groups)

    def describe(self) -> str:
        what = ", ".join(self.data_files or [f"config {self.config or 'default'} split {self.split}"])
        if self.shards is not None:
            what += f"; shards {format_shards(self.shards)} of {self.num_shards or len(self.files)} by {self.shard_by}"
        if self.shuffle_seed is not None:
            what += f"; shuffled with seed {self.shuffle_seed}"
        return what

    def resolve(self, repo: HubRepo) -> "Selection":
        where = repo.where()
        patterns = self.data_files
        if patterns is None:
            patterns = card_data_files(repo.read_text("README.md"), self.config, self.split, where)
        regexes = [glob_regex(check_pattern(p)) for p in patterns]
        files = [f for f in repo.files() if any(r.match(f.path) for r in regexes)]
        if not files:
            raise ValueError(f"{where}: no file matches data_files {patterns}")
        for f in files:
            _check_repo_path(f.path, repo.dataset)
        self.files = files

        if self.shard_by == "file":
            units = [Segment(f.path) for f in files]
        elif self.shard_by == "row_group":
            units = []
            for f in files:
                md, first = repo.footer(f.path), 0
                for g in range(md.num_row_groups):
                    n = md.row_group(g).num_rows
                    units.append(Segment(f.path, first, first + n))
                    first += n
        else:  # rows: the concatenation of the files cut into num_shards contiguous pieces
            counts = [repo.footer(f.path).num_rows for f in files]
            total = sum(counts)
            units = []
            for i in range(self.num_shards):
                units.append(_rows_to_segments(files, counts, *contiguous_shard(total, self.num_shards, i)))
        n_units = len(units)
        if self.num_shards is not None and self.shard_by != "rows" and n_units != self.num_shards:
            raise ValueError(f"{where}: data_files {patterns} hold {n_units} {self.shard_by.replace('_', ' ')}s, but the "
                             f"recipe expects num_shards = {self.num_shards}: the repository is not laid out as the "
                             f"recipe assumes (another revision?)")
        picked = range(n_units) if self.shards is None else self.shards
        bad = [i for i in picked if i >= n_units]
        if bad:
            raise ValueError(f"{where}: shard(s) {bad} out of range: there are {n_units} shards (by {self.shard_by})")
        segs: list[Segment] = []
        for i in picked:
            segs.extend(units[i] if isinstance(units[i], list) else [units[i]])
        self.segments = [s for s in segs if s.stop is None or s.stop > s.start]
        if self.shuffle_seed is not None or self.shard_by != "file":
            self.segments = [s if s.stop is not None else Segment(s.path, 0, repo.footer(s.path).num_rows) for s in self.segments]
            self.rows = sum(s.stop - s.start for s in self.segments)
        return self

    # -- reading
    def stream(self, repo: HubRepo, resume: dict | None = None, keep: bool = False) -> Iterator[tuple[str, dict]]:
        """(text, position after it) in selection order; `resume` is a position this generator gave."""
        if self.shuffle_seed is not None:
            yield from self._shuffled(repo, int(resume["index"]) if resume else 0, keep)
            return
        seg0, row0 = (int(resume["segment"]), int(resume["row"])) if resume else (0, 0)
        for i in range(seg0, len(self.segments)):
            s = self.segments[i]
            start = max(s.start, row0) if i == seg0 else s.start
            path = repo.local(s.path)
            for row, text in _read_rows(path, self.text_field, start, s.stop, f"{repo.dataset}/{s.path}"):
                yield text, {"segment": i, "row": row + 1}
            if not keep and not any(t.path == s.path for t in self.segments[i + 1:]):
                repo.release(s.path)

    def _shuffled(self, repo: HubRepo, first: int, keep: bool) -> Iterator[tuple[str, dict]]:
        """The permutation np.random.default_rng(seed).permutation(rows) applied to the selection (what
        datasets' shuffle(seed) does), read in blocks of doubling size: a prefix (a validation set) costs
        one pass over the row groups it touches."""
        perm = np.random.default_rng(self.shuffle_seed).permutation(self.rows)
        bounds = np.cumsum([0] + [s.stop - s.start for s in self.segments])
        k, block = first, 1024
        try:
            while k < self.rows:
                idx = perm[k:k + block]
                seg = np.searchsorted(bounds, idx, side="right") - 1
                texts: dict[int, str] = {}
                for si in np.unique(seg):
                    s = self.segments[si]
                    wanted = {int(s.start + (g - bounds[si])): int(g) for g in idx[seg == si]}
                    for row, text in _read_rows_at(repo.local(s.path), self.text_field, sorted(wanted), f"{repo.dataset}/{s.path}"):
                        texts[wanted[row]] = text
                for j, g in enumerate(idx):
                    yield texts[int(g)], {"index": k + j + 1}
                k += len(idx)
                block *= 2
        finally:
            if not keep:
                for path in {s.path for s in self.segments}:
                    repo.release(path)


def format_shards(idx: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, i = [], 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}-{idx[j]}")
        i = j + 1
    return ",".join(out)


def _rows_to_segments(files: list[HubFile], counts: list[int], start: int, stop: int) -> list[Segment]:
    """Global rows [start, stop) of the files' concatenation as per-file segments."""
    out, first = [], 0
    for f, n in zip(files, counts):
        lo, hi = max(start, first), min(stop, first + n)
        if lo < hi:
            out.append(Segment(f.path, lo - first, hi - first))
        first += n
    return out


def _open_parquet(path: Path, column: str, where: str):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        raise ValueError(f"{where}: no column {column!r} (columns: {pf.schema_arrow.names}); set text_field")
    return pf


def _read_rows(path: Path, column: str, start: int, stop: int | None, where: str) -> Iterator[tuple[int, str]]:
    """(row, text) for rows [start, stop) of a parquet file, one row group at a time (None text -> "")."""
    pf = _open_parquet(path, column, where)
    md, first = pf.metadata, 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        lo, hi = first, first + n
        first = hi
        if hi <= start:
            continue
        if stop is not None and lo >= stop:
            break
        row = lo
        for batch in pf.iter_batches(batch_size=2048, row_groups=[g], columns=[column]):
            for text in batch.column(0).to_pylist():
                if row >= start and (stop is None or row < stop):
                    yield row, text if text is not None else ""
                row += 1


def _read_rows_at(path: Path, column: str, rows: list[int], where: str) -> Iterator[tuple[int, str]]:
    """(row, text) for the given sorted rows of a parquet file, reading only the row groups that hold them."""
    pf = _open_parquet(path, column, where)
    md = pf.metadata
    bounds = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
    rows_arr = np.asarray(rows, dtype=np.int64)
    groups = np.searchsorted(bounds, rows_arr, side="right") - 1
    for g in np.unique(groups):
        col = pf.read_row_group(int(g), columns=[column]).column(0)
        for r in rows_arr[groups == g]:
            text = col[int(r - bounds[g])].as_py()
            yield int(r), text if text is not None else ""


def selection_identity(sel: Selection, repo: HubRepo) -> dict:
    """What a selection reads, for the manifest: the resolved commit and every selected file's size and sha256."""
    paths = {s.path for s in sel.segments}
    return {"commit": repo.commit,
            "files": [{"path": f.path, "bytes": f.size, "sha256": repo.sha256(f)} for f in sel.files if f.path in paths]}
