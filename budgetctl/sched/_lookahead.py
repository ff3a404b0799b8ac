"""A rule-based gain model that looks ahead: what more samples are expected to do to the majority vote.

:class:`~budgetctl.VoteGain` scores a request by how uncertain its vote is. That sends samples to
the hardest questions (answers scattered over many values, where a few more samples rarely
settle anything) and ignores that under a majority vote some samples cannot change the answer at
all (after one vote, or with the leader two votes ahead, one more sample never flips it).
:class:`LookaheadGain` instead computes the expected *change* in the probability that the
reported answer is the majority answer, over the possible next ``h`` samples, which is zero
exactly when those samples cannot change the answer: the value of information of ``h`` samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .._state import RunState
from ..policies._posterior import prob_leader_beta

__all__ = ["LookaheadGain"]

#: Other answers kept apart in the lookahead (the rest, smaller, are merged: they cannot take the lead soon).
_KEPT = 4


def _switch_value(leader: float, old: float) -> float:
    # What reporting the new leader instead of the old one is worth at the end of the horizon: the
    # posterior P(new beats old) minus P(old beats new), under the Adaptive-Consistency Beta model.
    return 2.0 * prob_leader_beta(leader, old) - 1.0


def _bump(votes: tuple[float, ...], index: int) -> tuple[float, ...]:
    bumped = list(votes)
    bumped[index] += 1.0
    bumped.sort(reverse=True)
    return tuple(bumped)


def _without(votes: tuple[float, ...], index: int, plus: float | None = None) -> tuple[float, ...]:
    kept = [v for i, v in enumerate(votes) if i != index]
    if plus is not None and plus > 0:
        kept.append(plus)
    kept.sort(reverse=True)
    if len(kept) > _KEPT:
        del kept[_KEPT:]
    return tuple(kept)


#: The longest lookahead computed: the gain of more samples than this reads as the gain of this many
#: (a request with this many calls in flight gets no further priority from the lookahead).
MAX_HORIZON = 12


@lru_cache(maxsize=1 << 16)
def _expected_gain(
    leader: float, old: float, others: tuple[float, ...], rest: float, theta: float, horizon: int
) -> float:
    """E[value of the switch after ``horizon`` more samples], under a Chinese-restaurant-process predictive.

    ``leader`` is the current leader's vote weight and ``old`` the weight of the answer reported
    now (``old < 0``: they are the same answer, no switch yet); ``others`` the other answers kept
    apart, ``rest`` the merged weight of smaller ones (a draw for them changes nothing soon). The
    next sample repeats an answer seen ``v`` times with probability ``v / (n + theta)``, or is a new
    one with probability ``theta / (n + theta)``; the leader changes only when another answer
    strictly overtakes it (the majority vote's tie rule).
    """
    switched = old >= 0
    if horizon == 0:
        return _switch_value(leader, old) if switched else 0.0
    total = leader + (old if switched else 0.0) + sum(others) + rest + theta
    h = horizon - 1
    expected = 0.0
    if leader > 0:
        expected += leader / total * _expected_gain(leader + 1.0, old, others, rest, theta, h)
    if switched and old > 0:
        if old + 1.0 > leader:  # the old answer takes the lead back: no switch any more
            back = _expected_gain(old + 1.0, -1.0, _without(others, -1, leader), rest, theta, h)
        else:
            back = _expected_gain(leader, old + 1.0, others, rest, theta, h)
        expected += old / total * back
    done: set[float] = set()
    for i, votes in enumerate(others):
        if votes in done:
            continue
        done.add(votes)
        weight = votes * others.count(votes)
        if votes + 1.0 > leader:  # overtakes: a switch (the old leader joins the others unless it is `old`)
            if switched:
                nxt = _expected_gain(votes + 1.0, old, _without(others, i, leader), rest, theta, h)
            else:
                nxt = _expected_gain(votes + 1.0, leader, _without(others, i), rest, theta, h)
        else:
            nxt = _expected_gain(leader, old, _bump(others, i), rest, theta, h)
        expected += weight / total * nxt
    if rest > 0:
        expected += rest / total * _expected_gain(leader, old, others, rest + 1.0, theta, h)
    if leader <= 0:  # the first vote: an answer where there was none (worth a full switch from nothing)
        new = _expected_gain(1.0, 0.0, others, rest, theta, h)
    elif len(others) < _KEPT:
        new = _expected_gain(leader, old, tuple(sorted((*others, 1.0), reverse=True)), rest, theta, h)
    else:
        new = _expected_gain(leader, old, others, rest + 1.0, theta, h)
    return expected + theta / total * new


@lru_cache(maxsize=1 << 16)
def _gain_of_votes(counts: tuple[float, ...], theta: float, horizon: int) -> float:
    # The scheduler asks for a few horizons of the same vote: one cache lookup each.
    votes = sorted((v for v in counts if v > 0), reverse=True)
    leader = float(votes[0]) if votes else 0.0
    # The leader as the run reports it (the first to reach its count) has votes[0] votes too.
    kept = tuple(float(v) for v in votes[1 : 1 + _KEPT])
    rest = float(sum(votes[1 + _KEPT :]))
    return max(_expected_gain(leader, -1.0, kept, rest, theta, horizon), 0.0)


@dataclass(frozen=True, slots=True)
class LookaheadGain:
    """Expected gain of ``h`` more samples: how much they raise P(the reported answer is the majority).

    The probability is the Adaptive-Consistency Beta posterior of the leader against the runner-up
    (what :class:`~budgetctl.policies.AdaptiveConsistency` thresholds), and the next samples are
    predicted by a Chinese restaurant process with concentration ``theta`` (new answers keep
    appearing, more so for a larger ``theta``). The gain is zero when the next ``h`` samples cannot
    overturn the leader, so the scheduler, which takes the best gain per token over a few horizons,
    spends samples where they can still change answers. Tokens are the request's mean per sample
    so far (``default_tokens`` before any). Implements :class:`~budgetctl.GainModel`.
    """

    #: Concentration of the answer process: how readily a new sample gives a never-seen answer.
    theta: float = 1.0
    #: Tokens assumed per sample before the request has any.
    default_tokens: float = 100.0

    def __post_init__(self) -> None:
        for name in ("theta", "default_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"LookaheadGain: {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"LookaheadGain: {name} must be a finite number > 0, got {value!r}")

    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        """Expected rise of P(the reported answer is the majority) after ``horizon`` more samples."""
        if horizon <= 0:
            return 0.0
        # The recursion's states grow fast with the horizon (past about 20 it no longer fits its
        # cache and takes seconds); the gain saturates well before, so longer horizons read as MAX_HORIZON.
        horizon = min(horizon, MAX_HORIZON)
        return _gain_of_votes(tuple(state.counts.values()), float(self.theta), horizon)

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        """Expected tokens of ``horizon`` more samples: the mean per sample so far times ``horizon``."""
        done = state.n_samples + state.n_failed
        per_sample = state.tokens / done if done and state.tokens > 0 else self.default_tokens
        return per_sample * horizon
