"""Wall time against billed + wasted tokens, by the simulator's latency model: fixed fan-outs, the planner, its-hub's schedules.

Every question's samples are replayed in ``--orders`` random orders (the same orders for every
method) under ``ttft + tokens * per_token`` timing, one question after another, through the same
run core and planner live runs use (a property test checks that simulation equals a live run).
Per question and order: the wall time to the answer, the tokens of the samples that came back
(billed) and the tokens the samples in flight at the stop had decoded when they were cancelled
(wasted; the model knows them exactly), and whether the answer was right.

Methods: ``--policy`` (default Adaptiveness-Consistency, Beta 0.95) capped at N samples with a fixed
concurrency of 1, 2, 4, 8 and N, and with ``concurrency="auto"`` at several speeds; its-hub's
schedules as the same model runs them: ``SelfConsistency`` with a budget of k sends k requests at
once and waits for all of them, ``BetaSelfConsistency(0.95)`` sends N at once and cancels the rest
when the Beta criterion holds (budgetctl's AC(0.95) at concurrency N is the same schedule). Then
accuracy at deadlines of 0.5, 1, 2, 3 and 5 times the median sample time (its-hub's methods given
the same deadline from outside: the answer of what came back in time, as its harness does).

    python simulations/launch_frontier.py --write docs/benchmarks.md --plot docs/launch_frontier.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchdoc import write_section

import budgetctl as bc
from budgetctl import normalize_answer
from budgetctl._pool import Question, load_pool
from budgetctl.policies import MaxSamples, StopPolicy, parse_policy
from budgetctl.sim import LatencyModel, orders_for, replay_orders

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "traces"
SECTION = "## Launch planning: wall time against tokens (simulated)"
DEADLINE_FACTORS = (0.5, 1.0, 2.0, 3.0, 5.0)
AUTO_SPEEDS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Point:
    method: str
    kind: str  # fixed, auto, its-hub
    accuracy: float
    wall: float  # mean seconds per question
    billed: float  # mean tokens per question
    wasted: float
    requests: float  # mean requests per question
    max_requests: int

    @property
    def spent(self) -> float:
        return self.billed + self.wasted


def _majority(answers: Sequence[Hashable]) -> Hashable:
    counts = Counter(normalize_answer(a) for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[normalize_answer(a)] == best)


def _run_policy(
    questions: list[Question],
    orders: list[np.ndarray],
    policy: StopPolicy,
    model: LatencyModel,
    n: int,
    deadline: float | None = None,
    outside: bool = False,
) -> tuple[np.ndarray, ...]:
    """Per question and order: correct, wall, billed, wasted, requests.

    ``outside``: the deadline is imposed from outside (its-hub's case): a run the deadline stops answers nothing.
    """
    shape = (len(questions), len(orders[0]))
    correct, wall, billed, wasted, requests = (np.zeros(shape) for _ in range(5))
    for i, question in enumerate(questions):
        stamped = model.stamp(question.samples)
        runs = replay_orders(
            stamped, orders[i], [policy], budget=bc.Budget(samples=n), latency=model, deadline=deadline
        )
        for o, (stop,) in enumerate(runs):
            state = stop.state
            correct[i, o] = not (outside and stop.reason == "deadline") and question.is_correct(state.answer)
            wall[i, o] = state.elapsed
            billed[i, o] = state.tokens
            wasted[i, o] = stop.wasted
            requests[i, o] = state.n_samples + state.n_failed + state.n_in_flight
    return correct, wall, billed, wasted, requests


def _fixed_batch(
    questions: list[Question], orders: list[np.ndarray], model: LatencyModel, k: int, deadline: float | None = None
) -> tuple[np.ndarray, ...]:
    """its-hub ``SelfConsistency`` with a budget of k: k requests at once, the majority of all that came back."""
    shape = (len(questions), len(orders[0]))
    correct, wall, billed, wasted, requests = (np.zeros(shape) for _ in range(5))
    for i, question in enumerate(questions):
        for o, order in enumerate(orders[i]):
            batch = [question.samples[j] for j in order[:k]]
            times = [model.latency(s) for s in batch]
            back = [s for s, t in zip(batch, times, strict=True) if deadline is None or t < deadline]
            # Cancelled from outside at the deadline, the batch gives nothing unless all of it came back.
            finished = len(back) == len(batch)
            correct[i, o] = finished and question.is_correct(_majority([s.answer for s in back]))
            wall[i, o] = max(times) if deadline is None else min(max(times), deadline)
            billed[i, o] = sum(s.tokens for s in back)
            if deadline is not None:
                cut = [s for s, t in zip(batch, times, strict=True) if t >= deadline]
                wasted[i, o] = sum(min(max(deadline - model.ttft, 0.0) / model.per_token, s.tokens) for s in cut)
            requests[i, o] = k
    return correct, wall, billed, wasted, requests


def _point(method: str, kind: str, arrays: tuple[np.ndarray, ...]) -> Point:
    correct, wall, billed, wasted, requests = arrays
    return Point(
        method,
        kind,
        float(correct.mean()),
        float(wall.mean()),
        float(billed.mean()),
        float(wasted.mean()),
        float(requests.mean()),
        int(requests.max()),
    )


def frontier(points: list[Point]) -> set[str]:
    """Methods no other point beats on both wall time and billed + wasted tokens."""
    return {
        p.method
        for p in points
        if not any(q.wall <= p.wall and q.spent <= p.spent and (q.wall < p.wall or q.spent < p.spent) for q in points)
    }


def run_pool(
    args: argparse.Namespace, pool_path: Path, n: int
) -> tuple[list[Point], list[tuple[str, list[float]]], float]:
    pool = load_pool(str(pool_path))
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(pool.questions), size=min(args.questions, len(pool.questions)), replace=False))
    questions = [pool.questions[i] for i in picked]
    orders = [orders_for(q, args.orders, args.seed) for q in questions]
    ttft, per_token = args.ttft_ms / 1000, args.ms_per_token / 1000
    policy = parse_policy(args.policy)
    capped = policy | MaxSamples(n)
    points: list[Point] = []
    for c in sorted({1, 2, 4, 8, n}):
        model = LatencyModel(ttft=ttft, per_token=per_token, concurrency=c)
        points.append(_point(f"concurrency {c}", "fixed", _run_policy(questions, orders, capped, model, n)))
    for speed in AUTO_SPEEDS:
        model = LatencyModel(ttft=ttft, per_token=per_token, concurrency=bc.Auto(speed=speed))
        name = str(bc.Auto(speed=speed))
        points.append(_point(name, "auto", _run_policy(questions, orders, capped, model, n)))
    timing = LatencyModel(ttft=ttft, per_token=per_token, concurrency=1)
    for k in sorted({1, 3, 5, 10, n}):
        if k <= n:
            points.append(
                _point(f"its-hub SelfConsistency, budget {k}", "its-hub", _fixed_batch(questions, orders, timing, k))
            )
    beta_model = LatencyModel(ttft=ttft, per_token=per_token, concurrency=n)
    beta = parse_policy("ac:threshold=0.95") | MaxSamples(n)
    points.append(
        _point(
            f"its-hub BetaSelfConsistency(0.95), budget {n}",
            "its-hub",
            _run_policy(questions, orders, beta, beta_model, n),
        )
    )

    median_sample = statistics.median(timing.latency(s) for q in questions for s in q.samples)
    curves: list[tuple[str, list[float]]] = []
    auto_model = LatencyModel(ttft=ttft, per_token=per_token, concurrency="auto")
    curves.append(
        (
            "budgetctl auto",
            [
                float(_run_policy(questions, orders, capped, auto_model, n, deadline=f * median_sample)[0].mean())
                for f in DEADLINE_FACTORS
            ],
        )
    )
    curves.append(
        (
            f"its-hub BetaSelfConsistency, budget {n}",
            [
                float(
                    _run_policy(questions, orders, beta, beta_model, n, deadline=f * median_sample, outside=True)[
                        0
                    ].mean()
                )
                for f in DEADLINE_FACTORS
            ],
        )
    )
    for k in sorted({1, 3, 5, 10, n}):
        if k <= n:
            curves.append(
                (
                    f"its-hub SelfConsistency, budget {k}",
                    [
                        float(_fixed_batch(questions, orders, timing, k, deadline=f * median_sample)[0].mean())
                        for f in DEADLINE_FACTORS
                    ],
                )
            )
    return points, curves, median_sample


def plot(pools: list[tuple[str, int, list[Point]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(pools), 2)
    rows = -(-len(pools) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.6 * rows), squeeze=False)
    axes = [list(grid.flat)]
    styles = {"fixed": ("o", "tab:blue"), "auto": ("*", "tab:red"), "its-hub": ("s", "tab:gray")}
    for ax, (name, n, points) in zip(axes[0], pools, strict=True):
        for kind, (marker, colour) in styles.items():
            chosen = sorted((p for p in points if p.kind == kind), key=lambda p: p.spent)
            ax.plot(
                [p.spent for p in chosen],
                [p.wall for p in chosen],
                marker=marker,
                color=colour,
                linestyle="-" if kind != "its-hub" else "none",
                label={
                    "fixed": "budgetctl, fixed concurrency",
                    "auto": "budgetctl, auto (speeds)",
                    "its-hub": "its-hub",
                }[kind],
                markersize=9 if kind == "auto" else 6,
            )
            for p in chosen:
                label = p.method.replace("concurrency ", "c=").replace("its-hub ", "").replace("SelfConsistency", "SC")
                ax.annotate(label, (p.spent, p.wall), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("billed + wasted tokens per question")
        ax.set_ylabel("wall seconds per question")
        ax.set_title(f"{name}, N = {n}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(
    args: argparse.Namespace, results: list[tuple[str, int, list[Point], list[tuple[str, list[float]]], float]]
) -> str:
    command = "python simulations/launch_frontier.py " + " ".join(sys.argv[1:])
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"`{args.policy}` capped at N samples (`| MaxSamples(N)`, `Budget(samples=N)`), {args.questions} seeded "
        f"questions per pool x {args.orders} orders, ttft {args.ttft_ms:g} ms + {args.ms_per_token:g} ms/token; "
        "per question: *wall* seconds to the answer, tokens *billed* (samples that came back) and *wasted* "
        "(decoded by samples cancelled in flight), requests launched. *Frontier*: no other row is both "
        "faster and cheaper (billed + wasted). its-hub's schedules are run by the same model: "
        "`SelfConsistency` sends its budget at once and waits for all; `BetaSelfConsistency` sends N at "
        "once and cancels the rest when the Beta criterion holds.",
        "",
    ]
    for name, n, points, curves, median in results:
        on = frontier(points)
        lines += [f"**{name}, N = {n}**", ""]
        lines += [
            "| method | accuracy | wall s | billed | wasted | billed + wasted | requests (max) | frontier |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in points:
            lines.append(
                f"| {p.method} | {p.accuracy:.3f} | {p.wall:.3f} | {p.billed:.0f} | {p.wasted:.0f} | {p.spent:.0f} "
                f"| {p.requests:.2f} ({p.max_requests}) | {'yes' if p.method in on else ''} |"
            )
        lines.append("")
        factors = " | ".join(f"{f:g}x = {f * median:.2f} s" for f in DEADLINE_FACTORS)
        lines += [
            f"Accuracy at a deadline (median sample {median:.2f} s; its-hub cancelled from outside answers nothing):",
            "",
            f"| method | {factors} |",
            "|---|" + "---|" * len(DEADLINE_FACTORS),
        ]
        for method, accs in curves:
            lines.append(f"| {method} | " + " | ".join(f"{a:.3f}" for a in accs) + " |")
        lines.append("")
        lines += _targets(points, curves, n)
        lines.append("")
    if args.plot:
        lines += [f"![wall time against billed + wasted tokens]({Path(args.plot).name})", ""]
    return "\n".join(lines)


def _targets(points: list[Point], curves: list[tuple[str, list[float]]], n: int) -> list[str]:
    on = frontier(points)
    autos = [p for p in points if p.kind == "auto"]
    fixed = [p for p in points if p.kind == "fixed"]
    dominated = [f"{a.method} by {f.method}" for a in autos for f in fixed if f.wall < a.wall and f.spent < a.spent]
    beta = next(p for p in points if p.method.startswith("its-hub Beta"))
    balanced = next(p for p in autos if p.method == "auto")
    ours = dict(curves)["budgetctl auto"]
    best = [max(accs[d] for m, accs in curves if m.startswith("its-hub")) for d in range(len(DEADLINE_FACTORS))]
    worst = max(p.max_requests for p in points if p.kind != "its-hub")
    return [
        "Targets:",
        "- auto on the frontier (no fixed concurrency both faster and cheaper): "
        + ("met" if not dominated else "missed: " + "; ".join(dominated))
        + f" (on the frontier: {', '.join(p.method for p in autos if p.method in on) or 'none'}).",
        f"- `auto` against its-hub BetaSelfConsistency: wall {balanced.wall / beta.wall:.2f}x (target <= 1.25x), "
        f"billed + wasted {balanced.spent / beta.spent:.2f}x (target <= 0.6x), accuracy {balanced.accuracy:.3f} "
        f"against {beta.accuracy:.3f}: "
        + (
            "met"
            if balanced.wall <= 1.25 * beta.wall
            and balanced.spent <= 0.6 * beta.spent
            and balanced.accuracy >= beta.accuracy
            else "missed"
        )
        + ".",
        "- accuracy at every deadline at least its-hub's best: "
        + ("met" if all(o >= b for o, b in zip(ours, best, strict=True)) else "missed")
        + " ("
        + ", ".join(f"{o:.3f} vs {b:.3f}" for o, b in zip(ours, best, strict=True))
        + ").",
        f"- requests per question never above the cap N = {n}: " + ("met" if worst <= n else f"missed ({worst})") + ".",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pool", action="append", default=None, help="pool files (default: ESC last letters, Faithful-CoT date)"
    )
    parser.add_argument("--n", type=int, nargs="+", default=[10, 40], help="sample caps N")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--orders", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ttft-ms", type=float, default=80.0)
    parser.add_argument("--ms-per-token", type=float, default=15.0)
    parser.add_argument("--policy", default="ac:threshold=0.95")
    parser.add_argument("--plot", default=None, help="write the frontier plot (PNG) here")
    parser.add_argument("--write", type=Path, default=None, help="add/replace this part of docs/benchmarks.md")
    args = parser.parse_args()
    pools = [Path(p) for p in (args.pool or [TRACES / "esc_lastletters_gpt35.jsonl", TRACES / "fcot_date_codex.jsonl"])]
    for pool in pools:
        if not pool.exists():
            print(f"pool not found: {pool}", file=sys.stderr)
            return 2
    results = []
    for pool in pools:
        for n in args.n:
            points, curves, median = run_pool(args, pool, n)
            results.append((pool.name, n, points, curves, median))
            for p in points:
                print(
                    f"{pool.name} N={n} {p.method}: acc {p.accuracy:.3f} wall {p.wall:.3f} billed {p.billed:.0f} wasted {p.wasted:.0f} req {p.requests:.2f}",
                    flush=True,
                )
            for m, accs in curves:
                print(f"  deadline {m}: {[round(a, 3) for a in accs]}", flush=True)
    text = markdown(args, results)
    print(text)
    if args.plot:
        plot([(name, n, points) for name, n, points, _, _ in results], Path(args.plot))
    if args.write is not None:
        write_section(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
