"""Analysis of a study: the paper's comparisons computed from the results store, as plain data.

Notable features:
- every comparison carries its seed spread: mean ± sample std over seeds, and a verdict
  ("within seed noise" when the difference of means is within two standard errors of the
  difference; with single seeds, the spread of the matching Stage 2 config stands in and is
  named as such, or the verdict says that no spread is known);
- the Stage 1 -> Stage 2 comparison reports the paper's Spearman (all shared cells) and also the
  within-width agreement of the best R, which is what the paper's "flip" is about;
- the gap decomposition (weight sharing vs the prelude/anchor/core/coda framing) is computed at
  one seed set for all three models and in two consistent forms: log-perplexity differences
  (they add up exactly) and perplexity differences over the same denominator (the dense model);
- rho as published (max sigmoid(a)) is shown beside what AdamW's decoupled weight decay alone
  would do to the gate under the run's own schedule (SPEC §6.4), and beside the measured loop
  contraction (SPEC §6.3).
Nothing here reads files: it takes a `Store`. `cart.experiments.report` renders it.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from cart.experiments.plans import metric_value
from cart.experiments.store import Store


# ---------------------------------------------------------------------- statistics
@dataclass
class Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single value."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def fmt(self, digits: int = 2) -> str:
        if not self.values:
            return "—"
        s = f"{self.mean:.{digits}f}"
        if self.std is not None:
            s += f" ± {self.std:.{digits}f}"
        return s + (f" (n={self.n})" if self.n != 1 else "")


def compare(a: Stat, b: Stat, noise_std: float | None = None, noise_source: str = "") -> dict:
    """a vs b: difference of means, relative to b, and whether it is within seed noise.

    With >= 2 seeds on both sides the standard error of the difference uses their own spreads;
    otherwise `noise_std` (a seed std measured elsewhere, named by noise_source) stands in."""
    diff = a.mean - b.mean
    out = {"a": a.mean, "b": b.mean, "diff": diff, "rel": diff / b.mean if b.mean else float("nan"), "na": a.n, "nb": b.n}
    if a.std is not None and b.std is not None:
        se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
        out.update(se=se, noise="seed spread of both sides")
    elif noise_std is not None:
        se = noise_std * math.sqrt(1 / max(a.n, 1) + 1 / max(b.n, 1))
        out.update(se=se, noise=noise_source or "seed spread measured elsewhere")
    else:
        out.update(se=None, noise="no seed spread available")
    if out["se"] is None:
        out["verdict"] = "single seed: spread unknown"
    elif abs(diff) <= 2 * out["se"]:
        out["verdict"] = "within seed noise"
    else:
        out["verdict"] = "beyond seed noise (> 2 SE)"
    return out


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties averaged."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else None


def decay_only_rho(gate_init: float, steps: int, lr: float, min_lr: float, warmup: int, weight_decay: float) -> float:
    """sigma(a) after `steps` AdamW steps with zero gradient: decoupled decay alone (SPEC §6.4)."""
    a = math.log(gate_init / (1 - gate_init))
    for s in range(steps):
        if s < warmup:
            lr_s = lr * (s + 1) / warmup
        else:
            p = min(1.0, (s - warmup) / max(1, steps - warmup))
            lr_s = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))
        a *= 1 - lr_s * weight_decay
    return 1 / (1 + math.exp(-a))


# ---------------------------------------------------------------------- study access
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

    def metric(self, metric: str) -> float | None:
        return metric_value(self.finals, metric)


class Study:
    """Read-only view of a study for analysis."""

    def __init__(self, store: Store, metric: str | None = None):
        self.store = store
        self.tier = store.meta("tier") or "?"
        self.metric = metric or store.meta("metric") or "wiki"
        self._members: dict[str, list[Member]] = defaultdict(list)
        self._ood: set[str] | None = None
        rows = store.members()
        finals = store.finals(m["run_id"] for m in rows)
        specs = {r.id: r.spec for r in store.runs()}
        for m in rows:
            self._members[m["stage"]].append(Member(m["stage"], m["label"], m["run_id"], m["name"], m["status"], m["seed"],
                                                    m["tags"], finals.get(m["run_id"], {}), specs.get(m["run_id"], {})))

    @property
    def stages(self) -> list[str]:
        return list(self._members)

    def members(self, stage: str, done: bool = True) -> list[Member]:
        return [m for m in self._members.get(stage, []) if m.status == "done" or not done]

    def stage_kind(self, stage: str) -> str | None:
        e = self.store.stage_expanded(stage)
        return e["definition"]["kind"] if e else None

    def stages_of_kind(self, kind: str) -> list[str]:
        return [s for s in self.stages if self.stage_kind(s) == kind]

    def valsets(self) -> list[str]:
        """Validation sets with final perplexities: in-domain first, then out-of-domain, each alphabetical."""
        sets: set[str] = set()
        for ms in self._members.values():
            for m in ms:
                sets.update(k[4:] for k in m.finals if k.startswith("ppl.") and k.count(".") == 1)
        ood = self.ood_sets()
        return sorted(sets, key=lambda s: (s in ood, s))

    def ood_sets(self) -> set[str]:
        """Validation sets the trainer marked out-of-domain (from the finals, else from the stored summaries)."""
        if self._ood is None:
            ood = {k[len("out_of_domain."):] for ms in self._members.values() for m in ms for k, v in m.finals.items()
                   if k.startswith("out_of_domain.") and v}
            if not ood:
                for row in self.store.db.execute("SELECT summary FROM results"):
                    final = json.loads(row["summary"]).get("final") or {}
                    ood |= {name for name, m in final.items() if isinstance(m, dict) and m.get("out_of_domain")}
            self._ood = ood
        return self._ood

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

    def seed_noise(self, d: int, P: int, R: int, metric: str | None = None) -> tuple[float | None, str]:
        """The seed std of a CART config, from any stage that ran it with >= 2 seeds."""
        for stage in self.stages:
            s = self.cells(stage, metric).get((d, P, R))
            if s is not None and s.std is not None:
                return s.std, f"seed std of CART d{d} P{P} R{R} in {stage} (n={s.n})"
        return None, ""

    def relative_seed_noise(self, d: int | None = None) -> float | None:
        """Median relative seed std (std / mean) of the selection metric over every multi-seed CART cell
        (optionally at one width): the noise floor for single-seed comparisons."""
        rel = []
        for stage in self.stages:
            for (dd, _, _), s in self.cells(stage).items():
                if s.std is not None and (d is None or dd == d):
                    rel.append(s.std / s.mean)
        return sorted(rel)[len(rel) // 2] if rel else None

    def series(self, run_id: int, name: str) -> list[tuple[int, float]]:
        """A metric over steps, from the run's own log, any event that has it."""
        rows = self.store.metrics(run_id, name)
        seen: dict[int, float] = {}
        for step, v in rows:
            if v is not None:
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


