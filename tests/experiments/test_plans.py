"""Plans as data: every tier parses and expands; Stage 2 derivation; parity depths; analysis helpers."""
import pytest

from cart.experiments import analysis as A
from cart.experiments.plans import PLAN_DIR, PlanError, derive_stage2, expand, load_plan, parse_plan
from cart.experiments.store import Store


PAPER_STAGES = ["stage1", "stage2", "parity", "ablations", "control", "fidelity", "vary_r_train", "vary_r"]


@pytest.mark.parametrize("tier,extra", [("smoke", []), ("cpu-shape", []), ("paper", ["zero_shot"])])
def test_tier_plans_parse_with_every_stage(tier, extra):
    plan = load_plan(tier)
    assert plan.tier == tier
    assert list(plan.stages) == PAPER_STAGES + extra
    variants = set(plan.stages["ablations"].raw["variants"])
    assert variants == {"cart", "unfrozen_kv", "r1", "unshared_core", "unshared_selfattn_core", "no_hyper", "no_lti",
                        "no_loop_embedding"}
    assert plan.stages["stage2"].after == ["stage1"]


def test_cpu_plan_is_the_five_question_study(tmp_path):
    """The cpu tier: five questions (Q1 with its follow-up, the fix of the contractive gate), three seeds per arm,
    verdicts only above 0.9 x the n-gram floor; arms that name the same configuration share one run (42 trainings)."""
    plan = load_plan("cpu")
    assert list(plan.stages) == ["q1_gate", "q1_fix", "q2_parity", "q2_control", "q3_decay", "q4_train", "q4_vary_r", "q5_p_vs_r"]
    assert plan.metric == "in_domain" and plan.floor_margin == pytest.approx(0.10)
    assert all(st.raw.get("question") for st in plan.stages.values())
    with Store(tmp_path) as s:
        s.bind(tier="cpu")
        expand(plan, s, [st for n, st in plan.stages.items() if n != "q4_vary_r"])
        assert all(len({m["seed"] for m in s.members(n)}) == 3 for n in plan.stages if n != "q4_vary_r")
        assert len(s.runs()) == 42
        q1 = {m["tags"]["variant"]: m["run_id"] for m in s.members("q1_gate") if m["seed"] == 42}
        q3 = {m["tags"]["variant"]: m["run_id"] for m in s.members("q3_decay") if m["seed"] == 42}
        ref = next(m["run_id"] for m in s.members("q2_parity") if m["label"] == "cart-d192-s42")
        assert q1["paper"] == q3["decayed"] == ref  # Q2-Q5 study the default, Q1's winner
        assert s.run(q3["exempt"]).spec["train"]["decay_everything"] is False
        assert s.run(q1["residual"]).spec["model"]["lti_gate"] is False
        fix = next(m["run_id"] for m in s.members("q1_fix") if m["seed"] == 42)
        assert {k: s.run(fix).spec["model"][k] for k in ("fidelity", "gate_init", "hyper_init_gap")} == \
            {"fidelity": "stable", "gate_init": 0.99, "hyper_init_gap": 1.0}


def test_paper_plan_expands_to_the_published_grid(tmp_path):
    plan = load_plan("paper")
    with Store(tmp_path) as s:
        s.bind(tier="paper")
        expand(plan, s, [plan.stages[n] for n in ("stage1", "parity", "ablations")])
        assert s.stage_expanded("stage2") is None  # derived: waits for Stage 1
        s1 = s.members("stage1")
        assert len(s1) == 64
        r = s.run(s1[0]["run_id"])
        assert r.spec["train"]["steps"] == 3000 and r.spec["train"]["seq_len"] * r.spec["train"]["batch_size"] == 16384
        assert r.spec["model"]["fidelity"] == "paper" and r.spec["model"]["vocab_size"] == 32000
        depths = {(m["tags"]["d"], m["tags"]["target"]): m["tags"]["layers"] for m in s.members("parity") if m["tags"].get("role") == "dense"}
        assert depths[(1024, "stored")] == 7 and depths[(1024, "effective")] == 11 and depths[(1024, "extra")] == 12
        assert {d for d, _ in depths} == {256, 512, 768, 1024}
        ab = {m["tags"]["variant"]: s.run(m["run_id"]).spec["model"] for m in s.members("ablations")}
        assert ab["unfrozen_kv"]["freeze_kv"] is False and ab["r1"]["n_loops"] == 1
        assert ab["unshared_selfattn_core"]["core_attention"] == "self" and ab["unshared_selfattn_core"]["share_core"] is False
        # the ablation baseline is the parity stage's d1024 seed-42 CART reference: one run, two stages
        base = next(m for m in s.members("ablations") if m["tags"]["variant"] == "cart")
        ref = next(m for m in s.members("parity") if m["label"] == "cart-d1024-s42")
        assert base["run_id"] == ref["run_id"]


