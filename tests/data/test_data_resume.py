"""Streaming preparation: resumable after an interruption or a kill (same bytes as an uninterrupted
run), a lock against concurrent runs, a progress bar in tokens, and the smoke recipe's bytes."""
from __future__ import annotations

import fcntl
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cart.data import hub, prepare

prepare_module = importlib.import_module("cart.data.prepare")  # the module (cart.data.prepare is also the function)
from hubfixture import make_hub
from test_data_hub import paper_like

quiet = lambda *a, **k: None  # noqa: E731


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "stats.json"}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return make_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mirror) -> tuple[Path, dict[str, bytes]]:
    """An uninterrupted preparation of the paper-like recipe (Wikipedia's whole shards 0-39)."""
    tmp = tmp_path_factory.mktemp("ref")
    mp = pytest.MonkeyPatch()
    mp.setenv(hub.MIRROR_ENV, str(mirror))
    try:
        out = prepare(paper_like(tmp, edu=8_000), tmp / "root", workers=1, log=quiet)
    finally:
        mp.undo()
    return tmp, files_of(out)


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption(tmp_path, mirror, reference, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    monkeypatch.setattr(prepare_module, "CHECKPOINT_BYTES", 3_000)
    monkeypatch.setattr(prepare_module, "BATCH_DOCS", 7)
    real_save, calls = prepare_module._Work.save_state, []

    def save_then_fail(self, domain, state):
        real_save(self, domain, state)
        calls.append(domain)
        if domain == "wikipedia" and calls.count("wikipedia") == 3:
            raise Interrupted
    monkeypatch.setattr(prepare_module._Work, "save_state", save_then_fail)
    recipe = paper_like(tmp_path, edu=8_000)
    with pytest.raises(Interrupted):
        prepare(recipe, tmp_path / "root", workers=1, log=quiet)
    work = tmp_path / "root" / ".paperlet.work"
    assert (work / ".state" / "train.tinystories.done.json").exists() and (work / ".state" / "stream.wikipedia.json").exists()
    assert not (tmp_path / "root" / "paperlet").exists()

    monkeypatch.setattr(prepare_module._Work, "save_state", real_save)
    read: list[str] = []
    real_stream = prepare_module._stream_domain

    def counting(d, *a, **k):
        read.append(d.name)
        return real_stream(d, *a, **k)
    monkeypatch.setattr(prepare_module, "_stream_domain", counting)
    logs: list[str] = []
    out = prepare(recipe, tmp_path / "root", workers=1, log=logs.append)
    assert read == ["wikipedia", "fineweb-edu"]  # TinyStories was finished: not read again
    assert any("resuming the unfinished preparation" in line for line in logs)
    assert any(line.strip().startswith("wikipedia: resuming at {'file': '20231101.en/train-000") for line in logs)
    assert files_of(out) == reference[1]
    assert not (tmp_path / "root" / ".paperlet.work").exists()


def test_resume_after_sigkill(tmp_path, mirror, reference):
    """A preparation killed with SIGKILL mid-stream, run again: the same bytes as an uninterrupted run."""
    recipe = paper_like(tmp_path, edu=8_000)
    script = textwrap.dedent(f"""
        import importlib, time
        P = importlib.import_module("cart.data.prepare")
        P.CHECKPOINT_BYTES, P.BATCH_DOCS = 2_000, 5
        encode = P.TokenEncoder.encode
        def slow(self, batches):
            for out in encode(self, batches):
                time.sleep(0.02)
                yield out
        P.TokenEncoder.encode = slow
        P.prepare({str(recipe)!r}, {str(tmp_path / 'root')!r}, workers=1, log=lambda *a: None)
    """)
    env = {**os.environ, hub.MIRROR_ENV: str(mirror), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=Path(__file__).parent)
    state = tmp_path / "root" / ".paperlet.work" / ".state" / "stream.wikipedia.json"
    def checkpoint() -> str | None:
        return state.read_text() if state.exists() else None

    deadline = time.monotonic() + 120
    while checkpoint() is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first = checkpoint()
    assert first is not None, "the child never checkpointed Wikipedia"
    while checkpoint() == first and proc.poll() is None and time.monotonic() < deadline:  # mid-stream: past a second checkpoint
        time.sleep(0.02)
    assert checkpoint() != first, "the child never checkpointed Wikipedia a second time"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (tmp_path / "root" / "paperlet").exists()
    assert not (state.parent / "train.wikipedia.done.json").exists()  # killed inside the Wikipedia stream
    os.environ[hub.MIRROR_ENV] = str(mirror)
    try:
        out = prepare(recipe, tmp_path / "root", workers=1, log=quiet)
    finally:
        del os.environ[hub.MIRROR_ENV]
    assert files_of(out) == reference[1]


def test_source_order_bytes_do_not_depend_on_workers(tmp_path, mirror, reference, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    out = prepare(paper_like(tmp_path, edu=8_000), tmp_path / "root", workers=2, log=quiet)
    assert files_of(out) == reference[1]


def test_changed_recipe_discards_the_unfinished_work(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    recipe = paper_like(tmp_path)
    work = tmp_path / "root" / ".paperlet.work"
    (work / ".state").mkdir(parents=True)
    (work / ".state" / "_key.json").write_text('{"recipe_sha256": "another recipe"}')
    (work / "train").mkdir()
    (work / "train" / "stale.bin").write_bytes(b"old")
    logs: list[str] = []
    out = prepare(recipe, tmp_path / "root", workers=1, log=logs.append)
    assert any("discarding" in line for line in logs) and not (out / "train" / "stale.bin").exists()


def test_a_second_preparation_is_refused_while_one_runs(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".smoke.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another `cart data prepare smoke` is running"):
            prepare("smoke", tmp_path, workers=1, log=quiet)
    assert prepare("smoke", tmp_path, workers=1, log=quiet).is_dir()  # released: it runs


def test_progress_bar_counts_tokens(tmp_path, mirror, monkeypatch, capsys):
    monkeypatch.setenv(hub.MIRROR_ENV, str(mirror))
    prepare(paper_like(tmp_path), tmp_path / "root", workers=1, log=quiet, progress=True)
    err = capsys.readouterr().err
    assert "wikipedia (train tokens)" in err and "tok/s" in err and "fineweb-edu (validation tokens)" in err
    prepare("smoke", tmp_path / "root", workers=1, log=quiet, progress=False)
    assert capsys.readouterr().err == ""


def test_smoke_recipe_bytes_unchanged(tmp_path):
    """The smoke recipe's token files and tokenizer (their sha256, as recorded in the manifest) as main
    produced them before the streaming pipeline: hash-order recipes (smoke, cpu) must keep giving the
    same bytes. The manifest itself also records provenance (the pipeline code's hash, the tokenizer
    library's version), which changes with the code, so the files are pinned rather than the manifest.
    The cpu recipe needs the package registries; it was checked the same way by hand (issue-18 notes)."""
    out = prepare("smoke", tmp_path, workers=1, log=quiet)
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"]["sha256"] == "ccca37319d9b54cbc16335bde35f87b0535fe7aa7566aaaacfd27340b008dfff"
    assert {k: v["sha256"] for k, v in m["train"].items()} == {
        "stories": "72c89300461e03d6ae2577d3408d25091535226463e5b5388443e97835446f05",
        "notes": "8a04efde4a8458e15edc322bc88f129118e3a116a98f4873c224046d48f40cbc"}
    assert {k: v["sha256"] for k, v in m["val"].items()} == {
        "stories": "848ef0df723a0db4397cd904646bce7e8f3775bc57de859aed91b841de29e702",
        "notes": "7a1aedb4fa818a8e46221c65f155be1a975391bbc853090d9bec5562bd0bb6cb",
        "code": "7a8adffabaee826856d6ed1c883950a03207e5af37acbc1a12e97bfac75c8925"}
