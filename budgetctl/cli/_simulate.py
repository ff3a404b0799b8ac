"""``budgetctl simulate``: replay sample pools through stop policies and compare cost and accuracy."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from dataclasses import replace
from typing import Any

from .._budget import Budget
from .._files import OutputError, atomic_write, check_outputs
from .._plan import parse_concurrency
from .._pool import Pool, demo_pool_path, load_pool
from ..sim import LatencyModel, simulate
from ..sim._plot import deadline_plot_path
from ..sim._report import dataset_label, format_table, merge_sweeps, plot_allocation, plot_frontier, sweep_specs
from . import UsageError

#: What runs when no --policy is given.
DEFAULT_POLICIES = ("fixed:n=10", "fixed:n=40", "ac:threshold=0.95", "esc:window=5", "stable:k=3")


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
    parser.add_argument(
        "--sweep-points",
        type=int,
        default=10,
        metavar="N",
        help="policies tried per sweep (default 10), spaced where results change; equal results are merged",
    )
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
        help="deadlines at which to report accuracy, with a timed latency model (default 0.1,1,10); with --plot, "
        "the steps of 1, 2 and 5 between them are simulated too, for the curve",
    )
    parser.add_argument("--budget-samples", type=int, default=None, metavar="N", help="cap on samples per question")
    parser.add_argument("--budget-tokens", type=int, default=None, metavar="N", help="cap on tokens per question")
    parser.add_argument(
        "--price-per-1k", type=float, default=0.002, metavar="USD", help="dollars per 1,000 tokens (default 0.002)"
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="draw accuracy against cost to this PNG, and accuracy by deadline to PNG's -deadlines twin with a "
        "latency model; with --scheduler, the allocations compared (needs budgetctl[plot])",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-' for stdout)")
    parser.add_argument(
        "--force", action="store_true", help="replace existing --json/--plot files (an input is never replaced)"
    )
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
        raise UsageError(f"--deadlines must be comma-separated seconds, got {text!r}") from None
    if any(not v > 0 for v in values):
        raise UsageError(f"--deadlines must be positive, got {text!r}")
    return values


_SCHEDULER_KEYS = {"slots": int, "batch": int, "lookahead": int}


def _scheduler_options(text: str) -> dict[str, int]:
    options: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SCHEDULER_KEYS:
            raise UsageError(f"--scheduler takes {', '.join(f'{k}=N' for k in _SCHEDULER_KEYS)}; got {item!r}")
        try:
            options[key] = _SCHEDULER_KEYS[key](value)
        except ValueError:
            raise UsageError(f"--scheduler {key} must be an integer, got {value!r}") from None
    return options


def _run_scheduler(args: argparse.Namespace, pools: Pool, latency: LatencyModel) -> int:
    from ..sched import simulate_shared_budget

    if len(args.policy) > 1 or args.sweep:
        raise UsageError(
            "--scheduler takes at most one --policy (each request's own stop policy in the shared rows, "
            f"e.g. --policy ac:threshold=0.95) and no --sweep; got {len(args.policy)} --policy and "
            f"{len(args.sweep)} --sweep"
        )
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
    )
    if args.json == "-":
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(result.table())
    print(
        f"(stop policy of each request in the shared rows: {args.policy[0]}; the uniform, independent and "
        "oracle rows do not use it)"
        if args.policy
        else "(no --policy: in the shared rows a request stops only when the budget, its pool or its deadline does)"
    )
    if args.json:
        atomic_write(args.json, json.dumps(result.to_dict(), indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        plot_allocation(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def check_arguments(args: argparse.Namespace, pools: list[str]) -> None:
    """Refuse bad values and unsafe outputs by flag name, before any pool is read or any work starts."""
    from . import UsageError

    if args.deadline is not None and not (args.ttft_ms or args.ms_per_token):
        raise UsageError(
            f"--deadline {args.deadline:g} needs a latency model, or every sample takes no time: add --ttft-ms "
            "and/or --ms-per-token (e.g. --ttft-ms 80 --ms-per-token 15), or drop --deadline"
        )
    if args.deadline is not None and not (math.isfinite(args.deadline) and args.deadline > 0):
        raise UsageError(f"--deadline must be a positive number of seconds, got {args.deadline}")
    try:  # N, auto or auto:SPEED[,max=N]; one line naming the flag otherwise
        args.concurrency = parse_concurrency(args.concurrency, name="--concurrency")
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    for flag, count in (
        ("--orders", args.orders),
        ("--sweep-points", args.sweep_points),
        ("--jobs", args.jobs),
    ):
        if count is not None and count < 1:
            raise UsageError(f"{flag} must be >= 1, got {count}")
    for flag, amount in (
        ("--ttft-ms", args.ttft_ms),
        ("--ms-per-token", args.ms_per_token),
        ("--price-per-1k", args.price_per_1k),
        ("--budget-samples", args.budget_samples),
        ("--budget-tokens", args.budget_tokens),
        ("--budget-per-question", args.budget_per_question),
    ):
        if amount is not None and not (math.isfinite(amount) and amount >= 0):
            raise UsageError(f"{flag} must be a number >= 0, got {amount}")
    try:
        plots = [("--plot", args.plot)]
        if args.plot and (args.ttft_ms or args.ms_per_token):  # the accuracy-by-deadline twin is written too
            plots.append(("--plot", str(deadline_plot_path(args.plot))))
        check_outputs([("--json", args.json), *plots], inputs=pools, force=args.force)
    except OutputError as error:
        raise UsageError(str(error)) from None
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'budgetctl[plot]'")


def run(args: argparse.Namespace) -> int:
    """Run the simulation the arguments describe; print the table and write the files."""
    pools = args.pools or [demo_pool_path()]
    check_arguments(args, pools)
    if args.scheduler is None and args.budget_per_question is not None:
        raise UsageError("--budget-per-question needs --scheduler (e.g. --scheduler slots=8)")
    policies = args.policy or ([] if args.sweep else list(DEFAULT_POLICIES))
    sweeps = [(spec, sweep_specs(spec, args.sweep_points)) for spec in args.sweep]
    latency = LatencyModel(
        ttft=args.ttft_ms / 1000.0, per_token=args.ms_per_token / 1000.0, concurrency=args.concurrency
    )
    loaded = load_pool(pools, datasets=args.dataset, skip_bad=args.skip_bad)
    _warn_without_gold(loaded)
    if args.scheduler is not None:
        return _run_scheduler(args, loaded, latency)
    budget = Budget(samples=args.budget_samples, tokens=args.budget_tokens)
    deadlines = _deadlines(args.deadlines)
    result = simulate(
        loaded,
        policies,
        sweeps=sweeps,
        orders=args.orders,
        seed=args.seed,
        budget=budget,
        latency=latency,
        deadline=args.deadline,
        deadlines=_plot_deadlines(deadlines) if args.plot and latency.timed else deadlines,
        price_per_token=args.price_per_1k / 1000.0,
        jobs=args.jobs,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
    )
    result = merge_sweeps(result)
    _warn_in_sample([p for p in policies if isinstance(p, str)], result.files)
    if args.json == "-":
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(replace(result, deadlines=tuple(d for d in result.deadlines if d in deadlines))))
        if args.json:
            atomic_write(args.json, json.dumps(result.to_dict(), indent=2))
            print(f"wrote {args.json}")
    if args.plot:
        written = plot_frontier(result, args.plot)
        if args.json != "-":
            for path in written:
                print(f"wrote {path}")
    return 0


def _plot_deadlines(deadlines: tuple[float, ...]) -> tuple[float, ...]:
    """The deadlines of ``--deadlines`` and the 1-2-5 steps between them, for a smooth accuracy-by-deadline curve.

    ``0.1,1,10`` gives 0.1, 0.2, 0.5, 1, 2, 5, 10; the table still shows only those asked for.
    """
    if len(deadlines) < 2:
        return deadlines
    low, high = min(deadlines), max(deadlines)
    steps = {
        round(m * 10.0**e, 12)
        for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
        for m in (1.0, 2.0, 5.0)
    }
    return tuple(sorted({*deadlines, *(d for d in steps if low <= d <= high)}))


def _warn_without_gold(pool: Pool) -> None:
    """Say on stderr which datasets have no right answer to score against (trace logs of live runs, say).

    Questions may lack a right answer one by one (a Game of 24 puzzle no sample solved); a dataset
    where none has one was written without gold answers, and its accuracy of 0 means nothing.
    """
    for dataset, questions in pool.by_dataset().items():
        if any(q.correct_keys for q in questions):
            continue
        origin = questions[0].origin
        where = next((f for f in pool.files if origin.startswith(f)), origin)
        print(
            f"budgetctl simulate: note: dataset {dataset_label(dataset)!r} ({where}, "
            f"{len(questions)} questions) has no gold answers, so its accuracy reads 0; costs and stop reasons are "
            "still right. A trace of live runs (`budgetctl ask`, solve(trace=...)) carries a gold answer only "
            "where meta={'gold': ...} was given.",
            file=sys.stderr,
        )


def _warn_in_sample(specs: list[str], files: list[str]) -> None:
    """Warn when a trained policy is simulated on the very pools it was trained on (the artifact keeps their hashes)."""
    import os

    if not any("path=" in spec or os.path.isdir(spec) for spec in specs):
        return
    try:
        from ..learn._artifact import in_sample_warning
    except ImportError:  # pragma: no cover - a trained policy needs budgetctl[learn] to load at all
        return
    for spec in specs:
        warning = in_sample_warning(spec, files)
        if warning:
            print(f"budgetctl simulate: {spec}: {warning}", file=sys.stderr)
