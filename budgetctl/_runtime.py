"""The anytime runtime: draw samples concurrently under a deadline and a budget, keep the best answer.

One async driver (:class:`Run`, opened with :func:`open_run`); :func:`solve` awaits it to the end,
:func:`solve_sync` runs :func:`solve` in a fresh event loop for synchronous callers. All bookkeeping
and decisions live in the sans-I/O engine :class:`~budgetctl._core.RunCore`, which the scheduler
and the simulators drive too: this module only maps its actions to tasks and anyio's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import IO, Any, TypeAlias

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._aggregate import Aggregator, MajorityVote
from ._budget import Budget
from ._calls import Calls
from ._core import END_OF_STREAM, RunCore, check_run_args
from ._plan import Concurrency, Flights, LatencyEstimate, Planner, parse_concurrency
from ._sample import Sample
from ._state import Result, RunState, StopReason
from ._trace import TRACE_SCHEMA_VERSION, TraceWriter, decision_event, sample_event, stop_event
from .policies._base import PolicyError, PolicyLike, as_policy

__all__ = ["Run", "RunUpdates", "Sampler", "open_run", "solve", "solve_sync"]

#: What a sampler is: an async callable returning one :class:`Sample` or a batch of them, or an
#: async generator yielding partial answers of one chain of thought (each judged as it arrives).
#: (A real type at runtime, not a string, so ``typing.get_type_hints`` resolves it in any module.)
Sampler: TypeAlias = Callable[[], Awaitable[Sample | Sequence[Sample]] | AsyncIterator[Sample]]

_Outcome: TypeAlias = tuple[int, object, float, bool]


class Escalated:
    """What a sampler call sends when it raised a ``BaseException`` that must reach the caller.

    ``KeyboardInterrupt``, ``SystemExit`` and the like are not faults of a sample: the run stops
    and its driver re-raises the exception as itself, outside every task group (never wrapped in
    a ``BaseExceptionGroup``).
    """

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def clock() -> float | None:
    """anyio's clock now, or ``None`` outside an event loop."""
    try:
        return anyio.current_time()
    except RuntimeError:  # sniffio.AsyncLibraryNotFoundError: no event loop in this thread
        return None


class RunLog:
    """A run's trace: its start event, each outcome's samples and decision, and its stop event.

    Shared by :class:`Run` and the scheduler's requests, so both log the same events. A path is
    opened (and closed by :meth:`close`); a stream or a :class:`TraceWriter` given is left open.
    """

    __slots__ = ("run_id", "_target", "_writer", "_traced")

    def __init__(self, run_id: str, target: str | os.PathLike[str] | IO[str] | TraceWriter) -> None:
        self.run_id = run_id
        self._target = target
        self._writer = target if isinstance(target, TraceWriter) else TraceWriter(target)
        self._traced = 0

    def start(self, config: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Write the start event."""
        self._writer.write(
            {
                "event": "start",
                "v": TRACE_SCHEMA_VERSION,
                "run": self.run_id,
                "time": anyio.current_time(),
                "config": dict(config),
                "meta": dict(meta),
            }
        )

    def step(self, samples: Sequence[Sample], state: RunState, reason: StopReason | None) -> None:
        """Write the samples not yet written, then the decision taken on ``state``."""
        elapsed = state.elapsed
        write = self._writer.write
        for i in range(self._traced, len(samples)):
            write(sample_event(self.run_id, i, elapsed, samples[i]))
        self._traced = len(samples)
        write(decision_event(self.run_id, elapsed, state, reason))

    def stop(self, result: Result) -> None:
        """Write the stop event."""
        self._writer.write(stop_event(self.run_id, result))

    def close(self) -> None:
        """Close the file if this log opened it."""
        if self._writer is not self._target:
            self._writer.close()


def run_config(
    policy: object,
    aggregator: object,
    budget: Budget,
    deadline: float | None,
    concurrency: int | str,
    sample_timeout: float | None,
    max_failures: int | None,
) -> dict[str, Any]:
    """The ``config`` of a trace's start event."""
    return {
        "policy": _safe_repr(policy),
        "aggregator": _safe_repr(aggregator),
        "budget": budget.to_dict(),
        "deadline": deadline,
        "concurrency": concurrency,
        "sample_timeout": sample_timeout,
        "max_failures": max_failures,
    }


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} with a broken repr>"


