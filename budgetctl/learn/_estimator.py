"""A scikit-learn regressor of the accuracy that more samples buy, and the frozen stop policy built from it.

``GainRegressor`` is an ordinary scikit-learn estimator: ``fit(X, y)`` on a feature matrix (for
instance :func:`budgetctl.learn.state_features` of training states, with the realised gain of more
samples as ``y``, see :func:`budgetctl.learn.build_rows`), ``predict(X)``, ``get_params`` /
``set_params``, usable in ``Pipeline`` and ``GridSearchCV``; it passes scikit-learn's
``check_estimator``. ``as_policy(min_gain)`` freezes a fitted regressor into a stop policy that
never changes afterwards (an immutable copy; no ``set_params``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._optional import import_optional
from .._state import RunState
from ..policies._base import StopPolicy
from ._features import FEATURE_NAMES, state_features

__all__ = ["GainRegressor", "GainStop"]


class GainRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Predict the expected accuracy gain of more samples from state features.

    Args:
        kind: ``"gbm"`` (``HistGradientBoostingRegressor``) or ``"linear"`` (``Ridge``).
        max_iter, max_depth, learning_rate: boosting rounds, tree depth and shrinkage (``"gbm"``).
        alpha: L2 penalty (``"linear"``).
        random_state: seed of the boosting (``None``: scikit-learn's global randomness).

    Fits run on one thread (OpenMP's spinning barriers are slow on shared machines).
    """

    def __init__(
        self,
        kind: Literal["gbm", "linear"] = "gbm",
        *,
        max_iter: int = 100,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        alpha: float = 1.0,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.kind = kind
        self.max_iter = max_iter
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> GainRegressor:
        """Fit on a feature matrix ``X`` (rows, features) and gains ``y`` (rows,); returns the regressor."""
        if self.kind not in ("gbm", "linear"):
            raise ValueError(f"GainRegressor: kind must be 'gbm' or 'linear', got {self.kind!r}")
        X, y = validate_data(self, X, y, y_numeric=True)
        estimator: Any
        if self.kind == "gbm":
            from sklearn.ensemble import HistGradientBoostingRegressor

            estimator = HistGradientBoostingRegressor(
                max_iter=self.max_iter,
                max_depth=self.max_depth,
                learning_rate=self.learning_rate,
                early_stopping=False,
                random_state=self.random_state,
            )
        else:
            from sklearn.linear_model import Ridge

            estimator = Ridge(alpha=self.alpha)
        threadpoolctl = import_optional("threadpoolctl", "learn", "Fitting a GainRegressor")
        with threadpoolctl.threadpool_limits(limits=1):
            estimator.fit(X, y, sample_weight=sample_weight)
        self.estimator_ = estimator
        #: Boosting rounds run (1 for the linear model), as scikit-learn asks of estimators with ``max_iter``.
        self.n_iter_ = int(getattr(estimator, "n_iter_", None) or 1)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted gains of the rows of ``X``."""
        check_is_fitted(self, "estimator_")
        X = validate_data(self, X, reset=False)
        with import_optional("threadpoolctl", "learn", "GainRegressor").threadpool_limits(limits=1):
            out: np.ndarray = self.estimator_.predict(X)
        return out

    def as_policy(self, min_gain: float = 0.001) -> GainStop:
        """A frozen stop policy: stop when the predicted gain of continuing is below ``min_gain`` (accuracy).

        The regressor must have been fitted on :func:`~budgetctl.learn.state_features` columns.
        The policy holds its own copy: refitting or ``set_params`` on the regressor later does not
        change it.
        """
        check_is_fitted(self, "estimator_")
        if self.n_features_in_ != len(FEATURE_NAMES):
            raise ValueError(
                f"as_policy needs a regressor fitted on the {len(FEATURE_NAMES)} state features "
                f"(budgetctl.learn.FEATURE_NAMES), this one has {self.n_features_in_}"
            )
        return GainStop(copy.deepcopy(self.estimator_), float(min_gain))


@dataclass(frozen=True, eq=False)
class GainStop(StopPolicy):
    """Stop when the frozen regressor's predicted gain of continuing is below ``min_gain``."""

    estimator: Any
    min_gain: float

    def __post_init__(self) -> None:
        if isinstance(self.min_gain, bool) or not isinstance(self.min_gain, int | float) or not self.min_gain >= 0:
            raise ValueError(f"GainStop: min_gain must be a number >= 0, got {self.min_gain!r}")

    def predicted_gain(self, state: RunState) -> float:
        """The regressor's gain for ``state``."""
        row = np.asarray([state_features(state)], dtype=float)
        return float(self.estimator.predict(row)[0])

    def __call__(self, state: RunState, /) -> bool:
        if state.total_votes <= 0:
            return False
        return self.predicted_gain(state) < self.min_gain

    def __repr__(self) -> str:
        return f"GainStop({type(self.estimator).__name__}, min_gain={self.min_gain:g})"
