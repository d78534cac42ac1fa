"""Analysis of a study, split along its seams:

- `stats`: means with intervals, Welch's and the paired t-test on log-perplexity, MDE, equivalence, Spearman;
- `view`: a read-only view of a study's store (members, finals, n-gram floors, the in-domain mix);
- `comparisons`: the stage-by-stage comparisons as plain data;
- `claims`: the paper's claims as records, and the findings table generated from them.
Nothing here writes or reads files: it takes a `Store`; `cart.experiments.report` renders it.
"""
from cart.experiments.analysis.claims import CLAIMS, Claim, Finding, findings
from cart.experiments.analysis.comparisons import (ablations, floors, gap_decomposition, gate_decay, grid_effects,
                                                   paper_gap_decomposition,
                                                   parity_gaps, rho_summary, stage1, stage2, throughput, variants, vary_r)
from cart.experiments.analysis.stats import (Comparison, Stat, directional_verdict, equivalent, null_verdict, p_text, paired, ranks,
                                             spearman, t_cdf, t_ppf, welch)
from cart.experiments.analysis.view import IN_DOMAIN, Member, Study

__all__ = ["CLAIMS", "Claim", "Finding", "findings", "ablations", "floors", "gap_decomposition", "gate_decay", "grid_effects",
           "paper_gap_decomposition", "parity_gaps", "rho_summary", "stage1", "stage2", "throughput", "variants", "vary_r",
           "Comparison", "Stat", "directional_verdict", "equivalent", "null_verdict", "p_text", "paired", "ranks", "spearman", "t_cdf", "t_ppf",
           "welch", "IN_DOMAIN", "Member", "Study"]