# ---------------------------------------------------------------------- the paper's comparisons
def stage1(study: Study, stage: str = "stage1") -> dict:
    """Best cell per width, P dominance, the benefit of more loops at the largest P."""
    cells = study.cells(stage)
    if not cells:
        return {}
    widths = sorted({d for d, _, _ in cells})
    Ps = sorted({p for _, p, _ in cells})
    Rs = sorted({r for _, _, r in cells})
    mean = {k: s.mean for k, s in cells.items()}
    best = {}
    for d in widths:
        at = {k: v for k, v in mean.items() if k[0] == d}
        k = min(at, key=at.get)
        m = _member_at(study, stage, k)
        best[d] = {"P": k[1], "R": k[2], "value": at[k], "finals": m.finals if m else {}}
    # P dominance: at each (d, R), is ppl strictly decreasing in P?  and is the largest P best?
    monotone, largest_best, total = 0, 0, 0
    for d in widths:
        for r in Rs:
            vals = [mean.get((d, p, r)) for p in Ps]
            if any(v is None for v in vals):
                continue
            total += 1
            monotone += all(a > b for a, b in zip(vals, vals[1:]))
            largest_best += min(range(len(Ps)), key=lambda i: vals[i]) == len(Ps) - 1
    Pmax = Ps[-1]
    benefit = {}
    for d in widths:
        lo, hi = mean.get((d, Pmax, Rs[0])), mean.get((d, Pmax, Rs[-1]))
        if lo is not None and hi is not None:
            benefit[d] = (lo - hi) / lo
    # which P is best at each (d, R): counts
    p_wins: dict[int, int] = defaultdict(int)
    for d in widths:
        for r in Rs:
            vals = {p: mean[(d, p, r)] for p in Ps if (d, p, r) in mean}
            if vals:
                p_wins[min(vals, key=vals.get)] += 1
    return {"widths": widths, "Ps": Ps, "Rs": Rs, "cells": cells, "best": best, "monotone_in_P": (monotone, total),
            "largest_P_best": (largest_best, total), "p_wins": dict(p_wins), "loop_benefit": benefit, "Pmax": Pmax,
            "R_range": (Rs[0], Rs[-1])}


