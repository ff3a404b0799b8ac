"""Leave-one-dataset-out evaluation of the learned stop policy over ../shared/traces.

    python simulations/learned_lodo.py                      # main model (mlp) + linear; ~30-60 min on 2 cores
    python simulations/learned_lodo.py --models mlp,gbm,linear --eval-orders 50 --write

For each dataset in turn: train ``LearnedStop`` on every other dataset, with the operating point
(``value="auto"``: the cheapest value at which no *training* dataset loses more than 0.1 point
against its full pool, judged on out-of-fold predictions) chosen on those training pools only; then
replay the held-out dataset through ``budgetctl.simulate`` and report

1. at the chosen operating point: accuracy against the full-pool majority, samples and tokens,
   beside Adaptive-Consistency (0.95) and ESC (window 5) at their published defaults;
2. the frontier (a sweep of the value) against frontiers swept *in hindsight on the held-out pool*:
   AC thresholds, ESC windows, the budget-aware rule ``Unbeatable(max_samples=B)`` and fixed-N
   majority: the most any baseline beats the learned frontier by at one cost, and the learned
   frontier's gains at tight budgets (3 samples per question or fewer);
3. the cost oracle, and the share of the gap between the best baseline and the oracle that the
   learned policy closes at its operating point.

``--write`` replaces the "### Leave-one-dataset-out" part of "## Learned stop policy" in
docs/benchmarks.md. Nothing here is tuned on a held-out pool: the rows of a dataset never reach
the model or the choice of its value when that dataset is evaluated.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchdoc import write_part

from budgetctl._pool import Pool, load_pool
from budgetctl.learn import LearnedStop, build_rows
from budgetctl.policies import Unbeatable
from budgetctl.sim import simulate

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Learned stop policy"
PART = "### Leave-one-dataset-out"
FILES = (
    "activeprompt_k10_codex.jsonl.gz",
    "esc_lastletters_gpt35.jsonl",
    "fcot_date_codex.jsonl",
    "tot_game24_gpt4.jsonl",
)
AC = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)
ESC_WINDOWS = (1, 2, 3, 4, 5, 6, 8, 10)
BUDGETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 30, 40, 50, 70, 100)
VALUES = tuple(float(v) for v in np.geomspace(1e-4, 1.0, 15))
TIGHT = 3.0  # samples per question


def cost_of(row: Any, tokens: bool) -> float:
    return float(row.mean_tokens if tokens else row.mean_samples)


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper-left envelope: sorted by cost, accuracy never decreasing."""
    out: list[tuple[float, float]] = []
    for cost, acc in sorted(points):
        if out and acc <= out[-1][1]:
            continue
        out.append((cost, acc))
    return out


def accuracy_at(env: list[tuple[float, float]], cost: float) -> float | None:
    """Accuracy of an envelope at ``cost`` (linear between its points: mixing two operating points); None outside."""
    if not env or cost < env[0][0]:
        return None
    if cost >= env[-1][0]:
        return env[-1][1]
    for (c0, a0), (c1, a1) in itertools.pairwise(env):
        if c0 <= cost <= c1:
            return a0 + (a1 - a0) * (cost - c0) / (c1 - c0) if c1 > c0 else a1
    return None


def cost_at(env: list[tuple[float, float]], accuracy: float) -> float | None:
    """Cheapest cost at which an envelope reaches ``accuracy`` (linear between points); None if never."""
    for (c0, a0), (c1, a1) in zip([(env[0][0], -1.0), *env], env, strict=False):
        if a1 >= accuracy:
            if a1 == a0 or c0 == c1:
                return c1
            return c0 + (c1 - c0) * max(accuracy - a0, 0.0) / (a1 - a0)
    return None


