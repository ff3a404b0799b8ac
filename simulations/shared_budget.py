"""What a shared budget buys on the real pools: the figures of docs/scheduler.md.

Every table comes from :func:`budgetctl.sched.simulate_shared_budget` (the scheduler's own allocator
on a virtual clock) on the pools in ``../shared/traces``:

1. the four Active-Prompt pools (GSM8K, CSQA, two last-letter sets; 10 samples per question) at 3
   samples per question on average, 8 slots, 20 orders: what ``budgetctl simulate --scheduler
   slots=8 --budget-per-question 3 --orders 20 POOL`` prints;
2. GSM8K across budgets (1.5 to 6 samples per question);
3. GSM8K, the lookahead gain's one parameter (``theta``) and the scheduler's ``lookahead``;
4. GSM8K, slots and batch sizes (how much of the gain survives samples in flight and small batches);
5. the two 40-sample pools with token counts (ESC last letters, Faithful-CoT date) at 3 per question.

    python simulations/shared_budget.py            # prints markdown tables (3 to 10 minutes on 2 shared cores)
    python simulations/shared_budget.py --quick    # 3 orders: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from budgetctl._gain import VoteGain
from budgetctl._pool import load_pool
from budgetctl.sched import LookaheadGain, SharedDatasetResult, simulate_shared_budget

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
ACTIVE = TRACES / "activeprompt_k10_codex.jsonl.gz"


def pct(value: float) -> str:
    return f"{value * 100:.1f}"


def rows_table(result: SharedDatasetResult) -> list[str]:
    uniform = result.row("uniform").accuracy
    lines = [
        f"**{result.dataset}** ({result.n_questions} questions x {result.pool_size} samples; full-pool majority"
        f" {pct(result.full_pool_accuracy)}%)",
        "",
        "| allocation | accuracy % | 95% of orders | vs uniform | samples/question |",
        "|---|---|---|---|---|",
    ]
    for row in result.rows:
        lines.append(
            f"| {row.name} | {pct(row.accuracy)} | {pct(row.ci_low)}-{pct(row.ci_high)} |"
            f" {(row.accuracy - uniform) * 100:+.1f} | {row.mean_samples:.2f} |"
        )
    independent = result.row("independent")
    lines += ["", f"Independent stopping: {independent.detail}.", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    if not ACTIVE.exists():
        print(f"pools not found in {TRACES}", file=sys.stderr)
        return 1
    orders = 3 if args.quick else 20
    few = 3 if args.quick else 10
    started = time.perf_counter()
    gains = [("VoteGain", VoteGain()), ("LookaheadGain", LookaheadGain())]

    section = ["### 1. Four pools, 3 samples per question, 8 slots", ""]
    result = simulate_shared_budget(ACTIVE, slots=8, budget_per_question=3, orders=orders, jobs=args.jobs)
    for dataset in result.datasets:
        section += rows_table(dataset)
    print("\n".join(section), flush=True)

    gsm = load_pool(ACTIVE, datasets=["gsm8k_train"])
    section = ["### 2. GSM8K across budgets (8 slots)", ""]
    section += [
        "| samples/question | uniform | independent (AC) | shared: VoteGain | shared: LookaheadGain | oracle |",
        "|---|---|---|---|---|---|",
    ]
    for budget in (1.5, 2, 3, 4, 6):
        d = simulate_shared_budget(gsm, budget_per_question=budget, orders=few, gains=gains, jobs=args.jobs).datasets[0]
        section.append(
            f"| {budget:g} | {pct(d.row('uniform').accuracy)} | {pct(d.row('independent').accuracy)}"
            f" | {pct(d.row('shared: VoteGain').accuracy)} | {pct(d.row('shared: LookaheadGain').accuracy)}"
            f" | {pct(d.row('oracle').accuracy)} |"
        )
    print("\n".join(["", *section]), flush=True)

    section = ["", "### 3. GSM8K, 3 per question: the gain model's parameter and the lookahead", ""]
    section += ["| gain model | lookahead | accuracy % | vs uniform |", "|---|---|---|---|"]
    for theta in (0.25, 0.5, 1.0, 2.0, 4.0):
        d = simulate_shared_budget(
            gsm, budget_per_question=3, orders=few, gains=[(f"theta={theta:g}", LookaheadGain(theta))], jobs=args.jobs
        ).datasets[0]
        section.append(
            f"| LookaheadGain(theta={theta:g}) | 3 | {pct(d.rows[0].accuracy)}"
            f" | {(d.rows[0].accuracy - d.row('uniform').accuracy) * 100:+.1f} |"
        )
    for lookahead in (1, 2, 4):
        for name, gain in gains:
            d = simulate_shared_budget(
                gsm, budget_per_question=3, orders=few, gains=[(name, gain)], lookahead=lookahead, jobs=args.jobs
            ).datasets[0]
            section.append(
                f"| {name} | {lookahead} | {pct(d.rows[0].accuracy)}"
                f" | {(d.rows[0].accuracy - d.row('uniform').accuracy) * 100:+.1f} |"
            )
    print("\n".join(section), flush=True)

    section = ["", "### 4. GSM8K, 3 per question: slots and batches (LookaheadGain)", ""]
    section += ["| slots | batch | accuracy % | vs uniform |", "|---|---|---|---|"]
    for slots, batch in ((1, None), (8, None), (64, None), (256, None), (8, 100), (8, 10)):
        d = simulate_shared_budget(
            gsm,
            slots=slots,
            batch=batch,
            budget_per_question=3,
            orders=few,
            gains=[("LookaheadGain", LookaheadGain())],
            jobs=args.jobs,
        ).datasets[0]
        section.append(
            f"| {slots} | {batch or 'all 1000'} | {pct(d.rows[0].accuracy)}"
            f" | {(d.rows[0].accuracy - d.row('uniform').accuracy) * 100:+.1f} |"
        )
    print("\n".join(section), flush=True)

    section = ["", "### 5. The 40-sample pools, 3 per question, 8 slots", ""]
    for name in ("esc_lastletters_gpt35.jsonl", "fcot_date_codex.jsonl"):
        path = TRACES / name
        if path.exists():
            for dataset in simulate_shared_budget(path, budget_per_question=3, orders=few, jobs=args.jobs).datasets:
                section += rows_table(dataset)
    print("\n".join(section), flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
