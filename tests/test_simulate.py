"""``budgetctl.simulate`` and ``budgetctl simulate``: inputs, outputs, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

import budgetctl as bc
from budgetctl._pool import load_pool
from budgetctl.cli import main
from budgetctl.policies import AdaptiveConsistency, MaxSamples, PolicySpecError
from budgetctl.sim import LatencyModel, simulate
from budgetctl.sim._report import format_table

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"


def write_pool(path: Path, questions: list[dict[str, Any]], *, gz: bool = False) -> Path:
    text = "".join(json.dumps(q) + "\n" for q in questions)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as stream:
            stream.write(text)
    else:
        path.write_text(text)
    return path


def question(qid: str, answers: list[Any], gold: Any, tokens: int | None = 10, dataset: str = "toy") -> dict[str, Any]:
    return {
        "id": qid,
        "dataset": dataset,
        "gold": gold,
        "question": f"question {qid}",
        "samples": [{"answer": a, "tokens": tokens, "correct": a == gold} for a in answers],
    }


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(
        tmp_path / "pool.jsonl",
        [
            question("easy", ["a"] * 8, "a"),
            question("split", ["a", "b", "a", "b", "a", "b", "b", "b"], "b"),
            question("hard", ["x", "y", "z", None, "x", "y", "w", "v"], "x"),
        ],
    )


def test_rows_and_json_fields(pool: Path) -> None:
    result = simulate(pool, ["fixed:n=8", AdaptiveConsistency(0.95)], orders=30, seed=1, price_per_token=0.001)
    data = result.to_dict()
    assert data["pools"] == [str(pool)] and data["orders"] == 30 and data["seed"] == 1
    names = [row["policy"] for row in data["policies"]]
    assert names[:2] == ["fixed:n=8", "AdaptiveConsistency(threshold=0.95, criterion='beta', top_k=5)"]
    assert {"majority@8 (full pool)", "cost oracle", "pass@8 (first correct)"} <= set(names)
    for row in data["policies"]:
        assert {"policy", "accuracy", "mean_samples", "mean_tokens", "retention"} <= set(row)
    fixed = result.overall.row("fixed:n=8")
    full = result.overall.row("majority@8 (full pool)")
    assert fixed.accuracy == full.accuracy == result.overall.full_pool_accuracy
    assert fixed.mean_samples == 8 and fixed.mean_tokens == 80 and fixed.mean_dollars == pytest.approx(0.08)
    ac = result.overall.row(names[1])
    assert ac.mean_samples < 8 and ac.savings is not None and 0 < ac.savings < 1
    assert result.overall.row("cost oracle").gap_closed == pytest.approx(1.0)
    json.dumps(data)  # JSON-ready


def test_same_seed_same_result_and_orders_matter(pool: Path) -> None:
    one = simulate(pool, ["stable:k=2"], orders=20, seed=3).to_dict()["policies"][0]
    two = simulate(pool, ["stable:k=2"], orders=20, seed=3).to_dict()["policies"][0]
    assert one == two


def test_unknown_tokens_are_reported_as_unknown(tmp_path: Path) -> None:
    path = write_pool(tmp_path / "p.jsonl.gz", [question("q", ["a", "a", "b"], "a", tokens=None)], gz=True)
    result = simulate(path, ["fixed:n=2"], orders=5)
    row = result.overall.row("fixed:n=2")
    assert row.mean_tokens is None and row.mean_dollars is None and row.mean_samples == 2
    assert "unknown" in format_table(result)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(question("ok", ["a"], "a")) + "\n{not json\n")
    with pytest.raises(bc.TraceFormatError, match=r"bad\.jsonl:2: not valid JSON"):
        simulate(path, ["fixed:n=1"], orders=2)
    result = simulate(path, ["fixed:n=1"], orders=2, skip_bad=True)
    assert result.skipped == [(str(path), 2, result.skipped[0][2])]
    assert result.overall.n_questions == 1


def test_negative_tokens_are_an_error(tmp_path: Path) -> None:
    path = write_pool(tmp_path / "neg.jsonl", [question("q", ["a"], "a", tokens=-3)])
    with pytest.raises(bc.TraceFormatError, match=r"neg\.jsonl:1: samples\[0\]: tokens must be in \[0, .*\], got -3"):
        load_pool(path)


def test_dataset_filter_and_unknown_dataset(tmp_path: Path) -> None:
    path = write_pool(
        tmp_path / "two.jsonl",
        [question("q1", ["a"], "a", dataset="one"), question("q2", ["b"], "a", dataset="two")],
    )
    result = simulate(path, ["fixed:n=1"], orders=3, datasets=["two"])
    assert [d.dataset for d in result.datasets] == ["two"] and result.overall.full_pool_accuracy == 0
    with pytest.raises(ValueError, match="datasets there: \\['one', 'two'\\]"):
        simulate(path, ["fixed:n=1"], orders=3, datasets=["three"])


def test_several_datasets_get_their_own_rows_and_a_union(tmp_path: Path) -> None:
    path = write_pool(
        tmp_path / "two.jsonl",
        [question("q1", ["a", "a"], "a", dataset="one"), question("q2", ["b", "b"], "a", dataset="two")],
    )
    result = simulate(path, ["fixed:n=2"], orders=3)
    assert [d.dataset for d in result.datasets] == ["one", "two"]
    assert result.overall.dataset == "all" and result.overall.row("fixed:n=2").accuracy == 0.5


def test_trace_logs_are_pools(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    answers = iter(["a", "b", "a", "a"])

    async def sampler() -> bc.Sample:
        return bc.Sample(answer=next(answers), tokens=7)

    bc.solve_sync(sampler, policy=MaxSamples(4), trace=trace, meta={"id": "t1", "gold": "a", "dataset": "logged"})
    result = simulate(trace, ["fixed:n=3"], orders=10)
    assert result.datasets[0].dataset == "logged" and result.datasets[0].pool_size == 4
    assert result.overall.row("pass@4 (first correct)").accuracy == 1.0


def test_deadline_accuracy_needs_time(pool: Path) -> None:
    slow = LatencyModel(ttft=0.05, per_token=0.01, concurrency=1)  # a 10-token sample takes 0.15 s
    result = simulate(pool, ["fixed:n=8"], orders=10, latency=slow, deadlines=(0.1, 1.0, 10.0))
    at = result.overall.row("fixed:n=8").accuracy_at_deadline
    assert at["0.1"] == 0.0  # nothing is back by 100 ms
    assert at["10"] == result.overall.row("fixed:n=8").accuracy  # 8 x 0.15 s fits in 10 s
    assert 0 < at["1"] <= at["10"]
    with pytest.raises(ValueError, match="timed latency model"):
        simulate(pool, ["fixed:n=8"], orders=2, deadline=1.0)


def test_unknown_policy_lists_close_matches(pool: Path) -> None:
    with pytest.raises(PolicySpecError, match="did you mean ac"):
        simulate(pool, ["acc:threshold=0.9"], orders=2)
    with pytest.raises(PolicySpecError, match="did you mean window"):
        simulate(pool, ["esc:windw=3"], orders=2)


def test_cli_writes_table_json_and_plot(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    png = tmp_path / "f.png"
    code = main(
        [
            "simulate",
            str(pool),
            "--policy",
            "ac:threshold=0.9",
            "--sweep",
            "esc:window=1..3",
            "--sweep-points",
            "3",
            "--orders",
            "5",
            "--json",
            str(out),
            "--plot",
            str(png),
            "--jobs",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "ac:threshold=0.9" in printed and "cost oracle" in printed
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["policies"] if r["kind"] == "sweep"] == [f"esc:window={w}" for w in (1, 2, 3)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(pool), "--policy", "esk:window=5", "--orders", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("budgetctl simulate: error:") and "did you mean esc" in err
    assert main(["simulate", str(pool) + ".missing"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_runs_the_bundled_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--orders", "3", "--jobs", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "demo_fcot_date" in printed and "date_understanding: 200 questions" in printed


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "esc_lastletters_gpt35.jsonl").exists(), reason="needs ../shared/traces (real pools)")
def test_reproduces_the_reference_figures_on_esc_last_letters() -> None:
    # ../shared/traces/README.md: AC (Beta, 0.95, max 40) uses 6.43 samples at .832; ESC (window 5) 8.81 at .831.
    result = simulate(SHARED / "esc_lastletters_gpt35.jsonl", ["ac:threshold=0.95", "esc:window=5"], orders=40, jobs=1)
    ac = result.overall.row("ac:threshold=0.95")
    esc = result.overall.row("esc:window=5")
    assert ac.mean_samples == pytest.approx(6.43, abs=0.15) and ac.accuracy == pytest.approx(0.832, abs=0.004)
    assert esc.mean_samples == pytest.approx(8.81, abs=0.3) and esc.accuracy == pytest.approx(0.831, abs=0.004)
    assert result.overall.full_pool_accuracy == pytest.approx(0.832, abs=0.001)


def test_cli_scheduler_mode(pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(pool), "--scheduler", "slots=2", "--budget-per-question", "2", "--orders", "3"]) == 0
    printed = capsys.readouterr().out
    assert "shared budget: 2 samples per question" in printed and "uniform" in printed
    assert main(["simulate", str(pool), "--budget-per-question", "2"]) == 2
    assert "needs --scheduler" in capsys.readouterr().err
    assert main(["simulate", str(pool), "--scheduler", "slot=2"]) == 2
    assert "--scheduler takes slots=N" in capsys.readouterr().err
