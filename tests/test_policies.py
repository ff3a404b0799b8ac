"""Stop policies as pure functions: build a RunState, assert the decision; then the algebra's laws."""

from __future__ import annotations

import math
import pickle
from collections.abc import Hashable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from conftest import make_state, states_after
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetctl.policies as policies_module
from budgetctl import Budget, RunState, Sample
from budgetctl.policies import (
    ESC,
    AdaptiveConsistency,
    AllOf,
    AnyOf,
    ConfidenceStop,
    MaxSamples,
    MaxTokens,
    Never,
    Not,
    Stable,
    StopPolicy,
    Unbeatable,
    as_policy,
    stop_when,
)


def first_stop(policy: StopPolicy, answers: list[Any], **core_args: Any) -> int | None:
    """After how many samples ``policy`` first says stop (1-based), or ``None``."""
    for i, state in enumerate(states_after(answers, **core_args), start=1):
        if policy(state):
            return i
    return None


# -- independent references ------------------------------------------------------------------------


def beta_tail_reference(leader: float, runner_up: float) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1), by a fine numerical integral."""
    x = np.linspace(0.5, 1.0, 200_001)
    log_density = leader * np.log(np.maximum(x, 1e-300)) + runner_up * np.log(np.maximum(1 - x, 1e-300))
    log_norm = math.lgamma(leader + 1) + math.lgamma(runner_up + 1) - math.lgamma(leader + runner_up + 2)
    density = np.exp(log_density - log_norm)
    return float(np.trapezoid(density, x))


def dirichlet_reference(votes: list[float], draws: int = 400_000) -> float:
    """P(the first answer has the largest share) under Dirichlet(votes + 1), by seeded Monte Carlo."""
    rng = np.random.default_rng(12345)
    p = rng.dirichlet(np.asarray(votes, dtype=float) + 1.0, size=draws)
    return float(np.mean(np.argmax(p, axis=1) == 0))


# -- fixed caps --------------------------------------------------------------------------------------


def test_max_samples_counts_successful_samples_only() -> None:
    policy = MaxSamples(3)
    assert not policy(make_state({"a": 2}))
    assert policy(make_state({"a": 2, "b": 1}))
    assert not policy(make_state({"a": 2}, n_failed=5))
    assert policy(make_state({"a": 4}))


def test_max_tokens_stops_at_the_cap() -> None:
    policy = MaxTokens(100)
    assert not policy(make_state({"a": 1}, tokens=99))
    assert policy(make_state({"a": 1}, tokens=100))
    assert policy(make_state({}, tokens=150))


# -- Stable --------------------------------------------------------------------------------------------


def test_stable_counts_samples_since_the_leader_last_changed() -> None:
    # A tie goes to the answer seen first, so "b" does not change the leader; "b" twice does.
    assert first_stop(Stable(3), ["a", "b", "a"]) == 3
    assert first_stop(Stable(3), ["a", "b", "b", "b", "b"]) == 5
    # "b" leads 2-1, then "a" ties 2-2 and, seen first, takes the lead back: the streak restarts.
    assert first_stop(Stable(3), ["a", "b", "b", "a", "c", "c"]) == 6
    assert first_stop(Stable(1), ["x"]) == 1
    assert first_stop(Stable(2), [None, None, None]) is None  # no leader, no stability


def test_stable_ignores_failed_samples() -> None:
    bad = Sample(error="boom")
    assert first_stop(Stable(2), ["a", bad, bad, "a"]) == 4


# -- Adaptive-Consistency -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("votes", "probability", "stops"),
    [
        (4, Fraction(31, 32), True),
        (3, Fraction(15, 16), False),
        (1, Fraction(3, 4), False),
        (5, Fraction(63, 64), True),
    ],
)
def test_adaptive_consistency_beta_unanimous_votes(votes: int, probability: Fraction, stops: bool) -> None:
    # n unanimous votes: P(p > 1/2) with p ~ Beta(n + 1, 1) is 1 - 2^-(n+1).
    state = make_state({"a": votes})
    policy = AdaptiveConsistency(0.95)
    assert policy.probability(state) == pytest.approx(float(probability), abs=1e-15)
    assert policy(state) is stops


def test_adaptive_consistency_first_stop_on_a_real_trajectory() -> None:
    assert first_stop(AdaptiveConsistency(0.95), ["a", "a", "a", "a", "a"]) == 4
    # One dissent: Beta(5, 2) gives 0.890625, Beta(6, 2) 0.9375, Beta(7, 2) 0.9648...
    assert first_stop(AdaptiveConsistency(0.95), ["a", "b", "a", "a", "a", "a", "a", "a"]) == 7


@pytest.mark.parametrize(("leader", "runner_up"), [(5, 1), (7, 3), (12, 9), (3.5, 1.25), (0.8, 0.3), (30, 22)])
def test_adaptive_consistency_beta_matches_the_integral(leader: float, runner_up: float) -> None:
    state = make_state({"a": leader, "b": runner_up})
    got = AdaptiveConsistency(0.95).probability(state)
    assert got == pytest.approx(beta_tail_reference(leader, runner_up), abs=1e-6)


def test_adaptive_consistency_never_stops_without_votes() -> None:
    empty = make_state({}, n_abstained=3, n_samples=3)
    assert AdaptiveConsistency(0.0).probability(empty) == 0.0
    assert not AdaptiveConsistency(0.0)(empty)
    assert AdaptiveConsistency(0.0)(make_state({"a": 1}))


@pytest.mark.parametrize(
    "counts", [{"a": 4, "b": 1, "c": 1}, {"a": 6, "b": 3, "c": 2, "d": 1}, {"a": 3, "b": 3, "c": 1}]
)
def test_adaptive_consistency_dirichlet_matches_monte_carlo(counts: dict[str, float]) -> None:
    state = make_state(counts)
    got = AdaptiveConsistency(0.95, criterion="dirichlet").probability(state)
    assert got == pytest.approx(dirichlet_reference(list(counts.values())), abs=0.005)


@pytest.mark.parametrize("counts", [{"a": 4}, {"a": 4, "b": 1}, {"a": 7, "b": 5}])
def test_adaptive_consistency_dirichlet_falls_back_to_beta_with_two_answers(counts: dict[str, float]) -> None:
    state = make_state(counts)
    beta = AdaptiveConsistency(criterion="beta").probability(state)
    assert AdaptiveConsistency(criterion="dirichlet").probability(state) == beta


def test_adaptive_consistency_dirichlet_differs_from_beta_with_three_answers() -> None:
    state = make_state({"a": 4, "b": 1, "c": 1})
    beta = AdaptiveConsistency(criterion="beta").probability(state)
    dirichlet = AdaptiveConsistency(criterion="dirichlet").probability(state)
    assert beta == pytest.approx(1 - 7 / 64)  # Beta(5, 2): the third answer is ignored
    assert dirichlet != pytest.approx(beta, abs=1e-3)


def test_adaptive_consistency_dirichlet_top_k_limits_the_answers_compared() -> None:
    state = make_state({"a": 5, "b": 2, "c": 2, "d": 2, "e": 2})
    top2 = AdaptiveConsistency(criterion="dirichlet", top_k=2).probability(state)
    assert top2 == AdaptiveConsistency(criterion="beta").probability(state)
    top3 = AdaptiveConsistency(criterion="dirichlet", top_k=3).probability(state)
    top5 = AdaptiveConsistency(criterion="dirichlet", top_k=5).probability(state)
    assert top5 < top3 < top2  # more rivals, less certainty
    assert top3 == pytest.approx(dirichlet_reference([5, 2, 2]), abs=0.005)


# -- ESC -----------------------------------------------------------------------------------------------


def test_esc_stops_at_the_end_of_a_unanimous_window() -> None:
    assert first_stop(ESC(5), ["a"] * 5) == 5
    assert first_stop(ESC(5), ["a"] * 4) is None


def test_esc_windows_do_not_slide() -> None:
    # Samples 2..6 agree, but windows are 1-5 and 6-10: the first unanimous window is 6-10.
    assert first_stop(ESC(5), ["b"] + ["a"] * 9) == 10
    assert first_stop(ESC(5), ["b"] + ["a"] * 8) is None


def test_esc_normalises_and_abstentions_break_a_window() -> None:
    assert first_stop(ESC(3), ["1,000", "1000.0", " 1000 "]) == 3
    assert first_stop(ESC(3), ["a", None, "a", "a", "a", "a"]) == 6


def test_esc_window_one_stops_at_the_first_answer() -> None:
    assert first_stop(ESC(1), [None, "a"]) == 2


# -- ConfidenceStop --------------------------------------------------------------------------------------


def test_confidence_stop_sources() -> None:
    state = make_state({"a": 3, "b": 1}, leader_sample_confidence=0.8, leader_score=0.95)  # vote share 0.75
    assert ConfidenceStop(0.9, source="score")(state)
    assert not ConfidenceStop(0.9, source="sample")(state)
    assert not ConfidenceStop(0.9, source="vote")(state)
    assert ConfidenceStop(0.7, source="vote")(state)
    assert not ConfidenceStop(0.9, source="auto")(state)  # sample confidence comes first
    assert ConfidenceStop(0.9, source="auto")(state._replace(leader_sample_confidence=None))
    assert ConfidenceStop(0.9).leader_confidence(state) == 0.8


def test_confidence_stop_without_a_confidence_never_stops() -> None:
    state = make_state({"a": 10})
    assert not ConfidenceStop(0.0, source="sample")(state)
    assert not ConfidenceStop(0.0, source="score")(state)
    assert not ConfidenceStop(0.0, source="auto")(state)
    assert ConfidenceStop(0.0, source="vote")(state)
    assert not ConfidenceStop(0.0, source="vote")(make_state({}))


def test_confidence_stop_waits_for_min_samples() -> None:
    state = make_state({"a": 2}, leader_sample_confidence=0.99)
    assert not ConfidenceStop(0.9, min_samples=3)(state)
    assert ConfidenceStop(0.9, min_samples=2)(state)


def test_confidence_stop_on_logprob_samples() -> None:
    # exp(logprob / tokens): -1 over 10 tokens is 0.905; -10 over 10 tokens is 0.37.
    sure = Sample(answer="a", tokens=10, logprob=-1.0)
    unsure = Sample(answer="b", tokens=10, logprob=-10.0)
    assert first_stop(ConfidenceStop(0.9), [unsure, sure, sure, sure]) == 3  # "a" overtakes at sample 3
    assert first_stop(ConfidenceStop(0.9), [unsure, unsure]) is None


# -- Unbeatable ------------------------------------------------------------------------------------------


def test_unbeatable_with_a_sample_budget() -> None:
    budget = Budget(samples=10)
    # After 6 "a", 4 samples left cannot even tie. After 5, 5 left could tie, and a tie is not
    # known to keep "a" (ties go to the answer seen first, which the state does not say): go on.
    assert first_stop(Unbeatable(), ["a"] * 10, budget=budget) == 6
    # a,b alternating: after 9, "a" leads 5-4 with 1 left: "b" could tie, so only the end settles it.
    assert first_stop(Unbeatable(), ["a", "b"] * 5, budget=budget) == 10
    # Three-way tie after 9: one more sample could still decide it; only the end settles it.
    assert first_stop(Unbeatable(), ["a", "b", "c"] * 3 + ["a"], budget=budget) == 10


def test_unbeatable_with_its_own_cap() -> None:
    assert first_stop(Unbeatable(max_samples=5), ["a", "a", "a"]) == 3
    assert first_stop(Unbeatable(max_samples=5), ["a", "b", "a", "b", "a"]) == 5


def test_unbeatable_without_any_cap_never_stops() -> None:
    assert first_stop(Unbeatable(), ["a"] * 20) is None


def test_unbeatable_counts_samples_in_flight_as_possible_votes() -> None:
    # Budget of 3 samples, all launched at once; the first is back. The two in flight could
    # both say "b" and win, so stopping now could change the answer.
    state = make_state({"a": 1}, n_in_flight=2, samples_left=0)
    assert not Unbeatable()(state)
    assert not Unbeatable(max_samples=3)(state)
    assert Unbeatable()(make_state({"a": 2}, n_samples=2, n_in_flight=1, samples_left=0))
    assert Unbeatable()(make_state({}, n_in_flight=0, samples_left=0))


# -- construction ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "bad"),
    [
        (lambda: MaxSamples(0), ValueError, "0"),
        (lambda: MaxSamples(2.5), TypeError, "2.5"),  # type: ignore[arg-type]
        (lambda: MaxSamples(True), TypeError, "True"),
        (lambda: MaxTokens(-1), ValueError, "-1"),
        (lambda: Stable(0), ValueError, "0"),
        (lambda: AdaptiveConsistency(1.5), ValueError, "1.5"),
        (lambda: AdaptiveConsistency(math.nan), ValueError, "nan"),
        (lambda: AdaptiveConsistency("0.9"), TypeError, "'0.9'"),  # type: ignore[arg-type]
        (lambda: AdaptiveConsistency(criterion="gamma"), ValueError, "'gamma'"),  # type: ignore[arg-type]
        (lambda: AdaptiveConsistency(top_k=1), ValueError, "1"),
        (lambda: ESC(0), ValueError, "0"),
        (lambda: ESC(window=-3), ValueError, "-3"),
        (lambda: ConfidenceStop(math.inf), ValueError, "inf"),
        (lambda: ConfidenceStop(source="logits"), ValueError, "'logits'"),  # type: ignore[arg-type]
        (lambda: ConfidenceStop(min_samples=0), ValueError, "0"),
        (lambda: Unbeatable(max_samples=0), ValueError, "0"),
    ],
)
def test_constructor_errors_name_the_bad_value(build: Any, error: type[Exception], bad: str) -> None:
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    assert f"got {bad}" in message
    assert message.split(":")[0] in {"MaxSamples", "MaxTokens", "Stable", "AdaptiveConsistency", "ESC"} | {
        "ConfidenceStop",
        "Unbeatable",
    }


def test_policies_are_frozen() -> None:
    policy = MaxSamples(3)
    with pytest.raises(AttributeError):
        policy.n = 4  # type: ignore[misc]


def test_as_policy_accepts_none_policies_and_callables() -> None:
    assert as_policy(None) == Never()
    assert as_policy(MaxSamples(2)) == MaxSamples(2)
    wrapped = as_policy(lambda s: s.n_samples > 1)
    assert wrapped(make_state({"a": 2})) and not wrapped(make_state({"a": 1}))
    with pytest.raises(TypeError, match="got 3"):
        as_policy(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got 'x'"):
        stop_when("x")  # type: ignore[arg-type]


def test_plain_functions_compose_from_either_side() -> None:
    def two(state: RunState) -> bool:
        return state.n_samples >= 2

    left = two | MaxSamples(5)
    right = MaxSamples(5) | two
    assert isinstance(left, AnyOf) and isinstance(right, AnyOf)
    assert left(make_state({"a": 2})) and right(make_state({"a": 2}))
    both = two & MaxSamples(5)
    assert isinstance(both, AllOf)
    assert not both(make_state({"a": 2})) and both(make_state({"a": 5}))
    assert repr(left) == "stop_when(test_plain_functions_compose_from_either_side.<locals>.two) | MaxSamples(n=5)"


# -- the algebra, by property ------------------------------------------------------------------------------

answers = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "1000", "1,000"]))


@st.composite
def run_states(draw: st.DrawFn) -> RunState:
    """A snapshot reached by a real RunCore: random answers, scores, logprobs, a random sample budget."""
    n = draw(st.integers(0, 25))
    samples = [
        Sample(
            answer=draw(answers),
            tokens=draw(st.integers(0, 50)),
            logprob=draw(st.none() | st.floats(-20.0, 0.0)),
            score=draw(st.none() | st.floats(0.0, 1.0)),
        )
        for _ in range(n)
    ]
    cap = draw(st.none() | st.integers(n, n + 10))
    states = states_after(samples, budget=Budget(samples=cap))
    if not states:
        return make_state({}, samples_left=cap)
    state = states[-1]
    return state._replace(n_in_flight=draw(st.integers(0, 3)))


atoms: st.SearchStrategy[StopPolicy] = st.one_of(
    st.builds(MaxSamples, st.integers(1, 20)),
    st.builds(MaxTokens, st.integers(1, 500)),
    st.builds(Stable, st.integers(1, 6)),
    st.builds(AdaptiveConsistency, st.floats(0.5, 0.99), st.sampled_from(["beta", "dirichlet"]), st.integers(2, 5)),
    st.builds(ESC, st.integers(1, 6)),
    st.builds(ConfidenceStop, st.floats(0.0, 1.0), st.sampled_from(["auto", "sample", "score", "vote"])),
    st.builds(Unbeatable, st.none() | st.integers(1, 30)),
    st.just(Never()),
)

composed: st.SearchStrategy[StopPolicy] = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: ab[0] | ab[1]),
        st.tuples(inner, inner).map(lambda ab: ab[0] & ab[1]),
        inner.map(lambda a: ~a),
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(composed, composed, run_states())
def test_operators_obey_their_truth_tables(a: StopPolicy, b: StopPolicy, state: RunState) -> None:
    x, y = a(state), b(state)
    assert type(x) is bool and type(y) is bool
    assert (a | b)(state) == (x or y) == (b | a)(state)
    assert (a & b)(state) == (x and y) == (b & a)(state)
    assert (~a)(state) == (not x)
    assert (~~a)(state) == x
    # De Morgan.
    assert (~(a | b))(state) == (~a & ~b)(state)
    assert (~(a & b))(state) == (~a | ~b)(state)
    # Identities with Never (false) and ~Never (true).
    assert (a | Never())(state) == x
    assert (a & ~Never())(state) == x
    assert not (a & Never())(state)


@settings(max_examples=60, deadline=None)
@given(composed, composed, composed)
def test_operators_flatten_and_associate(a: StopPolicy, b: StopPolicy, c: StopPolicy) -> None:
    assert (a | b) | c == a | (b | c)
    assert (a & b) & c == a & (b & c)
    flat = (a | b) | c
    assert isinstance(flat, AnyOf)
    assert not any(isinstance(p, AnyOf) for p in flat.policies)
    flat_all = (a & b) & c
    assert isinstance(flat_all, AllOf)
    assert not any(isinstance(p, AllOf) for p in flat_all.policies)
    assert ~a == Not(a)


@settings(max_examples=100, deadline=None)
@given(composed, run_states())
def test_policies_are_pure(policy: StopPolicy, state: RunState) -> None:
    counts_before = dict(state.counts)
    fields_before = tuple(state)
    first = policy(state)
    assert all(policy(state) == first for _ in range(3))
    assert tuple(state) == fields_before and dict(state.counts) == counts_before
    # An equal snapshot built separately gets the same answer (no identity-based state).
    copy = state._replace(counts=dict(state.counts))
    assert policy(copy) == first
    # And a policy rebuilt from its pickle decides the same.
    assert pickle.loads(pickle.dumps(policy))(state) == first


@settings(max_examples=100, deadline=None)
@given(composed)
def test_repr_is_readable_and_round_trips(policy: StopPolicy) -> None:
    text = repr(policy)
    assert "object at 0x" not in text
    namespace: dict[str, Any] = {name: getattr(policies_module, name) for name in policies_module.__all__}
    rebuilt = eval(text, namespace)
    assert rebuilt == policy
    assert repr(rebuilt) == text


def test_repr_examples() -> None:
    policy = AdaptiveConsistency(0.95) | MaxSamples(40)
    assert repr(policy) == "AdaptiveConsistency(threshold=0.95, criterion='beta', top_k=5) | MaxSamples(n=40)"
    assert repr(ESC(5) & (Stable(3) | MaxTokens(100))) == "ESC(window=5) & (Stable(k=3) | MaxTokens(n=100))"
    assert repr(~(ESC(5) | Stable(2))) == "~(ESC(window=5) | Stable(k=2))"
    assert repr(~ESC(5)) == "~ESC(window=5)"


def _hashable_leader(state: RunState) -> Hashable:
    return state.answer


def test_state_helper_is_consistent_with_a_real_run() -> None:
    # make_state is the test's model of a RunState: it must agree with RunCore on the vote fields.
    real = states_after(["a", "b", "a", "a"])[-1]
    model = make_state({"a": 3, "b": 1})
    for name in ("answer", "leader_votes", "runner_up_votes", "total_votes", "confidence", "n_distinct", "n_samples"):
        assert getattr(real, name) == getattr(model, name), name
    assert _hashable_leader(real) == "a"
