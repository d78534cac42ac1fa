"""`cart report <study>`: a Markdown report with PNG figures (matplotlib, Agg) and the exported results.

Sections follow the paper: the findings checklist (generated from the claim records of
`cart.experiments.analysis.claims`), the n-gram floors of every run, Stage 1 (ppl vs R per width and P, P vs R
dominance), Stage 2 (seed means, the rank reversal, Spearman), parity gaps at stored and
effective parity per width, the gap decomposition, ablations, the homogeneous control, paper vs
stable fidelity, rho and the measured contraction over training, variable R, throughput and MFU,
and the study's bookkeeping (attempts, failures, code versions). In the `paper` tier the
published number stands beside ours in every table that has one (SPEC §4). Every perplexity
stands beside its token-matched n-gram floor; every comparison carries n, its interval and p.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from cart.experiments import analysis as A
from cart.experiments import published as PUB
from cart.experiments.store import Store


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:+.{digits}f} %"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _params(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _set_head(study, s: str) -> str:
    if s == A.IN_DOMAIN:
        return "ppl in-domain mix"
    return f"ppl {s}" + (" (ood)" if s in study.ood_sets() else "")


def _ppl_sets(study: A.Study) -> list[str]:
    """Columns of perplexity: the study's metric first when it is a mix (the in-domain mix), then every set."""
    sets = study.valsets()
    return ([study.metric] if study.metric not in sets else []) + sets


def _ppl_cell(study: A.Study, members: list, s: str) -> str:
    """Mean ± std over seeds of one set's perplexity, or of the study's metric (the in-domain mix)."""
    if s == study.metric:
        return A.Stat(study.values(members)).fmt()
    return A.Stat([m.finals[f"ppl.{s}"] for m in members if f"ppl.{s}" in m.finals]).fmt()


def _floor_cell(study: A.Study, members: list) -> str:
    """The bigram floor of the selection metric over these members (mean), and ppl/floor."""
    fl = [m.floor(study.metric) for m in members]
    ratio = [m.floor_ratio(study.metric) for m in members]
    if not fl or any(v is None for v in fl):
        return "—"
    return f"{sum(fl) / len(fl):.1f} ({sum(ratio) / len(ratio):.2f}×)"


def _cmp_cells(c) -> list[str]:
    """Effect [95 % CI], p, n — or the single-seed form."""
    if c is None:
        return ["—", "—"]
    if not c.tested:
        return [_pct(c.rel, 2), f"n = {c.n_a} vs {c.n_b}: not tested"]
    return [f"{_pct(c.rel, 2)} [{_pct(c.ci[0], 1)}, {_pct(c.ci[1], 1)}]", f"{A.p_text(c.p)}, MDE {100 * c.mde:.1f} %"]


