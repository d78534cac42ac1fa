"""`cart report <study-dir>`: the study's Markdown report, PNG figures and exported results."""
from __future__ import annotations

from pathlib import Path

from cart.cli import CLIError


def register(sub) -> None:
    p = sub.add_parser("report", help="write a study's Markdown report with figures and exported results",
                       description="Example: cart report runs/study-cpu --out results/cpu")
    p.add_argument("study", help="study directory (made by `cart sweep run`)")
    p.add_argument("--out", default=None, help="output directory (default: <study>/report)")
    p.add_argument("--metric", default=None, help="validation set to rank by (default: the plan's)")
    p.add_argument("--commands", default=None, help="a text file of the commands that produced the study, quoted in the report")
    p.set_defaults(func=run)


def run(args) -> int:
    from cart.experiments.report import build_report
    from cart.experiments.store import DB_NAME

    if not (Path(args.study) / DB_NAME).is_file():
        raise CLIError(f"no study at {args.study} (expected {Path(args.study) / DB_NAME})")
    commands = None
    if args.commands:
        commands = [line.rstrip() for line in Path(args.commands).read_text().splitlines() if line.strip()]
    path = build_report(args.study, args.out, args.metric, commands)
    print(f"wrote {path} (+ figures/, results.csv, results.json, metrics.csv.gz)")
    return 0
