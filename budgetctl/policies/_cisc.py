"""Confidence-weighted consistency (CISC-style): Adaptive-Consistency's test on confidence-weighted votes.

CISC (Taubenfeld et al., 2025, arXiv 2502.06233) weighs each sample's vote by the model's own
confidence in it, which reaches the accuracy of plain self-consistency with fewer samples. Run it
with a confidence-weighted aggregator (:class:`budgetctl.WeightedVote`, whose votes are the
samples' confidences, from logprobs or given): the run's leader and runner-up "votes" are then
confidence sums. :class:`WeightedConsistency` rescales them to the number of votes cast (so that
confidences on another scale do not make it more or less certain than the evidence allows) and
stops when the Beta posterior that the leader is ahead reaches ``threshold``. With the plain
majority vote it is exactly ``AdaptiveConsistency(threshold)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._state import RunState
from ._base import StopPolicy
from ._posterior import prob_leader_beta

__all__ = ["WeightedConsistency"]


@dataclass(frozen=True, slots=True)
class WeightedConsistency(StopPolicy):
    """Stop once P(leader ahead) >= ``threshold`` on confidence-weighted votes rescaled to the votes cast.

    Args:
        threshold: the posterior probability to reach (Adaptive-Consistency's default is 0.95).
        min_samples: samples that must be back before it may stop.
    """

    threshold: float = 0.95
    min_samples: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise TypeError(f"WeightedConsistency: threshold must be a number, got {self.threshold!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"WeightedConsistency: threshold must be in [0, 1], got {self.threshold!r}")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, int) or self.min_samples < 1:
            raise ValueError(f"WeightedConsistency: min_samples must be an int >= 1, got {self.min_samples!r}")

    def probability(self, state: RunState) -> float:
        """P(the leader is ahead) on the rescaled weighted votes (0 before any vote)."""
        votes = state.n_samples - state.n_abstained  # votes cast, whatever their weights
        if state.total_votes <= 0 or votes <= 0:
            return 0.0
        scale = votes / state.total_votes
        return prob_leader_beta(state.leader_votes * scale, state.runner_up_votes * scale)

    def __call__(self, state: RunState, /) -> bool:
        return state.n_samples >= self.min_samples and self.probability(state) >= self.threshold
