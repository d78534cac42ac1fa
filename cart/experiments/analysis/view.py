"""A read-only view of a study for analysis: its members, their final metrics and their n-gram floors.

Metrics a comparison can be made on (`Member.metric(name)`):
- a validation set's name (`news`, `wiki`, ...): the model's perplexity on that set;
- `in_domain`: the token-weighted in-domain mix, exp(Σ loss_s·tokens_s / Σ tokens_s) over the sets
  the trainer did not mark out-of-domain (the whole held-out mix as one number).
Each has a floor (`Member.floor(name)`): the interpolated Kneser-Ney bigram counted on exactly the
tokens the run trained on, scored on the same tokens (`cart.eval.ngram`), combined the same way.
A run "clears its floor by m" when ppl <= (1 − m) · floor; comparisons refuse to draw verdicts from
runs that do not clear it.

All SQL stays in the store: this module only calls `Store` methods.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from cart.experiments.analysis.stats import Stat
from cart.experiments.plans import PlanError, load_plan
from cart.experiments.store import Store

IN_DOMAIN = "in_domain"


def _ood_of(finals: dict[str, float]) -> set[str]:
    return {k[len("out_of_domain."):] for k, v in finals.items() if k.startswith("out_of_domain.") and v}


def _mix(finals: dict[str, float], ood: set[str] | frozenset, per_set_loss) -> float | None:
    """exp(Σ loss_s · tokens_s / Σ tokens_s) over the in-domain sets of a run's finals."""
    num = den = 0.0
    sets = sorted(k[4:] for k in finals if k.startswith("ppl.") and k.count(".") == 1 and k[4:] not in ood)
    for s in sets:
        loss, n = per_set_loss(s), finals.get(f"tokens.{s}")
        if loss is None or not n:
            return None
        num += loss * n
        den += n
    return math.exp(num / den) if den else None


def metric_from_finals(finals: dict[str, float], metric: str, ood: set[str] | frozenset | None = None) -> float | None:
    """Perplexity on a validation set, or (metric = "in_domain") the token-weighted in-domain mix; `ood`
    defaults to the sets the run's own finals mark out of domain."""
    if metric == IN_DOMAIN:
        return _mix(finals, _ood_of(finals) if ood is None else ood, lambda s: finals.get(f"loss.{s}"))
    for k in (f"ppl.{metric}", metric):
        v = finals.get(k)
        if v is not None and math.isfinite(v):
            return v
    return None


def floor_from_finals(finals: dict[str, float], metric: str, ood: set[str] | frozenset | None = None) -> float | None:
    """The token-matched Kneser-Ney bigram perplexity for the same metric (None if not recorded)."""
    if metric == IN_DOMAIN:
        def bigram_loss(s):
            v = finals.get(f"bigram_kn_ppl.{s}")
            return None if v is None else math.log(v)
        return _mix(finals, _ood_of(finals) if ood is None else ood, bigram_loss)
    return finals.get(f"bigram_kn_ppl.{metric}")


@dataclass
class Member:
    stage: str
    label: str
    run_id: int
    name: str
    status: str
    seed: int | None
    tags: dict
    finals: dict[str, float]
    spec: dict = field(default_factory=dict)
    ood: frozenset = frozenset()

    def metric(self, metric: str) -> float | None:
        """Perplexity on a validation set, or the token-weighted in-domain mix."""
        return metric_from_finals(self.finals, metric, self.ood)

    def floor(self, metric: str) -> float | None:
        """The token-matched Kneser-Ney bigram perplexity for the same metric (None if not recorded)."""
        return floor_from_finals(self.finals, metric, self.ood)

    def floor_ratio(self, metric: str) -> float | None:
        """ppl / floor (< 1: better than the bigram)."""
        m, f = self.metric(metric), self.floor(metric)
        return None if m is None or f is None else m / f

    def clears_floor(self, metric: str, margin: float = 0.0) -> bool | None:
        """ppl <= (1 − margin) · floor; None when the floor was not recorded."""
        r = self.floor_ratio(metric)
        return None if r is None else r <= 1.0 - margin


