"""The paper's claims as data: one record per claim, and the findings table generated from them.

A `Claim` says what the paper claims, which published numbers back it (rendered from
`cart.experiments.published`, never retyped), how a study measures it, and the rule that turns the
measurement into a verdict. `findings(study)` evaluates every claim the study has the stages for.

Verdict rules (see `stats.py`):
- comparisons of architectures: Welch's t-test over seeds on log-perplexity; "reproduced" /
  "contradicted" only when the 95 % interval excludes no change; otherwise "undetermined at this
  power" with the minimum detectable effect; "no effect" claims need equivalence within a stated
  margin; an arm with one seed: "single seed, not tested";
- no verdict is drawn from runs that do not beat their n-gram floor (the token-matched Kneser-Ney
  bigram, by the study's margin): such claims read "not tested: below the n-gram floor";
- single-seed screens (Stage 1) and single models (variable R) are described, not tested.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from cart.experiments import published as PUB
from cart.experiments.analysis import comparisons as C
from cart.experiments.analysis.stats import Comparison, directional_verdict, null_verdict, paired
from cart.experiments.analysis.view import Member, Study

NULL_MARGIN = 0.02  # a "no effect" claim is reproduced when the effect is shown to lie within ±2 %


@dataclass
class Finding:
    ours: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str                      # what the paper claims
    paper: Callable[[], str]            # the published numbers, from published.py
    measure: str                        # how a study measures it
    rule: str                           # how the measurement becomes a verdict
    needs: tuple[str, ...]              # stages the study must have, by name
    evaluate: Callable[[Study], Finding | None]
    kinds: tuple[str, ...] = ()         # stage kinds the study must have at least one stage of (any name)


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:+.{digits}f} %"


def _floor_block(study: Study, members: list[Member]) -> str | None:
    below = study.below_floor(members)
    if not below:
        return None
    margin = f" by {100 * study.floor_margin:.0f} %" if study.floor_margin else ""
    return f"not tested: {len(below)} of {len(members)} runs do not beat their n-gram floor{margin}"


def _tested(study: Study, members: list[Member], c: Comparison | None, verdict: Callable[[Comparison], str]) -> str:
    if c is None:
        return "not measured"
    return _floor_block(study, members) or verdict(c)


def _combine(verdicts: list[str]) -> str:
    """One verdict over several widths: the shared verdict, or each width's."""
    return verdicts[0] if len(set(verdicts)) == 1 else "mixed: " + "; ".join(verdicts)


# ---------------------------------------------------------------------- evaluations
def _p_order(study: Study) -> Finding | None:
    s1 = C.stage1(study)
    if not s1:
        return None
    mono, total = s1["monotone_in_P"]
    lb, _ = s1["largest_P_best"]
    noise = ", ".join(f"{100 * v:.1f} % at d{d}" for d, v in s1["difference_noise"].items() if v is not None)
    return Finding(f"strictly monotone in P at {mono}/{total} (d, R) cells; the largest P (= {s1['Pmax']}) best at {lb}/{total}"
                   + (f"; seed noise alone separates two single-seed cells by ~{noise} (1 SD)" if noise else ""),
                   "single seed, not tested")


def _loop_benefit(study: Study) -> Finding | None:
    s1 = C.stage1(study)
    if not s1 or len(s1["loop_benefit"]) < 2:
        return None
    ben = s1["loop_benefit"]
    return Finding(", ".join(f"d{d}: {_pct(ben[d], 2)}" for d in sorted(ben)), "single seed, not tested")


