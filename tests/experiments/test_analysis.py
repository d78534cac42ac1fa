"""Analysis on a hand-built study: the in-domain mix and its floor, floor gating of verdicts, the claim
records, grid effects and the gate-vs-weight-decay analysis."""
import math

import pytest

from cart.experiments import analysis as A
from cart.experiments.store import RunRequest, Store

from .conftest import model


def _finals(ppl: dict[str, float], floor: dict[str, float], tokens: int = 1000, ood: tuple = ("code",)) -> dict:
    out = {"tokens": 4096.0, "rho_gate": 0.9}
    for s, p in ppl.items():
        out.update({f"ppl.{s}": p, f"loss.{s}": math.log(p), f"tokens.{s}": float(tokens if s != "b" else 3 * tokens),
                    f"bigram_kn_ppl.{s}": floor[s], f"out_of_domain.{s}": float(s in ood)})
    return out


def build(path, stages: dict[str, tuple[str, list[tuple[str, dict, dict, dict]]]], margin: float | None = None) -> Store:
    """stages: name -> (kind, [(label, tags, model fields, finals)]). Every run is recorded done."""
    s = Store(path)
    s.bind(tier="test", metric="in_domain")
    if margin is not None:
        s.bind(floor_margin=str(margin))
    finals_of = {}
    for stage, (kind, members) in stages.items():
        reqs = []
        for i, (label, tags, fields, finals) in enumerate(members):
            seed = tags.get("seed", 42)
            spec = {"kind": "train", "model": model(**fields), "train": {"steps": 10, "lr": 1e-3, "min_lr": 1e-4,
                                                                         "warmup_steps": 2, "weight_decay": 0.1},
                    "seed": seed}
            r = RunRequest(name=f"{stage}-{label}", kind="train", spec=spec, tier="test", seed=seed)
            reqs.append((label, {"arch": "cart", "d": 64, "P": fields.get("P", 2), "R": fields.get("R", 2), **tags}, r))
            finals_of[f"{stage}-{label}"] = finals
        raw = {"grid": {"n_prelude": [2, 4], "n_loops": [2, 6]}} if kind == "grid" else {}
        assert s.add_stage(stage, {"kind": kind, "title": stage, "raw": raw}, None, reqs)
    while (run := s.claim("w", 60)) is not None:
        name = run.name.rsplit("-", 1)[0]
        assert s.finish(run, summary={"final": {}}, finals=finals_of[name], metrics=[])
    return s


def test_in_domain_mix_and_its_floor_are_token_weighted(tmp_path):
    f = _finals({"a": 100.0, "b": 200.0, "code": 900.0}, {"a": 150.0, "b": 250.0, "code": 800.0})
    s = build(tmp_path, {"x": ("variants", [("m", {"variant": "v"}, {}, f)])})
    m = A.Study(s).members("x")[0]
    mix = math.exp((math.log(100) * 1000 + math.log(200) * 3000) / 4000)  # code is out of domain
    assert m.metric("in_domain") == pytest.approx(mix)
    assert m.floor("in_domain") == pytest.approx(math.exp((math.log(150) * 1000 + math.log(250) * 3000) / 4000))
    assert m.metric("a") == 100.0 and m.floor("code") == 800.0 and m.floor_ratio("a") == pytest.approx(100 / 150)
    assert m.clears_floor("in_domain", 0.10) and not m.clears_floor("in_domain", 0.30)


def _ablation_study(tmp_path, no_lti_ppl, floor, margin=None):
    ms = []
    for seed, (base, var) in zip((42, 137, 271), no_lti_ppl):
        ms.append((f"cart-s{seed}", {"variant": "cart", "seed": seed}, {}, _finals({"a": base, "code": 1}, {"a": floor, "code": 1})))
        ms.append((f"nolti-s{seed}", {"variant": "no_lti", "seed": seed}, {"lti_gate": False},
                   _finals({"a": var, "code": 1}, {"a": floor, "code": 1})))
    return A.Study(build(tmp_path, {"ablations": ("variants", ms)}, margin))


def _verdict(study, claim_id):
    return next(f for f in A.findings(study) if f["id"] == claim_id)["verdict"]


