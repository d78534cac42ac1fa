"""`prepare`: sources → cleaned documents → train/validation split → tokenizer → packed token files.

Notable features:
- deterministic: a document's place is fixed by a 64-bit hash of (recipe seed, its text), so the same
  recipe gives the same bytes on any machine and with any number of workers; the split does not
  depend on source order, and training files hold documents in hash order (a fixed shuffle:
  chronologically sorted corpora such as the speeches are not trained on in date order);
- validation sets sized in tokens, made of whole documents: the held-out candidates (the lowest
  hashes, generously over-provisioned in bytes) are excluded from tokenizer training; after
  tokenization the first of them, in hash order, fill the requested tokens and the rest go back to
  training. Out-of-domain documents that also occur in a training domain are dropped;
- streaming: three passes over each source (scan, tokenizer training, packing); tokens go to disk
  as they are produced, then one memmap pass writes the final order. Memory does not grow with the
  text: only a few integers per document (~100 bytes with the dedup digest) and the validation
  candidates (8 bytes of text per requested token) are held;
- parallel: by default one process whose tokenizer backend encodes each batch on every core (Rayon
  threads for HF tokenizers, C++ threads for SentencePiece, Rust threads for tiktoken), which was
  fastest on the 2-core machines here; `workers=N>1` runs N single-threaded tokenizer processes
  instead (bounded in flight, results in order), for many-core machines where one process's reading
  and cleaning would be the bottleneck. Any worker count gives the same bytes. Throughput in MB/s is
  reported and written to stats.json;
- `order = "source"` domains (the paper's hub corpora) are read ONCE, in source order, shard by
  shard: tokens are appended as documents arrive, a hub shard is deleted once read (bounded disk),
  reading stops at `train_tokens`, and a checkpoint every CHECKPOINT_BYTES of text (token files
  flushed, then the stream position, counts and dedup state written atomically) lets a killed
  preparation resume where it stopped, giving the same bytes as an uninterrupted run;
- validation sets defined by their own selection (`validation = {shards = "40"}`: a hub shard, a
  split, a shuffled shard, other files) are built after training, from their first documents (or
  lowest hashes) until val_tokens; documents that also occur in training are dropped and counted;
- everything is built in a persistent staging folder `<root>/.<recipe>.work/` (locked against a
  second concurrent preparation, keyed by the recipe and its sources' identities) and swapped in at
  the end; finished domains are kept across a kill. The manifest is free of times and machine paths,
  so two preparations of one recipe are byte-identical. A progress bar counts tokens (on a terminal,
  or with progress=True);
- a prepared folder (and an unfinished staging folder) is reused only when the recipe file, every
  source (by checksum), the pipeline code (`PIPELINE_FILES`, by content hash) and the tokenizer
  library's version are all those recorded; otherwise it is prepared again and the log says why.
"""
from __future__ import annotations

import collections
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from cart.data.clean import CleanStats, clean_documents
from cart.data.fetch import data_root as resolve_root
from cart.data.fetch import sha256_file
from cart.data.manifest import MANIFEST_FORMAT, Manifest, dtype_for_vocab
from cart.data.recipe import Domain, Recipe, load_recipe
from cart.data.sources import Source
from cart.data.tokenizer import LIBRARIES, Tokenizer, build_gpt2, build_llama2, library_version, load_tokenizer, train_bpe
from cart.paths import contained
from cart.provenance import source_hash

__all__ = ["prepare", "bench_tokenize", "iter_documents", "TokenEncoder"]

# Held-out candidates are over-provisioned to this many bytes per requested token: byte-level BPE,
# Llama 2 and GPT-2 all average 3-5 bytes per token on English and code, so 8 leaves a wide margin.
CANDIDATE_BYTES_PER_TOKEN = 8
BATCH_BYTES = 1 << 21     # text per tokenization task (~2 MB): large enough to amortise IPC
BATCH_DOCS = 2048
WRITE_TOKENS = 1 << 22    # tokens buffered before a write in the final pass
CHECKPOINT_BYTES = 64 << 20   # text between two checkpoints of a source-order stream
WORK_FORMAT = 1           # bump when the staging folder's bookkeeping changes


def iter_documents(domain: Domain, root: Path, stats: CleanStats | None = None) -> Iterator[tuple[str, bytes]]:
    """(text, digest) of a domain's cleaned documents in source order, up to its `max_bytes`."""
    stats = stats if stats is not None else CleanStats()
    nbytes = 0
    for text, digest in clean_documents(domain.source.documents(root), stats, gutenberg=domain.source.gutenberg):
        yield text, digest
        nbytes += len(text.encode("utf-8")) if domain.max_bytes else 0
        if domain.max_bytes and nbytes >= domain.max_bytes:
            return


def _doc_key(seed: int, digest: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, key=str(seed).encode()).digest(), "little")


# --------------------------------------------------------------------------------------------
# parallel tokenization

