"""What a shared budget buys: the scheduler replayed over a sample pool, against fixed and independent allocations.

A batch of questions arrives together and shares ``budget_per_question * len(batch)`` samples and
``slots`` concurrent sample slots. The scheduler's :class:`~budgetctl.sched._allocate.Allocator`
(the one the live :class:`~budgetctl.Scheduler` uses) gives each question its floor sample, then
every further slot to the question with the highest predicted gain per token, on a virtual clock,
until the budget is spent. Each question's samples are drawn in a random order (they are i.i.d.);
everything is averaged over ``orders`` such draws, the same draws for every row:

* ``shared``: the scheduler, one row per gain model;
* ``uniform``: every question gets the same samples (fractional budgets mix the two nearest);
* ``independent``: each question stops on its own (Adaptive-Consistency with a sample cap), the
  best mix of two grid settings that averages the same samples per question, tuned on the pool
  itself, so it is an optimistic baseline;
* ``oracle``: the allocation of the same total that knows which questions' running majority turns
  right after how many samples (an upper bound no causal scheduler reaches).
"""

from __future__ import annotations

import heapq
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._aggregate import Aggregator, MajorityVote, normalize_answer
from .._budget import Budget
from .._core import RunCore
from .._gain import GainModel, VoteGain
from .._pool import Pool, Question, load_pool
from .._sample import Sample
from .._state import STOP_REASONS, RunState, StopReason
from .._workers import worker_context
from ..policies._base import PolicyLike, StopPolicy, as_policy
from ..policies._rules import AdaptiveConsistency
from ..policies._spec import parse_policy
from ..sim._reference import reference
from ..sim._replay import LatencyModel, replay_orders
from ..sim._simulate import orders_for
from ._allocate import Allocator, Capacity, Ticket
from ._lookahead import LookaheadGain

__all__ = ["SharedBudgetResult", "SharedDatasetResult", "SharedRow", "simulate_shared_budget", "DEFAULT_GAINS"]

#: The gain models compared by default: the vote's uncertainty, and the lookahead value of information.
DEFAULT_GAINS: tuple[tuple[str, GainModel], ...] = (
    ("VoteGain", VoteGain()),
    ("LookaheadGain", LookaheadGain()),
)

#: Adaptive-Consistency thresholds of the independent-stopping grid (each also with every sample cap).
AC_THRESHOLDS: tuple[float, ...] = (0.8, 0.85, 0.9, 0.95, 0.99)


@dataclass(frozen=True)
class SharedRow:
    """One allocation's figures on one dataset, averaged over questions and orders."""

    #: What allocated the samples (``shared: VoteGain``, ``uniform: 3 each``, ...).
    name: str
    #: ``shared``, ``uniform``, ``independent`` or ``oracle``.
    kind: str
    #: Mean accuracy.
    accuracy: float
    #: 2.5th and 97.5th percentiles of the per-order accuracy.
    ci_low: float
    ci_high: float
    #: Mean samples per question.
    mean_samples: float
    #: Mean tokens per question (``None`` when the pool has no token counts).
    mean_tokens: float | None
    #: How the row was obtained, in words (the mix of settings of the independent row, ...).
    detail: str = ""
    #: Share of questions that ended for each stop reason (shared rows only).
    stop_reasons: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "name": self.name,
            "kind": self.kind,
            "accuracy": self.accuracy,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "mean_samples": self.mean_samples,
            "mean_tokens": self.mean_tokens,
            "detail": self.detail,
            "stop_reasons": dict(self.stop_reasons),
        }


@dataclass(frozen=True)
class SharedDatasetResult:
    """The rows of one dataset."""

    dataset: str
    n_questions: int
    #: Samples per question in the pool (the largest, if they differ).
    pool_size: int
    tokens_known: bool
    #: Accuracy of the majority of each question's whole pool.
    full_pool_accuracy: float
    rows: list[SharedRow]

    def row(self, name_or_kind: str) -> SharedRow:
        """The row named ``name_or_kind``, or the first of that kind."""
        for row in self.rows:
            if row.name == name_or_kind:
                return row
        for row in self.rows:
            if row.kind == name_or_kind:
                return row
        raise KeyError(f"no row {name_or_kind!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {
            "dataset": self.dataset,
            "n_questions": self.n_questions,
            "pool_size": self.pool_size,
            "tokens_known": self.tokens_known,
            "full_pool_accuracy": self.full_pool_accuracy,
            "rows": [r.to_dict() for r in self.rows],
        }


