"""The scheduler with a gain model learned from other folds: GSM8K at 3 samples per question.

GSM8K (Active-Prompt, 1000 questions x 10 samples) is split into five folds by question. For each
fold, a :class:`budgetctl.learn.GainTable` (the mean realised gain of ``h`` more samples by vote
state) is learned from the other four folds' trajectories, and the scheduler shares 3 samples per
question among the held-out fold's 200 questions (8 slots); beside it, on the same fold, uniform-3,
the default ``LookaheadGain`` and the oracle allocation. Accuracies are pooled over folds. Target
at least 70.6%, half the gap between uniform-3 (62.8%) and the oracle allocation
(78.4%). Note that each fold's 200 questions share one budget, where docs/scheduler.md shares it
among all 1000 (smaller batches leave less to reallocate).

    nice python simulations/learned_scheduler.py        # under a minute on one core

Writes the "Scheduler with a learned gain model" section of docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "simulations"))

import benchdoc  # noqa: E402

from budgetctl._pool import Pool, load_pool  # noqa: E402
from budgetctl.learn._gaintable import GainTable  # noqa: E402
from budgetctl.learn._votes import build_trajectories  # noqa: E402
from budgetctl.sched import LookaheadGain, simulate_shared_budget  # noqa: E402

POOL = ROOT.parent / "shared" / "traces" / "activeprompt_k10_codex.jsonl.gz"
FOLDS, ORDERS, TRAIN_ORDERS, BUDGET, TARGET = 5, 10, 20, 3.0, 0.706
COMMAND = "nice python simulations/learned_scheduler.py"


def main() -> None:
    """Five folds; print and write the table."""
    started = time.perf_counter()
    questions = load_pool([POOL], datasets=["gsm8k_train"]).questions
    fold_of = np.random.default_rng(0).permutation(len(questions)) % FOLDS
    names = ("uniform", "shared: LookaheadGain", "shared: GainTable (other folds)", "oracle")
    sums = dict.fromkeys(names, 0.0)
    for k in range(FOLDS):
        train = [q for q, f in zip(questions, fold_of, strict=True) if f != k]
        held = [q for q, f in zip(questions, fold_of, strict=True) if f == k]
        table = GainTable.fit(build_trajectories(train, orders=TRAIN_ORDERS, seed=0))
        result = simulate_shared_budget(
            Pool(questions=held, files=[], skipped=[]),
            budget_per_question=BUDGET,
            orders=ORDERS,
            gains=[("LookaheadGain", LookaheadGain()), ("GainTable (other folds)", table)],
        ).datasets[0]
        for name in names:
            sums[name] += result.row(name).accuracy * len(held)
        print(f"fold {k}: " + ", ".join(f"{n} {result.row(n).accuracy:.4f}" for n in names), flush=True)
    accuracy = {name: total / len(questions) for name, total in sums.items()}
    learned = accuracy["shared: GainTable (other folds)"]
    lines = [
        "## Scheduler with a learned gain model",
        "",
        f"GSM8K (1000 x 10), five folds by question: a `GainTable` learned from four folds ({TRAIN_ORDERS} orders per "
        f"question), the scheduler sharing {BUDGET:g} samples per question among the fifth fold's 200 questions "
        f"(8 slots, {ORDERS} orders), pooled over folds. Target: at least {TARGET:.1%}.",
        "",
        "| allocation | accuracy % |",
        "|---|---|",
        *[f"| {name} | {100 * value:.1f} |" for name, value in accuracy.items()],
        "",
        f"{'Met' if learned >= TARGET else 'Missed'}: {100 * learned:.1f}% against the target {100 * TARGET:.1f}%. "
        f"{time.perf_counter() - started:.0f} s on one core. Command: `{COMMAND}`.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    benchdoc.write_section(ROOT / "docs" / "benchmarks.md", text)


if __name__ == "__main__":
    main()
