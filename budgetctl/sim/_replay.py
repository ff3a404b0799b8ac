"""Replaying one question's samples, in one order, through the run core on a virtual clock.

This is the simulator's only path to a policy's behaviour: the same :class:`~budgetctl._core.RunCore`
that live runs use records each replayed sample and takes each decision. A live
:func:`~budgetctl.solve` on :class:`ReplaySampler` (under a mock clock) sees the same samples at
the same times and therefore decides the same things; ``tests/test_sim_equivalence.py`` checks it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import anyio
import numpy as np

from .._aggregate import Aggregator
from .._budget import Budget
from .._core import RunCore
from .._plan import Auto, Flights, LatencyEstimate, Planner, parse_concurrency
from .._sample import Exhausted, Sample
from .._state import RunState, StopReason
from ..policies._base import Never, StopPolicy

__all__ = ["LatencyModel", "ReplaySampler", "Stop", "replay", "replay_orders"]

_NEVER = Never()
_DEFAULT_BOUND = StopPolicy.remaining_bound


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """How long a sample takes: ``ttft + tokens * per_token`` seconds, with ``concurrency`` samples in flight.

    ``concurrency`` is what :func:`~budgetctl.solve` takes: an int (most in flight), or ``"auto"``
    (the default, or an :class:`~budgetctl.Auto`), planned at every arrival as a live run plans it.
    Without time (all zero, the classic setting in which self-consistency methods are compared by
    sample counts) every plan decides what one call at a time decides, and is replayed as that;
    deadlines need a non-zero model.
    """

    #: Seconds to the first token.
    ttft: float = 0.0
    #: Seconds per generated token.
    per_token: float = 0.0
    #: Samples in flight at once: an int, or a plan (``"auto"``, :class:`~budgetctl.Auto`).
    concurrency: int | Auto | str = "auto"

    def __post_init__(self) -> None:
        for name in ("ttft", "per_token"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"LatencyModel: {name} must be a finite number >= 0, got {value!r}")
        try:
            plan = parse_concurrency(self.concurrency, name="LatencyModel: concurrency")
        except TypeError as error:
            raise ValueError(str(error)) from None
        object.__setattr__(self, "concurrency", plan)

    @property
    def plan(self) -> int | Auto:
        """The plan of calls in flight the replay follows: untimed, any plan is one call at a time."""
        concurrency = self.concurrency
        assert isinstance(concurrency, int | Auto)
        return concurrency if self.timed else 1

    def latency(self, sample: Sample) -> float:
        """Seconds one sample takes."""
        return self.ttft + sample.tokens * self.per_token

    def stamp(self, samples: Sequence[Sample]) -> list[Sample]:
        """``samples`` with ``latency`` set to what this model gives them, as a live run would record it.

        Replaying stamped samples spares the run core a copy per sample; the result is the same.
        """
        return [replace(s, latency=self.latency(s)) for s in samples]

    @property
    def timed(self) -> bool:
        """Whether samples take any time at all (deadlines mean something)."""
        return self.ttft > 0 or self.per_token > 0


class Stop(NamedTuple):
    """Where one policy stopped on one replayed trajectory."""

    #: The snapshot it stopped on.
    state: RunState
    #: Why.
    reason: StopReason
    #: Tokens the samples in flight at the stop had decoded when they were cancelled (the model
    #: knows them exactly; a live run estimates them: ``Result.wasted_tokens``).
    wasted: int = 0


class ReplaySampler:
    """A live sampler that serves pre-drawn samples in a fixed order, each after its modelled latency.

    Raises :class:`~budgetctl.Exhausted` once the samples run out. Used to check that simulation
    equals live runs, and handy for testing policies against recorded pools.
    """

    def __init__(self, samples: Sequence[Sample], latency: LatencyModel | None = None) -> None:
        self._samples = list(samples)
        self._latency = latency if latency is not None else LatencyModel()
        self._next = 0

    async def __call__(self) -> Sample:
        if self._next >= len(self._samples):
            raise Exhausted("replayed samples exhausted")
        sample = self._samples[self._next]
        self._next += 1
        delay = self._latency.latency(sample)
        if delay > 0:
            await anyio.sleep(delay)
        return sample


_EXHAUSTED = Exhausted("replayed samples exhausted")

# Where a branch of the replay stands: about to start, about to launch (after the start, or after a
# sample came back), or waiting for the next sample to come back.
_START, _FILL, _WAIT = range(3)


class _Branch:
    """Orders that have drawn the same samples so far share one run, until their next draws differ."""

    __slots__ = ("core", "heap", "launched", "now", "phase", "members", "active", "judged", "flights")

    def __init__(
        self,
        core: RunCore,
        heap: list[tuple[float, int, object, float]],
        launched: int,
        now: float,
        phase: int,
        members: list[int],
        active: list[int],
        judged: list[StopPolicy],
        flights: Flights | None = None,
    ) -> None:
        self.core = core
        self.heap = heap
        self.launched = launched
        self.now = now
        self.phase = phase
        self.members = members
        self.active = active
        #: The policies of ``active``, in the same order.
        self.judged = judged
        #: The calls in flight and the latency estimate the run's planner reads, when launches are planned.
        self.flights = flights

    def fork(self, members: list[int]) -> _Branch:
        core = self.core.copy()
        flights = None
        if self.flights is not None:  # the copy plans from its own estimate
            flights = self.flights.copy()
            assert isinstance(core.planner, Planner)
            core.planner = core.planner.reading(flights.latency)
        return _Branch(
            core,
            self.heap.copy(),
            self.launched,
            self.now,
            self.phase,
            members,
            self.active.copy(),
            self.judged.copy(),
            flights,
        )


def replay(
    samples: Sequence[Sample],
    order: Sequence[int],
    policies: Sequence[StopPolicy],
    *,
    aggregator: Aggregator | None = None,
    budget: Budget | None = None,
    latency: LatencyModel | None = None,
    deadline: float | None = None,
) -> list[Stop]:
    """Replay ``samples`` in ``order`` and return where each of ``policies`` stops.

    Exactly what :func:`~budgetctl.solve` would do with each policy on a sampler that returns those
    samples in that order after their modelled latencies (ties in completion time resolve in launch
    order; a completion exactly at the deadline is too late).
    """
    return replay_orders(
        samples, [order], policies, aggregator=aggregator, budget=budget, latency=latency, deadline=deadline
    )[0]


def replay_orders(
    samples: Sequence[Sample],
    orders: Sequence[Sequence[int]] | np.ndarray,
    policies: Sequence[StopPolicy],
    *,
    aggregator: Aggregator | None = None,
    budget: Budget | None = None,
    latency: LatencyModel | None = None,
    deadline: float | None = None,
) -> list[list[Stop]]:
    """:func:`replay` for many orders of the same samples at once: ``result[o][p]`` is policy p on order o.

    Runs are deterministic, so orders that have drawn equal samples so far are in the same state:
    they share one run core, forked only where their next draws differ, and every policy is judged
    on the shared trajectory until it stops. The result is exactly that of replaying each order on
    its own, at a fraction of the work when samples repeat (the same answer and token count).
    """
    model = latency if latency is not None else LatencyModel()
    n = len(samples)
    first_of: dict[Sample, int] = {}
    canonical = np.array([first_of.setdefault(s, i) for i, s in enumerate(samples)], dtype=np.int64)
    drawn = (
        canonical[np.asarray(orders, dtype=np.int64).reshape(len(orders), n)]
        if n
        else np.zeros((len(orders), 0), dtype=np.int64)
    )
    rows = drawn.tolist()
    results: list[list[Stop | None]] = [[None] * len(policies) for _ in range(len(rows))]
    plan = model.plan
    ttft, per_token = model.ttft, model.per_token
    timed = model.timed
    flights = None if isinstance(plan, int) else Flights(LatencyEstimate(prior_latency=plan.prior_latency))
    concurrency = plan if isinstance(plan, int) else plan.cap

    def wasted(heap: list[tuple[float, int, object, float]], now: float) -> int:
        # Tokens the calls in flight had decoded at ``now``: the model knows each one's progress.
        total = 0
        if not timed:  # without time a cancelled call had done nothing
            return 0
        for finished_at, _, item, duration in heap:
            if not isinstance(item, Sample):
                continue
            ran = now - (finished_at - duration)
            if per_token > 0:
                total += int(min(max(ran - ttft, 0.0) / per_token, item.tokens))
            elif ran >= ttft:
                total += item.tokens
        return total

    root_core = RunCore(
        policy=_NEVER,
        aggregator=aggregator,
        budget=budget,
        deadline=deadline,
        max_failures=None,
        keep_samples=False,
        concurrency=concurrency,
        planner=None if flights is None or isinstance(plan, int) else Planner(plan, flights.latency),
    )
    # With one call at a time, every policy launches alike (a bound never stops the one call a
    # run that goes on must have); with more, a policy's bound may launch fewer: such policies
    # are forked onto runs of their own where their launches differ.
    per_policy_room = concurrency > 1
    # Policies whose launches can differ from the others' (a bound of their own): only while one of
    # them is still judged must the engine be asked policy by policy.
    bounded = {p for p, policy in enumerate(policies) if type(policy).remaining_bound is not _DEFAULT_BOUND}
    everyone, all_policies = list(range(len(rows))), list(range(len(policies)))
    pending = [_Branch(root_core, [], 0, 0.0, _START, everyone, all_policies, list(policies), flights)]

    def finish(branch: _Branch, stop: Stop) -> None:
        for o in branch.members:
            row = results[o]
            for p in branch.active:
                row[p] = stop
        branch.active = []
        branch.judged = []

    while pending:
        branch = pending.pop()
        core = branch.core
        heap = branch.heap
        members = branch.members
        while branch.active:
            phase = branch.phase
            if phase == _START:
                reason = core.start(0.0) or core.expired(0.0)
                if reason is not None:
                    finish(branch, Stop(core.state, reason))
                    break
                phase = branch.phase = _FILL
            if phase == _FILL:
                if per_policy_room and (core.planner is not None or not bounded.isdisjoint(branch.active)):
                    rooms = core.rooms(branch.judged)
                    room = rooms[0]
                    if any(r != room for r in rooms):
                        by_room: dict[int, list[int]] = {}
                        for p, r in zip(branch.active, rooms, strict=True):
                            by_room.setdefault(r, []).append(p)
                        split_policies = list(by_room.values())
                        for group in split_policies[1:]:
                            fork = branch.fork(members.copy())
                            fork.active = group
                            fork.judged = [policies[p] for p in group]
                            pending.append(fork)
                        branch.active = split_policies[0]
                        branch.judged = [policies[p] for p in branch.active]
                else:
                    room = core.room()
                for _ in range(room):
                    launched = branch.launched
                    if launched < n:
                        if len(members) == 1:
                            index = rows[members[0]][launched]
                        else:
                            groups: dict[int, list[int]] = {}
                            for o in members:
                                groups.setdefault(rows[o][launched], []).append(o)
                            if len(groups) > 1:
                                split = list(groups.values())
                                for group in split[1:]:
                                    pending.append(branch.fork(group))
                                members = branch.members = split[0]
                            index = rows[members[0]][launched]
                        sample = samples[index]
                        duration = ttft + sample.tokens * per_token
                        heapq.heappush(heap, (branch.now + duration, launched, sample, duration))
                    else:
                        heapq.heappush(heap, (branch.now, launched, _EXHAUSTED, 0.0))
                    core.launch()
                    if branch.flights is not None:
                        branch.flights.launched(launched, branch.now)
                    branch.launched = launched + 1
                branch.phase = _WAIT
            finished_at, index, item, duration = heapq.heappop(heap)
            reason = core.expired(finished_at)
            if reason is not None:  # a completion at or after the limit is too late: cancelled
                branch.now = core.limit_at
                heapq.heappush(heap, (finished_at, index, item, duration))
                lost = wasted(heap, core.limit_at)
                core.cancel()
                finish(branch, Stop(core.charged(core.snapshot(core.limit_at), lost), reason, lost))
                break
            branch.now = finished_at
            if branch.flights is not None:
                branch.flights.arrived(index, item, duration, finished_at, final=True)
            state = core.record(item, duration, finished_at)
            verdicts = core.judge(branch.judged, state)
            if any(verdicts):
                still = []
                for p, reason in zip(branch.active, verdicts, strict=True):
                    if reason is None:
                        still.append(p)
                    else:
                        lost = wasted(heap, finished_at)
                        stop = Stop(core.charged(state, lost), reason, lost)
                        for o in members:
                            results[o][p] = stop
                branch.active = still
                branch.judged = [policies[p] for p in still]
            branch.phase = _FILL
    return [[stop for stop in row if stop is not None] for row in results]
