"""`cart` command line: parsing and dispatch only.

Each area of the package owns one module here that adds its sub-commands (`register(sub)`) and
calls into the library; no experiment logic lives in the CLI.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order they appear in `cart --help`.
_MODULES = ["params", "data", "train", "eval", "generate", "sweep", "report", "bench"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cart", description="CART: train, evaluate and study the Context-Anchored Recurrent Transformer.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"cart.cli.{name}")
        except ModuleNotFoundError as e:  # an area not built yet must not break the others
            if e.name == f"cart.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as e:
        print(f"cart {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        # library errors are written to name the problem (file, field, value): show them plainly
        print(f"cart {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