def _rank_reversal(study: Study) -> Finding | None:
    s2 = C.stage2(study)
    if not s2 or not s2.get("best_R_stage1"):
        return None
    parts, verdicts = [], []
    for d in sorted(s2["best_R_stage1"]):
        r1, r2 = s2["best_R_stage1"][d], s2["best_R"][d]
        if r1 == r2:
            parts.append(f"d{d}: R{r1} best in both")
            verdicts.append("not reproduced (no flip)")
            continue
        row = next(r for r in s2["rows"] if r["d"] == d and r["R"] == r1)
        c = row.get("vs_best")
        parts.append(f"d{d}: R{r1} → R{r2}; Stage 2 R{r1} vs R{r2} " + (c.text() if c else "—"))
        verdicts.append(_tested(study, row["members"], c, lambda c: directional_verdict(c, +1)))
    sp = s2["spearman"]
    return Finding("; ".join(parts) + f". Spearman = {'n/a' if sp is None else f'{sp:.3f}'} over {s2['n_common']} cells",
                   _combine(verdicts))


def _parity(target: str) -> Callable[[Study], Finding | None]:
    def ev(study: Study) -> Finding | None:
        stages = study.stages_of_kind("parity")
        txt, verdicts = [], []
        for stage in stages:
            gaps = C.parity_gaps(study, stage)
            rows = [r for r in gaps if r["target"] == target]
            if target == "effective":  # where the paper's hand-picked depth ran too (d = 1024: 12 layers), it is the comparison
                extra = {r["d"]: r for r in gaps if r["target"] == "extra"}
                rows = [extra.get(r["d"], r) for r in rows]
            where = f"{stage}, " if len(stages) > 1 else ""
            for r in rows:
                txt.append(f"{where}d{r['d']}: CART vs dense {r['layers']}L {r['gap'].text()}")
                members = _parity_members(study, stage, r)
                verdicts.append(_tested(study, members, r["gap"], lambda c: directional_verdict(c, +1)))
        return Finding("; ".join(txt), _combine(verdicts)) if txt else None
    return ev


def _parity_members(study: Study, stage: str, row: dict) -> list[Member]:
    out = []
    for m in study.members(stage):
        if m.tags.get("d") != row["d"]:
            continue
        if m.tags.get("role") == "reference" or m.tags.get("layers") == row["layers"]:
            out.append(m)
    return out


def _ablation(variant: str, sign: int | None) -> Callable[[Study], Finding | None]:
    """sign = −1: the variant is better; +1: worse; None: no effect (equivalence)."""
    def ev(study: Study) -> Finding | None:
        rows = {r["variant"]: r for r in C.ablations(study)}
        if variant not in rows or "vs_base" not in rows[variant] or rows[variant]["vs_base"] is None:
            return None
        c = rows[variant]["vs_base"]
        members = rows[variant]["members"] + rows.get("cart", {"members": []})["members"]
        rule = (lambda c: null_verdict(c, NULL_MARGIN)) if sign is None else (lambda c: directional_verdict(c, sign))
        return Finding(c.text(), _tested(study, members, c, rule))
    return ev


def _gate_rows(study: Study) -> list[dict]:
    """`rho_summary` of every finished CART run in the study, once each (stages share runs)."""
    rows, seen = [], set()
    for st in study.stages:
        for r in C.rho_summary(study, st):
            if r["member"].run_id not in seen:
                seen.add(r["member"].run_id)
                rows.append(r)
    return rows


def _rho_decay(study: Study) -> Finding | None:
    rows = [r for r in _gate_rows(study) if r["gate"] and r["gate"].get("final") and r["decayed"]]
    if not rows:
        return None
    expl = sorted(r["explained"] for r in rows if r["explained"] is not None)
    dev = max(r["gate"]["mean_minus_pred"] for r in rows)
    rhos = [r["rho"] for r in rows if r["rho"] is not None]
    ours = (f"{len(rows)} runs with decay on the gate: ρ {min(rhos):.4f}–{max(rhos):.4f}; weight decay alone explains "
            + (f"{100 * expl[0]:.0f}–{100 * expl[-1]:.0f} % (median {100 * expl[len(expl) // 2]:.0f} %) " if expl else "— ")
            + f"of the mean gate's change; the mean gate stays within {dev:.4f} of the decay-only trajectory")
    if not expl:
        verdict = "not measured (the gate did not move)"
    elif all(0.75 <= e <= 1.33 for e in expl):
        verdict = "reproduced: the gate's movement is what weight decay alone does (ρ measures the optimizer, not the loop)"
    elif all(e < 0.5 for e in expl):
        verdict = "not reproduced: the gradient, not weight decay, moves the gate here"
    else:
        verdict = "partly: weight decay explains part of the gate's movement"
    return Finding(ours, verdict)


