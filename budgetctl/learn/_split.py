"""Held-out splits of questions, stratified by dataset and seeded."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._pool import Question

__all__ = ["split_questions"]


def split_questions(
    questions: Sequence[Question], fraction: float, *, seed: int
) -> tuple[list[Question], list[Question]]:
    """``(train, held_out)``: about ``fraction`` of each dataset's questions held out, the rest kept for training.

    Every dataset keeps at least one training question; the split depends only on the seed and the
    questions' order within their dataset.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction!r}")
    groups: dict[str, list[Question]] = {}
    for q in questions:
        groups.setdefault(q.dataset, []).append(q)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for members in groups.values():
        count = min(math.ceil(fraction * len(members)), len(members) - 1) if fraction > 0 else 0
        for i in rng.permutation(len(members))[:count]:
            held.add(id(members[int(i)]))
    train = [q for q in questions if id(q) not in held]
    out = [q for q in questions if id(q) in held]
    return train, out
