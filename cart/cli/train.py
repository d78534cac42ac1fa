"""`cart train`: parse a preset/config file plus flags into a TrainConfig and call `cart.train.train`."""
from __future__ import annotations

import argparse
import json
import signal
import sys

from cart.cli.common import add_config_flags, add_model_args, flag_values, model_overrides

EPILOG = """examples:
  cart data prepare smoke && cart train --preset smoke
  cart train --preset cpu --n-loops 4 --lr 1e-3 --out-dir runs/r4
  cart train --config run.json --out-dir runs/x --resume        (a TOML/JSON of TrainConfig fields; "preset" = its base)
  cart train --preset cpu --loop-sampling uniform --loop-min 2 --loop-max 8 --backprop-loops 4
  torchrun --standalone --nproc_per_node=2 -m cart.train --preset cpu --out-dir runs/ddp
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m cart.train --preset paper

Rerunning the same command continues the run from its newest good checkpoint (--no-resume refuses
a directory that already holds checkpoints). Exit status: 0 finished, 3 non-finite loss/gradients,
128+N stopped by signal N after saving a checkpoint."""


def register(sub) -> None:
    from cart.train.config import LoopSampling, TrainConfig, list_presets

    p = sub.add_parser("train", help="train a model on prepared data (presets: " + ", ".join(list_presets()) + ")",
                       description="Train CART or a dense baseline with the paper's recipe; exact resume, checkpoints, metrics.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help=f"training tier: {', '.join(list_presets())}")
    p.add_argument("--config", default=None, metavar="FILE", help="a .toml/.json file of TrainConfig fields (applied over --preset)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the newest good checkpoint in --out-dir if there is one (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh; refuse a run dir that holds checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")

    add_config_flags(p.add_argument_group("training (any TrainConfig field; unset fields keep the preset's value)"),
                     TrainConfig, "train_")
    add_config_flags(p.add_argument_group("training-time variable R (TrainConfig.loop_sampling)"), LoopSampling, "loop_")
    add_model_args(p)
    p.set_defaults(func=run)


def config_from_args(args):
    from cart.train.config import TrainConfig, load_preset, merge

    if not args.preset and not args.config:
        raise ValueError("give --preset NAME (e.g. --preset smoke) or --config FILE")
    base = load_preset(args.preset) if args.preset else {}
    if args.config:
        base = merge(base, load_preset(args.config))
    over = flag_values(args, "train_")
    loop = flag_values(args, "loop_")
    if loop:
        over["loop_sampling"] = loop
    model = model_overrides(args)
    if args.kind:
        model["kind"] = args.kind
    if model:
        over["model"] = model
    source = " + ".join(x for x in (f"preset {args.preset!r}" if args.preset else "", args.config or "", "flags") if x)
    return TrainConfig.from_dict(merge(base, over), source=source)


def run(args) -> int:
    from cart.train import NonFiniteError, train

    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    try:
        summary = train(cfg, resume=args.resume)
    except NonFiniteError as e:
        print(f"cart train: stopped: {e}", file=sys.stderr)
        return 3
    if summary.get("status") == "interrupted":
        return 128 + int(signal.Signals[summary["signal"]])
    return 0
