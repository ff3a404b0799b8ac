"""The shared-budget simulation: it replays exactly what the live scheduler does, and its reference rows are right.

* Live equals simulated: random requests (arrivals, samples, latencies, deadlines, a shared
  budget) through the live :class:`~budgetctl.Scheduler` under trio's ``MockClock`` end exactly
  where :func:`budgetctl.sched._simulate.run_batch` says (same allocator, same run core).
* :func:`~budgetctl.sched.simulate_shared_budget` on a small pool: a budget of the whole pool is
  the full-pool majority, a budget of one sample is majority@1, the uniform row is fixed-N
  self-consistency as :func:`budgetctl.sim.simulate` computes it, the oracle bounds every row.
* On the real GSM8K pool (skipped without ``../shared/traces``): the issue's target.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import anyio
import hypothesis.strategies as st
import numpy as np
import pytest
from conftest import run_virtual
from hypothesis import HealthCheck, given, settings

from budgetctl import Budget, Result, Sample, Scheduler
from budgetctl._gain import VoteGain
from budgetctl.policies import AdaptiveConsistency, MaxSamples, Never, StopPolicy
from budgetctl.sched import LookaheadGain, simulate_shared_budget
from budgetctl.sched._simulate import run_batch
from budgetctl.sim import simulate

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
GSM8K = TRACES / "activeprompt_k10_codex.jsonl.gz"

# -- live equals simulated ---------------------------------------------------------------------------------

answers = st.sampled_from(["a", "a", "b", "c", None])
pools = st.lists(
    st.lists(st.tuples(answers, st.integers(0, 50), st.floats(0.05, 3.0)), min_size=1, max_size=6),
    min_size=2,
    max_size=8,
)
POLICIES: dict[str, StopPolicy] = {
    "never": Never(),
    "max2": MaxSamples(2),
    "ac": AdaptiveConsistency(0.9),
}


@given(
    raw=pools,
    arrivals=st.lists(st.floats(0.0, 2.0), min_size=8, max_size=8, unique=True),
    slots=st.integers(1, 3),
    total=st.integers(2, 24) | st.none(),
    deadline=st.none() | st.floats(0.2, 6.0),
    policy=st.sampled_from(sorted(POLICIES)),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_live_scheduler_does_what_the_simulation_replays(
    raw: list[list[tuple[str | None, int, float]]],
    arrivals: list[float],
    slots: int,
    total: int | None,
    deadline: float | None,
    policy: str,
    seed: int,
) -> None:
    rng = random.Random(seed)
    pools = [[Sample(answer=a, tokens=t, latency=lat) for a, t, lat in pool] for pool in raw]
    orders = [rng.sample(range(len(pool)), len(pool)) for pool in pools]
    starts = arrivals[: len(pools)]
    stop = POLICIES[policy]

    simulated = run_batch(
        pools, orders, gain=LookaheadGain(), slots=slots, total_samples=total, policy=stop, deadline=deadline,
        arrivals=starts,
    )  # fmt: skip

    async def live() -> list[Result]:
        results: list[Result | None] = [None] * len(pools)
        budget = None if total is None else Budget(samples=total)
        async with Scheduler(slots=slots, budget=budget, policy=stop, max_failures=None) as sched:

            async def request(i: int) -> None:
                await anyio.sleep(starts[i])
                drawn = [pools[i][j] for j in orders[i]]

                async def replay() -> Sample:
                    sample = drawn.pop(0)
                    assert sample.latency is not None
                    await anyio.sleep(sample.latency)
                    return sample

                results[i] = await sched.solve(replay, deadline=deadline, budget=Budget(samples=len(pools[i])))

            async with anyio.create_task_group() as tg:
                for i in range(len(pools)):
                    tg.start_soon(request, i)
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    for i, (result, (state, reason)) in enumerate(zip(run_virtual(live), simulated, strict=True)):
        assert (result.answer, result.n_samples, result.tokens, result.stop_reason) == (
            state.answer,
            state.n_samples,
            state.tokens,
            reason,
        ), f"request {i}"


# -- simulate_shared_budget on a small pool ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 questions x 6 samples: easy ones (mostly right), hard ones (scattered), some never right."""
    rng = random.Random(11)
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with path.open("w") as out:
        for q in range(12):
            right = rng.choice([0.9, 0.6, 0.4, 0.2])
            samples = []
            for _ in range(6):
                answer = "42" if rng.random() < right else str(rng.randrange(5))
                samples.append({"answer": answer, "tokens": rng.randrange(20, 80), "correct": answer == "42"})
            out.write(json.dumps({"id": f"q{q}", "dataset": "toy", "gold": "42", "samples": samples}) + "\n")
    return path


def test_a_budget_of_the_whole_pool_gives_the_full_pool_majority(pool_file: Path) -> None:
    result = simulate_shared_budget(pool_file, budget_per_question=6, orders=8, slots=3)
    toy = result.datasets[0]
    for row in toy.rows:
        if row.kind == "shared":
            assert row.accuracy == pytest.approx(toy.full_pool_accuracy)
            assert row.mean_samples == 6
    assert toy.row("uniform").accuracy == pytest.approx(toy.full_pool_accuracy)


