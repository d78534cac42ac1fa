#!/usr/bin/env bash
# The cpu study as it ran, in two sessions, from pinned checkouts of main (2 workers x 1 thread on a 2-core
# AMD EPYC, Zen 4; OMP_WAIT_POLICY=PASSIVE). The study directory runs/study-cpu is not committed.
set -euo pipefail
# Session 1, Q1 and Q1b, from main at 6c971d6 (Q1b, stage q1_fix, was added to the plan after Q1's first
# results; that checkout read the plan from runs/cpu-plan.toml, a copy of cart/presets/plans/cpu.toml at d945b5f):
#   git worktree add ../study-wt3 6c971d6 && cd ../study-wt3 && bash scripts/setup.sh && . .venv/bin/activate
cart data prepare cpu
cart sweep run q1_gate,q3_decay --tier cpu --study runs/study-cpu --workers 2 --threads 1              # stopped at 13:21 (two runs resumed later)
cart sweep run q1_gate,q1_fix,q3_decay --tier runs/cpu-plan.toml --study runs/study-cpu --workers 2 --threads 1   # stopped at 13:52, before Q3's own arm started
cart sweep run q1_gate,q1_fix --tier runs/cpu-plan.toml --study runs/study-cpu --workers 2 --threads 1
# Session 2, Q2-Q5 resuming the same study, from main at 214b1a8 (Q1's run keys are the same under its plan;
# Q2-Q5 study paper fidelity, the default Q1 chose):
#   cd ../study-wt3 && git checkout --detach 214b1a8
cart sweep run all --tier cpu --study runs/study-cpu --workers 2 --threads 1
# ... with one change of order while it ran: Q5's cheapest cells first (P2 R2, then P4 R2, then P4 R4) instead of
# the sweep's most-expensive-first, so that the time left completes whole cells over three seeds (done at 15:03
# with Python's sqlite3, priorities 7000000-7000008 by cell then seed; this statement orders the same):
#   sqlite3 runs/study-cpu/study.db "UPDATE runs SET priority = 7000000 + CASE WHEN name LIKE '%P2-R2%' THEN 0 WHEN name LIKE '%P4-R2%' THEN 3 ELSE 6 END WHERE plan = 'q5_p_vs_r' AND status = 'pending'"
# stopped at 17:23 after Q4's evaluations; then Q5's two remaining P2 R2 seeds (stopped at 17:39, as P4 R2 began):
cart sweep run q5_p_vs_r --tier cpu --study runs/study-cpu --workers 2 --threads 1
# The report, with main's report code:
cart report runs/study-cpu --out results/cpu --commands results/cpu/commands.sh
