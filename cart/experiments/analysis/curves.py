"""Learning curves against the n-gram floor: how many training tokens a model needs to beat the
token-matched Kneser-Ney bigram by a given margin.

Input: a run's eval events (`metrics.jsonl` lines with event == "eval", as the trainer writes them
with `ngram_floors = "every_eval"`): per validation set the model's loss/ppl, the tokens scored and
the bigram floor for the tokens trained so far. Output: per eval step the ratio ppl / floor per set
and for the token-weighted in-domain mix, and the first point where the ratio reaches a level
(linear interpolation in log tokens between evals). Pure functions: the caller reads the files.

Caveat (stated wherever a crossing is reported): a crossing inside a run is measured under that run's
learning-rate schedule, which has not finished decaying there; a run whose schedule ends at that
token count usually does better, so crossings are upper bounds on the tokens needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cart.experiments.analysis.view import IN_DOMAIN


@dataclass
class CurvePoint:
    step: int
    tokens: int
    ratio: dict[str, float] = field(default_factory=dict)  # set (or IN_DOMAIN) -> ppl / bigram floor
    ppl: dict[str, float] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)


def floor_curve(events: list[dict], tokens_per_step: int) -> list[CurvePoint]:
    """Eval events carrying floors -> one point per eval step (the last event of a step wins)."""
    by_step: dict[int, CurvePoint] = {}
    for e in events:
        if e.get("event") != "eval" or not isinstance(e.get("sets"), dict):
            continue
        sets = {k: v for k, v in e["sets"].items() if isinstance(v, dict) and v.get("bigram_kn_ppl")}
        if not sets:
            continue
        p = CurvePoint(int(e["step"]), int(e["step"]) * tokens_per_step)
        num = den = fnum = 0.0
        for name, v in sets.items():
            p.ppl[name], p.floor[name] = float(v["ppl"]), float(v["bigram_kn_ppl"])
            p.ratio[name] = p.ppl[name] / p.floor[name]
            if not v.get("out_of_domain"):
                n = float(v.get("tokens") or 0)
                num += math.log(p.ppl[name]) * n
                fnum += math.log(p.floor[name]) * n
                den += n
        if den:
            p.ppl[IN_DOMAIN], p.floor[IN_DOMAIN] = math.exp(num / den), math.exp(fnum / den)
            p.ratio[IN_DOMAIN] = p.ppl[IN_DOMAIN] / p.floor[IN_DOMAIN]
        by_step[p.step] = p
    return [by_step[s] for s in sorted(by_step)]


def crossing(curve: list[CurvePoint], level: float, key: str = IN_DOMAIN) -> float | None:
    """Training tokens at which ppl / floor first reaches `level` (e.g. 0.9 = 10 % better than the
    floor), interpolated linearly in log tokens between evals; None if it never does."""
    prev = None
    for p in curve:
        r = p.ratio.get(key)
        if r is None:
            continue
        if r <= level:
            if prev is None or prev[1] == r:
                return float(p.tokens)
            (t0, r0), (t1, r1) = prev, (p.tokens, r)
            f = (r0 - level) / (r0 - r1)
            return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
        prev = (p.tokens, r)
    return None


__all__ = ["CurvePoint", "floor_curve", "crossing"]
