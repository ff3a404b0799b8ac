"""Launch planning: the latency estimate, the expected need, the plan, and a run that follows it."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import budgetctl as bc
from budgetctl._core import RunCore
from budgetctl._plan import (
    Auto,
    Flights,
    LatencyEstimate,
    expected_need,
    parse_concurrency,
    plan_in_flight,
)
from budgetctl.policies import ESC, AdaptiveConsistency, MaxSamples, Stable, stop_when
from budgetctl.sim import LatencyModel, replay


def _state(answers: str, **core: Any) -> bc.RunState:
    run = RunCore(policy=MaxSamples(1000), **core)
    for i, answer in enumerate(answers):
        run.record(bc.Sample(answer=answer, tokens=10), 1.0, float(i + 1))
    return run.state


# -- settings -----------------------------------------------------------------------------------------


def test_parse_concurrency() -> None:
    assert parse_concurrency("auto") == Auto()
    assert parse_concurrency("fastest") == Auto(speed=1.0)
    assert parse_concurrency("auto:cheap") == Auto(speed=0.25)
    assert parse_concurrency("auto:0.8,max=6") == Auto(speed=0.8, max_in_flight=6)
    assert parse_concurrency("3") == 3 and parse_concurrency(5) == 5
    assert str(Auto()) == "auto" and str(Auto(speed=1.0, max_in_flight=4)) == "auto:fastest,max=4"


@pytest.mark.parametrize("bad", [0, -1, "auto:2", "auto:slow", "auto,max=0", "x", 1.5, True, None])
def test_bad_concurrency_is_a_one_line_error_naming_the_argument(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="concurrency"):
        parse_concurrency(bad)


def test_solve_rejects_a_bad_concurrency_before_any_work() -> None:
    async def never() -> bc.Sample:  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="concurrency"):
        bc.open_run(never, concurrency="auto:9")


# -- (a) latency --------------------------------------------------------------------------------------


def test_latency_prior_before_any_arrival() -> None:
    estimate = LatencyEstimate(prior_latency=0.7)
    assert estimate.call_seconds == 0.7 and estimate.per_token is None and estimate.mean_tokens is None
    assert estimate.tokens_after(10.0) == 0


def test_latency_line_is_recovered_from_calls_of_different_lengths() -> None:
    estimate = LatencyEstimate()
    for tokens in (10, 40, 25, 60, 33):
        estimate.observe_call(0.08 + 0.015 * tokens, tokens)
    assert estimate.ttft == pytest.approx(0.08, abs=1e-5)
    assert estimate.per_token == pytest.approx(0.015, rel=1e-4)
    assert estimate.mean_tokens is not None and estimate.call_seconds == pytest.approx(0.08 + 0.015 * 33.6, rel=0.05)
    assert estimate.tokens_after(0.08 + 0.015 * 20) == pytest.approx(20, abs=1)
    assert estimate.tokens_after(0.05) == 0  # before the first token


def test_one_straggler_does_not_make_every_call_look_slow() -> None:
    estimate = LatencyEstimate()
    for _ in range(5):
        estimate.observe_call(1.0, 50)
    estimate.observe_call(100.0, 50)  # a hung connection
    assert estimate.call_seconds < 2.0


def test_streamed_points_give_the_rate_before_any_call_ends() -> None:
    estimate = LatencyEstimate()
    for k in (20, 40, 60):
        estimate.observe_point(0.1 + 0.01 * k, k)
    assert estimate.per_token == pytest.approx(0.01, rel=1e-4) and estimate.ttft == pytest.approx(0.1, abs=1e-5)
    assert estimate.n_calls == 0 and estimate.call_seconds == estimate.prior_latency


def test_flights_count_what_cancelled_calls_decoded() -> None:
    flights = Flights(LatencyEstimate())
    for index, tokens in enumerate((10, 30)):
        flights.launched(index, 0.0)
        flights.arrived(
            index, bc.Sample(answer="a", tokens=tokens), 0.1 + 0.01 * tokens, 0.1 + 0.01 * tokens, final=True
        )
    flights.launched(2, 1.0)  # a plain call: 0.3 s in, 20 tokens decoded
    flights.launched(3, 1.0)  # a stream that showed 10 tokens at 1.2 s, then 10 more by 1.3 s
    flights.arrived(3, bc.Sample(answer="a", tokens=10), 0.2, 1.2, final=False)
    assert flights.cancelled(1.3) == 20 + 10 and flights.wasted == 30 and flights.in_flight == 0


# -- (b) expected need --------------------------------------------------------------------------------


def test_expected_need() -> None:
    assert expected_need(MaxSamples(10), _state("aaa")) == 7
    unanimous = [expected_need(AdaptiveConsistency(0.95), _state("a" * k)) for k in range(6)]
    assert unanimous == sorted(unanimous, reverse=True) and unanimous[4] == 0  # 4 agreeing votes pass 0.95
    assert expected_need(AdaptiveConsistency(0.95), _state("abab")) > expected_need(
        AdaptiveConsistency(0.95), _state("aaab")
    )
    assert expected_need(AdaptiveConsistency(0.95) | MaxSamples(2), _state("")) == 2  # the least of the parts
    assert expected_need(AdaptiveConsistency(0.95) & MaxSamples(20), _state("")) == 20  # the most
    assert 1.0 <= expected_need(ESC(5), _state("aaaa")) < 2.0  # one more may close the window
    assert expected_need(ESC(5), _state("aaab")) >= 6  # this window is lost: the next whole one is needed
    assert expected_need(Stable(3), _state("aaa")) == 0
    assert expected_need(stop_when(lambda s: False), _state("a")) is None  # unknown: the planner's default


def test_a_policy_may_predict_its_own_need() -> None:
    class Predicting:
        def __call__(self, state: bc.RunState) -> bool:
            return False

        def expected_need(self, state: bc.RunState) -> float:
            return 2.5

    assert expected_need(Predicting(), _state("ab")) == 2.5


# -- (c) the plan ---------------------------------------------------------------------------------------

plans = st.fixed_dictionaries(
    {
        "need": st.floats(0, 40),
        "in_flight": st.integers(0, 40),
        "time_left": st.one_of(st.none(), st.floats(0, 100)),
        "call_seconds": st.floats(0.001, 10),
        "speed": st.floats(0, 1),
        "bound": st.one_of(st.none(), st.integers(0, 50)),
        "cap": st.one_of(st.none(), st.integers(1, 50)),
        "horizon": st.integers(1, 64),
    }
)


@given(plans)
def test_the_plan_never_exceeds_the_cap_or_the_bound(plan: dict[str, Any]) -> None:
    target = plan_in_flight(**plan)
    assert target >= 0
    if plan["cap"] is not None:
        assert target <= plan["cap"]
    if plan["bound"] is not None:
        assert target <= plan["bound"]
    if plan["bound"] != 0:
        assert target >= 1 or plan["in_flight"] > 0  # never a run left with nothing in flight


@given(plans, st.floats(1.0, 1.999))
def test_with_one_round_left_every_useful_call_is_launched(plan: dict[str, Any], rounds: float) -> None:
    plan = {**plan, "time_left": rounds * plan["call_seconds"], "need": max(plan["need"], 0.5)}
    useful = plan["bound"] if plan["bound"] is not None else plan["horizon"]
    caps = [c for c in (plan["cap"], useful) if c is not None]
    assert plan_in_flight(**plan) == max(min(caps), 0 if useful == 0 else 1)


@given(plans, st.floats(0, 1), st.floats(0, 1))
def test_faster_settings_never_plan_fewer_calls(plan: dict[str, Any], a: float, b: float) -> None:
    slow, fast = sorted((a, b))
    assert plan_in_flight(**{**plan, "speed": slow}) <= plan_in_flight(**{**plan, "speed": fast})


def test_the_settings_between_cheapest_and_fastest() -> None:
    base = {"need": 4.2, "in_flight": 0, "call_seconds": 1.0, "bound": 30}
    assert plan_in_flight(**base, speed=0.0, time_left=None) == 1  # one at a time
    assert plan_in_flight(**base, speed=0.5, time_left=None) == 6  # the need, rounded up, plus one
    assert plan_in_flight(**base, speed=1.0, time_left=None) == 30  # everything that could help
    # A deadline that fits three rounds asks for a third of the need at least, even at the cheapest.
    assert plan_in_flight(**base, speed=0.0, time_left=3.5) == 2
    # None could finish: no new call while one is in flight; with none, every useful one (the fastest answers).
    assert plan_in_flight(**{**base, "in_flight": 2}, speed=1.0, time_left=0.5) == 2
    assert plan_in_flight(**base, speed=0.0, time_left=0.5) == 30


# -- a run that follows the plan ------------------------------------------------------------------------


class Counting:
    """A sampler taking ``delay`` virtual seconds a call; records the most calls in flight at once."""

    def __init__(self, answers: str, delay: float, tokens: int = 10, stagger: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.stagger = stagger
        self.tokens = tokens
        self.calls = 0
        self.running = 0
        self.peak = 0
        self.starts: list[float] = []

    async def __call__(self) -> bc.Sample:
        answer = self.answers[self.calls % len(self.answers)]
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.starts.append(anyio.current_time())
        try:
            await anyio.sleep(self.delay + self.stagger * (self.calls - 1))
        finally:
            self.running -= 1
        return bc.Sample(answer=answer, tokens=self.tokens)


def _virtual(sampler: Counting, **kwargs: Any) -> bc.Result:
    async def main() -> bc.Result:
        return await bc.solve(sampler, **kwargs)

    return anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


@settings(max_examples=60, deadline=None)
@given(
    answers=st.text("ab", min_size=1, max_size=6),
    cap=st.one_of(st.none(), st.integers(1, 6)),
    n=st.integers(1, 12),
    speed=st.floats(0, 1),
    deadline=st.one_of(st.none(), st.floats(0.5, 20)),
)
def test_a_planned_run_stays_under_the_cap_and_the_policy_bound(
    answers: str, cap: int | None, n: int, speed: float, deadline: float | None
) -> None:
    sampler = Counting(answers, delay=1.0)
    result = _virtual(
        sampler,
        policy=AdaptiveConsistency(0.95) | MaxSamples(n),
        concurrency=Auto(speed=speed, max_in_flight=cap),
        deadline=deadline,
    )
    assert sampler.calls <= n  # never more calls than MaxSamples(n) can use (no call fails)
    if cap is not None:
        assert sampler.peak <= cap
    assert result.n_samples <= n


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 5), answers=st.text("abc", min_size=1, max_size=5))
def test_an_explicit_concurrency_stays_an_upper_bound(c: int, answers: str) -> None:
    sampler = Counting(answers, delay=1.0)
    _virtual(sampler, policy=AdaptiveConsistency(0.95), budget=bc.Budget(samples=12), concurrency=c)
    assert sampler.peak <= c


def test_a_deadline_for_one_round_launches_every_useful_call_at_once() -> None:
    sampler = Counting("ab", delay=1.0)
    result = _virtual(
        sampler,
        policy=AdaptiveConsistency(0.95),
        budget=bc.Budget(samples=9),
        deadline=1.5,
        concurrency=Auto(prior_latency=1.0),
    )
    assert sampler.calls == 9 and sampler.starts == [sampler.starts[0]] * 9
    assert result.n_samples >= 4  # the votes arrive together, in any order


def test_balanced_keeps_the_need_plus_one_in_flight_and_replans_at_every_arrival() -> None:
    sampler = Counting("a", delay=1.0)
    result = _virtual(sampler, policy=AdaptiveConsistency(0.95), concurrency="auto")
    first = expected_need(AdaptiveConsistency(0.95), _state(""))
    assert first is not None
    launched_at_start = sum(1 for t in sampler.starts if t == sampler.starts[0])
    assert launched_at_start == math.ceil(first) + 1
    assert result.n_samples == 4 and result.stop_reason == "policy"
    assert result.elapsed == 1.0  # one round: unanimous votes settle as they arrive


def test_a_disagreeing_arrival_launches_more_while_the_first_calls_are_still_out() -> None:
    # Call i takes 1 + i seconds: "a" is back at 1 s, "b" at 2 s; the disagreement raises the need at
    # once, and calls are launched then, not when the first batch is all back (no waves).
    sampler = Counting("ab", delay=1.0, stagger=1.0)
    _virtual(sampler, policy=AdaptiveConsistency(0.95), budget=bc.Budget(samples=12), concurrency="auto")
    t0 = sampler.starts[0]
    first = sum(1 for t in sampler.starts if t == t0)
    assert first < 12 and t0 + 2.0 in sampler.starts  # relaunched at the second arrival
    assert t0 + 2.0 < t0 + 1.0 + first - 1  # while the last of the first calls was still out


def test_cancelled_calls_are_counted_as_wasted_and_optionally_charged() -> None:
    # 4 agreeing calls stop the run at 1.0 s; the others, launched with them, had decoded 10 tokens each.
    for charge in (False, True):
        sampler = Counting("a", delay=1.0, tokens=10)
        result = _virtual(
            sampler,
            policy=AdaptiveConsistency(0.95),
            concurrency=Auto(speed=0.5),
            budget=bc.Budget(charge_wasted=charge),
        )
        assert result.n_cancelled >= 1 and result.wasted_tokens == 10 * result.n_cancelled
        assert result.tokens == 10 * result.n_samples + (result.wasted_tokens if charge else 0)


def test_the_simulator_reports_the_work_cancelled_at_the_stop() -> None:
    samples = [bc.Sample(answer="a", tokens=t) for t in (10, 10, 10, 10, 10, 30)]
    latency = LatencyModel(ttft=0.1, per_token=0.01, concurrency=6)
    (stop,) = replay(latency.stamp(samples), list(range(6)), [AdaptiveConsistency(0.95)], latency=latency)
    # Stops at 0.2 s on the fourth sample; the fifth had decoded its 10 tokens (it ends at 0.2 s too,
    # after the stop) and the 30-token one (0.2 - 0.1) / 0.01 = 10.
    assert stop.reason == "policy" and stop.state.n_samples == 4 and stop.wasted == 20


def test_the_scheduler_plans_a_request_and_learns_its_latency() -> None:
    sampler = Counting("ab", delay=1.0)

    async def main() -> bc.Result:
        async with bc.Scheduler(slots=16) as sched:
            return await sched.solve(
                sampler, policy=AdaptiveConsistency(0.95), budget=bc.Budget(samples=10), concurrency="auto"
            )

    result = anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert sampler.calls <= 10 and sampler.peak > 1  # more than one slot at once, within the budget
    assert result.n_samples >= 4


def test_the_simulate_cli_takes_a_plan_and_reports_it(capsys: pytest.CaptureFixture[str]) -> None:
    from budgetctl.cli import main

    args = ["simulate", "--policy", "ac:threshold=0.95", "--orders", "2", "--ttft-ms", "80", "--ms-per-token", "15"]
    assert main([*args, "--concurrency", "auto:fast,max=8", "--json", "-"]) == 0
    assert '"concurrency": "auto:fast,max=8"' in capsys.readouterr().out
    assert main([*args, "--concurrency", "auto:warp"]) == 2
    assert "--concurrency" in capsys.readouterr().err


def test_the_trace_records_the_plan_and_the_wasted_tokens() -> None:
    import io
    import json

    buffer = io.StringIO()
    sampler = Counting("a", delay=1.0, tokens=10)
    result = _virtual(sampler, policy=AdaptiveConsistency(0.95), concurrency="auto:fast", trace=buffer)
    events = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert events[0]["config"]["concurrency"] == "auto:fast"
    assert events[-1]["event"] == "stop" and events[-1]["wasted_tokens"] == result.wasted_tokens > 0
