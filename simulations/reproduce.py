"""Reproduce published figures from the real pools in ../shared/traces and write docs/reproductions.md.

    python simulations/reproduce.py            # about a minute on 2 cores

1. Tree of Thoughts (Yao et al., 2023), Table 2, Game of 24 with GPT-4: IO, CoT, CoT-SC@100,
   IO best-of-100, CoT best-of-100, from tot_game24_gpt4.jsonl.
2. Adaptive-Consistency (Aggarwal et al., 2023) and Early-Stopping Self-Consistency (Li et al., 2024)
   on the ESC last-letters pool: samples and accuracy at threshold 0.95 and window 5 against the
   40-sample pool, beside the papers' claims; then the same two defaults on every pool.
Everything goes through ``budgetctl.simulate`` (the same policy objects live runs use).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budgetctl.sim import LatencyModel, SimulationResult, simulate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def tot_table(orders: int) -> list[str]:
    path = SHARED / "tot_game24_gpt4.jsonl"
    result = simulate(path, ["fixed:n=1", "fixed:n=100"], orders=orders, jobs=None)
    by = {d.dataset: d for d in result.datasets}
    io, cot = by["game24_standard"], by["game24_cot"]
    # (method, the paper's figure, ours, whether it depends on voting)
    rows = [
        ("IO (one sample)", 0.073, io.row("fixed:n=1").accuracy, False),
        ("CoT (one sample)", 0.040, cot.row("fixed:n=1").accuracy, False),
        ("CoT-SC, majority of 100", 0.090, cot.row("fixed:n=100").accuracy, True),
        ("IO best of 100 (any verified)", 0.33, io.row("best-of-100 (verifier)").accuracy, False),
        ("CoT best of 100 (any verified)", 0.49, cot.row("best-of-100 (verifier)").accuracy, False),
    ]
    puzzles = {d.n_questions for d in (io, cot)}
    lines = [
        "## Tree of Thoughts, Table 2 (Game of 24, GPT-4)",
        "",
        f"Command: `python simulations/reproduce.py` ({orders} orders, seed 0; pool `tot_game24_gpt4.jsonl`, "
        f"{' and '.join(map(str, sorted(puzzles)))} puzzles per prompt).",
        "",
        "| method | paper | budgetctl |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {pct(paper)} | {pct(ours)} |" for name, paper, ours, _ in rows]
    unvoted = max(abs(ours - paper) for _, paper, ours, voted in rows if not voted)
    _, sc_paper, sc_ours, _ = rows[2]
    lines += [
        "",
        "One sample's accuracy is averaged over the 100 samples of each puzzle (orders average it out); "
        "best-of-100 is the verifier's pick (the pool's exact checker, score 1 = a correct expression), so it "
        "equals pass@100. Majority voting over expressions is nearly useless here (different correct "
        "expressions do not vote together), which is why CoT-SC gains little, as in the paper. The paper's "
        f"CoT-SC figure ({pct(sc_paper)}) is {100 * (sc_paper - sc_ours):.1f} points "
        f"{'above' if sc_paper >= sc_ours else 'below'} ours: the released logs carry the final expressions as the "
        "paper's harness extracted them, and we vote on those strings exactly (after trimming and case-folding); "
        "a vote on equivalent expressions (commuted operands) would merge more votes than ours. The single-sample "
        f"and best-of rows, which do not depend on voting, match to {100 * unvoted:.1f} point.",
        "",
    ]
    return lines


def ac_esc(orders: int) -> tuple[list[str], SimulationResult]:
    path = SHARED / "esc_lastletters_gpt35.jsonl"
    policies = ["fixed:n=40", "ac:threshold=0.95", "ac:threshold=0.95,criterion=dirichlet", "esc:window=5"]
    result = simulate(path, policies, orders=orders, jobs=None)
    d = result.overall
    full = d.row("fixed:n=40")
    lines = [
        "## Adaptive-Consistency and ESC on ESC last letters (gpt-3.5-turbo, 40 samples)",
        "",
        f"Command: `python simulations/reproduce.py` ({orders} orders, seed 0; pool `esc_lastletters_gpt35.jsonl`).",
        "",
        "| policy | accuracy | mean samples | samples saved | fewer samples | mean tokens | paper's claim |",
        "|---|---|---|---|---|---|---|",
    ]
    claims = {
        "ac:threshold=0.95": "up to 7.9x fewer samples at < 0.1 point drop (AC, averaged over its benchmarks)",
        "ac:threshold=0.95,criterion=dirichlet": "(AC's Dirichlet criterion)",
        "esc:window=5": "-67.4% samples on last letters at comparable accuracy (ESC; GPT-3.5 setting not confirmed)",
        "fixed:n=40": "(the 40-sample pool)",
    }
    for name in policies:
        row = d.row(name)
        saved = 1 - row.mean_samples / full.mean_samples
        lines.append(
            f"| `{name}` | {row.accuracy:.4f} | {row.mean_samples:.2f} | {pct(saved)} | "
            f"{full.mean_samples / row.mean_samples:.1f}x | {row.mean_tokens:.1f} | {claims[name]} |"
        )
    oracle = d.row("cost oracle")
    ac = d.row("ac:threshold=0.95")
    esc = d.row("esc:window=5")
    lines += [
        f"| cost oracle | {oracle.accuracy:.4f} | {oracle.mean_samples:.2f} | | | {oracle.mean_tokens:.1f} | (knows the full-pool majority) |",
        "",
        f"Adaptive-Consistency keeps {ac.retention:.2%} of the full pool's accuracy "
        f"({100 * (full.accuracy - ac.accuracy):.2f} points lost) with {full.mean_samples / ac.mean_samples:.1f}x fewer "
        "samples: the paper's 'up to 7.9x at < 0.1% drop' holds in kind on this pool (the 7.9x was its best "
        "benchmark, not last letters). ESC saves "
        f"{pct(1 - esc.mean_samples / full.mean_samples)} of the samples at {esc.accuracy:.4f}, more than the "
        "paper's 67.4% for last letters. The gap is the pool, not the method: this GPT-3.5 pool is very "
        "self-consistent (a single sample is right 80.4% of the time, the full majority 83.2%), so five agreeing "
        "samples come early; the paper's figure was measured on its own runs (the README of the shared pool notes "
        "the GPT-3.5 setting is not confirmed), with window 5 and at most 40 samples as here. Our figures match the "
        "shared pool's reference values (AC 6.43 samples at .832, ESC 8.81 at .831) within the noise of the orders.",
        "",
        "Ties in the running majority go to the answer seen first (as `collections.Counter.most_common` does in "
        "the published code); the cost oracle stops at the first sample after which the running majority equals "
        "the full pool's.",
        "",
    ]
    return lines, result


def all_pools(orders: int) -> list[str]:
    pools = sorted(str(p) for p in SHARED.glob("*.jsonl*"))
    latency = LatencyModel(ttft=0.08, per_token=0.015, concurrency=4)
    result = simulate(
        pools,
        ["ac:threshold=0.95", "esc:window=5", "fixed:n=40"],
        orders=orders,
        latency=latency,
        jobs=None,
    )
    lines = [
        "## The two defaults on every pool, with accuracy by deadline",
        "",
        f"Command: `python simulations/reproduce.py` ({orders} orders, seed 0, all pools). Latency "
        "model for the deadline columns: 80 ms to the first token, 15 ms per token, 4 samples in flight "
        "(costs and accuracies in the other columns do not depend on it, except that 4 in flight draw a few "
        "samples more before a stop than one at a time).",
        "",
        "| dataset | policy | accuracy | full pool | mean samples | mean tokens | acc @ 0.1 s | acc @ 1 s | acc @ 10 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in result.datasets:
        for name in ("ac:threshold=0.95", "esc:window=5", "fixed:n=40"):
            row = d.row(name)
            tokens = f"{row.mean_tokens:.0f}" if row.mean_tokens is not None else "unknown"
            at = row.accuracy_at_deadline
            lines.append(
                f"| {d.dataset} | `{name}` | {row.accuracy:.4f} | {d.full_pool_accuracy:.4f} | {row.mean_samples:.2f} | "
                f"{tokens} | {at['0.1']:.3f} | {at['1']:.3f} | {at['10']:.3f} |"
            )
    lines += [
        "",
        "Pools without token counts (the k=10 Active-Prompt pools) have samples of zero modelled length: they "
        "take only the 80 ms to the first token, so their deadline columns are optimistic.",
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "docs" / "reproductions.md"))
    args = parser.parse_args()
    if not SHARED.exists():
        print(f"needs the shared pools in {SHARED}", file=sys.stderr)
        return 2
    lines = [
        "# Reproductions",
        "",
        "Published figures recomputed from the released sample pools in `../shared/traces` (see its README), "
        "each by replaying every question's samples in many random orders through `budgetctl.simulate`. "
        "Regenerate this file with `python simulations/reproduce.py`.",
        "",
    ]
    lines += tot_table(args.orders)
    section, _ = ac_esc(args.orders)
    lines += section
    lines += all_pools(args.orders)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
