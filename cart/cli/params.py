"""`cart params`: stored/effective parameters, leverage, FLOPs and the dense parity depths."""
from __future__ import annotations

import json

from cart.accounting import account, parity
from cart.cli.common import add_model_args, config_from_args, positive_int
from cart.config import CARTConfig, config_to_dict


def register(sub) -> None:
    p = sub.add_parser("params", help="parameter and FLOP accounting for any config, with dense parity depths",
                       description="Example: cart params --d-model 1024 --n-prelude 6 --n-loops 8 --vocab-size 32000 --fidelity paper")
    add_model_args(p)
    p.add_argument("--seq-len", type=positive_int, default=None, help="sequence length for FLOPs (default: max_seq_len)")
    p.add_argument("--paper-flops", action="store_true", help="FLOPs in the paper's convention (no LM head)")
    p.add_argument("--count-unused", action="store_true",
                   help="count the gate, blend and loop-index parameters an ablation leaves unused, as the published code "
                        "does (default: only parameters the model has and uses, equal to the built model's count)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = config_from_args(args)
    acc = account(cfg, seq_len=args.seq_len, include_head=not args.paper_flops, count_unused=args.count_unused)
    out = {"config": config_to_dict(cfg), "accounting": acc.to_dict(),
           "unused_parameters": "counted (published convention)" if args.count_unused else "not counted"}
    if isinstance(cfg, CARTConfig):
        out["parity"] = {t: parity(cfg, t).__dict__ for t in ("stored", "effective")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    T = acc.seq_len
    kind = f"CART d={cfg.d_model} P={cfg.n_prelude} R={cfg.n_loops} ({cfg.fidelity})" if isinstance(cfg, CARTConfig) else \
        f"Dense d={cfg.d_model} {cfg.n_layers}L ({cfg.attention}{', shared' if cfg.share_layers else ''})"
    rows = [
        ("model", kind),
        ("vocab", f"{cfg.vocab_size:,}"),
        ("stored params", f"{acc.stored:,}" + (" (unused ablated parameters counted)" if args.count_unused else "")),
        ("effective params", f"{acc.effective:,}"),
        ("leverage", f"{acc.leverage:.3f}"),
        ("core block params" if isinstance(cfg, CARTConfig) else "layer params", f"{acc.core:,}"),
        (f"fwd FLOPs/token (T={T}{', no head' if args.paper_flops else ''})", f"{acc.fwd_flops_per_token / 1e6:,.2f} M"),
        (f"fwd FLOPs/sequence", f"{acc.fwd_flops_per_token * T / 1e9:,.1f} G"),
        ("train FLOPs/token", f"{acc.train_flops_per_token / 1e6:,.2f} M"),
    ]
    if isinstance(cfg, CARTConfig):
        for t in ("stored", "effective"):
            m = parity(cfg, t)
            rows.append((f"dense at {t} parity", f"{m.n_layers} layers = {m.dense_params:,} ({m.rel_error:+.2%} vs {m.target_params:,})"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0