def test_no_effect_claim_reproduced_only_by_equivalence_and_only_above_the_floor(tmp_path):
    tight = [(100.0, 100.1), (100.2, 100.15), (99.9, 99.95)]
    assert _verdict(_ablation_study(tmp_path / "a", tight, floor=150.0), "no_lti").startswith("reproduced (equivalent")
    worse = [(100.0, 110.0), (100.2, 110.3), (99.9, 109.8)]
    assert _verdict(_ablation_study(tmp_path / "b", worse, floor=150.0), "no_lti").startswith("not reproduced")
    # the same numbers below the floor (floor 90 < ppl): no verdict
    assert _verdict(_ablation_study(tmp_path / "c", worse, floor=90.0), "no_lti").startswith("not tested: 6 of 6 runs")
    # above the floor, but not by the study's 10 % margin
    assert _verdict(_ablation_study(tmp_path / "d", worse, floor=115.0, margin=0.10), "no_lti").startswith("not tested")


def test_every_finding_names_its_published_numbers_and_rule(tmp_path):
    study = _ablation_study(tmp_path, [(100.0, 100.1), (100.2, 100.15), (99.9, 99.95)], floor=150.0)
    for f in A.findings(study):
        assert f["paper"] and f["measure"] and f["rule"] and f["ours"] and f["verdict"]
    from cart.experiments import published as PUB
    assert "no_hyper" not in {f["id"] for f in A.findings(study)}  # no such variant in this study: not evaluated
    assert {c.id for c in A.CLAIMS} >= {"dense_stored", "dense_effective", "no_lti", "rho_decay", "contraction"}
    assert str(PUB.ABLATIONS["unshared_core"]) in next(c for c in A.CLAIMS if c.id == "unshared_core").paper()


def test_grid_effects_compare_each_field_at_fixed_others(tmp_path):
    ms = []
    for P in (2, 4):
        for R in (2, 6):
            for seed in (1, 2, 3):
                p = 100.0 * (0.9 if P == 4 else 1.0) * (1 + 0.001 * seed)
                ms.append((f"P{P}-R{R}-s{seed}", {"seed": seed}, {"P": P, "R": R}, _finals({"a": p, "code": 1}, {"a": 200.0, "code": 1})))
    g = A.grid_effects(A.Study(build(tmp_path, {"q5": ("grid", ms)})), "q5")
    assert sorted(g["fields"]) == ["P", "R"] and len(g["cells"]) == 4
    byf = {(e["field"], tuple(e["at"].items())): e["cmp"] for e in g["effects"]}
    assert len(byf) == 4
    p_eff = byf[("n_prelude", (("n_loops", 2),))]
    assert p_eff.rel == pytest.approx(-0.1, abs=1e-3) and p_eff.significant
    r_eff = byf[("n_loops", (("n_prelude", 2),))]
    assert abs(r_eff.rel) < 1e-9 and not r_eff.significant


def test_gate_decay_explained_fraction(tmp_path):
    """A run whose mean gate follows the decay-only trajectory exactly: decay explains 100 %."""
    from cart.train.optim import WarmupCosine, decay_only_trajectory
    traj = decay_only_trajectory(math.log(9.0), WarmupCosine(1e-3, 1e-4, 2, 10), 0.1, 10)
    sig = [1 / (1 + math.exp(-a)) for a in traj]
    s = build(tmp_path, {"stage2": ("variants", [("m", {"variant": "v"}, {"fidelity": "paper"},
                                                  _finals({"a": 50.0, "code": 1}, {"a": 80.0, "code": 1}))])})
    run = s.runs()[0]
    with s.transaction() as db:  # the run's own log: gate mean / max per step
        db.executemany("INSERT INTO metrics (run_id, step, event, name, value) VALUES (?, ?, 'train', ?, ?)",
                       [(run.id, t, n, sig[t] + (0.001 if n == "gate_max" else 0)) for t in (2, 5, 10) for n in ("gate_mean", "gate_max")])
    study = A.Study(s)
    g = A.gate_decay(study, study.members("stage2")[0])
    assert g["decayed"] and g["explained"] == pytest.approx(1.0) and g["mean_minus_pred"] < 1e-12
    assert g["final"]["max"] == pytest.approx(sig[10] + 0.001)


def test_report_shows_each_held_out_set_against_its_floor(tmp_path):
    from cart.experiments import report

    # set a: one seed of three misses the 10 % margin; ood set `code`: every seed clears it
    ms = [(f"cart-s{seed}", {"variant": "cart", "seed": seed}, {}, _finals({"a": p, "code": 40.0}, {"a": 100.0, "code": 80.0}))
          for seed, p in ((42, 85.0), (137, 95.0), (271, 80.0))]
    study = A.Study(build(tmp_path, {"q1": ("variants", ms)}, margin=0.10))
    lines = report._floors(study)
    text = "\n".join(lines)
    assert "| stage | arm | seeds | a | code (ood) |" in text
    assert "| q1 | cart | 3 | 0.850 (worst 0.950; 2/3) | 0.500 (worst 0.500; 3/3) |" in text


