"""Per-task training (``budgetctl train``'s default path), its artifacts, and the artifact loader's hardening."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from conftest import make_state

from budgetctl._pool import load_pool
from budgetctl.cli import main
from budgetctl.learn import ArtifactError, RiskStop, load_task_policy
from budgetctl.learn._artifact import save_directory
from budgetctl.learn._tune import (
    DegenerateError,
    _stops_esc,
    _stops_from_risk,
    ac_risk,
    fit_task,
    outcomes,
)
from budgetctl.learn._votes import build_trajectories
from budgetctl.policies import ESC, AdaptiveConsistency, parse_policy
from budgetctl.sim import simulate


def write_pool(path: Path, *, questions: int = 120, samples: int = 12, seed: int = 0, dataset: str = "toy") -> Path:
    """A pool whose questions differ in how often the right answer comes up (some below one half)."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(questions):
            p = rng.beta(2.0, 1.2)
            answers = rng.choice(["right", "w1", "w2"], size=samples, p=[p, (1 - p) * 0.7, (1 - p) * 0.3])
            record = {
                "id": f"{dataset}-{i}",
                "dataset": dataset,
                "gold": "right",
                "samples": [{"answer": str(a), "tokens": int(rng.integers(20, 60))} for a in answers],
            }
            stream.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pool(tmp_path_factory.mktemp("pools") / "toy.jsonl")


def test_vectorised_replay_equals_the_simulator(pool_file: Path) -> None:
    """The fold evaluation's numpy replay stops exactly where the real run core does, order by order."""
    pool = load_pool([pool_file])
    questions = pool.questions[:40]
    traj = build_trajectories(questions, orders=6, seed=3)
    fit = fit_task(build_trajectories(pool.questions, orders=4, seed=0), task="toy", max_loss=0.02, folds=3)
    table = fit.risk if fit.risk is not None else ac_risk(traj.n)
    risk_policy = RiskStop(table, 0.05, "toy")
    cases = [
        (risk_policy, outcomes(traj, _stops_from_risk(traj, table, np.asarray([0.05])))),
        (AdaptiveConsistency(0.9), outcomes(traj, _stops_from_risk(traj, ac_risk(traj.n), np.asarray([0.1])))),
        (ESC(3), outcomes(traj, _stops_esc(traj, np.asarray([3])))),
    ]
    from budgetctl._pool import Pool

    result = simulate(Pool(questions=questions, files=[], skipped=[]), [c[0] for c in cases], orders=6, seed=3)
    for (policy, replay), row in zip(cases, result.overall.rows, strict=False):
        assert row.mean_samples == pytest.approx(float(replay.samples.mean()), abs=1e-9), policy
        assert row.accuracy == pytest.approx(float(replay.accuracy.mean()), abs=1e-9), policy
        assert row.mean_tokens == pytest.approx(float(replay.cost.mean()), abs=1e-9), policy


