#!/usr/bin/env bash
# The cpu-tier pilot (issue: a cpu tier whose models clear the n-gram floor). Run from a pinned
# checkout (git worktree add ../study-wt <commit>) after `cart data prepare cpu`; each candidate logs
# its validation ppl beside the token-matched Kneser-Ney bigram at every eval (ngram_floors=every_eval).
# One thread each (the machine is shared); tokens-to-floor does not depend on the thread count.
set -euo pipefail
# --fidelity stable: the default when the pilot ran (paper fidelity is the default since the cpu study's Q1)
common=(--fidelity stable --eval-tokens 16384 --final-eval-tokens 16384 --ngram-floors every_eval --ckpt-every 500 --keep-checkpoints 1 --tensorboard false)
# A: the README main job's shape (d192 P2 R4, 8k BPE, seq 256, batch 16, lr 2e-3), trained 3.75x longer
OMP_NUM_THREADS=1 cart train --preset main --out-dir runs/pilot/A --steps 3000 --eval-every 250 "${common[@]}"
# C: the same shape on a 4k BPE (cart data prepare results/pilot/cpu-v4096.toml), 1,500 steps (6.1M tokens)
OMP_NUM_THREADS=1 cart train --preset main --out-dir runs/pilot/C --steps 1500 --eval-every 250 --data data/cpu-v4096 --vocab-size 4096 "${common[@]}"
#    (C stopped at step ~370: its in-domain ratio was 1.95 at 1.0M tokens against A's 1.62; the 4k BPE makes the
#     bigram relatively stronger)
# D: A's shape with twice the learning rate, a schedule that ends at 6.1M tokens (1,500 steps)
OMP_NUM_THREADS=1 cart train --preset main --out-dir runs/pilot/D --steps 1500 --eval-every 250 --lr 4e-3 --min-lr 4e-4 "${common[@]}"
#    (D diverged at step ~270: grad norm 16 -> 386, loss 5.8 -> 7.5; stopped)
# E: the study's candidate recipe: A's shape and learning rate with a schedule that ends at 6.1M tokens
OMP_NUM_THREADS=1 cart train --preset main --out-dir runs/pilot/E --steps 1500 --eval-every 250 "${common[@]}"
