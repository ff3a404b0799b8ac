"""Bayesian stopping with a prior over answer shares learned from a task's traces.

Adaptive-Consistency asks whether the leader is the majority under a flat prior and ignores how
many samples are left. :class:`BayesStop` asks the question that matters for the answer given at
the full budget ``n``: with ``p`` the probability that a sample names the leader rather than the
runner-up, a prior over ``p`` (learned from the task's traces: how lopsided its questions' top two
answers are), and the votes so far, what is the probability that the ``n - t`` samples left would
put the runner-up ahead? It stops when that is at most ``eps``. The remaining samples are treated
as votes between the top two answers only, which overstates the runner-up's chances (others
take votes too): a cautious approximation. Ties count half.

With the default flat prior it is a budget-aware cousin of Adaptive-Consistency;
:func:`learn_prior` (or ``budgetctl train``'s ``bayes`` family) fits the prior by empirical Bayes
(EM over a grid of shares) from the full-pool vote counts of training questions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .._state import RunState
from ._base import StopPolicy

__all__ = ["BayesStop", "learn_prior", "GRID"]

#: Shares ``p`` the prior puts weight on (midpoints of 64 equal bins of [0, 1]).
GRID: tuple[float, ...] = tuple((i + 0.5) / 64 for i in range(64))


def learn_prior(top_two: Sequence[tuple[int, int]], *, iterations: int = 200) -> tuple[float, ...]:
    """Empirical-Bayes prior weights over :data:`GRID` from each question's (top, second) full-pool votes.

    The share is symmetric (which of the two answers is "the leader" is not known in advance), so a
    question's likelihood under ``p`` is ``p^c1 (1-p)^c2 + p^c2 (1-p)^c1``; EM finds the mixture.
    """
    if not top_two:
        raise ValueError("learn_prior needs at least one question")
    grid = np.asarray(GRID)
    counts = np.asarray(top_two, dtype=float)
    c1, c2 = counts[:, :1], counts[:, 1:]
    log_p, log_q = np.log(grid)[None, :], np.log1p(-grid)[None, :]
    first = c1 * log_p + c2 * log_q
    second = c2 * log_p + c1 * log_q
    top = np.maximum(first, second).max(axis=1, keepdims=True)
    like = np.exp(first - top) + np.exp(second - top)  # (Q, G), each row scaled by its own constant
    weights = np.full(grid.size, 1.0 / grid.size)
    for _ in range(iterations):
        joint = like * weights[None, :]
        joint /= joint.sum(axis=1, keepdims=True)
        weights = joint.mean(axis=0)
    weights = (weights + weights[::-1]) / 2.0  # symmetric by construction; keep it exactly so
    return tuple(float(w) for w in weights / weights.sum())


@dataclass(frozen=True, eq=False)
class BayesStop(StopPolicy):
    """Stop when the posterior probability that the runner-up overtakes the leader by ``n`` samples is at most ``eps``.

    Args:
        n: the full budget (samples) the answer is compared with; the policy stops there.
        eps: the operating point: the probability of a change it accepts.
        prior: weights over :data:`GRID` (``None``: flat), e.g. from :func:`learn_prior`.
    """

    n: int
    eps: float = 0.01
    prior: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= 10_000:
            raise ValueError(f"BayesStop: n must be an int in 1..10000, got {self.n!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, int | float) or not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"BayesStop: eps must be in [0, 1], got {self.eps!r}")
        if self.prior is not None:
            prior = tuple(float(w) for w in self.prior)
            if len(prior) != len(GRID) or not all(math.isfinite(w) and w >= 0 for w in prior) or sum(prior) <= 0:
                raise ValueError(f"BayesStop: prior must be {len(GRID)} finite weights >= 0, not all zero")
            object.__setattr__(self, "prior", prior)

    def probability(self, state: RunState) -> float:
        """Posterior probability that the runner-up is ahead (ties half) after the samples left."""
        t = state.n_samples
        if t >= self.n:
            return 0.0
        a, b = int(state.leader_votes), int(state.runner_up_votes)
        if a <= 0 or not 0 <= b <= a <= t:
            return 1.0
        return change_probability(a, b, self.n - t, self.prior)

    def __call__(self, state: RunState, /) -> bool:
        return self.probability(state) <= self.eps

    def __repr__(self) -> str:
        prior = "learned" if self.prior is not None else "flat"
        return f"BayesStop(n={self.n}, eps={self.eps:g}, prior={prior})"


@lru_cache(maxsize=65536)
def change_probability(a: int, b: int, left: int, prior: tuple[float, ...] | None) -> float:
    """P(runner-up ends ahead, ties half) with ``left`` two-way votes to come, votes ``a`` >= ``b`` so far."""
    if a - b > left:
        return 0.0
    grid = np.asarray(GRID)
    weights = np.ones(grid.size) if prior is None else np.asarray(prior)
    log_post = np.log(np.maximum(weights, 1e-300)) + a * np.log(grid) + b * np.log1p(-grid)
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    # Leader's share X of the samples left ~ Bin(left, p); runner-up ahead when b + left - X > a + X.
    x = np.arange(left + 1)
    log_comb = np.array([math.lgamma(left + 1) - math.lgamma(k + 1) - math.lgamma(left - k + 1) for k in x])
    pmf = np.exp(
        log_comb[None, :] + x[None, :] * np.log(grid)[:, None] + (left - x)[None, :] * np.log1p(-grid)[:, None]
    )
    margin = a + 2 * x - b - left  # leader minus runner-up at the end
    lose = (margin < 0).astype(float) + 0.5 * (margin == 0)
    return float(post @ (pmf @ lose))


def _from_spec(n: int, eps: float = 0.01) -> BayesStop:
    """``bayes:n=N[,eps=E]``: Bayesian stopping against a full budget of ``n`` with a flat prior."""
    return BayesStop(n=n, eps=eps)


_from_spec.spec_parameters = ("n", "eps")  # type: ignore[attr-defined]