def test_train_writes_a_per_task_policy_that_loads_and_replays(pool_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pol"
    assert main(["train", str(pool_file), "-o", str(out), "--max-loss", "0.01", "--folds", "3", "--orders", "4"]) == 0
    printed = capsys.readouterr().out
    assert "shipped:" in printed and "held-out folds" in printed
    assert "-" not in printed.split("vs tuned AC")[1].split("fewer")[0].split("\n")[1].split()[-1]
    document = json.loads((out / "policy.json").read_text())
    assert document["format"] == "budgetctl.task-stop"
    (entry,) = document["tasks"]
    assert entry["family"] in ("ac", "esc", "model", "bayes") and entry["note"]  # the table is never shipped
    policy = parse_policy(f"learned:path={out}")
    same = load_task_policy(out, "toy")
    assert type(policy) is type(same)
    result = simulate(str(pool_file), [policy], orders=3)
    assert 1.0 < result.overall.rows[0].mean_samples < 12.0
    # A loaded policy never changes: frozen, its table read-only, no set_params.
    if isinstance(policy, RiskStop):
        with pytest.raises(ValueError):
            policy.risk[1, 1, 0] = 0.5
    with pytest.raises(AttributeError):
        policy.eps = 0.5  # type: ignore[union-attr]
    assert not hasattr(policy, "set_params")
    with pytest.raises(ValueError, match="no task"):
        load_task_policy(out, "other")


def test_train_refuses_an_existing_output_unless_forced(pool_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "pol"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["train", str(pool_file), "-o", str(out), "--max-loss", "0.01", "--folds", "3", "--orders", "2"]
    assert main(args) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_degenerate_results_are_refused(tmp_path: Path) -> None:
    """Unanimous questions: one sample always suffices, so a policy would always stop at once: refused."""
    path = tmp_path / "same.jsonl"
    with open(path, "w", encoding="utf-8") as stream:
        for i in range(40):
            samples = [{"answer": "x", "tokens": 10}] * 8
            stream.write(json.dumps({"id": f"q{i}", "dataset": "d", "gold": "x", "samples": samples}) + "\n")
    traj = build_trajectories(load_pool([path]).questions, orders=3, seed=0)
    with pytest.raises(DegenerateError, match="one sample"):
        fit_task(traj, task="d", folds=2)
    assert main(["train", str(path), "-o", str(tmp_path / "p"), "--folds", "2"]) == 2


def test_zero_loss_never_stopping_early_is_refused(tmp_path: Path) -> None:
    """Two samples a question, no loss allowed: only the full budget is safe, so nothing would stop early."""
    path = write_pool(tmp_path / "two.jsonl", questions=60, samples=2)
    traj = build_trajectories(load_pool([path]).questions, orders=3, seed=0)
    with pytest.raises(DegenerateError, match="never"):
        fit_task(traj, task="toy", max_loss=0.0, confidence=0.99, folds=3)


def test_zero_loss_still_stops_where_the_leader_cannot_be_overturned(pool_file: Path) -> None:
    traj = build_trajectories(load_pool([pool_file]).questions, orders=3, seed=0)
    fit = fit_task(traj, task="toy", max_loss=0.0, confidence=0.99, folds=3)
    # No loss (ties in the full pool go to the answer seen first, so a stop can even gain a little).
    assert fit.held_out[fit.family]["accuracy"] >= fit.held_out[fit.family]["full_accuracy"] - 1e-12
    assert fit.held_out[fit.family]["samples"] < traj.n


def test_risk_stop_decisions() -> None:
    n = 4
    risk = np.ones((n + 1, n + 1, n + 1), dtype=np.float32)
    risk[2, 2, 0] = 0.01
    policy = RiskStop(risk, 0.05, "t")
    assert policy(make_state({"a": 2}))
    assert not policy(make_state({"a": 1, "b": 1}))
    assert policy(make_state({"a": 2, "b": 1, "c": 1}))  # the full budget: stop
    assert not policy(make_state({"a": 2.5}))  # weighted votes beyond the table: continue
    with pytest.raises(ValueError):
        RiskStop(np.full((3, 3, 3), np.nan), 0.1)


# -- atomic saving -------------------------------------------------------------------------------------------------
def _save(path: Path, weights: bytes, *, force: bool = False, validate=lambda p: None) -> str:
    document = {"format": "x", "n": len(weights)}
    return save_directory(path, document, weights, lambda d: "card\n", validate, force=force)


def test_save_is_atomic_and_keeps_the_old_policy_when_validation_fails(tmp_path: Path) -> None:
    target = tmp_path / "p"
    _save(target, b"first")
    with pytest.raises(FileExistsError):
        _save(target, b"second")

    def broken(path: Path) -> None:
        raise ArtifactError("does not load")

    with pytest.raises(ArtifactError):
        _save(target, b"second", force=True, validate=broken)
    document = json.loads((target / "policy.json").read_text())
    assert (target / document["weights"]["file"]).read_bytes() == b"first"
    _save(target, b"third", force=True)
    document = json.loads((target / "policy.json").read_text())
    assert (target / document["weights"]["file"]).read_bytes() == b"third"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        ["MODEL_CARD.md", "policy.json", document["weights"]["file"]]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


# -- hostile artifacts ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(pool_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "pol"
    args = ["train", str(pool_file), "-o", str(out), "--max-loss", "0.01", "--folds", "3", "--orders", "3"]
    assert main(args) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit(path: Path, change) -> None:
    document = json.loads((path / "policy.json").read_text())
    change(document)
    (path / "policy.json").write_text(json.dumps(document))


def _rehash(path: Path, blob: bytes) -> None:
    import hashlib

    (path / "weights.npz").write_bytes(blob)
    _edit(path, lambda d: d["weights"].update(file="weights.npz", sha256=hashlib.sha256(blob).hexdigest()))


@pytest.mark.parametrize("name", ["../weights.npz", "/dev/zero", "sub/weights.npz", "..", "", 7])
def test_weights_must_be_a_file_inside_the_directory(trained: Path, tmp_path: Path, name: object) -> None:
    copy = _copy(trained, tmp_path / "p")
    _edit(copy, lambda d: d["weights"].update(file=name))
    with pytest.raises(ArtifactError, match=r"weights\.file"):
        load_task_policy(copy)


def test_weights_may_not_be_a_symlink(trained: Path, tmp_path: Path) -> None:
    copy = _copy(trained, tmp_path / "p")
    outside = tmp_path / "outside.npz"
    outside.write_bytes((copy / "weights.npz").read_bytes())
    (copy / "weights.npz").unlink()
    os.symlink(outside, copy / "weights.npz")
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_task_policy(copy)


def test_unexpected_npz_members_are_refused_before_decompressing(trained: Path, tmp_path: Path) -> None:
    copy = _copy(trained, tmp_path / "p")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("risk.0.npy", (copy / "weights.npz").read_bytes()[:0] + b"\0" * 10)
        archive.writestr("bomb.npy", b"\0" * 1_000_000)
    _rehash(copy, buffer.getvalue())
    with pytest.raises(ArtifactError, match=r"unexpected member 'bomb\.npy'"):
        load_task_policy(copy)


def test_size_limits_hold_before_decompressing(trained: Path, tmp_path: Path, monkeypatch) -> None:
    from budgetctl.learn import _artifact

    copy = _copy(trained, tmp_path / "p")
    monkeypatch.setattr(_artifact, "MAX_UNCOMPRESSED_BYTES", 16)
    with pytest.raises(ArtifactError, match="decompressed"):
        load_task_policy(copy)
    monkeypatch.setattr(_artifact, "MAX_WEIGHTS_BYTES", 16)
    with pytest.raises(ArtifactError, match="more than the 16"):
        load_task_policy(copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update(pool_size=-3), "pool_size"),
        (lambda t: t.update(pool_size=10**6), "pool_size"),
        (lambda t: t.update(point=-1.0) if t["table"] else t.update(rule="ac:threshold=7"), "point|rule"),
        (lambda t: t.update(table="risk.9") if t["table"] else t.update(rule="never"), "table|rule"),
    ],
)
def test_task_entries_are_range_checked(trained: Path, tmp_path: Path, change, message: str) -> None:
    copy = _copy(trained, tmp_path / "p")
    _edit(copy, lambda d: change(d["tasks"][0]))
    with pytest.raises(ArtifactError, match=message):
        load_task_policy(copy)


