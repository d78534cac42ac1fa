"""Argument helpers shared by sub-commands: every model-config field as a `--field-name` flag."""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING

from cart.config import CARTConfig, DenseConfig, config_fields, config_from_dict, config_to_dict


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


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add --kind {cart,dense} and one flag per config field (union of both configs), default unset."""
    g = parser.add_argument_group("model config (any field; unset fields keep their defaults)")
    g.add_argument("--kind", choices=["cart", "dense"], default=None, help="model family (default: cart)")
    seen = set()
    for cls in (CARTConfig, DenseConfig):
        hints = typing.get_type_hints(cls)
        for f in config_fields(cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            t = hints[f.name]
            kw: dict = {"default": None, "dest": f"cfg_{f.name}"}
            if typing.get_origin(t) is typing.Literal:
                kw["choices"] = list(typing.get_args(t))
            elif t is bool:
                kw["type"], kw["metavar"] = _bool, "BOOL"
            elif t in (int, float):
                kw["type"] = t
            default = f.default if f.default is not MISSING else None
            owner = "cart" if cls is CARTConfig else "dense"
            kw["help"] = f"default {default!r}" + ("" if f.name in {x.name for x in config_fields(CARTConfig)} and owner == "cart" else f" ({owner} only)")
            g.add_argument("--" + f.name.replace("_", "-"), **kw)


def model_overrides(args: argparse.Namespace) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


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


__all__ = ["add_model_args", "config_from_args", "model_overrides", "config_to_dict", "positive_int", "nonneg_int",
           "positive_float", "nonneg_float", "probability", "positive_ints", "check_output_file", "check_output_dir"]
