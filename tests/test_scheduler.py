"""The live scheduler: floor, priority, deadlines, admission control, capacity, faults, cancellation.

Timing is virtual (trio under an autojumping ``MockClock``, :func:`run_virtual`): sleeps take no
real time, so "the slot went to B at t = 1.0" is an exact, fast assertion, never a timed one.
Requests that arrive "together" are started a microsecond apart so their arrival order is fixed.
"""

from __future__ import annotations

import gc
import math
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from conftest import run_virtual

import budgetctl as bc
from budgetctl import Budget, Result, RunState, Sample, Scheduler
from budgetctl.policies import AdaptiveConsistency, MaxSamples, StopPolicy
from budgetctl.sched import LookaheadGain

Log = list[tuple[float, str]]


def sampler(name: str, log: Log, answers: Any = "x", latency: float = 1.0, tokens: int = 10) -> Any:
    """A sampler that logs (start time, name) of each call, then answers after ``latency`` seconds."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    calls = [0]

    async def call() -> Sample:
        log.append((anyio.current_time(), name))
        answer = answers[calls[0] % len(answers)]
        calls[0] += 1
        await anyio.sleep(latency)
        return Sample(answer=answer, tokens=tokens)

    return call


@dataclass(frozen=True)
class FixedGain:
    """A gain model predicting the same gain for every sample of a request (for ordering tests)."""

    gain: float
    tokens: float = 10.0

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        return self.gain * horizon

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        return self.tokens * horizon


async def arrive(tg: Any, order: list[Callable[[], Awaitable[Any]]], gap: float = 1e-6) -> None:
    """Start each coroutine function in ``order``, ``gap`` seconds apart (a fixed arrival order)."""
    for fn in order:
        tg.start_soon(fn)
        await anyio.sleep(gap)


def names(log: Log) -> list[str]:
    return [name for _, name in log]


# -- allocation ---------------------------------------------------------------------------------------


def test_every_request_gets_its_floor_sample_before_anyone_gets_a_second() -> None:
    log: Log = []
    results: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(3)) as sched:

            def request(name: str) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    results[name] = await sched.solve(sampler(name, log), gain=FixedGain(1.0 if name == "a" else 0.1))

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request(n) for n in "abcd"])

    run_virtual(main)
    assert sorted(names(log)[:4]) == ["a", "b", "c", "d"]  # "a" has the best gain, yet waits its turn
    assert names(log)[4:6] == ["a", "a"]
    assert all(r.n_samples == 3 and r.answer == "x" for r in results.values())


def test_slots_go_by_gain_per_token_times_value() -> None:
    log: Log = []

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(3)) as sched:
            specs = {
                "low": (FixedGain(0.1), 1.0),
                "mid": (FixedGain(0.3), 1.0),
                "valued": (FixedGain(0.2), 2.0),  # 0.2 x 2 = 0.4: first
                "cheap": (FixedGain(0.1, tokens=2.0), 1.0),  # 0.05 per token, 5x "low"'s 0.01
            }

            def request(name: str) -> Callable[[], Awaitable[None]]:
                gain, value = specs[name]

                async def run() -> None:
                    await sched.solve(sampler(name, log), gain=gain, value=value)

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request(n) for n in specs])

    run_virtual(main)
    after_floor = names(log)[4:]
    assert after_floor == ["cheap", "cheap", "valued", "valued", "mid", "mid", "low", "low"]


def test_equal_gains_go_to_the_earliest_deadline_first() -> None:
    log: Log = []

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(2), gain=FixedGain(0.5)) as sched:

            def request(name: str, deadline: float) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    await sched.solve(sampler(name, log), deadline=deadline)

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request("first", 100.0), request("late", 90.0), request("early", 50.0)])

    run_virtual(main)
    # "first" takes the idle slot on arrival; the other floors go earliest deadline first, then seconds too.
    assert names(log) == ["first", "early", "late", "early", "late", "first"]


def test_lookahead_gain_sends_samples_where_the_answer_can_still_change() -> None:
    # After their floors, a request whose two samples disagree (a tie) gets the next slot before
    # one whose two samples agree; the vote-uncertainty model would agree, but the lookahead one
    # also prefers a single vote (which two more samples can overturn) to a two-vote lead.
    state_tie = _state_after(["a", "b"])
    state_agree = _state_after(["a", "a"])
    state_single = _state_after(["a"])
    state_two_one = _state_after(["a", "a", "b"])
    gain = LookaheadGain()
    rate = _best_rate
    assert rate(gain, state_tie) > rate(gain, state_single) > rate(gain, state_two_one) > rate(gain, state_agree)
    assert gain.predict_gain(state_single, 1) == 0.0  # one more sample can never overturn a single vote
    assert gain.predict_gain(state_agree, 2) == 0.0  # nor two a two-vote lead


def _state_after(answers: list[str]) -> RunState:
    from conftest import states_after

    return states_after(answers)[-1]


def _best_rate(gain: Any, state: RunState) -> float:
    from budgetctl.sched._allocate import marginal_rate

    return marginal_rate(gain, state, 0, 3)


# -- deadlines and admission ------------------------------------------------------------------------------


def test_at_its_deadline_a_request_returns_its_current_best() -> None:
    log: Log = []

    async def main() -> Result:
        async with Scheduler(slots=4) as sched:
            return await sched.solve(sampler("a", log, answers=["x", "x", "y"]), deadline=2.5)

    result = run_virtual(main)
    assert (result.answer, result.stop_reason) == ("x", "deadline")
    assert (result.n_samples, result.n_cancelled) == (2, 1)
    assert result.elapsed == 2.5


def test_a_request_still_waiting_for_a_slot_at_its_deadline_returns_its_fallback() -> None:
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=1) as sched:

            async def hog() -> None:
                out["hog"] = await sched.solve(sampler("hog", log, latency=100.0), deadline=50.0)

            async def late() -> None:
                out["late"] = await sched.solve(sampler("late", log), deadline=1.0, fallback="sorry")

            async with anyio.create_task_group() as tg:
                await arrive(tg, [hog, late])

    run_virtual(main)
    assert (out["late"].answer, out["late"].stop_reason, out["late"].n_samples) == ("sorry", "deadline", 0)
    assert out["late"].elapsed == pytest.approx(1.0)
    assert names(log) == ["hog"]
    assert out["hog"].stop_reason == "deadline"


def test_admission_control_answers_at_once_when_the_first_sample_would_come_after_the_deadline() -> None:
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(2)) as sched:
            out["warm"] = await sched.solve(sampler("warm", log, latency=1.0))  # the scheduler learns: ~1 s a sample

            def request(name: str, deadline: float) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    out[name] = await sched.solve(sampler(name, log), deadline=deadline, fallback="busy")

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request(f"q{i}", 100.0) for i in range(3)] + [request("hurried", 0.5)])
            out["stats"] = sched.stats()  # type: ignore[assignment]

    run_virtual(main)
    hurried = out["hurried"]
    assert (hurried.answer, hurried.stop_reason, hurried.n_samples, hurried.elapsed) == ("busy", "budget", 0, 0.0)
    assert all(out[f"q{i}"].stop_reason == "policy" for i in range(3))
    assert "hurried" not in names(log)
    stats: Any = out["stats"]
    assert (stats.rejected, stats.admitted, stats.finished) == (1, 4, 5)


def test_admission_counts_only_the_requests_due_before_it() -> None:
    # Floor samples go earliest deadline first: an urgent request arriving behind many relaxed ones
    # is admitted (it will be served first); one that would still wait past its deadline is not.
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(1)) as sched:
            await sched.solve(sampler("warm", log, latency=1.0))

            def request(name: str, deadline: float) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    out[name] = await sched.solve(sampler(name, log), deadline=deadline, fallback="busy")

                return run

            relaxed = [request(f"r{i}", 8.0) for i in range(6)]
            async with anyio.create_task_group() as tg:
                await arrive(tg, [*relaxed, request("urgent", 2.5), request("too late", 0.5)])

    run_virtual(main)
    assert (out["urgent"].answer, out["urgent"].stop_reason) == ("x", "policy")
    assert names(log)[:3] == ["warm", "r0", "urgent"]  # r0 took the idle slot on arrival
    assert (out["too late"].stop_reason, out["too late"].n_samples) == ("budget", 0)
    assert names(log)[3:] == [f"r{i}" for i in range(1, 6)]


def test_a_spent_shared_budget_ends_waiting_requests_with_their_best_and_turns_new_ones_away() -> None:
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=2, budget=Budget(samples=5), gain=FixedGain(0.5)) as sched:

            def request(name: str) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    out[name] = await sched.solve(sampler(name, log, answers=name), fallback="none")

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request(n) for n in "abc"])
            out["d"] = await sched.solve(sampler("d", log), fallback="none")
            out["stats"] = sched.stats()  # type: ignore[assignment]

    run_virtual(main)
    assert len(log) == 5
    for name in "abc":
        assert (out[name].answer, out[name].stop_reason) == (name, "budget")
    assert (out["d"].answer, out["d"].stop_reason, out["d"].n_samples) == ("none", "budget", 0)
    stats: Any = out["stats"]
    assert (stats.window_samples, stats.rejected, stats.running, stats.in_use) == (5, 1, 0, 0)


# -- capacity ---------------------------------------------------------------------------------------------------


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """Most calls running at once, a call's slot being free from the instant it ends (half-open spans)."""
    edges = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_slots_in_use_never_exceed_the_slots() -> None:
    spans: list[tuple[float, float]] = []

    async def main() -> list[Result]:
        rng = random.Random(7)
        results: list[Result] = []
        async with Scheduler(slots=3, policy=AdaptiveConsistency(0.9) | MaxSamples(6)) as sched:

            def request() -> Callable[[], Awaitable[None]]:
                answers = [rng.choice("abc") for _ in range(6)]

                async def call() -> Sample:
                    began = anyio.current_time()
                    try:
                        await anyio.sleep(rng.uniform(0.1, 2.0))
                    finally:
                        spans.append((began, anyio.current_time()))
                    return Sample(answer=rng.choice(answers), tokens=5)

                async def run() -> None:
                    results.append(await sched.solve(call, deadline=rng.uniform(1.0, 20.0)))

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [request() for _ in range(25)], gap=0.05)
        return results

    results = run_virtual(main)
    assert len(results) == 25
    assert peak_overlap(spans) == 3


