"""The study's comparisons, computed from a `Study` as plain data (rendered by `cart.experiments.report`).

Every comparison between architectures is a Welch test over seeds on log-perplexity (`stats.welch`),
carrying n, the effect with its 95 % interval and the minimum detectable effect; members that do not
clear their n-gram floor are listed with the comparison, and verdicts are withheld for them
(`claims.py`). Single-seed stages (the Stage 1 screen) get no test: their noise is stated from the
multi-seed stages, for the difference of two cells (√2 × one cell's seed std).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from cart.experiments.analysis.stats import Comparison, Stat, spearman, welch
from cart.experiments.analysis.view import IN_DOMAIN, Member, Study, metric_from_finals


def _cmp(study: Study, a: list[Member], b: list[Member], metric: str | None = None) -> Comparison | None:
    va, vb = study.values(a, metric), study.values(b, metric)
    return welch(va, vb) if va and vb else None


# ---------------------------------------------------------------------- Stage 1 and Stage 2
def stage1(study: Study, stage: str = "stage1") -> dict:
    """Best cell per width, P dominance, the benefit of more loops at the largest P (single seed)."""
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
        best[d] = {"P": k[1], "R": k[2], "value": at[k], "finals": m.finals if m else {}, "member": m}
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
    p_wins: dict[int, int] = defaultdict(int)
    for d in widths:
        for r in Rs:
            vals = {p: mean[(d, p, r)] for p in Ps if (d, p, r) in mean}
            if vals:
                p_wins[min(vals, key=vals.get)] += 1
    # the noise of a difference of two single-seed cells: sqrt(2) x one cell's relative seed std
    noise = {d: study.relative_seed_noise(d) for d in widths}
    diff_noise = {d: (math.sqrt(2) * v if v is not None else None) for d, v in noise.items()}
    members = study.members(stage)
    return {"widths": widths, "Ps": Ps, "Rs": Rs, "cells": cells, "best": best, "monotone_in_P": (monotone, total),
            "largest_P_best": (largest_best, total), "p_wins": dict(p_wins), "loop_benefit": benefit, "Pmax": Pmax,
            "R_range": (Rs[0], Rs[-1]), "cell_noise": noise, "difference_noise": diff_noise,
            "below_floor": study.below_floor(members), "n_members": len(members)}


def _member_at(study: Study, stage: str, key: tuple, seed: int | None = None) -> Member | None:
    for m in study.members(stage):
        t = m.tags
        if t.get("arch") == "cart" and (t["d"], t["P"], t["R"]) == key and (seed is None or m.seed == seed):
            return m
    return None


def _cell_members(study: Study, stage: str, key: tuple) -> list[Member]:
    return [m for m in study.members(stage) if m.tags.get("arch") == "cart" and (m.tags["d"], m.tags["P"], m.tags["R"]) == key]


def stage2(study: Study, stage: str = "stage2", screen: str = "stage1") -> dict:
    """Stage 2 means with intervals, each R against the best R of its width (Welch), agreement with Stage 1."""
    cells = study.cells(stage)
    if not cells:
        return {}
    s1 = study.cells(screen) if screen in study.stages else {}
    widths = sorted({d for d, _, _ in cells})
    rows = []
    best_r2, best_r1, flips, resolved = {}, {}, {}, {}
    for d in widths:
        at = {k: s for k, s in cells.items() if k[0] == d}
        kbest = min(at, key=lambda k: at[k].mean)
        best_r2[d] = kbest[2]
        shared = {k: s1[k] for k in at if k in s1}
        if shared:
            k1 = min(shared, key=lambda k: shared[k].mean)
            best_r1[d] = k1[2]
            flips[d] = k1[2] != kbest[2]
        best_ms = _cell_members(study, stage, kbest)
        sig = []
        for k, s in sorted(at.items()):
            row = {"d": d, "P": k[1], "R": k[2], "stat": s, "s1": s1.get(k), "best": k == kbest,
                   "members": _cell_members(study, stage, k)}
            if k != kbest:
                row["vs_best"] = _cmp(study, row["members"], best_ms)
                sig.append(bool(row["vs_best"] and row["vs_best"].significant))
            rows.append(row)
        # is the best R of this width distinguishable from every other R (95 % intervals)?
        resolved[d] = bool(sig) and all(sig)
    common = sorted(k for k in cells if k in s1)
    rho = spearman([s1[k].mean for k in common], [cells[k].mean for k in common])
    within = {d: spearman([s1[k].mean for k in common if k[0] == d], [cells[k].mean for k in common if k[0] == d]) for d in widths}
    return {"rows": rows, "widths": widths, "best_R": best_r2, "best_R_stage1": best_r1, "flips": flips,
            "best_R_resolved": resolved, "spearman": rho, "n_common": len(common), "common": common,
            "spearman_within_width": within, "derivation": study.stage_derivation(stage), "cells": cells,
            "stage1_cells": s1, "below_floor": study.below_floor(study.members(stage))}


# ---------------------------------------------------------------------- parity, ablations, variants
def parity_gaps(study: Study, stage: str = "parity") -> list[dict]:
    """Per width: CART reference vs each dense baseline (stored / effective parity, extra depths), Welch over seeds."""
    rows = []
    by_width: dict[int, dict[str, list[Member]]] = defaultdict(lambda: defaultdict(list))
    for m in study.members(stage):
        role = "cart" if m.tags.get("role") == "reference" else f"dense-{m.tags.get('target')}-L{m.tags.get('layers')}"
        by_width[m.tags["d"]][role].append(m)
    order = {"stored": 0, "effective": 1, "extra": 2}
    for d in sorted(by_width):
        groups = by_width[d]
        cart_ms = groups.get("cart", [])
        for role, ms in sorted(groups.items(), key=lambda kv: (order.get(kv[1][0].tags.get("target"), 3), kv[0])):
            if role == "cart" or not cart_ms:
                continue
            c = _cmp(study, cart_ms, ms)
            if c is None:
                continue
            t = ms[0].tags
            rows.append({"d": d, "target": t.get("target"), "layers": t.get("layers"), "dense_params": t.get("stored"),
                         "cart_params": {"stored": cart_ms[0].tags.get("stored"), "effective": cart_ms[0].tags.get("effective")},
                         "P": cart_ms[0].tags.get("P"), "R": cart_ms[0].tags.get("R"),
                         "cart": Stat(study.values(cart_ms)), "dense": Stat(study.values(ms)), "gap": c,
                         "below_floor": study.below_floor(cart_ms + ms)})
    return rows


def ablations(study: Study, stage: str = "ablations", baseline: str = "cart") -> list[dict]:
    """Each variant vs the full model at the same seeds (Welch over seeds; single seeds are not tested)."""
    ms = study.members(stage)
    if not ms:
        return []
    by_variant: dict[str, list[Member]] = defaultdict(list)
    for m in ms:
        by_variant[m.tags.get("variant", m.label)].append(m)
    base = by_variant.get(baseline, [])
    rows = []
    for v, vms in by_variant.items():
        row = {"variant": v, "title": vms[0].tags.get("title", v), "stat": Stat(study.values(vms)), "members": vms,
               "stored": vms[0].tags.get("stored"), "effective": vms[0].tags.get("effective"),
               "below_floor": study.below_floor(vms)}
        if v != baseline and base:
            row["vs_base"] = _cmp(study, vms, base)
        rows.append(row)
    return rows


def gap_decomposition(study: Study, ablation_stage: str = "ablations", parity_stage: str = "parity",
                      unshared: str = "unshared_core", baseline: str = "cart") -> dict | None:
    """CART (shared) -> unshared core -> dense at effective parity, at the ablation's width and seeds.

    All three at the same seeds (the ablation's), so the parts add up: log-perplexity (nats, additive)
    and perplexity differences over one denominator (the dense model's perplexity)."""
    ab = {r["variant"]: r for r in ablations(study, ablation_stage, baseline)}
    if baseline not in ab or unshared not in ab:
        return None
    base_m = ab[baseline]["members"]
    d, seeds = base_m[0].tags["d"], {m.seed for m in base_m}
    dense = [m for m in study.members(parity_stage)
             if m.tags.get("target") == "effective" and m.tags.get("d") == d and m.seed in seeds]
    if not dense:
        return None
    C, U = ab[baseline]["stat"].mean, ab[unshared]["stat"].mean
    D = Stat(study.values(dense)).mean
    total = math.log(C / D)
    out = {"d": d, "seeds": sorted(seeds), "C": C, "U": U, "D": D, "dense_layers": dense[0].tags.get("layers"),
           "log": {"total": total, "sharing": math.log(C / U), "framing": math.log(U / D)},
           "rel_to_dense": {"total": (C - D) / D, "sharing": (C - U) / D, "framing": (U - D) / D}}
    out["share"] = {k: (out["log"][k] / total if total else float("nan")) for k in ("sharing", "framing")}
    return out


def paper_gap_decomposition() -> dict:
    """The paper's three numbers (published.GAP_SPLIT) decomposed the same way, plus each step relative to
    its own starting and ending model (the two readings of the paper's "~5 % + ~5 %")."""
    from cart.experiments.published import GAP_SPLIT
    C, U, D = GAP_SPLIT
    total = math.log(C / D)
    return {"C": C, "U": U, "D": D, "log": {"total": total, "sharing": math.log(C / U), "framing": math.log(U / D)},
            "rel_to_dense": {"total": (C - D) / D, "sharing": (C - U) / D, "framing": (U - D) / D},
            "rel_to_start": {"sharing": (C - U) / C, "framing": (U - D) / U},
            "rel_to_end": {"sharing": (C - U) / U, "framing": (U - D) / D},
            "share": {"sharing": math.log(C / U) / total, "framing": math.log(U / D) / total}}


def variants(study: Study, stage: str, baseline: str | None = None) -> list[dict]:
    """A variants stage per (variant, width): values over seeds and each variant against the baseline
    variant (default: the stage's first) at the same width."""
    groups: dict[tuple, list[Member]] = defaultdict(list)
    for m in study.members(stage):
        groups[(m.tags.get("variant"), m.tags.get("d"))].append(m)
    if not groups:
        return []
    baseline = baseline or next(iter(groups))[0]
    rows = []
    for (v, d), ms in groups.items():
        row = {"variant": v, "d": d, "arch": ms[0].tags.get("arch"), "members": ms, "stat": Stat(study.values(ms)),
               "stored": ms[0].tags.get("stored"), "effective": ms[0].tags.get("effective"),
               "title": ms[0].tags.get("title", v), "below_floor": study.below_floor(ms)}
        if v != baseline and (baseline, d) in groups:
            row["vs_base"] = _cmp(study, ms, groups[(baseline, d)])
            row["baseline"] = baseline
        rows.append(row)
    return rows


def grid_effects(study: Study, stage: str) -> dict | None:
    """A grid stage with seeds: its cells (the grid fields' values -> members) and, for each grid field,
    every value against the field's first value with the other fields held fixed (Welch over seeds)."""
    e = study.store.stage_expanded(stage) or {}
    grid = ((e.get("definition") or {}).get("raw") or {}).get("grid") or {}
    fields = [f for f, vals in grid.items() if isinstance(vals, list)]
    if not fields:
        return None
    tag_of = {"d_model": "d", "n_prelude": "P", "n_loops": "R", "n_layers": "layers"}
    cells: dict[tuple, list[Member]] = defaultdict(list)
    for m in study.members(stage):
        key = tuple(m.tags.get(tag_of.get(f, f), (m.spec.get("model") or {}).get(f)) for f in fields)
        cells[key].append(m)
    effects = []
    for i, f in enumerate(fields):
        values = sorted({k[i] for k in cells}, key=lambda v: (v is None, v))
        for rest in sorted({k[:i] + k[i + 1:] for k in cells}, key=str):
            base = cells.get(rest[:i] + (values[0],) + rest[i:])
            for v in values[1:]:
                other = cells.get(rest[:i] + (v,) + rest[i:])
                if base and other:
                    at = {g: x for g, x in zip(fields[:i] + fields[i + 1:], rest)}
                    effects.append({"field": f, "from": values[0], "to": v, "at": at, "cmp": _cmp(study, other, base)})
    return {"fields": [tag_of.get(f, f) for f in fields], "cells": dict(sorted(cells.items(), key=lambda kv: str(kv[0]))),
            "effects": effects}


# ---------------------------------------------------------------------- the gate and weight decay
def gate_decay(study: Study, member: Member) -> dict | None:
    """The gate's trajectory against what AdamW's decoupled weight decay alone would do to it (SPEC §6.4).

    Decay-only: a_t = a_0 · Π (1 − lr_s · wd) with the run's own schedule (`cart.train.optim`), the
    same for every channel (they start equal). Measured: the mean, max (= ρ), min and std of σ(a)
    over the run's log steps. `explained` = (decay-only change) / (measured change of the mean) at
    the last logged step: 1 means weight decay alone accounts for the whole movement."""
    from cart.config import config_from_dict
    from cart.train.optim import WarmupCosine, decay_only_trajectory, decays_everything

    tr, model = member.spec.get("train") or {}, member.spec.get("model") or {}
    if member.tags.get("arch") != "cart" or not model.get("lti_gate", True) or not tr.get("steps"):
        return None
    cfg = config_from_dict(model)
    steps = int(tr["steps"])
    decayed = decays_everything(cfg, tr.get("decay_everything"))
    wd = float(tr.get("weight_decay", 0.0)) if decayed else 0.0
    sched = WarmupCosine(float(tr["lr"]), float(tr["min_lr"]), int(tr["warmup_steps"]), steps)
    a0 = math.log(cfg.gate_init / (1 - cfg.gate_init))
    traj = [1 / (1 + math.exp(-a)) for a in decay_only_trajectory(a0, sched, wd, steps)]
    series = {k: study.series(member.run_id, k) for k in ("gate_mean", "gate_max", "gate_min", "gate_std")}
    series["gate_max"] = series["gate_max"] or study.series(member.run_id, "rho_gate")
    mean = series["gate_mean"]
    s0 = cfg.gate_init
    out = {"member": member, "decayed": decayed, "weight_decay": wd, "gate_init": s0, "steps": steps, "decay_only": traj,
           "series": series, "explained": None, "max_minus_pred": None, "mean_minus_pred": None}
    if mean:
        step, m_last = mean[-1]
        pred = traj[min(step, steps)]
        measured, predicted = m_last - s0, pred - s0
        out["explained"] = predicted / measured if abs(measured) > 1e-9 else None
        out["mean_minus_pred"] = max(abs(v - traj[min(s, steps)]) for s, v in mean)
        out["final"] = {"step": step, "mean": m_last, "pred": pred,
                        "max": series["gate_max"][-1][1] if series["gate_max"] else None}
    return out


def rho_summary(study: Study, stage: str) -> list[dict]:
    """Per finished CART run of a stage: final ρ and gate mean, the decay-only prediction, the measured contraction."""
    out = []
    for m in study.members(stage):
        if m.tags.get("arch") != "cart":
            continue
        g = gate_decay(study, m)
        cs = study.contraction_series(m.run_id)
        out.append({"member": m, "d": m.tags["d"], "R": m.tags["R"], "P": m.tags["P"], "seed": m.seed,
                    "fidelity": (m.spec.get("model") or {}).get("fidelity"), "rho": m.finals.get("rho_gate"),
                    "gate_mean": m.finals.get("gate_mean"),
                    "decay_only": g["decay_only"][-1] if g else None, "explained": g["explained"] if g else None,
                    "decayed": g["decayed"] if g else None, "contraction": cs[-1][1] if cs else None, "gate": g})
    return out


# ---------------------------------------------------------------------- variable R, throughput, floors
def _curve_ppl(per_set: dict[str, dict]) -> dict[str, float | None]:
    """One R's perplexity per set and, when every in-domain set has its loss and token count, the
    token-weighted in-domain mix (the study's default metric) over the tokens scored at that R."""
    finals: dict[str, float] = {}
    for name, r in per_set.items():
        for k in ("ppl", "loss", "tokens"):
            if r.get(k) is not None:
                finals[f"{k}.{name}"] = float(r[k])
        finals[f"out_of_domain.{name}"] = float(bool(r.get("out_of_domain")))
    out = {k: v.get("ppl") for k, v in per_set.items()}
    mix = metric_from_finals(finals, IN_DOMAIN)
    if mix is not None:
        out[IN_DOMAIN] = mix
    return out


def vary_r(study: Study, stage: str = "vary_r") -> list[dict]:
    """Per evaluated model: R -> {valset: ppl}, contraction per R, the trained R."""
    out = []
    for m in study.members(stage):
        s = study.store.summary(m.run_id) or {}
        curve: dict[Any, dict] = {}
        for row in s.get("rows") or []:
            curve[row.get("n_loops")] = {"ppl": _curve_ppl(row.get("ppl") or {}),
                                         "tasks": row.get("tasks") or {}, "contraction": row.get("contraction_mean"),
                                         "mean_loops": row.get("mean_loops")}
        src = study.source_spec(m) or {}
        sampling = ((src.get("train") or {}).get("loop_sampling") or {}).get("kind", "fixed")
        out.append({"member": m, "label": m.label, "trained_R": s.get("trained_loops", m.tags.get("R")), "curve": curve,
                    "loop_sampling": sampling, "d": m.tags.get("d"), "best": m.tags.get("best"),
                    "source_stage": m.tags.get("source_stage"), "variant": m.tags.get("variant")})
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
                         "wall_s": m.finals.get("train_time_s"), "device": (m.spec.get("train") or {}).get("device")})
    return rows


def floors(study: Study) -> list[dict]:
    """Every finished training run: its metric, its n-gram floor and the ratio, per stage."""
    rows, seen = [], set()
    for stage in study.stages:
        for m in study.members(stage):
            if m.run_id in seen or m.spec.get("kind") != "train":
                continue
            seen.add(m.run_id)
            rows.append({"run": m.name, "stage": stage, "member": m, "ppl": m.metric(study.metric),
                         "floor": m.floor(study.metric), "ratio": m.floor_ratio(study.metric),
                         "clears": m.clears_floor(study.metric, study.floor_margin),
                         "tokens": m.finals.get("tokens")})
    return rows


__all__ = ["stage1", "stage2", "grid_effects", "parity_gaps", "ablations", "gap_decomposition", "paper_gap_decomposition", "variants",
           "gate_decay", "rho_summary", "vary_r", "throughput", "floors"]
