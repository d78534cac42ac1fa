"""`cart train`: parse a preset/config file plus flags into a TrainConfig and call `cart.train.train`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import typing
from dataclasses import fields

from cart.cli.common import _bool, add_model_args, model_overrides, nonneg_float, nonneg_int, positive_int

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

_LOOP_FLAGS = {"loop_min": "min_loops", "loop_max": "max_loops", "loop_mean": "mean", "loop_sigma": "sigma", "backprop_loops": "backprop_loops"}


def register(sub) -> None:
    from cart.train.config import TrainConfig, list_presets

    p = sub.add_parser("train", help="train a model on prepared data (presets: " + ", ".join(list_presets()) + ")",
                       description="Train CART or a dense baseline with the paper's recipe; exact resume, checkpoints, metrics.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help=f"training tier: {', '.join(list_presets())}")
    p.add_argument("--config", default=None, metavar="FILE", help="a .toml/.json file of TrainConfig fields (applied over --preset)")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue from the newest good checkpoint in --out-dir if there is one (default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh; refuse a run dir that holds checkpoints")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")

    g = p.add_argument_group("training (any TrainConfig field; unset fields keep the preset's value)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if f.name in ("model", "loop_sampling"):
            continue
        t = hints[f.name]
        kw: dict = {"default": None, "dest": f"train_{f.name}"}
        if typing.get_origin(t) is typing.Literal:
            kw["choices"] = list(typing.get_args(t))
        elif t is bool or f.name == "decay_everything":
            kw["type"], kw["metavar"] = _bool, "BOOL"
        elif t in (int, float):
            kw["type"], kw["metavar"] = t, "N" if t is int else "X"
        elif f.name == "betas":
            kw["type"], kw["metavar"] = _betas, "B1,B2"
        kw.setdefault("metavar", None if "choices" in kw else "S")
        default = f.default if f.default is not dataclasses.MISSING else None
        kw["help"] = f"TrainConfig.{f.name} (default {default!r} unless the preset sets it)"
        g.add_argument("--" + f.name.replace("_", "-"), **kw)
    ls = p.add_argument_group("training-time variable R")
    ls.add_argument("--loop-sampling", dest="loop_kind", choices=["fixed", "uniform", "poisson_lognormal"], default=None,
                    help="distribution of R per step (default fixed: the model's n_loops)")
    ls.add_argument("--loop-min", dest="loop_min", type=positive_int, default=None, help="smallest R")
    ls.add_argument("--loop-max", dest="loop_max", type=nonneg_int, default=None, help="largest R (0: no bound for poisson_lognormal)")
    ls.add_argument("--loop-mean", dest="loop_mean", type=nonneg_float, default=None, help="mean R of poisson_lognormal (0: n_loops)")
    ls.add_argument("--loop-sigma", dest="loop_sigma", type=nonneg_float, default=None, help="log-normal sigma of poisson_lognormal")
    ls.add_argument("--backprop-loops", dest="backprop_loops", type=nonneg_int, default=None,
                    help="backpropagate through only the last K loops (0: all)")
    add_model_args(p)
    p.set_defaults(func=run)


def _betas(v: str) -> list[float]:
    try:
        b = [float(x) for x in v.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.9,0.95, got {v!r}") from None
    if len(b) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers like 0.9,0.95, got {v!r}")
    return b


def config_from_args(args):
    from cart.train.config import TrainConfig, load_preset, merge

    if not args.preset and not args.config:
        raise ValueError("give --preset NAME (e.g. --preset smoke) or --config FILE")
    base = load_preset(args.preset) if args.preset else {}
    if args.config:
        base = merge(base, load_preset(args.config))
    over = {k[len("train_"):]: v for k, v in vars(args).items() if k.startswith("train_") and v is not None}
    loop = {_LOOP_FLAGS[k]: getattr(args, k) for k in _LOOP_FLAGS if getattr(args, k) is not None}
    if args.loop_kind is not None:
        loop["kind"] = args.loop_kind
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
