"""Vote trajectories of a task's questions over many draw orders, as arrays: what a vote-count policy sees.

For every question and every random draw order (the simulator's own, :func:`budgetctl.sim.orders_for`)
this records, after each sample ``t``: the leader's and the runner-up's votes (majority vote, ties to
the answer seen first, as the run core counts them), whether the running majority is right, whether
it already equals the whole pool's majority, the tokens spent, and the run of equal answers (for ESC).
A policy that reads only these can then be replayed on every order at once with numpy, which is what
lets ``budgetctl train`` compare many operating points and several rule families on cross-validation
folds in seconds. A test checks the replay against :func:`budgetctl.simulate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._aggregate import normalize_answer
from .._pool import Question
from ..sim._reference import running_votes
from ..sim._simulate import orders_for

__all__ = ["Trajectories", "build_trajectories"]


@dataclass(frozen=True)
class Trajectories:
    """Per-(question, order, step) arrays of one task; every question has the same pool size ``n``."""

    #: (Q, O, N) leader votes after t+1 samples.
    leader: np.ndarray
    #: (Q, O, N) runner-up votes after t+1 samples.
    runner_up: np.ndarray
    #: (Q, O, N) is the running majority right?
    correct: np.ndarray
    #: (Q, O, N) is the running majority the whole pool's majority (the answer at t = N)?
    final: np.ndarray
    #: (Q, O, N) tokens spent by the first t+1 samples (0 where the pool has none).
    tokens: np.ndarray
    #: (Q, O, N) run of equal, parsable answers ending at t+1 (what ESC's window checks).
    run: np.ndarray
    #: Question ids.
    ids: list[str]
    tokens_known: bool

    @property
    def n(self) -> int:
        """Samples per question (the full budget these trajectories describe)."""
        return int(self.leader.shape[2])

    def take(self, index: np.ndarray) -> Trajectories:
        """The questions at ``index``."""
        return Trajectories(
            leader=self.leader[index],
            runner_up=self.runner_up[index],
            correct=self.correct[index],
            final=self.final[index],
            tokens=self.tokens[index],
            run=self.run[index],
            ids=[self.ids[int(i)] for i in index],
            tokens_known=self.tokens_known,
        )

    def cost(self) -> np.ndarray:
        """(Q, O, N) cost after t+1 samples: tokens where the pool reports them, else samples."""
        if self.tokens_known:
            return self.tokens.astype(float)
        steps = np.arange(1, self.n + 1, dtype=float)
        return np.broadcast_to(steps, self.leader.shape)


def _one(question: Question, n_orders: int, seed: int) -> tuple[np.ndarray, ...]:
    samples = question.samples
    n = len(samples)
    orders = orders_for(question, n_orders, seed)
    drawn, counts, leader_class, voted, correct_class = running_votes(question, orders, normalize_answer)
    k = counts.shape[2]
    ordered = np.sort(counts, axis=2)
    leader = ordered[:, :, -1]
    runner_up = ordered[:, :, -2] if k > 1 else np.zeros_like(leader)
    correct = voted & correct_class[leader_class]
    final = (leader_class == leader_class[:, -1:]) & voted
    token_values = np.array([s.tokens or 0 for s in samples], dtype=np.int64)
    tokens = np.cumsum(token_values[orders], axis=1)
    run = np.zeros(drawn.shape, dtype=np.int32)
    run[:, 0] = drawn[:, 0] >= 0
    for t in range(1, n):
        same = (drawn[:, t] == drawn[:, t - 1]) & (drawn[:, t] >= 0)
        run[:, t] = np.where(same, run[:, t - 1] + 1, (drawn[:, t] >= 0).astype(np.int32))
    return leader, runner_up, correct, final, tokens, run


def build_trajectories(questions: Sequence[Question], *, orders: int, seed: int) -> Trajectories:
    """Replay every question in ``orders`` random orders (seeded as the simulator seeds them).

    All questions must have the same number of samples: a task's full budget is one number.
    """
    if not questions:
        raise ValueError("no questions to learn from")
    sizes = {len(q.samples) for q in questions}
    if len(sizes) != 1:
        raise ValueError(
            f"the questions of one task must all have the same number of samples, found {sorted(sizes)} "
            "(train each pool size as its own task, e.g. with --dataset)"
        )
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be an int >= 1, got {orders!r}")
    parts = [_one(q, orders, seed) for q in questions]
    stacked = [np.stack([p[i] for p in parts]) for i in range(6)]
    return Trajectories(
        leader=stacked[0].astype(np.int16),
        runner_up=stacked[1].astype(np.int16),
        correct=stacked[2],
        final=stacked[3],
        tokens=stacked[4],
        run=stacked[5].astype(np.int16),
        ids=[q.id for q in questions],
        tokens_known=all(q.tokens_known for q in questions),
    )
