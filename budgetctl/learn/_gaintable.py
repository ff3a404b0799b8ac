"""A scheduler gain model learned from a task's traces: the accuracy ``h`` more samples bought, by vote state.

``GainTable.fit(trajectories)`` records, for every state (samples so far, leader votes, runner-up
votes) and horizon ``h``, the mean change in the correctness of the majority answer ``h`` samples
later over the training trajectories (every question, many random orders). States seen fewer
than ``min_count`` times borrow the mean of all states with the same number of samples and the
same vote gap, and failing that the mean of all states with the same number of samples. It is a
:class:`~budgetctl.GainModel`: the scheduler gives the next sample to the request where it buys
the most accuracy per token. Lookups only; immutable once fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._state import RunState
from ._votes import Trajectories

__all__ = ["GainTable"]


def _means(keys: np.ndarray, values: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    count = np.bincount(keys, minlength=size).astype(float)
    total = np.bincount(keys, weights=values, minlength=size)
    return total, count


@dataclass(frozen=True, eq=False)
class GainTable:
    """Mean realised gain of ``h`` more samples by (samples so far, leader votes, runner-up votes)."""

    #: (n+1, n+1, n+1, H) gains; index h-1 for horizon h.
    gains: np.ndarray
    #: Tokens a sample is charged before the run reports any.
    default_tokens: float = 1.0

    @classmethod
    def fit(cls, traj: Trajectories, *, horizons: int = 4, min_count: int = 20) -> GainTable:
        """Learn the table from ``traj`` (see the module doc)."""
        n = traj.n
        H = min(horizons, n - 1)
        if H < 1:
            raise ValueError("GainTable needs pools of at least two samples")
        t = np.broadcast_to(np.arange(1, n + 1), traj.leader.shape)
        a = traj.leader.astype(np.int64)
        b = traj.runner_up.astype(np.int64)
        correct = traj.correct.astype(float)
        table = np.zeros((n + 1, n + 1, n + 1, H))
        for h in range(1, H + 1):
            delta = (correct[..., h:] - correct[..., :-h]).ravel()
            tt, aa, bb = t[..., :-h].ravel(), a[..., :-h].ravel(), b[..., :-h].ravel()
            key = (tt * (n + 1) + aa) * (n + 1) + bb
            total, count = _means(key, delta, (n + 1) ** 3)
            gap_key = tt * (n + 1) + (aa - bb)
            gap_total, gap_count = _means(gap_key, delta, (n + 1) ** 2)
            t_total, t_count = _means(tt, delta, n + 1)
            T, A, B = np.meshgrid(np.arange(n + 1), np.arange(n + 1), np.arange(n + 1), indexing="ij")
            own = (T * (n + 1) + A) * (n + 1) + B
            gap = T * (n + 1) + np.clip(A - B, 0, n)
            by_t = np.divide(t_total[T], t_count[T], out=np.zeros(T.shape), where=t_count[T] > 0)
            by_gap = np.divide(gap_total[gap], gap_count[gap], out=by_t, where=gap_count[gap] >= min_count)
            mine = count[own.ravel()].reshape(own.shape)
            mean = np.divide(total[own.ravel()].reshape(own.shape), mine, out=np.zeros(own.shape), where=mine > 0)
            table[..., h - 1] = np.where(mine >= min_count, mean, by_gap)
        unit = traj.cost()[..., 0].mean() if traj.tokens_known else 1.0
        gains = table.astype(np.float32)
        gains.setflags(write=False)
        return cls(gains=gains, default_tokens=float(unit))

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        """Mean accuracy gain of ``horizon`` more samples from states like this one (0 past the table)."""
        if horizon <= 0:
            return 0.0
        n = self.gains.shape[0] - 1
        t = state.n_samples
        if t >= n:
            return 0.0
        if t == 0:
            return float(self.gains[1, 1, 0, min(horizon, self.gains.shape[3]) - 1])  # about what a first vote buys
        a, b = int(state.leader_votes), int(state.runner_up_votes)
        if not 0 <= b <= a <= t:
            return 0.0
        h = min(horizon, self.gains.shape[3], n - t)
        return float(self.gains[t, a, b, h - 1])

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        """The run's mean tokens per sample so far (else the training mean), times ``horizon``."""
        done = state.n_samples + state.n_failed
        per_sample = state.tokens / done if done and state.tokens > 0 else self.default_tokens
        return per_sample * horizon
