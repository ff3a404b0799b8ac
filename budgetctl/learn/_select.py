"""Where a learned policy stops on training rows, for a whole sweep of values at once; choosing the value.

A learned policy stops after ``t`` samples when ``value >= break_even(state_t)``, the highest gain
per 1,000 tokens that any horizon it considers is predicted to buy. The break-even value of every
row is computed once; then the stop of every trajectory under every value is a prefix minimum, so
a sweep over many values costs little more than one. On pools (no budget, no deadline) this is
exactly what :func:`budgetctl.simulate` gives for the policy, up to float rounding in the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._dataset import Rows

__all__ = ["row_break_even", "Sweep", "sweep_values", "choose_value", "VALUE_GRID"]

#: Values (accuracy per 1,000 tokens) tried when the operating point is chosen.
VALUE_GRID: tuple[float, ...] = tuple(float(v) for v in np.round(np.geomspace(1e-4, 20.0, 72), 8))


def row_break_even(gains: np.ndarray, rows: Rows, horizons: Sequence[int], default_tokens: float) -> np.ndarray:
    """Break-even value of each row: ``max(0, max_h 1000 gain_h / tokens_h)`` over the horizons that could matter."""
    per_sample = np.where(rows.tokens > 0, rows.tokens / np.maximum(rows.t, 1), default_tokens)
    h = np.asarray(horizons, dtype=float)[None, :]
    first = np.maximum(1.0, np.ceil(rows.gap - 1e-9))[:, None]
    ratio = np.where(h >= first, gains / (h * per_sample[:, None]), -np.inf)
    out: np.ndarray = np.maximum(ratio.max(axis=1), 0.0) * 1000.0
    return out


@dataclass(frozen=True)
class Sweep:
    """Accuracy and cost of a policy on each dataset under each value."""

    values: np.ndarray
    datasets: list[str]
    #: (datasets, values) mean correctness at the stop.
    accuracy: np.ndarray
    #: (datasets, values) mean samples drawn.
    samples: np.ndarray
    #: (datasets, values) mean tokens spent.
    tokens: np.ndarray
    #: (datasets,) accuracy of the whole pool's majority.
    full_accuracy: np.ndarray
    #: (datasets,) mean tokens and samples of the whole pool.
    full_tokens: np.ndarray
    full_samples: np.ndarray
    #: (datasets,) whether the dataset reports tokens.
    tokens_known: np.ndarray


def sweep_values(rows: Rows, break_even: np.ndarray, values: Sequence[float]) -> Sweep:
    """Where every trajectory stops under each of ``values``: stop at the first ``t`` with ``value >= break_even``."""
    starts = rows.starts()
    lengths = rows.n[starts]
    longest = int(lengths.max())
    padded = np.full((starts.size, longest), np.inf)
    column = rows.t - 1
    trajectory = np.repeat(np.arange(starts.size), lengths)
    padded[trajectory, column] = break_even
    padded[np.arange(starts.size), lengths - 1] = -np.inf  # the pool runs out: the run stops there
    running = np.minimum.accumulate(padded, axis=1)
    values_array = np.asarray(values, dtype=float)
    stop = np.empty((values_array.size, starts.size), dtype=np.int64)
    for i, value in enumerate(values_array):
        stop[i] = np.argmax(running <= value, axis=1)
    index = starts[None, :] + stop
    correct = rows.correct[index]
    samples = (stop + 1).astype(float)
    tokens = rows.tokens[index].astype(float)
    last = starts + lengths - 1
    dataset = rows.dataset[starts]
    n_sets = len(rows.datasets)
    shape = (n_sets, values_array.size)
    accuracy, mean_samples, mean_tokens = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    full_accuracy, full_tokens, full_samples = np.full(n_sets, np.nan), np.full(n_sets, np.nan), np.full(n_sets, np.nan)
    known = np.zeros(n_sets, dtype=bool)
    for d in range(n_sets):
        members = dataset == d
        if not members.any():
            continue
        accuracy[d] = correct[:, members].mean(axis=1)
        mean_samples[d] = samples[:, members].mean(axis=1)
        mean_tokens[d] = tokens[:, members].mean(axis=1)
        full_accuracy[d] = rows.correct[last[members]].mean()
        full_tokens[d] = rows.tokens[last[members]].mean()
        full_samples[d] = lengths[members].mean()
        known[d] = bool(rows.tokens_known[starts[members]].all())
    return Sweep(
        values=values_array,
        datasets=list(rows.datasets),
        accuracy=accuracy,
        samples=mean_samples,
        tokens=mean_tokens,
        full_accuracy=full_accuracy,
        full_tokens=full_tokens,
        full_samples=full_samples,
        tokens_known=known,
    )


def choose_value(sweep: Sweep, max_loss: float) -> float:
    """The cheapest value that stays within ``max_loss`` of every dataset's full-pool accuracy.

    Values are tried from the most generous (smallest) up; the first one at which any dataset loses
    more than ``max_loss`` ends the search, and the value before it is chosen (the smallest value
    of the sweep when even that one loses too much).
    """
    present = ~np.isnan(sweep.full_accuracy)
    loss = sweep.full_accuracy[present, None] - sweep.accuracy[present]
    ok = (loss <= max_loss + 1e-12).all(axis=0)
    order = np.argsort(sweep.values)
    chosen = sweep.values[order[0]]
    for i in order:
        if not ok[i]:
            break
        chosen = sweep.values[i]
    return float(chosen)
