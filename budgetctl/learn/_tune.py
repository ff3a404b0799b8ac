"""Per-task training: rule baselines and a learned risk model on the same folds, an operating point from ``max_loss``.

What ``budgetctl train`` does for one task (one dataset, one pool size ``N``):

1. Replays every training question in ``orders`` random orders (:mod:`._votes`).
2. Candidate families, each with a grid of operating points:

   - ``ac``: Adaptive-Consistency (Beta criterion), thresholds 0.5 to 0.9999;
   - ``esc``: ESC, windows 2 to ``N // 2``;
   - ``table`` (scored as a baseline, never shipped): the per-state lookup table of how often the
     current leader is not the full pool's majority, by (samples so far, leader votes, runner-up
     votes), states seen fewer than 5 times continue (the baseline of
     ``shared/docs/learned-policy-notes.md``);
   - ``model``: the same probability, ``P(leader != full-pool majority | t, leader votes, runner-up
     votes)``, from gradient-boosted trees monotone in the votes (more leader votes never raise it,
     more runner-up votes never lower it), so what it learns on common states carries over to rare
     ones. It is compiled into a table over every state, so a decision is one lookup.

   - ``bayes``: :class:`~budgetctl.policies.BayesStop`, the posterior probability that the
     runner-up overtakes the leader by the full budget, with its prior over answer shares learned
     from the training questions (empirical Bayes).

   ``table``, ``model`` and ``bayes`` stop at the first state whose predicted probability is at most ``eps``,
   and at once when the samples left cannot overturn the leader.
3. Cross-validation over questions (``folds``): learned families are fitted on the other folds and
   scored on the held-out fold; for every family and fold the operating point is chosen on the
   other folds and replayed on the held-out one. The family with the lowest held-out cost whose
   held-out loss stays within ``max_loss`` wins; the learned model is kept only when it beats every
   rule there, otherwise the best tuned rule is shipped (and the report says so).
4. The winner's operating point is chosen on all training questions (out of fold for learned
   families) by fixed-sequence testing, the Learn-then-Test procedure (Angelopoulos, Bates, Candès,
   Jordan, Lei, 2021, arXiv 2110.01052): operating points are tested from the most cautious to the
   most aggressive, each accepted while the upper confidence bound (at ``confidence``, one-sided,
   normal approximation over questions) of its expected accuracy loss against the full budget stays
   at most ``max_loss``; the cheapest accepted point is chosen. A result that never stops early, or
   always stops after one sample, is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from ..policies._posterior import prob_leader_beta
from ._votes import Trajectories

__all__ = [
    "TaskFit",
    "fit_task",
    "FAMILIES",
    "AC_GRID",
    "EPS_GRID",
    "risk_table_from_model",
    "lookup_table",
    "DegenerateError",
]

#: Adaptive-Consistency thresholds tried.
AC_GRID: tuple[float, ...] = tuple(float(v) for v in np.round(1.0 - np.geomspace(0.5, 1e-4, 48), 6))
#: Probabilities of a change below which the learned families stop, tried.
EPS_GRID: tuple[float, ...] = tuple(float(v) for v in np.round(np.geomspace(3e-1, 1e-4, 48), 7))
FAMILIES = ("ac", "esc", "table", "model", "bayes")
#: Families ``budgetctl train`` may ship. The lookup table is scored as a baseline only: it cannot
#: share what it learns between neighbouring states, so on pools of many samples (where most states
#: are rare) its wins on held-out folds are noise (shared/docs/learned-policy-notes.md).
SHIPPABLE = ("ac", "esc", "model", "bayes")
#: ``budgetctl train``'s defaults (the figures in docs/learned.md use them).
DEFAULT_ORDERS = 20
DEFAULT_FOLDS = 4
DEFAULT_CONFIDENCE = 0.9
DEFAULT_MAX_LOSS = 0.001
#: A learned family must cost this much less than the best tuned rule on held-out folds to be shipped.
MARGIN = 0.02
#: States seen fewer times than this in training continue under the lookup table.
TABLE_MIN_COUNT = 5


class DegenerateError(ValueError):
    """Training ended at an operating point that never stops early or always stops after one sample."""


# -- replaying a risk table or ESC on every order at once ---------------------------------------------------
def _stops_from_risk(traj: Trajectories, risk: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(P, Q, O) index of the stop for each eps: the first step whose risk is at most eps (the last at worst)."""
    n = traj.n
    t = np.broadcast_to(np.arange(1, n + 1), traj.leader.shape)
    r = risk[t, traj.leader, traj.runner_up].astype(float)
    r[..., -1] = -np.inf
    running = np.minimum.accumulate(r, axis=2)
    out = np.empty((eps.size, *traj.leader.shape[:2]), dtype=np.int64)
    for i, e in enumerate(eps):
        out[i] = np.argmax(running <= e, axis=2)
    return out


