"""`cart bench`: CART vs its dense baselines, measured side by side."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cart.cli.common import check_output_file, positive_int
from cart.paths import atomic_output


def register(sub) -> None:
    from cart.bench.suites import SUITES

    p = sub.add_parser(
        "bench", help="performance suites: train/forward/generate speed, MFU, cache bytes, data, torch.compile",
        description="Contenders run in one process, alternating, with warm-up and repeats; medians over "
                    "uncontended samples and same-round ratios. Example: cart bench --suite train cache --json results/bench/cpu.json")
    p.add_argument("--suite", nargs="+", choices=list(SUITES), default=None, metavar="NAME",
                   help=f"suites to run (default: all): {', '.join(SUITES)}")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the full result as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats: checks the plumbing in seconds (numbers mean nothing)")
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    p.add_argument("--repeats", type=positive_int, default=None, help="samples per contender (default 5; 2 with --quick)")
    p.add_argument("--data-recipe", default=None, help="recipe for the data suite (default: cpu; smoke with --quick)")
    p.add_argument("--data-dir", default=None, help="data root for the data suite (default: $CART_DATA_DIR or ./data)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for the compile suite (default inductor)")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="leave glibc malloc's defaults (by default large blocks are kept, not re-mmapped every step)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall clock (default), or this process's CPU time: with --threads 1, robust to other processes on the machine")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from cart.bench import format_table, run as run_bench

    check_output_file(args.json, "--json")
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench] {s}", file=sys.stderr, flush=True))
    res = run_bench(args.suite, quick=args.quick, device=args.device, repeats=args.repeats,
                    data_recipe=args.data_recipe, data_dir=args.data_dir, compile_backend=args.compile_backend,
                    tune_malloc=not args.no_tune_malloc, threads=args.threads, clock=args.clock, log=log)
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(format_table(res))
    failed = [k for k, v in res["suites"].items() if v.get("status") == "failed"]
    if failed:
        print(f"cart bench: suite(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0
