"""Learning curves against the n-gram floor: ratios per set and for the in-domain mix, crossings
interpolated in log tokens, and `cart report --runs`."""
import json
import math

import pytest

from cart.cli import main
from cart.experiments.analysis.curves import crossing, floor_curve


def _eval(step, a, b, floor_a=100.0, floor_b=200.0):
    return {"step": step, "event": "eval", "sets": {
        "a": {"ppl": a, "loss": math.log(a), "tokens": 100, "out_of_domain": False, "bigram_kn_ppl": floor_a},
        "b": {"ppl": b, "loss": math.log(b), "tokens": 300, "out_of_domain": False, "bigram_kn_ppl": floor_b},
        "ood": {"ppl": 999.0, "loss": math.log(999.0), "tokens": 100, "out_of_domain": True, "bigram_kn_ppl": 10.0}}}


def test_ratios_and_the_mix():
    c = floor_curve([{"step": 1, "event": "train"}, _eval(10, 150.0, 300.0), _eval(20, 90.0, 160.0)], tokens_per_step=64)
    assert [p.tokens for p in c] == [640, 1280]
    assert c[0].ratio["a"] == pytest.approx(1.5) and c[0].ratio["ood"] == pytest.approx(99.9)
    mix = math.exp((math.log(90.0) * 100 + math.log(160.0) * 300) / 400) / math.exp((math.log(100.0) * 100 + math.log(200.0) * 300) / 400)
    assert c[1].ratio["in_domain"] == pytest.approx(mix)


def test_crossing_interpolates_in_log_tokens():
    c = floor_curve([_eval(10, 150.0, 300.0), _eval(40, 75.0, 150.0)], tokens_per_step=1)  # ratio 1.5 -> 0.75 over 10 -> 40 tokens
    t = crossing(c, 0.9)
    assert t == pytest.approx(math.exp(math.log(10) + (1.5 - 0.9) / (1.5 - 0.75) * (math.log(40) - math.log(10))))
    assert crossing(c, 0.5) is None and crossing(c, 2.0) == 10.0


def test_cli_report_runs(tmp_path, capsys):
    run = tmp_path / "A"
    run.mkdir()
    cfg = {"config": {"batch_size": 4, "seq_len": 16, "grad_accum": 1, "lr": 1e-3, "steps": 40, "dtype": "fp32",
                      "model": {"kind": "cart", "d_model": 64, "n_prelude": 2, "n_loops": 2, "vocab_size": 512}}}
    (run / "train_config.json").write_text(json.dumps(cfg))
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(e) for e in (_eval(10, 150.0, 300.0), _eval(40, 75.0, 150.0))) + "\n")
    assert main(["report", "--runs", str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "floor_curves.md").read_text()
    assert "| A | d64 P2 R2, V 512 |" in md and (tmp_path / "out" / "figures" / "floor_curves.png").is_file()
    rec = json.loads((tmp_path / "out" / "floor_curves.json").read_text())[0]
    assert rec["crossings"]["0.9"] == pytest.approx(crossing(floor_curve([_eval(10, 150.0, 300.0), _eval(40, 75.0, 150.0)], 64), 0.9))
    assert main(["report", "--runs", str(tmp_path)]) == 2  # needs --out
    (tmp_path / "B").mkdir()
    assert main(["report", "--runs", str(tmp_path / "B"), "--out", str(tmp_path / "o2")]) == 2
    assert "not a run directory" in capsys.readouterr().err
