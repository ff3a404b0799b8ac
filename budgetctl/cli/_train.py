"""``budgetctl train POOL... -o DIR``: learn a stop policy from sample pools and write it as an artifact."""

from __future__ import annotations

import argparse
import math
import shlex
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="learn a stop policy from sample pools (needs budgetctl[learn])",
        description=(
            "Per task (dataset): fit the rule baselines (Adaptive-Consistency threshold, ESC window) and learned "
            "risk models on the same cross-validation folds over questions, keep the learned model only where it "
            "beats the best tuned rule on held-out folds (else ship that rule), and choose the operating point "
            "from --max-loss, the expected accuracy loss against the full budget, at --confidence "
            "(Learn-then-Test). --model gbm/linear/mlp trains the older gain-model policy instead. "
            "The directory holds policy.json, the weights and MODEL_CARD.md; use it with --policy DIR or "
            "--policy learned:path=DIR[,task=NAME]."
        ),
    )
    parser.add_argument("pools", nargs="+", metavar="POOL", help="sample-pool files or solve trace logs")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="directory to write the policy to")
    parser.add_argument("--force", action="store_true", help="replace an existing DIR (atomically)")
    parser.add_argument(
        "--max-loss",
        type=float,
        default=0.001,
        help="expected accuracy the policy may lose against the full budget, per task (default 0.001 = 0.1 point)",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="confidence that the expected loss is within --max-loss (Learn-then-Test; default 0.9)",
    )
    parser.add_argument(
        "--model",
        choices=("auto", "gbm", "linear", "mlp"),
        default="auto",
        help="auto (default): per-task rules and learned risk tables, the best on held-out folds; "
        "gbm/linear/mlp: the gain-model policy (LearnedStop)",
    )
    parser.add_argument(
        "--value",
        default="auto",
        help="per-task policies: dollars a correct answer is worth (with --price-per-1k; replaces --max-loss); "
        "gain-model policies: accuracy per 1,000 tokens worth buying (e.g. 0.02), or 'auto'",
    )
    parser.add_argument(
        "--price-per-1k",
        type=float,
        default=None,
        metavar="DOLLARS",
        help="per-task policies with --value: the price of 1,000 tokens",
    )
    parser.add_argument(
        "--orders", type=int, default=None, help="random orders per question (default 20; gain models: 8)"
    )
    parser.add_argument(
        "--target-orders", type=int, default=64, help="random orders per question averaged into targets (64)"
    )
    parser.add_argument(
        "--folds", type=int, default=None, help="cross-validation folds over questions (default 4; gain models: 2)"
    )
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
    """The command that reproduces a gain-model training, every option spelled out (what the artifact records)."""
    return _spelled_out(
        args,
        [
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
        ],
    )


def _spelled_out(args: argparse.Namespace, options: list[tuple[str, object]]) -> str:
    # ``budgetctl train POOLS -o DIR`` with ``options``, the datasets and --skip-bad, quoted for a shell.
    parts = ["budgetctl", "train", *args.pools, "-o", args.output]
    for flag, value in options:
        parts += [flag, str(value)]
    for name in args.dataset or []:
        parts += ["--dataset", name]
    if args.skip_bad:
        parts.append("--skip-bad")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    """Train, measure on the held-out questions, and write the artifact."""
    from .._files import OutputError, check_output_directory
    from ..cli import UsageError, warn_skipped

    if not 0.0 <= args.max_loss < 1.0:
        raise UsageError(f"--max-loss must be in [0, 1), got {args.max_loss}")
    if not 0.0 < args.confidence < 1.0:
        raise UsageError(f"--confidence must be in (0, 1), got {args.confidence}")
    try:  # before any work: an existing DIR needs --force; a DIR holding a pool is never replaced
        check_output_directory(args.output, inputs=args.pools, force=args.force, flag="-o")
    except OutputError as error:
        raise UsageError(str(error)) from None
    if args.model == "auto":
        if (args.value != "auto") != (args.price_per_1k is not None):
            raise UsageError(
                "--value (dollars per correct answer) and --price-per-1k (dollars per 1,000 tokens) go together; "
                "without them the operating point comes from --max-loss"
            )
        return run_tasks(args)
    if args.price_per_1k is not None:
        raise UsageError("--price-per-1k applies to per-task policies (--model auto)")
    args.orders = 8 if args.orders is None else args.orders
    args.folds = 2 if args.folds is None else args.folds
    value = _value(args.value)
    if not 0.0 <= args.holdout < 1.0:
        raise UsageError(f"--holdout must be in [0, 1), got {args.holdout}")
    for flag, number in (("--eval-orders", args.eval_orders), ("--orders", args.orders)):
        if number < 1:
            raise UsageError(f"{flag} must be >= 1, got {number}")
    from .._pool import Pool, load_pool
    from ..learn import LearnedStop
    from ..learn._evaluate import decision_report, gain_report
    from ..learn._split import split_questions

    pool = load_pool(args.pools, datasets=args.dataset, skip_bad=args.skip_bad)
    warn_skipped("train", pool.skipped)
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
    path = policy.save(args.output, command=command_line(args), metrics=metrics, force=args.force)
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
        lines.append(
            f"  -> {more_or_fewer(entry['savings_vs_cheaper_default'], unit)} than {entry['cheaper_default']}, "
            f"accuracy {-entry['loss_vs_full_pool'] * 100:+.2f} points against the full pool"
        )
    return "\n".join(lines)


