"""The learned stop policy: features, training rows and targets, models, decisions, artifacts, specs and CLI.

Everything runs on small synthetic pools built here (a few seconds of fitting in all); the real
pools are used only by ``simulations/``.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_state, states_after

import budgetctl as bc
from budgetctl._core import RunCore
from budgetctl._gain import GainModel
from budgetctl._pool import Pool, Question
from budgetctl.policies import ESC, AdaptiveConsistency, MaxSamples, Never, parse_policy
from budgetctl.sim import replay_orders, simulate

sklearn = pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: E402

from budgetctl.learn import (  # noqa: E402
    FEATURE_NAMES,
    ArtifactError,
    LearnedStop,
    NotFittedError,
    Rows,
    build_rows,
    default_policy_path,
    load_policy,
    state_features,
)
from budgetctl.learn._artifact import POLICY_FILE, WEIGHTS_FILE  # noqa: E402
from budgetctl.learn._features import horizon_cap, per_sample_tokens  # noqa: E402
from budgetctl.learn._models import Calibration, LinearModel, MLPModel, TreeModel, combine, combine_one  # noqa: E402
from budgetctl.learn._select import row_break_even, sweep_values  # noqa: E402

HORIZONS = (1, 2, 4, 8)


def synthetic_questions(
    n: int, *, seed: int, dataset: str, samples: int = 12, tokens: bool = True, scores: bool = False
) -> list[Question]:
    """Questions whose samples are the right answer with a per-question probability, else one of three wrong ones."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p_right = float(rng.uniform(0.15, 0.95))
        wrong = rng.dirichlet([1.0, 1.0, 1.0])
        length = int(rng.integers(10, 90))
        drawn = []
        for _ in range(samples):
            if rng.random() < p_right:
                answer = "right"
            else:
                answer = f"wrong{int(rng.choice(3, p=wrong))}"
            if rng.random() < 0.03:
                answer = None
            drawn.append(
                bc.Sample(
                    answer=answer,
                    tokens=int(length + rng.integers(0, 10)) if tokens else 0,
                    score=(1.0 if answer == "right" else 0.0) if scores else None,
                )
            )
        out.append(
            Question(
                id=f"{dataset}-{i}",
                samples=tuple(drawn),
                correct_keys=frozenset({"right"}),
                gold="right",
                dataset=dataset,
                tokens_known=tokens,
            )
        )
    return out


@pytest.fixture(scope="module")
def pool() -> Pool:
    questions = synthetic_questions(40, seed=1, dataset="alpha") + synthetic_questions(
        40, seed=2, dataset="beta", tokens=False
    )
    return Pool(questions=questions, files=[])


@pytest.fixture(scope="module")
def rows(pool: Pool) -> Rows:
    return build_rows(pool.questions, orders=3, seed=0, horizons=HORIZONS, target_orders=24)


@pytest.fixture(scope="module")
def fitted(pool: Pool) -> LearnedStop:
    return LearnedStop(model="linear", horizons=HORIZONS, orders=3, target_orders=24).fit(pool)


@pytest.fixture(scope="module")
def fitted_gbm(pool: Pool) -> LearnedStop:
    return LearnedStop(
        model="gbm", horizons=HORIZONS, orders=3, target_orders=24, max_iter=8, max_depth=3, max_rows=5000
    ).fit(pool)


def trajectory_states(question: Question, order: list[int], **core: Any) -> Iterator[bc.RunState]:
    run = RunCore(policy=Never(), **core)
    for i in order:
        run.launch()
        yield run.record(question.samples[i], 0.0, 0.0)


# -- features ------------------------------------------------------------------------------------------