def _member_at(study: Study, stage: str, key: tuple, seed: int | None = None) -> Member | None:
    for m in study.members(stage):
        t = m.tags
        if t.get("arch") == "cart" and (t["d"], t["P"], t["R"]) == key and (seed is None or m.seed == seed):
            return m
    return None


def stage2(study: Study, stage: str = "stage2", screen: str = "stage1") -> dict:
    """Stage 2 means ± std, best R per width, agreement with Stage 1 (Spearman and best-R flips)."""
    cells = study.cells(stage)
    if not cells:
        return {}
    s1 = study.cells(screen) if screen in study.stages else {}
    derivation = (study.store.stage_expanded(stage) or {}).get("derivation")
    widths = sorted({d for d, _, _ in cells})
    out_rows = []
    best_r2, best_r1, flips = {}, {}, {}
    for d in widths:
        at = {k: s for k, s in cells.items() if k[0] == d}
        kbest = min(at, key=lambda k: at[k].mean)
        best_r2[d] = kbest[2]
        shared = {k: s1[k] for k in at if k in s1}
        if shared:
            k1 = min(shared, key=lambda k: shared[k].mean)
            best_r1[d] = k1[2]
            flips[d] = k1[2] != kbest[2]
        for k, s in sorted(at.items()):
            noise = None
            others = [o for kk, o in at.items() if kk != k]
            row = {"d": d, "P": k[1], "R": k[2], "stat": s, "s1": s1.get(k), "best": k == kbest}
            if k != kbest:
                row["vs_best"] = compare(s, at[kbest], noise)
            out_rows.append(row)
    common = sorted(k for k in cells if k in s1)
    rho = spearman([s1[k].mean for k in common], [cells[k].mean for k in common])
    within = {}
    for d in widths:
        ks = [k for k in common if k[0] == d]
        within[d] = spearman([s1[k].mean for k in ks], [cells[k].mean for k in ks])
    return {"rows": out_rows, "widths": widths, "best_R": best_r2, "best_R_stage1": best_r1, "flips": flips,
            "spearman": rho, "n_common": len(common), "common": common, "spearman_within_width": within,
            "derivation": derivation, "cells": cells, "stage1_cells": s1}