def test_a_token_rate_spaces_samples_out() -> None:
    log: Log = []

    async def main() -> None:
        async with Scheduler(
            slots=8, tokens_per_second=100.0, policy=MaxSamples(4), gain=FixedGain(1.0, 100.0)
        ) as sched:
            await sched.solve(sampler("a", log, latency=0.01, tokens=100), concurrency=4)

    run_virtual(main)
    starts = [t for t, _ in log]
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)


def test_a_windowed_budget_refills_as_spending_leaves_the_window() -> None:
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with Scheduler(slots=4, budget=Budget(samples=2), window=10.0, policy=MaxSamples(3)) as sched:

            async def long() -> None:
                out["long"] = await sched.solve(sampler("long", log, latency=1.0))

            async def turned_away() -> None:
                await anyio.sleep(3.0)  # the window is full now
                out["away"] = await sched.solve(sampler("away", log), fallback="later")

            async with anyio.create_task_group() as tg:
                tg.start_soon(long)
                tg.start_soon(turned_away)

    run_virtual(main)
    assert [t for t, _ in log] == pytest.approx([0.0, 1.0, 10.0])
    assert out["long"].n_samples == 3
    assert (out["away"].answer, out["away"].stop_reason) == ("later", "budget")


# -- faults and cancellation ----------------------------------------------------------------------------------