def test_features_describe_the_vote() -> None:
    state = make_state({"a": 3, "b": 1}, n_samples=5, n_abstained=1, tokens=50, first_tokens=12, leader_streak=4)
    x = dict(zip(FEATURE_NAMES, state_features(state), strict=True))
    assert len(state_features(state)) == len(FEATURE_NAMES)
    assert x["leader_share"] == pytest.approx(0.75)
    assert x["runner_up_share"] == pytest.approx(0.25)
    assert x["margin"] == pytest.approx(0.5)
    assert x["entropy"] == pytest.approx(state.entropy())
    assert x["abstain_share"] == pytest.approx(1 / 5)
    assert x["streak_share"] == pytest.approx(4 / 5)
    assert x["log_mean_tokens"] == pytest.approx(math.log1p(10.0))
    assert x["log_first_tokens"] == pytest.approx(math.log1p(12))
    assert x["tokens_known"] == 1.0
    assert x["has_score"] == 0.0 and x["leader_score"] == 0.0


def test_entropy_feature_matches_the_state_with_many_answers() -> None:
    state = make_state({"a": 3, "b": 2, "c": 1, "d": 1})
    assert dict(zip(FEATURE_NAMES, state_features(state), strict=True))["entropy"] == pytest.approx(state.entropy())


def test_features_without_tokens_or_votes_are_zero_not_nan() -> None:
    empty = make_state({}, n_samples=2, n_abstained=2, tokens=0, first_tokens=None)
    values = state_features(empty)
    assert all(math.isfinite(v) for v in values)
    x = dict(zip(FEATURE_NAMES, values, strict=True))
    assert x["tokens_known"] == x["log_mean_tokens"] == x["leader_share"] == x["p_leader"] == 0.0


def test_features_carry_verifier_scores() -> None:
    state = make_state({"a": 2}, leader_score=1.0)
    x = dict(zip(FEATURE_NAMES, state_features(state), strict=True))
    assert x["has_score"] == 1.0 and x["leader_score"] == 1.0


def test_horizon_cap_reads_budget_tokens_and_deadline() -> None:
    assert horizon_cap(make_state({"a": 1}), 10.0) == math.inf
    assert horizon_cap(make_state({"a": 1}, samples_left=3, n_in_flight=1), 10.0) == 4
    assert horizon_cap(make_state({"a": 1}, tokens_left=35), 10.0) == 3
    # 4 samples back in 2 s: 2 per second; 1.5 s left reach 3 more.
    state = make_state({"a": 4}, elapsed=2.0, time_left=1.5)
    assert horizon_cap(state, 10.0) == 3
    assert horizon_cap(make_state({"a": 1}, time_left=0.0), 10.0) == 0
    assert per_sample_tokens(make_state({"a": 2}, tokens=30), 99.0) == 15.0
    assert per_sample_tokens(make_state({"a": 2}, tokens=0), 99.0) == 99.0


# -- training rows and targets ---------------------------------------------------------------------------


def test_rows_follow_the_run_core(pool: Pool, rows: Rows) -> None:
    question = pool.questions[0]
    n = len(question.samples)
    assert rows.t[:n].tolist() == list(range(1, n + 1))
    from budgetctl.sim import orders_for

    order = orders_for(question, 3, 0)[0].tolist()
    expected = [state_features(s) for s in trajectory_states(question, order)]
    np.testing.assert_array_equal(rows.X[:n], np.array(expected))


def test_horizons_that_cannot_overturn_the_leader_gain_exactly_nothing(rows: Rows) -> None:
    for h in HORIZONS:
        inside = rows.t + h <= rows.n
        assert np.all(rows.gain(h)[inside & ~rows.valid(h)] == 0.0)
        assert np.all(rows.change(h)[inside & ~rows.valid(h)] == 0.0)
        assert np.all(rows.change(h) >= np.abs(rows.gain(h)) - 1e-12)