def _encode_docs(tok: Tokenizer, texts: list[str], dtype: str, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """BOS + ids + EOS of every text, concatenated, and each document's token count (BOS/EOS included)."""
    ids = tok.encode_batch(texts, num_threads=threads)
    lengths = np.fromiter((len(x) + 2 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    ends = np.cumsum(lengths)
    flat[ends - lengths] = tok.bos_id
    flat[ends - 1] = tok.eos_id
    for i, x in enumerate(ids):
        flat[ends[i] - lengths[i] + 1:ends[i] - 1] = x
    return flat, lengths


_WORKER_TOK: Tokenizer | None = None  # each worker process loads the tokenizer once


def _worker_init(path: str, name: str) -> None:
    global _WORKER_TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: `workers` means cores
    _WORKER_TOK = load_tokenizer(path, name=name)


def _worker_encode(texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return _encode_docs(_WORKER_TOK, texts, dtype, 1)


class TokenEncoder:
    """Tokenize batches of documents, results in submission order: in this process with the backend's
    own threads (workers=1), or with `workers` single-threaded processes."""

    def __init__(self, tok: Tokenizer, dtype: np.dtype, workers: int):
        self.tok, self.dtype, self.workers = tok, np.dtype(dtype).name, max(1, workers)
        self.bytes = self.tokens = 0
        self.seconds = 0.0
        self._pool = None
        if self.workers > 1:
            ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
            prev = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # children start with it set: no fork warning
            try:
                self._pool = ctx.Pool(self.workers, _worker_init, (str(tok.path), tok.name))
            finally:
                if prev is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = prev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()

    def encode(self, batches: Iterator[list[str]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (flat tokens, per-document lengths) for each batch, in order."""
        t0 = time.perf_counter()
        if self._pool is None:
            for b in batches:
                self.bytes += sum(len(t.encode("utf-8")) for t in b)
                out = _encode_docs(self.tok, b, self.dtype, None)
                self.tokens += len(out[0])
                yield out
        else:
            pending: collections.deque = collections.deque()
            for b in batches:
                self.bytes += sum(len(t.encode("utf-8")) for t in b)
                pending.append(self._pool.apply_async(_worker_encode, (b, self.dtype)))
                while len(pending) >= 2 * self.workers:  # bounded in flight: memory does not grow with the corpus
                    out = pending.popleft().get()
                    self.tokens += len(out[0])
                    yield out
            while pending:
                out = pending.popleft().get()
                self.tokens += len(out[0])
                yield out
        self.seconds += time.perf_counter() - t0


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= BATCH_BYTES or len(batch) >= BATCH_DOCS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------
# the pipeline

@dataclass
class _Scan:
    keys: np.ndarray          # uint64 per document, source order
    nbytes: np.ndarray        # int64 per document
    candidate: np.ndarray     # bool per document: held out from tokenizer training
    stats: CleanStats
    dropped_overlap: int = 0


@dataclass
class _Written:
    path: str
    docs: int = 0
    bytes: int = 0
    tokens: int = 0
    sha256: str = ""
    extra: dict = field(default_factory=dict)


def _scan(domain: Domain, seed: int, root: Path, train_keys: np.ndarray | None, log, val_tokens: int | None = None,
          holdout_cap: bool | None = None) -> _Scan:
    """Keys, sizes and held-out candidates of a hash-order domain. `val_tokens` (default: the domain's)
    sizes the candidates; `holdout_cap` (default: for training domains) keeps them under half the domain."""
    val_tokens = domain.val_tokens if val_tokens is None else val_tokens
    holdout_cap = (not domain.out_of_domain) if holdout_cap is None else holdout_cap
    stats = CleanStats()
    keys, nbytes = array("Q"), array("q")
    for text, digest in iter_documents(domain, root, stats):
        keys.append(_doc_key(seed, digest))
        nbytes.append(len(text.encode("utf-8")))
    k, nb = np.frombuffer(keys, dtype=np.uint64).copy(), np.frombuffer(nbytes, dtype=np.int64).copy()
    if len(k) == 0:
        raise ValueError(f"domain {domain.name!r} (source {domain.source.name!r}) has no documents after cleaning")
    eligible = np.ones(len(k), dtype=bool)
    dropped = 0
    if train_keys is not None:  # an out-of-domain set must share no document with training
        eligible = ~np.isin(k, train_keys)
        dropped = int((~eligible).sum())
    if not eligible.any():
        raise ValueError(f"out-of-domain set {domain.name!r}: all {len(k)} of its documents also occur in training")
    candidate = np.zeros(len(k), dtype=bool)
    if val_tokens:
        order = np.argsort(k, kind="stable")
        order = order[eligible[order]]
        cum = np.cumsum(nb[order])
        m = int(np.searchsorted(cum, val_tokens * CANDIDATE_BYTES_PER_TOKEN)) + 1
        if holdout_cap:
            m = min(m, len(k) // 2)  # never hold out more than half of a training domain
        candidate[order[:m]] = True
    log(f"  {domain.name}: {stats.kept:,} docs ({stats.bytes_kept / 1e6:.1f} MB) kept of {stats.seen:,}; dropped "
        f"{stats.empty} empty, {stats.duplicate} duplicate{f', {dropped} also in training' if dropped else ''}"
        f"{f'; {stats.decode_fallback} decoded as cp1252' if stats.decode_fallback else ''}"
        f"{f'; {stats.gutenberg_stripped} Gutenberg headers stripped' if stats.gutenberg_stripped else ''}")
    return _Scan(k, nb, candidate, stats, dropped)


def _build_tokenizer(rec: Recipe, stage: Path, root: Path, scans: dict[str, _Scan], log) -> Tokenizer:
    spec = rec.tokenizer
    kind = spec["kind"]
    if kind == "bpe":
        cap = spec.get("sample_bytes")

        def texts() -> Iterator[str]:  # the training split only: held-out candidates never reach the tokenizer
            for d in rec.train:
                if d.order == "source":
                    yield from _source_order_sample(d, root, cap)
                    continue
                cand, used = scans[d.name].candidate, 0
                for i, (text, _) in enumerate(iter_documents(d, root)):
                    if not cand[i]:
                        yield text
                        used += len(text)
                        if cap and used >= cap:
                            break
        t0 = time.perf_counter()
        tok = train_bpe(texts(), spec["vocab_size"], stage / "tokenizer.json", min_frequency=spec.get("min_frequency", 2))
        log(f"trained a byte-level BPE, vocab {tok.vocab_size:,}, in {time.perf_counter() - t0:.1f} s")
        return load_tokenizer(tok.path, name=f"{rec.name}-bpe{spec['vocab_size']}")
    if kind in ("llama2", "gpt2"):
        src = build_llama2(root, log) if kind == "llama2" else build_gpt2(root, log)
    else:
        src = Path(spec["path"])
        if not src.exists():
            raise FileNotFoundError(f"{rec.path}: tokenizer.path {src} not found")
    base = load_tokenizer(src)  # detects the backend (and checks the file) before copying it
    dest = stage / ("tokenizer.json" if base.kind == "hf" else "tokenizer.model" if base.kind == "sentencepiece" else src.name)
    shutil.copyfile(src, dest)
    if base.kind == "hf" and src.with_name("tokenizer_config.json").exists():
        shutil.copyfile(src.with_name("tokenizer_config.json"), stage / "tokenizer_config.json")
    return load_tokenizer(dest, name=kind if kind != "file" else src.name)


def _source_order_sample(d: Domain, root: Path, cap: int | None) -> Iterator[str]:
    """Tokenizer-training text of a source-order domain: its stream after the held-out prefix (about
    val_tokens x CANDIDATE_BYTES_PER_TOKEN bytes, when held out from the stream itself), up to `cap`
    bytes (tokenizer.sample_bytes), else up to max_bytes or train_tokens x CANDIDATE_BYTES_PER_TOKEN."""
    skip = d.val_tokens * CANDIDATE_BYTES_PER_TOKEN if d.validation is None else 0
    cap = cap or d.max_bytes or (d.train_tokens * CANDIDATE_BYTES_PER_TOKEN if d.train_tokens else None)
    skipped = used = 0
    stream = d.source.stream(root)  # read as the training pass will: hub shards freed once read
    try:
        for text, _ in clean_documents((doc for doc, _ in stream), CleanStats(), gutenberg=d.source.gutenberg):
            if skipped < skip:
                skipped += len(text.encode("utf-8"))
                continue
            yield text
            used += len(text)
            if cap and used >= cap:
                return
    finally:
        stream.close()
        d.source.release(root)


class _Sink:
    """Appends token arrays to a file, hashing as it goes. `keep=n` reopens a file of a resumed
    stream, cut back to its first n tokens (the hash is then taken from the file at the end)."""

    def __init__(self, path: Path, keep: int | None = None, dtype: np.dtype | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.h, self.tokens = path, hashlib.sha256(), 0
        if keep is None:
            self.f = open(path, "wb")
        else:
            self.f = open(path, "r+b" if path.exists() else "w+b")
            self.f.truncate(keep * np.dtype(dtype).itemsize)
            self.f.seek(0, os.SEEK_END)
            self.tokens, self.h = keep, None

    def write(self, arr: np.ndarray) -> None:
        b = arr.tobytes()
        self.f.write(b)
        if self.h is not None:
            self.h.update(b)
        self.tokens += len(arr)

    def flush(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> str:
        self.f.close()
        return self.h.hexdigest() if self.h is not None else sha256_file(self.path)


class _Bar:
    """A progress bar in tokens on stderr (tqdm), or nothing."""

    def __init__(self, enabled: bool, desc: str, total: int | None = None, initial: int = 0):
        self.t = None
        if enabled:
            from tqdm import tqdm
            self.t = tqdm(total=total, initial=initial, desc=desc, unit="tok", unit_scale=True, file=sys.stderr,
                          dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def update(self, n: int) -> None:
        if self.t is not None:
            self.t.update(n)

    def close(self) -> None:
        if self.t is not None:
            self.t.close()


def _pack_domain(d: Domain, scan: _Scan, enc: TokenEncoder, stage: Path, root: Path, dtype: np.dtype, tmpdir: Path,
                 log, bar: _Bar | None = None, train_output: bool | None = None) -> tuple[_Written | None, _Written | None]:
    """Tokenize one hash-order domain: (training file, validation file); either may be None.
    `train_output` (default: for training domains) writes the training file."""
    bar = bar or _Bar(False, "")
    train_output = (not d.out_of_domain) if train_output is None else train_output
    cand_texts: list[tuple[int, int, str]] = []   # (key, doc index, text) of held-out candidates
    train_idx = array("q")
    tmp = _Sink(tmpdir / f"{d.name}.unordered") if train_output else None
    tmp_lengths = []

    def train_texts() -> Iterator[str]:
        for i, (text, _) in enumerate(iter_documents(d, root)):
            if scan.candidate[i]:
                cand_texts.append((int(scan.keys[i]), i, text))
            elif tmp is not None:
                train_idx.append(i)
                yield text

    for flat, lengths in enc.encode(_batches(train_texts())):
        tmp.write(flat)
        tmp_lengths.append(lengths)
        bar.update(len(flat))

    val = None
    spill: list[int] = []
    if cand_texts:
        cand_texts.sort()
        sink = _Sink(stage / "val" / f"{d.name}.bin")
        val = _Written(f"val/{d.name}.bin", extra={"out_of_domain": d.out_of_domain, "source": d.source.name,
                                                   "requested_tokens": d.val_tokens})
        done = False
        flat_iter = enc.encode(_batches(t for _, _, t in cand_texts))
        j = 0
        for flat, lengths in flat_iter:
            bar.update(len(flat))
            offs = np.concatenate([[0], np.cumsum(lengths)])
            for k, n in enumerate(lengths):
                _, i, _ = cand_texts[j]
                j += 1
                if not done:
                    sink.write(flat[offs[k]:offs[k + 1]])
                    val.docs += 1
                    val.bytes += int(scan.nbytes[i])
                    done = sink.tokens >= d.val_tokens
                elif tmp is not None:  # surplus candidates go back to training
                    tmp.write(flat[offs[k]:offs[k + 1]])
                    tmp_lengths.append(np.array([n]))
                    spill.append(i)
        val.tokens, val.sha256 = sink.tokens, sink.close()
        val.extra["candidates"] = len(cand_texts)
        if val.tokens < d.val_tokens:
            log(f"  warning: validation set {d.name!r} has {val.tokens:,} tokens, fewer than the {d.val_tokens:,} requested "
                f"(the domain is small)")
    if tmp is None:
        return None, val

    tmp.close()
    idx = np.concatenate([np.frombuffer(train_idx, dtype=np.int64), np.array(spill, dtype=np.int64)])
    lengths = np.concatenate(tmp_lengths) if tmp_lengths else np.zeros(0, dtype=np.int64)
    assert len(idx) == len(lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    order = np.argsort(scan.keys[idx], kind="stable")  # the fixed shuffle: training documents in hash order
    src = np.memmap(tmpdir / f"{d.name}.unordered", dtype=dtype, mode="r") if len(idx) else np.zeros(0, dtype)
    sink = _Sink(stage / "train" / f"{d.name}.bin")
    out = _Written(f"train/{d.name}.bin")
    buf, nbuf = [], 0
    for o in order:
        if d.train_tokens and sink.tokens + nbuf >= d.train_tokens:
            break
        buf.append(src[starts[o]:starts[o] + lengths[o]])
        nbuf += int(lengths[o])
        out.docs += 1
        out.bytes += int(scan.nbytes[idx[o]])
        if nbuf >= WRITE_TOKENS:
            sink.write(np.concatenate(buf))
            buf, nbuf = [], 0
    if buf:
        sink.write(np.concatenate(buf))
    del src
    os.unlink(tmpdir / f"{d.name}.unordered")
    out.tokens, out.sha256 = sink.tokens, sink.close()
    if out.tokens == 0:
        raise ValueError(f"domain {d.name!r}: no training tokens left after holding out validation")
    return out, val


# --------------------------------------------------------------------------------------------
# source-order streams: one pass, resumable

class _Records:
    """A file of fixed-size records (dedup digests, document keys) that a resumed stream cuts back."""

    def __init__(self, path: Path, size: int, keep: int):
        self.path, self.size, self.n = path, size, keep
        self.f = open(path, "r+b" if path.exists() else "w+b")
        self.f.truncate(keep * size)
        self.f.seek(0, os.SEEK_END)

    def append(self, b: bytes) -> None:
        self.f.write(b)
        self.n += 1

    def flush(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def read(self) -> bytes:
        self.flush()
        self.f.seek(0)
        data = self.f.read(self.n * self.size)
        self.f.seek(0, os.SEEK_END)
        return data

    def close(self) -> None:
        self.f.close()


def _stream_domain(d: Domain, seed: int, enc: TokenEncoder, work: "_Work", root: Path, dtype: np.dtype, log,
                   progress: bool) -> dict:
    """Tokenize a source-order training domain in one pass: the first documents fill its held-out set
    (when it has no validation selection), the rest go to training until train_tokens. Checkpoints
    every CHECKPOINT_BYTES of text; resumes from the last one. Returns the domain's done-record."""
    name, holdout = d.name, (d.val_tokens if d.validation is None else 0)
    st = work.load_state(name)
    if st:
        log(f"  {name}: resuming at {d.source.locate(root, st['pos']) if st['pos'] else 'the start'} "
            f"({st['train']['tokens']:,} training tokens already written)")
    stats = CleanStats(**st["stats"]) if st else CleanStats()
    digests = _Records(work.meta / f"stream.{name}.digests", 16, st["digests"] if st else 0)
    keys = _Records(work.meta / f"stream.{name}.keys", 8, st["keys"] if st else 0)
    raw_digests = digests.read()
    seen = {raw_digests[i:i + 16] for i in range(0, len(raw_digests), 16)}
    train_sink = _Sink(work.dir / "train" / f"{name}.bin", keep=st["train"]["tokens"] if st else 0, dtype=dtype)
    train = _Written(f"train/{name}.bin", **(st["train"] if st else {}))
    val_sink = val = None
    if holdout:
        val_sink = _Sink(work.dir / "val" / f"{name}.bin", keep=st["val"]["tokens"] if st else 0, dtype=dtype)
        val = _Written(f"val/{name}.bin", **(st["val"] if st else {}))
    val_full = st["val_full"] if st else not holdout
    read_bytes = st["read_bytes"] if st else 0

    position = {"pos": st["pos"] if st else None}
    src = d.source.stream(root, position["pos"])

    def raw():
        for doc, pos in src:
            position["pos"] = pos
            yield doc

    # per batch: each document's (bytes, digest, position after it, cleaning counts after it), then the
    # stream's state at the batch's end. Per-document snapshots make what is recorded independent of
    # where batches (and resumptions) fall.
    pending: collections.deque = collections.deque()
    end: dict = {}  # the stream's state once it is exhausted

    def snapshot() -> dict:
        return {"pos": position["pos"], "stats": stats.to_dict(), "read_bytes": read_bytes}

    def batches() -> Iterator[list[str]]:
        nonlocal read_bytes
        texts, docs, size = [], [], 0
        for text, digest in clean_documents(raw(), stats, gutenberg=d.source.gutenberg, seen=seen):
            nb = len(text.encode("utf-8"))
            read_bytes += nb
            texts.append(text)
            docs.append((nb, digest, snapshot()))
            size += len(text)
            capped = bool(d.max_bytes and read_bytes >= d.max_bytes)
            if size >= BATCH_BYTES or len(texts) >= BATCH_DOCS or capped:
                pending.append((docs, docs[-1][2]))
                yield texts
                texts, docs, size = [], [], 0
            if capped:
                end["state"] = snapshot()
                return
        if texts:
            pending.append((docs, snapshot()))  # the end of the stream: trailing dropped documents counted
            yield texts
        end["state"] = snapshot()

    def checkpoint(stream_state: dict) -> None:
        for f in (train_sink, val_sink, digests, keys):
            if f is not None:
                f.flush()
        work.save_state(name, {**stream_state, "val_full": val_full, "digests": digests.n, "keys": keys.n,
                               "train": {"docs": train.docs, "bytes": train.bytes, "tokens": train_sink.tokens},
                               "val": {"docs": val.docs, "bytes": val.bytes, "tokens": val_sink.tokens} if val else None})

    bar = _Bar(progress, f"{name} (train tokens)", total=d.train_tokens, initial=train_sink.tokens)
    last = {"pos": st["pos"], "stats": st["stats"], "read_bytes": st["read_bytes"]} if st else snapshot()
    finished, since = bool(d.train_tokens and train_sink.tokens >= d.train_tokens), 0
    gen = enc.encode(batches())
    try:
        for flat, lengths in (() if finished else gen):
            docs, stream_state = pending.popleft()
            offs = np.concatenate([[0], np.cumsum(lengths)])
            before = train_sink.tokens
            for j, (nb, digest, snap) in enumerate(docs):
                toks = flat[offs[j]:offs[j + 1]]
                if not val_full:
                    val_sink.write(toks)
                    val.docs += 1
                    val.bytes += nb
                    val_full = val_sink.tokens >= holdout
                else:
                    train_sink.write(toks)
                    train.docs += 1
                    train.bytes += nb
                    keys.append(_doc_key(seed, digest).to_bytes(8, "little"))
                digests.append(digest)
                last = snap
                if d.train_tokens and train_sink.tokens >= d.train_tokens:
                    finished = True
                    break
            bar.update(train_sink.tokens - before)
            since += sum(nb for nb, _, _ in docs)
            if finished:
                break
            last = stream_state
            if since >= CHECKPOINT_BYTES:
                checkpoint(stream_state)
                since = 0
        if not finished and "state" in end:
            last = end["state"]  # read to the end: documents dropped after the last kept one count too
    finally:
        gen.close()
        bar.close()
    d.source.release(root)
    stats, until = CleanStats(**last["stats"]), last["pos"]
    keys.flush()
    digests.close()
    train.tokens, train.sha256 = train_sink.tokens, train_sink.close()
    if train.tokens == 0:
        raise ValueError(f"domain {name!r}: no training tokens left after holding out validation")
    train.extra["until"] = d.source.locate(root, until) if until else None
    if val is not None:
        val.tokens, val.sha256 = val_sink.tokens, val_sink.close()
        val.extra = {"out_of_domain": False, "source": d.source.name, "requested_tokens": d.val_tokens,
                     "definition": f"the first documents of the stream until {d.val_tokens:,} tokens; training starts after them"}
        if val.tokens < d.val_tokens:
            log(f"  warning: validation set {name!r} has {val.tokens:,} tokens, fewer than the {d.val_tokens:,} requested")
    keys.close()
    log(f"  {name}: {stats.kept:,} docs ({stats.bytes_kept / 1e6:.1f} MB) kept of {stats.seen:,} read; dropped "
        f"{stats.empty} empty, {stats.duplicate} duplicate; stopped at {train.extra['until']}")
    return {"train": _record(train), "val": _record(val) if val else None,
            "cleaning": {**stats.to_dict(), "dropped_in_training": 0}}


def _record(w: _Written) -> dict:
    return {"path": w.path, "docs": w.docs, "bytes": w.bytes, "tokens": w.tokens, "sha256": w.sha256, "extra": w.extra}


def _written(r: dict | None) -> _Written | None:
    return None if r is None else _Written(r["path"], r["docs"], r["bytes"], r["tokens"], r["sha256"], dict(r["extra"]))


def _build_validation(name: str, source: Source, order: str, val_tokens: int, ood: bool, seed: int, train_keys: np.ndarray,
                      enc: TokenEncoder, stage: Path, root: Path, dtype: np.dtype, tmpdir: Path, log, progress: bool) -> dict:
    """A validation set from its own selection: its first documents (order "source") or lowest-hash
    documents ("hash") until val_tokens, leaving out documents that also occur in training."""
    vd = Domain(name, source, True, val_tokens, order=order)
    bar = _Bar(progress, f"{name} (validation tokens)", total=val_tokens)
    try:
        if order == "hash":
            scan = _scan(vd, seed, root, train_keys, log, holdout_cap=False)
            _, va = _pack_domain(vd, scan, enc, stage, root, dtype, tmpdir, log, bar, train_output=False)
            stats, dropped = scan.stats, scan.dropped_overlap
        else:
            # per document: its bytes and the counts after it, so what is recorded stops at the last
            # document used, wherever the batches fall
            live, dropped, docs, end = CleanStats(), 0, collections.deque(), {}

            def texts() -> Iterator[str]:
                nonlocal dropped
                for text, digest in iter_documents(vd, root, live):
                    k = np.uint64(_doc_key(seed, digest))
                    i = int(np.searchsorted(train_keys, k))
                    if i < len(train_keys) and train_keys[i] == k:
                        dropped += 1
                        continue
                    docs.append((len(text.encode("utf-8")), live.to_dict(), dropped))
                    yield text
                end["state"] = (live.to_dict(), dropped)

            sink = _Sink(stage / "val" / f"{name}.bin")
            va = _Written(f"val/{name}.bin", extra={"out_of_domain": ood, "source": source.name, "requested_tokens": val_tokens})
            gen = enc.encode(_batches(texts()))
            last = (CleanStats().to_dict(), 0)
            try:
                for flat, lengths in gen:
                    offs = np.concatenate([[0], np.cumsum(lengths)])
                    for j in range(len(lengths)):
                        sink.write(flat[offs[j]:offs[j + 1]])
                        nb, counts, dropped_then = docs.popleft()
                        va.docs += 1
                        va.bytes += nb
                        last = (counts, dropped_then)
                        if sink.tokens >= val_tokens:
                            break
                    bar.update(int(offs[j + 1]))
                    if sink.tokens >= val_tokens:
                        break
                else:
                    last = end.get("state", last)  # read to the end: every document counts
            finally:
                gen.close()
            stats, dropped = CleanStats(**last[0]), last[1]
            va.tokens, va.sha256 = sink.tokens, sink.close()
            if va.tokens == 0:
                raise ValueError(f"validation set {name!r} ({source.describe(root)}) has no documents outside training")
            if va.tokens < val_tokens:
                log(f"  warning: validation set {name!r} has {va.tokens:,} tokens, fewer than the {val_tokens:,} requested")
    finally:
        bar.close()
        source.release(root)
    va.extra["out_of_domain"] = ood
    which = "first documents" if order == "source" else "lowest-hash documents"
    va.extra["definition"] = (f"the {which} of {source.describe(root)} until {val_tokens:,} tokens"
                              f"{f'; {dropped} also in training dropped' if dropped else ''}")
    log(f"  packed validation {name}: {va.tokens:,} tokens / {va.docs:,} docs [{va.extra['definition']}]")
    return {"val": _record(va), "cleaning": {**stats.to_dict(), "dropped_in_training": dropped}}


# --------------------------------------------------------------------------------------------
# the staging folder

def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Work:
    """`<root>/.<recipe>.work/`: the prepared folder under construction, kept across a kill.

    `.state/` inside it holds the bookkeeping (removed before the folder is swapped in): _key.json
    (what is being built: the recipe's sha256 and its sources' identities; a different key discards
    the folder), <part>.done.json per finished part (_tokenizer, train.<domain>, validation.<domain>,
    ood.<name>), stream.<domain>.json checkpoints of a stream in progress and its digests/keys. A lock file beside it refuses a second concurrent preparation."""

    def __init__(self, root: Path, name: str, key: dict, force: bool, log):
        self.dir, self.meta = root / f".{name}.work", root / f".{name}.work" / ".state"
        self._lock = open(root / f".{name}.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise ValueError(f"another `cart data prepare {name}` is running on {root} (it holds {root / f'.{name}.lock'})") from None
        key = json.loads(json.dumps(key))
        key_path = self.meta / "_key.json"
        same = not force and key_path.exists() and json.loads(key_path.read_text()) == key
        if same:
            log(f"resuming the unfinished preparation in {self.dir}")
        else:
            if self.dir.exists():
                if not force:
                    log(f"discarding {self.dir}: an unfinished preparation of another version of the recipe or its sources")
                shutil.rmtree(self.dir)
            self.meta.mkdir(parents=True)
            _atomic_write(key_path, json.dumps(key, indent=1, sort_keys=True))

    def _json(self, name: str) -> dict | None:
        p = self.meta / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def done(self, part: str) -> dict | None:
        return self._json(f"{part}.done")

    def mark_done(self, part: str, record: dict) -> None:
        _atomic_write(self.meta / f"{part}.done.json", json.dumps(record))

    def load_state(self, domain: str) -> dict | None:
        return self._json(f"stream.{domain}")

    def save_state(self, domain: str, state: dict) -> None:
        _atomic_write(self.meta / f"stream.{domain}.json", json.dumps(state))

    def finish(self, root: Path, out: Path) -> None:
        """Swap the finished folder in: readers never see a half-written preparation."""
        shutil.rmtree(self.meta)
        if out.exists():
            old = root / f".{out.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            self.dir.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.dir.rename(out)

    def close(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()


# --------------------------------------------------------------------------------------------
# the pipeline

def _source_identities(rec: Recipe, root: Path) -> dict:
    out = {}
    for d in rec.domains:
        out[d.name] = {"source": d.source.name, **d.source.identity(root)}
        if d.validation is not None:
            out[d.name]["validation"] = {"source": d.validation.name, **d.validation.identity(root)}
    return out


# The modules whose code turns a recipe's sources into token bytes (readers, hub selections,
# cleaning, tokenizers, packing): their content hash is recorded in the manifest, so a prepared folder
# made by other code is prepared again rather than reused.
PIPELINE_FILES = ("clean.py", "hub.py", "prepare.py", "sources.py", "synthetic.py", "tokenizer.py")


def pipeline_code() -> dict:
    """{"sha256": hash of the pipeline's source files, "files": their names} for the manifest."""
    here = Path(__file__).resolve().parent
    return {"sha256": source_hash([here / f for f in PIPELINE_FILES], base=here), "files": list(PIPELINE_FILES)}


def _stale_reason(out: Path, rec: Recipe, root: Path) -> str | None:
    """Why the prepared folder `out` cannot be reused (None: it can). Current means: the same recipe
    file, the same sources (by checksum), the same pipeline code, the same tokenizer library version,
    and every file present at its recorded size."""
    try:
        m = Manifest.load(out)
    except FileNotFoundError:
        return "not prepared yet"
    except ValueError as e:
        return f"unreadable manifest ({e})"
    if m.data["recipe"].get("sha256") != rec.sha256:
        return "the recipe changed"
    if m.data.get("code", {}).get("sha256") != pipeline_code()["sha256"]:
        return "the data-pipeline code changed"
    if m.data["tokenizer"].get("library") != library_version(m.data["tokenizer"].get("kind", "")):
        return f"the tokenizer library changed (prepared with {m.data['tokenizer'].get('library')!r})"
    try:
        if m.data.get("sources") != json.loads(json.dumps(_source_identities(rec, root))):
            return "a source changed"
    except (FileNotFoundError, ValueError, KeyError, OSError):  # a source not fetched / not reachable
        return "a source is not fetched"
    files = [(d.path, d.tokens) for d in m.train.values()] + [(v.path, v.tokens) for v in m.val_sets.values()]
    if not m.tokenizer_path.exists() or not all(p.exists() and p.stat().st_size == n * m.dtype.itemsize for p, n in files):
        return "a prepared file is missing or has the wrong size"
    return None


def prepare(recipe: str | os.PathLike, data_root: str | os.PathLike | None = None, workers: int | None = None,
            force: bool = False, log=print, progress: bool | None = None) -> Path:
    """Prepare a recipe (a preset name or a .toml path) under the data root; return the prepared folder.

    progress: a progress bar in tokens on stderr (default: when stderr is a terminal). A preparation
    that was killed resumes where it stopped when run again (`force=True` starts afresh)."""
    rec = load_recipe(recipe)
    root = resolve_root(data_root)
    out = contained(root, rec.name, what="recipe name")
    why = "--force" if force else _stale_reason(out, rec, root)
    if why is None:
        log(f"{out} is up to date (recipe {rec.name}, sha256 {rec.sha256[:12]}…)")
        return out
    if out.exists():
        log(f"preparing {out} again: {why}")
    workers = workers or 1
    progress = sys.stderr.isatty() if progress is None else progress
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    log(f"preparing recipe {rec.name!r} into {out}")
    for d in rec.domains:  # every download and hub selection first: a missing source fails before any work is done
        d.source.ready(root, log)
        if d.validation is not None:
            d.validation.ready(root, log)
    identities = _source_identities(rec, root)
    timings["fetch_s"] = time.perf_counter() - t_start

    root.mkdir(parents=True, exist_ok=True)
    # an unfinished staging folder is resumed only by the same recipe, sources, pipeline code and libraries
    work = _Work(root, rec.name, {"format": WORK_FORMAT, "manifest": MANIFEST_FORMAT, "recipe_sha256": rec.sha256,
                                  "sources": identities, "code": pipeline_code()["sha256"],
                                  "libraries": {k: library_version(k) for k in LIBRARIES}}, force, log)
    try:
        t0 = time.perf_counter()
        hashed = [d for d in rec.train if d.order == "hash"]
        if hashed:
            log("scanning sources")
        scans: dict[str, _Scan] = {}
        for d in hashed:
            scans[d.name] = _scan(d, rec.seed, root, None, log, val_tokens=0 if d.validation is not None else None)
        timings["scan_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        tok_rec = work.done("_tokenizer")
        if tok_rec is None:
            tok = _build_tokenizer(rec, work.dir, root, scans, log)
            work.mark_done("_tokenizer", {"file": tok.path.name, "name": tok.name})
        else:
            tok = load_tokenizer(work.dir / tok_rec["file"], name=tok_rec["name"])
        timings["tokenizer_s"] = time.perf_counter() - t0
        dtype = dtype_for_vocab(tok.vocab_size)

        t0 = time.perf_counter()
        parts: dict[str, dict] = {}  # done-records {"train", "val", "cleaning"} by part: train.<d>, validation.<d>, ood.<d>
        with TokenEncoder(tok, dtype, workers) as enc, tempfile.TemporaryDirectory(dir=work.meta) as tmp:
            for d in rec.train:
                rec_d = work.done(f"train.{d.name}")
                if rec_d is None:
                    if d.order == "hash":
                        bar = _Bar(progress, f"{d.name} (tokens)")
                        try:
                            tr, va = _pack_domain(d, scans[d.name], enc, work.dir, root, dtype, Path(tmp), log, bar)
                        finally:
                            bar.close()
                        d.source.release(root)
                        rec_d = {"train": _record(tr), "val": _record(va) if va else None}
                    else:
                        rec_d = _stream_domain(d, rec.seed, enc, work, root, dtype, log, progress)
                    work.mark_done(f"train.{d.name}", rec_d)
                parts[d.name] = rec_d
                tr, va = _written(rec_d["train"]), _written(rec_d["val"])
                log(f"  packed {d.name}: " + ", ".join(f"{k} {w.tokens:,} tokens / {w.docs:,} docs" for k, w in (("train", tr), ("val", va)) if w))

            # every training document's key: validation sets and out-of-domain sets must not repeat them
            keys = [s.keys for s in scans.values()]
            keys += [np.fromfile(work.meta / f"stream.{d.name}.keys", dtype="<u8").astype(np.uint64) for d in rec.train if d.order == "source"]
            train_keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.uint64)

            for d in rec.train:
                if d.validation is not None:
                    part = f"validation.{d.name}"
                    rec_v = work.done(part)
                    if rec_v is None:
                        rec_v = _build_validation(d.name, d.validation, d.order, d.val_tokens, False, rec.seed, train_keys,
                                                  enc, work.dir, root, dtype, Path(tmp), log, progress)
                        work.mark_done(part, rec_v)
                    parts[part] = rec_v
            for d in rec.ood:
                rec_o = work.done(f"ood.{d.name}")
                if rec_o is None:
                    if d.order == "hash":
                        scans[d.name] = scan = _scan(d, rec.seed, root, train_keys, log)
                        bar = _Bar(progress, f"{d.name} (tokens)")
                        try:
                            _, va = _pack_domain(d, scan, enc, work.dir, root, dtype, Path(tmp), log, bar)
                        finally:
                            bar.close()
                        d.source.release(root)
                        rec_o = {"train": None, "val": _record(va), "cleaning": {**scan.stats.to_dict(), "dropped_in_training": scan.dropped_overlap}}
                        log(f"  packed {d.name}: val {va.tokens:,} tokens / {va.docs:,} docs")
                    else:
                        rec_o = _build_validation(d.name, d.source, "source", d.val_tokens, True, rec.seed, train_keys,
                                                  enc, work.dir, root, dtype, Path(tmp), log, progress)
                    work.mark_done(f"ood.{d.name}", rec_o)
                parts[d.name] = rec_o
        timings["tokenize_pack_s"] = time.perf_counter() - t0
        mb_s = enc.bytes / 1e6 / max(enc.seconds, 1e-9)
        log(f"tokenized {enc.bytes / 1e6:.1f} MB into {enc.tokens:,} tokens in {enc.seconds:.1f} s "
            f"({mb_s:.2f} MB/s, {workers} worker{'s' if workers > 1 else ''}); tokenize+pack {timings['tokenize_pack_s']:.1f} s")

        manifest = {
            "format": MANIFEST_FORMAT,
            "recipe": {"name": rec.name, "description": rec.description, "sha256": rec.sha256, "seed": rec.seed, "spec": rec.raw},
            "tokenizer": tok.info(),
            "dtype": dtype.name,
            "interleave": {"cycle": rec.cycle},
            "code": pipeline_code(),
            "sources": identities,
            "cleaning": {d.name: _cleaning(d, scans, parts) for d in rec.domains},
            "train": {d.name: _train_entry(parts[d.name]["train"]) for d in rec.train},
            "val": {d.name: _val_entry(r) for d in rec.domains
                    if (r := (parts[f"validation.{d.name}"] if d.validation is not None else parts[d.name])["val"])},
        }
        (work.dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        timings["total_s"] = time.perf_counter() - t_start
        stats = {"timings": timings, "tokenize": {"bytes": enc.bytes, "tokens": enc.tokens, "seconds": enc.seconds,
                                                  "mb_per_s": mb_s, "workers": workers}}
        (work.dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        work.finish(root, out)
    finally:
        work.close()
    log(f"done in {timings['total_s']:.1f} s: {out}")
    return out


def _cleaning(d: Domain, scans: dict[str, _Scan], parts: dict[str, dict]) -> dict:
    if d.name in scans:
        out = {**scans[d.name].stats.to_dict(), "dropped_in_training": scans[d.name].dropped_overlap}
    else:
        out = dict(parts[d.name]["cleaning"])
    if d.validation is not None:
        out["validation"] = parts[f"validation.{d.name}"]["cleaning"]
    return out


def _train_entry(r: dict) -> dict:
    entry = {k: r[k] for k in ("path", "docs", "bytes", "tokens", "sha256")}
    if "until" in r["extra"]:
        entry["until"] = r["extra"]["until"]
    return entry


def _val_entry(r: dict) -> dict:
    return {**{k: r[k] for k in ("path", "docs", "bytes", "tokens", "sha256")}, **r["extra"]}


def bench_tokenize(recipe: str = "cpu", data_root: str | os.PathLike | None = None, workers: int | None = None,
                   max_mb: float | None = None, log=lambda *a, **k: None) -> dict:
    """Tokenize-and-pack throughput on a recipe's training text with its prepared tokenizer.

    Prepares the recipe first if needed (a no-op when it is up to date). Returns
    {"mb_per_s", "tokens_per_s", "bytes", "tokens", "seconds", "workers", "tokenizer"}.
    """
    rec = load_recipe(recipe)
    root = resolve_root(data_root)
    m = Manifest.load(prepare(recipe, root, workers=workers, log=log))
    tok = m.load_tokenizer()
    workers = workers or 1
    cap = int(max_mb * 1e6) if max_mb else None

    def texts() -> Iterator[str]:
        used = 0
        for d in rec.train:
            for text, _ in iter_documents(d, root):
                yield text
                used += len(text)
                if cap and used >= cap:
                    return

    with TokenEncoder(tok, m.dtype, workers) as enc, tempfile.TemporaryDirectory() as tmp:
        sink = _Sink(Path(tmp) / "bench.bin")
        for flat, _ in enc.encode(_batches(texts())):
            sink.write(flat)
        sink.close()
    return {"mb_per_s": enc.bytes / 1e6 / enc.seconds, "tokens_per_s": enc.tokens / enc.seconds, "bytes": enc.bytes,
            "tokens": enc.tokens, "seconds": enc.seconds, "workers": workers, "tokenizer": tok.name}
