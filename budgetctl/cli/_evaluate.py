"""``budgetctl evaluate --policy SPEC POOL...``: how a (learned) stop policy does on a pool, and how well calibrated."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from typing import Any

from .._files import OutputError, atomic_path, atomic_write, check_outputs

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="measure a stop policy on sample pools: decisions against the defaults, and gain calibration",
        description=(
            "Replay each question's samples in many random orders through the policy, Adaptive-Consistency "
            "(0.95) and ESC (window 5), and report accuracy, samples and tokens against the full pool and "
            "the cost oracle. For a learned policy, also compare its predicted gains with the gains realised "
            "over random orders (a reliability table, and a plot with --plot)."
        ),
    )
    parser.add_argument("pools", nargs="+", metavar="POOL", help="sample-pool files or solve trace logs")
    parser.add_argument(
        "--policy",
        default="learned",
        metavar="SPEC",
        help="policy spec or trained-policy directory (default: learned, the shipped default)",
    )
    parser.add_argument("--value", default=None, help="override the learned policy's value (accuracy per 1k tokens)")
    parser.add_argument("--orders", type=int, default=50, help="random draw orders per question (default 50)")
    parser.add_argument(
        "--feature-orders", type=int, default=4, help="orders per question for the calibration check (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    parser.add_argument("--dataset", action="append", default=None, metavar="NAME", help="keep only this dataset")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed pool lines (and report them)")
    parser.add_argument("--plot", metavar="PNG", help="draw the reliability diagram to this PNG (budgetctl[plot])")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' for stdout)")
    parser.add_argument(
        "--force", action="store_true", help="replace existing --json/--plot files (an input is never replaced)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.set_defaults(func=run)


def format_gains(report: dict[str, Any]) -> str:
    """A plain-text reliability table of a gain report."""
    lines = ["calibration of predicted gains (mean over bins of equal weight; realised = mean over random orders):"]
    lines.append(f"  {'horizon':>7} {'rows':>8} {'predicted':>10} {'realised':>10} {'cal. error':>10} {'R2':>7}")
    for entry in report["horizons"]:
        r2 = "-" if entry["r2"] is None else f"{entry['r2']:.3f}"
        lines.append(
            f"  {entry['horizon']:>7} {entry['rows']:>8} {entry['mean_predicted']:>10.4f} "
            f"{entry['mean_realised']:>10.4f} {entry['calibration_error']:>10.4f} {r2:>7}"
        )
    lines.append("  reliability (predicted -> realised), per horizon:")
    for entry in report["horizons"]:
        pairs = " ".join(f"{b['predicted']:+.3f}->{b['realised']:+.3f}" for b in entry["bins"])
        lines.append(f"  h={entry['horizon']}: {pairs}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate the policy and print (or write) the report."""
    from ..cli import UsageError, warn_skipped

    for flag, number in (("--orders", args.orders), ("--feature-orders", args.feature_orders)):
        if number < 1:
            raise UsageError(f"{flag} must be >= 1, got {number}")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    inputs = list(args.pools)
    if os.path.isdir(args.policy):  # a trained policy's files are inputs too
        inputs += [entry.path for entry in os.scandir(args.policy)]
    try:
        check_outputs([("--json", args.json), ("--plot", args.plot)], inputs=inputs, force=args.force)
    except OutputError as error:
        raise UsageError(str(error)) from None
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'budgetctl[plot]'")
    from .._pool import load_pool
    from ..learn._evaluate import decision_report, find_learned, gain_report, plot_reliability
    from ..policies import parse_policy
    from ._train import _value, format_decisions

    policy = parse_policy(args.policy)
    learned = find_learned(policy)
    if args.value is not None:
        if learned is None:
            raise UsageError(f"--value needs a learned policy, and {args.policy!r} has none")
        if learned is not policy:
            raise UsageError(
                f"--value needs a bare learned policy; use learned:path=DIR,value=V inside {args.policy!r}"
            )
        policy = learned = learned.set_params(value=_value(args.value))
    pool = load_pool(args.pools, datasets=args.dataset, skip_bad=args.skip_bad)
    warn_skipped("evaluate", pool.skipped)
    from ..learn._artifact import in_sample_warning

    warning = in_sample_warning(args.policy, pool.files)
    if warning:
        print(f"budgetctl evaluate: {warning}", file=sys.stderr)
    report: dict[str, Any] = {
        "pools": pool.files,
        "skipped": [list(s) for s in pool.skipped],
        "decisions": decision_report(policy, pool, orders=args.orders, seed=args.seed, jobs=args.jobs, name="policy"),
    }
    if learned is not None:
        from ..learn._dataset import build_rows

        rows = build_rows(
            pool.questions,
            orders=args.feature_orders,
            seed=args.seed,
            horizons=learned.horizons_,
            target_orders=max(64, args.feature_orders),
            jobs=args.jobs,
        )
        report["value"] = learned.resolved_value()
        report["gains"] = gain_report(learned, rows)
        if args.plot:
            with atomic_path(args.plot) as partial:
                plot_reliability(report["gains"], partial, title=f"{args.policy} on {', '.join(pool.datasets)}")
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"policy: {report['decisions']['policy']}")
    if learned is not None:
        print(f"value: {report['value']:.4g} accuracy per 1,000 tokens")
    print(format_decisions(report["decisions"]))
    if "gains" in report:
        print(format_gains(report["gains"]))
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot and learned is not None:
        print(f"wrote {args.plot}")
    elif args.plot:
        print("budgetctl evaluate: note: --plot needs a learned policy; nothing drawn", file=sys.stderr)
    return 0
