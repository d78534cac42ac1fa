"""Deterministic synthetic English for the `smoke` tier: no files, no network, seconds.

Three styles with different statistics, so that per-domain validation and interleaving are
meaningful even in tests: `stories` (simple narrative), `notes` (numbers, units, lists) and `code`
(Python-like functions). A document is a pure function of (style, seed, index).
"""
from __future__ import annotations

import random
from typing import Iterator

__all__ = ["STYLES", "synthetic_documents"]

_NAMES = ["Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana", "Ivo", "Jun", "Kit", "Lea", "Milo", "Nia", "Otto", "Pia"]
_PLACES = ["the harbour", "a quiet farm", "the old library", "the market", "a snowy forest", "the riverbank", "the station", "a small garden"]
_THINGS = ["a red kite", "a lost key", "a brass lamp", "a paper boat", "a secret map", "a tiny robot", "a blue shell", "an old clock"]
_ADJ = ["happy", "curious", "tired", "brave", "quiet", "clever", "worried", "proud"]
_VERBS = ["found", "painted", "fixed", "carried", "hid", "shared", "lost", "built"]
_ENDINGS = ["They laughed all the way home.", "It was the best day of the summer.", "Nobody ever forgot it.",
            "Then everyone went to sleep.", "The sun came out again.", "And that was enough."]
_UNITS = ["kg", "m", "s", "km/h", "°C", "MB", "ms", "L"]
_TOPICS = ["battery", "pump", "sensor", "bridge", "cache", "engine", "valve", "router"]
_FUNCS = ["load", "parse", "merge", "count", "scale", "split", "render", "check"]
_VARS = ["items", "total", "value", "rows", "name", "path", "size", "step"]


def _story(r: random.Random) -> str:
    a, b = r.sample(_NAMES, 2)
    out = [f"Once upon a time, {a} lived near {r.choice(_PLACES)}."]
    for _ in range(r.randint(3, 9)):
        out.append(r.choice([
            f"One day {a} {r.choice(_VERBS)} {r.choice(_THINGS)} at {r.choice(_PLACES)}.",
            f"{b} was {r.choice(_ADJ)} and asked, \"Can I help?\"",
            f"\"Look at this!\" said {r.choice([a, b])}, feeling {r.choice(_ADJ)}.",
            f"They walked {r.randint(2, 19)} steps and {r.choice(_VERBS)} {r.choice(_THINGS)}.",
            f"{a} and {b} were {r.choice(_ADJ)} friends.",
        ]))
    out.append(r.choice(_ENDINGS))
    return " ".join(out)


def _notes(r: random.Random) -> str:
    topic = r.choice(_TOPICS)
    lines = [f"Report {r.randint(100, 999)}: {topic} test, run {r.randint(1, 40)}"]
    for i in range(r.randint(3, 8)):
        lines.append(f"- step {i + 1}: {r.choice(_VERBS)} the {r.choice(_TOPICS)}, measured "
                     f"{r.uniform(0, 500):.2f} {r.choice(_UNITS)} (limit {r.randint(1, 600)} {r.choice(_UNITS)})")
    lines.append(f"Result: {r.choice(['pass', 'fail', 'retry'])}. Total {r.randint(1, 10_000):,} samples.")
    return "\n".join(lines)


def _code(r: random.Random) -> str:
    f, v, w = r.choice(_FUNCS), r.choice(_VARS), r.choice(_VARS)
    body = [f"def {f}_{r.choice(_TOPICS)}({v}, {w}={r.randint(0, 9)}):",
            f"    \"\"\"{f.capitalize()} the {v} and return the {w}.\"\"\"",
            "    out = []"]
    for _ in range(r.randint(2, 6)):
        body.append(r.choice([
            f"    for i in range(len({v})):\n        out.append({v}[i] * {r.randint(2, 9)})",
            f"    if {w} > {r.randint(1, 99)}:\n        {w} -= 1",
            f"    out.extend(x + {r.randint(1, 9)} for x in {v} if x % {r.randint(2, 5)} == 0)",
            f"    {w} = sum(out) // max(1, len(out))",
        ]))
    body.append(f"    return out, {w}")
    return "\n".join(body)


STYLES = {"stories": _story, "notes": _notes, "code": _code}


def synthetic_documents(style: str, docs: int, seed: int = 0) -> Iterator[str]:
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; choose one of {sorted(STYLES)}")
    for i in range(docs):
        # one generator per document: any document can be produced on its own, in any order
        yield STYLES[style](random.Random(f"{style}:{seed}:{i}"))
