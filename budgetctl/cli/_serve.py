"""``budgetctl serve POOL``: replay sample pools as an OpenAI-compatible endpoint with realistic timing."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve sample pools as an OpenAI-compatible endpoint (for tests and benchmarks)",
        description=(
            "Replay sample pools over HTTP: /v1/chat/completions and /v1/completions (streamed or not, "
            "n, usage, logprobs when the pool has them), /v1/models, GET /stats, POST /reset. A request "
            "is matched to a pool question by its text; each answer is the question's next sample in a "
            "seeded random order, paced by --ttft-ms and --ms-per-token. Needs budgetctl[serve]."
        ),
    )
    parser.add_argument("pool", nargs="+", help="pool files (.jsonl or .jsonl.gz) or solve trace logs")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="milliseconds before the first token (default: 0)")
    parser.add_argument(
        "--ms-per-token", type=float, default=0.0, help="milliseconds per generated token after the first (default: 0)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every question's sample order (default: 0)")
    parser.add_argument("--model", default="replay", help="model name listed by /v1/models (default: %(default)s)")
    parser.add_argument(
        "--dataset", action="append", default=None, help="serve only this dataset (repeatable; default: all)"
    )
    parser.add_argument(
        "--exhaust",
        choices=("cycle", "error"),
        default="cycle",
        help="when a question's samples are all served: reshuffle them (cycle) or answer 410 (error)",
    )
    from ..serve._limits import add_limit_arguments

    add_limit_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..cli import UsageError, warn_skipped

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    for flag, value in (("--ttft-ms", args.ttft_ms), ("--ms-per-token", args.ms_per_token)):
        if not value >= 0:
            raise UsageError(f"{flag} must be >= 0, got {value}")
    from ..serve import ReplayServer, run_server
    from ..serve._limits import limits_from_arguments
    from ..serve._run import is_loopback

    limits = limits_from_arguments(args)

    server = ReplayServer(
        args.pool,
        seed=args.seed,
        ttft_ms=args.ttft_ms,
        ms_per_token=args.ms_per_token,
        model=args.model,
        exhaust=args.exhaust,
        datasets=args.dataset,
        limits=limits,
    )
    if not is_loopback(args.host):
        print(f"budgetctl serve: warning: listening on {args.host}, reachable from other machines", file=sys.stderr)
    warn_skipped("serve", server.pool.skipped)
    duplicates = server.index.duplicates
    if duplicates:
        print(
            f"budgetctl serve: note: {duplicates} question texts belong to several questions; a request gets the "
            "first unless its model names a dataset (or pass --dataset)",
            file=sys.stderr,
        )
    print(
        f"budgetctl serve: {len(server.index.questions)} questions from {', '.join(server.pool.files)} "
        f"on http://{args.host}:{args.port}/v1 (model {args.model!r}, ttft {args.ttft_ms:g} ms, "
        f"{args.ms_per_token:g} ms/token, seed {args.seed})",
        file=sys.stderr,
        flush=True,
    )
    run_server(server, host=args.host, port=args.port, log_level=args.log_level)
    return 0