def _one_member_stage(seed=42):
    return [("cart", {"variant": "cart", "seed": seed}, {}, _finals({"a": 80.0}, {"a": 100.0}))]


def test_stages_follow_the_plan_not_the_order_they_were_planned_in(tmp_path):
    """A resumed study plans stages in whatever order its sweeps ran; the report keeps the plan's order."""
    from cart.experiments.plans import load_plan

    plan = load_plan("cpu")
    late_first = ["q3_decay", "q1_gate", "q2_control", "q1_fix"]
    store = build(tmp_path, {name: ("variants", _one_member_stage()) for name in late_first})
    store.bind(plan_source="cpu")
    assert A.Study(store).stages == sorted(late_first, key=lambda n: plan.stages[n].index)
    assert A.Study(store).stages[:2] == ["q1_gate", "q1_fix"]


def test_stage_order_recorded_at_planning_wins_and_unknown_plans_keep_planning_order(tmp_path):
    store = build(tmp_path, {"b": ("variants", _one_member_stage()), "a": ("variants", _one_member_stage(137))})
    store.bind(plan_source="no/such/plan.toml")
    assert A.Study(store).stages == ["b", "a"]  # no index recorded, plan unreadable: the order they were planned in
    with store.transaction() as db:
        for name, index in (("a", 0), ("b", 1)):
            d = store.stage_expanded(name)["definition"]
            d["index"] = index
            db.execute("UPDATE stages SET definition = ? WHERE name = ?", (__import__("json").dumps(d), name))
    assert A.Study(store).stages == ["a", "b"]


def test_planning_records_each_stage_position(tmp_path):
    from cart.experiments.plans import expand, parse_plan

    plan = parse_plan({"tier": "t", "metric": "a", "train": {"steps": 2, "seq_len": 16},
                       "model": {"vocab_size": 64, "max_seq_len": 16, "d_model": 64, "n_prelude": 1, "n_loops": 1},
                       "stage": {"z": {"kind": "grid", "seeds": [1], "grid": {"n_loops": [1]}},
                                 "y": {"kind": "grid", "seeds": [1], "grid": {"n_loops": [2]}}}}, "t.toml")
    with Store(tmp_path) as s:
        s.bind(tier="t")
        assert expand(plan, s) == 2
        assert [s.stage_expanded(n)["definition"]["index"] for n in ("z", "y")] == [0, 1]


def _claim_study(tmp_path, vary_r_ppl: dict[int, tuple[float, float, float]], seeds=(42, 137, 271)):
    """A cpu-style study: the paper's claims found by stage kind, under the plan's own stage names
    (q2_parity, q4_train + q4_vary_r). vary_r_ppl: R -> ppl per seed of the model trained at R = 4."""
    from cart.experiments.store import spec_key

    fin = lambda p: _finals({"a": p}, {"a": 200.0})  # noqa: E731
    parity = [(f"{role}-{target}-s{seed}", {"seed": seed, "role": role, "target": target, "layers": layers, **({"arch": "dense"} if layers else {})},
               {"R": 4} if not layers else {"R": 1 + layers}, fin(ppl * (1 + 0.01 * i)))
              for i, seed in enumerate(seeds)
              for role, target, layers, ppl in (("reference", None, None, 100.0), ("dense", "stored", 4, 110.0),
                                                ("dense", "effective", 6, 90.0))]
    train = [(f"fixed_r4-s{seed}", {"seed": seed, "variant": "fixed_r4"}, {"P": 3, "R": 4}, fin(100.0)) for seed in seeds]
    store = build(tmp_path, {"q2_parity": ("parity", parity), "q4_train": ("variants", train)})
    runs = {r.name.rsplit("-", 1)[0]: r for r in store.runs()}  # names end in the key
    reqs, rows_of = [], {}
    for seed_i, seed in enumerate(seeds):
        src = runs[f"q4_train-fixed_r4-s{seed}"]
        spec = {"kind": "eval", "eval": "vary_r", "of": src.key, "loops": sorted(vary_r_ppl), "args": {}}
        r = RunRequest(name=f"q4_vary_r-s{seed}", kind="eval", spec=spec, tier="test", seed=seed)
        reqs.append((f"fixed_r4-s{seed}", {"arch": "cart", "d": 64, "P": 2, "R": 4, "seed": seed, "variant": "fixed_r4",
                                           "source_stage": "q4_train"}, r))
        rows_of[spec_key(spec)] = {"trained_loops": 4, "rows": [{"n_loops": R, "contraction_mean": 0.9, "ppl": {
            "a": {"ppl": v[seed_i], "loss": math.log(v[seed_i]), "tokens": 1000, "out_of_domain": False},
            "code": {"ppl": 40.0, "loss": math.log(40.0), "tokens": 500, "out_of_domain": True}}}
                                                                for R, v in vary_r_ppl.items()]}
    assert store.add_stage("q4_vary_r", {"kind": "vary_r", "title": "q4", "raw": {}}, None, reqs)
    while (run := store.claim("w", 60)) is not None:
        assert store.finish(run, summary=rows_of[run.key], finals={}, metrics=[])
    return A.Study(store)


