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
- every file is built in a staging folder and swapped in at the end; the manifest is free of times
  and machine paths, so two preparations of one recipe are byte-identical; a prepared folder whose
  recipe is unchanged is reused.
"""
from __future__ import annotations

import collections
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
from cart.data.manifest import MANIFEST_FORMAT, Manifest, dtype_for_vocab
from cart.data.recipe import Domain, Recipe, load_recipe
from cart.data.tokenizer import Tokenizer, build_gpt2, build_llama2, load_tokenizer, train_bpe

__all__ = ["prepare", "bench_tokenize", "iter_documents", "TokenEncoder"]

# Held-out candidates are over-provisioned to this many bytes per requested token: byte-level BPE,
# Llama 2 and GPT-2 all average 3-5 bytes per token on English and code, so 8 leaves a wide margin.
CANDIDATE_BYTES_PER_TOKEN = 8
BATCH_BYTES = 1 << 21     # text per tokenization task (~2 MB): large enough to amortise IPC
BATCH_DOCS = 2048
WRITE_TOKENS = 1 << 22    # tokens buffered before a write in the final pass


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


def _scan(domain: Domain, seed: int, root: Path, train_keys: np.ndarray | None, log) -> _Scan:
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
    if domain.val_tokens:
        order = np.argsort(k, kind="stable")
        order = order[eligible[order]]
        cum = np.cumsum(nb[order])
        m = int(np.searchsorted(cum, domain.val_tokens * CANDIDATE_BYTES_PER_TOKEN)) + 1
        if not domain.out_of_domain:
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


class _Sink:
    """Appends token arrays to a file, hashing as it goes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f, self.h, self.tokens = open(path, "wb"), hashlib.sha256(), 0

    def write(self, arr: np.ndarray) -> None:
        b = arr.tobytes()
        self.f.write(b)
        self.h.update(b)
        self.tokens += len(arr)

    def close(self) -> str:
        self.f.close()
        return self.h.hexdigest()


def _pack_domain(d: Domain, scan: _Scan, enc: TokenEncoder, stage: Path, root: Path, dtype: np.dtype, tmpdir: Path,
                 log) -> tuple[_Written | None, _Written | None]:
    """Tokenize one domain: (training file, validation file); either may be None."""
    cand_texts: list[tuple[int, int, str]] = []   # (key, doc index, text) of held-out candidates
    train_idx = array("q")
    tmp = _Sink(tmpdir / f"{d.name}.unordered") if not d.out_of_domain else None
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


def _source_identities(rec: Recipe, root: Path) -> dict:
    return {d.name: {"source": d.source.name, **d.source.identity(root)} for d in rec.domains}


def _up_to_date(out: Path, rec: Recipe, root: Path) -> bool:
    """Same recipe file, same source files (by checksum), and every token file present at its size."""
    try:
        m = Manifest.load(out)
        if m.data["recipe"].get("sha256") != rec.sha256 or m.data.get("sources") != _source_identities(rec, root):
            return False
    except (FileNotFoundError, ValueError, KeyError):  # not prepared, or a source not fetched
        return False
    files = [(d.path, d.tokens) for d in m.train.values()] + [(v.path, v.tokens) for v in m.val_sets.values()]
    return m.tokenizer_path.exists() and all(p.exists() and p.stat().st_size == n * m.dtype.itemsize for p, n in files)


def prepare(recipe: str | os.PathLike, data_root: str | os.PathLike | None = None, workers: int | None = None,
            force: bool = False, log=print) -> Path:
    """Prepare a recipe (a preset name or a .toml path) under the data root; return the prepared folder."""
    rec = load_recipe(recipe)
    root = resolve_root(data_root)
    out = root / rec.name
    if not force and _up_to_date(out, rec, root):
        log(f"{out} is up to date (recipe {rec.name}, sha256 {rec.sha256[:12]}…)")
        return out
    workers = workers or 1
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    log(f"preparing recipe {rec.name!r} into {out}")
    for d in rec.domains:  # every download first: a missing source fails before any work is done
        d.source.fetch(root, log)
    timings["fetch_s"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    log("scanning sources")
    scans: dict[str, _Scan] = {}
    for d in rec.train:
        scans[d.name] = _scan(d, rec.seed, root, None, log)
    train_keys = np.unique(np.concatenate([s.keys for s in scans.values()]))
    for d in rec.ood:
        scans[d.name] = _scan(d, rec.seed, root, train_keys, log)
    timings["scan_s"] = time.perf_counter() - t0

    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{rec.name}.partial-", dir=root))
    try:
        t0 = time.perf_counter()
        tok = _build_tokenizer(rec, stage, root, scans, log)
        timings["tokenizer_s"] = time.perf_counter() - t0
        dtype = dtype_for_vocab(tok.vocab_size)

        t0 = time.perf_counter()
        train: dict[str, _Written] = {}
        val: dict[str, _Written] = {}
        with TokenEncoder(tok, dtype, workers) as enc, tempfile.TemporaryDirectory(dir=stage) as tmp:
            for d in rec.domains:
                tr, va = _pack_domain(d, scans[d.name], enc, stage, root, dtype, Path(tmp), log)
                if tr:
                    train[d.name] = tr
                if va:
                    val[d.name] = va
                log(f"  packed {d.name}: " + ", ".join(f"{k} {w.tokens:,} tokens / {w.docs:,} docs" for k, w in (("train", tr), ("val", va)) if w))
        timings["tokenize_pack_s"] = time.perf_counter() - t0
        mb_s = enc.bytes / 1e6 / max(enc.seconds, 1e-9)
        log(f"tokenized {enc.bytes / 1e6:.1f} MB into {enc.tokens:,} tokens in {enc.seconds:.1f} s "
            f"({mb_s:.2f} MB/s, {workers} worker{'s' if workers > 1 else ''}); tokenize+pack {timings['tokenize_pack_s']:.1f} s")

        manifest = {
            "format": MANIFEST_FORMAT,
            "recipe": {"name": rec.name, "description": rec.description, "sha256": rec.sha256, "seed": rec.seed, "spec": rec.raw},
            "tokenizer": tok.info(),
            "dtype": dtype.name,
            "interleave": {"chunk_len": rec.chunk_len, "cycle": rec.cycle},
            "sources": _source_identities(rec, root),
            "cleaning": {d.name: {**scans[d.name].stats.to_dict(), "dropped_in_training": scans[d.name].dropped_overlap}
                         for d in rec.domains},
            "train": {k: {"path": w.path, "docs": w.docs, "bytes": w.bytes, "tokens": w.tokens, "sha256": w.sha256} for k, w in train.items()},
            "val": {k: {"path": w.path, "docs": w.docs, "bytes": w.bytes, "tokens": w.tokens, "sha256": w.sha256, **w.extra}
                    for k, w in val.items()},
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        timings["total_s"] = time.perf_counter() - t_start
        stats = {"timings": timings, "tokenize": {"bytes": enc.bytes, "tokens": enc.tokens, "seconds": enc.seconds,
                                                  "mb_per_s": mb_s, "workers": workers}}
        (stage / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        # swap the finished folder in: readers never see a half-written preparation
        if out.exists():
            old = root / f".{rec.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(f"done in {timings['total_s']:.1f} s: {out}")
    return out


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
