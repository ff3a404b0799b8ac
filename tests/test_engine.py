"""The sans-I/O engine: caps count launched work, through each policy's ``remaining_bound``.

* Properties on the engine alone, driven by a fake driver that completes calls in a random order:
  the calls launched (back + in flight) never exceed what the policy's bound allows, and a run
  whose policy has not stopped always has a call in flight (a bound delays, never ends, a run).
* Bounds of the rules and of ``|``, ``&``, ``~``: a finite bound is kept (after that many more
  samples the policy says stop, and keeps saying it).
* The answer is unchanged against the same run without bounds when calls complete in launch order.
* Live: ``MaxSamples(n)`` makes n calls at any concurrency; the README's
  ``AdaptiveConsistency(0.95) | MaxSamples(40), concurrency=4`` makes at most 40 when no answer repeats.
"""

from __future__ import annotations

import random
from typing import Any

from conftest import Replay, run_virtual, states_after
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetctl as bc
from budgetctl._core import RunCore
from budgetctl._state import STOP_REASONS
from budgetctl.policies import (
    ESC,
    AdaptiveConsistency,
    MaxSamples,
    MaxTokens,
    Never,
    Stable,
    StopPolicy,
    Unbeatable,
    stop_when,
)
from budgetctl.sim import LatencyModel, replay

leaves = st.one_of(
    st.integers(1, 8).map(MaxSamples),
    st.integers(5, 60).map(MaxTokens),
    st.integers(1, 8).map(lambda n: Unbeatable(max_samples=n)),
    st.sampled_from([0.6, 0.8, 0.95]).map(AdaptiveConsistency),
    st.integers(1, 4).map(ESC),
    st.integers(1, 4).map(Stable),
)
composed = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda p: p[0] | p[1]),
        st.tuples(inner, inner).map(lambda p: p[0] & p[1]),
        inner.map(lambda p: ~p),
    ),
    max_leaves=4,
)
outcomes = st.one_of(
    st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(0, 12)).map(
        lambda t: bc.Sample(answer=t[0], tokens=t[1])
    ),
    st.just(RuntimeError("down")),
)


@settings(max_examples=300, deadline=None)
@given(
    policy=composed,
    script=st.lists(outcomes, min_size=1, max_size=30),
    concurrency=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_launched_calls_never_exceed_the_bound(
    policy: StopPolicy, script: list[Any], concurrency: int, seed: int
) -> None:
    rng = random.Random(seed)
    estimated = _has_estimate(policy)
    core = RunCore(policy=policy, concurrency=concurrency, max_failures=None)
    reason = core.start(0.0)
    in_flight: list[int] = []
    now = 0.0
    while reason is None:
        launch = core.fill()
        in_flight.extend(range(core.n_launched - launch, core.n_launched))
        bound = policy.remaining_bound(core.state)
        if bound is not None and (launch or not estimated):
            # Launched work beyond the samples back never passes the bound (one call at least). An
            # estimated bound may shrink below the calls already launched: it only stops launches.
            assert core.n_in_flight <= max(bound, 1)
        assert core.n_in_flight >= 1  # a run that goes on always has a call in flight
        assert core.n_in_flight == len(in_flight) <= concurrency
        index = in_flight.pop(rng.randrange(len(in_flight)))  # any completion order
        now += 1.0
        outcome = script[index % len(script)] if index < 3 * len(script) else bc.Exhausted()
        reason = core.outcome(outcome, 0.0, now)
    assert reason in STOP_REASONS


@settings(max_examples=300, deadline=None)
@given(
    policy=composed,
    answers=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(0, 12)), max_size=12),
)
def test_a_finite_bound_is_kept(policy: StopPolicy, answers: list[tuple[Any, int]]) -> None:
    # From every state of a run, once `bound` more samples are back the policy says stop for good.
    samples = [bc.Sample(answer=a, tokens=t) for a, t in answers]
    states = states_after(samples)
    for i, state in enumerate(states):
        bound = policy.remaining_bound(state)
        if bound is None or isinstance(policy, MaxTokens) or _has_estimate(policy):
            continue
        for later in states[i + bound :]:
            assert policy(later), (policy, state, bound)


def _has_estimate(policy: StopPolicy) -> bool:
    # MaxTokens's bound is an estimate (documented), so it is exempt from the promise, and so is
    # any composition that contains one.
    parts = getattr(policy, "policies", None)
    if parts is not None:
        return any(_has_estimate(p) for p in parts)
    inner = getattr(policy, "policy", None)
    return isinstance(policy, MaxTokens) or (inner is not None and _has_estimate(inner))


def test_bounds_of_the_rules_and_their_compositions() -> None:
    (state,) = states_after(["a"])
    assert MaxSamples(10).remaining_bound(state) == 9
    assert Unbeatable(max_samples=4).remaining_bound(state) == 3
    assert MaxTokens(5).remaining_bound(state) == 4  # 4 tokens left at 1 token per sample
    for unbounded in (AdaptiveConsistency(0.95), ESC(5), Stable(3), Never(), stop_when(lambda s: False)):
        assert unbounded.remaining_bound(state) is None
    assert (AdaptiveConsistency(0.95) | MaxSamples(10)).remaining_bound(state) == 9
    assert (MaxSamples(3) | MaxSamples(10)).remaining_bound(state) == 2
    assert (MaxSamples(3) & MaxSamples(10)).remaining_bound(state) == 9
    assert (AdaptiveConsistency(0.95) & MaxSamples(10)).remaining_bound(state) is None
    assert (~MaxSamples(3)).remaining_bound(state) is None
    (fresh,) = states_after([bc.Sample(answer="a", tokens=0)])
    assert MaxTokens(5).remaining_bound(fresh) is None  # no token spent yet: nothing to estimate from


