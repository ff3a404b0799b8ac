"""Deadline-aware decisions of ``LearnedStop``: calls in flight that can still land are nearly free.

A learned policy that judged the deadline by its pace so far (one sample back in ``elapsed``)
stopped after the first sample of a concurrent run and cancelled the others, which were about to
land: it lost accuracy at short deadlines against every rule policy. These tests pin the fix on a
small generated pool.
"""

from __future__ import annotations

import math

import pytest
from conftest import make_state

from budgetctl._pool import Pool
from budgetctl.policies import AdaptiveConsistency
from budgetctl.sim import LatencyModel, simulate

pytest.importorskip("sklearn")

from test_learn import synthetic_questions

from budgetctl.learn import LearnedStop
from budgetctl.learn._features import (
    IN_FLIGHT_SHARE,
    call_latency,
    charged_samples,
    horizon_cap,
    in_flight_landing,
)

HORIZONS = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def pool() -> Pool:
    return Pool(questions=synthetic_questions(120, seed=7, dataset="alpha", samples=16), files=[])


@pytest.fixture(scope="module")
def fitted(pool: Pool) -> LearnedStop:
    return LearnedStop(model="linear", horizons=HORIZONS, orders=3, target_orders=24, random_state=0).fit(pool)


def test_the_first_wave_sets_the_pace_and_calls_in_flight_stay_within_reach() -> None:
    # One sample back after 0.9 s of four launched together: three more are about to land.
    state = make_state({"a": 1}, n_in_flight=3, elapsed=0.9, time_left=0.1)
    assert call_latency(state) == pytest.approx(0.9)
    assert in_flight_landing(state) == 3.0
    assert horizon_cap(state, 10.0) == 3
    # Once the first wave is back, the pace is four calls per call latency.
    later = make_state({"a": 6, "b": 2}, n_in_flight=3, elapsed=2.0, time_left=1.0)
    assert call_latency(later) == pytest.approx(1.0)
    assert horizon_cap(later, 10.0) == 4
    # No time left: nothing in flight counts, nothing more can come back.
    assert in_flight_landing(make_state({"a": 1}, n_in_flight=3, elapsed=1.0, time_left=0.0)) == 0.0
    assert horizon_cap(make_state({"a": 1}, n_in_flight=3, elapsed=1.0, time_left=0.0), 10.0) == 0
    # No deadline: the pace does not limit anything.
    assert horizon_cap(make_state({"a": 1}, n_in_flight=3, elapsed=1.0), 10.0) == math.inf


def test_calls_in_flight_are_charged_a_share_of_a_sample() -> None:
    assert charged_samples(2, 3.0) == pytest.approx(2 * IN_FLIGHT_SHARE)
    assert charged_samples(4, 3.0) == pytest.approx(3 * IN_FLIGHT_SHARE + 1)
    assert charged_samples(4, 0.0) == 4


def test_it_waits_for_calls_in_flight_near_the_deadline_unless_they_cannot_matter(fitted: LearnedStop) -> None:
    near = make_state({"a": 1}, n_in_flight=3, elapsed=0.9, time_left=0.1, first_tokens=10)
    assert fitted.predict_gain(near, 2) > 0.0
    assert not fitted(near)
    # The same state with nothing in flight: no sample can come back in 0.1 s at this pace.
    assert fitted(near._replace(n_in_flight=0))
    # Three samples in flight cannot overturn a leader four votes ahead.
    assert fitted(make_state({"a": 4}, n_in_flight=3, elapsed=0.9, time_left=0.1, first_tokens=10))
    # Without a deadline the calls in flight are charged in full, as before.
    free = make_state({"a": 1}, n_in_flight=3, elapsed=0.9, first_tokens=10)
    assert fitted.break_even(near) > fitted.break_even(free)


def test_at_a_short_deadline_it_keeps_up_with_adaptive_consistency(fitted: LearnedStop, pool: Pool) -> None:
    # Samples of 10-99 tokens at 10 ms each, four at a time: the first wave lands between 0.15 and
    # 1.05 s, so at a 0.6 s deadline stopping at the first sample cancels samples about to land.
    latency = LatencyModel(ttft=0.05, per_token=0.01, concurrency=4)
    ac = AdaptiveConsistency(threshold=0.95)
    result = simulate(pool, [fitted, ac], orders=8, latency=latency, deadlines=(0.6, 1.0))
    learned, rule = result.policies[0], result.policies[1]
    for deadline in ("0.6", "1"):
        assert learned.accuracy_at_deadline[deadline] >= rule.accuracy_at_deadline[deadline] - 0.002, deadline
