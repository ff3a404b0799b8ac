"""Gain models as plain numpy arrays: what a trained policy evaluates on every decision.

Whatever trained them (scikit-learn's GLM, ridge or gradient boosting, a torch MLP), the fitted
models are converted to arrays here, so that a decision needs only numpy, an artifact is nothing
but JSON and ``.npz`` arrays (no pickle: loading never runs code), and one decision costs a few
microseconds. Each model maps a feature vector to ``2 H`` raw outputs for ``H`` trained horizons
(:func:`combine` turns them into gains); a :class:`Calibration` then maps gains to calibrated ones.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from .._core import describe_error

__all__ = [
    "ArrayModel",
    "LinearModel",
    "TreeModel",
    "MLPModel",
    "Calibration",
    "model_from_arrays",
    "MODEL_KINDS",
    "combine",
    "combine_one",
]


def combine(raw: np.ndarray) -> np.ndarray:
    """Gains (rows, H) from raw outputs (rows, 2 H): ``P(change) * direction``.

    The first ``H`` outputs are log-probabilities that correctness changes within each horizon
    (capped at probability 1), the last ``H`` the direction of the change (clipped to [-1, 1]).
    """
    half = raw.shape[1] // 2
    return np.exp(np.minimum(raw[:, :half], 0.0)) * np.clip(raw[:, half:], -1.0, 1.0)  # type: ignore[no-any-return]


def combine_one(raw: Sequence[float], i: int, half: int) -> float:
    """The gain of horizon ``i`` from one row of raw outputs (what :func:`combine` gives, for one float)."""
    rate = raw[i]
    direction = raw[half + i]
    direction = -1.0 if direction < -1.0 else (1.0 if direction > 1.0 else direction)
    return (math.exp(rate) if rate < 0.0 else 1.0) * direction


class ArrayModel(Protocol):
    """A fitted gain model held as arrays."""

    kind: ClassVar[str]

    @property
    def n_outputs(self) -> int:
        """Horizons predicted."""
        ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw gains, shape (rows, horizons), for a feature matrix of shape (rows, features)."""
        ...

    def predict_one(self, x: Sequence[float]) -> np.ndarray:
        """Raw gains of one feature vector, shape (horizons,); the per-decision hot path."""
        ...

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that rebuild the model with :func:`model_from_arrays`."""
        ...


def _floats(arrays: Mapping[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in arrays:
        raise ValueError(f"model arrays lack {name!r}")
    value = np.asarray(arrays[name], dtype=float)
    if value.ndim != ndim:
        raise ValueError(f"model array {name!r} must have {ndim} dimension(s), got shape {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"model array {name!r} holds NaN or infinite values")
    return value


class LinearModel:
    """One linear function of the (standardised) features per horizon: ``coef @ x + intercept``."""

    kind: ClassVar[str] = "linear"

    def __init__(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        if coef.ndim != 2 or intercept.shape != (coef.shape[0],):
            raise ValueError(f"linear model: coef {coef.shape} and intercept {intercept.shape} do not match")
        self.coef = np.ascontiguousarray(coef, dtype=float)
        self.intercept = np.ascontiguousarray(intercept, dtype=float)

    @classmethod
    def from_standardised(
        cls, coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray
    ) -> LinearModel:
        """Fold a standardisation ``(x - mean) / scale`` into the weights, so decisions skip it."""
        folded = coef / scale[None, :]
        return cls(folded, intercept - folded @ mean)

    @property
    def n_outputs(self) -> int:
        return int(self.coef.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.asarray(X, dtype=float) @ self.coef.T + self.intercept
        return out

    def predict_one(self, x: Sequence[float]) -> np.ndarray:
        return self.coef @ np.array(x) + self.intercept  # type: ignore[no-any-return]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LinearModel:
        return cls(_floats(arrays, "coef", 2), _floats(arrays, "intercept", 1))


class TreeModel:
    """Boosted regression trees, every tree padded to a complete binary tree of one depth.

    Node ``i`` of a tree goes right when ``x[feature[i]] > threshold[i]``, to node ``2 i + 2``
    (left: ``2 i + 1``); after ``depth`` levels the node is a leaf. Leaves shallower than ``depth``
    are padded with always-left nodes (threshold ``+inf``). The padding makes a decision a few
    vectorised steps over all trees of all horizons at once, instead of a Python loop per tree.
    Trees are grouped by horizon: ``trees_per_output`` consecutive trees each.
    """

    kind: ClassVar[str] = "gbm"

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        leaf: np.ndarray,
        baseline: np.ndarray,
        trees_per_output: int,
    ) -> None:
        n_trees = feature.shape[0]
        depth = round(float(np.log2(leaf.shape[1]))) if leaf.ndim == 2 and leaf.shape[1] > 0 else -1
        if (
            depth < 1
            or leaf.shape[1] != 2**depth
            or feature.shape != (n_trees, 2**depth - 1)
            or threshold.shape != feature.shape
            or leaf.shape[0] != n_trees
            or trees_per_output < 1
            or n_trees != trees_per_output * baseline.shape[0]
        ):
            raise ValueError(
                f"tree model: inconsistent shapes feature {feature.shape}, threshold {threshold.shape}, "
                f"leaf {leaf.shape}, baseline {baseline.shape}, trees_per_output {trees_per_output}"
            )
        self.feature = np.ascontiguousarray(feature, dtype=np.int64)
        self.threshold = np.ascontiguousarray(threshold, dtype=float)
        self.leaf = np.ascontiguousarray(leaf, dtype=float)
        self.baseline = np.ascontiguousarray(baseline, dtype=float)
        self.trees_per_output = trees_per_output
        self.depth = depth
        internal = 2**depth - 1
        # The per-decision path evaluates every split of every tree at once, packs each tree's split
        # outcomes into an integer (bit i = node i goes right) and looks its leaf up in a table: a
        # handful of numpy calls whatever the number of trees. Tables are 2 ** (2 ** depth - 1)
        # entries, so depths above 4 fall back to walking the trees level by level.
        self._feature = self.feature.ravel()
        self._threshold = self.threshold.ravel()
        self._leaf = self.leaf.ravel()
        self._leaf_base = np.arange(n_trees, dtype=np.int64) * 2**depth
        self._base = np.arange(n_trees, dtype=np.int64) * internal
        self._table: np.ndarray | None = None
        if depth <= 4:
            patterns = np.arange(2**internal, dtype=np.int64)
            node = np.zeros_like(patterns)
            for _ in range(depth):
                node = 2 * node + 1 + ((patterns >> node) & 1)
            self._table = (node - internal).astype(np.int64)

    @property
    def n_outputs(self) -> int:
        return int(self.baseline.shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=float)
        out = np.empty((X.shape[0], self.n_outputs))
        for start in range(0, X.shape[0], 4096):
            block = X[start : start + 4096]
            rows = np.arange(block.shape[0])[:, None]
            node = np.zeros((block.shape[0], self.feature.shape[0]), dtype=np.int64)
            trees = np.arange(self.feature.shape[0])[None, :]
            for _ in range(self.depth):
                f = self.feature[trees, node]
                node = 2 * node + 1 + (block[rows, f] > self.threshold[trees, node])
            values = self.leaf[trees, node - (2**self.depth - 1)]
            out[start : start + 4096] = (
                values.reshape(block.shape[0], self.n_outputs, self.trees_per_output).sum(axis=2) + self.baseline
            )
        return out

    def predict_one(self, x: Sequence[float]) -> np.ndarray:
        xs = np.array(x)
        n_trees = self.feature.shape[0]
        table = self._table
        if table is not None:
            right = (xs[self._feature] > self._threshold).reshape(n_trees, -1)
            packed = np.packbits(right, axis=1, bitorder="little")
            if packed.shape[1] == 1:
                pattern = packed[:, 0]
            else:
                pattern = packed.view("<u2")[:, 0]
            leaf = table[pattern]
        else:
            base = self._base
            leaf = np.zeros(n_trees, dtype=np.int64)
            internal = 2**self.depth - 1
            for _ in range(self.depth):
                index = base + leaf
                leaf = 2 * leaf + 1 + (xs[self._feature[index]] > self._threshold[index])
            leaf = leaf - internal
        values = self._leaf[self._leaf_base + leaf]
        return values.reshape(self.n_outputs, self.trees_per_output).sum(axis=1) + self.baseline  # type: ignore[no-any-return]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "feature": self.feature,
            "threshold": self.threshold,
            "leaf": self.leaf,
            "baseline": self.baseline,
            "trees_per_output": np.array(self.trees_per_output),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TreeModel:
        if "feature" not in arrays or "trees_per_output" not in arrays:
            raise ValueError("model arrays lack 'feature' or 'trees_per_output'")
        threshold = np.asarray(arrays["threshold"], dtype=float)
        if np.isnan(threshold).any():
            raise ValueError("model array 'threshold' holds NaN")
        return cls(
            np.asarray(arrays["feature"], dtype=np.int64),
            threshold,
            _floats(arrays, "leaf", 2),
            _floats(arrays, "baseline", 1),
            int(np.asarray(arrays["trees_per_output"])),
        )

    @classmethod
    def from_sklearn(cls, estimators: Sequence[Any], check: np.ndarray | None = None) -> TreeModel:
        """Convert fitted ``HistGradientBoostingRegressor`` s (one per horizon, same number of trees).

        scikit-learn documents no public view of a histogram-boosting model's trees (unlike
        ``DecisionTreeRegressor.tree_``), so this reads two private attributes, ``_predictors``
        and ``_baseline_prediction``. Both are guarded: a scikit-learn without them gets a
        one-line error naming them, and with rows ``check`` the converted model must reproduce
        every estimator's public ``predict`` on them (raw predictions: identity link for squared
        error, log link for Poisson), so a change of their meaning cannot pass silently.
        """
        trees: list[Any] = []
        baselines = []
        counts = set()
        for est in estimators:
            try:
                predictors = [p[0] for p in est._predictors]  # one tree per iteration for a regressor
                trees.extend(p.nodes for p in predictors)
                baselines.append(float(np.ravel(est._baseline_prediction)[0]))
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as error:
                raise RuntimeError(
                    f"cannot read the trees of {type(est).__name__} ({describe_error(error)}): this scikit-learn "
                    "changed the private _predictors/_baseline_prediction the gbm conversion reads; "
                    "use model='linear' or the scikit-learn version budgetctl was tested with"
                ) from error
            counts.add(len(predictors))
        if len(counts) != 1:
            raise ValueError(f"every horizon needs the same number of trees, got {sorted(counts)}")
        depth = max(1, max(int(nodes["depth"].max()) for nodes in trees))
        internal = 2**depth - 1
        feature = np.zeros((len(trees), internal), dtype=np.int64)
        threshold = np.full((len(trees), internal), np.inf)
        leaf = np.zeros((len(trees), 2**depth))
        for t, nodes in enumerate(trees):
            stack = [(0, 0, 0)]  # (node in sklearn's array, position in the heap, depth)
            while stack:
                index, position, level = stack.pop()
                node = nodes[index]
                if level == depth:
                    leaf[t, position - internal] = node["value"]
                elif node["is_leaf"]:
                    stack.append((index, 2 * position + 1, level + 1))  # always left (threshold +inf)
                    stack.append((index, 2 * position + 2, level + 1))
                else:
                    if node["is_categorical"]:
                        raise ValueError("categorical splits are not supported")
                    feature[t, position] = node["feature_idx"]
                    threshold[t, position] = node["num_threshold"]
                    stack.append((int(node["left"]), 2 * position + 1, level + 1))
                    stack.append((int(node["right"]), 2 * position + 2, level + 1))
        model = cls(feature, threshold, leaf, np.array(baselines), counts.pop())
        if check is not None and len(check):
            _check_conversion(model, estimators, np.asarray(check, dtype=float))
        return model


def _check_conversion(model: TreeModel, estimators: Sequence[Any], X: np.ndarray) -> None:
    raw = model.predict(X)
    for i, est in enumerate(estimators):
        expected = np.asarray(est.predict(X), dtype=float)
        got = raw[:, i]
        if getattr(est, "loss", "squared_error") == "poisson":
            got = np.exp(got)
        if not np.allclose(got, expected, rtol=1e-6, atol=1e-9):
            worst = float(np.max(np.abs(got - expected)))
            raise RuntimeError(
                f"the gbm conversion does not reproduce {type(est).__name__}.predict (off by up to {worst:.3g}): "
                "this scikit-learn changed the private _predictors/_baseline_prediction it reads; "
                "use model='linear' or the scikit-learn version budgetctl was tested with"
            )


class MLPModel:
    """A ReLU multilayer perceptron on standardised features, one output per horizon."""

    kind: ClassVar[str] = "mlp"

    def __init__(
        self, mean: np.ndarray, scale: np.ndarray, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]
    ) -> None:
        if len(weights) != len(biases) or not weights:
            raise ValueError("mlp: need as many bias vectors as weight matrices, and at least one layer")
        width = mean.shape[0]
        if scale.shape != mean.shape or np.any(scale <= 0):
            raise ValueError("mlp: scale must match mean and be positive")
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError(f"mlp: layer {i} has weight {w.shape} and bias {b.shape}, expected inputs of {width}")
            width = w.shape[0]
        self.mean = np.ascontiguousarray(mean, dtype=float)
        self.scale = np.ascontiguousarray(scale, dtype=float)
        self.weights = [np.ascontiguousarray(w, dtype=float) for w in weights]
        self.biases = [np.ascontiguousarray(b, dtype=float) for b in biases]
        # The standardisation folded into the first layer: two numpy calls fewer per decision.
        first = self.weights[0] / self.scale[None, :]
        self._weights = [np.ascontiguousarray(first), *self.weights[1:]]
        self._biases = [self.biases[0] - first @ self.mean, *self.biases[1:]]

    @property
    def n_outputs(self) -> int:
        return int(self.biases[-1].shape[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=float)
        last = len(self._weights) - 1
        for i, (w, b) in enumerate(zip(self._weights, self._biases, strict=True)):
            z = z @ w.T + b
            if i < last:
                np.maximum(z, 0.0, out=z)
        out: np.ndarray = z
        return out

    def predict_one(self, x: Sequence[float]) -> np.ndarray:
        weights, biases = self._weights, self._biases
        z = weights[0] @ np.array(x) + biases[0]
        for i in range(1, len(weights)):
            np.maximum(z, 0.0, out=z)
            z = weights[i] @ z + biases[i]
        return z  # type: ignore[no-any-return]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "scale": self.scale, "layers": np.array(len(self.weights))}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out[f"w{i}"] = w
            out[f"b{i}"] = b
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> MLPModel:
        if "layers" not in arrays:
            raise ValueError("model arrays lack 'layers'")
        layers = int(np.asarray(arrays["layers"]))
        return cls(
            _floats(arrays, "mean", 1),
            _floats(arrays, "scale", 1),
            [_floats(arrays, f"w{i}", 2) for i in range(layers)],
            [_floats(arrays, f"b{i}", 1) for i in range(layers)],
        )


#: Model kinds by name.
MODEL_KINDS: dict[str, type[LinearModel] | type[TreeModel] | type[MLPModel]] = {
    "linear": LinearModel,
    "gbm": TreeModel,
    "mlp": MLPModel,
}


def model_from_arrays(kind: str, arrays: Mapping[str, np.ndarray]) -> LinearModel | TreeModel | MLPModel:
    """Rebuild a model of ``kind`` from its arrays."""
    cls = MODEL_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")
    return cls.from_arrays(arrays)


class Calibration:
    """A monotone piecewise-linear map per horizon, from raw to calibrated gains (isotonic regression).

    Fitted on out-of-fold predictions, so that a calibrated gain of 0.03 means that, among states
    predicted so, the next samples did change correctness by 0.03 on average. ``None`` (stored as
    empty arrays) leaves a horizon's raw gains as they are.
    """

    def __init__(self, knots: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> None:
        checked: list[tuple[np.ndarray, np.ndarray] | None] = []
        for i, pair in enumerate(knots):
            if pair is None or np.asarray(pair[0]).size == 0:
                checked.append(None)
                continue
            x = np.ascontiguousarray(pair[0], dtype=float)
            y = np.ascontiguousarray(pair[1], dtype=float)
            if x.ndim != 1 or x.shape != y.shape:
                raise ValueError(f"calibration {i}: knots must be two 1-d arrays of one length")
            if np.any(np.diff(x) < 0) or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise ValueError(f"calibration {i}: knots must be finite with non-decreasing x")
            checked.append((x, y))
        self.knots = checked
        # Plain lists for the hot path: bisect on floats beats np.interp on one scalar.
        self._x: list[list[float] | None] = [None if k is None else k[0].tolist() for k in checked]
        self._y: list[list[float] | None] = [None if k is None else k[1].tolist() for k in checked]

    @classmethod
    def identity(cls, n_outputs: int) -> Calibration:
        """No calibration."""
        return cls([None] * n_outputs)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrate a (rows, horizons) array."""
        out = np.array(raw, dtype=float)
        for i, pair in enumerate(self.knots):
            if pair is not None:
                out[:, i] = np.interp(out[:, i], pair[0], pair[1])
        return out

    def one(self, i: int, value: float) -> float:
        """Calibrate one raw gain of horizon ``i`` (what :meth:`apply` gives, for one float)."""
        xs = self._x[i]
        if xs is None:
            return value
        ys = self._y[i]
        assert ys is not None
        if value <= xs[0]:
            return float(ys[0])
        if value >= xs[-1]:
            return float(ys[-1])
        k = bisect_right(xs, value)
        x0, x1 = xs[k - 1], xs[k]
        return float(ys[k - 1] + (ys[k] - ys[k - 1]) * (value - x0) / (x1 - x0))

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"count": np.array(len(self.knots))}
        for i, pair in enumerate(self.knots):
            out[f"x{i}"] = np.zeros(0) if pair is None else pair[0]
            out[f"y{i}"] = np.zeros(0) if pair is None else pair[1]
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Calibration:
        if "count" not in arrays:
            raise ValueError("calibration arrays lack 'count'")
        n = int(np.asarray(arrays["count"]))
        return cls([(_floats(arrays, f"x{i}", 1), _floats(arrays, f"y{i}", 1)) for i in range(n)])