@dataclass(frozen=True)
class SharedBudgetResult:
    """What :func:`simulate_shared_budget` returns: the rows of each dataset, and the settings."""

    files: list[str]
    slots: int
    budget_per_question: float
    orders: int
    seed: int
    #: Questions sharing one budget (``None``: all of a dataset's questions at once).
    batch: int | None
    latency: LatencyModel
    deadline: float | None
    lookahead: int
    #: The per-request stop policy of the shared rows (its repr).
    policy: str
    datasets: list[SharedDatasetResult]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (what ``--json`` writes)."""
        return {
            "pools": self.files,
            "slots": self.slots,
            "budget_per_question": self.budget_per_question,
            "orders": self.orders,
            "seed": self.seed,
            "batch": self.batch,
            "latency": {
                "ttft": self.latency.ttft,
                "per_token": self.latency.per_token,
                "concurrency": self.latency.concurrency
                if isinstance(self.latency.concurrency, int)
                else str(self.latency.concurrency),
            },
            "deadline": self.deadline,
            "lookahead": self.lookahead,
            "policy": self.policy,
            "datasets": [d.to_dict() for d in self.datasets],
            "seconds": self.seconds,
        }

    def table(self) -> str:
        """The rows as a plain-text table, one block per dataset."""
        lines = [
            f"shared budget: {self.budget_per_question:g} samples per question on average, {self.slots} slots,"
            f" batches of {self.batch or 'all'} questions, {self.orders} orders (seed {self.seed})"
        ]
        for result in self.datasets:
            lines.append("")
            lines.append(
                f"{result.dataset or '(no dataset)'}: {result.n_questions} questions x {result.pool_size} samples,"
                f" full-pool majority {result.full_pool_accuracy:.3f}"
            )
            uniform = next((r for r in result.rows if r.kind == "uniform"), None)
            header = f"  {'allocation':<34} {'accuracy':>8} {'95% band':>15} {'vs uniform':>10} {'samples':>8}"
            if result.tokens_known:
                header += f" {'tokens':>8}"
            lines.append(header)
            for row in result.rows:
                delta = f"{(row.accuracy - uniform.accuracy) * 100:+.1f} pt" if uniform is not None else ""
                line = (
                    f"  {row.name:<34} {row.accuracy:8.3f} {f'[{row.ci_low:.3f}, {row.ci_high:.3f}]':>15}"
                    f" {delta:>10} {row.mean_samples:8.2f}"
                )
                if result.tokens_known:
                    line += f" {row.mean_tokens:8.0f}" if row.mean_tokens is not None else f" {'':>8}"
                lines.append(line)
                if row.detail:
                    lines.append(f"  {'':<34} {row.detail}")
        return "\n".join(lines)


# -- the scheduler on a virtual clock ---------------------------------------------------------------


class _Replayed:
    __slots__ = ("samples", "order", "latencies")

    def __init__(self, samples: Sequence[Sample], order: np.ndarray, latencies: Sequence[float]) -> None:
        self.samples = samples
        self.order = order
        self.latencies = latencies


def run_batch(
    pools: Sequence[Sequence[Sample]],
    orders: Sequence[Sequence[int] | np.ndarray],
    *,
    gain: GainModel,
    slots: int,
    total_samples: int | None,
    policy: StopPolicy,
    aggregator: Aggregator | None = None,
    deadline: float | None = None,
    lookahead: int = 3,
    arrivals: Sequence[float] | None = None,
) -> list[tuple[RunState, StopReason]]:
    """Replay requests through the allocator on a virtual clock: each one's last snapshot, and why it ended.

    Request ``i`` arrives at ``arrivals[i]`` (default: all at 0, in the order given) and draws the
    samples ``pools[i]`` (stamped with their latency) in the order ``orders[i]``; it may take at
    most ``len(pools[i])`` samples, answers by ``deadline`` seconds after its arrival, and stops
    when ``policy`` says so. All of them share ``slots`` and ``total_samples`` (``None``: no cap).
    This is, step for step, what the live :class:`~budgetctl.Scheduler` does with samplers that
    return those samples after their latencies: a sample completing exactly at a deadline is too
    late, and simultaneous events resolve in the order they were scheduled.
    """
    capacity = Capacity(slots, budget=None if total_samples is None else Budget(samples=total_samples))
    allocator = Allocator(capacity, lookahead=lookahead)
    n = len(pools)
    starts = [0.0] * n if arrivals is None else [float(t) for t in arrivals]
    tickets: list[Ticket] = []
    outcome: list[tuple[RunState, StopReason] | None] = [None] * n
    # (time, seq, request, what): what is a sample coming back, _ARRIVE, or _DEADLINE.
    events: list[tuple[float, int, int, object]] = []
    seq = 0
    for i, pool in enumerate(pools):
        core = RunCore(policy=policy, aggregator=aggregator, budget=Budget(samples=len(pool)), deadline=deadline)
        tickets.append(Ticket(core, gain, handle=i))
        events.append((starts[i], seq, i, _ARRIVE))
        seq += 1
    heapq.heapify(events)

    def end(index: int, reason: StopReason, now: float) -> None:
        ticket = tickets[index]
        allocator.remove(ticket, now)
        core = ticket.core
        if ticket.deadline_at <= now:  # at its deadline: what was in flight is cancelled
            core.cancel()
            outcome[index] = (core.snapshot(ticket.deadline_at), reason)
        else:
            outcome[index] = (core.state, reason)

    def dispatch(now: float) -> None:
        nonlocal seq
        decided = allocator.dispatch(now)
        for ticket in decided.launched:
            index = _index(ticket)
            sample = pools[index][int(orders[index][ticket.core.n_launched - 1])]
            assert sample.latency is not None
            heapq.heappush(events, (now + sample.latency, seq, index, sample))
            seq += 1
        for ticket in decided.starved:
            end(_index(ticket), "budget", now)

    now = 0.0
    while events:
        now, _, index, what = heapq.heappop(events)
        ticket = tickets[index]
        core = ticket.core
        if what is _ARRIVE:
            reason = core.start(now) or core.expired(now)
            ticket.deadline_at = core.limit_at
            if reason is not None or not allocator.admit(ticket, now):
                outcome[index] = (core.state, reason or "budget")
                continue
            if ticket.deadline_at < math.inf:
                heapq.heappush(events, (ticket.deadline_at, seq, index, _DEADLINE))
                seq += 1
            dispatch(now)
            continue
        if not ticket.active:
            continue
        if what is _DEADLINE:
            end(index, core.time_reason(), now)
            dispatch(now)
            continue
        assert isinstance(what, Sample) and what.latency is not None
        reason = allocator.on_outcome(ticket, what, what.latency, now)
        if reason is not None:
            end(index, reason, now)
        dispatch(now)
    last = now
    for i, ticket in enumerate(tickets):  # nothing left to happen: whatever still waits, waits for budget
        if outcome[i] is None:
            end(i, ticket.core.limit_reason() or "budget", last)
    return [o for o in outcome if o is not None]


_ARRIVE = object()
_DEADLINE = object()


# -- the reference allocations ----------------------------------------------------------------------


def _index(ticket: Ticket) -> int:
    index = ticket.handle
    assert isinstance(index, int)
    return index


def _uniform(majority: np.ndarray, k: float) -> np.ndarray:
    """Correctness (questions x orders) of ``k`` samples each, mixing the two nearest counts when fractional."""
    n = majority.shape[2]
    k = min(max(k, 1.0), float(n))
    low = math.floor(k)
    frac = k - low
    result = majority[:, :, low - 1].astype(float)
    if frac > 0 and low < n:
        result = (1 - frac) * result + frac * majority[:, :, low]
    return result


def _oracle(
    majority: np.ndarray, order_rows: list[list[list[int]]], budget_per_question: float
) -> tuple[np.ndarray, np.ndarray]:
    """Correctness and samples (questions x orders) of the best allocation of each batch's total, knowing the outcomes.

    Every question gets one sample; the rest goes to questions by how few extra samples make their
    running majority right, cheapest first (optimal for a count of right answers).
    """
    n_q, n_orders, n = majority.shape
    correct = np.zeros((n_q, n_orders))
    used = np.ones((n_q, n_orders))
    any_right = majority.any(axis=2)
    first_right = np.where(any_right, np.argmax(majority, axis=2), n)  # extra samples beyond the first
    for o in range(n_orders):
        for batch in order_rows[o]:
            members = np.asarray(batch)
            spare = math.floor(budget_per_question * len(members) + 1e-9) - len(members)
            ranked = members[np.argsort(first_right[members, o], kind="stable")]
            for q in ranked:
                need = first_right[q, o]
                if need >= n or need > spare:
                    break
                spare -= need
                correct[q, o] = 1.0
                used[q, o] += need
    return correct, used


def _best_mix(costs: Sequence[float], accuracies: Sequence[float], x: float) -> tuple[int, int, float]:
    """The two points (and the weight of the second) whose mix costs ``x`` on average and is most accurate.

    A request may follow setting ``i`` with probability ``1 - w`` and ``j`` with ``w``; a point that
    costs exactly ``x`` is its own mix (``i == j``). When every point costs more, the cheapest alone.
    """
    best, choice = -1.0, (-1, -1, 0.0)
    for i, (c1, a1) in enumerate(zip(costs, accuracies, strict=True)):
        if c1 > x + 1e-9:
            continue
        if abs(c1 - x) <= 1e-9 and a1 > best:
            best, choice = a1, (i, i, 0.0)
        for j, (c2, a2) in enumerate(zip(costs, accuracies, strict=True)):
            if c2 <= x + 1e-9:
                continue
            w = (x - c1) / (c2 - c1)
            if (1 - w) * a1 + w * a2 > best:
                best, choice = (1 - w) * a1 + w * a2, (i, j, w)
    if choice[0] < 0:
        cheapest = min(range(len(costs)), key=costs.__getitem__)
        return cheapest, cheapest, 0.0
    return choice


# -- running the scheduler over many orders (in worker processes when asked) --------------------------


@dataclass(frozen=True)
class _Job:
    gain_index: int
    orders: list[int]
    questions: list[Question]
    pools: list[list[Sample]]
    #: draws[k][i]: the draw order of question i in the k-th of ``orders``.
    draws: list[list[np.ndarray]]
    #: batches[k]: the batches (question indices, in arrival order) of the k-th of ``orders``.
    batches: list[list[list[int]]]
    gain: GainModel
    slots: int
    budget_per_question: float
    policy: StopPolicy
    aggregator: Aggregator | None
    deadline: float | None
    lookahead: int


def _run_job(job: _Job) -> tuple[int, list[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    n_q = len(job.questions)
    shape = (n_q, len(job.orders))
    correct, samples, tokens = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    reasons = np.zeros(shape, dtype=np.int8)
    reason_index = {r: i for i, r in enumerate(STOP_REASONS)}
    for k in range(len(job.orders)):
        for members in job.batches[k]:
            ended = run_batch(
                [job.pools[i] for i in members],
                [job.draws[k][i] for i in members],
                gain=job.gain,
                slots=job.slots,
                total_samples=math.floor(job.budget_per_question * len(members) + 1e-9),
                policy=job.policy,
                aggregator=job.aggregator,
                deadline=job.deadline,
                lookahead=job.lookahead,
            )
            for i, (state, reason) in zip(members, ended, strict=True):
                correct[i, k] = job.questions[i].is_correct(state.answer)
                samples[i, k] = state.n_samples + state.n_failed
                tokens[i, k] = state.tokens
                reasons[i, k] = reason_index[reason]
    return job.gain_index, job.orders, (correct, samples, tokens, reasons)


def _chunks(orders: int, jobs: int) -> list[list[int]]:
    parts = max(1, min(orders, jobs * 4 if jobs > 1 else 1))
    return [list(range(orders))[i::parts] for i in range(parts)]


def _run_jobs(
    jobs_list: list[_Job], jobs: int
) -> Iterator[tuple[int, list[int], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]:
    if jobs <= 1 or len(jobs_list) == 1:
        yield from map(_run_job, jobs_list)
        return
    with ProcessPoolExecutor(max_workers=jobs, mp_context=worker_context()) as executor:
        yield from executor.map(_run_job, jobs_list)


# -- the entry point --------------------------------------------------------------------------------


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _named_gains(gains: Sequence[GainModel | tuple[str, GainModel]] | None) -> list[tuple[str, GainModel]]:
    if gains is None:
        return list(DEFAULT_GAINS)
    named = []
    for item in gains:
        name, model = item if isinstance(item, tuple) else (repr(item), item)
        if not isinstance(model, GainModel):
            raise TypeError(f"gains: {model!r} is not a GainModel (predict_gain and predict_tokens)")
        named.append((name, model))
    if not named:
        raise ValueError("gains: give at least one gain model")
    return named


def _batches(n: int, batch: int | None, order: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, order, 0x5C4ED])
    arrival = rng.permutation(n).tolist()
    size = n if batch is None else batch
    return [arrival[i : i + size] for i in range(0, n, size)]


def simulate_shared_budget(
    pool: Pool | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    slots: int = 8,
    budget_per_question: float = 3.0,
    orders: int = 20,
    seed: int = 0,
    batch: int | None = None,
    gains: Sequence[GainModel | tuple[str, GainModel]] | None = None,
    policy: PolicyLike | str | None = None,
    aggregator: Aggregator | None = None,
    latency: LatencyModel | None = None,
    deadline: float | None = None,
    lookahead: int = 3,
    datasets: Iterable[str] | None = None,
    skip_bad: bool = False,
    jobs: int | None = 1,
) -> SharedBudgetResult:
    """Replay a pool through the scheduler with a shared budget, beside uniform, independent and oracle allocations.

    Args:
        pool: a loaded :class:`~budgetctl.Pool`, or pool/trace file path(s).
        slots: samples in flight at once (the scheduler's concurrent slots).
        budget_per_question: mean samples per question; a batch of ``q`` questions shares
            ``floor(budget_per_question * q)`` samples. At least 1 (each question's floor sample).
        orders: random draw orders per question (the same for every row).
        seed: seeds the orders (as :func:`budgetctl.sim.simulate` does) and the arrival orders.
        batch: questions arriving together to share one budget; ``None``: all of a dataset's.
        gains: gain models for the shared rows, ``(name, model)`` or bare models; default
            :data:`DEFAULT_GAINS`.
        policy: each request's own stop policy in the shared rows (object or spec); ``None``: none,
            a question stops only when the budget, its pool or its deadline does.
        aggregator: how samples become an answer (default majority vote; the reference rows
            always use majority vote).
        latency: time model of a sample (default: no time); with ``deadline``, requests answer by it.
        deadline: seconds each question must be answered by (needs a timed latency model).
        lookahead: horizons the scheduler looks at for the best gain per token.
        datasets: keep only these datasets.
        skip_bad: skip malformed pool lines instead of failing.
        jobs: worker processes for the scheduler's runs (``None``: one per CPU); the figures do not
            depend on it.
    """
    started = time.perf_counter()
    slots = _check_positive_int("slots", slots)
    orders = _check_positive_int("orders", orders)
    lookahead = _check_positive_int("lookahead", lookahead)
    if batch is not None:
        batch = _check_positive_int("batch", batch)
    workers = (os.cpu_count() or 1) if jobs is None else _check_positive_int("jobs", jobs)
    if isinstance(budget_per_question, bool) or not isinstance(budget_per_question, int | float):
        raise TypeError(f"budget_per_question must be a number, got {budget_per_question!r}")
    if not (math.isfinite(budget_per_question) and budget_per_question >= 1):
        raise ValueError(
            f"budget_per_question must be >= 1 (every question gets its floor sample), got {budget_per_question!r}"
        )
    model = latency if latency is not None else LatencyModel()
    if deadline is not None and not model.timed:
        raise ValueError("a deadline needs a timed latency model (ttft or per_token > 0)")
    named = _named_gains(gains)
    stop = parse_policy(policy) if isinstance(policy, str) else as_policy(policy)
    loaded = pool if isinstance(pool, Pool) else load_pool(pool, datasets=datasets, skip_bad=skip_bad)
    if not loaded.questions:
        raise ValueError(f"no questions in {loaded.files}")
    results = []
    for dataset, questions in loaded.by_dataset().items():
        results.append(
            _simulate_dataset(
                dataset,
                questions,
                named,
                slots=slots,
                budget_per_question=float(budget_per_question),
                orders=orders,
                seed=seed,
                batch=batch,
                policy=stop,
                aggregator=aggregator,
                latency=model,
                deadline=deadline,
                lookahead=lookahead,
                jobs=workers,
            )
        )
    return SharedBudgetResult(
        files=loaded.files,
        slots=slots,
        budget_per_question=float(budget_per_question),
        orders=orders,
        seed=seed,
        batch=batch,
        latency=model,
        deadline=deadline,
        lookahead=lookahead,
        policy=repr(stop),
        datasets=results,
        seconds=time.perf_counter() - started,
    )


def _simulate_dataset(
    dataset: str,
    questions: list[Question],
    named: list[tuple[str, GainModel]],
    *,
    slots: int,
    budget_per_question: float,
    orders: int,
    seed: int,
    batch: int | None,
    policy: StopPolicy,
    aggregator: Aggregator | None,
    latency: LatencyModel,
    deadline: float | None,
    lookahead: int,
    jobs: int,
) -> SharedDatasetResult:
    n_q = len(questions)
    tokens_known = all(q.tokens_known for q in questions)
    pool_size = max(len(q.samples) for q in questions)
    all_orders = [orders_for(q, orders, seed) for q in questions]
    stamped = [latency.stamp(q.samples) for q in questions]
    batches = [_batches(n_q, batch, o, seed) for o in range(orders)]
    rows: list[SharedRow] = []

    def band(correct: np.ndarray) -> tuple[float, float]:
        per_order = correct.mean(axis=0)
        low, high = np.percentile(per_order, [2.5, 97.5])
        return float(low), float(high)

    # Shared budget, one row per gain model; the orders are independent, so they can run in parallel.
    jobs_list = [
        _Job(
            gain_index=g,
            orders=chunk,
            questions=questions,
            pools=stamped,
            draws=[[draws[o] for draws in all_orders] for o in chunk],
            batches=[batches[o] for o in chunk],
            gain=gain,
            slots=slots,
            budget_per_question=budget_per_question,
            policy=policy,
            aggregator=aggregator,
            deadline=deadline,
            lookahead=lookahead,
        )
        for g, (_, gain) in enumerate(named)
        for chunk in _chunks(orders, jobs)
    ]
    shape = (len(named), n_q, orders)
    correct = np.zeros(shape)
    samples = np.zeros(shape)
    tokens = np.zeros(shape)
    reasons = np.zeros(shape, dtype=np.int8)
    for g, chunk, outcome in _run_jobs(jobs_list, jobs):
        correct[g][:, chunk], samples[g][:, chunk], tokens[g][:, chunk], reasons[g][:, chunk] = outcome
    for g, (name, _) in enumerate(named):
        low, high = band(correct[g])
        shares = {r: float((reasons[g] == i).mean()) for i, r in enumerate(STOP_REASONS)}
        rows.append(
            SharedRow(
                name=f"shared: {name}",
                kind="shared",
                accuracy=float(correct[g].mean()),
                ci_low=low,
                ci_high=high,
                mean_samples=float(samples[g].mean()),
                mean_tokens=float(tokens[g].mean()) if tokens_known else None,
                stop_reasons={k: v for k, v in shares.items() if v > 0},
            )
        )

    # Fixed-N majority curves of every question and order (the reference rows use majority vote).
    uniform_size = len({len(q.samples) for q in questions}) == 1
    normalize = aggregator.normalize if isinstance(aggregator, MajorityVote) else normalize_answer
    refs = [reference(q, all_orders[i], normalize) for i, q in enumerate(questions)]
    if uniform_size:
        majority = np.stack([r.majority_correct for r in refs])  # (Q, O, N)
        cum_tokens = np.stack([r.tokens for r in refs]).astype(float)
    else:  # pad shorter pools with their last value (more samples than the pool: the pool's majority)

        def padded(values: np.ndarray) -> np.ndarray:
            return np.pad(values, ((0, 0), (0, pool_size - values.shape[1])), "edge")

        majority = np.stack([padded(r.majority_correct) for r in refs])
        cum_tokens = np.stack([padded(r.tokens) for r in refs]).astype(float)
    full = majority[:, :, -1]

    k = budget_per_question
    uniform = _uniform(majority, k)
    low, high = band(uniform)
    uniform_tokens = _uniform(cum_tokens, k)
    rows.append(
        SharedRow(
            name=f"uniform: {k:g} each, majority",
            kind="uniform",
            accuracy=float(uniform.mean()),
            ci_low=low,
            ci_high=high,
            mean_samples=min(k, float(pool_size)),
            mean_tokens=float(uniform_tokens.mean()) if tokens_known else None,
            detail="" if float(k).is_integer() else "mixes the two nearest whole numbers of samples",
        )
    )

    # Independent stopping: Adaptive-Consistency with a sample cap, best mix at the same mean samples.
    # Sequentially, AC(t) | MaxSamples(m) stops at min(where AC(t) stops, m), on the running majority.
    thresholds = [AdaptiveConsistency(t) for t in AC_THRESHOLDS]
    ac_stop = np.zeros((len(thresholds), n_q, orders), dtype=np.int64)
    for i in range(n_q):
        runs = replay_orders(stamped[i], all_orders[i], thresholds)
        for o, stops in enumerate(runs):
            for p, (state, *_) in enumerate(stops):
                ac_stop[p, i, o] = state.n_samples + state.n_failed
    q_index = np.arange(n_q)[:, None]
    o_index = np.arange(orders)[None, :]
    settings: list[tuple[str, np.ndarray, np.ndarray]] = []  # (name, correct, samples used), each (Q, O)
    for p, threshold in enumerate(AC_THRESHOLDS):
        for cap in range(1, pool_size + 1):
            used = np.minimum(ac_stop[p], cap)
            settings.append((f"AC({threshold}) | MaxSamples({cap})", majority[q_index, o_index, used - 1], used))
    budget = min(k, float(pool_size))
    i, j, w = _best_mix([float(u.mean()) for _, _, u in settings], [float(c.mean()) for _, c, _ in settings], budget)
    (name_i, right_i, used_i), (name_j, right_j, used_j) = settings[i], settings[j]
    mixed = (1 - w) * right_i + w * right_j
    mixed_samples = (1 - w) * used_i.mean() + w * used_j.mean()
    low, high = band(mixed)
    detail = name_i if i == j else f"{1 - w:.0%} {name_i} + {w:.0%} {name_j}"
    if mixed_samples > budget + 1e-9:
        detail += " (no setting is that cheap)"
    spent_i = cum_tokens[q_index, o_index, used_i - 1]
    spent_j = cum_tokens[q_index, o_index, used_j - 1]
    rows.append(
        SharedRow(
            name="independent: Adaptive-Consistency",
            kind="independent",
            accuracy=float(mixed.mean()),
            ci_low=low,
            ci_high=high,
            mean_samples=float(mixed_samples),
            mean_tokens=float(((1 - w) * spent_i + w * spent_j).mean()) if tokens_known else None,
            detail=f"each question stops on its own; best mix of settings at this mean, tuned on this pool: {detail}",
        )
    )

    oracle, oracle_samples = _oracle(majority, batches, k)
    low, high = band(oracle)
    rows.append(
        SharedRow(
            name="oracle allocation",
            kind="oracle",
            accuracy=float(oracle.mean()),
            ci_low=low,
            ci_high=high,
            mean_samples=float(oracle_samples.mean()),
            mean_tokens=None,
            detail="knows after how many samples each question's running majority is right",
        )
    )
    return SharedDatasetResult(
        dataset=dataset,
        n_questions=n_q,
        pool_size=pool_size,
        tokens_known=tokens_known,
        full_pool_accuracy=float(full.mean()),
        rows=rows,
    )