class Study:
    """Read-only view of a study for analysis."""

    def __init__(self, store: Store, metric: str | None = None, floor_margin: float | None = None):
        self.store = store
        self.tier = store.meta("tier") or "?"
        self.metric = metric or store.meta("metric") or "wiki"
        # runs must beat the n-gram floor by this much before a verdict is drawn from them
        self.floor_margin = float(floor_margin if floor_margin is not None else store.meta("floor_margin") or 0.0)
        self._members: dict[str, list[Member]] = defaultdict(list)
        rows = store.members()
        finals = store.finals(m["run_id"] for m in rows)
        specs = {r.id: r.spec for r in store.runs()}
        self._ood = self._find_ood(finals)
        for m in rows:
            self._members[m["stage"]].append(Member(m["stage"], m["label"], m["run_id"], m["name"], m["status"], m["seed"],
                                                    m["tags"], finals.get(m["run_id"], {}), specs.get(m["run_id"], {}),
                                                    frozenset(self._ood)))

    def _find_ood(self, finals: dict[int, dict]) -> set[str]:
        ood = {k[len("out_of_domain."):] for f in finals.values() for k, v in f.items() if k.startswith("out_of_domain.") and v}
        if not ood:
            for summary in self.store.summaries().values():
                final = summary.get("final") or {}
                ood |= {name for name, m in final.items() if isinstance(m, dict) and m.get("out_of_domain")}
        return ood

    @cached_property
    def stages(self) -> list[str]:
        """The study's stages in plan order: the position each stage was planned at (recorded since
        stages carry an `index`), else its position in the plan file the study names, else the order
        in which the stages were planned."""
        names = list(self._members)
        order = self._plan_order()
        return sorted(names, key=lambda n: (order.get(n, len(order)), names.index(n)))

    def _plan_order(self) -> dict[str, int]:
        recorded = {}
        for n in self._members:
            d = (self.store.stage_expanded(n) or {}).get("definition") or {}
            if isinstance(d.get("index"), int):
                recorded[n] = d["index"]
        if len(recorded) == len(self._members):
            return recorded
        source = self.store.meta("plan_source") or self.store.meta("tier")
        try:
            plan = load_plan(source) if source else None
        except (PlanError, OSError):
            plan = None
        return {n: st.index for n, st in plan.stages.items()} if plan is not None else recorded

    def stages_of_kind(self, kind: str) -> list[str]:
        """The study's stages of one kind (parity, vary_r, ...), in plan order."""
        return [s for s in self.stages if self.stage_kind(s) == kind]

    def members(self, stage: str, done: bool = True) -> list[Member]:
        return [m for m in self._members.get(stage, []) if m.status == "done" or not done]

    def stage_kind(self, stage: str) -> str | None:
        e = self.store.stage_expanded(stage)
        return e["definition"]["kind"] if e else None

    def stage_derivation(self, stage: str) -> dict | None:
        return (self.store.stage_expanded(stage) or {}).get("derivation")

    def ood_sets(self) -> set[str]:
        return set(self._ood)

    def valsets(self) -> list[str]:
        """Validation sets with final perplexities: in-domain first, then out-of-domain, each alphabetical."""
        sets: set[str] = set()
        for ms in self._members.values():
            for m in ms:
                sets.update(k[4:] for k in m.finals if k.startswith("ppl.") and k.count(".") == 1)
        return sorted(sets, key=lambda s: (s in self._ood, s))

    def values(self, members: list[Member], metric: str | None = None) -> list[float]:
        metric = metric or self.metric
        return [v for v in (m.metric(metric) for m in members) if v is not None]

    def below_floor(self, members: list[Member], metric: str | None = None) -> list[Member]:
        """Members that do not clear their n-gram floor by the study's margin (unknown floors count as
        not cleared only when the study asks for a margin)."""
        metric = metric or self.metric
        out = []
        for m in members:
            ok = m.clears_floor(metric, self.floor_margin)
            if ok is False or (ok is None and self.floor_margin > 0):
                out.append(m)
        return out

    def cells(self, stage: str, metric: str | None = None) -> dict[tuple, Stat]:
        """(d, P, R) -> Stat over seeds of the CART members of a stage."""
        metric = metric or self.metric
        out: dict[tuple, list[float]] = defaultdict(list)
        for m in self.members(stage):
            if m.tags.get("arch") == "cart":
                v = m.metric(metric)
                if v is not None:
                    out[(m.tags["d"], m.tags["P"], m.tags["R"])].append(v)
        return {k: Stat(v) for k, v in sorted(out.items())}

    def relative_seed_noise(self, d: int | None = None) -> float | None:
        """Median relative seed std (std / mean) of the selection metric over every multi-seed CART cell
        (optionally at one width): what one cell's seed noise is, for single-seed stages."""
        rel = []
        for stage in self.stages:
            for (dd, _, _), s in self.cells(stage).items():
                if s.std is not None and (d is None or dd == d):
                    rel.append(s.std / s.mean)
        return sorted(rel)[len(rel) // 2] if rel else None

    def series(self, run_id: int, name: str) -> list[tuple[int, float]]:
        """A metric over steps, from the run's own log, any event that has it."""
        seen: dict[int, float] = {}
        for step, v in self.store.metrics(run_id, name):
            if v is not None and math.isfinite(v):  # a skipped (non-finite) step is NaN: no point on the curve
                seen[step] = v
        return sorted(seen.items())

    def contraction_series(self, run_id: int) -> list[tuple[int, float]]:
        names = [n for _, n in self.store.metric_names(run_id)]
        for cand in ("contraction_mean", "contraction.mean", "loop.contraction_mean"):
            if cand in names:
                return self.series(run_id, cand)
        per_loop = [n for n in names if n.startswith("contraction.") and n.split(".")[-1].isdigit()]
        if not per_loop:
            return []
        acc: dict[int, list[float]] = defaultdict(list)
        for n in per_loop:
            for step, v in self.series(run_id, n):
                acc[step].append(v)
        return sorted((s, sum(v) / len(v)) for s, v in acc.items())

    def source_spec(self, member: Member) -> dict | None:
        """The training spec of the run an evaluation member evaluated."""
        run = self.store.run_by_key(member.spec.get("of", ""))
        return None if run is None else run.spec


__all__ = ["Member", "Study", "IN_DOMAIN", "metric_from_finals", "floor_from_finals"]