def test_in_sample_warning(trained: Path, pool_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--policy", str(trained), str(pool_file), "--orders", "2"]) == 0
    assert "trained on" in capsys.readouterr().err
    other = write_pool(tmp_path / "other.jsonl", questions=20, seed=5)
    assert main(["evaluate", "--policy", str(trained), str(other), "--orders", "2"]) == 0
    assert "trained on" not in capsys.readouterr().err


def test_more_or_fewer_never_says_negative_fewer() -> None:
    from budgetctl.cli._train import more_or_fewer

    assert more_or_fewer(0.25, "tokens") == "25.0% fewer tokens"
    assert more_or_fewer(-3.792, "tokens") == "379.2% more tokens"


def test_dollars_per_correct_answer_set_the_operating_point(pool_file: Path, tmp_path: Path) -> None:
    """A dearer token buys fewer samples; without token counts dollars cannot be weighed."""
    traj = build_trajectories(load_pool([pool_file]).questions, orders=3, seed=0)
    cheap = fit_task(traj, task="toy", folds=3, value=1.0, price_per_1k=0.001)
    dear = fit_task(traj, task="toy", folds=3, value=1.0, price_per_1k=0.5)
    assert dear.held_out[dear.family]["cost"] < cheap.held_out[cheap.family]["cost"]
    out = tmp_path / "p"
    common = ["train", str(pool_file), "-o", str(out), "--folds", "3", "--orders", "3"]
    assert main([*common, "--value", "1.0"]) == 2  # --value needs --price-per-1k
    assert main([*common, "--value", "1.0", "--price-per-1k", "0.5"]) == 0
    settings = json.loads((out / "policy.json").read_text())["settings"]
    assert settings["value_per_correct"] == 1.0 and settings["price_per_1k"] == 0.5


def test_gain_table_is_a_gain_model_learned_from_the_traces(pool_file: Path) -> None:
    from conftest import states_after

    from budgetctl import GainModel
    from budgetctl.learn import GainTable

    table = GainTable.fit(build_trajectories(load_pool([pool_file]).questions, orders=4, seed=0), min_count=5)
    assert isinstance(table, GainModel)
    split, settled = states_after(["w1", "right"])[-1], states_after(["right"] * 6)[-1]
    assert table.predict_gain(split, 2) > table.predict_gain(settled, 2) >= 0.0
    assert table.predict_gain(states_after(["right"] * 12)[-1], 1) == 0.0  # the pool is spent
    assert table.predict_tokens(split, 3) == pytest.approx(3 * split.tokens / 2)
    with pytest.raises(ValueError):
        table.gains[1, 1, 0, 0] = 1.0
