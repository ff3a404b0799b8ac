"""The anytime runtime: solve / solve_sync / open_run on asyncio and trio.

Timing-sensitive checks run on trio under an autojumping ``MockClock`` (:func:`conftest.run_virtual`):
sleeps take no real time, so "stops exactly at its deadline" is an equality, not a race with a
busy machine. The asyncio checks only bound real time loosely, to catch a run that hangs.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
from conftest import HANG, Replay, run_virtual
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetctl as bc
from budgetctl import Budget, Result, Sample, normalize_answer
from budgetctl.policies import AdaptiveConsistency, MaxSamples, StopPolicy

pytestmark = pytest.mark.anyio


def majority(samples: tuple[Sample, ...]) -> Hashable:
    """Reference majority vote: normalised keys, first raw answer reported, ties to the answer seen first."""
    counts: dict[Hashable, int] = {}
    raw: dict[Hashable, Hashable] = {}
    for s in samples:
        if s.error is not None or s.answer is None:
            continue
        key = normalize_answer(s.answer)
        counts[key] = counts.get(key, 0) + 1
        raw.setdefault(key, s.answer)
    if not counts:
        return None
    return raw[max(counts, key=counts.__getitem__)]  # max keeps the first of equals: dict order


#: MockClock reaches a deadline by adding float jumps: it lands on it to within rounding.
EPS = 1e-9


def answers(*values: Hashable, tokens: int = 10) -> list[Sample]:
    return [Sample(answer=v, tokens=tokens) for v in values]


# -- the basic entry points --------------------------------------------------------------------------


async def test_solve_returns_the_majority_and_how_it_stopped() -> None:
    sampler = Replay(answers("a", "b", "a", "a", "c"))
    result = await bc.solve(sampler, policy=MaxSamples(4), concurrency=1)
    assert isinstance(result, Result)
    assert result.answer == "a" and result.confidence == pytest.approx(0.75)
    assert result.stop_reason == "policy"
    assert (result.n_samples, result.n_failed, result.tokens) == (4, 0, 40)
    assert sampler.calls == 4
    assert [s.answer for s in result.samples] == ["a", "b", "a", "a"]
    assert all(s.latency is not None and s.latency >= 0 for s in result.samples)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_solve_sync_runs_on_either_backend(backend: str) -> None:
    result = bc.solve_sync(Replay(answers("x", "y", "x")), backend=backend, policy=MaxSamples(3))
    assert result.answer == "x" and result.stop_reason == "policy" and result.n_samples == 3


def test_solve_sync_takes_the_same_arguments() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        bc.solve_sync(Replay([]), concurrency=0)


async def test_concurrency_caps_calls_in_flight() -> None:
    sampler = Replay(answers(*"abcabcab"), delay=0.01)
    result = await bc.solve(sampler, concurrency=3)
    assert result.stop_reason == "exhausted"
    assert sampler.max_in_flight == 3
    assert result.n_samples == 8


def test_concurrent_samples_overlap_in_time() -> None:
    async def main() -> tuple[Result, Replay, float]:
        sampler = Replay(answers(*"aaaabbbb"), delay=1.0)
        result = await bc.solve(sampler, concurrency=4)
        return result, sampler, trio.current_time()

    result, sampler, now = run_virtual(main)
    assert sampler.max_in_flight == 4
    assert result.elapsed == 2.0 == now  # two rounds of four one-second calls
    assert result.stop_reason == "exhausted"


async def test_failures_are_retried_by_the_next_launch() -> None:
    sampler = Replay([RuntimeError("rate limited"), TimeoutError(), Sample(answer="ok", tokens=3)])
    result = await bc.solve(sampler, policy=MaxSamples(1))
    assert result.answer == "ok" and result.stop_reason == "policy"
    assert result.n_failed == 2 and sampler.calls == 3
    assert result.errors == ("RuntimeError: rate limited", "TimeoutError")


async def test_fallback_when_nothing_voted() -> None:
    result = await bc.solve(Replay(answers(None, None)), fallback="unknown")
    assert result.answer == "unknown" and result.confidence == 0.0
    assert result.stop_reason == "exhausted" and result.state.n_abstained == 2


# -- stop reasons --------------------------------------------------------------------------------------


def _virtual_solve(sampler: Any, **kwargs: Any) -> Result:
    async def main() -> Result:
        return await bc.solve(sampler, **kwargs)

    return run_virtual(main)


def test_stop_reason_policy() -> None:
    result = _virtual_solve(Replay(answers(*"aaaaaaaa"), delay=1.0), policy=AdaptiveConsistency(0.95), concurrency=1)
    assert result.stop_reason == "policy" and result.n_samples == 4 and result.elapsed == 4.0


def test_stop_reason_deadline() -> None:
    result = _virtual_solve(Replay(answers(*"abab"), delay=1.5), deadline=3.2, fallback="none", concurrency=1)
    assert result.stop_reason == "deadline" and result.elapsed == 3.2
    assert result.n_samples == 2 and result.n_cancelled == 1 and result.answer == "a"


def test_stop_reason_budget_tokens() -> None:
    result = _virtual_solve(Replay(answers(*"abababab", tokens=30), delay=1.0), budget=Budget(tokens=100))
    assert result.stop_reason == "budget" and result.tokens == 120 and result.n_samples == 4


def test_stop_reason_budget_samples() -> None:
    sampler = Replay(answers(*"abababab"), delay=1.0)
    result = _virtual_solve(sampler, budget=Budget(samples=3), concurrency=2)
    assert result.stop_reason == "budget" and sampler.calls == 3 and result.n_samples == 3


def test_stop_reason_budget_dollars() -> None:
    script = answers(*"aaaaaa", tokens=30)
    result = _virtual_solve(Replay(script, delay=1.0), budget=Budget(dollars=1.0, price_per_token=0.01))
    assert result.stop_reason == "budget" and result.n_samples == 4 and result.dollars == pytest.approx(1.2)
    own_cost = [Sample(answer="a", tokens=1, cost=0.6)] * 3
    result = _virtual_solve(Replay(own_cost, delay=1.0), budget=Budget(dollars=1.0, price_per_token=0.01))
    assert result.n_samples == 2 and result.dollars == pytest.approx(1.2)


def test_stop_reason_budget_seconds_versus_deadline() -> None:
    slow = answers(*"ababab")
    by_time = _virtual_solve(Replay(slow, delay=1.0), budget=Budget(seconds=2.5), concurrency=1)
    assert by_time.stop_reason == "budget" and by_time.elapsed == 2.5
    by_deadline = _virtual_solve(Replay(slow, delay=1.0), budget=Budget(seconds=2.5), deadline=1.5, concurrency=1)
    assert by_deadline.stop_reason == "deadline" and by_deadline.elapsed == 1.5


def test_stop_reason_exhausted_waits_for_samples_in_flight() -> None:
    sampler = Replay(answers("a", "b", "b"), delay=[1.0, 1.0, 5.0])
    result = _virtual_solve(sampler, concurrency=3)
    assert result.stop_reason == "exhausted" and result.answer == "b" and result.elapsed == 5.0


def test_stop_reason_error_keeps_the_best_so_far() -> None:
    script: list[object] = [*answers("a", "a"), *[RuntimeError("down")] * 10]
    result = _virtual_solve(Replay(script, delay=1.0), max_failures=3, concurrency=1)
    assert result.stop_reason == "error"
    assert result.n_failed == 4 and result.answer == "a" and result.confidence == 1.0


def test_stop_reason_deadline_with_nothing_back_is_the_fallback() -> None:
    result = _virtual_solve(Replay([HANG] * 4), deadline=1.0, concurrency=4, fallback="fb")
    assert result.stop_reason == "deadline"
    assert result.answer == "fb" and result.n_samples == 0 and result.n_cancelled == 4


async def test_deadline_zero_returns_at_once() -> None:
    sampler = Replay(answers("a"), delay=1.0)
    result = await bc.solve(sampler, deadline=0, fallback=None)
    assert result.stop_reason == "deadline" and result.answer is None and result.n_samples == 0


def test_sample_timeout_records_a_failure_and_retries() -> None:
    sampler = Replay([HANG, *answers("a")])
    result = _virtual_solve(sampler, sample_timeout=2.0, policy=MaxSamples(1))
    assert result.answer == "a" and result.elapsed == 2.0
    assert result.errors == ("TimeoutError: sample timed out after 2.0 s",)


# -- invalid arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"deadline": -1}, ValueError, "deadline"),
        ({"deadline": math.nan}, ValueError, "deadline"),
        ({"deadline": "1s"}, TypeError, "deadline"),
        ({"concurrency": 0}, ValueError, "concurrency"),
        ({"concurrency": 2.0}, TypeError, "concurrency"),
        ({"concurrency": True}, TypeError, "concurrency"),
        ({"sample_timeout": -0.5}, ValueError, "sample_timeout"),
        ({"sample_timeout": math.nan}, ValueError, "sample_timeout"),
        ({"max_failures": -1}, ValueError, "max_failures"),
        ({"budget": {"tokens": 10}}, TypeError, "budget"),
        ({"policy": 3}, TypeError, "policy"),
        ({"aggregator": "majority"}, TypeError, "aggregator"),
    ],
)
async def test_invalid_arguments_raise_before_any_work(
    kwargs: dict[str, Any], error: type[Exception], names: str, tmp_path: Any
) -> None:
    sampler = Replay(answers("a"))
    trace = tmp_path / "trace.jsonl"
    with pytest.raises(error, match=names):
        await bc.solve(sampler, trace=trace, **kwargs)
    with pytest.raises(error, match=names):
        bc.open_run(sampler, **kwargs)
    assert sampler.calls == 0
    assert not trace.exists()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tokens": -1}, ValueError),
        ({"samples": -3}, ValueError),
        ({"dollars": math.nan}, ValueError),
        ({"seconds": -0.1}, ValueError),
        ({"seconds": math.nan}, ValueError),
        ({"tokens": 1.5}, TypeError),
        ({"tokens": math.nan}, TypeError),
        ({"price_per_token": -1.0}, ValueError),
    ],
)
def test_invalid_budgets_name_the_cap(kwargs: dict[str, Any], error: type[Exception]) -> None:
    (name,) = kwargs
    with pytest.raises(error, match=rf"Budget\({name}="):
        Budget(**kwargs)


async def test_a_sampler_must_be_callable() -> None:
    with pytest.raises(TypeError, match="sampler"):
        await bc.solve("not a function")  # type: ignore[arg-type]


async def test_a_bad_trace_target_fails_before_sampling() -> None:
    sampler = Replay(answers("a"))
    with pytest.raises(TypeError, match="trace"):
        await bc.solve(sampler, trace=3)  # type: ignore[arg-type]
    assert sampler.calls == 0


# -- open_run: the anytime answer ----------------------------------------------------------------------


async def test_best_is_readable_while_the_run_goes_on() -> None:
    sampler = Replay(answers("a", "b", "b", "b"), delay=0.01)
    seen: list[Hashable] = []
    async with bc.open_run(sampler, fallback="nothing yet", policy=MaxSamples(4), concurrency=1) as run:
        assert (run.best, run.result) == ("nothing yet", None)
        async for state in run.updates():
            seen.append(run.best)
            assert state.answer in ("a", "b")
        result = await run.wait()
    assert seen[0] == "a" and seen[-1] == "b"
    assert run.done and run.result is result and run.best == "b"
    assert run.state == result.state


async def test_updates_stream_every_snapshot_to_every_reader() -> None:
    sampler = Replay(answers(*"abcab"), delay=0.01)
    async with bc.open_run(sampler, concurrency=1) as run:
        first, second = run.updates(), run.updates()
        a = [s async for s in first]
        b = [s async for s in second]
    assert a == b
    assert [s.n_done for s in a[:5]] == [1, 2, 3, 4, 5]
    assert a[-1] == run.state
    late = run.updates()
    assert [s async for s in late] == []  # the run is over: the stream is already closed


async def test_leaving_the_block_early_stops_the_run() -> None:
    sampler = Replay([*answers("a"), HANG, HANG], delay=0.01)
    async with bc.open_run(sampler, concurrency=3) as run:
        with run.updates() as updates:  # we may stop reading early: close the stream ourselves
            async for state in updates:
                if state.n_samples:
                    break
    assert run.result is not None
    assert run.result.stop_reason == "deadline" and run.result.answer == "a"
    assert sampler.cancelled == 2 and sampler.in_flight == 0


async def test_an_error_in_the_block_propagates_as_itself() -> None:
    sampler = Replay([HANG])
    with pytest.raises(KeyError, match="oops"):
        async with bc.open_run(sampler) as run:
            await anyio.lowlevel.checkpoint()
            raise KeyError("oops")
    assert run.done and sampler.in_flight == 0


async def test_cancelling_the_caller_cancels_the_run() -> None:
    sampler = Replay([HANG, HANG], exhaust=False)
    with anyio.move_on_after(0.05) as scope:
        async with bc.open_run(sampler, concurrency=2) as run:
            await run.wait()
    assert scope.cancelled_caught
    assert run.result is not None and run.result.n_cancelled == 2
    assert sampler.cancelled == 2 and sampler.in_flight == 0


# -- cancellation of samples in flight ----------------------------------------------------------------


def test_a_policy_stop_cancels_the_samples_in_flight() -> None:
    async def main() -> tuple[Result, Replay]:
        sampler = Replay([*answers("a"), HANG, HANG, HANG], delay=[1.0, 0.0, 0.0, 0.0])
        # An unbounded policy (a plain function), so all four calls are launched.
        return await bc.solve(sampler, concurrency=4, policy=lambda s: s.n_samples >= 1), sampler

    result, sampler = run_virtual(main)
    assert result.stop_reason == "policy" and result.elapsed == 1.0
    assert result.n_cancelled == 3 == sampler.cancelled
    assert sampler.in_flight == 0 and sampler.finished == sampler.calls


async def test_no_task_outlives_solve(anyio_backend: str) -> None:
    def count_tasks() -> int:
        if anyio_backend == "asyncio":
            return len(asyncio.all_tasks())
        root = trio.lowlevel.current_root_task()
        assert root is not None
        return sum(len(nursery.child_tasks) for nursery in root.child_nurseries)

    # The event loop's call host (one task for every run's sampler calls) starts with the first run.
    await bc.solve(Replay(answers("w")), policy=MaxSamples(1))
    before = count_tasks()
    sampler = Replay([*answers("a", "a"), HANG, HANG, HANG], delay=0.01)
    result = await bc.solve(sampler, concurrency=5, policy=lambda s: s.n_samples >= 2, budget=Budget(samples=5))
    assert result.n_cancelled == 3 and sampler.cancelled == 3
    assert count_tasks() == before


def test_a_deadline_cancels_at_once_even_a_sampler_that_hangs() -> None:
    async def main() -> tuple[Result, float]:
        result = await bc.solve(Replay([HANG]), deadline=7.25)
        return result, trio.current_time()

    result, returned_at = run_virtual(main)
    assert result.elapsed == 7.25 == returned_at


# -- faults -------------------------------------------------------------------------------------------------


async def test_garbage_returns_are_recorded_as_failures() -> None:
    # Bad samples are built inside the call: whether Sample refuses them as they are made or the
    # runtime finds them invalid afterwards, the call is a recorded failure, not a crash.
    script: list[object] = [
        lambda: Sample(answer="a", tokens=-5),
        lambda: Sample(answer="a", confidence=math.nan),
        lambda: Sample(answer="a", confidence=1.5),
        lambda: Sample(answer="a", logprob=math.inf),
        lambda: Sample(answer=math.nan),
        lambda: Sample(answer=["unhashable"]),  # type: ignore[arg-type]
        lambda: Sample(answer="a", tokens=True),
        "just a string",
        None,
        {"answer": "a"},
        [],
        Sample(answer="good", tokens=4),
    ]
    result = await bc.solve(Replay(script), max_failures=None)
    assert result.answer == "good" and result.n_samples == 1
    assert result.n_failed == len(script) - 1
    assert result.tokens == 4  # garbage never counts its (invalid) tokens
    errors = result.errors
    assert "tokens must be >= 0, got -5" in errors[0]
    assert "confidence must be finite" in errors[1] and "confidence must be <= 1" in errors[2]
    assert "logprob must be finite" in errors[3]
    assert "answer is NaN" in errors[4] and "hashable" in errors[5] and "tokens must be an int" in errors[6]
    assert all("not a budgetctl.Sample" in e for e in errors[7:10])
    assert errors[10] == "sampler returned an empty batch"


async def test_a_batch_is_counted_sample_by_sample() -> None:
    batch = [Sample(answer="x", tokens=2), Sample(answer="y", tokens=2), Sample(answer="x", tokens=2)]
    result = await bc.solve(Replay([batch]))
    assert result.n_samples == 3 and result.tokens == 6 and result.answer == "x"


async def test_a_sync_function_is_a_failing_sampler_not_a_crash() -> None:
    def not_async() -> Sample:
        return Sample(answer="a")

    result = await bc.solve(not_async, budget=Budget(samples=2), max_failures=None)  # type: ignore[arg-type]
    assert result.stop_reason == "budget" and result.n_failed == 2 and result.answer is None


def _faulty_script(rng: random.Random, n: int) -> tuple[list[object], list[float]]:
    """30% of the calls raise, 10% hang forever, the rest answer (mostly "a")."""
    script: list[object] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.3:
            script.append(RuntimeError("injected"))
        elif roll < 0.4:
            script.append(HANG)
        else:
            script.append(Sample(answer=rng.choice("aaabbc"), tokens=rng.randint(1, 40)))
    return script, [rng.uniform(0.01, 0.4) for _ in range(n)]


@pytest.mark.parametrize("seed", range(25))
def test_fault_injection_returns_by_the_deadline_with_the_best_of_the_successes(seed: int) -> None:
    rng = random.Random(seed)
    script, delays = _faulty_script(rng, 80)
    deadline = rng.uniform(0.5, 3.0)
    policy: StopPolicy | None = rng.choice([None, AdaptiveConsistency(0.99), MaxSamples(30)])

    async def main() -> tuple[Result, Replay, float]:
        sampler = Replay(script, delay=delays)
        result = await bc.solve(
            sampler, deadline=deadline, concurrency=4, policy=policy, max_failures=None, fallback="none"
        )
        return result, sampler, trio.current_time()

    result, sampler, returned_at = run_virtual(main)
    assert returned_at <= deadline + EPS and result.elapsed <= deadline + EPS
    if result.stop_reason == "deadline":
        assert returned_at == pytest.approx(deadline, abs=EPS)
    succeeded = tuple(s for s in result.samples if s.ok)
    expected = majority(succeeded)
    assert result.answer == (expected if expected is not None else "none")
    assert result.n_failed == sum(1 for s in result.samples if s.error == "RuntimeError: injected")
    assert sampler.in_flight == 0


async def test_fault_injection_on_the_real_clock(anyio_backend: str) -> None:
    # Real time on a shared machine: the bound is loose on purpose (deadline + 2 s); it catches a
    # run that waits for a hung sample, not a slow scheduler. Exact timing is checked above.
    deadline = 0.1
    results: list[tuple[Result, float]] = []

    async def one(seed: int) -> None:
        script, delays = _faulty_script(random.Random(seed), 60)
        started = anyio.current_time()
        result = await bc.solve(
            Replay(script, delay=[d / 20 for d in delays]), deadline=deadline, concurrency=3, max_failures=None
        )
        results.append((result, anyio.current_time() - started))

    async with anyio.create_task_group() as tg:
        for seed in range(20):
            tg.start_soon(one, seed)
    for result, took in results:
        assert took < deadline + 2.0
        assert result.elapsed <= took
        assert result.answer == majority(tuple(s for s in result.samples if s.ok))


# -- streaming samplers -------------------------------------------------------------------------------


class Stream:
    """An async-generator sampler: each call streams probes of one chain of thought."""

    def __init__(self, probes: Sequence[object], delay: float = 1.0) -> None:
        self.probes = probes
        self.delay = delay
        self.opened = 0
        self.closed = 0

    async def __call__(self) -> AsyncIterator[Sample]:
        self.opened += 1
        try:
            for probe in self.probes:
                await anyio.sleep(self.delay)
                if isinstance(probe, BaseException):
                    raise probe
                yield probe  # type: ignore[misc]
        finally:
            self.closed += 1


def test_streaming_probes_are_judged_as_they_arrive_and_the_stream_is_closed() -> None:
    stream = Stream(answers(*"aaaaaaaaaa", tokens=5))
    result = _virtual_solve(stream, policy=MaxSamples(3), concurrency=1)
    assert result.stop_reason == "policy" and result.n_samples == 3 and result.tokens == 15
    assert result.elapsed == 3.0
    assert stream.opened == stream.closed == 1


def test_streams_that_end_or_fail_free_their_slot() -> None:
    stream = Stream([*answers("a", "b"), RuntimeError("connection reset")])
    result = _virtual_solve(stream, budget=Budget(samples=2), max_failures=None)
    assert result.stop_reason == "budget"
    assert result.n_samples == 4 and result.n_failed == 2
    assert stream.opened == stream.closed == 2


def test_an_empty_stream_adds_nothing() -> None:
    result = _virtual_solve(Stream([]), budget=Budget(samples=3), fallback="none")
    assert result.stop_reason == "budget" and result.n_samples == 0 and result.answer == "none"


def test_a_deadline_cancels_a_stream_mid_thought() -> None:
    stream = Stream(answers(*"abcdefgh"))
    result = _virtual_solve(stream, deadline=2.5, concurrency=1)
    assert result.stop_reason == "deadline" and result.n_samples == 2 and result.elapsed == 2.5
    assert stream.closed == 1 and result.n_cancelled == 1


# -- properties ---------------------------------------------------------------------------------------------

step = st.one_of(
    st.builds(
        Sample,
        answer=st.one_of(st.none(), st.sampled_from(["a", "b", "c", "1,000", "1000"])),
        tokens=st.integers(0, 60),
    ),
    st.builds(Sample, answer=st.sampled_from(["a", "b"]), tokens=st.integers(0, 60)),
    st.just(RuntimeError("boom")),
    st.just(HANG),
    st.just("garbage"),
)


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 25))
    script = draw(st.lists(step, min_size=n, max_size=n))
    delays = draw(st.lists(st.floats(0.01, 3.0), min_size=max(n, 1), max_size=max(n, 1)))
    return {
        "script": script,
        "delays": delays,
        "concurrency": draw(st.integers(1, 6)),
        "deadline": draw(st.floats(0.05, 30.0)),
        "budget": Budget(
            tokens=draw(st.none() | st.integers(0, 300)),
            samples=draw(st.none() | st.integers(0, 30)),
        ),
        "policy": draw(st.sampled_from([None, MaxSamples(5), AdaptiveConsistency(0.9)])),
    }


def _run_drawn(case: dict[str, Any]) -> tuple[Result, Replay, float]:
    async def main() -> tuple[Result, Replay, float]:
        sampler = Replay(case["script"], delay=case["delays"])
        result = await bc.solve(
            sampler,
            deadline=case["deadline"],
            budget=case["budget"],
            concurrency=case["concurrency"],
            policy=case["policy"],
            max_failures=None,
            fallback="FALLBACK",
        )
        return result, sampler, trio.current_time()

    return run_virtual(main)


@settings(max_examples=150, deadline=None)
@given(runs())
def test_property_the_answer_was_sampled_or_is_the_fallback(case: dict[str, Any]) -> None:
    result, sampler, _ = _run_drawn(case)
    voted = [s.answer for s in result.samples if s.ok and s.answer is not None]
    if voted:
        assert result.answer in voted
        assert result.answer == majority(result.samples)
    else:
        assert result.answer == "FALLBACK" and result.confidence == 0.0
    # Every recorded good sample is one the sampler really returned.
    returned = [(s.answer, s.tokens) for s in sampler.returned if isinstance(s, Sample)]
    for s in result.samples:
        if s.ok:
            assert (s.answer, s.tokens) in returned


@settings(max_examples=150, deadline=None)
@given(runs())
def test_property_budgets_hold(case: dict[str, Any]) -> None:
    result, sampler, _ = _run_drawn(case)
    budget: Budget = case["budget"]
    concurrency: int = case["concurrency"]
    assert sampler.max_in_flight <= concurrency
    if budget.samples is not None:
        assert sampler.calls <= budget.samples  # launches are capped, never overshot
    if budget.tokens is not None and result.samples:
        biggest = max((s.tokens for s in case["script"] if isinstance(s, Sample)), default=0)
        # The bound: at most the samples in flight when the cap was reached overshoot it...
        assert result.tokens <= budget.tokens + concurrency * biggest
        # ...and in fact only the one that crossed it: the others are cancelled, not awaited.
        assert result.tokens - result.samples[-1].tokens < max(budget.tokens, 1)
    if result.stop_reason == "budget" and budget.tokens is not None and budget.samples is None:
        assert result.tokens >= budget.tokens


@settings(max_examples=150, deadline=None)
@given(runs())
def test_property_a_run_stops_exactly_at_its_deadline(case: dict[str, Any]) -> None:
    result, sampler, returned_at = _run_drawn(case)
    deadline = case["deadline"]
    assert result.elapsed == returned_at <= deadline + EPS
    if result.stop_reason == "deadline":
        assert returned_at == pytest.approx(deadline, abs=EPS)
    else:
        assert result.stop_reason in ("policy", "budget", "exhausted")
    if result.stop_reason == "policy":
        assert case["policy"](result.state)
    if result.stop_reason == "exhausted":
        assert sampler.calls > len(case["script"])
    assert not any(step is HANG for step in sampler.returned)
    assert sampler.in_flight == 0  # every call ended: cancelled or returned


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["x", "y", "z", None]), max_size=12), st.sampled_from(["asyncio", "trio"]))
def test_property_the_real_clock_agrees(values: list[Hashable], backend: str) -> None:
    result = bc.solve_sync(Replay(answers(*values)), backend=backend, concurrency=3, fallback="FALLBACK")
    expected = majority(tuple(answers(*values)))
    assert result.answer == (expected if expected is not None else "FALLBACK")
    assert result.stop_reason == "exhausted" and result.n_samples == len(values)


# -- the deadline is the caller's --------------------------------------------------------------------------


def test_the_deadline_counts_from_the_call_to_solve_and_to_open_run() -> None:
    async def main() -> tuple[float, Result, float, Result]:
        called = anyio.current_time()
        solved = await bc.solve(Replay([HANG]), deadline=2.0)
        waited = anyio.current_time() - called
        opened_at = anyio.current_time()
        run = bc.open_run(Replay([HANG]), deadline=2.0)
        await anyio.sleep(0.75)  # time between open_run and entering the block counts
        async with run:
            result = await run.wait()
        return waited, solved, anyio.current_time() - opened_at, result

    waited, solved, held, result = run_virtual(main)
    assert waited == solved.elapsed == 2.0
    assert held == result.elapsed == 2.0 and result.stop_reason == "deadline"


REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="unset")


async def test_a_sampler_sees_the_callers_context_variables() -> None:
    # Calls run in the event loop's call host, but in a copy of the caller's context (tracing ids).
    seen: list[str] = []

    async def sampler() -> Sample:
        seen.append(REQUEST_ID.get())
        return Sample(answer="a", tokens=1)

    token = REQUEST_ID.set("request 7")
    try:
        await bc.solve(sampler, policy=MaxSamples(2), concurrency=2)
    finally:
        REQUEST_ID.reset(token)
    assert seen == ["request 7", "request 7"]
