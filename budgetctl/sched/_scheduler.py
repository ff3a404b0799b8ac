"""The live scheduler: many concurrent requests share sample slots and a budget; each free slot goes where it buys most.

Each :meth:`Scheduler.solve` call runs in its caller's task, with its own task group for its
sampler calls, so cancelling the caller cancels its samples and frees its slots at once, and a
request's deadline is its task group's deadline, exactly as for :func:`~budgetctl.solve`. What the
requests share is an :class:`~budgetctl.sched._allocate.Allocator` (the one the simulation
replays): when a slot frees, the allocator picks the request to get it, synchronously, and the
scheduler starts that request's sampler in that request's task group. Each request's samples are
recorded and judged by its own :class:`~budgetctl._core.RunCore`, the engine of every run.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .._aggregate import Aggregator
from .._budget import Budget
from .._calls import Calls
from .._core import RunCore, check_run_args
from .._gain import GainModel
from .._plan import Auto, Planner, parse_concurrency
from .._runtime import Escalated, RunLog, Sampler, run_config, sample_once
from .._state import Result, StopReason
from .._trace import TraceWriter
from ..policies._base import PolicyError, PolicyLike, as_policy
from ._allocate import Allocator, Capacity, Ticket
from ._lookahead import LookaheadGain

__all__ = ["Scheduler", "SchedulerStats"]

_INF = math.inf
_NOTHING = object()


class _Ended:
    """What the scheduler sends a request it ends: the budget can no longer serve it, or it closed."""

    __slots__ = ("reason",)

    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


_STARVED = _Ended("budget")
_CLOSED = _Ended("closed")
_DEFAULT_GAIN = LookaheadGain()


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A snapshot of a :class:`Scheduler`'s load and of what it has done so far."""

    #: Concurrent sample slots.
    slots: int
    #: Slots in use now (samples in flight).
    in_use: int
    #: Requests running now (admitted, not yet answered).
    running: int
    #: Requests waiting for a slot now.
    waiting: int
    #: Requests admitted so far.
    admitted: int
    #: Requests answered at once because the scheduler could not serve them (stop reason ``budget``).
    rejected: int
    #: Requests answered so far, admitted or not.
    finished: int
    #: Slots given out so far: one scheduling decision each.
    decisions: int
    #: Seconds the scheduler spent deciding: a returned sample's new priority, the queue and the
    #: capacity (not the request's own stop policy, which a lone run evaluates too, nor starting
    #: the chosen samplers' tasks, which is the event loop's).
    decision_seconds: float
    #: Samples launched, tokens and dollars spent within the budget's window (or ever, without one).
    window_samples: int
    window_tokens: float
    window_dollars: float

    @property
    def us_per_decision(self) -> float:
        """Mean microseconds per scheduling decision (0 before the first)."""
        return self.decision_seconds / self.decisions * 1e6 if self.decisions else 0.0


class _Default:
    """The type of "not given": falls back to the scheduler's setting."""


_DEFAULT = _Default()


class _Request:
    __slots__ = ("sampler", "sample_timeout", "calls", "send")

    def __init__(self, sampler: Sampler, sample_timeout: float | None) -> None:
        self.sampler = sampler
        self.sample_timeout = sample_timeout
        self.calls: Calls | None = None
        self.send: MemoryObjectSendStream[Any] | None = None


