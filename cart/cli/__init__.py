"""`cart` command line: parsing and dispatch only.

Each area of the package owns one module here that adds its sub-commands (`register(sub)`) and
calls into the library; no experiment logic lives in the CLI.

The error boundary is here, in `main`: a user or environment error (a bad argument, a missing or
unreadable file, a directory where a file belongs, a corrupt archive or checkpoint, a full disk, a
device this machine does not have) ends the command with exactly one line on stderr,
`cart <command>: error: <what, naming the file, field or value>`, and exit status 2. Argument
parsing errors are one line too. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import sqlite3
import sys
import tarfile
import zipfile

# Sub-command modules, in the order they appear in `cart --help`.
_MODULES = ["params", "data", "train", "eval", "generate", "export", "sweep", "report", "bench"]

EXIT_USAGE = 2  # every user or environment error


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (`cart eval ppl: error: argument --batch-size: ...`)
    instead of the usage block followed by the message."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} -h)\n")


def _tag_progs(parser: argparse.ArgumentParser) -> None:
    """Every (sub)parser records its own prog as the default `cli_prog`: the innermost chosen wins, so
    errors name the command that failed ("cart sweep run"), whatever dests its options use."""
    parser.set_defaults(cli_prog=parser.prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.required = True  # `cart eval` alone is an error naming the choices, not a silent help page
            for sub in action.choices.values():
                _tag_progs(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="cart", description="CART: train, evaluate and study the Context-Anchored Recurrent Transformer.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        try:
            mod = importlib.import_module(f"cart.cli.{name}")
        except ModuleNotFoundError as e:  # an area not built yet must not break the others
            if e.name == f"cart.cli.{name}":
                continue
            raise
        mod.register(sub)
    _tag_progs(parser)
    return parser


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return " | ".join(lines) if lines else ""


def describe(e: BaseException) -> str:
    """One line for a user or environment error: what failed, naming the file, field or value."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {e.filename}" if e.filename else ""
        return (f"no space left on the device{where}: free some space and run the command again "
                f"(files already in place were not modified; partial outputs are left only in temporary names)")
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        names = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
        return f"{names}: {e.strerror}"
    if isinstance(e, (zipfile.BadZipFile, tarfile.TarError, EOFError)):
        return f"corrupt or truncated archive: {e} (delete the cached download to fetch it again)"
    if isinstance(e, sqlite3.DatabaseError):
        return f"study database error: {e}"
    return _one_line(str(e)) or type(e).__name__


# What the boundary turns into one line: user errors (bad values, missing files), environment errors
# (permissions, full disks, corrupt downloads, a damaged database). Everything else is a bug.
HANDLED = (CLIError, ValueError, OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, sqlite3.DatabaseError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # -h (0) or a parse error (2, its one line already printed): a status, for callers too
        return e.code if isinstance(e.code, int) else 0
    prog = getattr(args, "cli_prog", "cart")
    try:
        rc = args.func(args)
    except HANDLED as e:
        print(f"{prog}: error: {describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
