"""``budgetctl train POOL... -o DIR``: learn a stop policy from sample pools and write it as an artifact."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="learn a stop policy from sample pools (needs budgetctl[learn])",
        description=(
            "Learn, from many random draw orders of each question's samples, the expected gain in accuracy "
            "of h more samples, and write a policy that stops when no reachable h is worth its tokens. "
            "A share of the questions (--holdout) is kept out of training to measure the policy: "
            "calibration of its gains, and its decisions against Adaptive-Consistency (0.95) and ESC (5). "
            "The directory holds policy.json, weights.npz and MODEL_CARD.md; use it with "
            "--policy DIR or --policy learned:path=DIR,value=V."
        ),
    )
    parser.add_argument("pools", nargs="+", metavar="POOL", help="sample-pool files or solve trace logs")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the policy to")
    parser.add_argument("--force", action="store_true", help="replace an existing DIR (atomically)")
    parser.add_argument(
        "--value",
        default="auto",
        help="accuracy per 1,000 tokens below which more samples are not worth it (e.g. 0.02), or 'auto': "
        "the cheapest value within --max-loss of every training dataset's full-pool accuracy (default auto)",
    )
    parser.add_argument(
        "--max-loss",
        type=float,
        default=0.001,
        help="with --value auto: accuracy a training dataset may lose (default 0.001 = 0.1 point)",
    )
    parser.add_argument("--model", choices=("gbm", "linear", "mlp"), default="gbm", help="gain model (default gbm)")
    parser.add_argument("--orders", type=int, default=8, help="random orders per question that carry features (8)")
    parser.add_argument(
        "--target-orders", type=int, default=64, help="random orders per question averaged into targets (64)"
    )
    parser.add_argument("--folds", type=int, default=2, help="question folds for calibration and 'auto' (default 2)")
    parser.add_argument("--max-iter", type=int, default=60, help="boosting rounds per horizon (gbm; default 60)")
    parser.add_argument("--max-rows", type=int, default=100_000, help="rows per horizon and fit (default 100000)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (mlp; default 6)")
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of each dataset's questions kept out to measure the policy (default 0.2; 0: none)",
    )
    parser.add_argument(
        "--eval-orders", type=int, default=20, help="random orders per held-out question when measuring (20)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds orders, folds, the hold-out split and models")
    parser.add_argument("--dataset", action="append", default=None, metavar="NAME", help="keep only this dataset")
    parser.add_argument("--skip-bad", action="store_true", help="skip malformed pool lines (and report them)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    parser.set_defaults(func=run)


def _value(text: str) -> float | str:
    from ..cli import UsageError

    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--value must be a number >= 0 or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--value must be a number >= 0 or 'auto', got {text!r}")
    return value


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces ``args``, every option spelled out (what the artifact records)."""
    parts = ["budgetctl", "train", *args.pools, "-o", args.output]
    for flag, value in (
        ("--value", args.value),
        ("--max-loss", args.max_loss),
        ("--model", args.model),
        ("--orders", args.orders),
        ("--target-orders", args.target_orders),
        ("--folds", args.folds),
        ("--max-iter", args.max_iter),
        ("--max-rows", args.max_rows),
        ("--epochs", args.epochs),
        ("--holdout", args.holdout),
        ("--eval-orders", args.eval_orders),
        ("--seed", args.seed),
    ):
        parts += [flag, str(value)]
    for name in args.dataset or []:
        parts += ["--dataset", name]
    if args.skip_bad:
        parts.append("--skip-bad")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Train, measure on the held-out questions, and write the artifact."""
    from .._files import OutputError, check_output_directory
    from ..cli import UsageError

    value = _value(args.value)
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError(f"--holdout must be in [0, 1), got {args.holdout}")
    for flag, number in (("--eval-orders", args.eval_orders), ("--orders", args.orders)):
        if number < 1:
            raise UsageError(f"{flag} must be >= 1, got {number}")
    try:  # before any work: an existing DIR needs --force; a DIR holding a pool is never replaced
        check_output_directory(args.output, inputs=args.pools, force=args.force, flag="-o")
    except OutputError as error:
        raise UsageError(str(error)) from None
    from .._pool import Pool, load_pool
    from ..learn import LearnedStop
    from ..learn._evaluate import decision_report, gain_report
    from ..learn._split import split_questions

    pool = load_pool(args.pools, datasets=args.dataset, skip_bad=args.skip_bad)
    if pool.skipped:
        path, line, reason = pool.skipped[0]
        print(
            f"budgetctl train: warning: skipped {len(pool.skipped)} malformed line(s), "
            f"the first {path}:{line}: {reason}",
            file=sys.stderr,
        )
    train, held = split_questions(pool.questions, args.holdout, seed=args.seed)
    policy = LearnedStop(
        value=value,  # type: ignore[arg-type]
        model=args.model,
        max_loss=args.max_loss,
        orders=args.orders,
        target_orders=args.target_orders,
        folds=args.folds,
        max_iter=args.max_iter,
        max_rows=args.max_rows,
        epochs=args.epochs,
        random_state=args.seed,
        n_jobs=args.jobs,
    )
    print(f"training on {len(train)} questions ({len(held)} held out) from {len(pool.files)} file(s) ...", flush=True)
    policy.fit(Pool(questions=train, files=pool.files, skipped=pool.skipped))
    metrics: dict[str, Any] = {"held_out_questions": len(held)}
    if held:
        from ..learn._dataset import build_rows

        rows = build_rows(
            held, orders=4, seed=args.seed + 1, horizons=policy.horizons_, target_orders=64, jobs=args.jobs
        )
        metrics["gains"] = gain_report(policy, rows)
        metrics["decisions"] = decision_report(policy, held, orders=args.eval_orders, seed=args.seed, jobs=args.jobs)
    path = policy.save(args.output, command=command_line(args), metrics=metrics)
    print(f"value {policy.value_:.4g} accuracy per 1,000 tokens; horizons {list(policy.horizons_)}")
    if held:
        print(format_decisions(metrics["decisions"]))
    print(f"wrote {path}")
    return 0


def format_decisions(report: dict[str, Any]) -> str:
    """A plain-text table of a decision report."""
    from ..sim._report import more_or_fewer
    lines = []
    for entry in report["datasets"]:
        unit = entry["cost"]
        lines.append(
            f"{entry['dataset']} ({entry['questions']} questions, "
            f"full-pool accuracy {entry['full_pool_accuracy']:.4f}):"
        )
        lines.append(f"  {'policy':<22} {'accuracy':>9} {'samples':>8} {'tokens':>8}")
        for label, row in entry["policies"].items():
            tokens = "-" if row["mean_tokens"] is None else f"{row['mean_tokens']:.1f}"
            lines.append(f"  {label:<22} {row['accuracy']:>9.4f} {row['mean_samples']:>8.2f} {tokens:>8}")
        saving = entry["savings_vs_cheaper_default"]
        lines.append(
            f"  -> {more_or_fewer(saving, unit)} than {entry['cheaper_default']}, "
            f"accuracy {-entry['loss_vs_full_pool'] * 100:+.2f} points against the full pool"
        )
    return "\n".join(lines)
