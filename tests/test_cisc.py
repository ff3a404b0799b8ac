"""``WeightedConsistency`` (CISC-style): Adaptive-Consistency's test on confidence-weighted votes."""

from __future__ import annotations

import itertools

import pytest
from conftest import states_after

from budgetctl import Sample, WeightedVote
from budgetctl.policies import AdaptiveConsistency, MaxSamples, WeightedConsistency, parse_policy


def test_with_plain_votes_it_is_adaptive_consistency() -> None:
    for answers in itertools.product("abc", repeat=5):
        for state in states_after(list(answers)):
            for threshold in (0.8, 0.9, 0.95):
                assert WeightedConsistency(threshold)(state) == AdaptiveConsistency(threshold)(state)


def test_confident_agreement_stops_sooner_than_the_count() -> None:
    samples = [Sample(answer="a", tokens=5, confidence=0.95)] * 3 + [Sample(answer="b", tokens=5, confidence=0.2)]
    weighted = states_after(samples, aggregator=WeightedVote())[-1]
    plain = states_after(samples)[-1]
    assert not AdaptiveConsistency(0.9)(plain)
    assert WeightedConsistency(0.9)(weighted)
    # Doubt on the leader's side makes it more cautious than the count.
    doubtful = [Sample(answer="a", tokens=5, confidence=0.3)] * 3 + [Sample(answer="b", tokens=5, confidence=0.9)]
    assert WeightedConsistency(0.8).probability(states_after(doubtful, aggregator=WeightedVote())[-1]) < (
        AdaptiveConsistency(0.8).probability(states_after(doubtful)[-1])
    )


def test_spec_composition_and_validation() -> None:
    policy = parse_policy("cisc:threshold=0.9,min_samples=3")
    assert policy == WeightedConsistency(0.9, min_samples=3)
    assert not policy(states_after(["a", "a"])[-1])
    assert (policy | MaxSamples(2))(states_after(["a", "b"])[-1])
    with pytest.raises(ValueError):
        WeightedConsistency(1.5)
    with pytest.raises(ValueError):
        WeightedConsistency(0.9, min_samples=0)


def test_it_runs_in_the_simulator_with_a_weighted_vote(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Samples whose confidence marks the right answer: weighted consistency spends fewer samples than AC."""
    import json
    import math
    import random

    from budgetctl.sim import simulate

    rng = random.Random(0)
    path = tmp_path / "pool.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(60):
            samples = []
            for _ in range(10):
                right = rng.random() < 0.65
                confidence = 0.9 if right else 0.4
                samples.append(
                    {"answer": "r" if right else rng.choice("xy"), "tokens": 10, "logprob": 10 * math.log(confidence)}
                )
            stream.write(json.dumps({"id": f"q{i}", "dataset": "d", "gold": "r", "samples": samples}) + "\n")
    weighted = simulate(str(path), [WeightedConsistency(0.95)], orders=5, aggregator=WeightedVote()).overall.rows[0]
    plain = simulate(str(path), [AdaptiveConsistency(0.95)], orders=5).overall.rows[0]  # majority vote
    assert weighted.mean_samples < plain.mean_samples
    assert weighted.accuracy >= plain.accuracy - 0.02
