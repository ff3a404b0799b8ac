"""Training rows from sample pools: the features of every prefix of many random draw orders, and what came next.

Each question's samples are drawn in random orders (the simulator's own, see
:func:`budgetctl.sim.orders_for`) and fed one by one through the real run core, so the features a
policy is trained on are bit for bit the ones it will see in a live run. After ``t`` samples a row
records the features and whether the anytime answer is right; the target for horizon ``h`` is the
expected change in that correctness ``h`` samples later, and the tokens those samples cost.

The expectation is estimated from many more orders than carry features (``target_orders``): the
future of a prefix depends only on which samples it used up, so every prefix of the same question
with the same vote counts (and the same correctness now) shares one target, the mean over all of
them of the correctness ``h`` samples later. That averages out most of the noise of a single
realised future at no cost in features, and it is still the plain average over random orders.

A horizon that cannot overturn the leader (``runner-up votes + h < leader votes``, one vote per
sample; a tie may go either way) changes nothing, so its target is exactly 0 and it is left out of
training: the policy knows it without a model.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .._aggregate import normalize_answer
from .._core import RunCore
from .._pool import Question
from .._workers import worker_context
from ..policies._base import Never
from ..sim._reference import reference
from ..sim._replay import LatencyModel
from ..sim._simulate import orders_for
from ._features import FEATURE_NAMES, state_features

__all__ = ["Rows", "build_rows"]

_NEVER = Never()


@dataclass
class Rows:
    """The rows of many trajectories, trajectory after trajectory, each in draw order (``t = 1..n``)."""

    #: (R, F) features of the state after ``t`` samples.
    X: np.ndarray
    #: (R,) 1.0 when the anytime answer after ``t`` samples is right.
    correct: np.ndarray
    #: (R, H) expected change in correctness ``horizons[i]`` samples later (NaN past the pool's end).
    gains: np.ndarray
    #: (R, H) probability that correctness changes (either way) within ``horizons[i]`` samples (NaN past the end).
    changes: np.ndarray
    #: The horizons of ``gains``' columns.
    horizons: tuple[int, ...]
    #: (R,) tokens spent by the first ``t`` samples.
    tokens: np.ndarray
    #: (R,) leader votes minus runner-up votes after ``t`` samples.
    gap: np.ndarray
    #: (R,) samples drawn so far (1-based).
    t: np.ndarray
    #: (R,) samples in the trajectory's pool.
    n: np.ndarray
    #: (R,) index of the row's question in ``questions``.
    question: np.ndarray
    #: (R,) index of the row's dataset in ``datasets``.
    dataset: np.ndarray
    #: (R,) whether the question's samples report tokens.
    tokens_known: np.ndarray
    #: Dataset names.
    datasets: list[str]
    #: Question ids, in the order of ``question``.
    questions: list[str]

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def select(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` holds; whole trajectories must be kept or dropped together."""
        return Rows(
            X=self.X[mask],
            correct=self.correct[mask],
            gains=self.gains[mask],
            changes=self.changes[mask],
            horizons=self.horizons,
            tokens=self.tokens[mask],
            gap=self.gap[mask],
            t=self.t[mask],
            n=self.n[mask],
            question=self.question[mask],
            dataset=self.dataset[mask],
            tokens_known=self.tokens_known[mask],
            datasets=self.datasets,
            questions=self.questions,
        )

    def valid(self, horizon: int) -> np.ndarray:
        """Rows whose horizon ``horizon`` is inside the pool and could overturn the leader (or tie it)."""
        return (self.t + horizon <= self.n) & (self.gap <= horizon)

    def gain(self, horizon: int) -> np.ndarray:
        """Expected change in correctness ``horizon`` samples later (0 where it runs past the pool)."""
        if horizon not in self.horizons:
            raise ValueError(f"horizon {horizon} has no targets; these rows have {self.horizons}")
        column = self.gains[:, self.horizons.index(horizon)]
        return np.where(np.isnan(column), 0.0, column)

    def change(self, horizon: int) -> np.ndarray:
        """Probability that correctness changes within ``horizon`` samples (0 where it runs past the pool)."""
        if horizon not in self.horizons:
            raise ValueError(f"horizon {horizon} has no targets; these rows have {self.horizons}")
        column = self.changes[:, self.horizons.index(horizon)]
        return np.where(np.isnan(column), 0.0, column)

    def future_tokens(self, horizon: int) -> np.ndarray:
        """Tokens the next ``horizon`` samples of the row's own order cost (0 where it runs past the pool)."""
        out = np.zeros(len(self))
        index = np.flatnonzero(self.t + horizon <= self.n)
        out[index] = self.tokens[index + horizon] - self.tokens[index]
        return out

    def dataset_weights(self) -> np.ndarray:
        """Row weights that give every dataset the same total weight (mean 1)."""
        counts = np.bincount(self.dataset, minlength=len(self.datasets)).astype(float)
        present = counts > 0
        per = np.zeros_like(counts)
        per[present] = len(self) / (present.sum() * counts[present])
        out: np.ndarray = per[self.dataset]
        return out

    def starts(self) -> np.ndarray:
        """Index of each trajectory's first row."""
        return np.flatnonzero(self.t == 1)


