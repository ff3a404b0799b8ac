"""``budgetctl simulate --plot`` and the sweeps: files that are real PNGs, sweeps without duplicate points,
and the report's wording for the cases that used to mislead (more samples, beyond the oracle, no gold)."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import budgetctl as bc
from budgetctl.cli import main
from budgetctl.policies import MaxSamples
from budgetctl.sim._report import more_or_fewer, sweep_specs

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, read from its IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def write_pool(path: Path, n_questions: int = 12) -> Path:
    """A toy pool where answers disagree by question, so thresholds and windows give different results."""
    lines = []
    for q in range(n_questions):
        answers = ["a"] * (q % 5 + 1) + ["b"] * (q % 3 + 1) + ["c"] * (q % 2)
        answers = (answers * 4)[:12]
        lines.append(
            json.dumps(
                {
                    "id": f"q{q}",
                    "dataset": "toy",
                    "gold": "a",
                    "samples": [{"answer": a, "tokens": 10 + 7 * i} for i, a in enumerate(answers)],
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return write_pool(tmp_path / "pool.jsonl")


def simulate_cli(*argv: str) -> int:
    return main(["simulate", *argv, "--jobs", "1", "--no-progress"])


def test_frontier_and_deadline_pngs_are_written(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, out = tmp_path / "frontier.png", tmp_path / "r.json"
    argv = [str(pool), "--policy", "fixed:n=12", "--policy", "ac:threshold=0.95", "--sweep", "ac:threshold=0.5..0.99"]
    timed = ["--ttft-ms", "80", "--ms-per-token", "15", "--json", str(out)]
    assert simulate_cli(*argv, "--orders", "4", *timed, "--plot", str(png)) == 0
    printed = capsys.readouterr().out
    # The curve gets the 1-2-5 steps between the deadlines asked for; the table keeps to those.
    at = json.loads(out.read_text())["policies"][0]["accuracy_at_deadline"]
    assert list(at) == ["0.1", "0.2", "0.5", "1", "2", "5", "10"]
    assert "acc @ 0.1 s  acc @ 1 s  acc @ 10 s" in printed and "acc @ 0.2 s" not in printed
    twin = tmp_path / "frontier-deadlines.png"
    assert f"wrote {png}" in printed and f"wrote {twin}" in printed
    for path in (png, twin):
        width, height = png_size(path)
        assert 600 <= width <= 2000 and 300 <= height <= 1200, (path, width, height)


def test_no_deadline_png_without_a_latency_model(pool: Path, tmp_path: Path) -> None:
    png = tmp_path / "f.png"
    assert simulate_cli(str(pool), "--orders", "2", "--plot", str(png)) == 0
    assert png_size(png)[0] > 0
    assert not (tmp_path / "f-deadlines.png").exists()


def test_scheduler_plot_and_its_policy(pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "alloc.png"
    argv = [str(pool), "--scheduler", "slots=2", "--orders", "3", "--plot", str(png)]
    assert simulate_cli(*argv, "--policy", "fixed:n=2") == 0
    printed = capsys.readouterr().out
    assert "stop policy of each request in the shared rows: fixed:n=2" in printed and f"wrote {png}" in printed
    width, height = png_size(png)
    assert 500 <= width <= 1600 and 200 <= height <= 1200
    assert simulate_cli(*argv, "--force", "--policy", "fixed:n=2", "--policy", "fixed:n=3") == 2
    assert "at most one --policy" in capsys.readouterr().err


def sweep_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["policies"] if r["kind"] == "sweep"]


@pytest.mark.parametrize("sweep", ["ac:threshold=0.5..0.99", "esc:window=1..12", "fixed:n=1..12"])
def test_sweeps_have_no_duplicate_points(
    pool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: str
) -> None:
    out = tmp_path / "r.json"
    assert simulate_cli(str(pool), "--sweep", sweep, "--sweep-points", "12", "--orders", "6", "--json", str(out)) == 0
    capsys.readouterr()
    rows = sweep_rows(json.loads(out.read_text()))
    outcomes = [(r["accuracy"], r["mean_samples"], r["mean_tokens"]) for r in rows]
    assert len(set(outcomes)) == len(outcomes) >= 2
    assert len({r["policy"] for r in rows}) == len(rows)


def test_the_demo_sweep_merges_equal_thresholds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert simulate_cli("--sweep", "ac:threshold=0.5..0.99", "--orders", "3", "--json", str(out)) == 0
    capsys.readouterr()
    rows = sweep_rows(json.loads(out.read_text()))
    assert len({(r["accuracy"], r["mean_samples"], r["mean_tokens"]) for r in rows}) == len(rows)
    assert rows[0]["policy"].startswith("ac:threshold=0.5..")  # the low thresholds all stop after one sample
    assert rows[-1]["policy"].endswith("0.99")


def test_sweep_spacing_follows_where_results_change() -> None:
    thresholds = [float(s.partition("=")[2]) for s in sweep_specs("ac:threshold=0.5..0.99", 10)]
    assert thresholds[0] == 0.5 and thresholds[-1] == 0.99 and thresholds == sorted(thresholds)
    gaps = [b - a for a, b in itertools.pairwise(thresholds)]
    assert all(later < earlier for earlier, later in itertools.pairwise(gaps))  # denser towards 1
    assert sweep_specs("fixed:n=1..40", 8) == [f"fixed:n={n}" for n in (1, 2, 3, 5, 8, 14, 24, 40)]
    assert sweep_specs("fixed:n=1..4", 10) == ["fixed:n=1", "fixed:n=2", "fixed:n=3", "fixed:n=4"]
    assert sweep_specs("stable:k=2..4", 3) == ["stable:k=2", "stable:k=3", "stable:k=4"]
    assert sweep_specs("ac:threshold=0.2..0.6", 5) == [f"ac:threshold={v}" for v in ("0.2", "0.3", "0.4", "0.5", "0.6")]
    assert sweep_specs("ac:criterion=dirichlet,threshold=0.8..0.9", 2)[0] == "ac:criterion=dirichlet,threshold=0.8"
    with pytest.raises(ValueError, match="exactly one"):
        sweep_specs("ac:threshold=0.9", 3)
    with pytest.raises(ValueError, match="two different"):
        sweep_specs("ac:threshold=0.9..0.9", 3)


def test_more_or_fewer_says_which() -> None:
    assert more_or_fewer(0.198, "samples") == "19.8% fewer samples"
    assert more_or_fewer(-0.198, "samples") == "19.8% more samples"
    assert more_or_fewer(None, "tokens") == "n/a"


def test_gap_closed_beyond_the_oracle_is_not_a_percentage(pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A budget of no samples: the policy answers nothing and spends less than the cost oracle.
    assert simulate_cli(str(pool), "--policy", "fixed:n=3", "--budget-samples", "0", "--orders", "2") == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("fixed:n=3"))
    assert row.split()[-1] == "n/a*"
    assert "n/a*: spends less than the cost oracle" in printed
    assert not any(cell.endswith("%") and float(cell[:-1]) > 100.0 for cell in printed.split() if cell[:1].isdigit())


def test_deadline_without_a_latency_model_names_the_flags(pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate_cli(str(pool), "--deadline", "0") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ttft-ms" in err and "--ms-per-token" in err


def test_a_trace_without_gold_answers_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "runs.jsonl"

    async def sampler() -> bc.Sample:
        return bc.Sample(answer="42", tokens=5)

    for _ in range(2):
        bc.solve_sync(sampler, policy=MaxSamples(3), trace=str(trace))
    assert simulate_cli(str(trace), "--orders", "2") == 0
    captured = capsys.readouterr()
    assert "(no dataset name): 2 questions" in captured.out
    assert f"({trace}, 2 questions) has no gold answers" in captured.err and "meta={'gold': ...}" in captured.err


@settings(max_examples=200, deadline=None)
@given(
    low=st.floats(min_value=0.0, max_value=0.999, allow_nan=False),
    width=st.floats(min_value=1e-3, max_value=100.0, allow_nan=False),
    points=st.integers(min_value=2, max_value=30),
    integral=st.booleans(),
)
def test_sweep_values_are_distinct_ordered_and_span_the_range(
    low: float, width: float, points: int, integral: bool
) -> None:
    if integral:
        low, high = int(low * 10), int(low * 10) + max(1, int(width))
        text = f"fixed:n={low}..{high}"
    else:
        high = low + width
        text = f"ac:threshold={low!r}..{high!r}"
    values = [float(spec.partition("=")[2]) for spec in sweep_specs(text, points)]
    assert len(values) == len(set(values)) and 1 < len(values) <= points
    assert values == sorted(values)
    assert values[0] == pytest.approx(low, rel=1e-3, abs=1e-9) and values[-1] == pytest.approx(high, rel=1e-3)
