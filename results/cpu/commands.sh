#!/usr/bin/env bash
# The cpu study as it ran in this session (Q1 and Q1b), from a pinned checkout of main at 6c971d6:
#   git worktree add ../study-wt3 6c971d6 && cd ../study-wt3 && bash scripts/setup.sh && . .venv/bin/activate
# 2 workers x 1 thread on a 2-core AMD EPYC; OMP_WAIT_POLICY=PASSIVE. Q1b (stage q1_fix) was added to the
# plan after Q1's first results; the pinned checkout read the plan from runs/cpu-plan.toml, a copy of
# cart/presets/plans/cpu.toml at d945b5f (main's plan now differs only in Q2-Q5's base fidelity, not run here).
set -euo pipefail
cart data prepare cpu
cart sweep run q1_gate,q3_decay --tier cpu --study runs/study-cpu --workers 2 --threads 1              # stopped at 13:21 (two runs resumed later)
cart sweep run q1_gate,q1_fix,q3_decay --tier runs/cpu-plan.toml --study runs/study-cpu --workers 2 --threads 1   # stopped at 13:52, before Q3's own arm started
cart sweep run q1_gate,q1_fix --tier runs/cpu-plan.toml --study runs/study-cpu --workers 2 --threads 1
# the report, with main's report code:
cart report runs/study-cpu --out results/cpu --commands results/cpu/commands.sh
# what remains (Q2-Q5 and Q3's exempt arm), resuming the same study with main's plan:
#   cart sweep run all --tier cpu --study runs/study-cpu --workers 2