def _contraction(study: Study) -> Finding | None:
    by_f: dict[str, list[float]] = {}
    for r in _gate_rows(study):
        if r["contraction"] is not None and r["gate"] is not None:  # the gate's claim: runs with a gate
            by_f.setdefault(str(r["fidelity"]), []).append(r["contraction"])
    if not by_f:
        return None
    txt = "; ".join(f"{f}: {min(v):.2f}–{max(v):.2f} (n = {len(v)})" for f, v in sorted(by_f.items()))
    paper = by_f.get("paper")
    verdict = ("not measured for the published gate" if not paper else
               "reproduced (contractive)" if max(paper) < 1 else
               "not reproduced for the published gate: its loop expands (> 1) in every run" if min(paper) > 1 else
               "mixed: the published gate's loop expands in some runs")
    if by_f.get("stable") and max(by_f["stable"]) < 1:
        verdict += "; the stable gate contracts in every run"
    return Finding(f"measured ‖h_(r+1) − h_r‖ / ‖h_r − h_(r−1)‖ at the end of training: {txt}", verdict)


def _vary_r(study: Study) -> Finding | None:
    """Per model trained at a fixed R (seeds pooled): ppl at the fewest and the most loops evaluated
    against the trained R, each a paired t-test over the seeds (the same models run two ways)."""
    groups: dict[tuple, list[dict]] = {}
    for stage in study.stages_of_kind("vary_r"):
        for r in C.vary_r(study, stage):
            if r["loop_sampling"] == "fixed":
                groups.setdefault((r["source_stage"], r["variant"] or r["label"], r["trained_R"]), []).append(r)
    parts, verdicts = [], []
    for (src, name, tr), rs in groups.items():
        vals = [{R: c["ppl"].get(study.metric) for R, c in r["curve"].items() if isinstance(R, int)} for r in rs]
        vals = [{R: v for R, v in v_.items() if v is not None} for v_ in vals]
        Rs = sorted(set.intersection(*(set(v) for v in vals)))
        if tr not in Rs or len(Rs) < 2:
            continue
        sides = []
        for R in (Rs[0], Rs[-1]):
            if R == tr:
                continue
            c = paired([v[R] for v in vals], [v[tr] for v in vals])
            sides.append((R, c))
        label = f"{src}: {name}" if src else str(name)
        parts.append(f"{label} (trained R{tr}): " + "; ".join(f"R{R} {c.text()}" for R, c in sides))
        if len(rs) < 2:
            verdicts.append("single model per curve, not tested")
        elif all(c.significant and c.rel > 0 for _, c in sides) and len(sides) == 2:
            verdicts.append("reproduced")
        elif any(c.significant and c.rel < 0 for _, c in sides):
            verdicts.append("not reproduced: more or fewer loops than trained is better, significantly")
        else:
            verdicts.append("undetermined or one-sided: " + ", ".join(
                f"R{R} {'worse' if c.significant and c.rel > 0 else 'no significant change'}" for R, c in sides))
    if not parts:
        return None
    return Finding("; ".join(parts), _combine(verdicts))


