"""Argument helpers shared by sub-commands: numeric argument types, and every config field as a flag
(`add_config_flags`: generated from the dataclass, so a new config field is a new flag)."""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING

from cart.config import CARTConfig, DenseConfig, config_from_dict, config_to_dict
from cart.validation import base_type, config_fields, field_hints


# ---------------------------------------------------------------------------- numeric argument types
# Every numeric flag of every command takes one of these as its argparse `type`, so a value out of
# range is a one-line parse error naming the flag and the value, before any work starts.

def _number(kind, test, expected: str):
    def parse(v: str):
        try:
            x = kind(v)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}") from None
        if kind is float and x != x:  # NaN compares false with everything: refuse it by name
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}")
        if not test(x):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}")
        return x
    parse.__name__ = expected.replace(" ", "_")
    return parse


positive_int = _number(int, lambda x: x >= 1, "a positive integer")
nonneg_int = _number(int, lambda x: x >= 0, "an integer >= 0")
positive_float = _number(float, lambda x: 0 < x < float("inf"), "a positive number")
nonneg_float = _number(float, lambda x: 0 <= x < float("inf"), "a number >= 0")
probability = _number(float, lambda x: 0 < x <= 1, "a probability in (0, 1]")


def positive_ints(v: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. `2,4,6,8`."""
    parts = [x.strip() for x in v.split(",") if x.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {v!r}")
    try:
        return [positive_int(x) for x in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {v!r}") from None


def check_output_file(path, flag: str) -> None:
    """Refuse, before any work, an output file path that cannot be written: an existing directory, or
    a path under an existing file. (Missing folders are fine: outputs create them.)"""
    if path is None:
        return
    from pathlib import Path
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a directory, expected a file path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {p}: {parent} is a file, not a folder")
            break


def check_output_dir(path, flag: str) -> None:
    """Refuse, before any work, an output folder path that is an existing file (or lies under one)."""
    if path is None:
        return
    from pathlib import Path
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ValueError(f"{flag} {p}: {q} is a file, not a folder")
            break


def _bool(v: str) -> bool:
    s = v.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


_WORDS = {2: "two", 3: "three"}


def _numbers(n: int, example: str):
    """`X1,X2,...`: exactly n comma-separated numbers."""
    def parse(v: str) -> list[float]:
        try:
            x = [float(p) for p in v.split(",")]
        except ValueError:
            x = []
        if len(x) != n:
            raise argparse.ArgumentTypeError(f"expected {_WORDS.get(n, n)} numbers like {example}, got {v!r}")
        return x
    return parse


_SCALARS = {bool: (_bool, "BOOL"), int: (int, "N"), float: (float, "X"), str: (str, "S")}


def add_config_flags(group, cls, dest: str, skip: set[str] = frozenset(), note: str = "") -> None:
    """One flag per field of the config dataclass `cls`: `--field-name` (or the field's own `flag`, or its `key`),
    unset by default, its value parsed by the field's type (choices for a Literal), its help the field's
    description and default. The value lands in `dest + field name`; `flag_values` collects them.
    Constraints are the config's to check (one message whichever way a value arrives). Nested tables
    (dataclasses, dicts, lists) get no flag of their own."""
    hints = field_hints(cls)
    for f in config_fields(cls):
        t = base_type(hints[f.name])
        kw: dict = {"default": None, "dest": dest + f.name}
        if f.name in skip:
            continue
        if typing.get_origin(t) is typing.Literal:
            kw["choices"] = list(typing.get_args(t))
        elif t in _SCALARS:
            kw["type"], kw["metavar"] = _SCALARS[t]
        elif typing.get_origin(t) is tuple and f.default is not MISSING:
            n = len(typing.get_args(t))
            kw["type"], kw["metavar"] = _numbers(n, ",".join(map(str, f.default))), ",".join(["X"] * n)
        else:
            continue
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        notes = [note] * bool(note) + [f"default {_shown(f.default)}"] * (f.default not in (MISSING, None))
        kw["help"] = (f.metadata.get("help", "") + (f" ({', '.join(notes)})" if notes else "")).replace("%", "%%")
        name = f.metadata.get("key") or f.name
        group.add_argument(f.metadata.get("flag") or "--" + name.replace("_", "-"), **kw)


def _shown(v) -> str:
    """A default as its flag would take it: true/false, 0.9,0.95, data/smoke."""
    if isinstance(v, bool):
        return str(v).lower()
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def flag_values(args: argparse.Namespace, dest: str) -> dict:
    """The fields given as flags added by `add_config_flags(..., dest)`: field name -> value."""
    return {k[len(dest):]: v for k, v in vars(args).items() if k.startswith(dest) and v is not None}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add --kind {cart,dense} and one flag per config field (union of both configs), default unset."""
    g = parser.add_argument_group("model config (any field; unset fields keep their defaults)")
    g.add_argument("--kind", choices=["cart", "dense"], default=None, help="model family (default: cart)")
    add_config_flags(g, CARTConfig, "cfg_")
    add_config_flags(g, DenseConfig, "cfg_", skip={f.name for f in config_fields(CARTConfig)}, note="dense only")


def model_overrides(args: argparse.Namespace) -> dict:
    return flag_values(args, "cfg_")


def config_from_args(args: argparse.Namespace, base: dict | None = None):
    """Base config dict (e.g. from a preset) updated by the flags that were given."""
    d = dict(base or {})
    if args.kind:
        d["kind"] = args.kind
    kind = d.get("kind", "cart")
    cls = CARTConfig if kind == "cart" else DenseConfig
    valid = {f.name for f in config_fields(cls)}
    over = model_overrides(args)
    bad = sorted(set(over) - valid)
    if bad:
        raise ValueError(f"flag(s) {['--' + b.replace('_', '-') for b in bad]} do not apply to a {kind} model")
    d.update(over)
    return config_from_dict(d, source="command line")


__all__ = ["add_model_args", "add_config_flags", "flag_values", "config_from_args", "model_overrides", "config_to_dict", "positive_int", "nonneg_int",
           "positive_float", "nonneg_float", "probability", "positive_ints", "check_output_file", "check_output_dir"]
