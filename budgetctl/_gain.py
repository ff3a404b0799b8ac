"""Gain models: how much accuracy more samples are predicted to buy, and what they cost.

A stop policy that can predict this (the learned :class:`~budgetctl.learn.LearnedStop`) lets the
scheduler give the next sample to the request where it buys the most accuracy per token. Without
one, :class:`VoteGain` estimates it from the vote alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ._state import RunState
from .policies._posterior import prob_leader_beta

__all__ = ["GainModel", "VoteGain"]


@runtime_checkable
class GainModel(Protocol):
    """Predicts the value of more compute from a run's snapshot."""

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        """Expected change in P(the anytime answer is correct) if ``horizon`` more samples are drawn."""
        ...

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        """Expected tokens those ``horizon`` samples cost."""
        ...


@dataclass(frozen=True, slots=True)
class VoteGain:
    """A rule-based gain estimate from the vote: more samples help most while the leader is uncertain.

    The gain of one more sample is taken as ``scale * (1 - P(leader is the majority))`` under the
    Adaptive-Consistency Beta posterior (1 before any vote), shrinking as the vote settles; tokens
    are the run's mean so far (``default_tokens`` before any sample).
    """

    scale: float = 0.5
    default_tokens: float = 100.0

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        """Expected accuracy gain of ``horizon`` more samples (saturating in the horizon)."""
        if state.total_votes <= 0:
            uncertainty = 1.0
        else:
            uncertainty = 1.0 - prob_leader_beta(state.leader_votes, state.runner_up_votes)
        return self.scale * uncertainty * (1.0 - 0.5**horizon) * 2.0 if horizon > 0 else 0.0

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        """Expected tokens of ``horizon`` more samples."""
        done = state.n_samples + state.n_failed
        per_sample = state.tokens / done if done and state.tokens > 0 else self.default_tokens
        return per_sample * horizon
