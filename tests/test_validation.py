"""cart.validation: one typed mechanism checks every config dataclass, and the CLI flags come from the same fields."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytest

from cart.cli.common import add_config_flags, flag_values
from cart.config import CARTConfig, DenseConfig
from cart.train.config import LoopSampling, TrainConfig
from cart.validation import (REQUIRED, Check, ConfigError, config_fields, each, from_dict, interval, multiple_of, non_negative,
                             nonempty, option, positive, validate)


@dataclass(kw_only=True)
class Inner:
    depth: int = option(1, "how deep", positive)
    rate: float = option(0.5, "a rate", interval("(0, 1]"))


@dataclass(frozen=True, kw_only=True)
class Toy:
    name: str = option(REQUIRED, "a name")
    count: int = option(3, "how many", non_negative)
    scale: float = option(1.0, "a scale", positive)
    flag: bool = option(False, "a switch")
    mode: Literal["a", "b"] = option("a", "a mode")
    maybe: int | None = option(None, "optional", positive)
    width: int = option(64, "a width", multiple_of(64, "the head dim "))
    even: int = option(2, "even", Check(lambda v: v > 0 and v % 2 == 0, "a positive even integer"))
    pair: tuple[float, float] = option((0.9, 0.95), "two numbers")
    sizes: list[int] = option([1], "sizes", nonempty, each(positive))
    table: dict[str, int] = option({}, "name = count", each(positive))
    anything: list = option([], "a list of any values")
    free: dict = option({}, "a table passed on unchecked")
    inner: Inner = option(factory=Inner, help="nested")
    source: str = option("x", "keyword-named key", key="from")

    def __post_init__(self) -> None:
        validate(self)
        if self.count > 100 and self.flag:
            raise ConfigError("Toy: count > 100 needs flag=false")


def err(fn, *a, **k) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*a, **k)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    return msg


def test_types_are_checked_and_coerced_exactly():
    t = Toy(name="n", scale=2, pair=[1, 0])
    assert t.scale == 2.0 and type(t.scale) is float  # an int where a float belongs: the same number
    assert t.pair == (1.0, 0.0) and type(t.pair) is tuple
    assert err(Toy, name="n", count=True) == "Toy.count must be an integer, got True"  # a bool is not an int
    assert err(Toy, name="n", count=2.0) == "Toy.count must be an integer, got 2.0"   # nor is a float, even 2.0
    assert err(Toy, name="n", flag=1) == "Toy.flag must be true/false, got 1"
    assert err(Toy, name="n", scale=2 ** 53 + 1).startswith("Toy.scale must be a number")  # not exactly a float
    assert err(Toy, name="n", scale="1") == "Toy.scale must be a number, got '1'"
    assert err(Toy, name="n", scale=float("inf")) == "Toy.scale must be a finite number, got inf"
    assert err(Toy, name="n", pair=(0.9, float("nan"))) == "Toy.pair[1] must be a finite number, got nan"
    assert err(Toy, name="n", mode="c") == "Toy.mode must be one of ['a', 'b'], got 'c'"
    assert err(Toy, name=3) == "Toy.name must be a string, got 3"
    assert Toy(name="n", maybe=None).maybe is None and Toy(name="n", maybe=4).maybe == 4
    assert err(Toy, name="n", maybe="4") == "Toy.maybe must be an integer, got '4'"
    assert err(Toy, name="n", pair=(1.0,)) == "Toy.pair must be a list of 2 numbers, got (1.0,)"
    assert err(Toy, name="n", sizes=[1, "x"]) == "Toy.sizes[1] must be an integer, got 'x'"
    assert err(Toy, name="n", table={"a": 1.5}) == "Toy.table.a must be an integer, got 1.5"
    assert Toy(name="n", anything=[1, "a"], free={"x": [1]}).anything == [1, "a"]
    assert err(Toy, name="n", anything="ab") == "Toy.anything must be a list, got 'ab'"
    assert err(Toy, name="n", free=[1]) == "Toy.free must be a table, got [1]"


def test_constraints_name_the_field_and_the_value_as_written():
    assert err(Toy, name="n", count=-1) == "Toy.count must be an integer >= 0, got -1"
    assert err(Toy, name="n", scale=0) == "Toy.scale must be a positive number, got 0"
    assert err(Toy, name="n", maybe=0) == "Toy.maybe must be a positive integer, got 0"
    assert err(Toy, name="n", width=100) == "Toy.width must be a multiple of the head dim 64, got 100"
    assert err(Toy, name="n", even=3) == "Toy.even must be a positive even integer, got 3"
    assert err(Toy, name="n", sizes=[]) == "Toy.sizes must be non-empty, got []"
    assert err(Toy, name="n", sizes=[2, 0]) == "Toy.sizes[1] must be a positive integer, got 0"
    assert err(Toy, name="n", table={"a": 1, "b": 0}) == "Toy.table.b must be a positive integer, got 0"
    assert err(Toy, name="n", count=101, flag=True) == "Toy: count > 100 needs flag=false"  # a cross-field rule


def test_interval_bounds():
    closed, open_ = interval("[0, 1]"), interval("(0, 1)")
    assert closed.test(0) and closed.test(1) and not open_.test(0) and not open_.test(1) and open_.test(0.5)
    assert not interval("[0, 1)").test(float("nan"))
    with pytest.raises(ValueError):
        interval("0..1")


def test_from_dict_refuses_unknown_and_missing_keys_naming_the_source():
    assert err(from_dict, Toy, {"name": "n", "cuont": 1}, "run.toml").startswith(
        "run.toml: Toy: unknown field(s) ['cuont']; known: ['anything', 'count', 'even', 'flag', 'free', 'from',")
    assert err(from_dict, Toy, {}, "run.toml") == "run.toml: Toy: missing field(s) ['name']"
    assert err(from_dict, Toy, {"name": "n", "count": -1}, "run.toml") == "run.toml: Toy.count must be an integer >= 0, got -1"
    assert err(from_dict, Toy, {"name": "n", "count": 101, "flag": True}, "run.toml") == "run.toml: Toy: count > 100 needs flag=false"
    assert err(from_dict, Toy, [1], "run.toml") == "run.toml: Toy must be a table of fields, got [1]"
    assert from_dict(Toy, {"name": "n", "from": "y"}).source == "y"  # a key that is no Python name
    assert err(from_dict, Toy, {"name": "n", "from": 1}) == "Toy.from must be a string, got 1"
    # a file's top level has no class name in its paths
    assert err(from_dict, Toy, {"name": "n", "sizes": [0]}, "f.toml", where="") == "f.toml: sizes[0] must be a positive integer, got 0"


def test_nested_tables_are_built_and_their_errors_carry_the_path():
    t = from_dict(Toy, {"name": "n", "inner": {"depth": 3}}, "run.toml")
    assert t.inner == Inner(depth=3) and Toy(name="n", inner={"rate": 1}).inner.rate == 1.0
    assert err(from_dict, Toy, {"name": "n", "inner": {"depth": 0}}, "run.toml") == \
        "run.toml: Toy.inner.depth must be a positive integer, got 0"
    assert err(from_dict, Toy, {"name": "n", "inner": {"rate": 2}}, "run.toml") == \
        "run.toml: Toy.inner.rate must be a number in (0, 1], got 2"
    assert err(from_dict, Toy, {"name": "n", "inner": {"deep": 3}}, "run.toml").startswith(
        "run.toml: Toy.inner: unknown field(s) ['deep']")
    assert err(Toy, name="n", inner=5) == "Toy.inner must be a table, got 5"


def test_defaults_are_not_shared_between_instances():
    a, b = Toy(name="a"), Toy(name="b")
    a.sizes.append(3)
    assert b.sizes == [1]


# ---------------------------------------------------------------------- every real config field is validated
CONFIGS = [CARTConfig, DenseConfig, TrainConfig, LoopSampling]


@pytest.mark.parametrize("cls,f", [(c, f.name) for c in CONFIGS for f in config_fields(c)],
                         ids=[f"{c.__name__}.{f.name}" for c in CONFIGS for f in config_fields(c)])
def test_every_config_field_refuses_a_wrong_type_by_name(cls, f):
    msg = err(cls, **{f: object()})
    assert msg.startswith(f"{cls.__name__}.{f} must be ") and "got <object object" in msg


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_config_field_has_a_description(cls):
    assert all(f.metadata.get("help") for f in config_fields(cls)), [f.name for f in config_fields(cls) if not f.metadata.get("help")]


def test_model_config_from_a_table_inside_the_train_config():
    cfg = TrainConfig(model={"kind": "dense", "n_layers": 3}, seq_len=64)
    assert isinstance(cfg.model, DenseConfig) and cfg.model.n_layers == 3
    assert err(TrainConfig.from_dict, {"model": {"n_loops": 0}}, "x.json") == \
        "x.json: TrainConfig.model.n_loops must be a positive integer, got 0"
    assert "TrainConfig.model: unknown model kind 'rnn'" in err(TrainConfig.from_dict, {"model": {"kind": "rnn"}}, "x.json")
    assert err(TrainConfig.from_dict, {"loop_sampling": {"kind": "uniform", "max_loops": -1}}, "x.json") == \
        "x.json: TrainConfig.loop_sampling.max_loops must be an integer >= 0, got -1"


# ---------------------------------------------------------------------- CLI flags from the same fields
def _parser(cls, dest="x_"):
    p = argparse.ArgumentParser()
    add_config_flags(p, cls, dest)
    return p


def test_a_new_config_field_is_a_new_flag():
    @dataclass(kw_only=True)
    class Grown(Inner):
        warmup: int = option(7, "steps of warmup", non_negative)

    before = {a.dest for a in _parser(Inner)._actions}
    after = _parser(Grown)
    new = {a.dest for a in after._actions} - before
    assert new == {"x_warmup"}
    action = next(a for a in after._actions if a.dest == "x_warmup")
    assert action.option_strings == ["--warmup"] and action.help == "steps of warmup (default 7)"
    assert flag_values(after.parse_args(["--warmup", "3"]), "x_") == {"warmup": 3}
    assert flag_values(after.parse_args([]), "x_") == {}


def test_flags_parse_by_type_and_keep_their_names():
    p = _parser(Toy)
    ns = p.parse_args(["--flag", "yes", "--scale", "2.5", "--mode", "b", "--pair", "0.8,0.9", "--maybe", "4", "--from", "z"])
    assert flag_values(ns, "x_") == {"flag": True, "scale": 2.5, "mode": "b", "pair": [0.8, 0.9], "maybe": 4, "source": "z"}
    names = {s for a in p._actions for s in a.option_strings}
    assert "--sizes" not in names and "--table" not in names and "--inner" not in names  # tables are not flags
    for argv in (["--mode", "c"], ["--flag", "maybe"], ["--count", "x"], ["--pair", "0.9"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


def test_train_flags_cover_every_scalar_field_with_the_fields_help():
    from cart.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    for cls, dest in ((TrainConfig, "train_"), (LoopSampling, "loop_"), (CARTConfig, "cfg_"), (DenseConfig, "cfg_")):
        for f in config_fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in ("model", "loop_sampling"):
                continue
            assert dest + f.name in by_dest, f.name
            assert by_dest[dest + f.name].help.startswith(f.metadata["help"])
    loop = {a.option_strings[0] for a in train._actions if a.dest.startswith("loop_")}
    assert loop == {"--loop-sampling", "--loop-min", "--loop-max", "--loop-mean", "--loop-sigma", "--backprop-loops"}
    assert by_dest["cfg_lti_gate"].metavar == "BOOL" and by_dest["train_betas"].metavar == "B1,B2"
    assert by_dest["cfg_n_layers"].help.endswith("(dense only, default 7)")


@pytest.mark.parametrize("argv, line", [
    (["--loop-min", "0"], "TrainConfig.loop_sampling.min_loops must be a positive integer, got 0"),
    (["--loop-sigma", "inf"], "TrainConfig.loop_sampling.sigma must be a finite number, got inf"),
    (["--lr", "nan"], "TrainConfig.lr must be a finite number, got nan"),
    (["--n-loops", "0"], "TrainConfig.model.n_loops must be a positive integer, got 0"),
])
def test_a_flag_out_of_range_is_the_configs_one_line_error(capsys, argv, line):
    from cart.cli import main

    assert main(["train", "--preset", "smoke", *argv, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == f"cart train: error: preset 'smoke' + flags: {line}\n"
