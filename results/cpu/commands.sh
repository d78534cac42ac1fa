#!/usr/bin/env bash
# The commands that produced this study (run from the repository root on the 2-core CPU machine,
# 2026-11-29, shared with other jobs: load average 3-6 throughout).
set -euo pipefail
cart data prepare cpu                                                    # 65 s: fetch + tokenize + pack
cart sweep run all --tier cpu --study runs/study-cpu --workers 2        # 20:51:38 start
# 21:13: a concurrent edit of cart/model/layers.py (a custom RMSNorm autograd Function) broke the
# trainer's loop-Jacobian diagnostic; 6 Stage 1 runs failed 3 times each at their first eval and were
# recorded as failed with the traceback. Stopped the sweep (SIGTERM), the edit was fixed upstream
# (plain ops under torch.func), and the same command continued, retrying the failed runs from
# their last checkpoints:
cart sweep run all --tier cpu --study runs/study-cpu --workers 2 --retry-failed   # 21:14:29 -> 22:20:48
cart sweep run all --tier cpu --study runs/study-cpu --workers 2        # rerun: "nothing to do"
cart report runs/study-cpu --out results/cpu --commands results/cpu/commands.sh