def test_a_request_whose_sampler_always_fails_does_not_block_the_others() -> None:
    out: dict[str, Result] = {}
    log: Log = []

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(2), max_failures=3) as sched:

            async def broken() -> Sample:
                await anyio.sleep(0.1)
                raise RuntimeError("model down")

            async def bad() -> None:
                out["bad"] = await sched.solve(broken, fallback="n/a")

            def good(name: str) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    out[name] = await sched.solve(sampler(name, log, answers="ok"), deadline=30.0)

                return run

            async with anyio.create_task_group() as tg:
                await arrive(tg, [bad, good("g1"), good("g2")])

    run_virtual(main)
    assert (out["bad"].answer, out["bad"].stop_reason, out["bad"].n_failed) == ("n/a", "error", 4)
    assert "RuntimeError: model down" in out["bad"].errors
    for name in ("g1", "g2"):
        assert (out[name].answer, out[name].stop_reason, out[name].n_samples) == ("ok", "policy", 2)


def test_cancelling_a_callers_task_frees_its_slots_at_once() -> None:
    log: Log = []
    out: dict[str, Any] = {}

    async def main() -> None:
        async with Scheduler(slots=1, policy=MaxSamples(1)) as sched:

            async def stuck() -> None:
                with anyio.CancelScope() as scope:
                    out["scope"] = scope
                    await sched.solve(sampler("stuck", log, latency=1e9))
                out["stuck_cancelled"] = scope.cancelled_caught

            async def waiting() -> None:
                out["waiting"] = await sched.solve(sampler("waiting", log, latency=1.0))

            async with anyio.create_task_group() as tg:
                await arrive(tg, [stuck, waiting])
                await anyio.sleep(5.0 - anyio.current_time())
                out["before"] = sched.stats().in_use
                out["scope"].cancel()

    run_virtual(main)
    assert out["stuck_cancelled"] is True
    assert out["before"] == 1
    assert [name for _, name in log] == ["stuck", "waiting"]
    assert log[1][0] == pytest.approx(5.0)  # the freed slot went to the waiting request at once
    assert out["waiting"].answer == "x"


