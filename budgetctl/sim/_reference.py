"""Reference curves and oracles of one question over many draw orders: fixed-N majority, cost oracle, pass@k.

These are not stop policies (no causal policy can know the full-pool majority in advance), so they
are computed directly from the orders with numpy. The fixed-N curve uses the same tie rule as the
run core's majority vote (ties go to the answer seen first); a test checks it against replaying
``MaxSamples(n)`` through the core.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._pool import Question

__all__ = ["QuestionReference", "RunningVotes", "reference", "running_votes"]


class RunningVotes(NamedTuple):
    """The running majority vote of one question over draw orders (``O`` orders of ``N`` samples)."""

    #: drawn[o, t]: the answer class of the t-th sample drawn (-1: abstained).
    drawn: np.ndarray
    #: counts[o, t, k]: votes for class k after t+1 samples.
    counts: np.ndarray
    #: leader[o, t]: the leading class (most votes; among equals, the one seen first).
    leader: np.ndarray
    #: voted[o, t]: has any sample voted yet?
    voted: np.ndarray
    #: correct_class[k]: is class k a right answer?
    correct_class: np.ndarray


def running_votes(
    question: Question, orders: np.ndarray, normalize: Callable[[Hashable], Hashable]
) -> RunningVotes:
    """The running majority of ``question`` along each row of ``orders``, with the run core's tie rule."""
    samples = question.samples
    n = orders.shape[1]
    keys: dict[Hashable, int] = {}
    classes = np.empty(len(samples), dtype=np.int64)
    for i, s in enumerate(samples):
        key = None if s.answer is None else normalize(s.answer)
        classes[i] = -1 if key is None else keys.setdefault(key, len(keys))
    k = max(len(keys), 1)
    correct_class = np.zeros(k, dtype=bool)
    for key, index in keys.items():
        correct_class[index] = key in question.correct_keys
    drawn = classes[orders]  # (O, N)
    onehot = drawn[:, :, None] == np.arange(k)[None, None, :]  # (O, N, K)
    counts = np.cumsum(onehot, axis=1, dtype=np.int32)
    first_seen = np.where(onehot.any(axis=1), np.argmax(onehot, axis=1), n)[:, None, :]  # (O, 1, K)
    # Leader: most votes; among equals, the answer seen first (the tally's rule, Counter's too).
    score = counts.astype(np.int64) * (n + 1) - first_seen
    return RunningVotes(drawn, counts, np.argmax(score, axis=2), counts.max(axis=2) > 0, correct_class)


@dataclass(frozen=True)
class QuestionReference:
    """Per-order arrays for one question (``n_orders`` rows, pool size ``N`` columns where 2-D)."""

    #: correct[o, t]: is the running majority after t+1 samples right (order o)?
    majority_correct: np.ndarray
    #: tokens[o, t]: tokens spent by the first t+1 samples.
    tokens: np.ndarray
    #: Samples after which the running majority first equals the full-pool majority (cost oracle).
    oracle_samples: np.ndarray
    #: Tokens the cost oracle spends.
    oracle_tokens: np.ndarray
    #: pass_at[o, t]: is any of the first t+1 samples right?
    pass_at: np.ndarray
    #: Samples until the first right one (N where none is).
    first_correct_samples: np.ndarray
    #: Tokens until the first right one (all tokens where none is).
    first_correct_tokens: np.ndarray
    #: best_of[o, t]: is the best-scored of the first t+1 samples right? ``None`` without scores.
    best_of_correct: np.ndarray | None


def reference(question: Question, orders: np.ndarray, normalize: Callable[[Hashable], Hashable]) -> QuestionReference:
    """Reference arrays of ``question`` for each row of ``orders`` (permutations of its sample indices)."""
    samples = question.samples
    n_orders, n = orders.shape
    _, _, leader, voted, correct_class = running_votes(question, orders, normalize)
    sample_correct = np.array([question.is_correct(s.answer) for s in samples], dtype=bool)
    sample_tokens = np.array([s.tokens for s in samples], dtype=np.int64)

    majority_correct = voted & correct_class[leader]

    tokens = np.cumsum(sample_tokens[orders], axis=1)
    final = leader[:, -1:]
    matches = (leader == final) & voted
    first_match = np.argmax(matches, axis=1)
    has_match = matches.any(axis=1)
    # Where the whole pool abstains, the answer is None however long one samples: stop at once.
    oracle_index = np.where(has_match, first_match, np.where(voted[:, -1], n - 1, 0))
    rows = np.arange(n_orders)

    drawn_correct = sample_correct[orders]
    pass_at = np.logical_or.accumulate(drawn_correct, axis=1)
    any_correct = pass_at[:, -1]
    first_right = np.where(any_correct, np.argmax(drawn_correct, axis=1), n - 1)

    best_of: np.ndarray | None = None
    scores = [s.score for s in samples]
    if any(score is not None for score in scores):
        sample_scores = np.array([-np.inf if v is None else v for v in scores], dtype=float)[orders]
        best_index = _running_argmax(sample_scores)
        best_of = drawn_correct[rows[:, None], best_index]

    return QuestionReference(
        majority_correct=majority_correct,
        tokens=tokens,
        oracle_samples=oracle_index + 1,
        oracle_tokens=tokens[rows, oracle_index],
        pass_at=pass_at,
        first_correct_samples=first_right + 1,
        first_correct_tokens=tokens[rows, first_right],
        best_of_correct=best_of,
    )


def _running_argmax(values: np.ndarray) -> np.ndarray:
    # Index of the first maximum of each prefix, row by row (ties keep the earliest).
    running = np.maximum.accumulate(values, axis=1)
    is_new = np.concatenate([np.ones((values.shape[0], 1), dtype=bool), running[:, 1:] > running[:, :-1]], axis=1)
    index = np.where(is_new, np.arange(values.shape[1])[None, :], 0)
    return np.maximum.accumulate(index, axis=1)
