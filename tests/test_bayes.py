"""``BayesStop``: Bayesian stopping against the full budget, its prior over answer shares learned by empirical Bayes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import states_after

from budgetctl.policies import MaxSamples, parse_policy
from budgetctl.policies._bayes import GRID, BayesStop, change_probability, learn_prior


def test_prior_learned_from_lopsided_questions_concentrates_where_they_are() -> None:
    prior = np.asarray(learn_prior([(9, 1)] * 50 + [(10, 0)] * 50))
    grid = np.asarray(GRID)
    assert prior.sum() == pytest.approx(1.0) and np.allclose(prior, prior[::-1])
    assert prior[np.abs(grid - 0.5) < 0.2].sum() < 0.05  # hardly any weight on even splits
    with pytest.raises(ValueError):
        learn_prior([])


def test_change_probability_is_zero_when_the_leader_cannot_be_caught_and_falls_with_its_lead() -> None:
    assert change_probability(5, 1, 3, None) == 0.0
    leads = [change_probability(a, 1, 10, None) for a in (1, 2, 3, 4, 5)]
    assert all(x > y for x, y in itertools.pairwise(leads))
    lopsided = learn_prior([(10, 0)] * 100)
    assert change_probability(2, 0, 8, lopsided) < change_probability(2, 0, 8, None)


def test_bayes_stop_is_a_composable_immutable_policy() -> None:
    policy = BayesStop(n=10, eps=0.05)
    unanimous = states_after(["a"] * 6)[-1]
    split = states_after(["a", "b", "a", "b"])[-1]
    assert policy(unanimous) and not policy(split)
    assert policy(states_after(["a", "b"] * 5)[-1])  # the full budget: stop
    assert (policy | MaxSamples(3))(split)
    with pytest.raises(AttributeError):
        policy.eps = 0.5  # type: ignore[misc]
    assert repr(parse_policy("bayes:n=10,eps=0.05")) == "BayesStop(n=10, eps=0.05, prior=flat)"
    with pytest.raises(ValueError):
        BayesStop(n=10, prior=(1.0, 2.0))
    with pytest.raises(ValueError):
        BayesStop(n=0)
