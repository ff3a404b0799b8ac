"""The stop policy ``budgetctl train`` ships per task: a learned risk table, or the tuned rule where it did not win.

:class:`RiskStop` stops at the first state whose learned probability that the current leader is
not the full budget's majority is at most ``eps``. The probability is a table over every state
(samples so far, leader votes, runner-up votes) up to the task's full budget ``n``, so a decision
is one array lookup. It is immutable: a loaded policy never changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._state import RunState
from ..policies._base import StopPolicy

__all__ = ["RiskStop"]


@dataclass(frozen=True, eq=False, repr=False)
class RiskStop(StopPolicy):
    """Stop when the learned P(leader is not the full budget's majority) is at most ``eps``, or at ``n`` samples.

    Args:
        risk: (n+1, n+1, n+1) probabilities indexed by (samples so far, leader votes, runner-up
            votes); read-only.
        eps: the operating point chosen by ``budgetctl train`` from ``--max-loss``.
        task: the task (dataset) it was trained for, for its ``repr``.
    """

    risk: np.ndarray
    eps: float
    task: str = ""

    def __post_init__(self) -> None:
        risk = np.array(self.risk, dtype=np.float32)
        if risk.ndim != 3 or len(set(risk.shape)) != 1 or risk.shape[0] < 2:
            raise ValueError(f"RiskStop: risk must be an (n+1, n+1, n+1) array, got shape {risk.shape}")
        if not np.isfinite(risk).all():
            raise ValueError("RiskStop: risk has non-finite entries")
        risk.setflags(write=False)
        object.__setattr__(self, "risk", risk)
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"RiskStop: eps must be in [0, 1], got {self.eps!r}")

    @property
    def n(self) -> int:
        """The full budget (samples) the table was trained for; the policy stops there."""
        return int(self.risk.shape[0]) - 1

    def probability(self, state: RunState) -> float:
        """The learned probability that the current leader is not the full budget's majority."""
        t = state.n_samples
        n = self.risk.shape[0] - 1
        if t >= n:
            return 0.0
        a, b = int(state.leader_votes), int(state.runner_up_votes)
        if not 0 <= b <= a <= t:  # weighted votes: outside what the table knows
            return 1.0
        return float(self.risk[t, a, b])

    def __call__(self, state: RunState, /) -> bool:
        return self.probability(state) <= self.eps

    def __repr__(self) -> str:
        task = f", task={self.task!r}" if self.task else ""
        return f"RiskStop(n={self.n}, eps={self.eps:g}{task})"