def test_leaving_the_block_ends_running_requests_with_their_best() -> None:
    log: Log = []
    out: dict[str, Result] = {}

    async def main() -> None:
        async with anyio.create_task_group() as outer, Scheduler(slots=2) as sched:

            async def endless() -> None:
                out["endless"] = await sched.solve(sampler("e", log, latency=1.0))

            outer.start_soon(endless)
            await anyio.sleep(2.5)
        with pytest.raises(RuntimeError, match="async with"):
            await sched.solve(sampler("late", log))

    run_virtual(main)
    assert (out["endless"].answer, out["endless"].stop_reason, out["endless"].n_samples) == ("x", "closed", 2)


@pytest.mark.anyio
async def test_an_exception_in_the_block_propagates_as_itself() -> None:
    with pytest.raises(ValueError, match="boom"):
        async with Scheduler(slots=1):
            raise ValueError("boom")


def test_the_scheduler_keeps_nothing_of_a_finished_request() -> None:
    class Model:
        async def __call__(self) -> Sample:
            await anyio.sleep(0.5)
            return Sample(answer="x", tokens=3)

    refs: list[weakref.ref[Model]] = []

    async def main() -> Any:
        async with Scheduler(slots=2, policy=MaxSamples(2)) as sched:
            for _ in range(3):
                model = Model()
                refs.append(weakref.ref(model))
                await sched.solve(model, deadline=10.0)
                del model
            gc.collect()
            return sched.stats(), [r() for r in refs]

    stats, alive = run_virtual(main)
    assert alive == [None, None, None]
    assert (stats.running, stats.waiting, stats.in_use, stats.finished) == (0, 0, 0, 3)


# -- gain models ---------------------------------------------------------------------------------------------


