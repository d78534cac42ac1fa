import json

from cart.cli import main


def test_params_json_paper_d1024(capsys):
    rc = main(["params", "--d-model", "1024", "--n-prelude", "6", "--n-loops", "8", "--vocab-size", "32000", "--fidelity", "paper", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accounting"]["stored"] == 125_093_891
    assert out["accounting"]["effective"] == 200_343_555
    assert out["parity"]["stored"]["n_layers"] == 7
    assert out["config"]["fidelity"] == "paper"


def test_params_table_and_dense(capsys):
    assert main(["params", "--kind", "dense", "--d-model", "1024", "--n-layers", "12", "--vocab-size", "32000"]) == 0
    assert "186,934,272" in capsys.readouterr().out


def test_params_bad_flag_is_one_clear_line(capsys):
    assert main(["params", "--n-layers", "3"]) == 2
    err = capsys.readouterr().err
    assert "--n-layers" in err and "cart model" in err and "Traceback" not in err
    assert main(["params", "--d-model", "100"]) == 2
    assert "d_model" in capsys.readouterr().err


def test_params_count_unused_flag(capsys):
    base = ["params", "--d-model", "256", "--n-prelude", "6", "--n-loops", "6", "--vocab-size", "32000", "--json"]
    assert main(base + ["--lti-gate", "false"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert main(base + ["--lti-gate", "false", "--count-unused"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert counted["accounting"]["stored"] - default["accounting"]["stored"] == 256
    assert default["unused_parameters"] == "not counted" and counted["unused_parameters"].startswith("counted")
