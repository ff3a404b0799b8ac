"""The ``budgetctl`` command line: a thin skin over the Python API, one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets ``func`` to a
function ``args -> exit code``. Only the subcommand that runs is imported (``--help`` imports them
all), so ``budgetctl ask`` never pays for the simulator.

Exit status and messages: errors a user can fix (a bad flag value, a malformed or missing file, a
missing optional dependency) print one line to stderr and exit 2, never a traceback; a misspelt
subcommand or flag gets a did-you-mean and the usage of the subcommand it was given to. Anything
else is a bug in budgetctl: its traceback is printed with a request to report it, exit 70.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import linecache
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .._version import __version__

__all__ = ["main", "build_parser", "UsageError", "is_user_error"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("simulate", "train", "evaluate", "serve", "ask", "proxy", "doctor")
#: Exit status of an internal error (sysexits' EX_SOFTWARE).
EXIT_BUG = 70


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (one line, exit 2) rather than a bug in budgetctl (traceback).

    User errors: :class:`UsageError`; the documented input errors of the library, ``ValueError``
    subclasses defined by budgetctl (``PolicySpecError``, ``TraceFormatError``, ``ArtifactError``...);
    a ``ValueError`` that budgetctl's own code raises on purpose (a ``raise`` statement in the
    package: an argument or input check, whose message names the value); a file that is missing,
    unreadable or a directory (``OSError`` naming it); a missing optional dependency (the
    ``ImportError`` that names the pip command). Anything else (a ``ValueError`` from inside Python,
    numpy or a dependency, a ``TypeError``, ``KeyError``...) is a bug.
    """
    if isinstance(error, UsageError):
        return True
    if isinstance(error, ValueError):
        if type(error) is not ValueError and type(error).__module__.startswith("budgetctl."):
            return True
        return _raised_on_purpose(error)
    if isinstance(error, OSError):
        return error.filename is not None or isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError)
    if isinstance(error, ImportError):
        return "pip install" in str(error)
    return False


def warn_skipped(command: str, skipped: Sequence[tuple[str, int, str]]) -> None:
    """Say on stderr how many malformed pool lines were skipped (``--skip-bad``), naming the first by file:line."""
    if skipped:
        path, line, reason = skipped[0]
        print(
            f"budgetctl {command}: warning: skipped {len(skipped)} malformed line(s), "
            f"the first {path}:{line}: {reason}",
            file=sys.stderr,
        )


def _closest(word: str, choices: Sequence[str], *, cutoff: float) -> list[str]:
    """The close matches worth suggesting: the best, and any other about as close (never a far second)."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=cutoff)
    if not close:
        return []
    best = difflib.SequenceMatcher(None, word, close[0]).ratio()
    return [c for c in close if difflib.SequenceMatcher(None, word, c).ratio() >= best - 0.1]


def _raised_on_purpose(error: BaseException) -> bool:
    # The innermost frame is budgetctl's own code, at a ``raise`` statement (not ``int(text)`` or numpy).
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not os.path.abspath(filename).startswith(_PACKAGE + os.sep):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise ")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors suggest the close matches of a misspelt flag."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = unrecognized(self, message.removeprefix("unrecognized arguments: ").split())
        super().error(message)


def unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """``unrecognized arguments`` with a did-you-mean for each misspelt flag among ``parser``'s own."""
    known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    hints = []
    for extra in extras:
        flag = extra.partition("=")[0]
        if flag.startswith("-"):
            close = _closest(flag, known, cutoff=0.6)
            if close:
                hints.append(f"{flag}: did you mean {' or '.join(close)}?")
    tail = f" ({'; '.join(hints)})" if hints else f" (see {parser.prog} --help)"
    return f"unrecognized arguments: {' '.join(extras)}{tail}"


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser with ``commands`` (default: every subcommand that can be imported)."""
    parser = _Parser(prog="budgetctl", description="Anytime LLM inference under a deadline and a budget.")
    parser.add_argument("--version", action="version", version=f"budgetctl {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in commands:
        try:
            module = importlib.import_module(f"budgetctl.cli._{name}")
        except ModuleNotFoundError as error:
            if error.name == f"budgetctl.cli._{name}":
                continue  # subcommand not shipped in this build
            raise
        module.register(subparsers)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    # The subcommand is the first argument that is not an option (the top level has no valued options).
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _parse(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    command = _command_in(argv)
    if command is not None and command not in COMMANDS:
        parser = build_parser(())
        close = _closest(command, COMMANDS, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        parser.error(f"unknown command {command!r}{hint} (commands: {', '.join(COMMANDS)})")
    parser = build_parser(COMMANDS if command is None else (command,))
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub: argparse.ArgumentParser = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and args.command in action.choices:
                sub = action.choices[args.command]
        sub.error(f"unrecognized arguments: {' '.join(extras)}")  # the subcommand's usage, with did-you-mean
    return parser, args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for user errors, 70 for a bug in budgetctl)."""
    parser, args = _parse(list(sys.argv[1:] if argv is None else argv))
    func: Any = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if is_user_error(error):
            print(f"budgetctl {args.command}: error: {error}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(
            f"budgetctl {args.command}: internal error: {type(error).__name__}: {error}\n"
            f"This is a bug in budgetctl {__version__}, not in your input: please report it to the budgetctl "
            "maintainers with the command line, the traceback above and the output of `budgetctl doctor`.",
            file=sys.stderr,
        )
        return EXIT_BUG
