"""The ``budgetctl`` command line: a thin skin over the Python API, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets ``func`` to a
function ``args -> exit code``. Errors a user can fix (a bad flag value, a malformed file) print one
line to stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._version import __version__

__all__ = ["main", "build_parser", "UsageError"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("simulate", "train", "evaluate", "serve", "ask", "proxy")


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand that can be imported."""
    parser = argparse.ArgumentParser(
        prog="budgetctl",
        description="Anytime LLM inference under a deadline and a budget.",
    )
    parser.add_argument("--version", action="version", version=f"budgetctl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"budgetctl.cli._{name}")
        except ModuleNotFoundError as error:
            if error.name == f"budgetctl.cli._{name}":
                continue  # subcommand not shipped in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, ImportError) as error:
        print(f"budgetctl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