def _check_number(name: str, value: object, *, allow_none: bool = True, positive: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number{' or None' if allow_none else ''}, got {value!r}")
    if math.isnan(value) or (value <= 0 if positive else value < 0) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


class Scheduler:
    """Serve many concurrent requests from shared sample slots, each free slot to the request it helps most.

    ``async with Scheduler(slots=32) as sched:`` then, from any number of tasks,
    ``result = await sched.solve(sampler, deadline=2.0, value=1.0)``. Every admitted request gets
    one sample first (the floor, earliest deadline first); after that each free slot goes to the
    request whose next sample has the highest ``value * predicted accuracy gain per token``
    (ties: earliest deadline, then earliest arrival). A request ends when its own stop policy or
    budget says so, at its deadline (with its current best), or when the scheduler's budget can no
    longer serve it before its deadline (stop reason ``budget``). A request that would wait for its
    first sample past its deadline, or that arrives when the budget has no room for it, is
    answered at once with its ``fallback`` and stop reason ``budget`` (admission control).

    Gains come from the request's ``gain``, else its policy when the policy is a gain model too
    (``predict_gain`` and ``predict_tokens``, as a learned policy has), else the scheduler's
    ``gain``, else :class:`~budgetctl.sched.LookaheadGain`.

    Args:
        slots: samples in flight at once, over all requests.
        tokens_per_second: a token rate over all requests (a bucket of ``burst`` tokens, by
            default one second's worth); ``None``: no rate limit.
        burst: the bucket's size in tokens.
        budget: samples, tokens and dollars all requests together may spend within ``window``
            (its ``seconds`` must be ``None``; each request's own budget goes to :meth:`solve`).
        window: seconds the budget covers, sliding; ``None``: the scheduler's whole life.
        policy: the stop policy of requests that bring none (``None``: they stop only at their
            budget or deadline, or when the sampler is exhausted).
        gain: the gain model of requests whose policy is not one.
        lookahead: horizons (in samples) over which the best gain per token is looked for.
        aggregator: how samples become an answer, for requests that bring none (default majority vote).
        sample_timeout: seconds after which one sampler call is abandoned and recorded as failed.
        max_failures: failed samples a request tolerates before it stops with ``stop_reason="error"``.
    """

    def __init__(
        self,
        *,
        slots: int,
        tokens_per_second: float | None = None,
        burst: float | None = None,
        budget: Budget | None = None,
        window: float | None = None,
        policy: PolicyLike | None = None,
        gain: GainModel | None = None,
        lookahead: int = 3,
        aggregator: Aggregator | None = None,
        sample_timeout: float | None = None,
        max_failures: int | None = 16,
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, got {slots!r}")
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots!r}")
        _check_number("tokens_per_second", tokens_per_second)
        _check_number("burst", burst)
        _check_number("window", window)
        if burst is not None and tokens_per_second is None:
            raise ValueError("burst needs tokens_per_second")
        if budget is not None:
            if not isinstance(budget, Budget):
                raise TypeError(f"budget must be a budgetctl.Budget or None, got {budget!r}")
            if budget.seconds is not None:
                raise ValueError("the scheduler's budget cannot have seconds (give each request a deadline)")
        if window is not None and budget is None:
            raise ValueError("window needs a budget")
        if gain is not None and not isinstance(gain, GainModel):
            raise TypeError(f"gain must be a GainModel (predict_gain, predict_tokens), got {gain!r}")
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"lookahead must be an int >= 1, got {lookahead!r}")
        check_run_args(deadline=None, concurrency=1, max_failures=max_failures, sample_timeout=sample_timeout)
        self._policy = as_policy(policy)
        self._gain = gain
        self._aggregator = aggregator
        self._sample_timeout = sample_timeout
        self._max_failures = max_failures
        capacity = Capacity(slots, tokens_per_second=tokens_per_second, burst=burst, budget=budget, window=window)
        self._allocator = Allocator(capacity, lookahead=lookahead)
        self._task_group: TaskGroup | None = None
        self._closed = False
        self._running: set[Ticket] = set()
        self._admitted = 0
        self._rejected = 0
        self._finished = 0
        self._decision_ns = 0
        self._wake_at = _INF
        self._timer_scope: anyio.CancelScope | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def __aenter__(self) -> Scheduler:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a Scheduler can be entered only once")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._timer, name="budgetctl scheduler timer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._closed = True
        # Requests still running (in tasks outside the block) end now with their best so far.
        for ticket in list(self._running):
            self._notify(ticket, _CLOSED)
        self._task_group.cancel_scope.cancel()
        try:
            return await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The block's own exception comes back wrapped by the task group (the timer never
            # raises): let it propagate as itself, so ``except ValueError`` around the block works.
            if exc is not None and all(e is exc for e in group.exceptions):
                return None
            raise

    async def _timer(self) -> None:
        # Wakes the allocator when the token rate or the budget's window lets samples start again.
        while True:
            with anyio.CancelScope(deadline=self._wake_at) as scope:
                self._timer_scope = scope
                await anyio.sleep_forever()
            self._timer_scope = None
            self._wake_at = _INF
            self._dispatch(anyio.current_time())

    # -- what callers use ----------------------------------------------------------------------------
    async def solve(
        self,
        sampler: Sampler,
        *,
        deadline: float | None = None,
        value: float = 1.0,
        policy: PolicyLike | None = None,
        budget: Budget | None = None,
        gain: GainModel | None = None,
        aggregator: Aggregator | None = None,
        fallback: object = None,
        concurrency: int | str | Auto = 1,
        trace: str | os.PathLike[str] | IO[str] | TraceWriter | None = None,
        sample_timeout: float | None = None,
        max_failures: int | _Default | None = _DEFAULT,
        meta: Mapping[str, Any] | None = None,
    ) -> Result:
        """Answer one request with the slots the scheduler gives it; arguments as :func:`~budgetctl.solve`.

        Args:
            sampler: async callable returning a :class:`~budgetctl.Sample` (or a batch, or an async
                generator of partial answers).
            deadline: seconds from this call by which the answer is returned (its current best).
            value: what a right answer to this request is worth, relative to others (its gains are
                multiplied by it); 0 gets only the floor sample unless slots are idle.
            policy: this request's stop policy (default: the scheduler's); a learned policy that
                is a :class:`~budgetctl.GainModel` also predicts its gains.
            budget: this request's own caps (samples, tokens, dollars, seconds).
            gain: this request's gain model (overrides the policy's and the scheduler's).
            aggregator: how samples become an answer (default: the scheduler's, else majority vote).
            fallback: the answer when no sample voted.
            concurrency: most slots this request holds at once; ``"auto"`` (or :class:`~budgetctl.Auto`)
                plans it at every outcome as :func:`~budgetctl.solve` does (from the latency this
                request's calls showed), the allocator still giving each slot by gain.
            trace: path or text stream (or :class:`~budgetctl.TraceWriter`) to append this
                request's events to, as :func:`~budgetctl.solve` writes them.
            sample_timeout: seconds after which one call is abandoned and recorded as failed
                (default: the scheduler's).
            max_failures: failed samples tolerated before the request stops with ``error``
                (default: the scheduler's; ``None`` tolerates any number once given explicitly).
            meta: JSON-ready data written into the trace's start event.

        Never raises for a slow or failing sampler. Raises ``RuntimeError`` outside ``async with``,
        :class:`~budgetctl.policies.PolicyError` if the stop policy raises, and a sampler's
        ``KeyboardInterrupt``/``SystemExit`` as itself. A request still running when the scheduler
        closes ends with its best so far and stop reason ``closed``.
        """
        started = anyio.current_time()  # the caller's clock: setup counts against the deadline
        if self._task_group is None or self._closed:
            raise RuntimeError("use the scheduler inside `async with Scheduler(...) as sched:`")
        if not callable(sampler):
            raise TypeError(f"sampler must be an async callable returning a budgetctl.Sample, got {sampler!r}")
        if sample_timeout is None:
            sample_timeout = self._sample_timeout
        failures = self._max_failures if isinstance(max_failures, _Default) else max_failures
        plan = parse_concurrency(concurrency)
        cap = plan if isinstance(plan, int) else plan.cap
        check_run_args(deadline=deadline, concurrency=cap, max_failures=failures, sample_timeout=sample_timeout)
        _check_number("value", value, allow_none=False, positive=False)
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget must be a budgetctl.Budget or None, got {budget!r}")
        if gain is not None and not isinstance(gain, GainModel):
            raise TypeError(f"gain must be a GainModel (predict_gain, predict_tokens), got {gain!r}")
        stop = self._policy if policy is None else as_policy(policy)
        if gain is None:
            gain = stop if isinstance(stop, GainModel) else self._gain if self._gain is not None else _DEFAULT_GAIN
        aggregator = aggregator if aggregator is not None else self._aggregator
        core = RunCore(
            policy=stop,
            aggregator=aggregator,
            budget=budget,
            deadline=deadline,
            max_failures=failures,
            concurrency=cap,
            planner=None if isinstance(plan, int) else Planner(plan, observing=True),
        )
        log = None
        if trace is not None:
            log = RunLog(uuid.uuid4().hex[:12], trace)
            shown = plan if isinstance(plan, int) else str(plan)
            config = run_config(stop, aggregator, core.budget, deadline, shown, sample_timeout, failures)
            log.start({**config, "scheduler": True}, meta or {})
        try:
            result = await self._serve(core, sampler, gain, float(value), sample_timeout, fallback, started, log)
        finally:
            if log is not None:
                log.close()
        return result

    async def _serve(
        self,
        core: RunCore,
        sampler: Sampler,
        gain: GainModel,
        value: float,
        sample_timeout: float | None,
        fallback: object,
        started: float,
        log: RunLog | None,
    ) -> Result:
        # The driver of one request: the engine's events and the allocator's decisions, mapped to
        # this request's task group and anyio's clock.
        reason = core.start(started) or core.expired(anyio.current_time())
        request = _Request(sampler, sample_timeout)
        ticket = Ticket(core, gain, value=value, handle=request)
        raised: BaseException | None = None
        now = started
        if reason is not None:  # a budget that allows nothing, or a deadline already past
            return self._end(core, reason, anyio.current_time(), fallback, log)
        # Ready before it can be given a slot (the first request of an event loop starts its call host).
        calls = request.calls = await Calls.open()
        if not self._allocator.admit(ticket, started):
            self._rejected += 1
            return self._end(core, "budget", anyio.current_time(), fallback, log)
        self._admitted += 1
        self._running.add(ticket)
        send, receive = anyio.create_memory_object_stream[Any](_INF)
        request.send = send
        with send, receive:
            try:
                with anyio.CancelScope(deadline=ticket.deadline_at):
                    self._dispatch(started)
                    while reason is None:
                        try:  # outcomes already waiting are taken without a trip through the event loop
                            item = receive.receive_nowait()
                        except anyio.WouldBlock:
                            item = _NOTHING
                        if item is _NOTHING:  # waited for outside the except block: no exception kept alive
                            item = await receive.receive()
                        now = anyio.current_time()
                        if type(item) is _Ended:  # the budget cannot serve it, or the scheduler closed
                            reason = item.reason
                            break
                        _, outcome, latency, final = item
                        if type(outcome) is Escalated:
                            raised, reason = outcome.error, "error"
                            break
                        clock = time.perf_counter_ns()
                        try:
                            reason = self._allocator.on_outcome(ticket, outcome, latency, now, final=final)
                        except PolicyError as error:
                            raised, reason = error, "error"
                        self._decision_ns += time.perf_counter_ns() - clock
                        if log is not None and now < ticket.deadline_at:
                            log.step(core.samples, core.state, reason)
                        if reason is None and final:
                            self._dispatch(now)
            finally:
                # At once, even when cancelled: the request's slots go to others before its
                # samplers have finished unwinding (or been abandoned).
                self._release(ticket)
                await calls.aclose()
        if reason is None:  # its deadline
            now = anyio.current_time()
            reason = core.time_reason()
        result = self._end(core, reason, now, fallback, log)
        if raised is not None:
            if isinstance(raised, PolicyError):
                raised.result = result
            raise raised
        return result

    def _end(self, core: RunCore, reason: StopReason, now: float, fallback: object, log: RunLog | None) -> Result:
        self._finished += 1
        result = core.finish(reason, now, fallback=fallback)
        if log is not None:
            log.stop(result)
        return result

    def stats(self) -> SchedulerStats:
        """The scheduler's load now and its counts so far."""
        allocator = self._allocator
        capacity = allocator.capacity
        samples, tokens, dollars = capacity.spent(anyio.current_time()) if self._task_group else (0, 0.0, 0.0)
        return SchedulerStats(
            slots=capacity.slots,
            in_use=capacity.in_use,
            running=len(self._running),
            waiting=len(allocator.queue),
            admitted=self._admitted,
            rejected=self._rejected,
            finished=self._finished,
            decisions=allocator.n_decisions,
            decision_seconds=self._decision_ns / 1e9,
            window_samples=samples,
            window_tokens=tokens,
            window_dollars=dollars,
        )

    # -- the allocator's side ------------------------------------------------------------------------
    def _dispatch(self, now: float) -> None:
        started = time.perf_counter_ns()
        decided = self._allocator.dispatch(now)
        self._decision_ns += time.perf_counter_ns() - started
        for ticket in decided.launched:
            request = ticket.handle
            assert isinstance(request, _Request) and request.calls is not None
            index = ticket.core.n_launched - 1  # for the outcome's record only (two launches may share it)
            request.calls.start(sample_once, request.sampler, index, request.send, request.sample_timeout)
        for ticket in decided.starved:
            self._notify(ticket, _STARVED)
        if decided.wake < self._wake_at:
            self._wake_at = decided.wake
            if self._timer_scope is not None:
                self._timer_scope.deadline = decided.wake

    def _notify(self, ticket: Ticket, ended: _Ended) -> None:
        request = ticket.handle
        assert isinstance(request, _Request)
        if request.send is not None:
            request.send.send_nowait(ended)

    def _release(self, ticket: Ticket) -> None:
        # Its slots (and its floor reservation) go back at once, and to whoever is next.
        now = anyio.current_time()
        self._running.discard(ticket)
        self._allocator.remove(ticket, now)
        if not self._closed:
            self._dispatch(now)