def _stops_esc(traj: Trajectories, windows: np.ndarray) -> np.ndarray:
    n = traj.n
    step = np.arange(1, n + 1)
    out = np.empty((windows.size, *traj.leader.shape[:2]), dtype=np.int64)
    for i, w in enumerate(windows):
        hit = (step % w == 0) & (traj.run >= w)
        hit[..., -1] = True
        out[i] = np.argmax(hit, axis=2)
    return out


@dataclass(frozen=True)
class Outcomes:
    """Per-question results of each operating point, mean over orders: (P, Q) accuracy and cost, samples."""

    accuracy: np.ndarray
    cost: np.ndarray
    samples: np.ndarray
    #: (Q,) accuracy and cost of the full budget.
    full: np.ndarray
    full_cost: np.ndarray


def outcomes(traj: Trajectories, stops: np.ndarray) -> Outcomes:
    """Accuracy, cost and samples at the stops ``stops`` (P, Q, O), mean over orders."""
    cost = traj.cost()
    q = np.arange(stops.shape[1])[None, :, None]
    o = np.arange(stops.shape[2])[None, None, :]
    return Outcomes(
        accuracy=traj.correct[q, o, stops].mean(axis=2),
        cost=cost[q, o, stops].mean(axis=2),
        samples=(stops + 1).mean(axis=2),
        full=traj.correct[..., -1].mean(axis=1),
        full_cost=cost[..., -1].mean(axis=1),
    )


def _concat(parts: list[tuple[np.ndarray, Outcomes]], size: int) -> Outcomes:
    def gather(name: str, two_d: bool) -> np.ndarray:
        first = getattr(parts[0][1], name)
        shape = (first.shape[0], size) if two_d else (size,)
        out = np.empty(shape)
        for index, part in parts:
            if two_d:
                out[:, index] = getattr(part, name)
            else:
                out[index] = getattr(part, name)
        return out

    return Outcomes(
        accuracy=gather("accuracy", True),
        cost=gather("cost", True),
        samples=gather("samples", True),
        full=gather("full", False),
        full_cost=gather("full_cost", False),
    )


