"""Typed config validation: one mechanism for the model, training, data-recipe and plan configs.

A config is a dataclass whose fields say what they accept:

- the type hint: `int`, `float`, `bool`, `str`, `Literal[...]`, `X | None`, a nested dataclass,
  `list[X]`, `tuple[X, Y]` / `tuple[X, ...]`, `dict[str, X]`, plain `dict` (a table passed on
  unchecked) or a union of these;
- `option(default, help, *checks)`: the field's one-line description (also its CLI flag's help) and
  its constraints, e.g. `positive`, `non_negative`, `interval("(0, 1)")`, `multiple_of(64, "the head
  dim ")`, `each(positive)` for the items of a list or table, or any `Check(test, says)`.

`validate(self)`, called first in `__post_init__`, checks every field and coerces what TOML and JSON
cannot say exactly: an int where a float belongs becomes that float, a list where a tuple belongs a
tuple, a table where a dataclass belongs that dataclass. `from_dict(cls, d, source)` builds a config
from its on-disk form and refuses unknown keys. Every error is a `ConfigError` (a ValueError) whose
message is one line naming the source, the field and the value:

    preset 'smoke' + flags: TrainConfig.steps must be a positive integer, got 0
    recipe.toml: train[1].order must be one of ['hash', 'source'], got 'random'

Rules that relate two fields (seq_len <= max_seq_len, a self-attention core with unfrozen K/V) stay
explicit checks after `validate(self)` in the config's own `__post_init__`, raising ConfigError.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Literal, Union

__all__ = ["ConfigError", "Check", "option", "REQUIRED", "validate", "from_dict", "check_fields", "config_fields", "field_hints",
           "base_type", "describe", "positive", "non_negative", "interval", "multiple_of", "each", "nonempty"]


class ConfigError(ValueError):
    """A config value that is not allowed: one line, `<source>: <field> <problem>, got <value>`."""

    def __init__(self, message: str, source: str | None = None):
        self.message, self.source = message, source
        super().__init__(f"{source}: {message}" if source else message)

    def within(self, source: str | None) -> "ConfigError":
        """The same error, naming `source` (a file, a preset, the command line) unless it already names one."""
        return self if self.source or not source else type(self)(self.message, source)


# ------------------------------------------------------------------------------------ constraints
@dataclass(frozen=True)
class Check:
    """A constraint on a field's (type-checked) value. `says` completes "must be ...": "{a}" stands for
    "an integer" or "a number", "{noun}" for "integer" or "number", after the field's type."""

    test: Callable[[Any], bool]
    says: str
    items: bool = False  # test every item of a list or table, not the container

    def phrase(self, hint) -> str:
        noun = {int: "integer", float: "number"}.get(base_type(hint), "value")
        return self.says.format(noun=noun, a=("an " if noun == "integer" else "a ") + noun)


positive = Check(lambda v: v > 0, "a positive {noun}")
non_negative = Check(lambda v: v >= 0, "{a} >= 0")
nonempty = Check(lambda v: len(v) > 0, "non-empty")


def multiple_of(n: int, what: str = "") -> Check:
    return Check(lambda v: v % n == 0, f"a multiple of {what}{n}")


def interval(spec: str) -> Check:
    """`interval("(0, 1)")`, `interval("[0, 1)")`: brackets include the bound, parentheses exclude it."""
    m = re.fullmatch(r"([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])", spec)
    if not m:
        raise ValueError(f"interval {spec!r}: expected e.g. '(0, 1]'")
    lo, hi = float(m[2]), float(m[3])
    lo_ok = (lambda v: v >= lo) if m[1] == "[" else (lambda v: v > lo)
    hi_ok = (lambda v: v <= hi) if m[4] == "]" else (lambda v: v < hi)
    return Check(lambda v: lo_ok(v) and hi_ok(v), f"{{a}} in {spec}")


def each(check: Check) -> Check:
    """`check` applied to every item of a list (or every value of a table), each named by its index or key."""
    return dataclasses.replace(check, items=True)


REQUIRED: Any = MISSING  # option(REQUIRED, ...): a key the table must have


def option(default: Any = MISSING, help: str = "", *checks: Check, factory: Callable[[], Any] | None = None,
           key: str | None = None, flag: str | None = None, metavar: str | None = None,
           convert: Callable[[Any, str], Any] | None = None) -> Any:
    """A dataclass field with its description and constraints.

    default: REQUIRED (the default) for a key the table must have; a list or dict default is copied
    per instance. factory: a default built per instance (e.g. a nested config); key: the field's name on
    disk when it cannot be a Python name (`from`); flag / metavar: its CLI flag and value name when
    not `--field-name`; convert: (value, where) -> value, how a table becomes this field's type when
    that is not one dataclass (e.g. the model config, a union chosen by its `kind`)."""
    meta = {"help": help, "checks": checks, "key": key, "flag": flag, "metavar": metavar, "convert": convert}
    if isinstance(default, (list, dict, set)):  # a mutable default: a fresh copy per instance
        factory = functools.partial(copy.deepcopy, default)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------ introspection
def config_fields(cls) -> list[dataclasses.Field]:
    """The fields a config is built from (those `__init__` takes)."""
    return [f for f in dataclasses.fields(cls) if f.init]