def test_a_budget_of_one_sample_is_majority_at_one(pool_file: Path) -> None:
    result = simulate_shared_budget(pool_file, budget_per_question=1, orders=8, slots=2)
    toy = result.datasets[0]
    uniform = toy.row("uniform").accuracy
    for row in toy.rows:
        if row.kind in ("shared", "independent", "oracle"):
            assert row.accuracy == pytest.approx(uniform), row.name
    assert toy.row("shared").stop_reasons == {"budget": 1.0}


@pytest.mark.parametrize("k", [2, 3])
def test_the_uniform_row_is_fixed_n_self_consistency(pool_file: Path, k: int) -> None:
    shared = simulate_shared_budget(pool_file, budget_per_question=k, orders=10, seed=4)
    fixed = simulate(pool_file, [MaxSamples(k)], orders=10, seed=4)
    assert shared.datasets[0].row("uniform").accuracy == pytest.approx(fixed.policies[0].accuracy)


def test_a_fractional_budget_mixes_the_two_nearest_uniform_allocations(pool_file: Path) -> None:
    rows = {
        k: simulate_shared_budget(pool_file, budget_per_question=k, orders=6, gains=[VoteGain()]).datasets[0]
        for k in (2, 2.5, 3)
    }
    assert rows[2.5].row("uniform").accuracy == pytest.approx(
        (rows[2].row("uniform").accuracy + rows[3].row("uniform").accuracy) / 2
    )
    assert rows[2.5].row("shared").mean_samples <= 2.5


def test_the_oracle_bounds_every_allocation_and_the_shared_budget_is_spent(pool_file: Path) -> None:
    result = simulate_shared_budget(pool_file, budget_per_question=3, orders=12, slots=4)
    toy = result.datasets[0]
    oracle = toy.row("oracle")
    for row in toy.rows:
        assert row.accuracy <= oracle.accuracy + 1e-12, row.name
        if row.kind == "shared":
            assert row.mean_samples == pytest.approx(3.0)  # 12 questions x 3, every one spent
            assert row.mean_tokens is not None and row.mean_tokens > 0
    assert {r.kind for r in toy.rows} == {"shared", "uniform", "independent", "oracle"}
    assert [r.name for r in toy.rows if r.kind == "shared"] == ["shared: VoteGain", "shared: LookaheadGain"]
    assert "AC(" in toy.row("independent").detail


def test_results_are_json_and_a_table(pool_file: Path) -> None:
    result = simulate_shared_budget(pool_file, budget_per_question=2, orders=3, batch=5, gains=[("vote", VoteGain())])
    data = json.loads(json.dumps(result.to_dict()))
    assert (data["batch"], data["budget_per_question"], data["slots"]) == (5, 2.0, 8)
    assert next(r["name"] for r in data["datasets"][0]["rows"]) == "shared: vote"
    text = result.table()
    assert "toy: 12 questions x 6 samples" in text and "shared: vote" in text and "oracle allocation" in text


def test_worker_processes_change_nothing(pool_file: Path) -> None:
    alone = simulate_shared_budget(pool_file, budget_per_question=2.5, orders=5, jobs=1)
    parallel = simulate_shared_budget(pool_file, budget_per_question=2.5, orders=5, jobs=2)
    assert [r.to_dict() for r in alone.datasets[0].rows] == [r.to_dict() for r in parallel.datasets[0].rows]


def test_batches_share_their_own_budget(pool_file: Path) -> None:
    # Batches of one question: each gets exactly its share, so sharing is uniform allocation.
    result = simulate_shared_budget(pool_file, budget_per_question=3, orders=6, batch=1, gains=[VoteGain()])
    toy = result.datasets[0]
    assert toy.row("shared").accuracy == pytest.approx(toy.row("uniform").accuracy)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"budget_per_question": 0.5}, ValueError, "budget_per_question"),
        ({"budget_per_question": math.inf}, ValueError, "budget_per_question"),
        ({"slots": 0}, ValueError, "slots"),
        ({"orders": 0}, ValueError, "orders"),
        ({"batch": 0}, ValueError, "batch"),
        ({"jobs": 0}, ValueError, "jobs"),
        ({"deadline": 1.0}, ValueError, "latency"),
        ({"gains": [object()]}, TypeError, "GainModel"),
        ({"gains": []}, ValueError, "gain"),
        ({"policy": "nonsense"}, Exception, "nonsense"),
    ],
)
def test_bad_arguments_are_named(pool_file: Path, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        simulate_shared_budget(pool_file, **kwargs)


# -- the real pool ---------------------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.skipif(not GSM8K.exists(), reason=f"real pool not found at {GSM8K}")
def test_gsm8k_a_shared_budget_of_3_beats_uniform_3_by_5_points() -> None:
    result = simulate_shared_budget(GSM8K, datasets=["gsm8k_train"], budget_per_question=3, orders=3, slots=8)
    gsm = result.datasets[0]
    uniform = gsm.row("uniform").accuracy
    lookahead = gsm.row("shared: LookaheadGain")
    assert lookahead.mean_samples == pytest.approx(3.0)
    assert lookahead.accuracy >= uniform + 0.05
    assert gsm.row("oracle").accuracy > lookahead.accuracy
    assert np.isfinite(gsm.row("independent").accuracy)