def test_claims_are_found_by_stage_kind_and_vary_r_is_tested_over_seeds(tmp_path):
    study = _claim_study(tmp_path, {1: (300.0, 520.0, 410.0), 4: (100.0, 170.0, 140.0), 8: (104.0, 176.0, 146.0)})
    f = {x["id"]: x for x in A.findings(study)}
    assert {"dense_stored", "dense_effective", "vary_r"} <= set(f)
    assert "CART vs dense 4L" in f["dense_stored"]["ours"] and f["dense_stored"]["verdict"].startswith("contradicted")
    assert "CART vs dense 6L" in f["dense_effective"]["ours"] and f["dense_effective"]["verdict"] == "reproduced"
    # both sides worse in every seed, by a steady factor: the paired test over the three models says so
    assert f["vary_r"]["verdict"] == "reproduced"
    curve = A.vary_r(study, "q4_vary_r")[0]["curve"]
    assert curve[1]["ppl"] == {"a": 300.0, "code": 40.0, "in_domain": pytest.approx(300.0)}  # the mix leaves ood out
    assert "q4_train: fixed_r4 (trained R4): R1 +" in f["vary_r"]["ours"] and "R8 +" in f["vary_r"]["ours"]


def test_vary_r_claim_is_one_sided_when_more_loops_do_not_hurt(tmp_path):
    study = _claim_study(tmp_path, {1: (300.0, 520.0, 410.0), 4: (100.0, 170.0, 140.0), 8: (101.0, 168.0, 141.0)})
    f = {x["id"]: x for x in A.findings(study)}
    assert f["vary_r"]["verdict"] == "undetermined or one-sided: R1 worse, R8 no significant change"


def test_report_gives_each_r_its_paired_effect_against_the_trained_r(tmp_path):
    from cart.experiments import report

    study = _claim_study(tmp_path / "s", {1: (300.0, 520.0, 410.0), 4: (100.0, 170.0, 140.0), 8: (104.0, 176.0, 146.0)})
    text = "\n".join(report._vary_r(study, report.Figures(tmp_path / "out"), False, "q4_vary_r", "Q4"))
    assert "| R | ppl in-domain mix | ppl a | contraction | vs R = 4 [95 % CI], paired over seeds | test |" in text
    assert "| **4** | " in text and "| baseline |  |" in text
    r8 = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    assert "| +3.94 % [+3.0 %, +4.9 %] | p = 0.003, MDE 1.1 % |" in r8  # 104/100, 176/170, 146/140, paired


def test_variant_tables_show_the_metric_the_effect_is_measured_on(tmp_path):
    """The effect column is on the in-domain mix, so the mix itself stands beside the per-set columns."""
    from cart.experiments import report

    ms = [(f"{v}-s{seed}", {"variant": v, "seed": seed}, {"R": 2 if v == "cart" else 3},
           _finals({"a": p * (1 + 0.01 * i), "code": 40.0}, {"a": 200.0, "code": 80.0}))
          for v, p in (("cart", 100.0), ("other", 90.0)) for i, seed in enumerate((42, 137, 271))]
    study = A.Study(build(tmp_path, {"q1": ("variants", ms)}))
    text = "\n".join(report._variants_section(study, "q1", "Q1", ""))
    assert "| variant | d | arch | stored | effective | ppl in-domain mix | ppl a | ppl code (ood) |" in text
    assert "| cart | 64 | cart |" in text and "| 101.00 ± 1.00 (n=3) | 101.00 ± 1.00 (n=3) | 40.00 ± 0.00 (n=3) |" in text