class RunUpdates:
    """The snapshots of a run from the moment it was asked for, as an async iterator that ends with the run.

    ``async for state in run.updates():`` needs no ``with``: the stream closes itself at the end of
    the run, or when the reader drops it (``break``); ``with run.updates() as updates:`` closes it at
    once when the block ends. Snapshots are buffered, so a slow reader still sees every one.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[RunState]) -> None:
        self._receive = receive

    def __aiter__(self) -> RunUpdates:
        return self

    async def __anext__(self) -> RunState:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.close()
            raise StopAsyncIteration from None

    async def receive(self) -> RunState:
        """The next snapshot; raises ``anyio.EndOfStream`` once the run has ended and all were read."""
        return await self._receive.receive()

    def close(self) -> None:
        """Stop receiving; the run stops feeding this stream."""
        self._receive.close()

    def __enter__(self) -> RunUpdates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped without being read to the end: close it, so nothing is left open.
        self._receive.close()


class Run:
    """A run in progress: read :attr:`best` or :attr:`state` at any moment, or follow :meth:`updates`.

    Made by :func:`open_run`; the samples are drawn by a task in the ``async with`` block's own task
    group, so leaving the block always stops the run (nothing outlives it). Leaving it before the run
    has ended stops the run as if its deadline had come.
    """

    def __init__(
        self,
        sampler: Sampler,
        *,
        policy: PolicyLike | None = None,
        budget: Budget | None = None,
        deadline: float | None = None,
        concurrency: Concurrency = "auto",
        aggregator: Aggregator | None = None,
        fallback: object = None,
        trace: str | os.PathLike[str] | IO[str] | TraceWriter | None = None,
        sample_timeout: float | None = None,
        max_failures: int | None = 16,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not callable(sampler):
            raise TypeError(f"sampler must be an async callable returning a budgetctl.Sample, got {sampler!r}")
        plan = parse_concurrency(concurrency)
        check_run_args(
            deadline=deadline,
            concurrency=plan if isinstance(plan, int) else plan.cap,
            max_failures=max_failures,
            sample_timeout=sample_timeout,
        )
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"budget must be a budgetctl.Budget or None, got {budget!r}")
        if aggregator is not None and not hasattr(aggregator, "start"):
            raise TypeError(f"aggregator must be an Aggregator (with .start()), got {aggregator!r}")
        self._sampler = sampler
        self._policy = as_policy(policy)
        self._aggregator = aggregator if aggregator is not None else MajorityVote()
        self._deadline = deadline
        #: What the trace records: the most in flight, or the plan.
        self._concurrency: int | str = plan if isinstance(plan, int) else str(plan)
        #: The calls in flight: when each started, what each showed (the latency estimate), what was lost.
        self._flights = Flights(None if isinstance(plan, int) else LatencyEstimate(prior_latency=plan.prior_latency))
        self._fallback = fallback
        self._sample_timeout = sample_timeout
        self._trace_target = trace
        self._trace: RunLog | None = None
        self._meta = dict(meta) if meta else {}
        self._core = RunCore(
            policy=self._policy,
            aggregator=self._aggregator,
            budget=budget,
            deadline=deadline,
            max_failures=max_failures,
            concurrency=plan if isinstance(plan, int) else plan.cap,
            planner=None if isinstance(plan, int) else Planner(plan, self._flights.latency),
        )
        self._id: str | None = None
        self._result: Result | None = None
        self._done: anyio.Event | None = None  # made by the first wait(): solve never needs one
        self._subscribers: list[MemoryObjectSendStream[RunState]] = []
        self._task_group: TaskGroup | None = None
        #: The clock at which the run started: when open_run or solve was called (set by them;
        #: else when the block is entered).
        self._t0: float | None = None
        self._traced = 0
        #: A policy bug or a BaseException of a sampler, raised as itself once the run has stopped.
        self._raise: BaseException | None = None

    # -- what callers read ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Identifies this run in trace logs (made on first use)."""
        if self._id is None:
            self._id = uuid.uuid4().hex[:12]
        return self._id

    @property
    def state(self) -> RunState:
        """The latest snapshot of the run (the final one once it has ended)."""
        return self._result.state if self._result is not None else self._core.state

    @property
    def best(self) -> Any:
        """The current best answer, or the fallback while no sample has voted."""
        answer = self.state.answer
        return self._fallback if answer is None else answer

    @property
    def result(self) -> Result | None:
        """The result once the run has ended, else ``None``."""
        return self._result

    @property
    def done(self) -> bool:
        """Whether the run has ended."""
        return self._result is not None

    async def wait(self) -> Result:
        """Wait for the run to end and return its result."""
        if self._result is None:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()
        assert self._result is not None
        return self._result

    def updates(self) -> RunUpdates:
        """A stream of every snapshot from now on, closed when the run ends (``async for state in ...``).

        Each call gives an independent stream; snapshots are buffered, so a slow reader sees them all.
        The stream closes itself when read to the end or dropped; ``with run.updates() as updates:``
        closes it at once.
        """
        send, receive = anyio.create_memory_object_stream[RunState](math.inf)
        updates = RunUpdates(receive)
        if self._result is not None:
            send.close()
        else:
            self._subscribers.append(send)
        return updates

    # -- lifecycle -----------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._t0 is None:
            self._t0 = anyio.current_time()
        if self._trace_target is not None:
            self._trace = RunLog(self.id, self._trace_target)
            core = self._core
            self._trace.start(
                run_config(
                    self._policy,
                    self._aggregator,
                    core.budget,
                    self._deadline,
                    self._concurrency,
                    self._sample_timeout,
                    core.max_failures,
                ),
                self._meta,
            )

    def _close(self) -> None:
        try:
            if self._result is None:
                # Left early (or cancelled from outside): the best so far is still the result.
                self._finish(self._core.time_reason(), anyio.current_time())
        finally:  # a failing trace write in _finish must not leave the trace file open
            if self._trace is not None:
                self._trace.close()

    async def _run_to_end(self) -> Result:
        # What ``async with run: await run.wait()`` does, with the engine in the caller's own task:
        # no background task, task group or event to set up and tear down (solve's fast path).
        self._start()
        try:
            await self._drive()
        finally:
            self._close()
        self._reraise()
        assert self._result is not None
        return self._result

    def _reraise(self) -> None:
        error, self._raise = self._raise, None
        if error is not None:
            if isinstance(error, PolicyError):
                error.result = self._result
            raise error

    async def __aenter__(self) -> Run:
        self._start()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._drive, name=f"budgetctl run {self.id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        if not self.done:
            self._task_group.cancel_scope.cancel()
        try:
            suppress = await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The block's own exception comes back wrapped by the task group (the run's task never
            # raises): let it propagate as itself, so ``except ValueError`` around the block works.
            if exc is not None and all(e is exc for e in group.exceptions):
                return None
            raise
        finally:
            self._close()
        if exc is None:
            self._reraise()
        return suppress

    # -- the driver: events to the engine, its actions to tasks ------------------------------------
    async def _drive(self) -> None:
        core = self._core
        assert self._t0 is not None
        reason = core.start(self._t0) or core.expired(anyio.current_time())
        send, receive = anyio.create_memory_object_stream[_Outcome](math.inf)
        sampler, sample_timeout = self._sampler, self._sample_timeout
        flights = self._flights
        now = self._t0
        with send, receive:
            calls = await Calls.open()
            try:
                # The time limit cancels this wait at once; leaving it cancels the calls (finally).
                with anyio.CancelScope(deadline=core.limit_at):
                    while reason is None:
                        launch = core.fill()
                        if launch:
                            first = core.n_launched - launch
                            for index in range(first, first + launch):
                                flights.launched(index, now)
                                calls.start(sample_once, sampler, index, send, sample_timeout)
                        # Outcomes already waiting are taken without a trip through the event loop
                        # (one per sample adds up), each still judged on its own.
                        try:
                            item = receive.receive_nowait()
                        except anyio.WouldBlock:
                            item = None  # wait outside the handler: no exception kept alive meanwhile
                        if item is None:
                            item = await receive.receive()
                        index, outcome, latency, final = item
                        now = anyio.current_time()
                        if type(outcome) is Escalated:
                            self._raise = outcome.error
                            reason = "error"
                            break
                        reason = core.expired(now)
                        if reason is not None:  # past the limit: as if it had cancelled the call first
                            break
                        core.wasted(flights.arrived(index, outcome, latency, now, final=final))
                        try:
                            reason = core.outcome(outcome, latency, now, final=final)
                        except PolicyError as error:
                            self._raise = error
                            reason = "error"
                        state = core.state
                        if self._trace is not None:
                            self._trace.step(core.samples, state, reason)
                        self._publish(state)
            finally:
                await calls.aclose()
        if reason is None:  # the time limit cancelled the wait
            now = anyio.current_time()
            reason = core.time_reason()
        self._finish(reason, now)

    def _finish(self, reason: StopReason, now: float) -> None:
        self._core.wasted(self._flights.cancelled(now))
        self._result = result = self._core.finish(reason, now, fallback=self._fallback)
        if self._trace is not None:
            self._trace.stop(result)
        self._publish(result.state)
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
        if self._done is not None:
            self._done.set()

    def _publish(self, state: RunState) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(state)
            except anyio.BrokenResourceError:  # the reader closed its stream: stop feeding it
                subscriber.close()
                self._subscribers.remove(subscriber)