@settings(max_examples=200, deadline=None)
@given(
    policy=composed,
    answers=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(1, 12)), min_size=1, max_size=12),
    concurrency=st.integers(1, 6),
)
def test_bounds_change_no_answer_when_calls_complete_in_launch_order(
    policy: StopPolicy, answers: list[tuple[Any, int]], concurrency: int
) -> None:
    # Every sample takes the same time, so calls complete in launch order: bounded and unbounded
    # runs see the same samples in the same order and stop on the same one. (The same policy as a
    # plain function has no bound.) Unbeatable reads samples_left and n_in_flight, which launching
    # less changes, so it is left out here; so are negations, which may stop before any sample,
    # on the event of a launch that found the pool exhausted (an event only the run that launched
    # more sees).
    if "Unbeatable" in repr(policy) or "~" in repr(policy):
        return
    samples = [bc.Sample(answer=a, tokens=t) for a, t in answers]
    order = list(range(len(samples)))
    latency = LatencyModel(ttft=1.0, concurrency=concurrency)
    stamped = latency.stamp(samples)
    (bounded,) = replay(stamped, order, [policy], latency=latency)
    (unbounded,) = replay(stamped, order, [stop_when(policy)], latency=latency)
    assert bounded.reason == unbounded.reason
    assert bounded.state.answer == unbounded.state.answer
    assert bounded.state.n_samples == unbounded.state.n_samples
    assert bounded.state.tokens == unbounded.state.tokens
    assert bounded.state.counts == unbounded.state.counts


# -- live runs ----------------------------------------------------------------------------------------


def test_max_samples_makes_exactly_n_calls_at_any_concurrency() -> None:
    for n, concurrency in [(10, 10), (3, 8), (5, 1), (7, 3)]:

        async def main(n: int = n, concurrency: int = concurrency) -> tuple[bc.Result, Replay]:
            sampler = Replay([bc.Sample(answer=str(i % 3), tokens=5) for i in range(40)], delay=1.0)
            return await bc.solve(sampler, policy=MaxSamples(n), concurrency=concurrency), sampler

        result, sampler = run_virtual(main)
        assert result.stop_reason == "policy" and result.n_samples == n
        assert sampler.calls == n and result.n_cancelled == 0


def test_max_samples_makes_more_calls_only_for_failures() -> None:
    async def main() -> tuple[bc.Result, Replay]:
        script: list[object] = [RuntimeError("down"), *(bc.Sample(answer="a", tokens=1) for _ in range(9))]
        sampler = Replay(script, delay=1.0)
        return await bc.solve(sampler, policy=MaxSamples(4), concurrency=4), sampler

    result, sampler = run_virtual(main)
    assert result.n_samples == 4 and result.n_failed == 1
    assert sampler.calls == 5  # four, and one more for the one that failed


def test_the_readme_example_makes_at_most_40_calls_when_no_answer_repeats() -> None:
    async def main() -> tuple[bc.Result, Replay]:
        sampler = Replay([bc.Sample(answer=f"answer {i}", tokens=10) for i in range(100)], delay=[1.0, 1.5, 0.5, 2.0])
        policy = AdaptiveConsistency(0.95) | MaxSamples(40)
        return await bc.solve(sampler, policy=policy, concurrency=4), sampler

    result, sampler = run_virtual(main)
    assert result.stop_reason == "policy" and result.n_samples == 40
    assert sampler.calls == 40


def test_a_fatal_failure_leaves_no_room_to_launch() -> None:
    core = RunCore(policy=MaxSamples(10), concurrency=4)
    assert core.start(0.0) is None and core.fill() == 4
    core.outcome(bc.FatalSamplerError("404"), 0.1, 0.1)
    assert core.fatal and core.room() == 0 and core.fill() == 0


def test_judging_a_policy_that_raises_names_it_as_decide_does() -> None:
    import pytest

    from budgetctl.policies import PolicyError, as_policy

    def broken(state: bc.RunState) -> bool:
        raise ZeroDivisionError("no")

    core = RunCore(policy=MaxSamples(3))
    core.start(0.0)
    core.fill()
    core.outcome(bc.Sample(answer="a"), 0.1, 0.1)
    with pytest.raises(PolicyError, match="broken") as info:
        core.judge([MaxSamples(5), as_policy(broken)], core.state)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_an_answer_whose_comparison_raises_leaves_the_vote_untouched() -> None:
    class Touchy:
        def __hash__(self) -> int:
            return 1

        def __eq__(self, other: object) -> bool:
            if other is self:
                return True
            raise ValueError("cannot compare")

    core = RunCore(policy=MaxSamples(5))
    core.start(0.0)
    core.fill()
    core.outcome(bc.Sample(answer="a"), 0.1, 0.1)
    before = dict(core.state.counts)
    core.fill()
    core.outcome(bc.Sample(answer=Touchy()), 0.2, 0.2)
    assert dict(core.state.counts) == before and core.n_failed == 1 and core.state.total_votes == 1


def test_wasted_tokens_are_counted_and_charged_only_when_the_budget_says_so() -> None:
    for charge in (False, True):
        core = RunCore(policy=MaxSamples(5), budget=bc.Budget(tokens=100, price_per_token=0.01, charge_wasted=charge))
        core.start(0.0)
        core.fill()
        core.outcome(bc.Sample(answer="a", tokens=10), 0.1, 0.1)
        shown = core.charged(core.state, 7)  # the simulator's view of a stop that gave up 7 decoded tokens
        core.wasted(7)
        assert core.wasted_tokens == 7
        assert core.tokens == shown.tokens == (17 if charge else 10)
        assert shown.tokens_left == (83 if charge else 90)
        assert core.finish("policy", 0.2).wasted_tokens == 7
