"""Shared test fixtures and helpers.

* ``anyio_backend`` runs every ``@pytest.mark.anyio`` test on asyncio and on trio.
* :func:`make_state` builds a :class:`~budgetctl.RunState` for pure policy tests (tenacity's
  ``make_retry_state``): give the vote ``counts`` and the leader, runner-up and totals follow.
* :func:`states_after` feeds answers through the real :class:`~budgetctl._core.RunCore`, for states
  exactly as a run would see them.
* :class:`Replay` is a fake sampler that replays a script of outcomes (samples, exceptions,
  hangs, garbage) and records what happened to each call, cancellation included.
* :func:`run_virtual` runs a coroutine on trio under an autojumping ``MockClock``: sleeps take no
  real time, so deadline tests are exact and fast.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import pytest
import trio
from trio.testing import MockClock

from budgetctl import RunState, Sample
from budgetctl._core import RunCore
from budgetctl.policies import Never

T = TypeVar("T")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every anyio test runs on both backends."""
    return str(request.param)


def make_state(counts: Mapping[Any, float] | None = None, **overrides: Any) -> RunState:
    """A consistent :class:`RunState` from vote ``counts`` (insertion order breaks ties), then ``overrides``.

    ``make_state({"a": 3, "b": 1})`` is the state after four unanimous-ish samples: leader ``"a"``
    with 3 votes, runner-up 1, total 4, confidence 0.75. Any field can be overridden by name.
    """
    counts = dict(counts or {})
    leader: Hashable = None
    leader_votes = 0.0
    for key, votes in counts.items():
        if votes > leader_votes:
            leader, leader_votes = key, float(votes)
    others = [float(v) for k, v in counts.items() if k != leader]
    runner_up = max(others, default=0.0)
    total = float(sum(counts.values()))
    n = math.ceil(total)
    fields: dict[str, Any] = {
        "n_samples": n,
        "n_failed": 0,
        "n_in_flight": 0,
        "tokens": 10 * n,
        "dollars": 0.0,
        "elapsed": 0.0,
        "time_left": None,
        "samples_left": None,
        "tokens_left": None,
        "answer": leader,
        "confidence": leader_votes / total if total else 0.0,
        "leader_votes": leader_votes,
        "runner_up_votes": runner_up,
        "total_votes": total,
        "n_abstained": 0,
        "n_distinct": len(counts),
        "leader_streak": 1 if leader is not None else 0,
        "answer_run": 1 if leader is not None else 0,
        "first_tokens": 10 if n else None,
        "leader_sample_confidence": None,
        "leader_score": None,
        "settled": False,
        "counts": MappingProxyType(counts),
    }
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"make_state: unknown RunState fields {sorted(unknown)}")
    fields.update(overrides)
    return RunState(**fields)


def states_after(samples: Iterable[Sample | Hashable], **core_args: Any) -> list[RunState]:
    """The snapshots a real run takes after each of ``samples`` (bare answers become ``Sample(answer=a)``)."""
    core_args.setdefault("policy", Never())
    core = RunCore(**core_args)
    states: list[RunState] = []
    for item in samples:
        sample = item if isinstance(item, Sample) else Sample(answer=item, tokens=1)
        core.launch()
        states.append(core.record(sample, 0.0, float(len(states) + 1)))
    return states


class Hang:
    """A script step that never returns (until cancelled)."""

    def __repr__(self) -> str:
        return "HANG"


HANG = Hang()


class Replay:
    """A fake sampler replaying ``script`` one step per call; then raises :class:`~budgetctl.Exhausted`.

    A step is a :class:`Sample` (returned), an exception instance (raised), :data:`HANG` (sleeps
    until cancelled), a function (called inside the sampler, and what it gives is returned, so a
    sample that fails to build fails the call), or anything else (returned as is: garbage).
    ``delay`` seconds (a number or a per-call sequence) are slept before each step. It counts
    calls, calls in flight (and the most at once), cancellations, and calls that ended any way.
    """

    def __init__(
        self,
        script: Sequence[object],
        *,
        delay: float | Sequence[float] = 0.0,
        exhaust: bool = True,
    ) -> None:
        self.script = list(script)
        self.delay = delay
        self.exhaust = exhaust
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.finished = 0
        self.returned: list[object] = []

    def _delay(self, index: int) -> float:
        if isinstance(self.delay, int | float):
            return float(self.delay)
        return float(self.delay[index % len(self.delay)])

    async def __call__(self) -> Any:
        index = self.calls
        self.calls += 1
        if index >= len(self.script):
            if self.exhaust:
                from budgetctl import Exhausted

                raise Exhausted
            index %= len(self.script)
        step = self.script[index]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            delay = self._delay(index)
            if delay:
                await anyio.sleep(delay)
            if step is HANG:
                await anyio.sleep_forever()
            if isinstance(step, BaseException):
                raise step
            if callable(step):
                step = step()
            self.returned.append(step)
            return step
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
            self.finished += 1


def run_virtual(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on trio under an autojumping ``MockClock`` (virtual time starting at 0)."""
    return trio.run(fn, clock=MockClock(autojump_threshold=0))
