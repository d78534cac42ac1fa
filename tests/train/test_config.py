"""TrainConfig: presets, validation with named errors, the dict round trip, CLI resolution."""
import json

import pytest

from cart.cli import main
from cart.config import CARTConfig, DenseConfig
from cart.train import LoopSampling, TrainConfig, list_presets


def test_presets_exist_and_load():
    assert {"smoke", "cpu", "paper", "main"} <= set(list_presets())
    for name in list_presets():
        cfg = TrainConfig.from_preset(name)
        assert cfg.seq_len <= cfg.model.max_seq_len


@pytest.mark.parametrize("tier", ["smoke", "cpu", "paper"])
def test_preset_matches_its_data_recipe(tier):
    """A train tier's model vocabulary fits the data tier it names."""
    from cart.data import load_recipe
    cfg = TrainConfig.from_preset(tier)
    rec = load_recipe(tier)
    assert cfg.data.rstrip("/").endswith(rec.name)
    vocab = rec.tokenizer.get("vocab_size", {"llama2": 32000, "gpt2": 50257}.get(rec.tokenizer["kind"]))
    assert cfg.model.vocab_size == vocab


def test_main_preset_uses_cpu_data():
    cfg = TrainConfig.from_preset("main")
    assert cfg.data.rstrip("/").endswith("cpu") and cfg.model.vocab_size == TrainConfig.from_preset("cpu").model.vocab_size


def test_paper_preset_is_the_published_recipe():
    cfg = TrainConfig.from_preset("paper")
    m = cfg.model
    assert (m.d_model, m.n_prelude, m.n_loops, m.vocab_size, m.fidelity) == (1024, 6, 6, 32000, "paper")
    assert (cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.weight_decay, cfg.betas, cfg.grad_clip) == (3e-4, 3e-5, 100, 0.1, (0.9, 0.95), 1.0)
    assert cfg.tokens_per_step == 32768 and cfg.seq_len == 1024 and cfg.steps == 30500
    assert cfg.optimizer == "adamw8bit" and not cfg.activation_checkpointing


def test_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.lr, c.min_lr, c.warmup_steps, c.weight_decay, c.betas, c.grad_clip, c.dtype) == (3e-4, 3e-5, 100, 0.1, (0.9, 0.95), 1.0, "auto")


def test_unknown_preset_and_field_are_named():
    with pytest.raises(ValueError, match="unknown train preset 'nope'.*smoke"):
        TrainConfig.from_preset("nope")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stepz'\]"):
        TrainConfig.from_preset("smoke", stepz=3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['n_loopz'\]"):
        TrainConfig.from_preset("smoke", model={"n_loopz": 3})
    with pytest.raises(ValueError, match="TrainConfig.steps must be an integer, got '10'"):
        TrainConfig.from_dict({"steps": "10"})


@pytest.mark.parametrize("field,value,match", [
    ("steps", 0, "steps must be a positive integer"),
    ("lr", -1.0, "lr must be"),
    ("dtype", "fp16", "dtype must be one of"),
    ("betas", (0.9, 1.5), "betas"),
    ("nonfinite", "ignore", "nonfinite must be one of"),
    ("seq_len", 128, "seq_len=128 exceeds the model's max_seq_len=64"),
    ("min_lr", 1.0, "min_lr"),
    ("threads", -1, "threads must be an integer >= 0"),
])
def test_bad_values_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_preset("smoke", **{field: value})


def test_dict_round_trip():
    cfg = TrainConfig.from_preset("smoke", loop_sampling={"kind": "uniform", "min_loops": 1, "max_loops": 3})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg
    assert isinstance(cfg.model, CARTConfig) and isinstance(cfg.loop_sampling, LoopSampling)


def test_overrides_merge_tables_and_switch_kind():
    cfg = TrainConfig.from_preset("smoke", model={"n_loops": 3})
    assert cfg.model.n_loops == 3 and cfg.model.d_model == 64  # the rest of the preset's model kept
    dense = TrainConfig.from_preset("smoke", model={"kind": "dense", "n_layers": 3})
    assert isinstance(dense.model, DenseConfig) and dense.model.vocab_size == 512 and dense.model.n_layers == 3


def test_variable_r_needs_a_shared_core():
    with pytest.raises(ValueError, match="variable loop count needs a shared core"):
        TrainConfig.from_preset("smoke", model={"share_core": False}, loop_sampling={"kind": "uniform", "max_loops": 3})
    with pytest.raises(ValueError, match="max_loops >= min_loops"):
        LoopSampling(kind="uniform", min_loops=3, max_loops=2)
    with pytest.raises(ValueError, match="would never train"):
        TrainConfig.from_preset("smoke", model={"share_core": False}, loop_sampling={"backprop_loops": 1})
    with pytest.raises(ValueError, match="does not combine with compile"):
        TrainConfig.from_preset("smoke", compile=True, loop_sampling={"backprop_loops": 1})


def test_config_file_with_base_preset(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('preset = "smoke"\nsteps = 7\n[model]\nn_loops = 3\n')
    cfg = TrainConfig.from_preset(str(p))
    assert cfg.steps == 7 and cfg.model.n_loops == 3 and cfg.model.d_model == 64


def test_cli_resolves_preset_flags_and_model_flags(capsys):
    assert main(["train", "--preset", "smoke", "--n-loops", "4", "--lr", "1e-3", "--betas", "0.8,0.9",
                 "--loop-sampling", "uniform", "--loop-max", "5", "--print-config"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"]["n_loops"] == 4 and d["lr"] == 1e-3 and d["betas"] == [0.8, 0.9]
    assert d["loop_sampling"]["kind"] == "uniform" and d["loop_sampling"]["max_loops"] == 5


def test_cli_user_errors_exit_2(capsys):
    assert main(["train", "--preset", "nope"]) == 2
    assert "unknown train preset" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["train", "--preset", "smoke", "--seq-len", "4096"]) == 2
    assert "max_seq_len" in capsys.readouterr().err
