"""Aggregators: how samples become the current best answer and a confidence in it."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest
from conftest import Replay, states_after
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetctl as bc
from budgetctl import BestOfN, FirstAccepted, MajorityVote, Sample, WeightedVote, normalize_answer

pytestmark = pytest.mark.anyio


def tally_of(aggregator: Any, samples: list[Sample]) -> Any:
    tally = aggregator.start()
    for sample in samples:
        tally.add(sample)
    return tally


def votes(*answers: Hashable) -> list[Sample]:
    return [Sample(answer=a, tokens=1) for a in answers]


# -- normalisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("1,000", 1000),
        ("1000.0", 1000),
        ("1000", 1000),
        (" 1000 ", 1000),
        (1000.0, 1000),
        ("-12,345.50", -12345.5),
        ("1,000,000", 1_000_000),
        ("0.5", 0.5),
        ("  New   York ", "new york"),
        ("PARIS", "paris"),
        ("1,2", "1,2"),  # not a thousands separator: a list, or a decimal comma
        ("12,34", "12,34"),
        ("nan", "nan"),
        ("inf", "inf"),
        ("12345678901234567891", 12345678901234567891),  # exact, no float rounding
        ((1, 2), (1, 2)),
    ],
)
def test_normalize_answer(raw: Hashable, key: Hashable) -> None:
    got = normalize_answer(raw)
    assert got == key
    assert type(got) is type(key)


def test_big_integers_written_as_text_do_not_collide() -> None:
    assert normalize_answer("12345678901234567890") != normalize_answer("12345678901234567891")
    assert normalize_answer("12345678901234567891") == normalize_answer(12345678901234567891)


@given(st.integers(-(10**30), 10**30))
def test_integers_and_their_text_forms_vote_together(n: int) -> None:
    key = normalize_answer(n)
    assert normalize_answer(str(n)) == key
    assert normalize_answer(f"{n:,}") == key
    assert normalize_answer(f" {n} ") == key


# -- majority vote ---------------------------------------------------------------------------------


def test_majority_vote_groups_normalised_answers_and_reports_the_first_raw_one() -> None:
    tally = tally_of(MajorityVote(), votes("1,000", "7", "1000.0", "1000", "7"))
    assert tally.best == "1,000"
    assert tally.leader_votes == 3 and tally.runner_up_votes == 2 and tally.total_votes == 5
    assert tally.confidence == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("answers", "best"),
    [
        (["a", "b"], "a"),
        (["b", "a"], "b"),
        (["a", "b", "b", "a"], "a"),  # 2-2: "a" was seen first (Counter.most_common's rule)
        (["a", "b", "c", "c", "b", "a"], "a"),
        (["a", "b", "b"], "b"),  # a strict lead wins whatever was seen first
    ],
)
def test_majority_tie_goes_to_the_answer_seen_first(answers: list[str], best: str) -> None:
    assert tally_of(MajorityVote(), votes(*answers)).best == best


def test_majority_vote_custom_normaliser() -> None:
    last_word = MajorityVote(normalize=lambda a: str(a).split()[-1].lower())
    tally = tally_of(last_word, votes("The answer is Paris", "paris", "it is London"))
    assert tally.best == "The answer is Paris"
    assert tally.leader_votes == 2


def test_a_normaliser_returning_none_abstains() -> None:
    skip_unknown = MajorityVote(normalize=lambda a: None if a == "unknown" else a)
    state = states_after(["unknown", "unknown", "x"], aggregator=skip_unknown)[-1]
    assert state.answer == "x"
    assert state.n_abstained == 2 and state.total_votes == 1


@st.composite
def weighted_samples(draw: st.DrawFn) -> list[Sample]:
    return [
        Sample(answer=draw(st.sampled_from("abcd")), tokens=1, confidence=draw(st.none() | st.floats(0.0, 1.0)))
        for _ in range(draw(st.integers(0, 30)))
    ]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([MajorityVote(), WeightedVote(), WeightedVote(default_weight=0.5)]), weighted_samples())
def test_tally_leader_and_runner_up_match_a_recount(aggregator: Any, samples: list[Sample]) -> None:
    tally = tally_of(aggregator, samples)
    weight = {Sample: 1.0}
    counts: dict[Hashable, float] = {}
    leader: Hashable = None
    for s in samples:
        if isinstance(aggregator, WeightedVote):
            w = aggregator.default_weight if s.confidence is None else s.confidence
        else:
            w = weight[Sample]
        counts[s.answer] = counts.get(s.answer, 0.0) + w
    # Counter.most_common's rule: the most votes, ties to the answer seen first (dict order).
    leader = max(counts, key=counts.__getitem__) if counts else None
    assert tally.total_votes == pytest.approx(sum(counts.values()))
    assert tally.best == leader
    if leader is not None:
        assert tally.leader_votes == pytest.approx(counts[leader])
        assert tally.leader_votes == pytest.approx(max(counts.values()))
        others = [v for k, v in counts.items() if k != leader]
        assert tally.runner_up_votes == pytest.approx(max(others, default=0.0))


# -- weighted vote -----------------------------------------------------------------------------------


def test_weighted_vote_lets_confident_samples_outvote_many_unsure_ones() -> None:
    samples = [
        Sample(answer="a", confidence=0.2),
        Sample(answer="a", confidence=0.2),
        Sample(answer="b", confidence=0.9),
    ]
    assert tally_of(MajorityVote(), samples).best == "a"
    weighted = tally_of(WeightedVote(), samples)
    assert weighted.best == "b"
    assert weighted.confidence == pytest.approx(0.9 / 1.3)


def test_weighted_vote_uses_logprobs_and_a_default_weight() -> None:
    # exp(-2 / 2) = 0.37 per token for "a"; "b" has no confidence and weighs default_weight.
    samples = [Sample(answer="a", tokens=2, logprob=-2.0), Sample(answer="b")]
    assert tally_of(WeightedVote(default_weight=1.0), samples).best == "b"
    assert tally_of(WeightedVote(default_weight=0.1), samples).best == "a"


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_weighted_vote_rejects_bad_default_weight(bad: float) -> None:
    with pytest.raises(ValueError, match="default_weight"):
        WeightedVote(default_weight=bad)


# -- best-of-N ---------------------------------------------------------------------------------------


def test_best_of_n_picks_the_highest_score_and_keeps_the_earliest_on_ties() -> None:
    samples = [
        Sample(answer="a", score=0.4),
        Sample(answer="b", score=0.8),
        Sample(answer="a", score=0.7),
        Sample(answer="c", score=0.8),
    ]
    tally = tally_of(BestOfN(), samples)
    assert tally.best == "b"
    assert tally.confidence == pytest.approx(0.8)


def test_best_of_n_falls_back_to_the_majority_until_a_score_arrives() -> None:
    tally = tally_of(BestOfN(), votes("a", "b", "b"))
    assert tally.best == "b"
    assert tally.confidence == pytest.approx(2 / 3)
    tally.add(Sample(answer="a", score=3.0))
    assert tally.best == "a"
    assert tally.confidence == 1.0  # scores are clipped to [0, 1]


# -- first-accepted ----------------------------------------------------------------------------------


def test_first_accepted_keeps_the_first_acceptance() -> None:
    tally = tally_of(
        FirstAccepted(threshold=0.5),
        [Sample(answer="a", score=0.1), Sample(answer="b", score=0.5), Sample(answer="c", score=1.0)],
    )
    assert tally.settled and tally.best == "b" and tally.confidence == 1.0


def test_first_accepted_is_the_majority_until_something_is_accepted() -> None:
    tally = tally_of(FirstAccepted(), [Sample(answer="a", score=0.9), Sample(answer="a"), Sample(answer="b")])
    assert not tally.settled
    assert tally.best == "a" and tally.confidence == pytest.approx(2 / 3)


def test_first_accepted_rejects_a_nan_threshold() -> None:
    with pytest.raises(ValueError, match="nan"):
        FirstAccepted(threshold=float("nan"))


async def test_first_accepted_settles_the_run() -> None:
    sampler = Replay(
        [
            Sample(answer="a", score=0.2),
            Sample(answer="a", score=0.3),
            Sample(answer="b", score=1.0),
            Sample(answer="a", score=0.1),
            Sample(answer="a", score=0.1),
        ]
    )
    result = await bc.solve(sampler, aggregator=FirstAccepted(), concurrency=1)
    assert result.stop_reason == "policy"
    assert result.answer == "b" and result.confidence == 1.0
    assert result.n_samples == 3 and sampler.calls == 3


async def test_majority_vote_through_solve() -> None:
    result = await bc.solve(Replay(votes("1,000", "5", "1000.0", "1000")))
    assert result.stop_reason == "exhausted"
    assert result.answer == "1,000"
    assert result.confidence == pytest.approx(0.75)
