"""Run keys are the identity of every run in a study: a change to how configs are validated, coerced or
written out must not change them, or an existing study would retrain everything it already has.

The pins below were computed on main at 4f8a410 (before configs were validated by `cart.validation`)
by this file's `_keys`: every stage of the shipped plans expanded in a fresh study, each finished run
given a made-up perplexity fixed by its name, so that derived stages (Stage 2) and evaluation stages
(vary_r, tasks) expand too. Per stage: the member count and the sha256 of its sorted (label, run key)
pairs; the first run key of the first stage of `smoke`, `cpu` and `paper` in full. A deliberate change
to a shipped plan changes its stages' pins: recompute them with `_keys` and say so in the commit.
Recomputed: cpu Q2, Q4 and Q5 when paper fidelity became the default and the cpu plan's base (Q1's
winner); Q1, Q1b and Q3 name their fidelity and kept their keys.
"""
import hashlib
import json

import pytest

from cart.experiments.plans import expand, load_plan
from cart.experiments.store import Store

FIRST = {
    "smoke/stage1": ("cart-d64-P1-R1-paperfid-s42", "be39ace26f26780da83c4742c96b0914a7af565c8f2523fc9adc82c93b06c5c0"),
    "cpu/q1_gate": ("paper-d192-s137", "956c24f574f1b992640f92810a69c6cb8dcb603ec66f92e179204899009c296b"),
    "paper/stage1": ("cart-d1024-P2-R2-paperfid-s42", "8bc13472b5bff7e24417d60d5461765e506abf447fb1c77eb39a1be52ccd5b85"),
}

# stage -> (members, sha256(json.dumps(sorted [label, key] pairs))[:32])
PINNED = {
    "smoke/stage1": (4, "76e5813c7b40f71a6b711fb1a0b1cf22"),
    "smoke/stage2": (4, "d6a936ac08d92af28f283b8841da2418"),
    "smoke/parity": (6, "bdd2880348bc5e89c4878b38a37f0c1e"),
    "smoke/ablations": (8, "0ccdd882dc1cf2cf30952ba93506b431"),
    "smoke/control": (3, "e8a5f5cf502c2b58a24673369ffe7506"),
    "smoke/fidelity": (2, "4183c4ffbacb4a06aab05b46fc9df885"),
    "smoke/vary_r_train": (2, "aac6e9c25259c0e75a35be85e385be28"),
    "smoke/vary_r": (3, "88c6e2551a077135508da440a7175279"),
    "cpu/q1_gate": (12, "289611b476c00440fae829e60b188c23"),
    "cpu/q1_fix": (3, "b5ab6617a98e459843093da481c08498"),
    "cpu/q2_parity": (9, "2cfe99aa553c0b97a6f46d04d9d9b2e8"),
    "cpu/q2_control": (6, "725b73cb2d1cc0dc93eb5be8e29d5625"),
    "cpu/q3_decay": (6, "6045b2f9710e2b63997efccb475dd6c9"),
    "cpu/q4_train": (9, "03c7798d75d3b5f581a960f1eb682c06"),
    "cpu/q4_vary_r": (9, "e805c4f009988659aa6e245d6c605837"),
    "cpu/q5_p_vs_r": (12, "eafbec7c9db77d9124a18b006bee2c4e"),
    "paper/stage1": (64, "55ee88f37e08ad94943b157d6850a36b"),
    "paper/stage2": (36, "5fe7f839888ecfe50adc785668c67d21"),
    "paper/parity": (39, "2a518ff7d2a5cef1cd5c7d25a1f7c509"),
    "paper/ablations": (8, "afc02c9560cecbd63b11aa792e963427"),
    "paper/control": (9, "704ae607dde8f6cdf055dbe7c9d80a32"),
    "paper/fidelity": (8, "be18233c5d2b7a19873abbc838ef487c"),
    "paper/vary_r_train": (2, "bc05901fd04bb4c6e0cd657fd507ac97"),
    "paper/vary_r": (3, "033e2d79f7194110a0e1378ebe377faf"),
    "paper/zero_shot": (2, "86679560ef26ee08dc66e1a6067626dc"),
    "cpu-shape/stage1": (32, "edcf22368dc70b4a54d64b9f2058227f"),
    "cpu-shape/stage2": (18, "4d6db360b73c170b9344066f5784f0fe"),
    "cpu-shape/parity": (18, "23eeb047e95ead20f3a3b3c364bea183"),
    "cpu-shape/ablations": (8, "aa30358cac228cca77e1b75a25e1bb1a"),
    "cpu-shape/control": (3, "9f678e39d95650d2465d505c3621a77c"),
    "cpu-shape/fidelity": (4, "a30d79898b1a73b254eda407f323b471"),
    "cpu-shape/vary_r_train": (2, "6022777976cb915b618a334e4c489fc5"),
    "cpu-shape/vary_r": (3, "722a8e8cdd1da53124d75b7179d52679"),
}


def _made_up(name: str) -> float:
    return 5 + int(hashlib.sha256(name.encode()).hexdigest()[:6], 16) / 1e6


def _keys(tier: str, root) -> dict[str, list[list[str]]]:
    plan = load_plan(tier)
    with Store(root) as s:
        s.bind(tier=plan.tier)
        while True:
            planned = expand(plan, s)
            while (run := s.claim("w", 60)) is not None:
                s.finish(run, summary={}, finals={f"ppl.{plan.metric}": _made_up(run.name)}, metrics=[])
            if not planned:
                break
        return {f"{tier}/{st}": sorted([m["label"], s.run(m["run_id"]).key] for m in s.members(st)) for st in plan.stages}


@pytest.mark.parametrize("tier", ["smoke", "cpu", "paper", "cpu-shape"])
def test_run_keys_of_the_shipped_plans_are_unchanged(tier, tmp_path):
    got = _keys(tier, tmp_path)
    assert set(got) == {k for k in PINNED if k.startswith(f"{tier}/")}
    for stage, pairs in got.items():
        if stage in FIRST:
            assert pairs[0] == list(FIRST[stage]), stage
        digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:32]
        assert (len(pairs), digest) == PINNED[stage], stage