def _floor_note(study: A.Study, below: list) -> list[str]:
    if not below:
        return []
    return [f"**{len(below)} run(s) here do not beat their n-gram floor** (" + ", ".join(m.name for m in below[:6])
            + (", …" if len(below) > 6 else "") + "): no verdict is drawn from them.", ""]


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def table(head: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


class Figures:
    def __init__(self, out: Path):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        self.plt = plt
        self.dir = out / "figures"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.made: list[str] = []

    def save(self, fig, name: str) -> str:
        path = self.dir / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        self.plt.close(fig)
        self.made.append(str(path))
        return f"figures/{name}.png"


# ---------------------------------------------------------------------- sections
def _stage1(study: A.Study, figs: Figures, paper: bool) -> list[str]:
    s1 = A.stage1(study)
    if not s1:
        return []
    m = study.metric
    out = ["## Stage 1: the screen", "",
           f"Single seed, every (d, P, R) cell; ppl on `{m}` (the selection metric). Lower is better.", ""]
    head = ["d", "P"] + [f"R={r}" for r in s1["Rs"]]
    rows = []
    for d in s1["widths"]:
        for p in s1["Ps"]:
            cells = [s1["cells"].get((d, p, r)) for r in s1["Rs"]]
            best = s1["best"][d]
            rows.append([d, p] + [("**" + _fmt(c.mean) + "**" if c and (p, r) == (best["P"], best["R"]) else _fmt(c.mean if c else None))
                                  for c, r in zip(cells, s1["Rs"])])
    out += [table(head, rows), ""]
    sets = study.valsets()
    head = ["d", "best P", "best R"] + [_set_head(study, s) for s in sets] + ["ρ"]
    if paper:
        head += ["paper (R, wiki / tiny / edu / ρ)"]
    rows = []
    for d in s1["widths"]:
        b = s1["best"][d]
        row = [d, b["P"], b["R"]] + [_fmt(b["finals"].get(f"ppl.{s}")) for s in sets] + [_fmt(b["finals"].get("rho_gate"), 4)]
        if paper:
            p = PUB.STAGE1_BEST.get(d)
            row.append("—" if p is None else f"R{p[0]}: {p[1]} / {p[2]} / {p[3]} / {p[4]}")
        rows.append(row)
    out += ["Best cell per width:", "", table(head, rows), ""]
    mono, total = s1["monotone_in_P"]
    lb, _ = s1["largest_P_best"]
    for d in s1["widths"]:
        nz = s1["difference_noise"].get(d)
        if nz:
            vals = [c.mean for (dd, _, _), c in s1["cells"].items() if dd == d]
            spread = (max(vals) - min(vals)) / min(vals)
            out.append(f"- Noise at d = {d}: one cell's seed std is {100 * s1['cell_noise'][d]:.1f} % of its perplexity (from the "
                       f"multi-seed stages), so two single-seed cells differ by ~{100 * nz:.1f} % (√2 ×) from seeds alone; the "
                       f"whole Stage 1 grid at this width spans {100 * spread:.1f} %. No cell-to-cell difference here is tested.")
    out += [""] + _floor_note(study, s1["below_floor"])
    out += [f"- P dominance: ppl strictly decreases with P at {mono}/{total} (d, R) cells; the largest P ({s1['Pmax']}) "
            f"is best at {lb}/{total}. Wins per P: " + ", ".join(f"P{p}: {n}" for p, n in sorted(s1["p_wins"].items()))
            + ". (Paper: " + PUB.STAGE1_P_ORDER + ".)",
            f"- Benefit of more loops at P = {s1['Pmax']} (R {s1['R_range'][0]} → {s1['R_range'][1]}, relative ppl drop): "
            + ", ".join(f"d{d} {_pct(v, 2)}" for d, v in sorted(s1["loop_benefit"].items()))
            + ". (Paper, P = 6, R 2 → 8: " + ", ".join(f"d{d} {_pct(v, 2)}" for d, v in PUB.STAGE1_LOOP_BENEFIT.items()) + ".)", ""]
    plt = figs.plt
    W = len(s1["widths"])
    fig, axes = plt.subplots(1, W, figsize=(3.6 * W, 3.2), squeeze=False)
    for ax, d in zip(axes[0], s1["widths"]):
        for p in s1["Ps"]:
            xs = [r for r in s1["Rs"] if (d, p, r) in s1["cells"]]
            ax.plot(xs, [s1["cells"][(d, p, r)].mean for r in xs], marker="o", label=f"P={p}")
        ax.set_title(f"d={d}")
        ax.set_xlabel("R (loops)")
        ax.set_xticks(s1["Rs"])
        nz = study.relative_seed_noise(d)
        if nz:
            ax.set_title(f"d={d} (seed std ≈ {100 * nz:.1f} %)")
    axes[0][0].set_ylabel(f"ppl {m}")
    axes[0][-1].legend(fontsize=7, loc="best")
    out += [f"![ppl vs R per width and P]({figs.save(fig, 'stage1_ppl_vs_R')})", ""]
    # dominance heatmap: ppl relative to the best cell of the width
    fig, axes = plt.subplots(1, W, figsize=(3.2 * W, 3.0), squeeze=False)
    for ax, d in zip(axes[0], s1["widths"]):
        best = s1["best"][d]["value"]
        grid = [[(s1["cells"][(d, p, r)].mean / best - 1) * 100 if (d, p, r) in s1["cells"] else float("nan")
                 for r in s1["Rs"]] for p in s1["Ps"]]
        im = ax.imshow(grid, cmap="viridis_r", origin="lower", aspect="auto")
        ax.set_xticks(range(len(s1["Rs"])), [str(r) for r in s1["Rs"]])
        ax.set_yticks(range(len(s1["Ps"])), [str(p) for p in s1["Ps"]])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w" if v > max(max(r) for r in grid) / 2 else "k")
        ax.set_xlabel("R")
        ax.set_ylabel("P")
        ax.set_title(f"d={d}: % above best")
        fig.colorbar(im, ax=ax, fraction=0.046)
    out += [f"![P vs R dominance]({figs.save(fig, 'stage1_P_vs_R')})", ""]
    return out


def _stage2(study: A.Study, figs: Figures, paper: bool) -> list[str]:
    s2 = A.stage2(study)
    if not s2:
        return []
    m = study.metric
    out = ["## Stage 2: the confirmation", ""]
    der = s2.get("derivation")
    if der and der.get("P") is not None:
        out += [f"Derived from `{der.get('from')}` by the rule: {der['rule']}. "
                "Best P per width: " + ", ".join(f"d{d} P{p}" for d, p in sorted(der["best_cell_P_per_width"].items(), key=lambda kv: int(kv[0])))
                + f"; best R at P = {der['P']}: " + ", ".join(f"d{d} R{r}" for d, r in sorted(der["best_R_at_P_per_width"].items(), key=lambda kv: int(kv[0])))
                + " "
                f"→ P = {der['P']}, R ∈ {der['R_set']}.", ""]
    head = ["d", "P", "R", f"ppl {m}: mean ± std over seeds", "floor (ppl/floor)", "vs best R of the width [95 % CI]",
            "test", "Stage 1 (seed 42)"]
    if paper:
        head.append("paper (3-seed mean)")
    rows = []
    for r in s2["rows"]:
        row = [r["d"], r["P"], r["R"], ("**" if r["best"] else "") + r["stat"].fmt() + ("**" if r["best"] else ""),
               _floor_cell(study, r["members"])]
        row += ["best", ""] if r["best"] else _cmp_cells(r.get("vs_best"))
        row.append(_fmt(r["s1"].mean if r["s1"] else None))
        if paper:
            row.append(_fmt(PUB.STAGE2_MEAN.get((r["d"], r["R"]))))
        rows.append(row)
    out += [table(head, rows), ""]
    out += ["Is the best R of each width distinguishable from every other R (95 % intervals)? "
            + ", ".join(f"d{d}: {'yes' if v else 'no'}" for d, v in s2["best_R_resolved"].items()) + ".", ""]
    out += _floor_note(study, s2["below_floor"])
    if s2["best_R_stage1"]:
        out += ["Rank reversal: best R per width in Stage 1 vs Stage 2 (cells present in both): "
                + ", ".join(f"d{d}: {s2['best_R_stage1'][d]} → {s2['best_R'][d]}{' (flip)' if s2['flips'][d] else ''}"
                            for d in sorted(s2["best_R_stage1"])) + ".", ""]
    sp = s2["spearman"]
    out += [f"Spearman(Stage 1, Stage 2) over the {s2['n_common']} shared (d, P, R) cells: "
            + (f"**{sp:.3f}**" if sp is not None else "n/a (fewer than 3 shared cells)")
            + f" (paper: {PUB.STAGE2_SPEARMAN} over 8). Across widths this mostly measures that wider is better; "
              "within a width: " + ", ".join(f"d{d} {_fmt(v, 2)}" for d, v in s2["spearman_within_width"].items()) + ".", ""]
    if s2["common"]:
        plt = figs.plt
        ws = [d for d in s2["widths"] if any(k[0] == d for k in s2["common"])]
        fig, axes = plt.subplots(1, len(ws), figsize=(3.8 * len(ws), 3.2), squeeze=False)
        for ax, d in zip(axes[0], ws):
            ks = sorted((k for k in s2["common"] if k[0] == d), key=lambda k: k[2])
            b1 = min(s2["stage1_cells"][k].mean for k in ks)
            b2 = min(s2["cells"][k].mean for k in ks)
            Rs = [k[2] for k in ks]
            ax.plot(Rs, [100 * (s2["stage1_cells"][k].mean / b1 - 1) for k in ks], marker="s", label="Stage 1 (1 seed)")
            ax.errorbar(Rs, [100 * (s2["cells"][k].mean / b2 - 1) for k in ks],
                        yerr=[100 * (s2["cells"][k].std or 0) / b2 for k in ks], marker="o", capsize=3, label="Stage 2 (mean ± std)")
            ax.set_xticks(Rs)
            ax.set_xlabel(f"R (P = {ks[0][1]})")
            ax.set_title(f"d={d}")
        axes[0][0].set_ylabel(f"ppl {m}: % above the stage's best")
        axes[0][-1].legend(fontsize=7)
        out += [f"![rank reversal]({figs.save(fig, 'stage2_rank_reversal')})", ""]
    return out


def _parity(study: A.Study, figs: Figures, paper: bool, stage: str = "parity", title: str | None = None) -> list[str]:
    rows = A.parity_gaps(study, stage)
    if not rows:
        return []
    m = study.metric
    out = [f"## {title or 'Parity: CART vs dense baselines at every width'}", "",
           "Dense depth chosen by `cart.accounting.parity`: the depth whose stored parameters are nearest CART's stored "
           "(stored parity) or effective (effective parity) count, plus any depth the plan adds (the paper's hand-picked 12 "
           "layers at d = 1024, labelled \"paper's depth\"). Gap = CART / dense − 1 on the log scale over seeds (Welch); "
           "positive means dense is better.", ""]
    head = ["d", "CART (P, R)", "CART stored / effective", "parity", "dense", "dense params", f"CART ppl {m}", f"dense ppl {m}",
            "CART vs dense [95 % CI]", "test", "floor (CART, dense)"]
    trs = []
    below = []
    for r in rows:
        label = "paper's depth" if r["target"] == "extra" else r["target"]
        fl_c = _floor_cell(study, [x for x in study.members(stage) if x.tags.get("d") == r["d"] and x.tags.get("role") == "reference"])
        fl_d = _floor_cell(study, [x for x in study.members(stage) if x.tags.get("d") == r["d"] and x.tags.get("layers") == r["layers"]
                                   and x.tags.get("role") == "dense"])
        trs.append([r["d"], f"P{r['P']} R{r['R']}", f"{_params(r['cart_params'].get('stored'))} / {_params(r['cart_params'].get('effective'))}",
                    label, f"{r['layers']}L", _params(r["dense_params"]), r["cart"].fmt(), r["dense"].fmt(), *_cmp_cells(r["gap"]),
                    f"{fl_c}, {fl_d}"])
        below += [x for x in r["below_floor"] if x not in below]
    out += [table(head, trs), ""]
    out += _floor_note(study, below)
    if paper:
        p = PUB.PARITY_1024
        out += [f"Paper, d = 1024 (ppl_wiki, 3 seeds): CART {p['cart']}, dense 7L {p['dense_stored_7L']} "
                f"({_pct(p['cart'] / p['dense_stored_7L'] - 1)}), dense 12L {p['dense_effective_12L']} "
                f"({_pct(p['cart'] / p['dense_effective_12L'] - 1)}).", ""]
    plt = figs.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    order = {"stored": 0, "effective": 1, "extra": 2}
    targets = sorted({r["target"] for r in rows}, key=lambda t: (order.get(t, 3), t))
    widths = sorted({r["d"] for r in rows})
    wbar = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        rs = {r["d"]: r for r in rows if r["target"] == t}
        xs = [j + i * wbar for j, d in enumerate(widths) if d in rs]
        ys = [100 * rs[d]["gap"].rel for d in widths if d in rs]
        lo = [100 * (rs[d]["gap"].rel - rs[d]["gap"].ci[0]) if rs[d]["gap"].ci else 0 for d in widths if d in rs]
        hi = [100 * (rs[d]["gap"].ci[1] - rs[d]["gap"].rel) if rs[d]["gap"].ci else 0 for d in widths if d in rs]
        ax.bar(xs, ys, width=wbar, yerr=[lo, hi], capsize=3, label=f"{'paper depth' if t == 'extra' else t + ' parity'}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([j + wbar * (len(targets) - 1) / 2 for j in range(len(widths))], [f"d={d}" for d in widths])
    ax.set_ylabel("CART ppl above dense (%)")
    ax.set_title("parity gaps (error bars: 95 % CI over seeds)")
    ax.legend(fontsize=8)
    out += [f"![parity gaps]({figs.save(fig, 'parity_gaps' if stage == 'parity' else f'parity_gaps_{stage}')})", ""]
    return out


def _decomposition(study: A.Study) -> list[str]:
    g = A.gap_decomposition(study)
    p = A.paper_gap_decomposition()
    out = ["## Gap decomposition: weight sharing vs the framing", "",
           "CART (shared core) → the same model with R unshared cores → dense at effective parity. Both parts are stated "
           "with one denominator: as log-perplexity differences (nats; the parts add up to the total exactly) and as "
           "perplexity differences divided by the dense model's perplexity.", ""]
    head = ["", "CART", "unshared core", "dense (eff. parity)", "sharing part", "framing part", "sharing / framing share of the gap"]
    rows = []
    if g:
        rows.append([f"ours (d{g['d']}, seeds {g['seeds']}, dense {g['dense_layers']}L)", _fmt(g["C"]), _fmt(g["U"]), _fmt(g["D"]),
                     f"{g['log']['sharing']:+.4f} nats ({_pct(g['rel_to_dense']['sharing'])})",
                     f"{g['log']['framing']:+.4f} nats ({_pct(g['rel_to_dense']['framing'])})",
                     f"{100 * g['share']['sharing']:.0f} % / {100 * g['share']['framing']:.0f} %"])
    rows.append(["paper (recomputed)", p["C"], p["U"], p["D"], f"{p['log']['sharing']:+.4f} nats ({_pct(p['rel_to_dense']['sharing'])})",
                 f"{p['log']['framing']:+.4f} nats ({_pct(p['rel_to_dense']['framing'])})",
                 f"{100 * p['share']['sharing']:.0f} % / {100 * p['share']['framing']:.0f} %"])
    out += [table(head, rows), "",
            f"The paper's two \"~5 %\" steps cannot both be relative to one model: relative to the model each step starts from "
            f"they are {_pct(p['rel_to_start']['sharing'])} and {_pct(p['rel_to_start']['framing'])}, relative to the model it ends at "
            f"{_pct(p['rel_to_end']['sharing'])} and {_pct(p['rel_to_end']['framing'])}; the three numbers also mix 3-seed means "
            "(20.35, 18.32) with a single seed (19.22). Above, one denominator, and ours uses the same seeds for all three models." if g else
            "Ours: not available (needs the ablation's `unshared_core` and `cart` variants and the effective-parity dense model at the same width and seed).", ""]
    if g and g["log"]["total"] < 0:
        out += ["Here CART is *better* than the dense model at effective parity, so there is no gap to split; the shares "
                "above then say which step the advantage comes from.", ""]
    return out


def _ablations(study: A.Study, paper: bool) -> list[str]:
    rows = A.ablations(study)
    if not rows:
        return []
    sets = _ppl_sets(study)
    base = next((r for r in rows if r["variant"] == "cart"), None)
    t = base["members"][0].tags if base else {}
    out = ["## Ablations", "", f"At d = {t.get('d')}, P = {t.get('P')}, R = {t.get('R')}, seeds "
           f"{sorted({m.seed for r in rows for m in r['members']})}; each variant against the full model at the same seeds "
           "(Welch over seeds on log-perplexity; one seed per arm is reported, not tested).", ""]
    head = (["variant", "stored", "effective"] + [_set_head(study, s) for s in sets]
            + ["floor (ppl/floor)", f"Δ {study.metric} [95 % CI]", "test"])
    if paper:
        head.append("paper (ppl_wiki)")
    trs, below = [], []
    for r in rows:
        row = [r["title"], _params(r["stored"]), _params(r["effective"])]
        row += [_ppl_cell(study, r["members"], s) for s in sets]
        row.append(_floor_cell(study, r["members"]))
        row += ["baseline", ""] if r["variant"] == "cart" else _cmp_cells(r.get("vs_base"))
        if paper:
            pv = PUB.ABLATIONS.get(r["variant"], "—")
            row.append("within seed noise" if pv is None else pv)
        trs.append(row)
        below += r["below_floor"]
    out += [table(head, trs), ""] + _floor_note(study, below)
    return out


def _variants_section(study: A.Study, stage: str, title: str, intro: str) -> list[str]:
    rows = A.variants(study, stage)
    if not rows:
        return []
    sets = _ppl_sets(study)
    out = [f"## {title}", "", intro, ""]
    head = (["variant", "d", "arch", "stored", "effective"] + [_set_head(study, s) for s in sets]
            + ["floor (ppl/floor)", "ρ (final)", f"vs {rows[0].get('baseline') or rows[0]['variant']} [95 % CI]", "test"])
    trs, below = [], []
    for r in rows:
        ms = r["members"]
        trs.append([r["variant"], r["d"], r["arch"], _params(r["stored"]), _params(r["effective"])]
                   + [_ppl_cell(study, ms, s) for s in sets]
                   + [_floor_cell(study, ms), A.Stat([m.finals["rho_gate"] for m in ms if m.finals.get("rho_gate") is not None]).fmt(4)]
                   + (["baseline", ""] if "vs_base" not in r else _cmp_cells(r["vs_base"])))
        below += r["below_floor"]
    return out + [table(head, trs), ""] + _floor_note(study, below)


def _floors(study: A.Study) -> list[str]:
    rows = [r for r in A.floors(study) if r["ppl"] is not None]
    if not rows:
        return []
    known = [r for r in rows if r["ratio"] is not None]
    out = ["## Models against their n-gram floors", "",
           f"Floor = an interpolated Kneser-Ney bigram counted on exactly the tokens the run trained on (`cart eval ngram`), "
           f"scored on the same `{study.metric}` tokens as the model. A model that does not beat it has not yet learned word-pair "
           "statistics; no verdict is drawn from such runs"
           + (f" (this study requires ppl ≤ {100 * (1 - study.floor_margin):.0f} % of the floor)" if study.floor_margin else "") + ".", ""]
    if not known:
        return out + ["No run of this study recorded its floor (studies run before floors were computed).", ""]
    ratios = sorted(r["ratio"] for r in known)
    n_ok = sum(1 for r in known if r["clears"])
    out += [f"{n_ok} of {len(known)} runs clear their floor; ppl/floor ranges {ratios[0]:.3f}–{ratios[-1]:.3f} "
            f"(median {ratios[len(ratios) // 2]:.3f}).", ""]
    by_stage: dict[str, list] = {}
    for r in known:
        by_stage.setdefault(r["stage"], []).append(r)
    head = ["stage", "runs", "clear the floor", "ppl/floor (min – max)", "training tokens"]
    trs = [[st, len(rs), sum(1 for r in rs if r["clears"]), f"{min(r['ratio'] for r in rs):.3f} – {max(r['ratio'] for r in rs):.3f}",
            f"{_count(min(r['tokens'] or 0 for r in rs))} – {_count(max(r['tokens'] or 0 for r in rs))}"] for st, rs in by_stage.items()]
    out += [table(head, trs), ""]
    return out + _floors_per_set(study, known)


def _floors_per_set(study: A.Study, rows: list[dict]) -> list[str]:
    """ppl/floor on each held-out set, per stage and arm (the member label without its seed): the median
    over seeds and the worst seed, and how many seeds clear the study's margin on that set."""
    sets = [v for v in study.valsets() if v not in study.ood_sets()] + sorted(study.ood_sets())
    if not sets:
        return []
    margin = study.floor_margin or 0.0
    arms: dict[tuple[str, str], list] = {}
    for r in rows:
        m = r["member"]
        arms.setdefault((r["stage"], m.label.rsplit("-s", 1)[0] if m.seed is not None else m.label), []).append(m)
    head = ["stage", "arm", "seeds"] + [f"{v}{' (ood)' if v in study.ood_sets() else ''}" for v in sets]
    trs = []
    for (stage, arm), ms in arms.items():
        cells = []
        for v in sets:
            ratios = sorted(x for x in (m.floor_ratio(v) for m in ms) if x is not None)
            if not ratios:
                cells.append("—")
                continue
            ok = sum(1 for x in ratios if x <= 1 - margin)
            cells.append(f"{ratios[len(ratios) // 2]:.3f} (worst {ratios[-1]:.3f}; {ok}/{len(ratios)})")
        trs.append([stage, arm, len(ms)] + cells)
    return ["Per held-out set: ppl / floor, the median over seeds (the worst seed; seeds at or below "
            f"{1 - margin:.2f}). Out-of-domain sets were never trained on, by the model or by its bigram.", "",
            table(head, trs), ""]


def _share(x: float | None) -> str:
    """A fraction as a whole percentage ("—" if unknown; never "-0 %")."""
    if x is None:
        return "—"
    pct = round(100 * x)
    return f"{pct if pct else 0} %"


def _arm(m: A.Member) -> str:
    """A member's arm: its variant, else its shape (d, P, R or layers)."""
    t = m.tags
    if t.get("variant"):
        return str(t["variant"])
    shape = f"P{t.get('P')} R{t.get('R')}" if t.get("arch") == "cart" else f"{t.get('layers')}L"
    return f"d{t.get('d')} {shape}"


def _rho(study: A.Study, figs: Figures, paper: bool) -> list[str]:
    rows, seen = [], set()
    for st in study.stages:
        for r in A.rho_summary(study, st):
            if r["rho"] is not None and r["member"].run_id not in seen:
                seen.add(r["member"].run_id)
                rows.append(dict(r, stage=st))
    if not rows:
        return []
    out = ["## ρ, weight decay and the measured contraction of the loop", "",
           "ρ as published = max σ(a) of the gate vector, a property of one parameter. Beside it: the gate's mean, and what "
           "AdamW's decoupled weight decay alone does to σ(a) from its start under the run's own schedule "
           "(a_t = a_0·Π(1 − lr_s·wd), zero gradient; SPEC §6.4; the same for every channel, which all start equal); "
           "\"decay explains\" = the decay-only change of σ(a) as a share of the measured change of the mean gate at the "
           "last logged step. And the measured contraction of the loop, mean over loops of ‖h_{r+1} − h_r‖ / ‖h_r − h_{r−1}‖ "
           "at the last logged step (SPEC §6.3).", ""]
    head = ["stage", "arm", "fidelity", "d", "P", "R", "seed", "decay on gate", "ρ final", "gate mean final", "decay alone",
            "decay explains", "contraction"]
    trs = [[r["stage"], _arm(r["member"]), r["fidelity"], r["d"], r["P"], r["R"], r["seed"],
            {True: "yes", False: "no", None: "—"}[r["decayed"]], _fmt(r["rho"], 4), _fmt(r["gate_mean"], 4),
            _fmt(r["decay_only"], 4), _share(r["explained"]), _fmt(r["contraction"], 3)] for r in rows]
    out += [table(head, trs), ""]
    if paper:
        out += [f"Paper: ρ at the end of Stage 2 in {PUB.RHO_STAGE2_RANGE}; d1024 R6 trajectory {PUB.RHO_TRAJECTORY_1024_R6}.", ""]
    plt = figs.plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # one seed per (stage, arm), so that every arm with a gate is drawn
    shown, arms = [], set()
    for r in rows:
        if r["gate"] and r["gate"]["series"]["gate_mean"] and (r["stage"], _arm(r["member"])) not in arms:
            arms.add((r["stage"], _arm(r["member"])))
            shown.append(r)
    shown = shown[:len(colors)]
    for i, r in enumerate(shown):
        g, col = r["gate"], colors[i % len(colors)]
        lab = f"{r['stage']} {_arm(r['member'])} s{r['seed']}"
        mean = g["series"]["gate_mean"]
        axes[0].plot([a for a, _ in mean], [b for _, b in mean], color=col, lw=1, label=f"{lab}: mean")
        mx = g["series"]["gate_max"]
        if mx:
            axes[0].plot([a for a, _ in mx], [b for _, b in mx], color=col, lw=0.8, ls=":")
        traj = g["decay_only"]
        xs = list(range(0, len(traj), max(1, len(traj) // 100)))
        axes[0].plot(xs, [traj[x] for x in xs], color=col, lw=1, ls="--")
        c = study.contraction_series(r["member"].run_id)
        if c:
            axes[1].plot([a for a, _ in c], [b for _, b in c], color=col, lw=1, label=lab)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("σ(a)")
    axes[0].set_title("gate: mean (solid), max = ρ (dotted), decay alone (dashed)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("mean per-loop contraction")
    axes[1].set_title("measured contraction over training")
    axes[1].axhline(1, color="k", lw=0.6, ls=":")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=5, ncol=1)
    out += [f"![gate, weight decay and contraction]({figs.save(fig, 'rho_contraction')})", ""]
    return out


def _vary_r(study: A.Study, figs: Figures, paper: bool, stage: str = "vary_r", title: str | None = None) -> list[str]:
    rows = A.vary_r(study, stage)
    if not rows:
        return []
    sets = _ppl_sets(study)
    out = [f"## {title or 'Variable R at inference'}", "",
           "Each model run at other loop counts without fine-tuning (`cart eval vary-r`); models that differ only in their "
           "seed are pooled (mean ± std over seeds per R), with the measured contraction at each R.", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        t = r["member"].tags
        key = (r["source_stage"], r["variant"] or f"d{t.get('d')} P{t.get('P')} R{t.get('R')}", r["trained_R"], r["loop_sampling"])
        groups.setdefault(key, []).append(r)
    curves = {}
    for (src, name, trained, sampling), rs in groups.items():
        Rs = sorted({R for r in rs for R in r["curve"]}, key=lambda R: (not isinstance(R, int), R if isinstance(R, int) else 0))
        tag = " (best model of its stage)" if any(r["best"] for r in rs) else ""
        out += [f"**{src}: {name}**{tag}: trained at R = {trained}" + (f" (R sampled: {sampling})" if sampling != "fixed" else "")
                + f"; seeds {sorted(r['member'].seed for r in rs)}", ""]
        head = ["R"] + [_set_head(study, s) for s in sets] + ["contraction", f"vs R = {trained} [95 % CI], paired over seeds",
                                                                 "test"]
        trs, pts = [], []
        for R in Rs:
            cs = [r["curve"][R] for r in rs if R in r["curve"]]
            label = f"**{R}**" if R == trained else (f"adaptive ({cs[0]['mean_loops']:.2f})" if cs[0].get("mean_loops") else str(R))
            stats = {s: A.Stat([c["ppl"][s] for c in cs if c["ppl"].get(s) is not None]) for s in sets}
            con = A.Stat([c["contraction"] for c in cs if c.get("contraction") is not None])
            pairs = [(r["curve"][R]["ppl"].get(study.metric), r["curve"][trained]["ppl"].get(study.metric)) for r in rs
                     if R in r["curve"] and trained in r["curve"]]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            vs = ["baseline", ""] if R == trained else _cmp_cells(A.paired(*map(list, zip(*pairs))) if pairs else None)
            trs.append([label] + [st.fmt() for st in stats.values()] + [con.fmt(3)] + vs)
            if isinstance(R, int) and stats.get(study.metric) and stats[study.metric].values:
                pts.append((R, stats[study.metric]))
        curves[(src, name, trained)] = pts
        out += [table(head, trs), ""]
    if paper:
        out += ["Paper (d1024 trained at R = 6), LAMBADA acc % (ppl): "
                + ", ".join(f"R{R} {a} ({p})" for R, (a, p) in PUB.VARY_R_LAMBADA.items()) + ".", ""]
    plt = figs.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (src, name, trained), pts in curves.items():
        if not pts:
            continue
        xs, ys = [a for a, _ in pts], [b.mean for _, b in pts]
        line = ax.errorbar(xs, ys, yerr=[b.std or 0 for _, b in pts], marker="o", ms=3, capsize=2, label=f"{src}: {name}")
        if trained in xs:
            ax.plot([trained], [ys[xs.index(trained)]], marker="*", ms=14, color=line[0].get_color())
    ax.set_xlabel("R at inference (★ = trained R)")
    ax.set_ylabel(f"ppl {study.metric}")
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys and max(ys) / max(min(ys), 1e-9) > 3:
        ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.set_title("variable R without fine-tuning (mean ± std over seeds)")
    out += [f"![variable R]({figs.save(fig, 'vary_r' if stage == 'vary_r' else f'vary_r_{stage}')})", ""]
    return out


def _tasks_section(study: A.Study, stage: str, title: str, paper: bool) -> list[str]:
    """Zero-/few-shot benchmark results of the evaluated models (`cart eval tasks`), per shot count."""
    from cart.eval.tasks import split_label

    ms = study.members(stage)
    if not ms:
        return []
    out = [f"## {title}", "", "`cart eval tasks` on each selected model (lm-eval-harness conventions: acc_norm per character); "
           "metrics in %, with the split scored and where few-shot examples came from.", ""]
    head = ["model", "shots", "task", "split", "few-shot from", "acc", "acc_norm"] + (["paper (d1024, best R)"] if paper else [])
    trs = []
    for m in ms:
        info = ((study.store.summary(m.run_id) or {}).get("configs") or {})
        tasks = sorted({k.split(".")[1] for k in m.finals if k.startswith("tasks.")})
        for t in tasks:
            acc, norm = m.finals.get(f"tasks.{t}.acc"), m.finals.get(f"tasks.{t}.acc_norm")
            cfg = info.get(t) or {}
            row = [m.tags.get("source_label", m.label), m.tags.get("shots", 0), t, split_label(cfg),
                   cfg.get("fewshot_split", "—") if m.tags.get("shots", 0) else "—",
                   "—" if acc is None else f"{100 * acc:.2f}", "—" if norm is None else f"{100 * norm:.2f}"]
            if paper:
                row.append(f"{PUB.ZERO_SHOT_METRIC.get(t, '')} {_fmt(PUB.ZERO_SHOT_1024.get(t))}"
                           if m.tags.get("shots", 0) == 0 and t in PUB.ZERO_SHOT_1024 else "—")
            trs.append(row)
    return out + [table(head, trs), ""]


def _grid_section(study: A.Study, stage: str, title: str, intro: str) -> list[str]:
    """A grid stage with seeds: every cell with its interval, and each grid field's effect at fixed values of the others."""
    g = A.grid_effects(study, stage)
    if not g:
        return []
    sets = _ppl_sets(study)
    out = [f"## {title}", ""] + ([intro, ""] if intro else [])
    head = list(g["fields"]) + [_set_head(study, s) for s in sets] + ["floor (ppl/floor)"]
    trs, below = [], []
    for key, ms in g["cells"].items():
        trs.append(list(key) + [_ppl_cell(study, ms, s) for s in sets]
                   + [_floor_cell(study, ms)])
        below += study.below_floor(ms)
    out += [table(head, trs), ""]
    if g["effects"]:
        head = ["changed", "from → to", "at", f"Δ {study.metric} [95 % CI]", "test"]
        trs = [[e["field"], f"{e['from']} → {e['to']}", ", ".join(f"{k}={v}" for k, v in e["at"].items()) or "—",
                *_cmp_cells(e["cmp"])] for e in g["effects"]]
        out += [table(head, trs), ""]
    return out + _floor_note(study, below)


def _throughput(study: A.Study, paper: bool) -> list[str]:
    rows = [r for r in A.throughput(study) if r["tokens_per_s"] is not None]
    if not rows:
        return []
    out = ["## Throughput and MFU", "", "Training tokens/s and model FLOPs utilisation as measured by the trainer, per run "
           "(CPU MFU is against the peak measured once on this machine).", ""]
    head = ["run", "arch", "d", "P/R or layers", "stored", "effective", "tokens/s", "MFU"]
    trs = []
    for r in sorted(rows, key=lambda r: (str(r["arch"]), r["d"] or 0, r["P"] or 0, r["R"] or r["layers"] or 0)):
        shape = f"P{r['P']} R{r['R']}" if r["arch"] == "cart" else f"{r['layers']}L"
        trs.append([r["run"], r["arch"], r["d"], shape, _params(r["stored"]), _params(r["effective"]),
                    f"{r['tokens_per_s']:,.0f}", _pct(r["mfu"]).lstrip("+") if r["mfu"] is not None else "—"])
    out += [table(head, trs), ""]
    if paper:
        out += ["Paper (RTX 3090, bf16): " + ", ".join(f"d{d} R{R}: {t:,} tok/s" + (f", MFU {100 * m:.0f} %" if m else "")
                                                      for (d, R), (t, m) in PUB.THROUGHPUT.items()) + ".", ""]
    return out


def _bookkeeping(store: Store) -> list[str]:
    runs = store.runs()
    atts = store.attempts()
    by_outcome: dict[str, int] = {}
    wall = 0.0
    for a in atts:
        by_outcome[a["outcome"] or "open"] = by_outcome.get(a["outcome"] or "open", 0) + 1
        if a["ended_at"]:
            wall += a["ended_at"] - a["started_at"]
    versions = sorted({r.code_version for r in runs if r.code_version})
    started = [r.created_at for r in runs if r.created_at]
    finished = [r.finished_at for r in runs if r.finished_at]
    out = ["## Bookkeeping", "",
           f"- runs: {len(runs)} ({', '.join(f'{k} {v}' for k, v in store.counts().items() if v)}); attempts: {len(atts)} "
           f"({', '.join(f'{k} {v}' for k, v in sorted(by_outcome.items()))}); summed run time {_duration(wall)}",
           f"- study wall time (first run planned → last run finished): "
           + (_duration(max(finished) - min(started)) if started and finished else "—"),
           f"- code version(s): {', '.join(versions) or '—'}"]
    failed = [r for r in runs if r.status == "failed"]
    for r in failed:
        out.append(f"- FAILED {r.name}: {(r.error or '').splitlines()[0] if r.error else ''}")
    bad = [a for a in atts if a["outcome"] in ("failed", "lost")]
    if bad:
        errors: dict[str, int] = {}
        for a in bad:
            lines = [x for x in (a["error"] or "").splitlines() if x.strip()]
            key = (lines[-1] if lines else a["outcome"]).strip()[:160]
            errors[key] = errors.get(key, 0) + 1
        retried = len({a["run_id"] for a in bad})
        out.append(f"- failed or lost attempts: {len(bad)} in {retried} run(s), each retried from its last checkpoint; "
                   f"distinct errors (last line):")
        out += [f"  - {n}×: `{e}`" for e, n in sorted(errors.items(), key=lambda kv: -kv[1])]
    return out + [""]


_INTROS = {
    "control": "The control the paper names but never ran: P + R + 1 identical MLA blocks (CART's depth), unshared and shared "
               "(one block looped), at the same width and recipe, beside CART. Does the residual gap come from the heterogeneous "
               "prelude/anchor/core/coda framing?",
    "fidelity": "`paper`: h = A⊙h̃ + u (carried-state gain 1 + A), softmax over [1, 0, 0], weight decay on everything. "
                "`stable`: h = A⊙h̃ + Δ (gain A < 1), the blend starting at the pure residual, no decay on gates.",
    "vary_r_train": "The fix the paper names for its variable-R result: R sampled per training step. Compared here at the "
                    "trained R; the variable-R section runs both at every R.",
}


# (study, figs, paper, stage, title, intro) -> lines. The paper's named stages have their own sections; every
# other stage is written by its kind. A new stage kind adds one row here (and one to plans.STAGE_KINDS).
_BY_STAGE = {
    "stage1": lambda study, figs, paper, stage, title, intro: _stage1(study, figs, paper),
    "stage2": lambda study, figs, paper, stage, title, intro: _stage2(study, figs, paper),
    "ablations": lambda study, figs, paper, stage, title, intro: _decomposition(study) + _ablations(study, paper),
}
_BY_KIND = {
    "grid": lambda study, figs, paper, stage, title, intro: _grid_section(study, stage, title, intro),
    "parity": lambda study, figs, paper, stage, title, intro: _parity(study, figs, paper, stage,
                                                                     title if stage != "parity" else None),
    "variants": lambda study, figs, paper, stage, title, intro: _variants_section(study, stage, title, intro),
    "vary_r": lambda study, figs, paper, stage, title, intro: _vary_r(study, figs, paper, stage,
                                                                     title if stage != "vary_r" else None),
    "tasks": lambda study, figs, paper, stage, title, intro: _tasks_section(study, stage, title, paper),
}


def _stage_sections(study: A.Study, figs: Figures, paper: bool) -> list[str]:
    """One section per stage, in plan order, by the stage's kind (a stage's `question` is its introduction)."""
    out = []
    for stage in study.stages:
        d = (study.store.stage_expanded(stage) or {}).get("definition") or {}
        kind, title = d.get("kind"), d.get("title") or stage
        question = (d.get("raw") or {}).get("question")
        intro = (f"**Question:** {question}" if question else "") or _INTROS.get(stage, "")
        section = _BY_STAGE.get(stage) if (stage != "ablations" or kind == "variants") else None
        section = section or _BY_KIND.get(kind)
        if section is not None:
            out += section(study, figs, paper, stage, title, intro)
    return out


def build_report(study_dir: str | Path, out: str | Path | None = None, metric: str | None = None,
                 commands: list[str] | None = None) -> Path:
    """Write report.md, figures/*.png, results.csv/json and metrics.csv. Returns the report path."""
    study_dir = Path(study_dir)
    store = Store(study_dir)
    try:
        study = A.Study(store, metric)
        out = Path(out) if out is not None else study_dir / "report"
        out.mkdir(parents=True, exist_ok=True)
        figs = Figures(out)
        paper = study.tier == "paper"
        c = store.counts()
        lines = [f"# CART study report: `{study.tier}` tier", "",
                 f"Study `{study_dir}`; plan `{store.meta('plan_source') or '?'}`; selection metric: ppl on `{study.metric}`; "
                 f"{sum(c.values())} runs ({c['done']} done, {c['failed']} failed, {c['pending'] + c['running']} unfinished). "
                 f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `cart report`.", ""]
        if study.tier != "paper":
            lines += [f"This tier shrinks the paper's widths, steps and sequence length; the published numbers are quoted as "
                      f"findings to check, not as values to match.", ""]
        f = A.findings(study)
        if f:
            lines += ["## The paper's findings at this scale", "",
                      "One row per claim record (`cart/experiments/analysis/claims.py`): what the paper says and its numbers "
                      "(`published.py`), how this study measures it, the verdict rule, and the result. \"Reproduced\" and "
                      "\"contradicted\" need a 95 % interval over seeds that excludes no change; otherwise \"undetermined at this "
                      "power\" with the minimum detectable effect; single seeds are not tested; runs below their n-gram floor "
                      "give no verdict.", "",
                      table(["claim", "paper", "how measured", "rule", "this study", "verdict"],
                            [[x["statement"], x["paper"], x["measure"], x["rule"], x["ours"], x["verdict"]] for x in f]), ""]
        lines += _floors(study)
        lines += _stage_sections(study, figs, paper)
        lines += _rho(study, figs, paper)
        lines += _throughput(study, paper)
        lines += _bookkeeping(store)
        if commands:
            lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
        lines += ["## Files", "", "- `results.csv`, `results.json`: one row per (stage, member): flags, recipe, tags and final metrics",
                  "- `metrics.csv.gz`: every logged metric of every run (long format: run, step, event, name, value)", "- `figures/*.png`", ""]
        store.export(out / "results.csv", "csv")
        store.export(out / "results.json", "json")
        store.export_metrics(out / "metrics.csv.gz")
        path = out / "report.md"
        path.write_text("\n".join(lines))
        return path
    finally:
        store.close()


def build_runs_report(run_dirs: list[str | Path], out: str | Path, levels: tuple[float, ...] = (0.9, 0.8)) -> Path:
    """Learning curves against the n-gram floor for standalone runs (a pilot): for each run, the
    training tokens at which its ppl first reaches `level` x its token-matched bigram floor, per
    in-domain set and for the in-domain mix. Needs runs trained with ngram_floors = "every_eval".
    Writes floor_curves.md, floor_curves.json and figures/floor_curves.png into `out`."""
    from cart.experiments.analysis.curves import crossing, floor_curve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = Figures(out)
    runs = []
    for rd in map(Path, run_dirs):
        mpath, cpath = rd / "metrics.jsonl", rd / "train_config.json"
        if not mpath.is_file() or not cpath.is_file():
            raise FileNotFoundError(f"{rd}: not a run directory (needs metrics.jsonl and train_config.json)")
        cfg = json.loads(cpath.read_text())["config"]
        tps = int(cfg["batch_size"]) * int(cfg.get("grad_accum", 1)) * int(cfg["seq_len"])
        events = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip().startswith("{")]
        curve = floor_curve(events, tps)
        if not curve:
            raise ValueError(f"{mpath}: no eval event carries n-gram floors (train with --ngram-floors every_eval)")
        m = cfg["model"]
        shape = (f"d{m['d_model']} P{m.get('n_prelude')} R{m.get('n_loops')}" if m.get("kind", "cart") == "cart"
                 else f"dense d{m['d_model']} {m.get('n_layers')}L") + f", V {m['vocab_size']}"
        end = [e for e in events if e.get("event") == "end"]
        runs.append({"run": rd.name, "shape": shape, "recipe": f"seq {cfg['seq_len']}, batch {cfg['batch_size']}, lr {cfg['lr']}, "
                     f"{cfg['steps']} steps ({cfg['steps'] * tps / 1e6:.1f}M tokens), {cfg.get('dtype')}",
                     "curve": curve, "crossings": {lv: crossing(curve, lv) for lv in levels},
                     "last": curve[-1], "tokens_per_s": end[-1].get("tokens_per_s") if end else None})
    sets = sorted({k for r in runs for k in r["last"].ratio if k != A.IN_DOMAIN})
    lines = ["# Learning against the n-gram floor", "",
             "ppl / floor, where the floor is an interpolated Kneser-Ney bigram counted on exactly the tokens the run had "
             "trained on at that step (`cart.eval.ngram`), scored on the same validation tokens. \"Tokens to x\" = the first "
             "eval at which the token-weighted in-domain mix reaches x × its floor (interpolated in log tokens). Measured "
             "mid-schedule, so these are upper bounds on what a run whose schedule ends there needs.", ""]
    head = ["run", "shape", "recipe"] + [f"tokens to {lv:g}× floor" for lv in levels] + ["last eval: tokens", "ppl/floor (mix)"] + \
        [f"ppl/floor {s}" for s in sets]
    trs = []
    for r in runs:
        last = r["last"]
        trs.append([r["run"], r["shape"], r["recipe"]] + [("not reached" if r["crossings"][lv] is None else _count(r["crossings"][lv]))
                                                          for lv in levels]
                   + [_count(last.tokens), _fmt(last.ratio.get(A.IN_DOMAIN), 3)] + [_fmt(last.ratio.get(s), 3) for s in sets])
    lines += [table(head, trs), ""]
    plt = figs.plt
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for r in runs:
        pts = [(p.tokens, p.ratio[A.IN_DOMAIN]) for p in r["curve"] if A.IN_DOMAIN in p.ratio]
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", ms=3, label=f"{r['run']}: {r['shape']}")
    for lv in levels:
        ax.axhline(lv, color="k", lw=0.6, ls=":")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("ppl / bigram floor (in-domain mix)")
    ax.legend(fontsize=7)
    lines += [f"![ppl over floor]({figs.save(fig, 'floor_curves')})", ""]
    (out / "floor_curves.json").write_text(json.dumps([{"run": r["run"], "shape": r["shape"], "recipe": r["recipe"],
                                                        "crossings": {str(k): v for k, v in r["crossings"].items()},
                                                        "curve": [{"step": p.step, "tokens": p.tokens, "ratio": p.ratio,
                                                                   "ppl": p.ppl, "floor": p.floor} for p in r["curve"]]}
                                                       for r in runs], indent=1) + "\n")
    path = out / "floor_curves.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["build_report", "build_runs_report", "table"]