def parity_gaps(study: Study, stage: str = "parity") -> list[dict]:
    """Per width: CART reference vs dense at stored / effective parity (and extra depths), over seeds."""
    rows = []
    by_width: dict[int, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
    for m in study.members(stage):
        role = "cart" if m.tags.get("role") == "reference" else f"dense-{m.tags.get('target')}-L{m.tags.get('layers')}"
        by_width[m.tags["d"]][role].append(m)
    for d in sorted(by_width):
        groups = by_width[d]
        cart_ms = groups.get("cart", [])
        cart = Stat([v for v in (m.metric(study.metric) for m in cart_ms) if v is not None])
        order = {"stored": 0, "effective": 1}
        for role, ms in sorted(groups.items(), key=lambda kv: (order.get(kv[1][0].tags.get("target"), 2), kv[0])):
            if role == "cart":
                continue
            dense = Stat([v for v in (m.metric(study.metric) for m in ms) if v is not None])
            if not dense.values or not cart.values:
                continue
            t = ms[0].tags
            cmp = compare(cart, dense)
            rows.append({"d": d, "target": t.get("target"), "layers": t.get("layers"), "dense_params": t.get("stored"),
                         "cart_params": {"stored": cart_ms[0].tags.get("stored"), "effective": cart_ms[0].tags.get("effective")} if cart_ms else {},
                         "P": cart_ms[0].tags.get("P") if cart_ms else None, "R": cart_ms[0].tags.get("R") if cart_ms else None,
                         "cart": cart, "dense": dense, "gap": cmp})
    return rows


def ablations(study: Study, stage: str = "ablations", baseline: str = "cart") -> list[dict]:
    """Each variant vs the same-seed full model; noise from the base config's seed spread."""
    ms = study.members(stage)
    if not ms:
        return []
    by_variant: dict[str, list[Member]] = defaultdict(list)
    for m in ms:
        by_variant[m.tags.get("variant", m.label)].append(m)
    base = by_variant.get(baseline, [])
    base_stat = Stat([v for v in (m.metric(study.metric) for m in base) if v is not None])
    noise, source = (None, "")
    if base:
        t = base[0].tags
        noise, source = study.seed_noise(t["d"], t["P"], t["R"])
    rows = []
    for v, vms in by_variant.items():
        stat = Stat([x for x in (m.metric(study.metric) for m in vms) if x is not None])
        row = {"variant": v, "title": vms[0].tags.get("title", v), "stat": stat, "members": vms,
               "finals": vms[0].finals, "stored": vms[0].tags.get("stored"), "effective": vms[0].tags.get("effective")}
        if v != baseline and base_stat.values and stat.values:
            row["vs_base"] = compare(stat, base_stat, noise, source)
        rows.append(row)
    return rows


def gap_decomposition(study: Study, ablation_stage: str = "ablations", parity_stage: str = "parity",
                      unshared: str = "unshared_core", baseline: str = "cart") -> dict | None:
    """CART (shared) -> unshared core -> dense at effective parity, at the ablation's width and seeds.

    All three values at the same seeds (the ablation's), so the parts add up; stated in
    log-perplexity (nats, additive) and as perplexity differences over the dense model's ppl."""
    ab = {r["variant"]: r for r in ablations(study, ablation_stage, baseline)}
    if baseline not in ab or unshared not in ab:
        return None
    base_m = ab[baseline]["members"]
    d, seeds = base_m[0].tags["d"], {m.seed for m in base_m}
    dense = [m for m in study.members(parity_stage)
             if m.tags.get("target") == "effective" and m.tags.get("d") == d and m.seed in seeds]
    if not dense:
        return None
    C = ab[baseline]["stat"].mean
    U = ab[unshared]["stat"].mean
    D = Stat([v for v in (m.metric(study.metric) for m in dense) if v is not None]).mean
    total = math.log(C / D)
    out = {"d": d, "seeds": sorted(seeds), "C": C, "U": U, "D": D, "dense_layers": dense[0].tags.get("layers"),
           "log": {"total": total, "sharing": math.log(C / U), "framing": math.log(U / D)},
           "rel_to_dense": {"total": (C - D) / D, "sharing": (C - U) / D, "framing": (U - D) / D}}
    out["share"] = {k: (out["log"][k] / total if total else float("nan")) for k in ("sharing", "framing")}
    return out


def paper_gap_decomposition() -> dict:
    from cart.experiments.published import GAP_SPLIT
    C, U, D = GAP_SPLIT
    total = math.log(C / D)
    return {"C": C, "U": U, "D": D, "log": {"total": total, "sharing": math.log(C / U), "framing": math.log(U / D)},
            "rel_to_dense": {"total": (C - D) / D, "sharing": (C - U) / D, "framing": (U - D) / D},
            "as_printed": {"sharing": (C - U) / C, "framing": (U - D) / U},
            "share": {"sharing": math.log(C / U) / total, "framing": math.log(U / D) / total}}


def variants(study: Study, stage: str) -> list[dict]:
    """A variants stage per width: each variant's stat, rho, contraction and params."""
    rows = []
    for m in study.members(stage):
        rows.append({"variant": m.tags.get("variant"), "d": m.tags.get("d"), "seed": m.seed, "value": m.metric(study.metric),
                     "rho": m.finals.get("rho_gate"), "member": m, "arch": m.tags.get("arch"),
                     "stored": m.tags.get("stored"), "effective": m.tags.get("effective")})
    return rows


def grouped(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, Stat]:
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r["value"] is not None:
            acc[tuple(r[k] for k in keys)].append(r["value"])
    return {k: Stat(v) for k, v in sorted(acc.items(), key=lambda kv: str(kv[0]))}


def rho_summary(study: Study, stage: str) -> list[dict]:
    """Per finished CART run of a stage: final rho, the decay-only prediction, the measured contraction."""
    out = []
    for m in study.members(stage):
        if m.tags.get("arch") != "cart":
            continue
        tr = m.spec.get("train") or {}
        model = m.spec.get("model") or {}
        pred = None
        if tr.get("steps") and "weight_decay" in tr:
            pred = decay_only_rho(model.get("gate_init", 0.9), int(tr["steps"]), float(tr["lr"]), float(tr["min_lr"]),
                                  int(tr["warmup_steps"]), float(tr["weight_decay"]))
        cs = study.contraction_series(m.run_id)
        out.append({"member": m, "d": m.tags["d"], "R": m.tags["R"], "P": m.tags["P"], "seed": m.seed,
                    "fidelity": model.get("fidelity"), "rho": m.finals.get("rho_gate"), "decay_only": pred,
                    "contraction": cs[-1][1] if cs else None})
    return out


def vary_r(study: Study, stage: str = "vary_r") -> list[dict]:
    """Per evaluated model: R -> {valset: ppl}, contraction per R, the trained R."""
    out = []
    for m in study.members(stage):
        s = study.store.summary(m.run_id) or {}
        rows = s.get("rows") or []
        curve: dict[Any, dict] = {}
        for row in rows:
            R = row.get("n_loops")
            curve[R] = {"ppl": {k: v.get("ppl") for k, v in (row.get("ppl") or {}).items()},
                        "tasks": row.get("tasks") or {}, "contraction": row.get("contraction_mean"),
                        "mean_loops": row.get("mean_loops")}
        src = study.store.db.execute("SELECT spec FROM runs WHERE key = ?", (m.spec.get("of"),)).fetchone()
        sampling = ((json.loads(src["spec"]).get("train") or {}).get("loop_sampling") or {}).get("kind", "fixed") if src else "fixed"
        out.append({"member": m, "label": m.label, "trained_R": s.get("trained_loops", m.tags.get("R")), "curve": curve,
                    "loop_sampling": sampling,
                    "d": m.tags.get("d"), "best": m.tags.get("best"), "source_stage": m.tags.get("source_stage"),
                    "variant": m.tags.get("variant")})
    return out


def throughput(study: Study) -> list[dict]:
    rows, seen = [], set()
    for stage in study.stages:
        for m in study.members(stage):
            if m.run_id in seen or m.spec.get("kind") != "train":
                continue
            seen.add(m.run_id)
            rows.append({"run": m.name, "stage": stage, "arch": m.tags.get("arch"), "d": m.tags.get("d"),
                         "P": m.tags.get("P"), "R": m.tags.get("R"), "layers": m.tags.get("layers"),
                         "stored": m.tags.get("stored"), "effective": m.tags.get("effective"),
                         "tokens_per_s": m.finals.get("tokens_per_s"), "mfu": m.finals.get("mfu"),
                         "wall_s": m.finals.get("train_time_s")})
    return rows


def _directional(c: dict, sign: int) -> str:
    """Verdict for a paper claim about the sign of a difference (sign 0: "no effect")."""
    noisy = not c["verdict"].startswith("beyond")
    if sign == 0:
        return "reproduced (no effect beyond seed noise)" if noisy else "not reproduced (an effect beyond seed noise)"
    same = c["diff"] * sign > 0
    if same:
        return "reproduced" if not noisy else "same direction, but within seed noise" if c["se"] is not None else "same direction (single seed)"
    return "contradicted (opposite, beyond seed noise)" if not noisy else "not reproduced (opposite direction, within noise)"


def findings(study: Study) -> list[dict]:
    """The paper's headline findings, each checked against this study: (finding, paper, ours, verdict)."""
    out = []
    s1 = stage1(study) if "stage1" in study.stages else {}
    if s1:
        mono, total = s1["monotone_in_P"]
        lb, _ = s1["largest_P_best"]
        noise = study.relative_seed_noise()
        out.append({"finding": f"More prelude layers help: P ordering at every (d, R)",
                    "paper": "P = 6 > 4 > 3 > 2 at all 16 (d, R) cells",
                    "ours": f"strictly monotone in P at {mono}/{total} cells; largest P (= {s1['Pmax']}) best at {lb}/{total}"
                            + (f" (single seed; seed std of a cell ≈ {100 * noise:.1f} %)" if noise else " (single seed)"),
                    "verdict": "reproduced" if mono == total else ("partly" if lb >= total / 2 else "not reproduced")})
        ben = s1["loop_benefit"]
        if len(ben) >= 2:
            ws = sorted(ben)
            grows = all(ben[a] <= ben[b] for a, b in zip(ws, ws[1:]))
            noise = study.relative_seed_noise()
            ntxt = f"; seed std of a cell ≈ {100 * noise:.1f} %" if noise else ""
            if ben[ws[-1]] <= 0:
                verdict = "not reproduced: more loops do not help at the largest width"
            elif grows:
                verdict = "reproduced (single seed)" if not noise or ben[ws[-1]] > 2 * noise else "same trend, within seed noise"
            else:
                verdict = "not reproduced (single seed)"
            out.append({"finding": f"The benefit of more loops (R {s1['R_range'][0]}→{s1['R_range'][1]} at the largest P) grows with width",
                        "paper": "−0.25 %, +1.72 %, +2.81 %, +5.24 % (d = 256 … 1024)",
                        "ours": ", ".join(f"d{d}: {100 * ben[d]:+.2f} %" for d in ws) + f" (single seed{ntxt})",
                        "verdict": verdict})
    s2 = stage2(study) if "stage2" in study.stages else {}
    if s2 and s2.get("best_R_stage1"):
        fl = s2["flips"]
        n_flip = sum(fl.values())
        out.append({"finding": "The best R in the screen is not the best R in the confirmation",
                    "paper": "the best R flips at every width; Spearman(Stage 1, Stage 2) = 0.905 over 8 cells",
                    "ours": f"best R differs at {n_flip}/{len(fl)} widths; Spearman = "
                            + (f"{s2['spearman']:.3f}" if s2["spearman"] is not None else "n/a") + f" over {s2['n_common']} cells",
                    "verdict": "reproduced" if n_flip == len(fl) else ("partly" if n_flip else "not reproduced")})
    par = parity_gaps(study) if "parity" in study.stages else []
    for target, paper_txt in (("stored", "dense 7L beats CART by ~1–2 % (20.13 vs 20.35)"),
                              ("effective", "dense 12L beats CART by ~10 % (18.32 vs 20.35)")):
        rows = [r for r in par if r["target"] == target]
        if rows:
            wins = sum(r["gap"]["diff"] > 0 for r in rows)
            beyond = sum(r["gap"]["diff"] > 0 and r["gap"]["verdict"].startswith("beyond") for r in rows)
            txt = "; ".join(f"d{r['d']}: CART {100 * r['gap']['rel']:+.1f} % vs dense {r['layers']}L ({r['gap']['verdict']})" for r in rows)
            opposite = sum(r["gap"]["diff"] < 0 and r["gap"]["verdict"].startswith("beyond") for r in rows)
            verdict = ("reproduced" if beyond == len(rows) else "partly" if wins else
                       "contradicted at this scale: CART is better, beyond seed noise" if opposite == len(rows) else "not reproduced")
            out.append({"finding": f"Dense beats CART at {target}-parameter parity", "paper": paper_txt, "ours": txt,
                        "verdict": verdict})
    ab = {r["variant"]: r for r in ablations(study)} if "ablations" in study.stages else {}
    if "unshared_core" in ab and "vs_base" in ab["unshared_core"]:
        c = ab["unshared_core"]["vs_base"]
        rels = {v: r["vs_base"]["rel"] for v, r in ab.items() if "vs_base" in r}
        most = min(rels, key=rels.get)
        out.append({"finding": "Unsharing the core (R distinct blocks) helps most among the ablations",
                    "paper": "19.22 vs 20.45 (−6.0 %); unshared self-attention core 19.27 next",
                    "ours": f"{100 * c['rel']:+.1f} % ({c['verdict']}); largest gain: {most} ({100 * rels[most]:+.1f} %)",
                    "verdict": _directional(c, -1) + ("" if most.startswith("unshared") else "; another ablation helps more")})
    for v, paper_txt, sign in (("unfrozen_kv", "20.14 vs 20.45 (−1.5 %): recomputing K/V helps a little", -1),
                               ("r1", "20.57 vs 20.45 (+0.6 %): one loop is a little worse", +1),
                               ("no_hyper", "20.49 vs 20.45: no effect", 0),
                               ("no_lti", "within seed noise", 0), ("no_loop_embedding", "within seed noise", 0)):
        if v in ab and "vs_base" in ab[v]:
            c = ab[v]["vs_base"]
            out.append({"finding": f"Ablation {v}", "paper": paper_txt, "ours": f"{100 * c['rel']:+.1f} % ({c['verdict']})",
                        "verdict": _directional(c, sign)})
    rho_rows = rho_summary(study, "stage2") if "stage2" in study.stages else []
    rho_rows = [r for r in rho_rows if r["rho"] is not None]
    if rho_rows:
        lo, hi = min(r["rho"] for r in rho_rows), max(r["rho"] for r in rho_rows)
        pred = [r["decay_only"] for r in rho_rows if r["decay_only"] is not None]
        fids = sorted({str(r["fidelity"]) for r in rho_rows})
        moved = [r["rho"] - 0.9 for r in rho_rows]
        # the measured change of rho from its 0.9 start, as a multiple of the change weight decay alone predicts
        ratios = [(r["rho"] - 0.9) / (r["decay_only"] - 0.9) for r in rho_rows
                  if r["decay_only"] is not None and abs(r["decay_only"] - 0.9) > 1e-9]
        if not ratios:
            verdict = "n/a"
        elif all(0.5 <= x <= 1.5 for x in ratios):
            verdict = "reproduced: ρ moves as weight decay alone would move it (it measures the optimizer, not the loop)"
        else:
            med = sorted(ratios)[len(ratios) // 2]
            verdict = (f"not reproduced at this scale: ρ's change is {med:+.1f}x the decay-alone change (median), so the "
                       f"gradient, not the decay, moves the gate here")
        out.append({"finding": "ρ = max σ(a) ends in a narrow band below its 0.9 start (SPEC §6.4: what weight decay alone does)",
                    "paper": "0.790–0.830 after 30.5k steps; decay alone predicts 0.791",
                    "ours": f"{lo:.4f}–{hi:.4f} ({'/'.join(fids)} fidelity; change from 0.9: {min(moved):+.4f} … {max(moved):+.4f}); "
                            "decay alone predicts " + (f"{min(pred):.4f}–{max(pred):.4f}" if pred else "n/a"),
                    "verdict": verdict})
    vr = [r for r in vary_r(study)] if "vary_r" in study.stages else []
    spreads = {}
    for r in vr:
        curve = {R: c for R, c in r["curve"].items() if isinstance(R, int)}
        if not curve or r["trained_R"] not in curve:
            continue
        vals = {R: c["ppl"].get(study.metric) for R, c in curve.items()}
        vals = {R: v for R, v in vals.items() if v is not None}
        if not vals:
            continue
        Rb = min(vals, key=vals.get)
        tr = r["trained_R"]
        lo, hi = min(vals), max(vals)
        up_lo, up_hi = vals[lo] / vals[tr] - 1, vals[hi] / vals[tr] - 1
        spreads[r["label"]] = (max(vals.values()) / min(vals.values()) - 1, r["loop_sampling"])
        if r["loop_sampling"] != "fixed":
            continue  # trained at many R: the claim is about fixed-R training; see the robustness finding below
        if lo < tr < hi and up_lo > 0 and up_hi > 0:
            verdict = "reproduced" if min(up_lo, up_hi) > 0.05 else "reproduced, but much milder"
            if Rb != tr:
                verdict += f" (best R = {Rb}, not the trained {tr})"
        else:
            verdict = "not reproduced"
        out.append({"finding": f"Variable R at inference degrades on both sides of the trained R ({r['label']})",
                    "paper": "LAMBADA ppl 2632.6 (R2), 163.7 (R6, trained), 269.4 (R16): +1508 % / +64 %",
                    "ours": f"ppl_{study.metric} R{lo} {_pct_txt(up_lo)}, R{hi} {_pct_txt(up_hi)} vs the trained R{tr}; best R = {Rb}",
                    "verdict": verdict})
    vt = {r["label"] for r in vr if r.get("source_stage") == "vary_r_train"}
    fixed = [v for k, v in spreads.items() if v[1] == "fixed" and k in vt]
    sampled = [v for k, v in spreads.items() if v[1] != "fixed" and k in vt]
    if fixed and sampled:
        out.append({"finding": "Training-time variable R makes quality robust to R at inference (SPEC §5: the fix the paper names)",
                    "paper": "not run (named as future work)",
                    "ours": f"ppl spread over the inference R grid: fixed R {100 * fixed[0][0]:.1f} %, sampled R {100 * sampled[0][0]:.1f} %",
                    "verdict": "supported (single seed)" if sampled[0][0] < fixed[0][0] / 2 else "not supported (single seed)"})
    # SPEC §6.2: is the published loop contractive? the measured per-loop contraction by fidelity
    rows = [r for st in ("stage2", "fidelity") if st in study.stages for r in rho_summary(study, st) if r["contraction"] is not None]
    by_f: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_f[str(r["fidelity"])].append(r["contraction"])
    if by_f:
        txt = "; ".join(f"{f}: {min(v):.2f}–{max(v):.2f}" for f, v in sorted(by_f.items()))
        paper_ok = by_f.get("paper") and max(by_f["paper"]) < 1
        out.append({"finding": "The LTI gate keeps the recurrence stable (contractive loop)",
                    "paper": "claimed, with ρ = max σ(a) < 1 as the evidence",
                    "ours": f"measured ‖h_(r+1) − h_r‖ / ‖h_r − h_(r−1)‖ at the end of training, {txt} (< 1 = contractive)",
                    "verdict": ("reproduced" if paper_ok else "not reproduced for the published gate (it expands)")
                               + ("; the stable gate contracts" if by_f.get("stable") and max(by_f["stable"]) < 1 else "")})
    return out


def _pct_txt(v: float) -> str:
    return f"{100 * v:+.1f} %"


__all__ = ["Stat", "Study", "Member", "compare", "spearman", "ranks", "decay_only_rho", "stage1", "stage2", "parity_gaps",
           "ablations", "gap_decomposition", "paper_gap_decomposition", "variants", "grouped", "rho_summary", "vary_r",
           "throughput", "findings"]
