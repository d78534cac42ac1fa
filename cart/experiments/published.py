"""The paper's published results (SPEC §4), as data, for the `paper`-tier report to print beside ours.

Keys follow the analysis tables: widths d, loop counts R, prelude depth P. Perplexities are
ppl_wiki unless named otherwise. Nothing here is derived; misprinted parameter counts (SPEC §6.6)
are deliberately absent: those are always computed (`cart.accounting`).
"""
from __future__ import annotations

# Stage 1 best per width (all P = 6): (R, ppl_wiki, ppl_tiny, ppl_edu, rho)
STAGE1_BEST = {
    256: (6, 184.9, 12.31, 161.3, 0.8927),
    512: (8, 136.4, 8.40, 114.5, 0.8936),
    768: (8, 115.0, 7.06, 95.4, 0.8956),
    1024: (8, 97.73, 6.04, 82.0, 0.8966),
}
STAGE1_P_ORDER = "P = 6 > 4 > 3 > 2 at every R and d"
# relative ppl_wiki improvement from R = 2 to R = 8 at P = 6, per width (positive = more loops help)
STAGE1_LOOP_BENEFIT = {256: -0.0025, 512: 0.0172, 768: 0.0281, 1024: 0.0524}

# Stage 2: 3-seed mean ppl_wiki at P = 6 per (d, R)
STAGE2_MEAN = {
    (256, 6): 41.17, (256, 8): 40.31, (256, 10): 40.71,
    (512, 6): 27.10, (512, 8): 27.20, (512, 10): 27.38,
    (768, 6): 22.85, (768, 8): 22.86, (768, 10): 22.96,
    (1024, 6): 20.35, (1024, 8): 20.40, (1024, 10): 20.50,
}
# the Stage 2 grid itself: P = 6 at every width, R from the table above (SPEC §3)
STAGE2_GRID = {"n_prelude": 6, "n_loops": sorted({R for (_, R) in STAGE2_MEAN}), "d_model": sorted({d for (d, _) in STAGE2_MEAN})}
STAGE2_SPEARMAN = 0.905  # Stage 1 vs Stage 2 over the 8 shared cells (d x R in {6, 8}, P = 6)

# Parity at d = 1024 (ppl_wiki, 3-seed means); CART is P = 6, R = 6
PARITY_1024 = {"cart": 20.35, "dense_stored_7L": 20.13, "dense_effective_12L": 18.32}

# Ablations at d = 1024, R = 6, P = 6, seed 42 (ppl_wiki); same-seed CART = 20.45
ABLATIONS = {
    "cart": 20.45,
    "unfrozen_kv": 20.14,
    "r1": 20.57,
    "unshared_core": 19.22,
    "unshared_selfattn_core": 19.27,
    "no_hyper": 20.49,
    "no_lti": None,  # "within seed noise" (no number printed)
    "no_loop_embedding": None,  # "within seed noise"
}
# the paper's gap split: 20.35 (CART, 3 seeds) -> 19.22 (unshared, seed 42) -> 18.32 (dense 12L, 3 seeds)
GAP_SPLIT = (20.35, 19.22, 18.32)

# rho = max sigmoid(a) at the end of Stage 2, and the d1024 R6 trajectory
RHO_STAGE2_RANGE = (0.790, 0.830)
RHO_TRAJECTORY_1024_R6 = {500: 0.899, 30_500: 0.828}

# variable-R inference, d1024 trained at R = 6: R -> (LAMBADA acc %, LAMBADA ppl)
VARY_R_LAMBADA = {2: (7.74, 2632.6), 4: (18.01, 328.8), 6: (23.04, 163.7), 8: (22.12, 173.0), 16: (18.55, 269.4)}

# zero-shot at the best R, d1024, in %, and the metric the paper reports for each task
ZERO_SHOT_1024 = {"hellaswag": 28.04, "arc_challenge": 21.84, "lambada": 23.02, "piqa": 58.11}
ZERO_SHOT_METRIC = {"hellaswag": "acc_norm", "arc_challenge": "acc_norm", "lambada": "acc", "piqa": "acc"}

# throughput on one RTX 3090, bf16: (tokens/s, MFU)
THROUGHPUT = {(1024, 6): (32_393, 0.49), (256, 6): (134_985, None)}
