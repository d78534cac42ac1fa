"""`cart eval ppl | tasks | vary-r` and `cart generate` end to end on the smoke data, and their errors."""
import json

import pytest

from cart.cli import main
from tests.eval.helpers import LAMBADA_ITEMS, MC_ITEMS, lambada_rows, mc_rows, save_checkpoint, tiny_cart, write_task


@pytest.fixture(scope="module")
def run(tmp_path_factory, smoke_data):
    """The session's smoke data (prepared by cart.data), a tiny random model for its tokenizer, and a task folder."""
    from cart.data import Manifest

    root = tmp_path_factory.mktemp("cli")
    data = smoke_data
    vocab = Manifest.load(data).vocab_size
    run_dir = root / "run"
    save_checkpoint(tiny_cart(vocab=vocab, max_seq_len=128), run_dir, data_dir=data)
    tasks = root / "tasks"
    write_task(tasks, "toy_mc", "rc_0shot", mc_rows(MC_ITEMS))
    write_task(tasks, "lambada", "bpb_0shot", lambada_rows(LAMBADA_ITEMS))
    return {"root": root, "data": data, "run": run_dir, "tasks": tasks, "vocab": vocab}


def test_ppl_every_validation_set(run, capsys):
    assert main(["eval", "ppl", str(run["run"]), "--json", "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    from cart.data import Manifest

    m = Manifest.load(run["data"])
    assert set(out["perplexity"]) == set(m.val_sets)
    for name, r in out["perplexity"].items():
        assert r["tokens"] == m.val_sets[name].tokens - 1  # the whole set
        assert r["seq_len"] == 64  # from the run's train_config.json
        assert r["bpb"] > 0 and not r["bpb_estimated"]
        assert r["out_of_domain"] == m.val_sets[name].out_of_domain
    assert main(["eval", "ppl", str(run["run"]), "--sets", "code", "--stride", "32", "--max-tokens", "500"]) == 0
    table = capsys.readouterr().out
    assert "| code |" in table and "~" in table  # estimated bpb is marked


def test_tasks_json_and_table(run, capsys, tmp_path):
    out_file = tmp_path / "res.json"
    assert main(["eval", "tasks", str(run["run"]), "--source", str(run["tasks"]), "--tasks", "toy_mc,lambada",
                 "--limit", "3", "--out", str(out_file)]) == 0
    res = json.loads(out_file.read_text())
    assert res["n-samples"]["toy_mc"]["effective"] == 3 and "perplexity" in res["results"]["lambada"]
    assert "| toy_mc | validation | 3 |" in capsys.readouterr().out
    assert main(["eval", "tasks", "--list", "--source", str(run["tasks"])]) == 0
    assert "lambada" in capsys.readouterr().out


def test_ppl_first_token_convention(run, capsys):
    """Counted by default and said so; --exclude-first-token drops the predictions after BOS from loss and ppl,
    never from bits per byte."""
    assert main(["eval", "ppl", str(run["run"]), "--json", "--sets", "code"]) == 0
    inc = json.loads(capsys.readouterr().out)
    assert main(["eval", "ppl", str(run["run"]), "--json", "--sets", "code", "--exclude-first-token"]) == 0
    exc = json.loads(capsys.readouterr().out)
    a, b = inc["perplexity"]["code"], exc["perplexity"]["code"]
    assert (inc["config"]["first_token"], exc["config"]["first_token"]) == ("included", "excluded")
    assert a["first_tokens"] == b["first_tokens"] > 0 and b["tokens"] == a["tokens"] - a["first_tokens"]
    assert b["bpb"] == a["bpb"] and b["ppl"] != a["ppl"]
    assert main(["eval", "ppl", str(run["run"]), "--sets", "code"]) == 0
    assert "first-token predictions (after BOS): included" in capsys.readouterr().out


def test_tasks_on_split_files(run, capsys, tmp_path):
    """Rows from --split-file; SciQ is scored on validation and the table says the harness scores test."""
    rows = [{"support": "", "question": f"Question {i}?", "distractor1": "a", "distractor2": "b", "distractor3": "c",
             "correct_answer": "d"} for i in range(4)]
    path = tmp_path / "sciq_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "tasks", str(run["run"]), "--tasks", "sciq", "--split-file", f"sciq:validation={path}"]) == 0
    assert "| sciq | validation (harness: test) | 4 |" in capsys.readouterr().out
    assert main(["eval", "tasks", str(run["run"]), "--tasks", "sciq", "--split-file", f"sciq:validation={path}",
                 "--split-file", f"sciq:train={path}", "--shots", "2", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["configs"]["sciq"]
    assert (cfg["num_fewshot"], cfg["fewshot_split"], cfg["fewshot_seed"]) == (2, "train", 1234)
    # what the paper plan's 5-shot stage passes: examples from the evaluated split, the item left out
    assert main(["eval", "tasks", str(run["run"]), "--tasks", "sciq", "--split-file", f"sciq:validation={path}",
                 "--shots", "2", "--fewshot-split", "validation", "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)["configs"]["sciq"]
    assert (cfg["fewshot_split"], cfg["harness_fewshot_split"], cfg["fewshot_excludes_item"]) == ("validation", "train", True)


@pytest.mark.parametrize("extra, msg", [
    (["--split-file", "sciq=x.jsonl"], "expected TASK:SPLIT=PATH"),
    (["--split-file", "nope:train=x.jsonl"], "unknown task 'nope'"),
    (["--split-file", "sciq:train=/no/such.jsonl"], "no such file"),
    (["--shots", "1", "--split-file", "sciq:validation=@VAL"], "--split-file sciq:train=PATH"),
    (["--shots", "-1"], "--shots: expected an integer >= 0"),
])
def test_task_data_errors_are_one_line(run, capsys, tmp_path, extra, msg):
    val = tmp_path / "v.jsonl"
    val.write_text(json.dumps({"support": "", "question": "q", "distractor1": "a", "distractor2": "b", "distractor3": "c",
                               "correct_answer": "d"}) + "\n")
    extra = [e.replace("@VAL", str(val)) for e in extra]
    assert main(["eval", "tasks", str(run["run"]), "--tasks", "sciq", "--source", str(run["tasks"]), *extra]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and err.count("\n") == 1


def test_vary_r_and_generate(run, capsys):
    assert main(["eval", "vary-r", str(run["run"]), "--loops", "1,3", "--max-tokens", "300", "--sets", "stories",
                 "--tasks", "lambada", "--source", str(run["tasks"]), "--adaptive-tol", "0.05", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["n_loops"] for r in res["rows"]] == [1, 3, "adaptive"]
    assert main(["generate", str(run["run"]), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "1"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Once upon a time") and "tok/s" in out.err
    # the rotated K/V cache gives the same sample and holds more bytes per token
    assert main(["generate", str(run["run"]), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "1",
                 "--mla-cache", "kv"]) == 0
    out_kv = capsys.readouterr()
    assert out_kv.out == out.out
    b = lambda err: float(err.split("cache ")[1].split(" B/token")[0])
    assert b(out_kv.err) > b(out.err)


@pytest.mark.parametrize("case", ["missing", "corrupt", "mismatch", "no-tokenizer", "bad-task", "long-prompt", "no-subcommand",
                                  "bad-r"])
def test_bad_input_is_one_clear_line(run, capsys, tmp_path, case):
    r = str(run["run"])
    if case == "missing":
        argv, msg = ["eval", "ppl", str(tmp_path / "nope")], "checkpoint not found"
    elif case == "corrupt":
        ck = save_checkpoint(tiny_cart(vocab=run["vocab"]), tmp_path / "bad", data_dir=run["data"])
        (ck / "model.safetensors").write_bytes(b"garbage")
        argv, msg = ["eval", "ppl", str(tmp_path / "bad")], "no readable checkpoint"
    elif case == "mismatch":
        save_checkpoint(tiny_cart(vocab=258), tmp_path / "other", data_dir=run["data"])
        argv, msg = ["eval", "tasks", str(tmp_path / "other"), "--source", str(run["tasks"]), "--tasks", "toy_mc"], "tokenizer mismatch"
    elif case == "no-tokenizer":
        save_checkpoint(tiny_cart(vocab=run["vocab"]), tmp_path / "bare")
        argv, msg = ["generate", str(tmp_path / "bare"), "--prompt", "hi"], "no tokenizer known"
    elif case == "bad-task":
        d = write_task(tmp_path / "t", "toy_mc", "rc_0shot", [])
        (d / "requests.jsonl.gz").unlink()
        (d / "requests.jsonl").write_text(json.dumps(mc_rows(MC_ITEMS)[0]) + "\n{broken\n")
        argv, msg = ["eval", "tasks", r, "--source", str(tmp_path / "t"), "--tasks", "toy_mc"], "line 2: malformed JSON"
    elif case == "long-prompt":
        argv, msg = ["generate", r, "--prompt", "word " * 400], "the model's context is 128"
    elif case == "no-subcommand":
        assert main(["eval"]) == 2
        return
    else:
        save_checkpoint(tiny_cart(vocab=run["vocab"], n_loops=2, share_core=False), tmp_path / "unshared", data_dir=run["data"])
        argv, msg = ["eval", "vary-r", str(tmp_path / "unshared"), "--loops", "4", "--max-tokens", "10"], "distinct core blocks"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and err.count("\n") == 1


def test_a_corrupt_newest_checkpoint_is_skipped_with_one_warning(run, capfd, tmp_path):
    """Two checkpoints, 4 KB of the newest one's weights damaged: `cart eval ppl` and `cart generate` warn
    once, naming the file, and compute with the previous checkpoint (the same numbers as asking for it)."""
    import shutil

    from cart.checkpoint import save_model

    run_dir = tmp_path / "run"
    shutil.copytree(run["run"], run_dir)
    older = run_dir / "checkpoints" / "step_00000010"
    newer = save_model(run_dir / "checkpoints" / "step_00000020", tiny_cart(vocab=run["vocab"], max_seq_len=128), {"step": 20})
    blob = bytearray((newer / "model.safetensors").read_bytes())
    blob[-8192:-4096] = bytes(4096)
    (newer / "model.safetensors").write_bytes(bytes(blob))
    capfd.readouterr()
    assert main(["eval", "ppl", str(run_dir), "--json", "--max-tokens", "300"]) == 0
    out, err = capfd.readouterr()
    assert err.count("\n") == 1 and "warning:" in err and str(newer / "model.safetensors") in err and "checksum" in err
    got = json.loads(out)
    assert got["config"]["checkpoint"] == str(older) and got["config"]["step"] == 10
    assert main(["eval", "ppl", str(older), "--json", "--max-tokens", "300", "--data", str(run["data"])]) == 0
    assert json.loads(capfd.readouterr().out)["perplexity"] == got["perplexity"]
    assert main(["generate", str(run_dir), "--prompt", "Once", "--max-new-tokens", "4", "--seed", "1"]) == 0
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and str(newer / "model.safetensors") in err