class GainPolicy(StopPolicy):
    """A stop policy that also predicts gains (what a learned policy does): the scheduler must use it."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self, state: RunState, /) -> bool:
        return state.n_samples >= 2

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        self.asked += 1
        return 0.1 * horizon

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        return 10.0 * horizon


def test_a_policy_that_predicts_gains_is_the_gain_model_unless_one_is_given() -> None:
    log: Log = []
    own, overridden, explicit = GainPolicy(), GainPolicy(), FixedGain(0.5)
    asked_explicit = []

    class Spy(FixedGain):
        def predict_gain(self, state: RunState, horizon: int = 1) -> float:
            asked_explicit.append(horizon)
            return super().predict_gain(state, horizon)

    async def main() -> None:
        async with Scheduler(slots=1, gain=explicit) as sched:
            await sched.solve(sampler("own", log), policy=own)
            await sched.solve(sampler("over", log), policy=overridden, gain=Spy(0.5))

    run_virtual(main)
    assert own.asked > 0
    assert overridden.asked == 0 and asked_explicit


# -- streams, backends, arguments --------------------------------------------------------------------------------


def test_a_streaming_sampler_is_judged_probe_by_probe() -> None:
    async def thinking() -> AsyncIterator[Sample]:
        for answer in ("a", "b", "b"):
            await anyio.sleep(0.2)
            yield Sample(answer=answer, tokens=4)

    async def main() -> Result:
        async with Scheduler(slots=1, budget=Budget(tokens=1000)) as sched:
            return await sched.solve(thinking, policy=lambda s: s.leader_votes >= 2, deadline=10.0)

    result = run_virtual(main)
    assert (result.answer, result.stop_reason, result.tokens) == ("b", "policy", 12)


@pytest.mark.anyio
async def test_many_concurrent_requests_each_get_exactly_one_result() -> None:
    rng = random.Random(3)
    results: dict[int, Result] = {}

    async with Scheduler(slots=5, policy=AdaptiveConsistency(0.9) | MaxSamples(5)) as sched:

        async def one(i: int) -> None:
            answer = str(i % 4)

            async def call() -> Sample:
                await anyio.sleep(rng.uniform(0, 0.002))
                return Sample(answer=answer if rng.random() < 0.8 else "noise", tokens=7)

            assert i not in results
            results[i] = await sched.solve(call, deadline=30.0)

        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, i)
        stats = sched.stats()
    assert sorted(results) == list(range(60))
    assert all(r.stop_reason in ("policy", "deadline") for r in results.values())
    assert sum(r.answer == str(i % 4) for i, r in results.items()) >= 50
    assert (stats.in_use, stats.running, stats.waiting, stats.finished) == (0, 0, 0, 60)
    assert stats.decisions == sum(r.n_samples + r.n_failed + r.n_cancelled for r in results.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"slots": 0}, ValueError, "slots"),
        ({"slots": 1.5}, TypeError, "slots"),
        ({"slots": 1, "tokens_per_second": -1}, ValueError, "tokens_per_second"),
        ({"slots": 1, "burst": 10}, ValueError, "burst needs tokens_per_second"),
        ({"slots": 1, "window": 5.0}, ValueError, "window needs a budget"),
        ({"slots": 1, "budget": Budget(seconds=3)}, ValueError, "seconds"),
        ({"slots": 1, "gain": object()}, TypeError, "GainModel"),
        ({"slots": 1, "lookahead": 0}, ValueError, "lookahead"),
    ],
)
def test_bad_scheduler_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Scheduler(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"deadline": -1}, ValueError, "deadline"),
        ({"value": math.nan}, ValueError, "value"),
        ({"value": -1.0}, ValueError, "value"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"budget": 3}, TypeError, "budget"),
        ({"gain": "fast"}, TypeError, "GainModel"),
    ],
)
def test_bad_request_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    async def main() -> None:
        async with Scheduler(slots=1) as sched:
            with pytest.raises(error, match=match):
                await sched.solve(sampler("x", []), **kwargs)

    run_virtual(main)


def test_the_scheduler_is_exported_and_used_only_inside_async_with() -> None:
    assert bc.Scheduler is Scheduler
    sched = Scheduler(slots=1)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="async with"):
            await sched.solve(sampler("x", []))

    run_virtual(main)


# -- per-request arguments, as solve takes them ----------------------------------------------------------


def test_a_request_takes_trace_meta_sample_timeout_and_max_failures(tmp_path: Any) -> None:
    path = tmp_path / "sched.jsonl"
    calls = [0]

    async def flaky() -> Sample:
        calls[0] += 1
        if calls[0] <= 2:
            raise RuntimeError("down")
        if calls[0] == 3:
            await anyio.sleep(10)  # past the request's sample_timeout
        await anyio.sleep(0.1)
        return Sample(answer="x", tokens=4)

    async def main() -> tuple[Result, Result]:
        async with Scheduler(slots=2, max_failures=16, sample_timeout=100.0) as sched:
            traced = await sched.solve(
                flaky, policy=MaxSamples(2), trace=str(path), meta={"question": "q1"}, sample_timeout=1.0
            )
            calls[0] = 0
            strict = await sched.solve(flaky, policy=MaxSamples(2), max_failures=1)
        return traced, strict

    traced, strict = run_virtual(main)
    assert traced.stop_reason == "policy" and traced.n_failed == 3 and traced.n_samples == 2
    assert any("timed out after 1.0 s" in e for e in traced.errors)
    assert strict.stop_reason == "error" and strict.n_failed == 2  # the request's own max_failures
    from budgetctl._trace import read_events

    events = list(read_events(path))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("sample") == 5
    assert events[0]["meta"] == {"question": "q1"} and events[0]["config"]["sample_timeout"] == 1.0
    assert events[-1]["reason"] == "policy"


def test_a_request_deadline_counts_from_the_call() -> None:
    async def main() -> tuple[float, Result]:
        async with Scheduler(slots=1) as sched:
            called = anyio.current_time()
            result = await sched.solve(sampler("slow", [], latency=10.0), deadline=1.5)
            return anyio.current_time() - called, result

    waited, result = run_virtual(main)
    assert result.stop_reason == "deadline" and result.elapsed == 1.5 and waited == 1.5


def test_lookahead_gain_of_long_horizons_is_bounded_and_quick() -> None:
    # A request with many calls in flight asks for long horizons: they read as MAX_HORIZON (a horizon
    # of 30 once took minutes, the recursion outgrowing its cache).
    from budgetctl._core import RunCore
    from budgetctl.sched._lookahead import MAX_HORIZON

    core = RunCore(policy=MaxSamples(100))
    core.start(0.0)
    for answer in "aabcd":
        core.fill()
        core.outcome(bc.Sample(answer=answer, tokens=10), 0.1, 0.1)
    gain = LookaheadGain()
    assert gain.predict_gain(core.state, 30) == gain.predict_gain(core.state, MAX_HORIZON) > 0
    assert gain.predict_gain(core.state, MAX_HORIZON) >= gain.predict_gain(core.state, 3)
