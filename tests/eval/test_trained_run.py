"""Evaluation of a run the real trainer wrote: the tokenizer, data and sequence length are found from
the run directory alone (train_config.json), no --tokenizer or --data needed."""
import json
import shutil

import pytest

from cart.cli import main
from tests.support import SMOKE_TRAIN


@pytest.fixture
def trained_run(smoke_run, tmp_path):
    """A copy of the session's trained smoke run (these tests write into it)."""
    return shutil.copytree(smoke_run, tmp_path / "run")


def test_eval_and_generate_from_the_run_dir_alone(trained_run, capsys):
    assert main(["eval", "ppl", str(trained_run), "--max-tokens", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["seq_len"] == SMOKE_TRAIN["seq_len"] and all(r["tokens"] == 200 for r in res["perplexity"].values())
    assert main(["generate", str(trained_run), "--prompt", "Once upon a time", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("Once upon a time")


def test_training_writes_ngram_floors_that_the_cli_reproduces(trained_run, capsys):
    steps, n = SMOKE_TRAIN["steps"], SMOKE_TRAIN["final_eval_tokens"]
    summary = json.loads((trained_run / "summary.json").read_text())
    floors = json.loads((trained_run / "ngram_floors.json").read_text())
    assert floors["train_tokens"] == summary["tokens"] == steps * SMOKE_TRAIN["batch_size"] * SMOKE_TRAIN["seq_len"]
    for name, m in summary["final"].items():
        assert m["bigram_kn_ppl"] == floors["sets"][name]["bigram_kn_ppl"] and m["unigram_ppl"] > 1
        assert floors["sets"][name]["tokens"] == m["tokens"] == n
    assert main(["eval", "ngram", str(trained_run), "--max-tokens", str(n), "--json", "--out", str(trained_run / "again.json")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sets"] == floors["sets"] and again["step"] == steps
    assert json.loads((trained_run / "again.json").read_text())["sets"] == floors["sets"]
    (trained_run / "ngram_floors.json").unlink()
    assert main(["eval", "ngram", str(trained_run), "--max-tokens", str(n)]) == 0  # a run's default output
    assert json.loads((trained_run / "ngram_floors.json").read_text())["sets"] == floors["sets"]
