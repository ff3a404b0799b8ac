"""Fitting gain models on training rows: scikit-learn GLM/ridge and gradient boosting, a torch MLP, and calibration.

The gain of ``h`` more samples is learned in two parts, each with a loss suited to it:

- the probability ``P(change)`` that the correctness of the anytime answer changes within ``h``
  samples, on a log scale (Poisson deviance, log link), so that the tiny probabilities of settled
  votes, where the decisions at a tight operating point are taken, are estimated to a relative
  precision rather than drowned by the squared error of uncertain states;
- the direction ``E[change in correctness | it changes]`` in [-1, 1] (squared loss, weighted by
  ``P(change)``): whether the answers that take over tend to be better or worse.

Their product is the expected gain. Every fitter learns on the rows where ``h`` could change the
answer and returns an array model (:mod:`._models`) with ``2 H`` outputs: the log-probabilities,
then the directions (:func:`~._models.combine` multiplies them). Out-of-fold predictions, grouped by
question so that no question is both fitted and predicted, feed the isotonic calibration and the
choice of the operating point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._optional import import_optional
from ._dataset import Rows
from ._models import Calibration, LinearModel, MLPModel, TreeModel, combine

__all__ = ["FitSettings", "fit_model", "predict_gains", "out_of_fold", "fit_calibration", "direction_target"]


@dataclass(frozen=True)
class FitSettings:
    """Everything a fitter needs besides the rows (the estimator's hyperparameters)."""

    kind: str
    horizons: tuple[int, ...]
    alpha: float = 1.0
    max_iter: int = 60
    max_depth: int = 3
    learning_rate: float = 0.1
    hidden: int = 32
    epochs: int = 6
    max_rows: int = 300_000
    random_state: int = 0


def _standardise(X: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    total = weights.sum()
    mean = (X * weights[:, None]).sum(axis=0) / total
    var = (((X - mean) ** 2) * weights[:, None]).sum(axis=0) / total
    scale = np.sqrt(var)
    scale[scale < 1e-9] = 1.0
    return mean, scale


def _subsample(mask: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    index = np.flatnonzero(mask)
    if index.size > limit:
        index = np.sort(rng.choice(index, size=limit, replace=False))
    return index


def direction_target(rows: Rows, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Direction of the change (gain / P(change), 0 where nothing changes) and its weight P(change)."""
    change = rows.change(horizon)
    gain = rows.gain(horizon)
    direction = np.divide(gain, change, out=np.zeros_like(gain), where=change > 0)
    return np.clip(direction, -1.0, 1.0), change


def fit_model(rows: Rows, weights: np.ndarray, settings: FitSettings) -> LinearModel | TreeModel | MLPModel:
    """Fit the gain model ``settings.kind`` on ``rows``: ``2 H`` outputs for the horizons of ``settings``.

    Fits run on one thread: OpenMP's barriers spin, and on a machine busy with other work two
    threads were measured 15 times slower than one (88 s against 6 s for one boosting fit).
    """
    threadpoolctl = import_optional("threadpoolctl", "learn", "Fitting a learned policy")
    with threadpoolctl.threadpool_limits(limits=1):
        if settings.kind == "linear":
            return _fit_linear(rows, weights, settings)
        if settings.kind == "gbm":
            return _fit_gbm(rows, weights, settings)
        if settings.kind == "mlp":
            return _fit_mlp(rows, weights, settings)
    raise ValueError(f"model must be 'linear', 'gbm' or 'mlp', got {settings.kind!r}")


def _fit_linear(rows: Rows, weights: np.ndarray, settings: FitSettings) -> LinearModel:
    linear_model = import_optional("sklearn.linear_model", "learn", "The linear learned policy")
    rng = np.random.default_rng(settings.random_state)
    mean, scale = _standardise(rows.X, weights)
    rates: list[tuple[np.ndarray, float]] = []
    directions: list[tuple[np.ndarray, float]] = []
    for h in settings.horizons:
        index = _subsample(rows.valid(h), settings.max_rows, rng)
        Z = (rows.X[index] - mean) / scale
        w = weights[index]
        glm = linear_model.PoissonRegressor(alpha=settings.alpha / max(index.size, 1), max_iter=300)
        glm.fit(Z, rows.change(h)[index], sample_weight=w)
        rates.append((np.asarray(glm.coef_, dtype=float), float(glm.intercept_)))
        direction, change = direction_target(rows, h)
        ridge = linear_model.Ridge(alpha=settings.alpha)
        ridge.fit(Z, direction[index], sample_weight=w * change[index] + 1e-12)
        directions.append((np.asarray(ridge.coef_, dtype=float), float(ridge.intercept_)))
    parts = rates + directions
    coef = np.array([c for c, _ in parts])
    intercept = np.array([b for _, b in parts])
    return LinearModel.from_standardised(coef, intercept, mean, scale)


def _fit_gbm(rows: Rows, weights: np.ndarray, settings: FitSettings) -> TreeModel:
    ensemble = import_optional("sklearn.ensemble", "learn", "The gradient-boosting learned policy")
    rng = np.random.default_rng(settings.random_state)
    common = {
        "max_iter": settings.max_iter,
        "max_depth": settings.max_depth,
        "learning_rate": settings.learning_rate,
        "min_samples_leaf": 50,
        "l2_regularization": 1.0,
        "early_stopping": False,
        "random_state": settings.random_state,
    }
    rates, directions = [], []
    for h in settings.horizons:
        index = _subsample(rows.valid(h), settings.max_rows, rng)
        X, w = rows.X[index], weights[index]
        change = rows.change(h)[index]
        rate = ensemble.HistGradientBoostingRegressor(loss="poisson", **common)
        rate.fit(X, change, sample_weight=w)
        rates.append(rate)
        direction, weight = direction_target(rows, h)
        model = ensemble.HistGradientBoostingRegressor(loss="squared_error", **common)
        model.fit(X, direction[index], sample_weight=w * weight[index] + 1e-12)
        directions.append(model)
    # The conversion reads private scikit-learn attributes: it is checked against predict on a few rows.
    return TreeModel.from_sklearn(rates + directions, check=rows.X[:64])


def _fit_mlp(rows: Rows, weights: np.ndarray, settings: FitSettings) -> MLPModel:
    from ._torch import fit_mlp

    masks = np.stack([rows.valid(h) for h in settings.horizons], axis=1)
    changes = np.stack([rows.change(h) for h in settings.horizons], axis=1)
    directions = np.stack([direction_target(rows, h)[0] for h in settings.horizons], axis=1)
    rng = np.random.default_rng(settings.random_state)
    index = _subsample(np.asarray(masks.any(axis=1)), settings.max_rows * 4, rng)
    mean, scale = _standardise(rows.X[index], weights[index])
    layers = fit_mlp(
        (rows.X[index] - mean) / scale,
        changes[index],
        directions[index],
        masks[index],
        weights[index],
        hidden=settings.hidden,
        epochs=settings.epochs,
        seed=settings.random_state,
    )
    return MLPModel(mean, scale, [w for w, _ in layers], [b for _, b in layers])


def predict_gains(model: LinearModel | TreeModel | MLPModel, X: np.ndarray) -> np.ndarray:
    """Uncalibrated gains (rows, H) of a fitted model."""
    return combine(model.predict(X))


def out_of_fold(rows: Rows, weights: np.ndarray, settings: FitSettings, folds: int) -> np.ndarray:
    """Uncalibrated gains of every row by a model fitted without the row's question, (rows, horizons)."""
    rng = np.random.default_rng(settings.random_state + 1)
    fold_of_question = rng.integers(0, folds, size=len(rows.questions))
    fold = fold_of_question[rows.question]
    out = np.zeros((len(rows), len(settings.horizons)))
    for k in range(folds):
        held = fold == k
        if not held.any() or held.all():
            continue
        model = fit_model(rows.select(~held), weights[~held], settings)
        out[held] = predict_gains(model, rows.X[held])
    return out


def fit_calibration(
    raw: np.ndarray, rows: Rows, weights: np.ndarray, horizons: Sequence[int], *, min_rows: int = 200
) -> Calibration:
    """Isotonic maps from out-of-fold raw gains to realised gains, one per horizon."""
    isotonic = import_optional("sklearn.isotonic", "learn", "Calibrating a learned policy")
    threadpoolctl = import_optional("threadpoolctl", "learn", "Calibrating a learned policy")
    with threadpoolctl.threadpool_limits(limits=1):
        return _fit_calibration(isotonic, raw, rows, weights, horizons, min_rows)


def _fit_calibration(
    isotonic: Any, raw: np.ndarray, rows: Rows, weights: np.ndarray, horizons: Sequence[int], min_rows: int
) -> Calibration:
    knots: list[tuple[np.ndarray, np.ndarray] | None] = []
    for i, h in enumerate(horizons):
        mask = rows.valid(h)
        if mask.sum() < min_rows:
            knots.append(None)
            continue
        model = isotonic.IsotonicRegression(out_of_bounds="clip", increasing=True)
        model.fit(raw[mask, i], rows.gain(h)[mask], sample_weight=weights[mask])
        knots.append((np.asarray(model.X_thresholds_, dtype=float), np.asarray(model.y_thresholds_, dtype=float)))
    return Calibration(knots)