def evaluate_fold(
    held: str, pool: Pool, rows: Any, model: str, eval_orders: int, jobs: int | None, seed: int
) -> dict[str, Any]:
    started = time.perf_counter()
    train_rows = rows.select(rows.dataset != rows.datasets.index(held))
    policy = LearnedStop(model=model, value="auto", max_loss=0.001, random_state=seed).fit(train_rows)
    fitted = time.perf_counter() - started
    questions = [q for q in pool.questions if q.dataset == held]
    n = max(len(q.samples) for q in questions)
    sweep_learned = []
    for v in VALUES:
        copy = pickle.loads(pickle.dumps(policy)).set_params(value=v)
        sweep_learned.append(copy)
    sweeps = [
        ("learned", sweep_learned),
        ("ac", [f"ac:threshold={t}" for t in AC]),
        ("esc", [f"esc:window={w}" for w in ESC_WINDOWS if w <= n]),
        ("unbeatable", [Unbeatable(max_samples=b) for b in BUDGETS if b <= n]),
    ]
    result = simulate(
        Pool(questions=questions, files=pool.files),
        [policy, "ac:threshold=0.95", "esc:window=5"],
        sweeps=sweeps,
        orders=eval_orders,
        seed=seed,
        jobs=jobs,
    )
    data = result.datasets[0]
    tokens = data.tokens_known
    rows_by = data.rows
    own, ac, esc = rows_by[0], rows_by[1], rows_by[2]
    groups: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows_by:
        if row.kind == "sweep":
            groups.setdefault(row.group, []).append((cost_of(row, tokens), row.accuracy, row.mean_samples))
    fixed = [
        (data.fixed_curve_tokens[i] if tokens else float(i + 1), acc, float(i + 1))
        for i, acc in enumerate(data.fixed_curve)
    ]
    groups["fixed"] = fixed
    oracle = data.row("cost oracle")
    learned_env = envelope([(c, a) for c, a, _ in groups["learned"]])
    baseline_points = [(g, c, a, s) for g in ("ac", "esc", "unbeatable", "fixed") for c, a, s in groups[g]]
    baseline_env = envelope([(c, a) for _, c, a, _ in baseline_points])
    worst = (0.0, None)
    for g, c, a, s in baseline_points:
        mine = accuracy_at(learned_env, c)
        if mine is None or c > learned_env[-1][0]:
            continue
        if a - mine > worst[0]:
            worst = (a - mine, f"{g} at {s:.2f} samples")
    tight = (None, None)
    for c, a, s in groups["learned"]:
        if s > TIGHT:
            continue
        theirs = accuracy_at(baseline_env, c)
        if theirs is None:
            continue
        if tight[0] is None or a - theirs > tight[0]:
            tight = (a - theirs, f"{s:.2f} samples")
    cheaper = min((ac, esc), key=lambda r: cost_of(r, tokens))
    own_cost = cost_of(own, tokens)
    best_base = cost_at(baseline_env, own.accuracy)
    oracle_cost = cost_of(oracle, tokens)
    gap = None
    if best_base is not None and best_base > oracle_cost:
        gap = (best_base - own_cost) / (best_base - oracle_cost)
    return {
        "dataset": held,
        "questions": len(questions),
        "pool_size": n,
        "tokens_known": tokens,
        "value": policy.value_,
        "fit_seconds": fitted,
        "seconds": time.perf_counter() - started,
        "full": data.full_pool_accuracy,
        "learned": {"accuracy": own.accuracy, "samples": own.mean_samples, "tokens": own.mean_tokens},
        "ac": {"accuracy": ac.accuracy, "samples": ac.mean_samples, "tokens": ac.mean_tokens},
        "esc": {"accuracy": esc.accuracy, "samples": esc.mean_samples, "tokens": esc.mean_tokens},
        "oracle": {"samples": oracle.mean_samples, "tokens": oracle.mean_tokens},
        "loss": data.full_pool_accuracy - own.accuracy,
        "savings_vs_cheaper": 1.0 - own_cost / cost_of(cheaper, tokens),
        "cheaper": cheaper.policy,
        "worst_baseline_advantage": worst[0],
        "worst_where": worst[1],
        "tight_gain": tight[0],
        "tight_where": tight[1],
        "best_baseline_cost_at_learned_accuracy": best_base,
        "gap_closed": gap,
        "frontiers": {g: [list(p) for p in pts] for g, pts in groups.items()},
    }