def test_pooled_targets_average_to_the_realised_changes(pool: Pool) -> None:
    # With every order carrying features, the mean of the pooled targets over all rows is exactly the
    # mean realised change in correctness (the law of total expectation, group by group).
    one = Pool(questions=pool.questions[:6], files=[])
    rows = build_rows(one.questions, orders=16, seed=3, horizons=(2,), target_orders=16)
    inside = rows.t + 2 <= rows.n
    realised = np.zeros(len(rows))
    index = np.flatnonzero(inside)
    realised[index] = rows.correct[index + 2] - rows.correct[index]
    assert rows.gain(2)[inside].mean() == pytest.approx(realised[inside].mean(), abs=1e-12)
    assert rows.gain(2)[inside].std() < realised[inside].std()  # pooling removes noise


def test_build_rows_is_seeded_and_the_same_with_workers(pool: Pool) -> None:
    qs = pool.questions[:20]
    a = build_rows(qs, orders=2, seed=5, horizons=HORIZONS, target_orders=8)
    b = build_rows(qs, orders=2, seed=5, horizons=HORIZONS, target_orders=8, jobs=2)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.gains, b.gains)
    c = build_rows(qs, orders=2, seed=6, horizons=HORIZONS, target_orders=8)
    assert not np.array_equal(a.X, c.X)


def test_build_rows_rejects_bad_arguments(pool: Pool) -> None:
    with pytest.raises(ValueError, match="orders"):
        build_rows(pool.questions, orders=0, seed=0, horizons=HORIZONS)
    with pytest.raises(ValueError, match="horizons"):
        build_rows(pool.questions, orders=1, seed=0, horizons=(4, 2))
    with pytest.raises(ValueError, match="target_orders"):
        build_rows(pool.questions, orders=8, seed=0, horizons=HORIZONS, target_orders=4)


# -- models as arrays ---------------------------------------------------------------------------------


def test_tree_model_equals_scikit_learn_and_one_row_equals_the_batch() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    for depth in (2, 3, 5):
        estimators = [
            HistGradientBoostingRegressor(max_iter=6, max_depth=depth, early_stopping=False, random_state=0).fit(
                X, np.sin(X[:, k]) + X[:, k + 1] ** 2
            )
            for k in range(2)
        ]
        model = TreeModel.from_sklearn(estimators)
        expected = np.stack([e.predict(X[:50]) for e in estimators], axis=1)
        np.testing.assert_allclose(model.predict(X[:50]), expected, atol=1e-12)
        one = np.stack([model.predict_one(x.tolist()) for x in X[:50]])
        np.testing.assert_allclose(one, expected, atol=1e-12)
        rebuilt = TreeModel.from_arrays(model.arrays())
        np.testing.assert_array_equal(rebuilt.predict(X[:50]), model.predict(X[:50]))