def _smoothed_gains(
    question: Question, orders: np.ndarray, horizons: Sequence[int], feature_orders: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected change in correctness per (feature order, t, horizon), pooling prefixes with equal vote counts.

    Returns the gains and the probabilities that correctness changes, each of shape
    (feature_orders * n, H) with NaN past the pool's end, and the correctness of the anytime answer
    for the same rows.
    """
    samples = question.samples
    n = len(samples)
    keys: dict[Hashable, int] = {}
    classes = np.array(
        [-1 if s.answer is None else keys.setdefault(normalize_answer(s.answer), len(keys)) for s in samples],
        dtype=np.int64,
    )
    correct = reference(question, orders, normalize_answer).majority_correct.astype(np.int64)  # (O, n)
    n_orders = orders.shape[0]
    width = max(len(keys), 1)
    drawn = classes[orders]
    counts = np.cumsum(drawn[:, :, None] == np.arange(width)[None, None, :], axis=1, dtype=np.int64)
    step = np.broadcast_to(np.arange(n, dtype=np.int64)[None, :], (n_orders, n))
    table = np.concatenate([step[:, :, None], counts, correct[:, :, None]], axis=2).reshape(n_orders * n, width + 2)
    _, group = np.unique(table, axis=0, return_inverse=True)
    group = group.reshape(n_orders, n)
    n_groups = int(group.max()) + 1
    gains = np.full((feature_orders, n, len(horizons)), np.nan)
    changes = np.full((feature_orders, n, len(horizons)), np.nan)
    for i, h in enumerate(horizons):
        if h >= n:
            continue
        now = correct[:, : n - h]
        later = correct[:, h:]
        members = group[:, : n - h].ravel()
        count = np.bincount(members, minlength=n_groups)
        total = np.bincount(members, weights=later.ravel().astype(float), minlength=n_groups)
        changed = np.bincount(members, weights=(later != now).ravel().astype(float), minlength=n_groups)
        mine = group[:feature_orders, : n - h]
        gains[:, : n - h, i] = total[mine] / count[mine] - correct[:feature_orders, : n - h]
        changes[:, : n - h, i] = changed[mine] / count[mine]
    size = (feature_orders * n, len(horizons))
    return gains.reshape(size), changes.reshape(size), correct[:feature_orders].ravel()


@dataclass
class _Part:
    X: list[list[float]]
    correct: list[bool]
    gains: list[np.ndarray]
    changes: list[np.ndarray]
    tokens: list[int]
    gap: list[float]
    t: list[int]
    n: list[int]
    question: list[int]
    dataset: list[str]
    known: list[bool]


def _build_part(
    questions: Sequence[tuple[int, Question]], orders: int, target_orders: int, seed: int, horizons: tuple[int, ...]
) -> _Part:
    part = _Part([], [], [], [], [], [], [], [], [], [], [])
    stamp = LatencyModel().stamp
    for qi, question in questions:
        samples = stamp(question.samples)
        n = len(samples)
        drawn = orders_for(question, target_orders, seed)
        gains, changes, reference_correct = _smoothed_gains(question, drawn, horizons, orders)
        verdict: dict[object, bool] = {}
        is_correct = question.is_correct
        start = len(part.correct)
        for order in drawn[:orders].tolist():
            core = RunCore(policy=_NEVER)
            for i in order:
                core.launch()
                state = core.record(samples[i], 0.0, 0.0)
                part.X.append(state_features(state))
                answer = state.answer
                right = verdict.get(answer)
                if right is None:
                    right = verdict[answer] = is_correct(answer)
                part.correct.append(right)
                part.tokens.append(state.tokens)
                part.gap.append(state.leader_votes - state.runner_up_votes)
            part.t.extend(range(1, n + 1))
        if not np.array_equal(np.asarray(part.correct[start:], dtype=np.int64), reference_correct):
            raise RuntimeError(
                f"question {question.id!r}: the run core and the reference curves disagree on the leader"
            )
        part.gains.append(gains)
        part.changes.append(changes)
        rows = n * orders
        part.n.extend([n] * rows)
        part.question.extend([qi] * rows)
        part.dataset.extend([question.dataset] * rows)
        part.known.extend([question.tokens_known] * rows)
    return part


def build_rows(
    questions: Sequence[Question],
    *,
    orders: int,
    seed: int,
    horizons: Sequence[int],
    target_orders: int | None = None,
    jobs: int | None = 1,
) -> Rows:
    """Replay each question in ``orders`` random orders through the run core; one row per sample drawn.

    Targets pool ``target_orders`` orders (default ``max(64, orders)``); the first ``orders`` of
    them carry features. ``jobs`` worker processes share the questions (``None``: one per CPU).
    """
    for name, value in (("orders", orders), ("target_orders", target_orders if target_orders is not None else orders)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    target = max(64, orders) if target_orders is None else target_orders
    if target < orders:
        raise ValueError(f"target_orders ({target}) cannot be fewer than orders ({orders})")
    if not questions:
        raise ValueError("no questions to learn from")
    grid = tuple(int(h) for h in horizons)
    if not grid or any(h < 1 for h in grid) or list(grid) != sorted(set(grid)):
        raise ValueError(f"horizons must be increasing ints >= 1, got {tuple(horizons)!r}")
    indexed = list(enumerate(questions))
    workers = (os.cpu_count() or 1) if jobs is None else max(1, jobs)
    if workers == 1 or len(indexed) < 16:
        parts = [_build_part(indexed, orders, target, seed, grid)]
    else:
        size = max(1, len(indexed) // (workers * 4))
        chunks = [indexed[i : i + size] for i in range(0, len(indexed), size)]
        with ProcessPoolExecutor(max_workers=workers, mp_context=worker_context()) as pool:
            parts = list(
                pool.map(_build_part, chunks, *zip(*[(orders, target, seed, grid)] * len(chunks), strict=True))
            )
    datasets: dict[str, int] = {}
    for q in questions:
        datasets.setdefault(q.dataset, len(datasets))

    def cat(name: str, dtype: type) -> np.ndarray:
        return np.asarray([v for p in parts for v in getattr(p, name)], dtype=dtype)

    return Rows(
        X=np.asarray([x for p in parts for x in p.X], dtype=float).reshape(-1, len(FEATURE_NAMES)),
        correct=cat("correct", float),
        gains=np.concatenate([g for p in parts for g in p.gains]),
        changes=np.concatenate([c for p in parts for c in p.changes]),
        horizons=grid,
        tokens=cat("tokens", np.int64),
        gap=cat("gap", float),
        t=cat("t", np.int64),
        n=cat("n", np.int64),
        question=cat("question", np.int64),
        dataset=np.asarray([datasets[d] for p in parts for d in p.dataset], dtype=np.int64),
        tokens_known=cat("known", bool),
        datasets=list(datasets),
        questions=[q.id for q in questions],
    )
