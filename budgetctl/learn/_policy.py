"""``LearnedStop``: a stop policy that predicts what more samples would buy, and stops when they are not worth it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError  # scikit-learn's own: one ``except`` catches both

from .._pool import Pool, Question, load_pool
from .._state import RunState
from ..policies._base import StopPolicy
from ._dataset import Rows, build_rows
from ._features import (
    FEATURE_NAMES,
    charged_samples,
    horizon_cap,
    in_flight_landing,
    per_sample_tokens,
    state_features,
)
from ._fit import FitSettings, fit_calibration, fit_model, out_of_fold
from ._models import MODEL_KINDS, ArrayModel, Calibration, combine_one
from ._select import VALUE_GRID, choose_value, row_break_even, sweep_values

__all__ = ["LearnedStop", "NotFittedError"]

#: A horizon needs at least this many training rows that could change the answer to get a model.
MIN_ROWS_PER_HORIZON = 200
#: Tokens a sample is charged when neither the run nor the training data report any.
FALLBACK_TOKENS = 100.0

TrainingData = Pool | Rows | str | os.PathLike[str] | Sequence[Pool | Question | str | os.PathLike[str]]


def _check_number(name: str, value: object, *, low: float, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"LearnedStop: {name} must be {'an int' if integer else 'a number'}, got {value!r}")
    assert isinstance(value, int | float)
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"LearnedStop: {name} must be >= {low:g}, got {value!r}")


class LearnedStop(StopPolicy, BaseEstimator):  # type: ignore[misc]
    """Stop when no horizon of more samples is predicted to buy more accuracy than its tokens are worth.

    After every sample it predicts, for horizons ``h`` of 1, 2, 4, … more samples, the expected
    change in the correctness of the current best answer (``predict_gain``) and the tokens those
    samples cost (``predict_tokens``), and continues while for some ``h`` that the budget and the
    deadline still allow::

        predicted gain(h) > value * predicted tokens(h) / 1000

    ``value`` is the knob: what 1,000 tokens are worth in accuracy (0.02 = two points of accuracy
    per 1,000 tokens; larger stops sooner). ``"auto"`` takes the value chosen at fit time: the
    cheapest one at which no training dataset loses more than ``max_loss`` accuracy against its
    whole pool's majority (decided on out-of-fold predictions).

    It follows scikit-learn's conventions: ``__init__`` only stores its arguments, ``fit(pools)``
    learns and returns the policy, learned attributes end in ``_``, and ``get_params``,
    ``set_params`` and ``clone`` work. It is a stop policy like any other
    (``LearnedStop().fit(pool) | MaxSamples(40)``) and a :class:`~budgetctl.GainModel` for the
    scheduler. Decisions run the trained model as plain numpy arrays: they are pure, deterministic
    and pickle to worker processes. It assumes majority vote (one vote per sample), like the
    training pools.

    Args:
        value: accuracy per 1,000 tokens below which more samples are not worth it, or ``"auto"``.
        model: ``"gbm"`` (scikit-learn histogram gradient boosting), ``"linear"`` (scikit-learn
            Poisson GLM and ridge) or ``"mlp"`` (torch, needs ``budgetctl[torch]`` to fit, not to
            decide). Each learns, per horizon, the probability that correctness changes (log link)
            and the direction of the change; the gain is their product.
        horizons: the horizons predicted (increasing; 1, 2, 4, … up to what pools allow).
        max_loss: with ``value="auto"``, the accuracy a training dataset may lose (0.001 = 0.1 point).
        orders: random draw orders per question that carry features.
        target_orders: random draw orders per question averaged into the targets.
        folds: question folds for the out-of-fold predictions behind calibration and ``"auto"``.
        calibrate: map raw predictions through isotonic regression fitted out of fold.
        default_tokens: tokens a sample is charged when the run reports none; ``None``: the
            training pools' mean tokens per sample.
        alpha: L2 penalty of the linear models (``model="linear"``).
        max_iter, max_depth, learning_rate: boosting rounds, tree depth and shrinkage (``"gbm"``).
        hidden, epochs: hidden units per layer and training epochs (``"mlp"``).
        max_rows: rows per horizon a gradient-boosting fit samples (per fit, for ``"mlp"`` x4).
        random_state: seeds the draw orders, the folds and the models (``None``: a fresh seed per fit,
            recorded as ``random_state_``).
        n_jobs: worker processes that replay the pools (``None``: one per CPU).
    """

    def __init__(
        self,
        value: float | Literal["auto"] = "auto",
        *,
        model: Literal["gbm", "linear", "mlp"] = "gbm",
        horizons: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
        max_loss: float = 0.001,
        orders: int = 8,
        target_orders: int = 64,
        folds: int = 2,
        calibrate: bool = True,
        default_tokens: float | None = None,
        alpha: float = 1.0,
        max_iter: int = 60,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        hidden: int = 32,
        epochs: int = 6,
        max_rows: int = 100_000,
        random_state: int | None = 0,
        n_jobs: int | None = 1,
    ) -> None:
        self.value = value
        self.model = model
        self.horizons = horizons
        self.max_loss = max_loss
        self.orders = orders
        self.target_orders = target_orders
        self.folds = folds
        self.calibrate = calibrate
        self.default_tokens = default_tokens
        self.alpha = alpha
        self.max_iter = max_iter
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.hidden = hidden
        self.epochs = epochs
        self.max_rows = max_rows
        self.random_state = random_state
        self.n_jobs = n_jobs

    # -- fitting -------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"LearnedStop: model must be one of {', '.join(MODEL_KINDS)}, got {self.model!r}")
        if self.value != "auto":
            _check_number("value", self.value, low=0.0)
        horizons = tuple(self.horizons)
        if (
            not horizons
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in horizons)
            or list(horizons) != sorted(set(horizons))
        ):
            raise ValueError(f"LearnedStop: horizons must be increasing ints >= 1, got {self.horizons!r}")
        _check_number("max_loss", self.max_loss, low=0.0)
        for name in ("orders", "target_orders", "max_iter", "max_depth", "hidden", "epochs", "max_rows"):
            _check_number(name, getattr(self, name), low=1, integer=True)
        _check_number("folds", self.folds, low=2, integer=True)
        if self.target_orders < self.orders:
            raise ValueError(
                f"LearnedStop: target_orders ({self.target_orders}) cannot be fewer than orders ({self.orders})"
            )
        if self.default_tokens is not None:
            _check_number("default_tokens", self.default_tokens, low=0.0)
            if self.default_tokens <= 0:
                raise ValueError(f"LearnedStop: default_tokens must be > 0, got {self.default_tokens!r}")
        _check_number("alpha", self.alpha, low=0.0)
        _check_number("learning_rate", self.learning_rate, low=0.0)
        if self.random_state is not None:
            _check_number("random_state", self.random_state, low=0, integer=True)

    def fit(self, X: TrainingData, y: None = None) -> LearnedStop:
        """Learn the gain model from sample pools; returns the policy.

        ``X``: a :class:`~budgetctl.Pool`, pool or trace file paths, a list of pools or of
        :class:`~budgetctl.Question` s, or rows from :func:`budgetctl.learn.build_rows`. ``y`` is
        ignored (the pools carry their gold answers).
        """
        self._validate()
        self.random_state_ = (
            int(np.random.default_rng().integers(2**31)) if self.random_state is None else int(self.random_state)
        )
        rows, training = self._rows(X)
        weights = rows.dataset_weights()
        horizons = tuple(h for h in self.horizons if int(rows.valid(h).sum()) >= MIN_ROWS_PER_HORIZON)
        if not horizons:
            raise ValueError(
                f"LearnedStop: too little data: no horizon has {MIN_ROWS_PER_HORIZON} training rows where more "
                "samples could change the answer (more questions, more samples per question, or more orders)"
            )
        settings = FitSettings(
            kind=self.model,
            horizons=horizons,
            alpha=float(self.alpha),
            max_iter=self.max_iter,
            max_depth=self.max_depth,
            learning_rate=float(self.learning_rate),
            hidden=self.hidden,
            epochs=self.epochs,
            max_rows=self.max_rows,
            random_state=self.random_state_,
        )
        known = rows.tokens > 0
        if self.default_tokens is not None:
            default_tokens = float(self.default_tokens)
        elif known.any():
            default_tokens = float(np.average(rows.tokens[known] / rows.t[known], weights=weights[known]))
        else:
            default_tokens = FALLBACK_TOKENS
        calibration = Calibration.identity(len(horizons))
        chosen: float | None = None
        if self.calibrate or self.value == "auto":
            oof = out_of_fold(rows, weights, settings, self.folds)
            if self.calibrate:
                calibration = fit_calibration(oof, rows, weights, horizons)
            if self.value == "auto":
                break_even = row_break_even(calibration.apply(oof), rows, horizons, default_tokens)
                chosen = choose_value(sweep_values(rows, break_even, VALUE_GRID), float(self.max_loss))
        model = fit_model(rows, weights, settings)
        self.model_: ArrayModel = model
        self.calibration_ = calibration
        self.horizons_ = horizons
        self.value_ = float(self.value) if chosen is None else chosen
        self.default_tokens_ = default_tokens
        self.feature_names_ = FEATURE_NAMES
        self.training_ = {**training, "rows": len(rows), "datasets": _dataset_counts(rows)}
        return self

    def _rows(self, X: TrainingData) -> tuple[Rows, dict[str, Any]]:
        if isinstance(X, Rows):
            missing = [h for h in self.horizons if h not in X.horizons]
            if missing:
                raise ValueError(f"LearnedStop: the rows have no targets for horizons {missing}")
            return X, {"files": [], "skipped": []}
        questions, files, skipped = _questions(X)
        rows = build_rows(
            questions,
            orders=self.orders,
            seed=self.random_state_,
            horizons=tuple(self.horizons),
            target_orders=self.target_orders,
            jobs=self.n_jobs,
        )
        from ._artifact import describe_files

        return rows, {"files": describe_files(files), "skipped": [list(s) for s in skipped]}

    def set_params(self, **params: Any) -> LearnedStop:
        """Set parameters; on a policy loaded from an artifact, return a changed copy and leave it as loaded.

        A fitted-in-memory policy follows scikit-learn (changes itself, returns itself). A loaded
        one never changes: ``load_policy(path).set_params(value=0.05)`` is a new policy.
        """
        if hasattr(self, "metadata_"):
            import copy

            other = copy.copy(self)  # the fitted arrays are shared, never written
            BaseEstimator.set_params(other, **params)
            return other
        BaseEstimator.set_params(self, **params)
        return self

    # -- decisions ----------------------------------------------------------------------------------
    def _fitted(self) -> ArrayModel:
        try:
            return self.model_
        except AttributeError:
            raise NotFittedError(
                "this LearnedStop is not fitted yet: call fit(pools), or load a trained one with "
                "budgetctl.learn.load_policy(path)"
            ) from None

    def resolved_value(self) -> float:
        """The value decisions use: ``value``, or the one chosen at fit time when it is ``"auto"``."""
        if self.value == "auto":
            self._fitted()
            return self.value_
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"LearnedStop: value must be 'auto' or a number >= 0, got {value!r}")
        return float(value)

    def _default(self) -> float:
        return float(self.default_tokens) if self.default_tokens is not None else self.default_tokens_

    def break_even(self, state: RunState) -> float:
        """The value (accuracy per 1,000 tokens) at which continuing and stopping are worth the same.

        The policy stops when its value is at least this: the best predicted gain per 1,000 tokens
        over the horizons that could change the answer and that the budget and deadline still
        allow (0 when there is none).

        Under a deadline, the calls in flight that will come back before it are charged only
        :data:`~budgetctl.learn._features.IN_FLIGHT_SHARE` of their tokens: they are launched
        already, and waiting for them costs no time the run would otherwise have. So the policy
        does not stop and cancel samples about to land unless it predicts they cannot matter.
        """
        model = self._fitted()
        tokens = per_sample_tokens(state, self._default())
        cap = horizon_cap(state, tokens)
        gap = state.leader_votes - state.runner_up_votes
        first = max(1, math.ceil(gap - 1e-9))
        if first > cap:
            return 0.0
        landing = in_flight_landing(state) if state.time_left is not None else 0.0
        raw = model.predict_one(state_features(state)).tolist()
        calibration = self.calibration_
        horizons = self.horizons_
        half = len(horizons)
        best = 0.0
        previous_h, previous_gain = 0, 0.0
        for i, h in enumerate(horizons):
            if h > cap:
                # The deadline or budget falls between two trained horizons: interpolate at the cap.
                if cap >= first and cap > previous_h:
                    gain = calibration.one(i, combine_one(raw, i, half))
                    at_cap = previous_gain + (gain - previous_gain) * (cap - previous_h) / (h - previous_h)
                    best = max(best, at_cap / (charged_samples(cap, landing) * tokens))
                break
            if h >= first:
                gain = calibration.one(i, combine_one(raw, i, half))
                best = max(best, gain / (charged_samples(h, landing) * tokens))
            else:
                gain = 0.0
            previous_h, previous_gain = h, gain
        return best * 1000.0

    def __call__(self, state: RunState, /) -> bool:
        """Stop when the value is at least the break-even value of ``state``."""
        return self.resolved_value() >= self.break_even(state)

    # -- GainModel ----------------------------------------------------------------------------------
    def predict_gain(self, state: RunState, horizon: int = 1) -> float:
        """Expected change in P(the anytime answer is correct) if ``horizon`` more samples are drawn.

        Exactly 0 when ``horizon`` samples cannot overturn the leader; between trained horizons it
        is interpolated linearly, beyond the last it stays at the last.
        """
        if horizon <= 0:
            return 0.0
        model = self._fitted()
        gap = state.leader_votes - state.runner_up_votes
        first = max(1, math.ceil(gap - 1e-9))
        if horizon < first:
            return 0.0
        raw = model.predict_one(state_features(state)).tolist()
        calibration = self.calibration_
        half = len(self.horizons_)
        previous_h, previous_gain = 0, 0.0
        for i, h in enumerate(self.horizons_):
            gain = calibration.one(i, combine_one(raw, i, half)) if h >= first else 0.0
            if h >= horizon:
                return previous_gain + (gain - previous_gain) * (horizon - previous_h) / (h - previous_h)
            previous_h, previous_gain = h, gain
        return previous_gain

    def predict_tokens(self, state: RunState, horizon: int = 1) -> float:
        """Expected tokens of ``horizon`` more samples: the run's mean per sample so far, times ``horizon``."""
        if horizon <= 0:
            return 0.0
        return horizon * per_sample_tokens(state, self._default())

    # -- artifacts ----------------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        command: str | None = None,
        metrics: dict[str, Any] | None = None,
        force: bool = False,
    ) -> str:
        """Write the fitted policy to the directory ``path`` atomically (JSON + ``.npz``, no pickle); returns the path.

        An existing ``path`` is refused unless ``force``; then it is replaced so that a reader
        always finds either the old policy or the new one.
        """
        from ._artifact import save_policy

        return save_policy(self, path, command=command, metrics=metrics, force=force)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LearnedStop:
        """Read a policy written by :meth:`save` (or ``budgetctl train``)."""
        from ._artifact import load_policy

        return load_policy(path)


