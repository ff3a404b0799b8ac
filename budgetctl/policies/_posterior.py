"""Posterior probabilities that the current leader is the true majority answer.

Adaptive-Consistency (Aggarwal et al., 2023) stops when one of these passes a threshold. The
original code integrates with scipy; here the Beta case is exact (a binomial tail for integer
votes, the regularised incomplete beta otherwise) and the Dirichlet case is a deterministic
one-dimensional integral, so the core needs only the standard library and numpy, and every call
with the same votes gives the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["prob_leader_beta", "prob_leader_dirichlet"]


@lru_cache(maxsize=65536)
def _binomial_tail_half(a: int, b: int) -> float:
    # P(X > 1/2) for X ~ Beta(a + 1, b + 1) equals P(Bin(a + b + 1, 1/2) <= a).
    n = a + b + 1
    return math.fsum(math.comb(n, i) for i in range(a + 1)) / 2.0**n if n < 1000 else _betainc_half(a + 1.0, b + 1.0)


def _betacf(a: float, b: float, x: float) -> float:
    # Continued fraction for the incomplete beta function (modified Lentz).
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc_half(a: float, b: float) -> float:
    """P(X > 1/2) for X ~ Beta(a, b), any positive real a, b."""
    x = 0.5
    log_front = a * math.log(x) + b * math.log(1 - x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        lower = front * _betacf(a, b, x) / a
    else:
        lower = 1.0 - front * _betacf(b, a, 1.0 - x) / b
    return min(1.0, max(0.0, 1.0 - lower))


@lru_cache(maxsize=65536)
def prob_leader_beta(leader: float, runner_up: float) -> float:
    """P(leader's share > runner-up's) under a uniform prior: ``P(p > 1/2)``, ``p ~ Beta(leader+1, runner_up+1)``."""
    if leader == int(leader) and runner_up == int(runner_up):
        return _binomial_tail_half(int(leader), int(runner_up))
    return _betainc_half(leader + 1.0, runner_up + 1.0)


_GRID_POINTS = 4097


@lru_cache(maxsize=16384)
def _dirichlet_cached(alphas: tuple[float, ...]) -> float:
    # With p ~ Dirichlet(alphas), p_i = G_i / sum(G), G_i ~ Gamma(alpha_i): the leader wins when its
    # G is the largest, so P = integral of f_0(x) * prod_j F_j(x) dx, one dimension whatever the
    # number of answers. Densities are tabulated on a grid and the CDFs are cumulative trapezoids.
    top = max(alphas)
    upper = top + 12.0 * math.sqrt(top) + 30.0
    x = np.linspace(0.0, upper, _GRID_POINTS)
    dx = x[1] - x[0]
    safe = np.where(x > 0, x, 1.0)
    product = np.ones_like(x)
    for alpha in alphas[1:]:
        density = np.exp((alpha - 1.0) * np.log(safe) - x - math.lgamma(alpha))
        density[0] = 1.0 if alpha == 1.0 else 0.0
        cdf = np.concatenate(([0.0], np.cumsum((density[1:] + density[:-1]) * (dx / 2.0))))
        product *= np.minimum(cdf, 1.0)
    a0 = alphas[0]
    leader_density = np.exp((a0 - 1.0) * np.log(safe) - x - math.lgamma(a0))
    leader_density[0] = 1.0 if a0 == 1.0 else 0.0
    integrand = leader_density * product
    value = float(np.sum((integrand[1:] + integrand[:-1]) * (dx / 2.0)))
    return min(1.0, max(0.0, value))


def prob_leader_dirichlet(leader: float, others: Sequence[float], top_k: int = 5) -> float:
    """P(leader's share exceeds every other answer's) under ``Dirichlet(votes + 1)`` over the ``top_k`` answers.

    With fewer than three answers it is the Beta criterion, as in the original method.
    """
    rest = sorted(others, reverse=True)[: max(top_k - 1, 1)]
    rest = [v for v in rest if v > 0]
    if len(rest) < 2:
        return prob_leader_beta(leader, rest[0] if rest else 0.0)
    return _dirichlet_cached((leader + 1.0, *(v + 1.0 for v in rest)))
