"""Faults through every door (``solve``, ``open_run``, ``Scheduler.solve``), on asyncio and on trio.

A sampler fault is a failed sample; what is not a sampler's fault is raised as itself, never
wrapped in an ``ExceptionGroup``: a policy that raises (:class:`~budgetctl.policies.PolicyError`,
with the result so far), a policy class given for an instance (``TypeError`` before any call),
``SystemExit``/``KeyboardInterrupt`` from a sampler. A sampler that ignores its cancellation
cannot hold the result: the run returns without waiting for its cleanup.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
from conftest import HANG, Replay, run_virtual

import budgetctl as bc
from budgetctl import Sample, Scheduler
from budgetctl._calls import ABANDON_AFTER
from budgetctl.policies import MaxSamples, PolicyError

pytestmark = pytest.mark.anyio

DOORS = ["solve", "open_run", "scheduler"]


async def through(door: str, sampler: Any, **kwargs: Any) -> bc.Result:
    """Run ``sampler`` through one of the doors and return its result."""
    if door == "solve":
        return await bc.solve(sampler, **kwargs)
    if door == "open_run":
        async with bc.open_run(sampler, **kwargs) as run:
            return await run.wait()
    async with Scheduler(slots=4) as sched:
        return await sched.solve(sampler, **kwargs)


def script(*steps: object) -> Replay:
    return Replay(list(steps), exhaust=False)


def good(answer: str = "a") -> Sample:
    return Sample(answer=answer, tokens=3)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class HashOnce:
    """An answer whose hash works once (when the Sample checks it), then raises."""

    def __init__(self) -> None:
        self.hashed = 0

    def __hash__(self) -> int:
        self.hashed += 1
        if self.hashed > 1:
            raise RuntimeError("hash failed")
        return 1


def raise_cancelled_of_asyncio() -> Sample:
    raise asyncio.CancelledError()


# -- sampler faults are failed samples ------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
async def test_a_sampler_that_raises_cancelled_itself_is_a_failed_sample(door: str) -> None:
    # No one cancelled the call: the CancelledError is the sampler's own (a bug, or a leaked one).
    result = await through(door, script(raise_cancelled_of_asyncio, good(), good()), policy=MaxSamples(2))
    assert result.stop_reason == "policy" and result.n_samples == 2 and result.n_failed == 1
    assert "CancelledError" in result.errors[0]


@pytest.mark.parametrize("door", DOORS)
async def test_a_cancellation_leaked_from_the_samplers_own_scope_is_a_failed_sample(door: str) -> None:
    async def leak() -> Sample:
        caught: BaseException | None = None
        with anyio.CancelScope() as inner:
            inner.cancel()
            try:
                await anyio.sleep(1)
            except anyio.get_cancelled_exc_class() as error:
                caught = error
        assert caught is not None
        raise caught

    calls = [0]

    async def sampler() -> Sample:
        calls[0] += 1
        return await leak() if calls[0] == 1 else good()

    result = await through(door, sampler, policy=MaxSamples(2))
    assert result.stop_reason == "policy" and result.n_samples == 2 and result.n_failed == 1


@pytest.mark.parametrize("door", DOORS)
async def test_broken_exceptions_results_and_answers_are_failed_samples(door: str) -> None:
    def bad_hash() -> Sample:
        return Sample(answer=HashOnce(), tokens=2)

    sampler = script(BrokenStr(), BrokenRepr(), bad_hash, good(), good())
    result = await through(door, sampler, policy=MaxSamples(2), max_failures=None)
    assert result.stop_reason == "policy" and result.answer == "a"
    assert result.n_failed == 3 and result.n_samples == 2
    errors = " / ".join(result.errors)
    assert "unprintable BrokenStr" in errors
    assert "broken value" in errors and "no repr" in errors
    assert "cannot be counted" in errors and "hash failed" in errors


@pytest.mark.parametrize("door", DOORS)
async def test_real_cancellation_from_outside_is_still_honoured(door: str) -> None:
    sampler = Replay([HANG, HANG], exhaust=False)
    with anyio.move_on_after(0.05) as scope:
        await through(door, sampler, concurrency=2)
    assert scope.cancelled_caught and sampler.cancelled == sampler.calls >= 1 and sampler.in_flight == 0


# -- not the sampler's fault: raised as itself -------------------------------------------------------


def exploding(state: bc.RunState) -> bool:
    if state.n_samples >= 2:
        raise ZeroDivisionError("policy bug")
    return False


@pytest.mark.parametrize("door", DOORS)
async def test_a_policy_that_raises_is_a_policy_error_with_the_result_so_far(door: str) -> None:
    sampler = script(good("x"), good("x"), good("y"))
    with pytest.raises(PolicyError, match="policy bug") as info:
        await through(door, sampler, policy=exploding)
    error = info.value
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert error.result is not None and error.result.stop_reason == "error"
    assert error.result.answer == "x" and error.result.n_samples == 2


@pytest.mark.parametrize("door", DOORS)
async def test_a_policy_class_is_refused_before_any_call(door: str) -> None:
    sampler = script(good())
    with pytest.raises(TypeError, match="class MaxSamples"):
        await through(door, sampler, policy=MaxSamples)
    assert sampler.calls == 0
    with pytest.raises(TypeError, match="class MaxSamples"):
        Scheduler(slots=1, policy=MaxSamples)  # type: ignore[arg-type]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
async def test_system_exit_and_keyboard_interrupt_propagate_as_themselves(door: str, error: BaseException) -> None:
    sampler = script(good(), error, good())
    with pytest.raises(type(error)) as info:
        await through(door, sampler, concurrency=1, policy=MaxSamples(5))
    assert info.value is error  # itself, not a BaseExceptionGroup around it


# -- a sampler whose cleanup ignores cancellation --------------------------------------------------------


class Stubborn:
    """A sampler that hangs, and whose cleanup holds on (shielded) until the test releases it."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.cleaned = anyio.Event()

    async def __call__(self) -> Sample:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await self.release.wait()
            self.cleaned.set()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("door", DOORS)
async def test_a_stubborn_sampler_cannot_hold_the_result(door: str) -> None:
    stubborn = Stubborn()
    result = await through(door, stubborn, deadline=0.05, concurrency=1)
    # The result came back while the sampler's cleanup still holds on: it was abandoned.
    assert result.stop_reason == "deadline" and result.n_cancelled == 1
    assert not stubborn.cleaned.is_set()
    stubborn.release.set()  # its cleanup ends later, in the event loop's call host
    with anyio.fail_after(5):
        await stubborn.cleaned.wait()


def test_the_wait_for_a_stubborn_sampler_is_bounded_in_virtual_time() -> None:
    async def main() -> tuple[float, bc.Result]:
        stubborn = Stubborn()
        started = anyio.current_time()
        result = await bc.solve(stubborn, deadline=1.0, concurrency=1)
        returned = anyio.current_time() - started
        stubborn.release.set()
        await stubborn.cleaned.wait()
        return returned, result

    returned, result = run_virtual(main)
    assert result.stop_reason == "deadline"
    assert returned == pytest.approx(1.0 + ABANDON_AFTER)


# -- solve_sync in a running loop -----------------------------------------------------------------------


async def test_solve_sync_inside_a_running_loop_says_to_await_solve() -> None:
    sampler = script(good())
    with pytest.raises(RuntimeError, match=r"await budgetctl\.solve"):
        bc.solve_sync(sampler)
    assert sampler.calls == 0
