"""Evaluation of a run the real trainer wrote: the tokenizer, data and sequence length are found from
the run directory alone (train_config.json), no --tokenizer or --data needed."""
import json

import pytest

from cart.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    train = pytest.importorskip("cart.train")
    from cart.data import prepare

    root = tmp_path_factory.mktemp("trained")
    data = prepare("smoke", data_root=root / "data", log=lambda *a, **k: None)
    cfg = train.TrainConfig.from_preset("smoke", data=str(data), out_dir=str(root / "run"), steps=4, batch_size=2, seq_len=32,
                                        eval_every=0, eval_tokens=64, final_eval_tokens=64, log_every=4, ckpt_every=4,
                                        keep_checkpoints=0, peak_flops=1e11, tensorboard=False)
    train.train(cfg, resume=False)
    return root / "run"


@pytest.mark.slow  # trains 4 steps first (~15 s on 2 cores)
def test_eval_and_generate_from_the_run_dir_alone(trained_run, capsys):
    assert main(["eval", "ppl", str(trained_run), "--max-tokens", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["seq_len"] == 32 and all(r["tokens"] == 200 for r in res["perplexity"].values())
    assert main(["generate", str(trained_run), "--prompt", "Once upon a time", "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("Once upon a time")


@pytest.mark.slow  # shares the trained run above
def test_training_writes_ngram_floors_that_the_cli_reproduces(trained_run, capsys):
    summary = json.loads((trained_run / "summary.json").read_text())
    floors = json.loads((trained_run / "ngram_floors.json").read_text())
    assert floors["train_tokens"] == summary["tokens"] == 4 * 2 * 32
    for name, m in summary["final"].items():
        assert m["bigram_kn_ppl"] == floors["sets"][name]["bigram_kn_ppl"] and m["unigram_ppl"] > 1
        assert floors["sets"][name]["tokens"] == m["tokens"] == 64
    assert main(["eval", "ngram", str(trained_run), "--max-tokens", "64", "--json", "--out", str(trained_run / "again.json")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sets"] == floors["sets"] and again["step"] == 4
    assert json.loads((trained_run / "again.json").read_text())["sets"] == floors["sets"]
    (trained_run / "ngram_floors.json").unlink()
    assert main(["eval", "ngram", str(trained_run), "--max-tokens", "64"]) == 0  # a run's default output
    assert json.loads((trained_run / "ngram_floors.json").read_text())["sets"] == floors["sets"]