# -- the learned risk tables --------------------------------------------------------------------------------
def _state_counts(traj: Trajectories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique (t, leader, runner-up) states before the last step, and how often the leader was / was not final."""
    n = traj.n
    t = np.broadcast_to(np.arange(1, n + 1), traj.leader.shape)[..., :-1].ravel()
    a = traj.leader[..., :-1].ravel().astype(np.int64)
    b = traj.runner_up[..., :-1].ravel().astype(np.int64)
    changed = ~traj.final[..., :-1].ravel()
    key = (t * (n + 1) + a) * (n + 1) + b
    unique, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, minlength=unique.size).astype(float)
    changes = np.bincount(inverse, weights=changed.astype(float), minlength=unique.size)
    states = np.stack([unique // ((n + 1) ** 2), (unique // (n + 1)) % (n + 1), unique % (n + 1)], axis=1)
    return states, total, changes


def _finish(risk: np.ndarray, n: int) -> np.ndarray:
    """Stop at the full budget and wherever the samples left cannot overturn the leader."""
    t = np.arange(n + 1)[:, None, None]
    a = np.arange(n + 1)[None, :, None]
    b = np.arange(n + 1)[None, None, :]
    risk = np.where((a - b > n - t) & (a > 0), 0.0, risk)
    risk[n] = 0.0
    risk[0] = 1.0
    return risk.astype(np.float32)


def lookup_table(traj: Trajectories) -> np.ndarray:
    """The per-state share of training trajectories whose leader is not the full pool's majority (smoothed)."""
    n = traj.n
    states, total, changes = _state_counts(traj)
    risk = np.ones((n + 1, n + 1, n + 1))
    share = np.where(total >= TABLE_MIN_COUNT, (changes + 0.5) / (total + 1.0), 1.0)
    risk[states[:, 0], states[:, 1], states[:, 2]] = share
    return _finish(risk, n)


def all_states(n: int) -> np.ndarray:
    """Every reachable (t, leader, runner-up) with 1 <= t < n."""
    out = [(t, a, b) for t in range(1, n) for a in range(0, t + 1) for b in range(0, min(a, t - a) + 1)]
    return np.asarray(out, dtype=np.int64)


def _features(states: np.ndarray, n: int) -> np.ndarray:
    t, a, b = states[:, 0].astype(float), states[:, 1].astype(float), states[:, 2].astype(float)
    return np.stack([t, a, b, a - b, (a - b) - (n - t)], axis=1)


#: Monotone constraints of the features above: -1 = the risk never rises with it.
_MONOTONE = [0, -1, 1, -1, -1]


def risk_table_from_model(traj: Trajectories, *, seed: int = 0, max_iter: int = 150) -> np.ndarray:
    """Fit the monotone boosted model of P(leader != full-pool majority | state) and tabulate it over every state."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    n = traj.n
    states, total, changes = _state_counts(traj)
    keep = states[:, 1] - states[:, 2] <= n - states[:, 0]  # states that can still change
    states, total, changes = states[keep], total[keep], changes[keep]
    X = _features(states, n)
    # Each state twice, weighted by how often its leader did and did not change: the same fit as
    # one row per trajectory step, at a fraction of the cost.
    features = np.concatenate([X, X])
    labels = np.concatenate([np.ones(len(X)), np.zeros(len(X))])
    weights = np.concatenate([changes, total - changes])
    present = weights > 0
    risk = np.ones((n + 1, n + 1, n + 1))
    if len(np.unique(labels[present])) < 2:
        value = 0.0 if not changes.any() else 1.0
        risk[1:n] = value
        return _finish(risk, n)
    model = HistGradientBoostingClassifier(
        max_iter=max_iter,
        learning_rate=0.1,
        max_leaf_nodes=15,
        min_samples_leaf=10,
        l2_regularization=1.0,
        monotonic_cst=_MONOTONE,
        early_stopping=False,
        random_state=seed,
    )
    from .._optional import import_optional

    threadpoolctl = import_optional("threadpoolctl", "learn", "Fitting a learned policy")
    grid = all_states(n)
    # One thread: OpenMP's spinning barriers make a fit many times slower on a busy machine.
    with threadpoolctl.threadpool_limits(limits=1):
        model.fit(features[present], labels[present], sample_weight=weights[present])
        p = model.predict_proba(_features(grid, n))[:, 1]
    risk[grid[:, 0], grid[:, 1], grid[:, 2]] = p
    return _finish(risk, n)


def bayes_risk(traj: Trajectories) -> np.ndarray:
    """The table of :class:`~budgetctl.policies.BayesStop` with its prior learned from ``traj``'s full pools."""
    from ..policies._bayes import change_probability, learn_prior

    n = traj.n
    top = traj.leader[:, 0, -1].astype(int)
    second = traj.runner_up[:, 0, -1].astype(int)
    prior = learn_prior(list(zip(top.tolist(), second.tolist(), strict=True)))
    risk = np.ones((n + 1, n + 1, n + 1))
    for t, a, b in all_states(n).tolist():
        if a > 0:
            risk[t, a, b] = change_probability(a, b, n - t, prior)
    return _finish(risk, n)


def ac_risk(n: int) -> np.ndarray:
    """1 - Adaptive-Consistency's P(leader is the majority) of every state (no budget rule, as the rule itself)."""
    risk = np.ones((n + 1, n + 1, n + 1))
    for a in range(1, n + 1):
        for b in range(0, a + 1):
            risk[:, a, b] = 1.0 - prob_leader_beta(a, b)
    risk[n] = 0.0
    risk[0] = 1.0
    return risk


# -- choosing an operating point ------------------------------------------------------------------------------
def choose_point(result: Outcomes, max_loss: float, confidence: float) -> tuple[int | None, float]:
    """Learn-then-Test by fixed-sequence testing; points must be ordered from the most cautious to the boldest.

    Returns the index of the cheapest accepted point (``None`` when even the first fails) and its
    upper confidence bound on the expected loss.
    """
    loss = result.full[None, :] - result.accuracy  # (P, Q)
    q = loss.shape[1]
    z = NormalDist().inv_cdf(confidence) if confidence > 0.5 else 0.0
    mean = loss.mean(axis=1)
    spread = loss.std(axis=1, ddof=1) if q > 1 else np.zeros(loss.shape[0])
    bound = mean + z * spread / math.sqrt(q)
    chosen: int | None = None
    best = math.inf
    for i in range(loss.shape[0]):
        if not bound[i] <= max_loss + 1e-12:
            break
        cost = float(result.cost[i].mean())
        if cost < best - 1e-12:
            chosen, best = i, cost
    return chosen, float(bound[chosen]) if chosen is not None else float(bound[0])


# -- one task ---------------------------------------------------------------------------------------------------
@dataclass
class TaskFit:
    """What training decided for one task."""

    task: str
    n: int
    family: str
    #: ``eps`` of a learned family, the AC threshold, or the ESC window.
    point: float
    #: The learned risk table (``None`` when a rule is shipped).
    risk: np.ndarray | None
    #: Upper confidence bound on the expected loss at the chosen point (training, out of fold).
    loss_bound: float
    #: Per family: held-out (cross-validated) accuracy, cost, samples, and the full budget's.
    held_out: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    def rule_spec(self) -> str | None:
        """The policy spec of the shipped rule, or ``None`` for a learned family."""
        if self.family == "ac":
            return f"ac:threshold={self.point:g}"
        if self.family == "esc":
            return f"esc:window={int(self.point)}"
        return None

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the artifact and the model card."""
        return {
            "task": self.task,
            "pool_size": self.n,
            "family": self.family,
            "point": self.point,
            "rule": self.rule_spec(),
            "loss_bound": self.loss_bound,
            "held_out": self.held_out,
            "note": self.note,
        }


Fitter = Callable[[Trajectories, int], np.ndarray]


def _family_grid(family: str, n: int) -> np.ndarray:
    if family == "ac":
        return np.asarray(AC_GRID[::-1])  # most cautious (highest threshold) first
    if family == "esc":
        return np.arange(min(max(2, n // 2), 10), 1, -1)  # longest window first
    return np.asarray(EPS_GRID[::-1])  # smallest eps first


def _replay(family: str, traj: Trajectories, grid: np.ndarray, risk: np.ndarray | None) -> Outcomes:
    if family == "esc":
        return outcomes(traj, _stops_esc(traj, grid))
    if family == "ac":
        return outcomes(traj, _stops_from_risk(traj, ac_risk(traj.n), 1.0 - grid))
    assert risk is not None
    return outcomes(traj, _stops_from_risk(traj, risk, grid))


def _fitter(family: str, seed: int) -> Callable[[Trajectories], np.ndarray] | None:
    if family == "table":
        return lookup_table
    if family == "model":
        return lambda traj: risk_table_from_model(traj, seed=seed)
    if family == "bayes":
        return bayes_risk
    return None


def fit_task(
    traj: Trajectories,
    *,
    task: str,
    max_loss: float = DEFAULT_MAX_LOSS,
    confidence: float = DEFAULT_CONFIDENCE,
    folds: int = DEFAULT_FOLDS,
    families: tuple[str, ...] = FAMILIES,
    seed: int = 0,
    value: float | None = None,
    price_per_1k: float = 0.0,
) -> TaskFit:
    """Cross-validate every family on ``traj``'s questions and decide what to ship for this task (module doc).

    With ``value`` (dollars a correct answer is worth) and ``price_per_1k`` (dollars per 1,000
    tokens) the operating point maximises the expected net value per question,
    ``value * accuracy - price_per_1k * tokens / 1000``, instead of honouring ``max_loss``; the
    pool must report tokens.
    """
    if value is not None:
        for name, number in (("value", value), ("price_per_1k", price_per_1k)):
            if isinstance(number, bool) or not isinstance(number, int | float) or not number >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {number!r}")
        if not traj.tokens_known:
            raise ValueError(f"task {task!r}: choosing by dollars needs token counts, and this pool has none")

    def choose(result: Outcomes) -> tuple[int | None, float]:
        if value is None:
            return choose_point(result, max_loss, confidence)
        net = value * result.accuracy.mean(axis=1) - price_per_1k * result.cost.mean(axis=1) / 1000.0
        best = int(np.argmax(net))
        return best, float(result.full.mean() - result.accuracy[best].mean())

    if not 0.0 <= max_loss < 1.0:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"families must be among {', '.join(FAMILIES)}, got {families!r}")
    questions = len(traj.ids)
    if questions < 2 * folds:
        raise ValueError(f"task {task!r}: {questions} questions are too few for {folds} folds")
    n = traj.n
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(questions) % folds
    # Out-of-fold outcomes of every family (learned families fitted on the other folds).
    oof: dict[str, Outcomes] = {}
    grids = {family: _family_grid(family, n) for family in families}
    for family in families:
        fitter = _fitter(family, seed)
        if fitter is None:
            oof[family] = _replay(family, traj, grids[family], None)
            continue
        parts = []
        for k in range(folds):
            inside = np.flatnonzero(fold_of != k)
            outside = np.flatnonzero(fold_of == k)
            risk = fitter(traj.take(inside))
            parts.append((outside, _replay(family, traj.take(outside), grids[family], risk)))
        oof[family] = _concat(parts, questions)
    # Held-out score of each family: operating point chosen on the other folds, replayed on the fold.
    held: dict[str, dict[str, float]] = {}
    for family in families:
        result = oof[family]
        acc, cost, samples = 0.0, 0.0, 0.0
        for k in range(folds):
            inside = fold_of != k
            outside = fold_of == k
            sub = Outcomes(
                result.accuracy[:, inside],
                result.cost[:, inside],
                result.samples[:, inside],
                result.full[inside],
                result.full_cost[inside],
            )
            index, _ = choose(sub)
            index = 0 if index is None else index
            acc += float(result.accuracy[index, outside].sum())
            cost += float(result.cost[index, outside].sum())
            samples += float(result.samples[index, outside].sum())
        held[family] = {
            "accuracy": acc / questions,
            "cost": cost / questions,
            "samples": samples / questions,
            "full_accuracy": float(result.full.mean()),
            "full_cost": float(result.full_cost.mean()),
        }
    rules = [f for f in families if f in ("ac", "esc")]
    learned = [f for f in families if f not in rules and f in SHIPPABLE]

    def admissible(f: str) -> bool:
        return value is not None or held[f]["full_accuracy"] - held[f]["accuracy"] <= max_loss + 1e-12

    def rank(f: str) -> tuple[bool, float]:
        if value is not None:  # cost in dollars net of the value of correct answers: lower is better
            return (False, price_per_1k * held[f]["cost"] / 1000.0 - value * held[f]["accuracy"])
        return (not admissible(f), held[f]["cost"])

    def beats(f: str, g: str) -> bool:
        if value is not None:
            return rank(f) < rank(g)
        return held[f]["cost"] < (1.0 - MARGIN) * held[g]["cost"]

    best_rule = min(rules, key=rank) if rules else None
    best_learned = min(learned, key=rank) if learned else None
    if best_learned is not None and (
        best_rule is None
        or (admissible(best_learned) and (not admissible(best_rule) or beats(best_learned, best_rule)))
    ):
        family = best_learned
        note = (
            f"learned family {family!r} kept: held-out cost {held[family]['cost']:.4g} against "
            f"{held[best_rule]['cost']:.4g} for the best tuned rule ({best_rule}) at held-out loss "
            f"{held[family]['full_accuracy'] - held[family]['accuracy']:.4f}"
            if best_rule
            else f"learned family {family!r}"
        )
    else:
        assert best_rule is not None
        family = best_rule
        note = (
            f"tuned rule {family!r} shipped: the learned families did not beat it by {MARGIN:.0%} on held-out folds "
            "within max_loss"
            + (f" (best: {best_learned}, cost {held[best_learned]['cost']:.4g})" if best_learned else "")
        )
    index, bound = choose(oof[family])
    if index is None:
        raise DegenerateError(
            f"task {task!r}: no operating point of {family!r} keeps the expected loss within max_loss "
            f"{max_loss:g} at confidence {confidence:g} (its most cautious point's bound is {bound:.4g}); "
            "the policy would never stop early: raise --max-loss, lower --confidence, or add questions"
        )
    samples = float(oof[family].samples[index].mean())
    if samples >= n - 1e-9:
        raise DegenerateError(
            f"task {task!r}: at max_loss {max_loss:g} the chosen policy never stops before all {n} samples; "
            "nothing to learn here: raise --max-loss or use MaxSamples"
        )
    if samples <= 1.0 + 1e-9:
        raise DegenerateError(
            f"task {task!r}: the chosen policy always stops after one sample (more samples never change the "
            "answer within max_loss on these questions); use MaxSamples(1) or lower --max-loss"
        )
    grid = grids[family]
    fitter = _fitter(family, seed)
    final_risk = fitter(traj) if fitter is not None else None
    return TaskFit(
        task=task,
        n=n,
        family=family,
        point=float(grid[index]),
        risk=final_risk,
        loss_bound=bound,
        held_out=held,
        note=note,
    )