def fmt_cost(entry: dict[str, Any], key: str) -> str:
    part = entry[key]
    return f"{part['samples']:.2f} / {part['tokens']:.0f}" if entry["tokens_known"] else f"{part['samples']:.2f} / -"


def render(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, seconds: float) -> str:
    main_model = next(iter(results))
    folds = results[main_model]
    load = os.getloadavg()
    lines = [
        PART,
        "",
        f"Command: `python simulations/learned_lodo.py --models {args.models} --eval-orders {args.eval_orders} "
        f"--orders {args.orders} --target-orders {args.target_orders} --write` (took {seconds / 60:.0f} min; "
        f"{os.cpu_count()} cores shared with other jobs, load {load[0]:.1f}; Python {platform.python_version()}).",
        "",
        f"Model `{main_model}`; for each dataset, trained on the other seven with {args.orders} feature orders and "
        f"{args.target_orders} target orders per question; the value is chosen on the training pools only "
        '(`value="auto"`, `max_loss=0.001`: the cheapest value at which no training dataset loses more than '
        "0.1 point on out-of-fold predictions). The held-out dataset is then replayed through `budgetctl.simulate` "
        f"in {args.eval_orders} random orders per question. Cost is tokens where the pool has them, else samples; "
        "cells give samples / tokens per question.",
        "",
        "**1. At the chosen operating point** (target: within 0.1 point of the full pool with at least 20% "
        "less cost than the cheaper of AC 0.95 and ESC 5):",
        "",
        "| held out | value | full pool | learned | Δ points | learned cost | AC 0.95 acc | AC cost | "
        "ESC 5 acc | ESC cost | vs cheaper | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in folds:
        met = f["loss"] <= 0.001 and f["savings_vs_cheaper"] >= 0.20
        lines.append(
            f"| {f['dataset']} | {f['value']:.3g} | {f['full']:.4f} | {f['learned']['accuracy']:.4f} | "
            f"{-100 * f['loss']:+.2f} | {fmt_cost(f, 'learned')} | {f['ac']['accuracy']:.4f} | {fmt_cost(f, 'ac')} | "
            f"{f['esc']['accuracy']:.4f} | {fmt_cost(f, 'esc')} | {100 * f['savings_vs_cheaper']:+.0f}% | "
            f"{'yes' if met else 'no'} |"
        )
    lines += [
        "",
        "**2. The frontier** (value swept over "
        f"{len(VALUES)} points) against AC thresholds, ESC windows, `Unbeatable(max_samples=B)` (stop when the "
        "samples still allowed cannot overturn the leader) and fixed-N majority, all swept in hindsight on the "
        "held-out pool. *Worst gap*: the most accuracy any baseline point has over the learned frontier at its "
        "cost (frontiers interpolated linearly, as mixing two operating points would give; target: at most 0.2 "
        f"point). *Tight budgets*: the learned frontier's best gain over the baselines' envelope at {TIGHT:g} "
        "samples per question or fewer.",
        "",
        "| held out | worst gap (points) | where | tight-budget gain (points) | where |",
        "|---|---|---|---|---|",
    ]
    for f in folds:
        tight = "-" if f["tight_gain"] is None else f"{100 * f['tight_gain']:+.2f}"
        lines.append(
            f"| {f['dataset']} | {100 * f['worst_baseline_advantage']:.2f} | {f['worst_where'] or '-'} | "
            f"{tight} | {f['tight_where'] or '-'} |"
        )
    lines += [
        "",
        "**3. The cost oracle** (stops as soon as the running majority equals the full-pool majority; no causal "
        "policy can) and the share of the gap between the cheapest hindsight-swept baseline reaching the learned "
        "accuracy and the oracle that the learned policy closes at its operating point:",
        "",
        "| held out | oracle cost | best baseline at learned accuracy | learned cost | gap closed |",
        "|---|---|---|---|---|",
    ]
    for f in folds:
        unit = "tokens" if f["tokens_known"] else "samples"
        oracle = f["oracle"]["tokens"] if f["tokens_known"] else f["oracle"]["samples"]
        learned = f["learned"]["tokens"] if f["tokens_known"] else f["learned"]["samples"]
        base = f["best_baseline_cost_at_learned_accuracy"]
        gap = "-" if f["gap_closed"] is None else f"{100 * f['gap_closed']:.0f}%"
        lines.append(
            f"| {f['dataset']} | {oracle:.2f} {unit} | {'never' if base is None else f'{base:.2f}'} | "
            f"{learned:.2f} | {gap} |"
        )
    for model, other in list(results.items())[1:]:
        lines += [
            "",
            f"Model `{model}` (same protocol), in brief:",
            "",
            "| held out | value | Δ points | vs cheaper | worst gap | tight gain |",
            "|---|---|---|---|---|---|",
        ]
        for f in other:
            tight = "-" if f["tight_gain"] is None else f"{100 * f['tight_gain']:+.2f}"
            lines.append(
                f"| {f['dataset']} | {f['value']:.3g} | {-100 * f['loss']:+.2f} | "
                f"{100 * f['savings_vs_cheaper']:+.0f}% | {100 * f['worst_baseline_advantage']:.2f} | {tight} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,linear", help="model kinds, the first shown in detail")
    parser.add_argument("--orders", type=int, default=8)
    parser.add_argument("--target-orders", type=int, default=64)
    parser.add_argument("--eval-orders", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated datasets to hold out (default: all)")
    parser.add_argument("--json", default=None, help="write every figure and frontier point as JSON here")
    parser.add_argument("--write", action="store_true", help="write the results into docs/benchmarks.md")
    parser.add_argument(
        "--from-json", default=None, help="render (and --write) the results a previous run saved with --json"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        text = render(saved, args, sum(f["seconds"] for folds in saved.values() for f in folds))
        print(text)
        if args.write:
            write_part(DOC, SECTION, text)
            print(f"wrote {PART!r} in {SECTION!r} of {DOC.relative_to(ROOT)}")
        return 0
    missing = [name for name in FILES if not (TRACES / name).exists()]
    if missing:
        print(f"missing pools in {TRACES}: {missing}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    pool = load_pool([str(TRACES / name) for name in FILES], skip_bad=True)
    for path, line, reason in pool.skipped:
        print(f"skipped {path}:{line}: {reason}", file=sys.stderr)
    rows = build_rows(
        pool.questions,
        orders=args.orders,
        seed=args.seed,
        horizons=LearnedStop().horizons,
        target_orders=args.target_orders,
        jobs=args.jobs,
    )
    print(f"{len(rows)} rows from {len(pool.questions)} questions in {time.perf_counter() - started:.0f} s", flush=True)
    held_out = args.only.split(",") if args.only else pool.datasets
    results: dict[str, list[dict[str, Any]]] = {}
    for model in args.models.split(","):
        results[model] = []
        for held in held_out:
            fold = evaluate_fold(held, pool, rows, model, args.eval_orders, args.jobs, args.seed)
            results[model].append(fold)
            print(
                f"[{model}] {held}: value {fold['value']:.3g}, {fold['learned']['accuracy']:.4f} vs full "
                f"{fold['full']:.4f} ({-100 * fold['loss']:+.2f} pts), {100 * fold['savings_vs_cheaper']:+.0f}% vs "
                f"{fold['cheaper']}, worst gap {100 * fold['worst_baseline_advantage']:.2f} pts, tight "
                f"{fold['tight_gain']}, gap closed {fold['gap_closed']} ({fold['seconds']:.0f} s)",
                flush=True,
            )
    seconds = time.perf_counter() - started
    text = render(results, args, seconds)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    if args.write:
        write_part(DOC, SECTION, text)
        print(f"wrote {PART!r} in {SECTION!r} of {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