def _questions(X: object) -> tuple[list[Question], list[str], list[tuple[str, int, str]]]:
    if isinstance(X, Pool):
        return list(X.questions), list(X.files), list(X.skipped)
    if isinstance(X, str | os.PathLike):
        pool = load_pool([X])
        return pool.questions, pool.files, pool.skipped
    if isinstance(X, Sequence) and X:
        if all(isinstance(x, Pool) for x in X):
            questions: list[Question] = []
            files: list[str] = []
            skipped: list[tuple[str, int, str]] = []
            for p in X:
                assert isinstance(p, Pool)
                questions.extend(p.questions)
                files.extend(p.files)
                skipped.extend(p.skipped)
            return questions, files, skipped
        if all(isinstance(x, Question) for x in X):
            return [x for x in X if isinstance(x, Question)], [], []
        if all(isinstance(x, str | os.PathLike) for x in X):
            pool = load_pool([x for x in X if isinstance(x, str | os.PathLike)])
            return pool.questions, pool.files, pool.skipped
    raise TypeError(
        "LearnedStop.fit: X must be a Pool, pool file path(s), a list of Pools or Questions, or Rows, "
        f"got {type(X).__name__}"
    )


def _dataset_counts(rows: Rows) -> dict[str, int]:
    starts = rows.starts()
    pairs = np.unique(np.stack([rows.question[starts], rows.dataset[starts]], axis=1), axis=0)
    counts = np.bincount(pairs[:, 1], minlength=len(rows.datasets))
    return {name: int(counts[i]) for i, name in enumerate(rows.datasets) if counts[i]}
