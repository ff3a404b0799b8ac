"""``GainRegressor`` is a conformant scikit-learn estimator, and its frozen policy never changes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

from conftest import states_after
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from budgetctl.learn import FEATURE_NAMES, GainRegressor, GainStop, state_features


def make_state(counts: dict[str, int]):  # type: ignore[no-untyped-def]
    """The real run's state after the votes ``counts`` (leader first)."""
    return states_after([k for k, v in counts.items() for _ in range(v)])[-1]


@parametrize_with_checks([GainRegressor(max_iter=10), GainRegressor("linear")])
def test_scikit_learn_checks(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


def _data(rows: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """States with the leader's share as the signal: the gain falls as the vote settles."""
    rng = np.random.default_rng(0)
    X, y = [], []
    for _ in range(rows):
        a = int(rng.integers(1, 8))
        b = int(rng.integers(0, a + 1))
        X.append(state_features(make_state({"x": a, "y": b})))
        y.append(0.2 * (b + 1) / (a + b + 1) + rng.normal(0, 0.005))
    return np.asarray(X), np.asarray(y)


def test_pipeline_grid_search_and_random_state_none() -> None:
    X, y = _data()
    search = GridSearchCV(
        make_pipeline(StandardScaler(), GainRegressor(random_state=None)),
        {"gainregressor__max_iter": [5, 20]},
        cv=2,
    )
    search.fit(X, y)
    assert search.best_params_["gainregressor__max_iter"] in (5, 20)
    with pytest.raises(NotFittedError):
        GainRegressor().predict(X)


def test_frozen_policy_never_changes() -> None:
    X, y = _data()
    regressor = GainRegressor(max_iter=30, random_state=0).fit(X, y)
    policy = regressor.as_policy(min_gain=0.05)
    assert isinstance(policy, GainStop)
    settled, open_vote = make_state({"x": 7}), make_state({"x": 2, "y": 2})
    before = (policy(settled), policy(open_vote))
    assert before == (True, False)
    regressor.set_params(max_iter=1).fit(X, -y)  # refit the regressor: the policy holds its own copy
    assert (policy(settled), policy(open_vote)) == before
    assert not hasattr(policy, "set_params")
    with pytest.raises(AttributeError):
        policy.min_gain = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="state features"):
        GainRegressor("linear").fit(X[:, :3], y).as_policy()
    assert len(FEATURE_NAMES) == X.shape[1]
