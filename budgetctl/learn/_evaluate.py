"""How good a learned policy is on a pool: calibration of its gains, and what its decisions cost and get right.

Two reports, both plain dicts ready for JSON (``budgetctl evaluate --json``) and for the held-out
metrics of an artifact:

- :func:`gain_report`: for each horizon, predicted against realised gains (the average over many
  random orders of the change in correctness), in bins of the prediction: a reliability table, the
  calibration error and R².
- :func:`decision_report`: the policy replayed through the simulator beside Adaptive-Consistency
  (0.95) and ESC (window 5) at their published defaults, the whole pool's majority and the cost
  oracle; accuracy, samples, tokens, and the savings against the cheaper default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._pool import Pool, Question
from ..policies._base import AllOf, AnyOf, Not, StopPolicy
from ..sim import simulate
from ._dataset import Rows
from ._models import combine
from ._policy import LearnedStop

__all__ = ["predict_rows", "gain_report", "decision_report", "find_learned", "plot_reliability", "BASELINES"]

#: The defaults a learned policy is compared with: Adaptive-Consistency and ESC as published.
BASELINES = ("ac:threshold=0.95", "esc:window=5")


def find_learned(policy: StopPolicy) -> LearnedStop | None:
    """The :class:`LearnedStop` inside ``policy`` (itself, or a part of ``|``, ``&`` or ``~``), if any."""
    if isinstance(policy, LearnedStop):
        return policy
    if isinstance(policy, AnyOf | AllOf):
        for part in policy.policies:
            found = find_learned(part)
            if found is not None:
                return found
    if isinstance(policy, Not):
        return find_learned(policy.policy)
    return None


def predict_rows(policy: LearnedStop, rows: Rows) -> np.ndarray:
    """Calibrated gains (rows, horizons of the policy) for a batch of rows, as the policy predicts them one by one."""
    raw = policy._fitted().predict(rows.X)
    return policy.calibration_.apply(combine(raw))


def _bins(predicted: np.ndarray, realised: np.ndarray, weights: np.ndarray, n_bins: int) -> list[dict[str, float]]:
    order = np.argsort(predicted, kind="stable")
    cumulative = np.cumsum(weights[order])
    total = cumulative[-1]
    edges = np.searchsorted(cumulative, np.linspace(0, total, n_bins + 1)[1:-1])
    out = []
    for part in np.split(order, edges):
        if part.size == 0:
            continue
        w = weights[part]
        if w.sum() <= 0:
            continue
        out.append(
            {
                "predicted": float(np.average(predicted[part], weights=w)),
                "realised": float(np.average(realised[part], weights=w)),
                "share": float(w.sum() / total),
            }
        )
    return out


def gain_report(policy: LearnedStop, rows: Rows, *, n_bins: int = 10) -> dict[str, Any]:
    """Predicted against realised gains per horizon, on rows where the horizon could change the answer.

    Rows are weighted so that every dataset counts the same. ``calibration_error`` is the
    weighted mean absolute gap between the mean prediction and the mean realised gain over
    ``n_bins`` bins of equal weight; ``r2`` compares the squared error with predicting the mean.
    """
    gains = predict_rows(policy, rows)
    weights = rows.dataset_weights()
    horizons = []
    for i, h in enumerate(policy.horizons_):
        if h not in rows.horizons:
            continue
        mask = rows.valid(h)
        if mask.sum() < n_bins:
            continue
        predicted, realised, w = gains[mask, i], rows.gain(h)[mask], weights[mask]
        bins = _bins(predicted, realised, w, n_bins)
        mean = np.average(realised, weights=w)
        sse = np.average((predicted - realised) ** 2, weights=w)
        sst = np.average((realised - mean) ** 2, weights=w)
        horizons.append(
            {
                "horizon": int(h),
                "rows": int(mask.sum()),
                "mean_predicted": float(np.average(predicted, weights=w)),
                "mean_realised": float(mean),
                "r2": float(1.0 - sse / sst) if sst > 0 else None,
                "calibration_error": float(sum(b["share"] * abs(b["predicted"] - b["realised"]) for b in bins)),
                "bins": bins,
            }
        )
    return {"rows": len(rows), "horizons": horizons}


def decision_report(
    policy: StopPolicy,
    pool: Pool | Sequence[Question],
    *,
    orders: int = 50,
    seed: int = 0,
    jobs: int | None = 1,
    name: str = "learned",
    baselines: Sequence[str] = BASELINES,
) -> dict[str, Any]:
    """Replay ``pool`` through ``policy`` and the baselines; per dataset, accuracy and cost of each.

    ``savings_vs_cheaper_default`` is ``1 - cost / cost of the cheaper baseline`` (tokens, or
    samples where the pool has no token counts); ``loss_vs_full_pool`` is the accuracy the policy
    gives up against the majority of each question's whole pool.
    """
    loaded = pool if isinstance(pool, Pool) else Pool(questions=list(pool), files=[])
    result = simulate(loaded, [policy, *baselines], orders=orders, seed=seed, jobs=jobs)
    datasets = result.datasets if len(result.datasets) == 1 else [*result.datasets, result.overall]
    report: dict[str, Any] = {"orders": orders, "seed": seed, "policy": repr(policy), "datasets": []}
    for data in datasets:
        rows = {r.policy: r for r in data.rows}
        own = data.rows[0]
        cost_key = "mean_tokens" if data.tokens_known else "mean_samples"

        def cost(row: Any, key: str = cost_key) -> float:
            return float(getattr(row, key))

        cheaper = min((rows[b] for b in baselines), key=cost)
        entry = {
            "dataset": data.dataset,
            "questions": data.n_questions,
            "tokens_known": data.tokens_known,
            "full_pool_accuracy": data.full_pool_accuracy,
            "cost": "tokens" if data.tokens_known else "samples",
            "policies": {
                label: {
                    "accuracy": row.accuracy,
                    "mean_samples": row.mean_samples,
                    "mean_tokens": row.mean_tokens,
                }
                for label, row in [
                    (name, own),
                    *[(b, rows[b]) for b in baselines],
                    ("cost oracle", rows["cost oracle"]),
                ]
            },
            "cheaper_default": cheaper.policy,
            "savings_vs_cheaper_default": 1.0 - cost(own) / cost(cheaper) if cost(cheaper) > 0 else None,
            "loss_vs_full_pool": data.full_pool_accuracy - own.accuracy,
        }
        report["datasets"].append(entry)
    return report


def plot_reliability(report: dict[str, Any], path: str, *, title: str = "") -> None:
    """Draw the reliability diagram of a :func:`gain_report` to a PNG (needs ``budgetctl[plot]``)."""
    from .._optional import import_optional

    matplotlib = import_optional("matplotlib", "plot", "The reliability plot")
    matplotlib.use("Agg")
    pyplot = import_optional("matplotlib.pyplot", "plot", "The reliability plot")
    figure, axes = pyplot.subplots(figsize=(5.5, 5))
    low, high = 0.0, 0.0
    for entry in report["horizons"]:
        xs = [b["predicted"] for b in entry["bins"]]
        ys = [b["realised"] for b in entry["bins"]]
        low, high = min(low, *xs, *ys), max(high, *xs, *ys)
        axes.plot(xs, ys, marker="o", label=f"h = {entry['horizon']}")
    axes.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="calibrated")
    axes.set_xlabel("predicted gain in accuracy")
    axes.set_ylabel("realised gain (mean over random orders)")
    axes.set_title(title or "Learned stop policy: reliability")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
