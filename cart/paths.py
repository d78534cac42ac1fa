"""Names that users choose, turned into paths that stay inside their root: the one place for it.

A plan's stage names, run names, recipe and domain names, source names and split names all end up
as parts of file paths. `contained_path(root, *parts)` is the primitive: it refuses an empty, `.`,
`..` or absolute component or one holding a separator, and proves that the result, with symbolic
links resolved, stays inside `root` (hub repository paths, whose components may hold `=` or `+`, go
through it). `check_name` is the stricter rule for names a user picks (letters, digits, `.`, `_`,
`-`, starting with a letter or digit), and `contained(root, *names, what=...)` applies both. All
raise a one-line ValueError naming the field and the value.

`atomic_output(path)` is how a command writes a result file: its folder is created if missing
(every command behaves the same), the content goes to a temporary name beside it and replaces the
target only when complete, so a failure (a full disk, an error half-way) leaves any file that was
there untouched.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 200  # well under the 255-byte limit of common filesystems, leaving room for suffixes


def check_name(value, what: str = "name") -> str:
    """`value` if it is one safe path component, else ValueError naming `what` and the value."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or len(value) > MAX_NAME or ".." in value:
        raise ValueError(f"{what} {value!r} is not a plain name: use letters, digits, '.', '_' and '-', starting with a "
                         f"letter or digit (at most {MAX_NAME} characters, no '/', no '..')")
    return value


def contained_path(root: str | os.PathLike, *parts: str) -> Path:
    """`root/part/part...` resolved, refused when a part is empty, '.', '..', absolute or holds a
    separator, or when the result (following symlinks) would leave `root`."""
    base = Path(root).resolve()
    for part in parts:
        if (not isinstance(part, str) or part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part
                or os.path.isabs(part)):
            raise ValueError(f"refusing path component {part!r} under {base}")
    path = base.joinpath(*parts).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"refusing {base.joinpath(*parts)}: it resolves to {path}, outside {base}")
    return path


def contained(root: str | os.PathLike, *names: str, what: str = "name") -> Path:
    """`root / names...`, each name a plain name (`check_name`) and the result, with symbolic links
    resolved, strictly inside `root`. Raises ValueError otherwise."""
    for n in names:
        check_name(n, what)
    try:
        path = contained_path(root, *names)
    except ValueError as e:
        raise ValueError(f"{what} {'/'.join(names)!r}: {e}") from None
    if path == Path(root).resolve():
        raise ValueError(f"{what} {'/'.join(names)!r} names the root itself")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (created folders included)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, expected a file path", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["check_name", "contained", "contained_path", "atomic_output", "MAX_NAME"]