def test_tree_conversion_is_checked_against_scikit_learns_predict() -> None:
    """The conversion reads private scikit-learn attributes: a change of them is a clear error, never a silent one."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(400, 4))
    poisson = HistGradientBoostingRegressor(loss="poisson", max_iter=5, max_depth=3, early_stopping=False).fit(
        X, rng.poisson(np.exp(0.5 * X[:, 0]))
    )
    squared = HistGradientBoostingRegressor(max_iter=5, max_depth=3, early_stopping=False).fit(X, X[:, 1])
    model = TreeModel.from_sklearn([poisson, squared], check=X[:64])
    np.testing.assert_allclose(np.exp(model.predict(X[:5])[:, 0]), poisson.predict(X[:5]))

    class Shifted:  # the same trees, but a predict they no longer explain
        loss = "squared_error"
        _predictors = squared._predictors
        _baseline_prediction = squared._baseline_prediction

        def predict(self, X: np.ndarray) -> np.ndarray:
            return np.asarray(squared.predict(X)) + 1.0

    with pytest.raises(RuntimeError, match=r"does not reproduce Shifted\.predict"):
        TreeModel.from_sklearn([Shifted()], check=X[:64])
    with pytest.raises(RuntimeError, match=r"cannot read the trees of object.*_predictors"):
        TreeModel.from_sklearn([object()])


def test_linear_and_mlp_models_round_trip() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 3))
    linear = LinearModel.from_standardised(rng.normal(size=(4, 3)), rng.normal(size=4), X.mean(0), X.std(0))
    mlp = MLPModel(X.mean(0), X.std(0), [rng.normal(size=(5, 3)), rng.normal(size=(4, 5))], [np.zeros(5), np.ones(4)])
    for model in (linear, mlp):
        batch = model.predict(X)
        np.testing.assert_allclose(np.stack([model.predict_one(x.tolist()) for x in X]), batch, atol=1e-12)
        again = type(model).from_arrays(model.arrays())
        np.testing.assert_array_equal(again.predict(X), batch)
    with pytest.raises(ValueError, match="mlp"):
        MLPModel(X.mean(0), X.std(0), [rng.normal(size=(5, 2))], [np.zeros(5)])


def test_combine_and_calibration_agree_row_by_row() -> None:
    raw = np.array([[-2.0, 0.5, 0.3, -3.0], [-0.1, -9.0, 2.0, 0.4]])
    gains = combine(raw)
    for r in range(2):
        for i in range(2):
            assert combine_one(raw[r].tolist(), i, 2) == pytest.approx(gains[r, i])
    assert gains[0, 1] == pytest.approx(-1.0)  # P(change) capped at 1, direction at -1
    calibration = Calibration([(np.array([-0.1, 0.0, 0.2]), np.array([0.0, 0.01, 0.1])), None])
    values = np.array([[-1.0, 3.0], [0.1, -2.0], [0.5, 0.0]])
    applied = calibration.apply(values)
    for r in range(3):
        for i in range(2):
            assert calibration.one(i, values[r, i]) == pytest.approx(applied[r, i])
    assert applied[:, 1].tolist() == values[:, 1].tolist()
    with pytest.raises(ValueError, match="non-decreasing"):
        Calibration([(np.array([1.0, 0.0]), np.array([0.0, 1.0]))])


# -- the estimator ---------------------------------------------------------------------------------------


def test_scikit_learn_conventions(fitted: LearnedStop) -> None:
    from sklearn.utils.estimator_checks import check_no_attributes_set_in_init

    check_no_attributes_set_in_init("LearnedStop", LearnedStop())
    fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params()
    assert not hasattr(fresh, "model_")
    assert fresh.set_params(value=0.5) is fresh and fresh.value == 0.5
    for name in ("model_", "calibration_", "horizons_", "value_", "default_tokens_", "feature_names_", "training_"):
        assert hasattr(fitted, name)
    assert fitted.training_["datasets"] == {"alpha": 40, "beta": 40}


def test_an_unfitted_policy_says_so() -> None:
    with pytest.raises(NotFittedError, match="not fitted"):
        LearnedStop()(make_state({"a": 1}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "forest"}, "model"),
        ({"value": -1.0}, "value"),
        ({"horizons": (2, 1)}, "horizons"),
        ({"folds": 1}, "folds"),
        ({"orders": 0}, "orders"),
        ({"orders": 8, "target_orders": 4}, "target_orders"),
    ],
)
def test_fit_checks_its_parameters(pool: Pool, params: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        LearnedStop(**params).fit(pool)


def test_fit_rejects_what_is_not_a_pool() -> None:
    with pytest.raises(TypeError, match="Pool"):
        LearnedStop().fit(42)  # type: ignore[arg-type]


def test_fit_needs_enough_data() -> None:
    tiny = synthetic_questions(2, seed=0, dataset="x", samples=3)
    with pytest.raises(ValueError, match="too little data"):
        LearnedStop(model="linear", orders=1, target_orders=1).fit(tiny)


def test_decision_is_the_value_against_the_break_even(fitted: LearnedStop, pool: Pool) -> None:
    states = list(trajectory_states(pool.questions[3], list(range(12))))
    for state in states:
        be = fitted.break_even(state)
        assert be >= 0.0
        assert fitted(state) == (fitted.resolved_value() >= be)
    generous = pickle.loads(pickle.dumps(fitted)).set_params(value=0.0)
    stingy = pickle.loads(pickle.dumps(fitted)).set_params(value=1e9)
    assert all(stingy(s) for s in states)
    assert sum(generous(s) for s in states) < len(states)  # some state is predicted to gain


def test_value_auto_is_chosen_at_fit_and_a_number_overrides_it(fitted: LearnedStop) -> None:
    assert fitted.value == "auto" and fitted.value_ > 0
    assert fitted.resolved_value() == fitted.value_
    other = pickle.loads(pickle.dumps(fitted)).set_params(value=0.125)
    assert other.resolved_value() == 0.125


def test_a_spent_budget_or_an_unbeatable_leader_stops_at_any_value(fitted: LearnedStop) -> None:
    free = pickle.loads(pickle.dumps(fitted)).set_params(value=0.0)
    # 5 votes to 1 with 3 samples left: even three votes for the runner-up cannot overturn the leader.
    assert free.break_even(make_state({"a": 5, "b": 1}, samples_left=3)) == 0.0
    assert free(make_state({"a": 5, "b": 1}, samples_left=3))
    assert free(make_state({"a": 1, "b": 1}, samples_left=0))
    assert free(make_state({"a": 1, "b": 1}, time_left=0.0))


def test_gain_model_protocol(fitted: LearnedStop) -> None:
    assert isinstance(fitted, GainModel)
    state = make_state({"a": 4, "b": 1}, tokens=100)
    assert fitted.predict_gain(state, 1) == 0.0  # one sample cannot overturn 4 to 1
    assert fitted.predict_gain(state, 0) == 0.0
    assert fitted.predict_tokens(state, 3) == pytest.approx(3 * 100 / 5)
    assert math.isfinite(fitted.predict_gain(state, 8)) and math.isfinite(fitted.predict_gain(state, 100))
    # Between trained horizons the gain is interpolated: 3 lies between the gains at 2 and 4.
    even = make_state({"a": 1, "b": 1}, tokens=20)
    g2, g3, g4 = (fitted.predict_gain(even, h) for h in (2, 3, 4))
    assert min(g2, g4) - 1e-12 <= g3 <= max(g2, g4) + 1e-12
    unknown = make_state({"a": 1}, tokens=0)
    assert fitted.predict_tokens(unknown, 2) == pytest.approx(2 * fitted.default_tokens_)


def test_fast_sweep_equals_the_simulator(fitted_gbm: LearnedStop, pool: Pool) -> None:
    # What the vectorised sweep says a value does is what simulate() measures with the policy object.
    questions = pool.questions[::4]
    rows = build_rows(questions, orders=4, seed=9, horizons=fitted_gbm.horizons_, target_orders=4)
    from budgetctl.learn._evaluate import predict_rows

    break_even = row_break_even(predict_rows(fitted_gbm, rows), rows, fitted_gbm.horizons_, fitted_gbm.default_tokens_)
    policy_values = [fitted_gbm.break_even(s) for q in questions for s in _orders_states(q, 4, 9)]
    np.testing.assert_allclose(break_even, policy_values, rtol=1e-9, atol=1e-12)
    value = float(np.median(break_even[break_even > 0]))
    sweep = sweep_values(rows, break_even, [value])
    policy = pickle.loads(pickle.dumps(fitted_gbm)).set_params(value=value)
    result = simulate(Pool(questions=questions, files=[]), [policy], orders=4, seed=9, jobs=1)
    for d, name in enumerate(sweep.datasets):
        row = next(r for r in result.datasets if r.dataset == name).rows[0]
        assert row.accuracy == pytest.approx(sweep.accuracy[d, 0])
        assert row.mean_samples == pytest.approx(sweep.samples[d, 0])


def _orders_states(question: Question, n: int, seed: int) -> Iterator[bc.RunState]:
    from budgetctl.sim import orders_for

    for order in orders_for(question, n, seed).tolist():
        yield from trajectory_states(question, order)


def test_policy_composes_pickles_and_solves(fitted_gbm: LearnedStop, pool: Pool) -> None:
    question = pool.questions[5]
    composed = fitted_gbm | MaxSamples(3)
    copy = pickle.loads(pickle.dumps(composed))
    states = list(trajectory_states(question, list(range(12))))
    assert [composed(s) for s in states] == [copy(s) for s in states]
    stops = replay_orders(question.samples, [list(range(12))], [fitted_gbm, composed])[0]
    assert stops[1].state.n_samples <= min(3, stops[0].state.n_samples)
    samples = iter(question.samples)

    async def sampler() -> bc.Sample:
        try:
            return next(samples)
        except StopIteration:
            raise bc.Exhausted from None

    result = bc.solve_sync(sampler, policy=composed)
    assert result.n_samples == stops[1].state.n_samples


def test_simulation_in_worker_processes_decides_the_same(fitted_gbm: LearnedStop, pool: Pool) -> None:
    some = Pool(questions=pool.questions[:10], files=[])
    alone = simulate(some, [fitted_gbm], orders=3, jobs=1).overall.rows[0]
    workers = simulate(some, [fitted_gbm], orders=3, jobs=2).overall.rows[0]
    assert (alone.accuracy, alone.mean_samples) == (workers.accuracy, workers.mean_samples)


# -- artifacts ---------------------------------------------------------------------------------------------


def test_artifact_round_trip(fitted_gbm: LearnedStop, pool: Pool, tmp_path: Path) -> None:
    path = fitted_gbm.save(tmp_path / "p", command="budgetctl train x", metrics={"note": 1})
    loaded = load_policy(path)
    assert loaded.get_params() == fitted_gbm.get_params()
    states = list(trajectory_states(pool.questions[7], list(range(12))))
    assert [loaded.break_even(s) for s in states] == [fitted_gbm.break_even(s) for s in states]
    document = json.loads((Path(path) / POLICY_FILE).read_text())
    assert document["command"] == "budgetctl train x" and document["metrics"] == {"note": 1}
    assert document["schema_version"] == 1 and document["budgetctl_version"] == bc.__version__
    with np.load(Path(path) / WEIGHTS_FILE, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
    assert "Held-out metrics" in (Path(path) / "MODEL_CARD.md").read_text()


def _rewrite(path: Path, **changes: Any) -> None:
    document = json.loads((path / POLICY_FILE).read_text())
    document.update(changes)
    (path / POLICY_FILE).write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_version": 99}, "newer budgetctl"),
        ({"schema_version": "one"}, "unknown schema_version"),
        ({"schema_version": 0}, "unknown schema_version"),
        ({"format": "sklearn-pickle"}, "not a budgetctl learned-policy"),
        ({"feature_schema": 0}, "feature schema"),
        ({"model": "forest"}, "malformed"),
    ],
)
def test_artifacts_of_other_versions_are_refused(
    fitted: LearnedStop, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    path = Path(fitted.save(tmp_path / "p"))
    _rewrite(path, **changes)
    with pytest.raises(ArtifactError, match=message):
        load_policy(path)


def test_corrupt_or_missing_artifacts_are_refused(fitted: LearnedStop, tmp_path: Path) -> None:
    path = Path(fitted.save(tmp_path / "p"))
    (path / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes()[:-3] + b"xyz")
    with pytest.raises(ArtifactError, match="sha256"):
        load_policy(path)
    with pytest.raises(ArtifactError, match="no trained policy"):
        load_policy(tmp_path / "nowhere")
    (path / POLICY_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable"):
        load_policy(path)


def test_specs_load_trained_policies(fitted: LearnedStop, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "p")
    spec = parse_policy(f"learned:path={path},value=0.05")
    assert isinstance(spec, LearnedStop) and spec.resolved_value() == 0.05
    bare = parse_policy(path)
    assert isinstance(bare, LearnedStop) and bare.resolved_value() == fitted.value_
    either = parse_policy(f"learned:path={path}|fixed:n=5")
    assert either(make_state({"a": 5}))
    with pytest.raises(ValueError, match="unknown parameter"):
        parse_policy(f"learned:path={path},vlaue=0.1")
    with pytest.raises(ValueError, match="value"):
        parse_policy(f"learned:path={path},value=-2")


def test_the_shipped_default_loads_and_both_copies_are_identical() -> None:
    """The default is a per-task policy (one operating point per shared dataset), shipped twice, identical."""
    from budgetctl.learn import RiskStop
    from budgetctl.policies import AllOf

    path = default_policy_path()
    policy = parse_policy("learned")
    assert isinstance(policy, AllOf) and len(policy.policies) >= 2
    one = parse_policy("learned:task=gsm8k_train")
    assert isinstance(one, RiskStop | AdaptiveConsistency | ESC)
    root = Path(__file__).resolve().parents[1]
    packaged = root / "budgetctl" / "data" / "policies" / "default"
    repository = root / "policies" / "default"
    assert path in (packaged, repository)
    metadata = json.loads((repository / POLICY_FILE).read_text())
    assert sorted(p.name for p in packaged.iterdir()) == sorted(p.name for p in repository.iterdir())
    for name in (POLICY_FILE, metadata["weights"]["file"], "MODEL_CARD.md"):
        assert (packaged / name).read_bytes() == (repository / name).read_bytes(), name
    assert metadata["command"] and metadata["training"]["files"]
    assert all(task["note"] and task["held_out"] for task in metadata["tasks"])
    assert sum(p.stat().st_size for p in repository.iterdir()) < 100_000  # small enough to ship


# -- the command line ----------------------------------------------------------------------------------------


def _write_pool(path: Path, questions: list[Question]) -> None:
    with path.open("w") as stream:
        for q in questions:
            record = {
                "id": q.id,
                "dataset": q.dataset,
                "gold": q.gold,
                "samples": [{"answer": s.answer, "tokens": s.tokens} for s in q.samples],
            }
            stream.write(json.dumps(record) + "\n")


def test_train_and_evaluate_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from budgetctl.cli import main

    pool_file = tmp_path / "pool.jsonl"
    _write_pool(pool_file, synthetic_questions(30, seed=4, dataset="gamma", samples=10))
    out = tmp_path / "policy"
    status = main(
        [
            "train",
            str(pool_file),
            "-o",
            str(out),
            "--model",
            "linear",
            "--orders",
            "2",
            "--target-orders",
            "8",
            "--holdout",
            "0.3",
            "--eval-orders",
            "3",
            "--jobs",
            "1",
        ]
    )
    assert status == 0, capsys.readouterr().err
    document = json.loads((out / POLICY_FILE).read_text())
    assert document["command"].startswith("budgetctl train ") and "--model linear" in document["command"]
    assert document["training"]["files"][0]["sha256"] and document["metrics"]["held_out_questions"] == 9
    assert document["metrics"]["decisions"]["datasets"][0]["policies"]["ac:threshold=0.95"]["accuracy"] >= 0
    capsys.readouterr()
    status = main(["evaluate", "--policy", str(out), str(pool_file), "--orders", "3", "--json", "-", "--jobs", "1"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gains"]["horizons"] and report["decisions"]["datasets"][0]["dataset"] == "gamma"
    assert main(["train", str(pool_file), "-o", str(out), "--model", "linear", "--value", "cheap", "--force"]) == 2
    assert "--value" in capsys.readouterr().err
    assert main(["train", str(pool_file), "-o", str(tmp_path / "other"), "--value", "0.1"]) == 2
    assert "--price-per-1k" in capsys.readouterr().err
    # Too few orders for the targets: refused, not written with -inf intercepts.
    tiny = tmp_path / "tiny"
    status = main(
        ["train", str(pool_file), "-o", str(tiny), "--model", "linear", "--orders", "2", "--target-orders", "4"]
    )
    if status == 0:
        policy = load_policy(tiny)
        assert all(np.isfinite(v).all() for k, v in policy.model_.arrays().items() if v.dtype.kind == "f")
    else:
        assert "non-finite" in capsys.readouterr().err and not tiny.exists()


def _rewrite_weights(path: Path, change: Any) -> None:
    import hashlib
    import io

    with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    blob = buffer.getvalue()
    (path / WEIGHTS_FILE).write_bytes(blob)
    document = json.loads((path / POLICY_FILE).read_text())
    document["weights"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (path / POLICY_FILE).write_text(json.dumps(document))


@pytest.mark.parametrize("index", [999, -1])
def test_tree_feature_indices_are_range_checked_at_load(fitted_gbm: LearnedStop, tmp_path: Path, index: int) -> None:
    path = Path(fitted_gbm.save(tmp_path / "p"))

    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays["model.feature"] = arrays["model.feature"].copy()
        arrays["model.feature"].flat[0] = index

    _rewrite_weights(path, change)
    with pytest.raises(ArtifactError, match="feature index"):
        load_policy(path)


def test_extra_members_and_bad_horizons_are_refused(fitted: LearnedStop, tmp_path: Path) -> None:
    path = Path(fitted.save(tmp_path / "p"))
    _rewrite_weights(path, lambda arrays: arrays.update(extra=np.zeros(3)))
    with pytest.raises(ArtifactError, match="unexpected member"):
        load_policy(path)
    other = Path(fitted.save(tmp_path / "q"))
    document = json.loads((other / POLICY_FILE).read_text())
    _rewrite(other, horizons=[-1 * h for h in document["horizons"]][::-1])
    with pytest.raises(ArtifactError, match="horizons"):
        load_policy(other)


def test_mlp_model_trains_with_torch(pool: Pool) -> None:
    pytest.importorskip("torch")
    policy = LearnedStop(model="mlp", horizons=HORIZONS, orders=2, target_orders=8, epochs=1, hidden=8).fit(pool)
    assert isinstance(policy.model_, MLPModel)
    states = list(trajectory_states(pool.questions[2], list(range(12))))
    rows = np.array([state_features(s) for s in states])
    batch = policy.model_.predict(rows)
    np.testing.assert_allclose(np.stack([policy.model_.predict_one(r.tolist()) for r in rows]), batch, atol=1e-12)


def test_states_after_helper_matches_features() -> None:
    states = states_after(["a", "a", "b"])
    assert dict(zip(FEATURE_NAMES, state_features(states[-1]), strict=True))["leader_share"] == pytest.approx(2 / 3)


def test_a_loaded_policy_never_changes(fitted: LearnedStop, tmp_path: Path) -> None:
    loaded = load_policy(fitted.save(tmp_path / "p"))
    before = loaded.resolved_value()
    other = loaded.set_params(value=before * 2 + 1)
    assert other is not loaded and other.resolved_value() == before * 2 + 1
    assert loaded.resolved_value() == before and loaded.get_params()["value"] == fitted.get_params()["value"]


def test_random_state_none_and_scikit_learns_not_fitted_error(pool: Pool) -> None:
    from sklearn.exceptions import NotFittedError as SklearnNotFitted

    assert NotFittedError is SklearnNotFitted
    policy = LearnedStop(model="linear", orders=1, target_orders=4, random_state=None, calibrate=False, value=0.01)
    policy.fit(pool)
    assert isinstance(policy.random_state_, int) and policy.get_params()["random_state"] is None