def test_stage2_pinned_to_the_published_grid(tmp_path):
    """derive.pin = "published": the paper's P 6, R 6/8/10 whatever Stage 1 says, with the rule's choice beside it."""
    raw = {"tier": "t", "metric": "m", "model": {"vocab_size": 64, "max_seq_len": 32},
           "train": {"steps": 1, "data": "data/none", "seq_len": 16},
           "stage": {"s1": {"kind": "grid", "grid": {"d_model": [64], "n_loops": [1]}},
                     "s2": {"kind": "grid", "grid": {"d_model": [64]}, "derive": {"from": "s1", "pin": "published"}}}}
    plan = parse_plan(raw)
    with Store(tmp_path) as s:
        s.bind(tier="t")
        expand(plan, s, [plan.stages["s1"]])
        expand(plan, s, [plan.stages["s2"]])  # Stage 1 not finished: nothing derived yet
        assert s.stage_expanded("s2") is None
        while (run := s.claim("w", 60)) is not None:
            s.finish(run, summary={}, finals={"ppl.m": 10.0}, metrics=[])
        expand(plan, s, [plan.stages["s2"]])
        der = s.stage_expanded("s2")["derivation"]
        assert der["P"] == 6 and der["R_set"] == [6, 8, 10] and der["rule_would_give"]["R_set"] == [1, 3]
        cells = sorted((s.run(m["run_id"]).spec["model"]["n_prelude"], s.run(m["run_id"]).spec["model"]["n_loops"])
                       for m in s.members("s2"))
        assert cells == [(6, 6), (6, 8), (6, 10)]
    with pytest.raises(PlanError, match="derive.pin"):
        parse_plan({**raw, "stage": {**raw["stage"], "s2": {"kind": "grid", "derive": {"from": "s1", "pin": "mine"}}}})


def test_stage2_rule_on_the_papers_stage1_gives_the_papers_stage2():
    # the paper's Stage 1: P = 6 best at every width, best R 6, 8, 8, 8
    from cart.experiments.published import STAGE1_BEST
    cells = {}
    for d, (R, wiki, *_rest) in STAGE1_BEST.items():
        for P in (2, 3, 4, 6):
            for r in (2, 4, 6, 8):
                cells[(d, P, r)] = [wiki * (1 + 0.02 * (6 - P)) * (1 + 0.01 * abs(r - R))]
    der = derive_stage2(cells, [-2, 0, 2])
    assert der["P"] == 6 and der["R_star"] == 8 and der["R_set"] == [6, 8, 10]


def test_plan_errors_name_the_problem():
    with pytest.raises(PlanError, match="unknown field"):
        parse_plan({"tier": "x", "metric": "m", "stage": {"a": {"kind": "grid", "grid": {"d_model": [64]}, "sede": [1]}}})
    with pytest.raises(PlanError, match="kind must be"):
        parse_plan({"tier": "x", "metric": "m", "stage": {"a": {"kind": "gird"}}})
    with pytest.raises(PlanError, match="must come before"):
        parse_plan({"tier": "x", "metric": "m", "stage": {
            "b": {"kind": "grid", "grid": {"d_model": [64]}, "derive": {"from": "a"}},
            "a": {"kind": "grid", "grid": {"d_model": [64]}}}})
    with pytest.raises(PlanError, match="unknown tier"):
        load_plan("no-such-tier")
    with pytest.raises(PlanError, match="floor_margin"):
        parse_plan({"tier": "x", "metric": "m", "floor_margin": 1.5, "stage": {"a": {"kind": "grid", "grid": {"d_model": [64]}}}})


def test_decay_only_gate_matches_the_spec():
    """SPEC §6.4: weight decay alone takes sigma(a) from 0.9 to 0.890 (3k steps) and 0.791 (30.5k), with
    the trainer's own schedule (lr 3e-4 -> 3e-5, 100 warmup, wd 0.1)."""
    import math

    from cart.train.optim import WarmupCosine, decay_only_trajectory

    for steps, expected in ((3000, 0.890), (30_500, 0.791)):
        a = decay_only_trajectory(math.log(9.0), WarmupCosine(3e-4, 3e-5, 100, steps), 0.1, steps)[-1]
        assert 1 / (1 + math.exp(-a)) == pytest.approx(expected, abs=5e-4)


def test_paper_gap_split_restated_with_one_denominator():
    g = A.paper_gap_decomposition()
    assert g["log"]["sharing"] + g["log"]["framing"] == pytest.approx(g["log"]["total"])
    assert g["rel_to_start"]["sharing"] == pytest.approx((20.35 - 19.22) / 20.35)
    assert g["rel_to_end"]["framing"] == pytest.approx((19.22 - 18.32) / 18.32)


@pytest.mark.parametrize("name", ["../../../X", "a/b", ".hidden"])
def test_a_stage_name_cannot_leave_the_study(name):
    raw = {"tier": "t", "metric": "m", "stage": {name: {"kind": "grid", "grid": {"n_loops": [2]}}}}
    with pytest.raises(PlanError, match="stage name"):
        parse_plan(raw, "plan.toml")


def test_run_directories_are_contained_in_the_study(tmp_path):
    from cart.experiments.orchestrator import Worker, run_dir_for
    from tests.experiments.conftest import make_study

    make_study(tmp_path, 1)
    with Store(tmp_path) as s:
        run = s.runs()[0]
        assert run_dir_for(tmp_path, run) == tmp_path.resolve() / "runs" / run.name
        s.db.execute("UPDATE runs SET name = '../../outside' WHERE id = ?", (run.id,))  # a damaged database
        run = s.runs()[0]
        with pytest.raises(ValueError, match="run name"):
            run_dir_for(tmp_path, run)
        claimed = s.claim("w", lease_s=60)
        assert Worker(tmp_path).execute(s, claimed) == "failed"
        assert "refused" in s.runs()[0].error and not (tmp_path.parent / "outside").exists()


def test_every_stage_kind_has_a_report_section():
    from cart.experiments import report
    from cart.experiments.plans import STAGE_KINDS

    assert set(report._BY_KIND) == set(STAGE_KINDS)