async def sample_once(
    sampler: Sampler, index: int, send: MemoryObjectSendStream[_Outcome], sample_timeout: float | None
) -> None:
    """Call ``sampler`` once and send what it gave as ``(index, outcome, latency, final)`` to ``send``.

    The one way budgetctl calls a sampler, for a run and for the scheduler alike: the outcome is a
    sample, a batch, or the exception the call raised (a failing sampler is data, never a crash);
    a streaming call sends each partial answer as it comes (``final=False``), then
    :data:`~budgetctl._core.END_OF_STREAM`. ``send`` is shared by all calls of a run: its owner
    closes it once they have all ended.
    """
    started = anyio.current_time()
    outcome: object = END_OF_STREAM
    try:
        if sample_timeout is None:  # no cancel scope to set up per call
            outcome = await _call(sampler, index, send, started)
        else:
            # move_on_after, not fail_after: a TimeoutError the sampler raises itself (an HTTP
            # client's) is its own error, not our sample_timeout.
            with anyio.move_on_after(sample_timeout) as timeout:
                outcome = await _call(sampler, index, send, started)
            if timeout.cancelled_caught:
                outcome = TimeoutError(f"sample timed out after {sample_timeout} s")
    except Exception as error:  # a failing sampler is data for the run, never a crash
        outcome = error
    except BaseException as error:
        if _is_cancellation(error):
            raise  # the run (or its caller) cancelled this call: let the cancellation do its work
        if isinstance(error, asyncio.CancelledError) or _is_foreign_cancel(error):
            # A sampler that raised a cancellation of its own (no one cancelled us): a failed sample.
            outcome = RuntimeError(f"sampler raised {type(error).__name__} without being cancelled")
        else:  # KeyboardInterrupt, SystemExit...: the caller's, raised by the run's driver as itself
            outcome = Escalated(error)
    # The run may have ended without it (an abandoned call): its outcome is then dropped.
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        send.send_nowait((index, outcome, anyio.current_time() - started, True))


