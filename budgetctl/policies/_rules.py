"""Rule-based stop policies: fixed caps, stability, Adaptive-Consistency, ESC, confidence, and budget-aware."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .._state import RunState
from ._base import StopPolicy
from ._posterior import prob_leader_beta, prob_leader_dirichlet

__all__ = [
    "MaxSamples",
    "MaxTokens",
    "Stable",
    "AdaptiveConsistency",
    "ESC",
    "ConfidenceStop",
    "Unbeatable",
]


def _positive_int(owner: str, name: str, value: object, *, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value!r}")


def _probability(owner: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{owner}: {name} must be in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class MaxSamples(StopPolicy):
    """Stop once ``n`` samples have come back successfully: fixed-N self-consistency."""

    n: int

    def __post_init__(self) -> None:
        _positive_int("MaxSamples", "n", self.n)

    def __call__(self, state: RunState, /) -> bool:
        return state.n_samples >= self.n

    def remaining_bound(self, state: RunState, /) -> int | None:
        """Exact: ``n`` minus the samples back. With calls in flight counted, at most ``n`` calls unless some fail."""
        left = self.n - state.n_samples
        return left if left > 0 else 0


@dataclass(frozen=True, slots=True)
class MaxTokens(StopPolicy):
    """Stop once ``n`` tokens have been spent (a soft cap; ``Budget(tokens=...)`` is the hard one)."""

    n: int

    def __post_init__(self) -> None:
        _positive_int("MaxTokens", "n", self.n)

    def __call__(self, state: RunState, /) -> bool:
        return state.tokens >= self.n

    def remaining_bound(self, state: RunState, /) -> int | None:
        """An estimate: the tokens still allowed over the mean tokens of a sample so far, rounded up.

        A sample may cost any number of tokens (even 0), so no count of samples is sure to reach
        the cap: before any sample has spent a token this is ``None`` (no limit), and afterwards it
        is what the calls in flight would spend at the mean so far. The engine only delays
        launches by it (one call stays in flight until the policy stops), so an estimate that is
        too low costs time, never the answer.
        """
        left = self.n - state.tokens
        if left <= 0:
            return 0
        done = state.n_samples + state.n_failed
        if state.tokens <= 0 or done <= 0:
            return None
        return math.ceil(left * done / state.tokens)


@dataclass(frozen=True, slots=True)
class Stable(StopPolicy):
    """Stop when the leading answer has stayed the leader through the last ``k`` samples.

    The first sample makes a leader with a streak of 1, so ``Stable(1)`` stops after one sample.
    It has no :meth:`remaining_bound`: the leader can keep changing (and abstentions never make
    one), so no count of samples is sure to stop it for good.
    """

    k: int

    def __post_init__(self) -> None:
        _positive_int("Stable", "k", self.k)

    def __call__(self, state: RunState, /) -> bool:
        return state.total_votes > 0 and state.leader_streak >= self.k



@dataclass(frozen=True, slots=True)
class AdaptiveConsistency(StopPolicy):
    """Adaptive-Consistency (Aggarwal et al., 2023): stop once P(leader is the majority) >= ``threshold``.

    ``criterion="beta"`` compares the top two answers, ``P(p > 1/2)`` with ``p ~ Beta(v1 + 1, v2 + 1)``;
    ``"dirichlet"`` compares the leader with the ``top_k`` answers under ``Dirichlet(votes + 1)``
    (the Beta criterion with fewer than three answers, as in the paper). The paper's default is
    Beta at 0.95. It has no :meth:`remaining_bound`: answers that keep splitting the vote never let
    it stop; with a cap (``AdaptiveConsistency(0.95) | MaxSamples(40)``) the cap bounds the calls.
    """

    threshold: float = 0.95
    criterion: Literal["beta", "dirichlet"] = "beta"
    top_k: int = 5

    def __post_init__(self) -> None:
        _probability("AdaptiveConsistency", "threshold", self.threshold)
        if self.criterion not in ("beta", "dirichlet"):
            raise ValueError(f"AdaptiveConsistency: criterion must be 'beta' or 'dirichlet', got {self.criterion!r}")
        _positive_int("AdaptiveConsistency", "top_k", self.top_k, minimum=2)

    def probability(self, state: RunState) -> float:
        """The posterior probability that the current leader is the majority answer."""
        if state.total_votes <= 0:
            return 0.0
        if self.criterion == "beta":
            return prob_leader_beta(state.leader_votes, state.runner_up_votes)
        leader_key = max(state.counts, key=state.counts.__getitem__)
        others = [v for k, v in state.counts.items() if k != leader_key]
        return prob_leader_dirichlet(state.leader_votes, others, self.top_k)

    def __call__(self, state: RunState, /) -> bool:
        if state.total_votes <= 0:
            return False
        if self.criterion == "beta":  # the common case, without the indirection of probability()
            return prob_leader_beta(state.leader_votes, state.runner_up_votes) >= self.threshold
        return self.probability(state) >= self.threshold



@dataclass(frozen=True, slots=True)
class ESC(StopPolicy):
    """Early-Stopping Self-Consistency (Li et al., 2024): stop when a window of ``window`` samples all agree.

    Samples are taken window by window; at the end of each window (every ``window`` successful
    samples) the run stops if the whole window gave the same, parsable answer. It has no
    :meth:`remaining_bound`: every window may disagree. (It cannot stop before the end of the
    current window: a lower bound on the samples it needs, not a cap.)
    """

    window: int = 5

    def __post_init__(self) -> None:
        _positive_int("ESC", "window", self.window)

    def __call__(self, state: RunState, /) -> bool:
        return state.n_samples % self.window == 0 and state.answer_run >= self.window



@dataclass(frozen=True, slots=True)
class ConfidenceStop(StopPolicy):
    """Stop when the leader's confidence reaches ``threshold`` (DeepConf-style early stop).

    ``source`` says where the confidence comes from: ``"sample"``, the mean per-sample confidence of
    the samples voting for the leader (from logprobs, ``Sample.confidence``); ``"score"``, the
    leader's best verifier score; ``"vote"``, the aggregator's confidence (vote share); ``"auto"``,
    sample confidence, else verifier score, else never stops. At least ``min_samples`` must be back.
    It has no :meth:`remaining_bound`: the confidence may never reach the threshold.
    """

    threshold: float = 0.9
    source: Literal["auto", "sample", "score", "vote"] = "auto"
    min_samples: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise TypeError(f"ConfidenceStop: threshold must be a number, got {self.threshold!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"ConfidenceStop: threshold must be finite, got {self.threshold!r}")
        if self.source not in ("auto", "sample", "score", "vote"):
            raise ValueError(f"ConfidenceStop: source must be 'auto', 'sample', 'score' or 'vote', got {self.source!r}")
        _positive_int("ConfidenceStop", "min_samples", self.min_samples)

    def leader_confidence(self, state: RunState) -> float | None:
        """The confidence this policy compares with its threshold (``None``: none available)."""
        if self.source == "vote":
            return state.confidence if state.total_votes > 0 else None
        if self.source == "sample":
            return state.leader_sample_confidence
        if self.source == "score":
            return state.leader_score
        if state.leader_sample_confidence is not None:
            return state.leader_sample_confidence
        return state.leader_score


    def __call__(self, state: RunState, /) -> bool:
        if state.n_samples < self.min_samples:
            return False
        confidence = self.leader_confidence(state)
        return confidence is not None and confidence >= self.threshold


@dataclass(frozen=True, slots=True)
class Unbeatable(StopPolicy):
    """Budget-aware stop: stop when the samples still allowed can no longer overturn the leader.

    The samples still allowed are those in flight plus the budget's ``samples_left`` and, when
    given, ``max_samples`` minus the samples back; if even all of them going to the runner-up would
    not put it ahead, more sampling cannot change the answer. Assumes one vote per sample
    (majority vote). Without any sample cap it never stops.
    """

    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.max_samples is not None:
            _positive_int("Unbeatable", "max_samples", self.max_samples)

    def samples_left(self, state: RunState) -> int | None:
        """How many more samples may still vote, from the budget and ``max_samples``.

        Samples in flight count: they may come back and vote for the runner-up.
        """
        left = None if state.samples_left is None else state.samples_left + state.n_in_flight
        if self.max_samples is not None:
            own = max(self.max_samples - state.n_done, 0)
            left = own if left is None else min(left, own)
        return left

    def remaining_bound(self, state: RunState, /) -> int | None:
        """``max_samples`` minus the samples back (failed ones included), when given; else ``None``.

        Once that many more have come back, no sample is allowed and it stops (for good).
        """
        if self.max_samples is None:
            return None
        left = self.max_samples - state.n_done
        return left if left > 0 else 0

    def __call__(self, state: RunState, /) -> bool:
        left = self.samples_left(state)
        if left is None or state.total_votes <= 0:
            return left == 0
        # Ties go to the answer seen first, which may be the runner-up: only a strict lead is safe.
        return left == 0 or state.runner_up_votes + left < state.leader_votes
