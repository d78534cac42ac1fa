"""`cart report <study-dir>`: the study's Markdown report, PNG figures and exported results."""
from __future__ import annotations

from pathlib import Path

from cart.cli import CLIError
from cart.cli.common import check_output_dir


def register(sub) -> None:
    p = sub.add_parser("report", help="write a study's Markdown report with figures and exported results",
                       description="Example: cart report runs/study-cpu --out results/cpu.  For standalone runs trained with "
                                   "--ngram-floors every_eval: cart report --runs runs/pilot/A runs/pilot/B --out results/pilot "
                                   "(tokens needed to beat the n-gram floor)")
    p.add_argument("study", nargs="?", help="study directory (made by `cart sweep run`)")
    p.add_argument("--runs", nargs="+", default=None, help="run directories instead of a study: learning curves against the floor")
    p.add_argument("--out", default=None, help="output directory (default: <study>/report)")
    p.add_argument("--metric", default=None, help="validation set to rank by (default: the plan's)")
    p.add_argument("--commands", default=None, help="a text file of the commands that produced the study, quoted in the report")
    p.set_defaults(func=run)


def run(args) -> int:
    from cart.experiments.report import build_report, build_runs_report
    from cart.experiments.store import DB_NAME

    check_output_dir(args.out, "--out")
    if args.runs:
        if args.study or not args.out:
            raise CLIError("--runs takes run directories instead of a study, and needs --out")
        print(f"wrote {build_runs_report(args.runs, args.out)}")
        return 0
    if not args.study:
        raise CLIError("give a study directory, or --runs RUN_DIR ... --out DIR")
    if not (Path(args.study) / DB_NAME).is_file():
        raise CLIError(f"no study at {args.study} (expected {Path(args.study) / DB_NAME})")
    commands = None
    if args.commands:
        commands = [line.rstrip() for line in Path(args.commands).read_text().splitlines() if line.strip()]
    path = build_report(args.study, args.out, args.metric, commands)
    print(f"wrote {path} (+ figures/, results.csv, results.json, metrics.csv.gz)")
    return 0