def more_or_fewer(saving: float | None, unit: str) -> str:
    """``"12.0% fewer tokens"`` or ``"5.1% more tokens"``: never a negative "fewer"."""
    if saving is None:
        return f"n/a {unit}"
    return f"{abs(saving):.1%} {'fewer' if saving >= 0 else 'more'} {unit}"


def task_command_line(args: argparse.Namespace) -> str:
    """The command that reproduces a per-task training, every option spelled out."""
    prices: list[tuple[str, object]] = []
    if args.value != "auto":
        prices = [("--value", args.value), ("--price-per-1k", args.price_per_1k)]
    return _spelled_out(
        args,
        [
            *prices,
            ("--max-loss", args.max_loss),
            ("--confidence", args.confidence),
            ("--orders", args.orders),
            ("--folds", args.folds),
            ("--seed", args.seed),
        ],
    )


def run_tasks(args: argparse.Namespace) -> int:
    """Per task: rules and learned risk tables on the same folds, the best shipped, one artifact for all tasks."""
    from ..cli import UsageError, warn_skipped
    from ..learn._tune import DEFAULT_FOLDS, DEFAULT_ORDERS

    args.orders = DEFAULT_ORDERS if args.orders is None else args.orders
    args.folds = DEFAULT_FOLDS if args.folds is None else args.folds
    if args.orders < 1:
        raise UsageError(f"--orders must be >= 1, got {args.orders}")
    if args.folds < 2:
        raise UsageError(f"--folds must be >= 2, got {args.folds}")
    from .._pool import load_pool
    from ..learn._artifact import describe_files, save_task_policy
    from ..learn._tune import DegenerateError, fit_task
    from ..learn._votes import build_trajectories

    pool = load_pool(args.pools, datasets=args.dataset, skip_bad=args.skip_bad)
    warn_skipped("train", pool.skipped)
    tasks: dict[str, list[Any]] = {}
    for question in pool.questions:
        tasks.setdefault(question.dataset, []).append(question)
    fits = []
    for name, questions in tasks.items():
        sizes = sorted({len(q.samples) for q in questions})
        if len(sizes) > 1:
            raise UsageError(
                f"dataset {name!r} mixes pool sizes {sizes}; a task has one full budget (split it into datasets)"
            )
        print(f"{name}: {len(questions)} questions x {sizes[0]} samples ...", flush=True)
        trajectories = build_trajectories(questions, orders=args.orders, seed=args.seed)
        dollars = None if args.value == "auto" else _value(args.value)
        try:
            fit = fit_task(
                trajectories,
                value=None if dollars is None else float(dollars),
                price_per_1k=args.price_per_1k or 0.0,
                task=name,
                max_loss=args.max_loss,
                confidence=args.confidence,
                folds=args.folds,
                seed=args.seed,
            )
        except DegenerateError as error:
            raise UsageError(f"refusing to write a degenerate policy: {error}") from None
        except ValueError as error:
            raise UsageError(str(error)) from None
        fits.append(fit)
        print(format_task(fit))
    path = save_task_policy(
        fits,
        args.output,
        settings={
            "value_per_correct": None if args.value == "auto" else float(args.value),
            "price_per_1k": args.price_per_1k,
            "max_loss": args.max_loss,
            "confidence": args.confidence,
            "orders": args.orders,
            "folds": args.folds,
            "seed": args.seed,
        },
        training={
            "files": describe_files(pool.files),
            "skipped": [list(s) for s in pool.skipped],
            "questions": {name: len(q) for name, q in tasks.items()},
        },
        command=task_command_line(args),
        force=args.force,
    )
    print(f"wrote {path}")
    return 0


def format_task(fit: Any) -> str:
    """What training decided for one task, with the held-out comparison that decided it."""
    held = fit.held_out
    unit = "cost"
    lines = [f"  shipped: {fit.family} at {fit.point:g} (expected loss bound {fit.loss_bound:.4g}); {fit.note}"]
    reference = held.get("ac", {}).get("cost")
    lines.append(f"  held-out folds: {'family':<7} {'accuracy':>9} {'samples':>8} {unit:>10}  vs tuned AC")
    for family, row in held.items():
        versus = "" if not reference else more_or_fewer(1.0 - row["cost"] / reference, unit)
        lines.append(
            f"{'':18}{family:<7} {row['accuracy']:>9.4f} {row['samples']:>8.2f} {row['cost']:>10.2f}  {versus}"
        )
    first = next(iter(held.values()))
    lines.append(f"                  {'full':<7} {first['full_accuracy']:>9.4f} {'':>8} {first['full_cost']:>10.2f}")
    return "\n".join(lines)
