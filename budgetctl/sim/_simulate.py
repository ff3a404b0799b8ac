"""``budgetctl.simulate``: what each stop policy would have cost and got right on a sample pool.

Each question's samples are replayed in many random orders (they are i.i.d., so every order is a
valid draw) through the very policy objects live runs use (:func:`~budgetctl.sim.replay`); the
results are averaged over questions, with the spread over orders, side by side with fixed-N
self-consistency, the cost oracle and pass@k.
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._aggregate import Aggregator, MajorityVote, normalize_answer
from .._budget import Budget
from .._pool import Pool, Question, load_pool
from .._state import STOP_REASONS
from .._workers import worker_context
from ..policies._base import PolicyLike, StopPolicy, as_policy
from ..policies._spec import parse_policy
from ._reference import QuestionReference, reference
from ._replay import LatencyModel, replay_orders

__all__ = ["simulate", "SimulationResult", "DatasetResult", "PolicyResult", "DEFAULT_DEADLINES", "orders_for"]

#: Deadlines (seconds) at which accuracy is reported when the latency model is timed.
DEFAULT_DEADLINES: tuple[float, ...] = (0.1, 1.0, 10.0)


@dataclass(frozen=True)
class PolicyResult:
    """One row of a simulation: a policy (or an oracle, or a reference point) on one dataset."""

    #: The policy's spec (or repr), or the oracle's name.
    policy: str
    #: ``policy``, ``sweep``, ``reference`` (fixed-N majority) or ``oracle``.
    kind: str
    #: Mean accuracy over questions and orders.
    accuracy: float
    #: 2.5th and 97.5th percentiles of the per-order accuracy (what one deployment could see).
    ci_low: float
    ci_high: float
    #: Mean samples drawn per question.
    mean_samples: float
    #: Mean tokens per question; ``None`` when the pool has no token counts.
    mean_tokens: float | None
    #: Mean dollars per question at the simulation's price; ``None`` when tokens are unknown.
    mean_dollars: float | None
    #: accuracy / accuracy of the full-pool majority.
    retention: float | None
    #: 1 - cost / full-pool cost (tokens, or samples where tokens are unknown).
    savings: float | None
    #: Share of the cost gap between the full pool and the cost oracle that this row closes.
    gap_closed: float | None
    #: Share of runs that ended for each stop reason.
    stop_reasons: dict[str, float] = field(default_factory=dict)
    #: Accuracy when the run must answer by each deadline (seconds, as text), under the latency model.
    accuracy_at_deadline: dict[str, float] = field(default_factory=dict)
    #: The sweep this point belongs to (``""`` otherwise).
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "policy": self.policy,
            "kind": self.kind,
            "group": self.group,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "mean_samples": self.mean_samples,
            "mean_tokens": self.mean_tokens,
            "mean_dollars": self.mean_dollars,
            "retention": self.retention,
            "savings": self.savings,
            "gap_closed": self.gap_closed,
            "stop_reasons": self.stop_reasons,
            "accuracy_at_deadline": self.accuracy_at_deadline,
        }


@dataclass(frozen=True)
class DatasetResult:
    """Every row for one dataset (or ``"all"``, question-weighted over datasets)."""

    dataset: str
    n_questions: int
    #: Pool size (samples per question; the largest where they differ).
    pool_size: int
    tokens_known: bool
    #: Accuracy of the majority of each question's whole pool.
    full_pool_accuracy: float
    rows: list[PolicyResult]
    #: accuracy of fixed-N majority for N = 1..pool_size (mean over orders).
    fixed_curve: list[float]
    #: mean tokens of fixed-N for N = 1..pool_size.
    fixed_curve_tokens: list[float]

    def row(self, policy: str) -> PolicyResult:
        """The row named ``policy``."""
        for row in self.rows:
            if row.policy == policy:
                return row
        raise KeyError(f"no row {policy!r}; rows: {[r.policy for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "dataset": self.dataset,
            "n_questions": self.n_questions,
            "pool_size": self.pool_size,
            "tokens_known": self.tokens_known,
            "full_pool_accuracy": self.full_pool_accuracy,
            "policies": [r.to_dict() for r in self.rows],
            "fixed_curve": self.fixed_curve,
            "fixed_curve_tokens": self.fixed_curve_tokens if self.tokens_known else None,
        }


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` returns: per-dataset results and their question-weighted union."""

    files: list[str]
    orders: int
    seed: int
    latency: LatencyModel
    price_per_token: float
    deadlines: tuple[float, ...]
    datasets: list[DatasetResult]
    overall: DatasetResult
    skipped: list[tuple[str, int, str]]
    seconds: float
    #: Replayed samples (sample-steps through the run core) over all questions and orders.
    sample_steps: int

    @property
    def policies(self) -> list[PolicyResult]:
        """The rows over all datasets."""
        return self.overall.rows

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (what ``--json`` writes)."""
        return {
            "pools": self.files,
            "orders": self.orders,
            "seed": self.seed,
            "latency": {
                "ttft": self.latency.ttft,
                "per_token": self.latency.per_token,
                "concurrency": self.latency.concurrency
                if isinstance(self.latency.concurrency, int)
                else str(self.latency.concurrency),
            },
            "price_per_token": self.price_per_token,
            "deadlines": list(self.deadlines),
            "tokens_known": self.overall.tokens_known,
            "policies": [r.to_dict() for r in self.overall.rows],
            "full_pool_accuracy": self.overall.full_pool_accuracy,
            "datasets": [d.to_dict() for d in self.datasets],
            "skipped": [{"file": f, "line": n, "reason": r} for f, n, r in self.skipped],
            "seconds": self.seconds,
            "sample_steps": self.sample_steps,
        }


# -- per-question work (runs in worker processes) ---------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    policies: tuple[StopPolicy, ...]
    aggregator: Aggregator
    budget: Budget | None
    latency: LatencyModel
    deadline: float | None
    deadlines: tuple[float, ...]
    orders: int
    seed: int
    normalize: Callable[[Hashable], Hashable]


@dataclass
class _QuestionOutcome:
    dataset: str
    pool_size: int
    tokens_known: bool
    # (P, O) arrays per policy and order
    correct: np.ndarray
    samples: np.ndarray
    tokens: np.ndarray
    dollars: np.ndarray
    reasons: np.ndarray
    # (D, P, O): correct when answering by each deadline
    deadline_correct: np.ndarray
    ref: QuestionReference
    steps: int


def orders_for(question: Question, n_orders: int, seed: int) -> np.ndarray:
    """The draw orders of ``question``: ``n_orders`` permutations, seeded by ``seed`` and the question id.

    Seeding by id keeps a question's orders the same whatever else is in the pool or filtered out.
    """
    rng = np.random.default_rng([seed, zlib.crc32(question.id.encode())])
    base = np.tile(np.arange(len(question.samples)), (n_orders, 1))
    return rng.permuted(base, axis=1)


def _simulate_question(question: Question, settings: _Settings) -> _QuestionOutcome:
    orders = orders_for(question, settings.orders, settings.seed)
    n_policies = len(settings.policies)
    shape = (n_policies, settings.orders)
    correct = np.zeros(shape, dtype=bool)
    samples = np.zeros(shape, dtype=np.int32)
    tokens = np.zeros(shape, dtype=np.int64)
    dollars = np.zeros(shape, dtype=float)
    reasons = np.zeros(shape, dtype=np.int8)
    timed = settings.latency.timed
    deadline_correct = np.zeros((len(settings.deadlines) if timed else 0, *shape), dtype=bool)
    steps = 0
    reason_index = {r: i for i, r in enumerate(STOP_REASONS)}
    is_correct = question.is_correct
    stamped = settings.latency.stamp(question.samples)
    runs = replay_orders(
        stamped,
        orders,
        settings.policies,
        aggregator=settings.aggregator,
        budget=settings.budget,
        latency=settings.latency,
        deadline=settings.deadline,
    )
    for o, stops in enumerate(runs):
        longest = 0
        for p, (state, reason, _) in enumerate(stops):
            correct[p, o] = is_correct(state.answer)
            samples[p, o] = state.n_samples
            tokens[p, o] = state.tokens
            dollars[p, o] = state.dollars
            reasons[p, o] = reason_index[reason]
            longest = max(longest, state.n_samples + state.n_failed)
        steps += longest
    if timed:
        for d, limit in enumerate(settings.deadlines):
            if settings.deadline is not None and limit >= settings.deadline:
                deadline_correct[d] = correct
                continue
            timed_runs = replay_orders(
                stamped,
                orders,
                settings.policies,
                aggregator=settings.aggregator,
                budget=settings.budget,
                latency=settings.latency,
                deadline=limit,
            )
            for o, stops in enumerate(timed_runs):
                for p, (state, *_) in enumerate(stops):
                    deadline_correct[d, p, o] = is_correct(state.answer)
    return _QuestionOutcome(
        dataset=question.dataset,
        pool_size=len(question.samples),
        tokens_known=question.tokens_known,
        correct=correct,
        samples=samples,
        tokens=tokens,
        dollars=dollars,
        reasons=reasons,
        deadline_correct=deadline_correct,
        ref=reference(question, orders, settings.normalize),
        steps=steps,
    )


def _simulate_chunk(questions: list[Question], settings: _Settings) -> list[_QuestionOutcome]:
    return [_simulate_question(q, settings) for q in questions]


# -- aggregation ------------------------------------------------------------------------------------


def _band(per_order: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(per_order, [2.5, 97.5])
    return float(low), float(high)


def _summarise(
    dataset: str,
    outcomes: list[_QuestionOutcome],
    names: Sequence[tuple[str, str, str]],
    settings: _Settings,
    price: float,
) -> DatasetResult:
    tokens_known = all(o.tokens_known for o in outcomes)
    pool_size = max(o.pool_size for o in outcomes)
    n_q = len(outcomes)
    correct = np.stack([o.correct for o in outcomes])  # (Q, P, O)
    samples = np.stack([o.samples for o in outcomes])
    tokens = np.stack([o.tokens for o in outcomes])
    dollars = np.stack([o.dollars for o in outcomes])
    reasons = np.stack([o.reasons for o in outcomes])

    # Full pool: fixed-N majority at each question's own pool size.
    full_correct = np.stack([o.ref.majority_correct[:, -1] for o in outcomes])  # (Q, O)
    full_tokens = np.stack([o.ref.tokens[:, -1] for o in outcomes]).astype(float)
    full_samples = np.array([o.pool_size for o in outcomes], dtype=float)
    full_accuracy = float(full_correct.mean())
    full_cost = float(full_tokens.mean()) if tokens_known else float(full_samples.mean())
    oracle_samples = np.stack([o.ref.oracle_samples for o in outcomes]).astype(float)
    oracle_tokens = np.stack([o.ref.oracle_tokens for o in outcomes]).astype(float)
    oracle_cost = float(oracle_tokens.mean()) if tokens_known else float(oracle_samples.mean())

    def row(
        name: str,
        kind: str,
        group: str,
        right: np.ndarray,
        n_samples: np.ndarray,
        n_tokens: np.ndarray,
        spent: np.ndarray | None,
        stop_shares: dict[str, float] | None = None,
        at_deadline: dict[str, float] | None = None,
    ) -> PolicyResult:
        per_order = right.mean(axis=0)
        accuracy = float(right.mean())
        mean_samples = float(n_samples.mean())
        mean_tokens = float(n_tokens.mean()) if tokens_known else None
        cost = mean_tokens if mean_tokens is not None else mean_samples
        gap = full_cost - oracle_cost
        low, high = _band(per_order)
        return PolicyResult(
            policy=name,
            kind=kind,
            group=group,
            accuracy=accuracy,
            ci_low=low,
            ci_high=high,
            mean_samples=mean_samples,
            mean_tokens=mean_tokens,
            mean_dollars=(float(spent.mean()) if spent is not None else None) if tokens_known else None,
            retention=accuracy / full_accuracy if full_accuracy > 0 else None,
            savings=1.0 - cost / full_cost if full_cost > 0 else None,
            gap_closed=(full_cost - cost) / gap if gap > 0 else None,
            stop_reasons=stop_shares or {},
            accuracy_at_deadline=at_deadline or {},
        )

    rows: list[PolicyResult] = []
    timed = settings.latency.timed
    for p, (name, kind, group) in enumerate(names):
        shares = {r: float((reasons[:, p, :] == i).mean()) for i, r in enumerate(STOP_REASONS)}
        at_deadline = {}
        if timed:
            dc = np.stack([o.deadline_correct[:, p, :] for o in outcomes])  # (Q, D, O)
            at_deadline = {f"{d:g}": float(dc[:, i, :].mean()) for i, d in enumerate(settings.deadlines)}
        rows.append(
            row(
                name,
                kind,
                group,
                correct[:, p, :],
                samples[:, p, :],
                tokens[:, p, :],
                dollars[:, p, :],
                {k: v for k, v in shares.items() if v > 0},
                at_deadline,
            )
        )

    # Reference and oracles.
    uniform = len({o.pool_size for o in outcomes}) == 1
    curve: list[float] = []
    curve_tokens: list[float] = []
    if uniform:
        majority = np.stack([o.ref.majority_correct for o in outcomes])  # (Q, O, N)
        cum_tokens = np.stack([o.ref.tokens for o in outcomes]).astype(float)
        curve = [float(v) for v in majority.mean(axis=(0, 1))]
        curve_tokens = [float(v) for v in cum_tokens.mean(axis=(0, 1))]
    rows.append(
        row(
            f"majority@{pool_size} (full pool)",
            "reference",
            "",
            full_correct,
            np.broadcast_to(full_samples[:, None], full_correct.shape),
            full_tokens,
            full_tokens * price,
        )
    )
    rows.append(row("cost oracle", "oracle", "", full_correct, oracle_samples, oracle_tokens, oracle_tokens * price))
    first = np.stack([o.ref.first_correct_samples for o in outcomes]).astype(float)
    first_tokens = np.stack([o.ref.first_correct_tokens for o in outcomes]).astype(float)
    any_right = np.stack([o.ref.pass_at[:, -1] for o in outcomes])
    rows.append(
        row(f"pass@{pool_size} (first correct)", "oracle", "", any_right, first, first_tokens, first_tokens * price)
    )
    if all(o.ref.best_of_correct is not None for o in outcomes):
        best = np.stack([o.ref.best_of_correct[:, -1] for o in outcomes if o.ref.best_of_correct is not None])
        rows.append(
            row(
                f"best-of-{pool_size} (verifier)",
                "reference",
                "",
                best,
                np.broadcast_to(full_samples[:, None], best.shape),
                full_tokens,
                full_tokens * price,
            )
        )
    return DatasetResult(
        dataset=dataset,
        n_questions=n_q,
        pool_size=pool_size,
        tokens_known=tokens_known,
        full_pool_accuracy=full_accuracy,
        rows=rows,
        fixed_curve=curve,
        fixed_curve_tokens=curve_tokens,
    )


# -- the public entry point -------------------------------------------------------------------------


def _named(policies: Iterable[PolicyLike | str]) -> list[tuple[StopPolicy, str]]:
    named = []
    for policy in policies:
        if isinstance(policy, str):
            named.append((parse_policy(policy), policy))
        else:
            built = as_policy(policy)
            named.append((built, repr(built)))
    return named


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        elapsed = time.monotonic() - self.start
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\rsimulate [{bar}] {self.done}/{self.total} questions {elapsed:5.1f}s")
        if self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def simulate(
    pool: Pool | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    policies: Sequence[PolicyLike | str],
    *,
    sweeps: Sequence[tuple[str, Sequence[PolicyLike | str]]] = (),
    orders: int = 200,
    seed: int = 0,
    aggregator: Aggregator | None = None,
    budget: Budget | None = None,
    latency: LatencyModel | None = None,
    deadline: float | None = None,
    deadlines: Sequence[float] = DEFAULT_DEADLINES,
    price_per_token: float = 0.0,
    datasets: Iterable[str] | None = None,
    skip_bad: bool = False,
    jobs: int | None = 1,
    progress: bool = False,
) -> SimulationResult:
    """Replay a pool through ``policies`` (objects or specs such as ``"ac:threshold=0.95"``).

    Args:
        pool: a loaded :class:`~budgetctl.Pool`, or pool/trace file path(s).
        policies: the policies to compare.
        sweeps: ``(name, policies)`` groups tracing a frontier (see :func:`budgetctl.sim.sweep`).
        orders: random draw orders per question.
        seed: seeds the orders (each question's orders depend only on the seed and its id).
        aggregator: how samples become an answer (default majority vote).
        budget: caps per question; its ``price_per_token`` is overridden by ``price_per_token``.
        latency: time model of a sample (default: no time, one at a time).
        deadline: seconds each question must be answered by (needs a timed latency model).
        deadlines: deadlines at which accuracy is also reported (timed latency models only).
        price_per_token: dollars per token, for ``mean_dollars``.
        datasets: keep only these datasets.
        skip_bad: skip malformed lines (reported in ``skipped``) instead of failing.
        jobs: worker processes (``None``: one per CPU).
        progress: draw a progress bar on stderr.
    """
    started = time.perf_counter()
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be an int >= 1, got {orders!r}")
    if not (price_per_token >= 0):
        raise ValueError(f"price_per_token cannot be negative or NaN, got {price_per_token!r}")
    loaded = pool if isinstance(pool, Pool) else load_pool(pool, datasets=datasets, skip_bad=skip_bad)
    if not loaded.questions:
        raise ValueError(f"no questions in {loaded.files}")
    model = latency if latency is not None else LatencyModel()
    if deadline is not None and not model.timed:
        raise ValueError("a deadline needs a timed latency model (ttft or per_token > 0)")
    named = [(p, name, "policy", "") for p, name in _named(policies)]
    for group, members in sweeps:
        named.extend((p, name, "sweep", group) for p, name in _named(members))
    if not named:
        raise ValueError("no policy to simulate")
    base_budget = budget if budget is not None else Budget()
    priced = Budget(
        samples=base_budget.samples,
        tokens=base_budget.tokens,
        dollars=base_budget.dollars,
        price_per_token=price_per_token,
        seconds=base_budget.seconds,
    )
    agg = aggregator if aggregator is not None else MajorityVote()
    normalize = agg.normalize if isinstance(agg, MajorityVote) else normalize_answer
    settings = _Settings(
        policies=tuple(p for p, *_ in named),
        aggregator=agg,
        budget=priced,
        latency=model,
        deadline=deadline,
        deadlines=tuple(deadlines),
        orders=orders,
        seed=seed,
        normalize=normalize,
    )
    outcomes = _run(loaded.questions, settings, jobs, progress)
    names = [(name, kind, group) for _, name, kind, group in named]
    groups: dict[str, list[_QuestionOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.dataset, []).append(outcome)
    per_dataset = [_summarise(d, outs, names, settings, price_per_token) for d, outs in groups.items()]
    overall = per_dataset[0] if len(per_dataset) == 1 else _summarise("all", outcomes, names, settings, price_per_token)
    return SimulationResult(
        files=loaded.files,
        orders=orders,
        seed=seed,
        latency=model,
        price_per_token=price_per_token,
        deadlines=tuple(deadlines) if model.timed else (),
        datasets=per_dataset,
        overall=overall,
        skipped=loaded.skipped,
        seconds=time.perf_counter() - started,
        sample_steps=sum(o.steps for o in outcomes),
    )


def _run(questions: list[Question], settings: _Settings, jobs: int | None, progress: bool) -> list[_QuestionOutcome]:
    workers = (os.cpu_count() or 1) if jobs is None else max(1, jobs)
    bar = _Progress(len(questions), progress)
    if workers == 1 or len(questions) < 8:
        outcomes = []
        for q in questions:
            outcomes.append(_simulate_question(q, settings))
            bar.advance(1)
        return outcomes
    size = max(1, min(64, len(questions) // (workers * 8)))
    chunks = [questions[i : i + size] for i in range(0, len(questions), size)]
    results: list[list[_QuestionOutcome]] = [[] for _ in chunks]
    with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
        futures = {pool.submit(_simulate_chunk, chunk, settings): i for i, chunk in enumerate(chunks)}
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            bar.advance(len(chunks[i]))
    return [o for chunk in results for o in chunk]
