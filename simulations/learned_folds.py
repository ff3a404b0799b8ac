"""Per-task training, judged as a user would: 5-fold split by question, train on four folds, replay on the fifth.

For every shared pool (dataset) with at least 300 questions: the questions are split into five
folds; ``budgetctl train``'s per-task procedure with its defaults (the same function the command
calls) learns on four folds, and what it ships (learned risk table or tuned rule) is replayed on
the fifth in random orders; results are pooled over the five folds. Beside it, on the same folds:
the full pool, Adaptive-Consistency at 0.95, and the AC threshold tuned on the same training folds
(the same operating-point procedure, AC family only), and the lookup-table baseline of
shared/docs/learned-policy-notes.md (its eps chosen on the training folds the same way). Targets: per pool, accuracy within
0.1 point of the full pool and cost never above the tuned AC; across pools, median cost at most
0.92x the tuned AC and at most 0.8x AC(0.95). Cost is tokens where the pool has them, else samples.

Run (about 2 minutes on one core)::

    nice python simulations/learned_folds.py

It writes the "Per-task training" section of docs/benchmarks.md and the table part of docs/learned.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "simulations"))

import benchdoc  # noqa: E402

from budgetctl._pool import Question, load_pool  # noqa: E402
from budgetctl.learn._tune import (  # noqa: E402
    DEFAULT_CONFIDENCE,
    DEFAULT_FOLDS,
    DEFAULT_MAX_LOSS,
    DEFAULT_ORDERS,
    Outcomes,
    _family_grid,
    _replay,
    _stops_esc,
    _stops_from_risk,
    ac_risk,
    choose_point,
    fit_task,
    lookup_table,
    outcomes,
)
from budgetctl.learn._votes import Trajectories, build_trajectories  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
FOLDS = 5
#: Defaults of ``budgetctl train`` (model auto).
TRAIN_ORDERS, TRAIN_FOLDS, MAX_LOSS, CONFIDENCE = DEFAULT_ORDERS, DEFAULT_FOLDS, DEFAULT_MAX_LOSS, DEFAULT_CONFIDENCE
#: Random orders per held-out question.
EVAL_ORDERS = 20
MIN_QUESTIONS = 300
COMMAND = "nice python simulations/learned_folds.py"


def _shipped_outcome(fit: object, traj: Trajectories) -> Outcomes:
    family = fit.family  # type: ignore[attr-defined]
    point = np.asarray([fit.point])  # type: ignore[attr-defined]
    if family == "esc":
        return outcomes(traj, _stops_esc(traj, point.astype(np.int64)))
    if family == "ac":
        return outcomes(traj, _stops_from_risk(traj, ac_risk(traj.n), 1.0 - point))
    return outcomes(traj, _stops_from_risk(traj, fit.risk, point))  # type: ignore[attr-defined]


def _ac_outcome(threshold: float, traj: Trajectories) -> Outcomes:
    return outcomes(traj, _stops_from_risk(traj, ac_risk(traj.n), np.asarray([1.0 - threshold])))


def run_pool(name: str, questions: list[Question]) -> dict[str, object]:
    """Five folds of one pool; returns pooled accuracy and cost of each policy, and what train shipped per fold."""
    fold_of = np.random.default_rng(0).permutation(len(questions)) % FOLDS
    sums: dict[str, list[float]] = {k: [0.0, 0.0] for k in ("full", "shipped", "tuned_ac", "ac95", "table")}
    shipped = []
    for k in range(FOLDS):
        train = [q for q, f in zip(questions, fold_of, strict=True) if f != k]
        held = [q for q, f in zip(questions, fold_of, strict=True) if f == k]
        traj = build_trajectories(train, orders=TRAIN_ORDERS, seed=0)
        fit = fit_task(traj, task=name, max_loss=MAX_LOSS, confidence=CONFIDENCE, folds=TRAIN_FOLDS, seed=0)
        grid = _family_grid("ac", traj.n)
        index, _ = choose_point(_replay("ac", traj, grid, None), MAX_LOSS, CONFIDENCE)
        tuned = float(grid[0 if index is None else index])
        table = lookup_table(traj)
        eps_grid = _family_grid("table", traj.n)
        index, _ = choose_point(_replay("table", traj, eps_grid, table), MAX_LOSS, CONFIDENCE)
        eps = float(eps_grid[0 if index is None else index])
        test = build_trajectories(held, orders=EVAL_ORDERS, seed=1)
        for key, result in (
            ("shipped", _shipped_outcome(fit, test)),
            ("tuned_ac", _ac_outcome(tuned, test)),
            ("ac95", _ac_outcome(0.95, test)),
            ("table", outcomes(test, _stops_from_risk(test, table, np.asarray([eps])))),
        ):
            sums[key][0] += float(result.accuracy[0].sum())
            sums[key][1] += float(result.cost[0].sum())
        sums["full"][0] += float(result.full.sum())
        sums["full"][1] += float(result.full_cost.sum())
        shipped.append(f"{fit.family} {fit.point:.3g}" if fit.family != "ac" else f"ac {fit.point:.4g}")
        shipped[-1] += f" (tuned AC {tuned:.4g})"
    count = len(questions)
    out: dict[str, object] = {k: (v[0] / count, v[1] / count) for k, v in sums.items()}
    out["shipped_per_fold"] = shipped
    out["unit"] = "tokens" if test.tokens_known else "samples"
    out["size"] = f"{count} x {test.n}"
    return out


def main() -> None:
    """Run every pool and write the docs."""
    started = time.perf_counter()
    tasks: list[tuple[str, list[Question]]] = []
    for path in sorted(TRACES.glob("*.jsonl*")):
        pool = load_pool([path])
        by: dict[str, list[Question]] = {}
        for q in pool.questions:
            by.setdefault(q.dataset, []).append(q)
        for dataset, questions in by.items():
            if len(questions) >= MIN_QUESTIONS:
                tasks.append((f"{path.name.split('.')[0]}/{dataset}", questions))
    rows = []
    for name, questions in tasks:
        t0 = time.perf_counter()
        result = run_pool(name, questions)
        rows.append((name, result))
        print(f"{name}: {result} ({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    lines = [
        "| pool | size, cost unit | full pool | AC(0.95) | AC tuned on training folds | lookup table (baseline) | "
        "`budgetctl train` | x tuned AC | x AC(0.95) | accuracy within 0.1 pt | cost <= tuned AC | shipped per fold |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    vs_tuned, vs_ac95 = [], []
    met_all = True
    for name, r in rows:
        full, shipped, tuned, ac95, table = r["full"], r["shipped"], r["tuned_ac"], r["ac95"], r["table"]  # type: ignore[misc]
        ratio_tuned = shipped[1] / tuned[1]
        ratio_95 = shipped[1] / ac95[1]
        vs_tuned.append(ratio_tuned)
        vs_ac95.append(ratio_95)
        accurate = shipped[0] >= full[0] - 0.001
        cheap = shipped[1] <= tuned[1] * (1 + 1e-9)
        met_all = met_all and accurate and cheap
        lines.append(
            f"| {name} | {r['size']}, {r['unit']} | {full[1]:.1f} at {full[0]:.4f} | {ac95[1]:.1f} at {ac95[0]:.4f} | "
            f"{tuned[1]:.1f} at {tuned[0]:.4f} | {table[1]:.1f} at {table[0]:.4f} | "
            f"{shipped[1]:.1f} at {shipped[0]:.4f} | {ratio_tuned:.3f} | "
            f"{ratio_95:.3f} | {'met' if accurate else 'MISSED'} | {'met' if cheap else 'MISSED'} | "
            f"{'; '.join(r['shipped_per_fold'])} |"  # type: ignore[arg-type]
        )
    med_tuned, med_95 = median(vs_tuned), median(vs_ac95)
    summary = (
        f"Across the {len(rows)} pools: median cost {med_tuned:.3f}x the tuned AC (target <= 0.92: "
        f"{'met' if med_tuned <= 0.92 else 'MISSED'}) and {med_95:.3f}x AC(0.95) (target <= 0.8: "
        f"{'met' if med_95 <= 0.8 else 'MISSED'}); per-pool targets {'all met' if met_all else 'not all met'}. "
        f"{seconds:.0f} s on one core."
    )
    table = "\n".join(lines)
    intro = (
        f"5-fold split by question of every shared pool with at least {MIN_QUESTIONS} questions; on four folds "
        f"`budgetctl train` with its defaults (max-loss {MAX_LOSS}, confidence {CONFIDENCE}, {TRAIN_ORDERS} orders, "
        f"{TRAIN_FOLDS} inner folds), replayed on the fifth in {EVAL_ORDERS} random orders per question; pooled "
        "over the folds. Cost at accuracy; cost is tokens where the pool has them, else samples."
    )
    benchdoc.write_section(
        ROOT / "docs" / "benchmarks.md",
        f"## Per-task training\n\n{intro}\n\n{table}\n\n{summary}\n\n```sh\n# illustrative: 37-107 s on one core\n{COMMAND}\n```\n",
    )
    benchdoc.write_section(
        ROOT / "docs" / "learned.md",
        f"## Measured: train on four folds, replay on the fifth\n\n{intro}\n\n{table}\n\n{summary}\n\n"
        f"Reproduce with `{COMMAND}` (it rewrites this section and the one in benchmarks.md).\n",
    )
    print(summary)


if __name__ == "__main__":
    main()