def _is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is a real cancellation of the current task (not one a sampler made up)."""
    if not isinstance(error, anyio.get_cancelled_exc_class()):
        return False
    if anyio.current_effective_deadline() == -math.inf:  # an enclosing cancel scope was cancelled
        return True
    task = asyncio.current_task() if isinstance(error, asyncio.CancelledError) else None
    return task is not None and task.cancelling() > 0  # cancelled from outside anyio (task.cancel())


def _is_foreign_cancel(error: BaseException) -> bool:
    # trio.Cancelled on a loop that is not trio's (or raised where trio did not cancel anything).
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.Cancelled)


async def _call(sampler: Sampler, index: int, send: MemoryObjectSendStream[_Outcome], started: float) -> object:
    call = sampler()
    if isinstance(call, AsyncIterator):
        # A stream of partial answers (probes of one chain of thought): each is recorded and
        # judged as it comes; stopping the run cancels the stream.
        async with _closing(call):
            async for item in call:
                try:
                    send.send_nowait((index, item, anyio.current_time() - started, False))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break  # the run has ended: stop reading the stream
        return END_OF_STREAM
    return await call


@asynccontextmanager
async def _closing(stream: AsyncIterator[Any]) -> AsyncIterator[None]:
    # Close an async generator when we stop reading it, so its own cleanup (an HTTP stream) runs.
    try:
        yield
    finally:
        if isinstance(stream, AsyncGenerator):
            with anyio.CancelScope(shield=True):
                await stream.aclose()


def open_run(
    sampler: Sampler,
    *,
    policy: PolicyLike | None = None,
    budget: Budget | None = None,
    deadline: float | None = None,
    concurrency: Concurrency = "auto",
    aggregator: Aggregator | None = None,
    fallback: object = None,
    trace: str | os.PathLike[str] | IO[str] | TraceWriter | None = None,
    sample_timeout: float | None = None,
    max_failures: int | None = 16,
    meta: Mapping[str, Any] | None = None,
) -> Run:
    """Start a run for ``async with``: samples are drawn in the background while the block runs.

    ``async with open_run(sampler, deadline=1.0) as run:`` then read ``run.best`` at any moment,
    ``async for state in run.updates()`` to follow it, or ``await run.wait()`` for the result.
    Arguments are those of :func:`solve`, checked here before any work starts. The deadline is
    measured from this call (when made inside the event loop; else from entering the block).
    """
    started = clock()
    run = Run(
        sampler,
        policy=policy,
        budget=budget,
        deadline=deadline,
        concurrency=concurrency,
        aggregator=aggregator,
        fallback=fallback,
        trace=trace,
        sample_timeout=sample_timeout,
        max_failures=max_failures,
        meta=meta,
    )
    run._t0 = started
    return run


async def solve(
    sampler: Sampler,
    *,
    policy: PolicyLike | None = None,
    budget: Budget | None = None,
    deadline: float | None = None,
    concurrency: Concurrency = "auto",
    aggregator: Aggregator | None = None,
    fallback: object = None,
    trace: str | os.PathLike[str] | IO[str] | TraceWriter | None = None,
    sample_timeout: float | None = None,
    max_failures: int | None = 16,
    meta: Mapping[str, Any] | None = None,
) -> Result:
    """Draw samples until the policy, the budget or the deadline says stop; return the best answer.

    Never raises for a slow or failing sampler: at the deadline the current best is returned (or
    ``fallback`` if nothing voted) with ``stop_reason="deadline"``.

    Args:
        sampler: async callable returning a :class:`Sample` (or a list, for a batched call).
        policy: when to stop (``AdaptiveConsistency(0.95) | MaxSamples(40)``, or ``state -> bool``);
            ``None`` samples until a budget, the deadline or the sampler runs out.
        budget: caps on samples, tokens, dollars and seconds.
        deadline: seconds from this call (setup included); at it, samples in flight are cancelled and
            the best is returned.
        concurrency: most sampler calls in flight at once (an int), or ``"auto"`` (the default; or
            :class:`~budgetctl.Auto`, ``"auto:fast"``...): plan them at every arrival from the time
            left, the measured latency and the samples the policy is expected to still need.
        aggregator: how samples become an answer (default :class:`MajorityVote`).
        fallback: the answer when no sample voted.
        trace: path or text stream (or :class:`TraceWriter`) to append the run's events to.
        sample_timeout: seconds after which one sampler call is abandoned and recorded as failed.
        max_failures: failed samples tolerated (each is retried by the next launch) before the run
            stops with ``stop_reason="error"``; ``None`` tolerates any number.
        meta: JSON-ready data written into the trace's start event (question id, gold answer...).
    """
    started = anyio.current_time()  # the caller's clock: everything below counts against the deadline
    run = Run(
        sampler,
        policy=policy,
        budget=budget,
        deadline=deadline,
        concurrency=concurrency,
        aggregator=aggregator,
        fallback=fallback,
        trace=trace,
        sample_timeout=sample_timeout,
        max_failures=max_failures,
        meta=meta,
    )
    run._t0 = started
    return await run._run_to_end()


def solve_sync(sampler: Sampler, *, backend: str = "asyncio", **kwargs: Any) -> Result:
    """:func:`solve` for synchronous callers: runs it to the end in a new event loop (``backend``: asyncio or trio).

    Takes the same keyword arguments as :func:`solve`. Inside a running event loop (a Jupyter
    notebook, an async function) it raises ``RuntimeError``: use ``await budgetctl.solve(...)`` there.
    """
    if _loop_running():
        raise RuntimeError(
            "solve_sync cannot run inside a running event loop (Jupyter, an async function): "
            "use `await budgetctl.solve(...)` there"
        )
    return anyio.run(functools.partial(solve, sampler, **kwargs), backend=backend)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return True
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True
