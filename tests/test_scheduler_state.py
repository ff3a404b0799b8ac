"""The scheduler's invariants, under random arrivals, samples, failures, cancellations, budgets and deadlines.

1. A hypothesis ``RuleBasedStateMachine`` drives the allocator (the decisions the live scheduler
   and the simulation share) on a virtual clock, one event at a time, and checks after every
   step: slots in use never exceed the slots (and equal the samples in flight); the queue holds
   only live requests; the budget's samples are never overspent in any window; and when the
   requests end, each got exactly one result, none after its deadline.
2. A property test runs the live :class:`~budgetctl.Scheduler` under trio's ``MockClock`` on
   random requests and checks the same from the outside: concurrent sampler calls never exceed
   the slots, every request returns exactly one result, no later than its deadline.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import anyio
import hypothesis.strategies as st
from conftest import run_virtual
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from budgetctl import Budget, Result, Sample, Scheduler
from budgetctl._core import RunCore
from budgetctl._state import StopReason
from budgetctl.policies import AdaptiveConsistency, MaxSamples, Never
from budgetctl.sched import LookaheadGain
from budgetctl.sched._allocate import Allocator, Capacity, Ticket

_GAIN = LookaheadGain()
_DONE, _DEADLINE, _WAKE = "done", "deadline", "wake"


class AllocatorMachine(RuleBasedStateMachine):
    """Requests arrive, samples come back (or fail), callers cancel, time passes; the allocator decides."""

    requests = Bundle("requests")

    @initialize(
        slots=st.integers(1, 4),
        samples=st.none() | st.integers(1, 25),
        window=st.none() | st.sampled_from([2.0, 5.0]),
    )
    def start(self, slots: int, samples: int | None, window: float | None) -> None:
        budget = None if samples is None else Budget(samples=samples)
        self.window = window if budget is not None else None
        self.allocator = Allocator(Capacity(slots, budget=budget, window=self.window), lookahead=3)
        self.slots = slots
        self.budget = budget
        self.now = 0.0
        self.seq = 0
        self.events: list[tuple[float, int, str, int, Any]] = []
        self.tickets: dict[int, Ticket] = {}
        self.scripts: dict[int, tuple[list[Any], float]] = {}
        self.started: dict[int, float] = {}
        self.results: dict[int, tuple[float, StopReason | str]] = {}
        self.launches: list[float] = []

    # -- the driver: what the live scheduler and the simulation do with the allocator's answers ----------
    def _push(self, when: float, kind: str, request: int, payload: Any = None) -> None:
        heapq.heappush(self.events, (when, self.seq, kind, request, payload))
        self.seq += 1

    def _dispatch(self) -> None:
        decided = self.allocator.dispatch(self.now)
        for ticket in decided.launched:
            request = ticket.handle
            assert isinstance(request, int)
            script, latency = self.scripts[request]
            outcome = script[(ticket.core.n_launched - 1) % len(script)]
            self.launches.append(self.now)
            self._push(self.now + latency, _DONE, request, outcome)
        for ticket in decided.starved:
            assert isinstance(ticket.handle, int)
            self._end(ticket.handle, "budget")
        if decided.wake < math.inf:
            self._push(decided.wake, _WAKE, -1)

    def _end(self, request: int, reason: StopReason | str) -> None:
        assert request not in self.results, f"request {request} got a second result"
        self.allocator.remove(self.tickets[request], self.now)
        self.results[request] = (self.now, reason)

    def _step(self) -> None:
        when, _, kind, request, payload = heapq.heappop(self.events)
        self.now = max(self.now, when)
        if kind == _WAKE:
            self._dispatch()
            return
        ticket = self.tickets[request]
        if not ticket.active:
            return
        core = ticket.core
        if kind == _DEADLINE:
            self._end(request, core.time_reason())
        else:
            reason = self.allocator.on_outcome(ticket, payload, 0.0, self.now)
            if reason is not None:
                self._end(request, reason)
        self._dispatch()

    # -- rules -----------------------------------------------------------------------------------------------
    @rule(
        target=requests,
        deadline=st.none() | st.floats(0.05, 6.0),
        value=st.floats(0.0, 3.0),
        script=st.lists(st.sampled_from(["a", "a", "b", "c", None, "fail"]), min_size=1, max_size=5),
        latency=st.floats(0.01, 2.0),
        policy=st.sampled_from(["never", "max3", "ac"]),
        concurrency=st.integers(1, 2),
    )
    def arrive(
        self,
        deadline: float | None,
        value: float,
        script: list[str | None],
        latency: float,
        policy: str,
        concurrency: int,
    ) -> int:
        stop = {"never": Never(), "max3": MaxSamples(3), "ac": AdaptiveConsistency(0.9) | MaxSamples(6)}[policy]
        core = RunCore(
            policy=stop, budget=Budget(samples=8), deadline=deadline, max_failures=2, concurrency=concurrency
        )
        request = len(self.tickets)
        core.start(self.now)
        deadline_at = core.limit_at
        ticket = Ticket(core, _GAIN, value=value, handle=request)
        self.tickets[request] = ticket
        outcomes = [RuntimeError("down") if s == "fail" else Sample(answer=s, tokens=5) for s in script]
        self.scripts[request] = (outcomes, latency)
        self.started[request] = self.now
        if not self.allocator.admit(ticket, self.now):
            self.results[request] = (self.now, "budget")
        else:
            if deadline is not None:
                self._push(deadline_at, _DEADLINE, request)
            self._dispatch()
        return request

    @precondition(lambda self: bool(self.events))
    @rule()
    def next_event(self) -> None:
        self._step()

    @rule(seconds=st.floats(0.0, 3.0))
    def time_passes(self, seconds: float) -> None:
        until = self.now + seconds
        for _ in range(10_000):
            if not (self.events and self.events[0][0] <= until):
                break
            self._step()
        else:
            raise AssertionError(f"events never settle: {self.events[:5]}, now {self.now}")
        self.now = until

    @rule(request=consumes(requests))
    def caller_cancels(self, request: int) -> None:
        if request in self.results:
            return
        held = self.tickets[request].in_flight
        in_use = self.allocator.capacity.in_use
        self._end(request, "cancelled")
        assert self.allocator.capacity.in_use == in_use - held  # its slots are free at once
        self._dispatch()

    # -- invariants -------------------------------------------------------------------------------------------
    @invariant()
    def slots_in_use_never_exceed_the_slots(self) -> None:
        if not hasattr(self, "allocator"):
            return
        in_use = self.allocator.capacity.in_use
        assert 0 <= in_use <= self.slots
        assert in_use == sum(t.in_flight for t in self.tickets.values() if t.active)

    @invariant()
    def the_queue_holds_only_live_requests(self) -> None:
        if not hasattr(self, "allocator"):
            return
        queued = list(self.allocator.queue.tickets())
        assert len(queued) == len(self.allocator.queue) == len(set(map(id, queued)))
        for ticket in queued:
            assert ticket.active and ticket.in_flight < ticket.concurrency
            assert ticket.handle not in self.results
        floor = sorted(-t.deadline_at for t in self.tickets.values() if t.active and t.floor)
        assert self.allocator.waiting_floor == len(floor)
        assert self.allocator._floor_deadlines == floor

    @invariant()
    def the_budget_is_never_overspent(self) -> None:
        if not hasattr(self, "allocator") or self.budget is None or self.budget.samples is None:
            return
        if self.window is None:
            assert len(self.launches) <= self.budget.samples
        else:
            for start in self.launches:
                inside = [t for t in self.launches if start <= t < start + self.window]
                assert len(inside) <= self.budget.samples

    @invariant()
    def no_result_after_its_deadline(self) -> None:
        if not hasattr(self, "allocator"):
            return
        for request, (when, _) in self.results.items():
            assert when <= self.tickets[request].deadline_at

    def teardown(self) -> None:
        if not hasattr(self, "allocator"):
            return
        for _ in range(10_000):
            if not self.events:
                break
            self._step()
        # Every request ended exactly once (``_end`` refuses a second result), or still waits only for
        # budget that no time will bring back.
        for request, ticket in self.tickets.items():
            if request not in self.results:
                assert ticket.active and ticket.in_flight == 0
                assert self.allocator.dispatch(self.now).launched == []
        assert self.allocator.capacity.in_use == 0


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- the live scheduler from the outside ---------------------------------------------------------------------

request_specs = st.lists(
    st.tuples(
        st.floats(0.0, 3.0),  # arrival
        st.none() | st.floats(0.1, 5.0),  # deadline
        st.lists(st.sampled_from(["a", "b", "fail", "hang"]), min_size=1, max_size=4),  # script
        st.floats(0.05, 2.0),  # latency
        st.booleans(),  # cancelled by its caller at its arrival + 1 s
    ),
    min_size=1,
    max_size=12,
)


@given(
    specs=request_specs,
    slots=st.integers(1, 3),
    samples=st.none() | st.integers(1, 15),
)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_live_scheduler_invariants(specs: list[Any], slots: int, samples: int | None) -> None:
    spans: list[tuple[float, float]] = []  # (start, end) of every sampler call, in virtual time
    results: dict[int, list[Result]] = {i: [] for i in range(len(specs))}
    ended_at: dict[int, float] = {}
    cancelled: set[int] = set()

    async def main() -> None:
        budget = None if samples is None else Budget(samples=samples)
        async with Scheduler(slots=slots, budget=budget, policy=MaxSamples(4), max_failures=2) as sched:

            async def request(i: int) -> None:
                arrival, deadline, script, latency, cancel = specs[i]
                await anyio.sleep(arrival)
                calls = [0]

                async def call() -> Sample:
                    step = script[calls[0] % len(script)]
                    calls[0] += 1
                    began = anyio.current_time()
                    try:
                        await anyio.sleep(latency)
                        if step == "hang":  # far past any deadline
                            await anyio.sleep(1000.0)
                        if step == "fail":
                            raise RuntimeError("down")
                        return Sample(answer=step, tokens=3)
                    finally:
                        spans.append((began, anyio.current_time()))

                started = anyio.current_time()
                with anyio.CancelScope() as scope:
                    if cancel:
                        scope.deadline = started + 1.0
                    results[i].append(await sched.solve(call, deadline=deadline))
                    ended_at[i] = anyio.current_time() - started
                if scope.cancelled_caught:
                    cancelled.add(i)

            async with anyio.create_task_group() as tg:
                for i in range(len(specs)):
                    tg.start_soon(request, i)
            stats = sched.stats()
            assert (stats.in_use, stats.running, stats.waiting) == (0, 0, 0)

    run_virtual(main)
    # A slot is free from the instant its sample comes back or is cancelled (a cancelled call may
    # still be unwinding, in no time, when the next one starts): spans are half-open.
    edges = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= slots
    for i, spec in enumerate(specs):
        deadline = spec[1]
        if i in cancelled:
            assert results[i] == []
            continue
        assert len(results[i]) == 1, f"request {i} got {len(results[i])} results"
        if deadline is not None:
            assert ended_at[i] <= deadline + 1e-9
            assert results[i][0].elapsed <= deadline + 1e-9
