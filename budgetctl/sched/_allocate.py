"""Who gets the next sample slot: the priority, the floor and the capacity rules of the scheduler.

Everything here is synchronous and clock-free (times are passed in), and it is the only place
these rules live: the live :class:`~budgetctl.Scheduler` drives an :class:`Allocator` with
anyio's clock and real samplers, the shared-budget simulation drives the same class with a
virtual clock and replayed samples, so the two cannot allocate differently.

The order of the queue, best first:

1. the *floor*: requests that have not launched a sample yet, earliest deadline first, so every
   admitted request gets at least one sample before anyone gets a second;
2. then the highest ``value * predicted gain per token`` of the request's next sample
   (:func:`marginal_rate`), ties to the earliest deadline, then to the earliest arrival.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterator
from typing import Literal, NamedTuple

from .._budget import Budget
from .._core import RunCore
from .._gain import GainModel
from .._state import RunState, StopReason

__all__ = ["Allocator", "Capacity", "Dispatch", "ReadyQueue", "Ticket", "marginal_rate"]

_INF = math.inf


def marginal_rate(gain: GainModel, state: RunState, committed: int = 0, lookahead: int = 1) -> float:
    """Predicted accuracy gain per token of a request's next sample, ``committed`` samples being in flight.

    The best of ``(G(k + h) - G(k)) / (T(k + h) - T(k))`` over ``h = 1..lookahead``, with ``G`` and
    ``T`` the gain model's predicted gain and tokens of ``k`` more samples, ``k = committed``. Looking
    ahead matters for majority votes: one more sample after a single vote can never change the
    answer (a tie keeps the first leader), two can, so the one-step gain alone would starve such
    requests. A NaN or negative prediction counts as no gain; a sample counts at least one token.
    """
    if committed:
        g0 = gain.predict_gain(state, committed)
        t0 = gain.predict_tokens(state, committed)
    else:
        g0 = t0 = 0.0
    best = 0.0
    for h in range(committed + 1, committed + lookahead + 1):
        dg = gain.predict_gain(state, h) - g0
        if not dg > 0.0:  # also NaN
            continue
        dt = gain.predict_tokens(state, h) - t0
        rate = dg / (dt if dt >= 1.0 else 1.0)
        if rate > best:
            best = rate
    return best


class Ticket:
    """One request as the allocator sees it: its run core, how it values samples, and the slots it holds."""

    __slots__ = (
        "core",
        "gain",
        "value",
        "deadline_at",
        "arrival",
        "concurrency",
        "in_flight",
        "predicted",
        "entry",
        "active",
        "floor",
        "handle",
    )

    def __init__(
        self,
        core: RunCore,
        gain: GainModel,
        *,
        value: float = 1.0,
        deadline_at: float | None = None,
        handle: object = None,
    ) -> None:
        self.core = core
        self.gain = gain
        self.value = value
        #: Absolute time (the allocator's clock) at which the request must answer: by default its
        #: run core's (set when the core was started).
        self.deadline_at = core.limit_at if deadline_at is None else deadline_at
        #: Arrival order, the last tie-break (set by :meth:`Allocator.admit`).
        self.arrival = 0
        #: Most slots this request may hold at once (its run core's concurrency).
        self.concurrency = core.concurrency
        #: Slots it holds now (samples in flight).
        self.in_flight = 0
        #: Tokens predicted for its samples in flight (reserved against token budgets).
        self.predicted = 0.0
        self.entry: list[object] | None = None
        self.active = False
        #: True until its first sample is launched: it still holds a floor reservation.
        self.floor = True
        #: What the driver (live scheduler or simulation) attaches to the ticket.
        self.handle = handle


class ReadyQueue:
    """Tickets waiting for a slot, best first (floor, then rate, deadline, arrival); removal is O(1).

    Entries are ``[tier, -rate, deadline, arrival, push number, ticket]`` lists in a binary heap
    (the push number keeps two entries of one ticket, a dead and a live one, apart); a removed
    ticket leaves its entry behind with the ticket cleared, skipped when it reaches the top, and
    the heap is rebuilt when such dead entries outnumber the live ones (and emptied when nothing is
    live), so a queue holds no reference to a request that has ended.
    """

    __slots__ = ("_heap", "_live", "_dead", "_pushes")

    def __init__(self) -> None:
        self._heap: list[list[object]] = []
        self._live = 0
        self._dead = 0
        self._pushes = 0

    def __len__(self) -> int:
        return self._live

    def push(self, ticket: Ticket, rate: float) -> None:
        """Queue ``ticket`` (which must not be queued) with priority ``rate``."""
        self._pushes += 1
        entry: list[object] = [
            0 if ticket.floor else 1,
            -rate,
            ticket.deadline_at,
            ticket.arrival,
            self._pushes,
            ticket,
        ]
        ticket.entry = entry
        heapq.heappush(self._heap, entry)
        self._live += 1

    def remove(self, ticket: Ticket) -> None:
        """Take ``ticket`` out of the queue if it is queued."""
        entry = ticket.entry
        if entry is None:
            return
        entry[5] = None
        ticket.entry = None
        self._live -= 1
        self._dead += 1
        if self._live == 0:
            self._heap.clear()
            self._dead = 0
        elif self._dead > 64 and self._dead > self._live:
            self._heap = [e for e in self._heap if e[5] is not None]
            heapq.heapify(self._heap)
            self._dead = 0

    def peek(self) -> Ticket | None:
        """The best ticket, without taking it out."""
        heap = self._heap
        while heap:
            ticket = heap[0][5]
            if ticket is not None:
                assert isinstance(ticket, Ticket)
                return ticket
            heapq.heappop(heap)
            self._dead -= 1
        return None

    def pop(self) -> Ticket | None:
        """Take the best ticket out of the queue."""
        heap = self._heap
        while heap:
            ticket = heapq.heappop(heap)[5]
            if ticket is not None:
                assert isinstance(ticket, Ticket)
                ticket.entry = None
                self._live -= 1
                return ticket
            self._dead -= 1
        return None

    def tickets(self) -> Iterator[Ticket]:
        """The queued tickets, in no particular order."""
        for entry in self._heap:
            ticket = entry[5]
            if ticket is not None:
                assert isinstance(ticket, Ticket)
                yield ticket


#: Why the allocator cannot launch a sample now.
Block = Literal["slots", "rate", "budget"]


class Capacity:
    """Concurrent slots, an optional token rate, and an optional budget over a sliding window.

    ``budget`` caps the samples launched, tokens spent and dollars spent within any ``window``
    seconds (``window=None``: over the allocator's whole life). Samples count when launched; tokens
    and dollars when a sample comes back, the samples still in flight counting their predicted
    tokens meanwhile, so a token or dollar cap is overshot by at most what those samples cost
    beyond their prediction. ``tokens_per_second`` is a token bucket holding ``burst`` tokens
    (default: one second's worth), debited a sample's predicted tokens when it starts and settled
    to its actual tokens when it comes back: a sample may start while the bucket is not in debt.
    """

    __slots__ = (
        "slots",
        "tokens_per_second",
        "burst",
        "budget",
        "window",
        "in_use",
        "_level",
        "_level_at",
        "_spent",
        "_samples",
        "_tokens",
        "_dollars",
        "_reserved_tokens",
    )

    def __init__(
        self,
        slots: int,
        *,
        tokens_per_second: float | None = None,
        burst: float | None = None,
        budget: Budget | None = None,
        window: float | None = None,
    ) -> None:
        self.slots = slots
        self.tokens_per_second = tokens_per_second
        self.burst = burst if burst is not None else tokens_per_second
        self.budget = budget
        self.window = window
        #: Slots in use (samples in flight).
        self.in_use = 0
        self._level = self.burst if self.burst is not None else 0.0
        self._level_at = 0.0
        #: (time, samples, tokens, dollars) of spending still inside the window.
        self._spent: deque[tuple[float, int, float, float]] = deque()
        self._samples = 0
        self._tokens = 0.0
        self._dollars = 0.0
        self._reserved_tokens = 0.0

    # -- the token bucket ----------------------------------------------------------------------------
    def _refill(self, now: float) -> None:
        rate = self.tokens_per_second
        if rate is None:
            return
        if now > self._level_at:
            assert self.burst is not None
            self._level = min(self.burst, self._level + (now - self._level_at) * rate)
            self._level_at = now

    # -- the window ----------------------------------------------------------------------------------
    def _expire(self, now: float) -> None:
        window = self.window
        if window is None:
            return
        spent = self._spent
        # ``t + window <= now``, not ``t <= now - window``: the very expression reopens_at() gives,
        # so waking at that time always finds the spending expired (no rounding in between).
        while spent and spent[0][0] + window <= now:
            _, samples, tokens, dollars = spent.popleft()
            self._samples -= samples
            self._tokens -= tokens
            self._dollars -= dollars
        if not spent:  # no rounding drift once the window is empty
            self._samples, self._tokens, self._dollars = 0, 0.0, 0.0

    def _spend(self, now: float, samples: int, tokens: float, dollars: float) -> None:
        self._samples += samples
        self._tokens += tokens
        self._dollars += dollars
        if self.window is not None:
            self._spent.append((now, samples, tokens, dollars))

    def spent(self, now: float) -> tuple[int, float, float]:
        """Samples launched, tokens and dollars spent within the window ending at ``now``."""
        self._expire(now)
        return self._samples, self._tokens, self._dollars

    # -- decisions -----------------------------------------------------------------------------------
    def block(self, now: float, *, predicted: float, reserved: int, per_sample: float) -> Block | None:
        """Why one more sample, predicted to cost ``predicted`` tokens, cannot start now, or ``None``.

        A sample may start while a slot is free, every cap of the budget still has room (what was
        spent in the window, plus the predicted tokens of the samples in flight, plus ``reserved``
        floor samples of ``per_sample`` predicted tokens each held back for other requests), and
        the token bucket holds its predicted tokens (or is full, for a sample bigger than it).
        """
        if self.in_use >= self.slots:
            return "slots"
        block = self._budget_block(now, reserved, per_sample)
        if block is None and self.tokens_per_second is not None:
            self._refill(now)
            assert self.burst is not None
            if self._level < min(predicted, self.burst):
                return "rate"
        return block

    def _budget_block(self, now: float, reserved: int, per_sample: float) -> Block | None:
        budget = self.budget
        if budget is not None:
            self._expire(now)
            if budget.samples is not None and self._samples + reserved + 1 > budget.samples:
                return "budget"
            committed = self._tokens + self._reserved_tokens + reserved * per_sample
            if budget.tokens is not None and committed >= budget.tokens:
                return "budget"
            dollars = self._dollars + (committed - self._tokens) * budget.price_per_token
            if budget.dollars is not None and dollars >= budget.dollars:
                return "budget"
        return None

    def reopens_at(self, now: float, block: Block, predicted: float = 0.0) -> float:
        """The earliest time a ``block`` may lift by itself (``inf``: only when samples come back).

        For ``"rate"``: when the bucket will hold ``predicted`` tokens (or be full).
        """
        if block == "rate":
            assert self.tokens_per_second is not None and self.burst is not None
            self._refill(now)
            need = min(predicted, self.burst) - self._level
            return now + max(need, 0.0) / self.tokens_per_second + 1e-9
        if block == "budget" and self.window is not None and self._spent:
            return self._spent[0][0] + self.window
        return _INF

    def budget_settles(self) -> bool:
        """Whether a budget block can only lift with time, not when samples in flight come back.

        Launched samples are spent for good, but tokens and dollars are reserved at their predicted
        cost while in flight and charged at their actual cost, which may be less.
        """
        budget = self.budget
        if budget is None or self.in_use == 0:
            return True
        return budget.samples is not None and self._samples >= budget.samples

    def launched(self, now: float, predicted: float) -> None:
        """A sample started, predicted to cost ``predicted`` tokens."""
        self.in_use += 1
        self._reserved_tokens += predicted
        if self.budget is not None:
            self._spend(now, 1, 0.0, 0.0)
        if self.tokens_per_second is not None:
            self._refill(now)
            self._level -= predicted

    def returned(self, now: float, predicted: float, tokens: float, dollars: float) -> None:
        """A sample predicted at ``predicted`` tokens came back having cost ``tokens`` and ``dollars``."""
        self.in_use -= 1
        self._reserved_tokens = max(self._reserved_tokens - predicted, 0.0) if self.in_use else 0.0
        if self.tokens_per_second is not None:
            self._refill(now)
            self._level += predicted
        self.charge(now, tokens, dollars)

    def charge(self, now: float, tokens: float, dollars: float) -> None:
        """Charge ``tokens`` and ``dollars`` actually spent (a sample, or a partial answer of a stream)."""
        if self.budget is not None and (tokens or dollars):
            self._spend(now, 0, tokens, dollars)
        if self.tokens_per_second is not None and tokens:
            self._refill(now)
            self._level -= tokens

    def admits_floor(self, now: float, *, reserved: int, per_sample: float) -> bool:
        """Whether the budget has room now for one more request's first sample, beyond ``reserved`` ones."""
        budget = self.budget
        if budget is None:
            return True
        return self._budget_block(now, reserved, per_sample) != "budget"


class Allocator:
    """The scheduler's decisions: admit a request, give the next free slot, take a sample back.

    Each returns at once. The driver (live or simulated) starts a request's run core and admits it
    with :meth:`admit`, calls :meth:`dispatch` whenever a slot or budget may have freed and starts
    one sampler call per ticket it is given, reports each outcome with :meth:`on_outcome` (which
    says whether the request goes on), and ends a request (stopped, at its deadline, cancelled,
    or starved) with :meth:`remove`.
    """

    __slots__ = (
        "capacity",
        "lookahead",
        "queue",
        "waiting_floor",
        "latency",
        "per_sample",
        "_arrivals",
        "_starved_until",
        "_late",
        "_blocked_predicted",
        "_floor_deadlines",
        "n_decisions",
    )

    def __init__(self, capacity: Capacity, *, lookahead: int = 3, per_sample: float = 100.0) -> None:
        self.capacity = capacity
        self.lookahead = lookahead
        self.queue = ReadyQueue()
        #: Admitted requests whose first sample has not started (each holds a floor reservation).
        self.waiting_floor = 0
        #: Mean seconds a sample takes (exponentially weighted); ``None`` before the first comes back.
        self.latency: float | None = None
        #: Mean tokens a sample costs (exponentially weighted), for floor reservations.
        self.per_sample = per_sample
        self._arrivals = 0
        #: While the budget is blocked: when it reopens (tickets due before then have been starved).
        self._starved_until: float | None = None
        #: Tickets queued (with nothing in flight) since that sweep.
        self._late: list[Ticket] = []
        self._blocked_predicted = 0.0
        #: Minus the deadlines of the requests waiting for their floor sample, ascending: the
        #: earliest deadline last (floor samples go earliest deadline first).
        self._floor_deadlines: list[float] = []
        #: Slots given so far (one decision each).
        self.n_decisions = 0

    # -- admission -----------------------------------------------------------------------------------
    def expected_wait(self, now: float, deadline_at: float = _INF) -> float:
        """Seconds a request admitted now, due at ``deadline_at``, would wait for its first sample (0: unknown).

        Floor samples go earliest deadline first, so the requests ahead of it are those waiting for
        theirs with a deadline no later than its own; slots free at ``slots`` per mean latency, and
        with a token rate, the bucket must refill for all of them.
        """
        capacity = self.capacity
        queued = len(self._floor_deadlines) - bisect.bisect_left(self._floor_deadlines, -deadline_at)
        ahead = queued + 1 - max(capacity.slots - capacity.in_use, 0)
        wait = 0.0
        if ahead > 0 and self.latency is not None:
            wait = ahead * self.latency / capacity.slots
        rate = capacity.tokens_per_second
        if rate is not None:
            capacity._refill(now)
            need = (queued + 1) * self.per_sample - max(capacity._level, 0.0)
            wait = max(wait, need / rate)
        return wait

    def admit(self, ticket: Ticket, now: float) -> bool:
        """Queue a new request for its floor sample, or refuse it (``False``) when it cannot be served.

        Refused: the budget has no room for its first sample, or it would wait for that sample
        until its deadline (the load now, at the mean latency so far).
        """
        if not self.capacity.admits_floor(now, reserved=self.waiting_floor, per_sample=self.per_sample):
            return False
        deadline_at = ticket.deadline_at
        if deadline_at < _INF and now + self.expected_wait(now, deadline_at) >= deadline_at:
            return False
        ticket.arrival = self._arrivals
        self._arrivals += 1
        ticket.active = True
        ticket.floor = True
        self.waiting_floor += 1
        bisect.insort(self._floor_deadlines, -deadline_at)
        self.queue.push(ticket, 0.0)
        return True

    def _floor_served(self, ticket: Ticket) -> None:
        # Its floor reservation ends (first sample launched, or the request ended without one).
        ticket.floor = False
        self.waiting_floor -= 1
        deadlines = self._floor_deadlines
        key = -ticket.deadline_at
        if deadlines and deadlines[-1] == key:  # the usual case: the earliest deadline goes first
            deadlines.pop()
        else:
            del deadlines[bisect.bisect_left(deadlines, key)]

    # -- decisions -----------------------------------------------------------------------------------
    def next_launch(self, now: float) -> Ticket | Block | None:
        """Give the next free slot: the ticket to launch a sample for, else why nothing can start.

        ``None``: nobody is waiting. A ticket whose deadline has passed is dropped, not launched.
        """
        queue = self.queue
        capacity = self.capacity
        if capacity.in_use >= capacity.slots:  # the common answer under load, at no cost
            return "slots" if queue._live else None
        while True:
            ticket = queue.peek()
            if ticket is None:
                return None
            if ticket.deadline_at <= now:  # its driver ends it at its deadline; never launch late
                queue.remove(ticket)
                continue
            predicted = ticket.gain.predict_tokens(ticket.core.state, 1)
            if not predicted >= 0.0:
                predicted = self.per_sample
            reserved = self.waiting_floor - 1 if ticket.floor else self.waiting_floor
            block = capacity.block(now, predicted=predicted, reserved=reserved, per_sample=self.per_sample)
            if block is not None:
                self._blocked_predicted = predicted
                return block
            queue.pop()
            self.n_decisions += 1
            if ticket.floor:
                self._floor_served(ticket)
            ticket.in_flight += 1
            ticket.predicted += predicted
            capacity.launched(now, predicted)
            ticket.core.launch()
            if ticket.in_flight < ticket.concurrency:  # it may hold more slots: back in line for the next
                self.requeue(ticket, ticket.core.state)
            return ticket

    def on_outcome(
        self, ticket: Ticket, outcome: object, latency: float, now: float, *, final: bool = True
    ) -> StopReason | None:
        """A call of ``ticket`` gave ``outcome`` at ``now``: the engine's step, then the allocator's.

        The one per-outcome step of both scheduler drivers (live and simulated): report the time
        and the outcome to the request's run core (:meth:`RunCore.expired`, :meth:`RunCore.outcome`:
        an outcome at or after its deadline is dropped, as cancelled), free the slot and charge
        what it cost, and put the request back in line at its new priority if it goes on. Returns
        why the request stops, or ``None``. A policy that raises propagates as
        :class:`~budgetctl.policies.PolicyError`.
        """
        core = ticket.core
        reason = core.expired(now)
        if reason is not None:
            return reason
        tokens, dollars = core.tokens, core.dollars
        reason = core.outcome(outcome, latency, now, final=final)
        spent, paid = core.tokens - tokens, core.dollars - dollars
        if final:
            self.returned(ticket, now, latency, spent, paid)
            if reason is None:
                reason = self.resume(ticket, core.state)
        else:  # a partial answer of a streaming call: charged, its slot still held
            self.capacity.charge(now, spent, paid)
        return reason

    def returned(self, ticket: Ticket, now: float, latency: float, tokens: float, dollars: float) -> None:
        """A sample of ``ticket`` came back (or failed): free its slot and charge what it cost."""
        predicted = ticket.predicted / ticket.in_flight if ticket.in_flight else 0.0
        ticket.in_flight -= 1
        ticket.predicted -= predicted
        self.capacity.returned(now, predicted, tokens, dollars)
        self.latency = latency if self.latency is None else 0.9 * self.latency + 0.1 * latency
        if tokens > 0:
            self.per_sample = 0.9 * self.per_sample + 0.1 * tokens

    def wants_slot(self, ticket: Ticket) -> bool:
        """Whether ``ticket`` may hold one more slot: its run core has room (:meth:`RunCore.room`)."""
        return ticket.active and ticket.core.room() > 0

    def requeue(self, ticket: Ticket, state: RunState) -> None:
        """Put ``ticket`` (not stopped, after a new snapshot) back in the queue if it may take a slot."""
        queue = self.queue
        if ticket.entry is not None:
            queue.remove(ticket)
        if not self.wants_slot(ticket):
            return
        if ticket.floor:
            queue.push(ticket, 0.0)
            return
        if self._starved_until is not None and ticket.in_flight == 0:
            self._late.append(ticket)
        rate = marginal_rate(ticket.gain, state, ticket.in_flight, self.lookahead)
        if state.n_failed:  # a gain is only bought by a sample that succeeds: discount by the failure rate
            rate *= 1.0 - state.n_failed / (state.n_samples + state.n_failed + 1)
        queue.push(ticket, ticket.value * rate)

    def remove(self, ticket: Ticket, now: float) -> int:
        """End ``ticket``: out of the queue, its slots freed at once; returns how many it held."""
        if not ticket.active:
            return 0
        ticket.active = False
        self.queue.remove(ticket)
        if ticket.floor:
            self._floor_served(ticket)
        held = ticket.in_flight
        capacity = self.capacity
        while ticket.in_flight:
            predicted = ticket.predicted / ticket.in_flight
            ticket.in_flight -= 1
            ticket.predicted -= predicted
            capacity.returned(now, predicted, 0.0, 0.0)
        ticket.predicted = 0.0
        return held

    def resume(self, ticket: Ticket, state: RunState) -> StopReason | None:
        """The scheduler's half of :meth:`on_outcome`, once the request's own policy let it go on.

        Puts it back in the queue at its new priority; a request that may not take another slot
        and has nothing in flight stops with its budget's reason.
        """
        self.requeue(ticket, state)
        if ticket.entry is None and ticket.in_flight == 0:
            return ticket.core.limit_reason() or "budget"
        return None

    def dispatch(self, now: float) -> Dispatch:
        """Give out every slot that can be given now (each one a decision), best ticket first.

        Returns the tickets to launch a sample for (in order), the queued tickets the budget can no
        longer serve before their deadline (out of the queue now: the driver ends them with stop
        reason ``budget``), and when the capacity may reopen by itself (``inf``: only when a
        sample comes back).
        """
        launched: list[Ticket] = []
        while True:
            got = self.next_launch(now)
            if not isinstance(got, Ticket):
                break
            launched.append(got)
        starved: list[Ticket] = []
        wake = _INF
        if got == "budget":
            wake = self.capacity.reopens_at(now, "budget")
            if not self.capacity.budget_settles():
                wake = _INF  # samples in flight may give back reserved tokens: wait for them
            elif wake != self._starved_until:
                # Once per blocked period (or later reopening): everyone it leaves past their deadline.
                self._starved_until = wake
                starved = [t for t in self.queue.tickets() if t.in_flight == 0 and t.deadline_at <= wake]
            else:  # the same blocked period: only tickets queued since the sweep can be new
                starved = [t for t in self._late if t.entry is not None and t.deadline_at <= wake]
            for ticket in starved:
                self.queue.remove(ticket)
        else:
            self._starved_until = None
            if got == "rate":
                wake = self.capacity.reopens_at(now, "rate", self._blocked_predicted)
        self._late.clear()
        return Dispatch(launched, starved, wake)


class Dispatch(NamedTuple):
    """What :meth:`Allocator.dispatch` decided."""

    #: Tickets given a slot, one sample each, best first (their run cores have counted the launch).
    launched: list[Ticket]
    #: Tickets the budget cannot serve before their deadline: end them with stop reason ``budget``.
    starved: list[Ticket]
    #: When the capacity may reopen without a sample coming back (``inf``: it will not).
    wake: float
