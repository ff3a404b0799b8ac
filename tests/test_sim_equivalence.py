"""Simulation equals live runs: replaying a pool through a policy decides what ``solve`` decides.

The live side runs ``solve`` (and a request of the live :class:`~budgetctl.Scheduler`, alone with
slots to spare, which must decide exactly as ``solve`` does: same engine, same launches) on trio
under an autojumping ``MockClock`` with a :class:`ReplaySampler` that sleeps each sample's
modelled latency. The scheduler against its own simulation with many requests sharing slots and
a budget is ``tests/test_scheduler_sim.py``. Latencies are multiples of 2**-10 s, so virtual times
add up exactly; deadlines sit half a tick off the grid, and (with several samples in flight)
latencies are distinct powers of two, so no two events ever coincide and the order of events is
the same on both sides.
"""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import budgetctl as bc
from budgetctl._pool import Question
from budgetctl.policies import (
    ESC,
    AdaptiveConsistency,
    MaxSamples,
    MaxTokens,
    Stable,
    StopPolicy,
    Unbeatable,
)
from budgetctl.sim import LatencyModel, ReplaySampler, orders_for, replay, replay_orders
from budgetctl.sim._reference import reference

TICK = 2.0**-10

policies = st.one_of(
    st.integers(1, 8).map(MaxSamples),
    st.sampled_from([0.6, 0.8, 0.95]).map(AdaptiveConsistency),
    st.integers(1, 4).map(ESC),
    st.integers(1, 4).map(Stable),
    st.integers(1, 8).map(lambda n: Unbeatable(max_samples=n)),
    st.integers(5, 60).map(MaxTokens),
)
composed = st.one_of(
    policies,
    st.tuples(policies, policies).map(lambda p: p[0] | p[1]),
    st.tuples(policies, policies).map(lambda p: p[0] & p[1]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    concurrency = draw(
        st.one_of(
            st.integers(1, 3),
            st.builds(
                bc.Auto,
                speed=st.sampled_from([0.0, 0.3, 0.5, 0.8, 1.0]),
                max_in_flight=st.one_of(st.none(), st.integers(1, 4)),
                prior_latency=st.sampled_from([TICK, 8 * TICK, 64 * TICK, 1.0]),
            ),
        )
    )
    n = draw(st.integers(1, 8))
    answers = draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n))
    if concurrency == 1:
        tokens = draw(st.lists(st.integers(1, 12), min_size=n, max_size=n))
        ttft = draw(st.integers(0, 3))
    else:  # distinct powers of two: no two sums of different samples are equal
        tokens = [2**i for i in draw(st.permutations(list(range(n))))]
        ttft = 0
    samples = [bc.Sample(answer=a, tokens=t) for a, t in zip(answers, tokens, strict=True)]
    order = draw(st.permutations(list(range(n))))
    deadline = draw(st.one_of(st.none(), st.integers(0, 60).map(lambda k: (k + 0.5) * TICK)))
    budget = bc.Budget(
        samples=draw(st.one_of(st.none(), st.integers(0, 9))),
        tokens=draw(st.one_of(st.none(), st.integers(1, 40))),
    )
    return {
        "samples": samples,
        "order": order,
        "policy": draw(composed),
        "latency": LatencyModel(ttft=ttft * TICK, per_token=TICK, concurrency=concurrency),
        "deadline": deadline,
        "budget": budget,
    }


def live(scenario: dict[str, Any], door: str = "solve") -> bc.Result:
    ordered = [scenario["samples"][i] for i in scenario["order"]]
    latency: LatencyModel = scenario["latency"]
    args = {
        "policy": scenario["policy"],
        "budget": scenario["budget"],
        "deadline": scenario["deadline"],
        "concurrency": latency.concurrency,
        "max_failures": None,
    }

    async def main() -> bc.Result:
        sampler = ReplaySampler(ordered, latency)
        if door == "solve":
            return await bc.solve(sampler, **args)
        slots = latency.concurrency if isinstance(latency.concurrency, int) else 64  # a plan: slots to spare
        async with bc.Scheduler(slots=slots) as sched:
            return await sched.solve(sampler, **args)

    return anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from(["solve", "scheduler"]))
def test_simulated_run_equals_live_run(scenario: dict[str, Any], door: str) -> None:
    result = live(scenario, door)
    latency: LatencyModel = scenario["latency"]
    (stop,) = replay(
        latency.stamp(scenario["samples"]),
        scenario["order"],
        [scenario["policy"]],
        budget=scenario["budget"],
        latency=latency,
        deadline=scenario["deadline"],
    )
    assert stop.reason == result.stop_reason
    assert stop.state.answer == result.answer
    assert stop.state.n_samples == result.n_samples
    assert stop.state.tokens == result.tokens
    assert stop.state.elapsed == result.elapsed
    assert stop.state.counts == result.state.counts


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(st.sampled_from(["x", "y", "z", None]), min_size=1, max_size=12),
    tokens=st.lists(st.sampled_from([3, 5]), min_size=12, max_size=12),
    pols=st.lists(composed, min_size=1, max_size=4),
    concurrency=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_shared_prefixes_change_nothing(
    answers: list[Any], tokens: list[int], pols: list[StopPolicy], concurrency: int, seed: int
) -> None:
    # Few distinct samples, so many orders share prefixes and the branching replay forks a lot.
    samples = [bc.Sample(answer=a, tokens=t) for a, t in zip(answers, tokens, strict=False)]
    orders = np.random.default_rng(seed).permuted(np.tile(np.arange(len(samples)), (30, 1)), axis=1)
    latency = LatencyModel(ttft=TICK, per_token=TICK, concurrency=concurrency)
    stamped = latency.stamp(samples)
    together = replay_orders(stamped, orders, pols, latency=latency, deadline=20.5 * TICK)
    for order, stops in zip(orders, together, strict=True):
        alone = [replay(stamped, order, [p], latency=latency, deadline=20.5 * TICK)[0] for p in pols]
        assert stops == alone


@settings(max_examples=40, deadline=None)
@given(
    answers=st.lists(st.sampled_from(["x", "y", "z", None]), min_size=1, max_size=10),
    seed=st.integers(0, 2**16),
)
def test_fixed_n_reference_curve_equals_replaying_max_samples(answers: list[Any], seed: int) -> None:
    samples = tuple(bc.Sample(answer=a, tokens=i + 1) for i, a in enumerate(answers))
    question = Question(id=f"q{seed}", samples=samples, correct_keys=frozenset({"x"}), gold="x")
    orders = orders_for(question, 8, seed)
    ref = reference(question, orders, bc.normalize_answer)
    n = len(samples)
    for o, order in enumerate(orders):
        stops = replay(samples, order, [MaxSamples(k) for k in range(1, n + 1)])
        right = [question.is_correct(s.state.answer) for s in stops]
        assert right == list(ref.majority_correct[o])
        assert [s.state.tokens for s in stops] == list(ref.tokens[o])
        # the cost oracle stops at the first k whose majority is the full pool's
        full = stops[-1].state.answer
        first = next((k for k, s in enumerate(stops, start=1) if s.state.answer == full), n)
        assert ref.oracle_samples[o] == first
