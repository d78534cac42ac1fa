"""Document cleaning: what a researcher expects before text is tokenized.

Notable features:
- bytes are decoded as UTF-8 and, where that fails, as Windows-1252 (a superset of Latin-1 for
  printable text, the usual encoding of older corpora such as the BBC set); the count is reported;
- Project Gutenberg licence headers and footers are stripped (the "*** START OF" / "*** END OF"
  markers and the older "*END*THE SMALL PRINT" form);
- newlines normalised to \\n, byte-order marks and NULs removed, outer whitespace stripped;
  nothing else is rewritten, so byte counts stay those of the text the model sees;
- empty documents and exact duplicates (after cleaning, within one source) are dropped, and every
  drop is counted in `CleanStats`, which the manifest records.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

__all__ = ["CleanStats", "clean_documents", "decode_bytes", "normalize", "strip_gutenberg", "digest"]

_GUT_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_GUT_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_GUT_SMALL_PRINT_END = re.compile(r"^\*END\*THE SMALL PRINT!.*$", re.IGNORECASE | re.MULTILINE)
_GUT_LATE_END = re.compile(r"^\s*End of (?:the )?Project Gutenberg'?s? .*$", re.IGNORECASE | re.MULTILINE)


@dataclass
class CleanStats:
    seen: int = 0              # documents the source yielded
    kept: int = 0
    empty: int = 0             # dropped: nothing left after cleaning
    duplicate: int = 0         # dropped: same text as an earlier document of the source
    decode_fallback: int = 0   # not valid UTF-8, decoded as Windows-1252
    gutenberg_stripped: int = 0
    bytes_kept: int = 0        # UTF-8 bytes of the kept documents

    def to_dict(self) -> dict:
        return asdict(self)


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """(text, used_fallback). UTF-8 first; Windows-1252 with Latin-1 for its 5 undefined bytes."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252"), True
    except UnicodeDecodeError:
        return data.decode("latin-1"), True


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Remove a Project Gutenberg header and footer, if the text has them: (text, stripped)."""
    stripped = False
    m = _GUT_START.search(text)
    if m:
        text, stripped = text[m.end():], True
    else:
        m = _GUT_SMALL_PRINT_END.search(text)  # pre-2000s files: licence first, then the book
        if m:
            text, stripped = text[m.end():], True
    for pat in (_GUT_END, _GUT_LATE_END):
        m = pat.search(text)
        if m:
            text, stripped = text[:m.start()], True
    return text, stripped


def normalize(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\ufeff", "").replace("\x00", "").strip()


def digest(text: str) -> bytes:
    """A 16-byte content digest: the identity of a document for deduplication and splitting."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def clean_documents(docs: Iterable[str | bytes], stats: CleanStats, *, gutenberg: bool = False,
                    seen: set[bytes] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (text, digest) for each kept document, in source order; `stats` is updated in place.
    `seen`: digests of documents already kept (a resumed stream), updated in place."""
    seen_digests: set[bytes] = set() if seen is None else seen
    for doc in docs:
        stats.seen += 1
        if isinstance(doc, bytes):
            doc, fell_back = decode_bytes(doc)
            stats.decode_fallback += fell_back
        if gutenberg:
            doc, was = strip_gutenberg(doc)
            stats.gutenberg_stripped += was
        text = normalize(doc)
        if not text:
            stats.empty += 1
            continue
        raw = text.encode("utf-8")
        d = hashlib.blake2b(raw, digest_size=16).digest()
        if d in seen_digests:
            stats.duplicate += 1
            continue
        seen_digests.add(d)
        stats.kept += 1
        stats.bytes_kept += len(raw)
        yield text, d