def _zero_shot(study: Study) -> Finding | None:
    parts = []
    for m in study.members("zero_shot"):
        if m.tags.get("shots", 0) != 0:
            continue
        vals = []
        for t, metric in PUB.ZERO_SHOT_METRIC.items():  # the metric the paper reports for each task
            v = m.finals.get(f"tasks.{t}.{metric}")
            if v is not None:
                vals.append(f"{t} {metric} {100 * v:.2f}")
        if vals:
            parts.append(f"{m.tags.get('source_label', m.label)}: " + ", ".join(vals))
    if not parts:
        return None
    return Finding("; ".join(parts) + " (%)", "single model, not tested")


# ---------------------------------------------------------------------- the records
def _lambada() -> str:
    v = PUB.VARY_R_LAMBADA
    return ", ".join(f"R{R}: ppl {p}" for R, (_, p) in sorted(v.items()))


CLAIMS: list[Claim] = [
    Claim("p_order", "More prelude layers help: ppl falls with P at every (d, R)",
          lambda: PUB.STAGE1_P_ORDER, "Stage 1 cells (one seed): is ppl strictly monotone in P at each (d, R)?",
          "single-seed screen: described, not tested", ("stage1",), _p_order),
    Claim("loop_benefit", "The benefit of more loops (R 2 → 8 at the largest P) grows with width",
          lambda: ", ".join(f"d{d}: {_pct(v, 2)}" for d, v in PUB.STAGE1_LOOP_BENEFIT.items()),
          "Stage 1: relative ppl drop from the smallest to the largest R at the largest P, per width",
          "single-seed screen: described, not tested", ("stage1",), _loop_benefit),
    Claim("rank_reversal", "The best R of the screen is not the best R of the confirmation",
          lambda: f"best R flips at every width; Spearman(Stage 1, Stage 2) = {PUB.STAGE2_SPEARMAN} over 8 cells",
          "per width: Stage 2's cell at Stage 1's best R against Stage 2's best cell, over seeds",
          "a flip is reproduced when Stage 1's best R is significantly worse in Stage 2", ("stage1", "stage2"), _rank_reversal),
    Claim("dense_stored", "Dense beats CART at stored-parameter parity",
          lambda: f"CART {PUB.PARITY_1024['cart']} vs dense 7L {PUB.PARITY_1024['dense_stored_7L']} (d = 1024, 3 seeds)",
          "CART (P6 R6) vs the dense depth nearest CART's stored parameters, per width, over seeds",
          "directional Welch test (CART above dense)", (), _parity("stored"), kinds=("parity",)),
    Claim("dense_effective", "Dense beats CART at effective-parameter parity",
          lambda: f"CART {PUB.PARITY_1024['cart']} vs dense 12L {PUB.PARITY_1024['dense_effective_12L']} (d = 1024, 3 seeds)",
          "CART vs the dense depth nearest CART's effective parameters (the paper's own 12 layers where the plan runs "
          "them as an extra depth)", "directional Welch test (CART above dense)", (), _parity("effective"), kinds=("parity",)),
    Claim("unshared_core", "Unsharing the core (R distinct blocks) helps",
          lambda: f"{PUB.ABLATIONS['unshared_core']} vs {PUB.ABLATIONS['cart']} (seed 42)",
          "ablation vs the full model at the same seeds", "directional Welch test (variant below CART)", ("ablations",),
          _ablation("unshared_core", -1)),
    Claim("unfrozen_kv", "Recomputing K/V every loop helps a little",
          lambda: f"{PUB.ABLATIONS['unfrozen_kv']} vs {PUB.ABLATIONS['cart']} (seed 42)",
          "ablation vs the full model at the same seeds", "directional Welch test (variant below CART)", ("ablations",),
          _ablation("unfrozen_kv", -1)),
    Claim("r1", "One loop is a little worse",
          lambda: f"{PUB.ABLATIONS['r1']} vs {PUB.ABLATIONS['cart']} (seed 42)",
          "ablation vs the full model at the same seeds", "directional Welch test (variant above CART)", ("ablations",),
          _ablation("r1", +1)),
    Claim("no_hyper", "Hyper-connections make no difference",
          lambda: f"{PUB.ABLATIONS['no_hyper']} vs {PUB.ABLATIONS['cart']} (seed 42)",
          "ablation vs the full model at the same seeds", f"equivalence within ±{100 * NULL_MARGIN:.0f} %", ("ablations",),
          _ablation("no_hyper", None)),
    Claim("no_lti", "Removing the LTI gate (A fixed at 1) is within seed noise",
          lambda: "\"within seed noise\" (no number printed)",
          "ablation (the published disable_lti: h = h~ + u in paper fidelity) vs the full model at the same seeds",
          f"equivalence within ±{100 * NULL_MARGIN:.0f} %", ("ablations",), _ablation("no_lti", None)),
    Claim("no_loop_embedding", "Removing the loop-index embedding is within seed noise",
          lambda: "\"within seed noise\" (no number printed)",
          "ablation vs the full model at the same seeds", f"equivalence within ±{100 * NULL_MARGIN:.0f} %", ("ablations",),
          _ablation("no_loop_embedding", None)),
    Claim("rho_decay", "ρ = max σ(a) ends in a narrow band below its 0.9 start (SPEC §6.4: what weight decay alone does)",
          lambda: f"{PUB.RHO_STAGE2_RANGE[0]}–{PUB.RHO_STAGE2_RANGE[1]} at the end of Stage 2; d1024 R6 "
                  + " → ".join(f"{v} (step {s})" for s, v in PUB.RHO_TRAJECTORY_1024_R6.items()),
          "per run with decay on the gate: the mean σ(a) over training against a_0 · Π(1 − lr_t·wd) under the run's own "
          "schedule; the fraction of the mean's change that decay alone predicts",
          "reproduced when decay alone explains 75–133 % of the change in every run", (), _rho_decay),
    Claim("contraction", "The LTI gate keeps the recurrence stable (a contractive loop)",
          lambda: "claimed, with ρ = max σ(a) < 1 as the evidence",
          "the measured per-loop ratio ‖h_(r+1) − h_r‖ / ‖h_r − h_(r−1)‖ at the end of training, per fidelity",
          "reproduced when the published gate's ratio is < 1 in every run", (), _contraction),
    Claim("zero_shot", "Zero-shot accuracy of the best model (HellaSwag, ARC-Challenge, LAMBADA, PIQA)",
          lambda: ", ".join(f"{t} {PUB.ZERO_SHOT_METRIC[t]} {v}" for t, v in PUB.ZERO_SHOT_1024.items()) + " (d1024, best R)",
          "`cart eval tasks --tasks paper` on the best model of Stage 2, 0-shot (5-shot beside it in the section)",
          "a single model: described, not tested", ("zero_shot",), _zero_shot),
    Claim("vary_r", "Variable R at inference degrades on both sides of the trained R",
          lambda: f"LAMBADA, d1024 trained at R = 6: {_lambada()}",
          "each model trained at a fixed R: ppl at the fewest and the most loops evaluated against its trained R, "
          "paired over seeds", "reproduced when both sides are significantly worse (paired t-test on log-ppl); one seed "
          "per curve: described, not tested", (), _vary_r, kinds=("vary_r",)),
]


def findings(study: Study, claims: list[Claim] | None = None) -> list[dict]:
    """Every claim the study has the stages for: {id, statement, paper, measure, rule, ours, verdict}."""
    out = []
    for c in claims if claims is not None else CLAIMS:
        if not all(s in study.stages for s in c.needs) or not all(study.stages_of_kind(k) for k in c.kinds):
            continue
        f = c.evaluate(study)
        if f is None:
            continue
        out.append({"id": c.id, "statement": c.statement, "paper": c.paper(), "measure": c.measure, "rule": c.rule,
                    "ours": f.ours, "verdict": f.verdict})
    return out


__all__ = ["Claim", "Finding", "CLAIMS", "findings", "NULL_MARGIN"]
