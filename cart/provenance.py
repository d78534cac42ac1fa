"""Which code made a result: the package version with `git describe`, and content hashes of source files.

One home for the two facts every record carries (checkpoints, prepared data, study runs):
- `code_version()`: the package version plus `git describe --always --dirty` of the source tree;
- `source_hash(files)`: sha256 of the named source files' bytes, so a change that is not committed
  yet (git only says "-dirty") still tells two results apart.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path
from typing import Iterable

PACKAGE = Path(__file__).resolve().parent


def git_describe() -> str | None:
    """`git describe --always --dirty --abbrev=12` of the source tree now, or None outside a repository."""
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE.parent), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus `git describe` of the source tree when it is a repository (read once per process)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("cart")
    except PackageNotFoundError:
        v = "unknown"
    git = git_describe()
    return f"{v}+{git}" if git else v


def source_hash(files: Iterable[Path], base: Path = PACKAGE) -> str:
    """sha256 (hex) over the files' paths relative to `base` and their bytes, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(Path(p) for p in files):
        h.update(str(f.relative_to(base)).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            pass
    return h.hexdigest()


__all__ = ["code_version", "git_describe", "source_hash", "PACKAGE"]