@functools.cache
def field_hints(cls) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (string annotations evaluated once per class)."""
    return typing.get_type_hints(cls)


def _is_union(hint) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def base_type(hint):
    """`X` of `X | None`; the hint itself otherwise."""
    if _is_union(hint):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


_NOUNS = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def _plural(hint) -> str:
    if _takes_tables(hint):
        return "tables"
    return _NOUNS.get(hint, "values")


def describe(hint) -> str:
    """What a hint accepts, completing "must be ..." ("an integer", "one of ['a', 'b']", "a list of integers")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true/false"
    if hint in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[hint]
    if hint is dict or origin is dict:
        return f"a table of {_plural(args[1])}" if args and args[1] is not Any else "a table"
    if origin is Literal:
        return f"one of {list(args)}"
    if _is_union(hint) and all(dataclasses.is_dataclass(a) for a in args):
        return f"a {' or '.join(a.__name__ for a in args)} (or a table of its fields)"
    if _is_union(hint):  # None is left out: in a file, unset is a missing key
        return " or ".join(describe(a) for a in args if a is not type(None))
    if hint is list or origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is tuple:
        n = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"a list of {n}{_plural(args[0])}"
    if dataclasses.is_dataclass(hint):
        return "a table"
    return f"a {getattr(hint, '__name__', hint)}"


# ------------------------------------------------------------------------------------ checking
def _wrong(where: str, hint, value) -> ConfigError:
    return ConfigError(f"{where} must be {describe(hint)}, got {value!r}")


def _coerce(value, hint, where: str, convert=None):
    """`value` as `hint` (exact conversions only), or a ConfigError naming `where` and the value."""
    if hint is Any or type(value) is hint and hint in (int, str, bool):  # the common case, first
        return value
    if convert is not None and isinstance(value, dict):
        return convert(value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, float) and not math.isfinite(value):  # TOML and Python can say nan and inf; no field means them
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and float(value) == value:
            return float(value)  # TOML and JSON write 1e3 as 1000: exact, so taken
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif _is_union(hint):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        tables = [e for a, e in zip(options, errors) if isinstance(value, dict) and _takes_tables(a)]
        if len(tables) == 1:  # the one table-shaped option: its own message says what is wrong inside
            raise tables[0]
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            if not args or args[1] is Any:
                return value
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where=where)
    raise _wrong(where, hint, value)


def _takes_tables(hint) -> bool:
    return dataclasses.is_dataclass(hint) or hint is dict or typing.get_origin(hint) is dict


def _check(value, hint, where: str, checks, given=None) -> None:
    """Raise for the first of `checks` that `value` fails (`given`: the value as written, for the message)."""
    if value is None:  # an unset optional field has nothing to constrain
        return
    for c in checks:
        if c.items:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            inner = typing.get_args(base_type(hint))[-1] if typing.get_args(base_type(hint)) else Any
            for k, v in items:
                if not _passes(c, v):
                    at = f"{where}.{k}" if isinstance(value, dict) else f"{where}[{k}]"
                    raise ConfigError(f"{at} must be {c.phrase(inner)}, got {v!r}")
        elif not _passes(c, value):
            raise ConfigError(f"{where} must be {c.phrase(hint)}, got {given if given is not None else value!r}")


def _passes(check: Check, value) -> bool:
    try:
        return bool(check.test(value))
    except (TypeError, ValueError):
        return False


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


@functools.cache
def _specs(cls) -> dict[str, tuple]:
    """field name -> (hint, name on disk, checks, convert), once per class."""
    hints = field_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("key") or f.name, f.metadata.get("checks", ()), f.metadata.get("convert"))
            for f in config_fields(cls)}


def check_fields(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` (field name -> value) checked against `cls`'s hints and constraints; coerced copies."""
    specs, out = _specs(cls), {}
    for name, value in values.items():
        hint, key, checks, convert = specs[name]
        at = _at(where, key)
        v = _coerce(value, hint, at, convert)
        if checks:
            _check(v, hint, at, checks, value)
        out[name] = v
    return out


def validate(obj) -> None:
    """Check and coerce every field of a config in place (frozen or not); call first in `__post_init__`."""
    cls = type(obj)
    values = check_fields(cls, {name: getattr(obj, name) for name in _specs(cls)}, cls.__name__)
    for name, v in values.items():
        if v is not getattr(obj, name):
            object.__setattr__(obj, name, v)


def from_dict(cls, d: Any, source: str | None = None, where: str | None = None):
    """A `cls` from its dict form (a TOML table, a JSON object). Unknown and missing keys are refused;
    errors name `source` (a file, a preset) and the field's path from `where` (default: the class name)."""
    where = cls.__name__ if where is None else where
    try:
        if not isinstance(d, dict):
            raise ConfigError(f"{where or 'the file'} must be a table of fields, got {d!r}")
        fs = {f.metadata.get("key") or f.name: f for f in config_fields(cls)}
        prefix = f"{where}: " if where else ""
        unknown = sorted(set(d) - set(fs))
        if unknown:
            raise ConfigError(f"{prefix}unknown field(s) {unknown}; known: {sorted(fs)}")
        missing = [k for k, f in fs.items() if k not in d and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ConfigError(f"{prefix}missing field(s) {missing}")
        values = check_fields(cls, {fs[k].name: v for k, v in d.items()}, where)
        return cls(**values)
    except ConfigError as e:
        raise e.within(source) from None
