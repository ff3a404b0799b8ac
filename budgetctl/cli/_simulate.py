"""``budgetctl simulate``: replay sample pools through stop policies and compare cost and accuracy."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._budget import Budget
from .._plan import Auto, parse_concurrency
from .._pool import demo_pool_path
from ..sim import LatencyModel, simulate
from ..sim._report import format_table, plot_frontier, sweep_specs

#: What runs when no --policy is given.
DEFAULT_POLICIES = ("fixed:n=10", "fixed:n=40", "ac:threshold=0.95", "esc:window=5", "stable:k=3")


def _concurrency(text: str) -> int | Auto:
    # argparse turns the ValueError into a one-line usage error naming --concurrency.
    try:
        return parse_concurrency(text, name="--concurrency")
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: Any) -> None:
    """Add the ``simulate`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="replay sample pools through stop policies: accuracy against cost",
        description=(
            "Replay each question's samples in many random orders through stop policies, exactly as a "
            "live run would draw them, and report accuracy against samples, tokens and dollars, beside "
            "fixed-N self-consistency, the cost oracle and pass@k. With no POOL, runs the bundled demo "
            "pool (200 Faithful-CoT date questions, MIT)."
        ),
    )
    parser.add_argument(
        "pools", nargs="*", metavar="POOL", help="sample-pool files or solve trace logs (.jsonl, .jsonl.gz)"
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="SPEC",
        help="NAME[:key=value,...], e.g. ac:threshold=0.95, esc:window=5, fixed:n=40; repeatable; "
        f"default: {' '.join(DEFAULT_POLICIES)}",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="SPEC",
        help="trace a frontier: one key as LOW..HIGH, e.g. ac:threshold=0.5..0.99; repeatable",
    )
    parser.add_argument("--sweep-points", type=int, default=10, metavar="N", help="points per sweep (default 10)")
    parser.add_argument("--orders", type=int, default=200, help="random draw orders per question (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    parser.add_argument(
        "--dataset", action="append", default=None, metavar="NAME", help="keep only this dataset; repeatable"
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip malformed pool lines (and report them) instead of failing"
    )
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="latency model: ms to first token (default 0)")
    parser.add_argument(
        "--ms-per-token", type=float, default=0.0, help="latency model: ms per generated token (default 0)"
    )
    parser.add_argument(
        "--concurrency",
        type=_concurrency,
        default="auto",
        help="samples in flight at once: N, or auto (default: planned at every arrival), auto:SPEED "
        "(0..1, cheapest, cheap, balanced, fast, fastest), auto:SPEED,max=N",
    )
    parser.add_argument(
        "--deadline", type=float, default=None, metavar="S", help="seconds each question must be answered by"
    )
    parser.add_argument(
        "--deadlines",
        default="0.1,1,10",
        metavar="S,S,...",
        help="deadlines at which to report accuracy, with a timed latency model (default 0.1,1,10)",
    )
    parser.add_argument("--budget-samples", type=int, default=None, metavar="N", help="cap on samples per question")
    parser.add_argument("--budget-tokens", type=int, default=None, metavar="N", help="cap on tokens per question")
    parser.add_argument(
        "--price-per-1k", type=float, default=0.002, metavar="USD", help="dollars per 1,000 tokens (default 0.002)"
    )
    parser.add_argument("--plot", metavar="PNG", help="draw accuracy against cost to this PNG (needs budgetctl[plot])")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.add_argument(
        "--scheduler",
        metavar="slots=N[,batch=N,lookahead=N]",
        help="simulate many requests sharing one budget through the scheduler instead (see docs/scheduler.md)",
    )
    parser.add_argument(
        "--budget-per-question",
        type=float,
        default=None,
        metavar="SAMPLES",
        help="with --scheduler: mean samples per question that the batch shares (default 3)",
    )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None, help="show a progress bar")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run)


def _deadlines(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--deadlines must be comma-separated seconds, got {text!r}") from None
    if any(not v > 0 for v in values):
        raise ValueError(f"--deadlines must be positive, got {text!r}")
    return values


_SCHEDULER_KEYS = {"slots": int, "batch": int, "lookahead": int}


def _scheduler_options(text: str) -> dict[str, int]:
    options: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SCHEDULER_KEYS:
            raise ValueError(f"--scheduler takes {', '.join(f'{k}=N' for k in _SCHEDULER_KEYS)}; got {item!r}")
        try:
            options[key] = _SCHEDULER_KEYS[key](value)
        except ValueError:
            raise ValueError(f"--scheduler {key} must be an integer, got {value!r}") from None
    return options


def _run_scheduler(args: argparse.Namespace, pools: list[str], latency: LatencyModel) -> int:
    from ..sched import simulate_shared_budget

    if len(args.policy) > 1 or args.sweep:
        raise ValueError("--scheduler takes at most one --policy (each request's own stop policy) and no --sweep")
    options = _scheduler_options(args.scheduler)
    result = simulate_shared_budget(
        pools,
        slots=options.get("slots", 8),
        batch=options.get("batch"),
        lookahead=options.get("lookahead", 3),
        budget_per_question=3.0 if args.budget_per_question is None else args.budget_per_question,
        orders=args.orders,
        seed=args.seed,
        policy=args.policy[0] if args.policy else None,
        latency=latency,
        deadline=args.deadline,
        datasets=args.dataset,
        skip_bad=args.skip_bad,
    )
    if args.json == "-":
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(result.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(result.to_dict(), stream, indent=2)
        print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the simulation the arguments describe; print the table and write the files."""
    pools = args.pools or [demo_pool_path()]
    if args.scheduler is None and args.budget_per_question is not None:
        raise ValueError("--budget-per-question needs --scheduler (e.g. --scheduler slots=8)")
    policies = args.policy or ([] if args.sweep else list(DEFAULT_POLICIES))
    sweeps = [(spec, sweep_specs(spec, args.sweep_points)) for spec in args.sweep]
    latency = LatencyModel(
        ttft=args.ttft_ms / 1000.0, per_token=args.ms_per_token / 1000.0, concurrency=args.concurrency
    )
    if args.scheduler is not None:
        return _run_scheduler(args, pools, latency)
    if args.price_per_1k < 0:
        raise ValueError(f"--price-per-1k cannot be negative, got {args.price_per_1k}")
    budget = Budget(samples=args.budget_samples, tokens=args.budget_tokens)
    result = simulate(
        pools,
        policies,
        sweeps=sweeps,
        orders=args.orders,
        seed=args.seed,
        budget=budget,
        latency=latency,
        deadline=args.deadline,
        deadlines=_deadlines(args.deadlines),
        price_per_token=args.price_per_1k / 1000.0,
        datasets=args.dataset,
        skip_bad=args.skip_bad,
        jobs=args.jobs,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    if args.json == "-":
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as stream:
                json.dump(result.to_dict(), stream, indent=2)
            print(f"wrote {args.json}")
    if args.plot:
        plot_frontier(result, args.plot)
        if args.json != "-":
            print(f"wrote {args.plot}")
    return 0
