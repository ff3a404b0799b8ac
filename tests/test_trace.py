"""Trace logs: what solve writes reads back exactly; torn last lines are tolerated, other damage is named."""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import HANG, Replay, run_virtual

import budgetctl as bc
from budgetctl import Budget, Sample, TraceFormatError, TraceWriter, read_events, read_runs
from budgetctl._trace import TRACE_SCHEMA_VERSION
from budgetctl.policies import MaxSamples

pytestmark = pytest.mark.anyio

SCRIPT: list[object] = [
    Sample(answer="a", tokens=12, logprob=-3.0),
    RuntimeError("rate limited"),
    Sample(answer=("x", 1), tokens=7, score=0.5),
    Sample(answer="a", tokens=9, confidence=0.8, cost=0.01),
    Sample(answer=None, tokens=3),
]


async def test_solve_trace_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    meta = {"id": "q1", "gold": "a", "dataset": "demo"}
    result = await bc.solve(
        Replay(SCRIPT),
        trace=path,
        meta=meta,
        budget=Budget(tokens=1000),
        policy=MaxSamples(10),
        max_failures=None,
        concurrency=1,
    )
    events = list(read_events(path))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "stop"
    assert kinds.count("sample") == len(result.samples) == 5
    assert kinds.count("decision") == 6  # one per outcome, the Exhausted call included
    start = events[0]
    assert start["v"] == TRACE_SCHEMA_VERSION and start["meta"] == meta
    assert start["config"]["budget"]["tokens"] == 1000
    assert start["config"]["policy"] == "MaxSamples(n=10)"
    assert start["config"]["concurrency"] == 1 and start["config"]["max_failures"] is None
    assert [e["i"] for e in events if e["event"] == "sample"] == [0, 1, 2, 3, 4]
    times = [e["at"] for e in events[1:]]
    assert times == sorted(times)
    assert all(e["run"] == start["run"] for e in events)

    decisions = [e for e in events if e["event"] == "decision"]
    assert [d["stop"] for d in decisions] == [False] * 5 + [True]
    assert decisions[-1]["reason"] == "exhausted"
    assert decisions[-1]["state"]["counts"] == [["a", 2.0], [["x", 1], 1.0]]
    assert decisions[-1]["state"]["n_failed"] == 1

    (run,) = read_runs(path)
    assert run.run == start["run"] and run.meta == meta and run.config == start["config"]
    assert run.stop is not None and run.stop["reason"] == result.stop_reason == "exhausted"
    assert run.stop["answer"] == result.answer == "a" and run.stop["tokens"] == result.tokens == 31
    assert run.samples == list(result.samples)  # tuples come back as tuples, latencies exactly
    assert run.samples[1].error == "RuntimeError: rate limited"


async def test_trace_is_flushed_event_by_event(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    sampler = Replay([Sample(answer="a", tokens=1), HANG, HANG])  # after the sample, nothing else happens
    async with bc.open_run(sampler, trace=path, concurrency=2) as run:
        async for state in run.updates():
            if state.n_samples == 1:
                # The run is still going: its events so far are already on disk.
                assert [e["event"] for e in read_events(path)] == ["start", "sample", "decision"]
                break
    assert [e["event"] for e in read_events(path)][-1] == "stop"


def test_concurrent_runs_share_one_writer(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"

    async def main() -> list[bc.Result]:
        results: list[bc.Result] = []
        with TraceWriter(path) as writer:

            async def one(answer: str, delay: float) -> None:
                script = [Sample(answer=answer, tokens=1)] * 3
                results.append(await bc.solve(Replay(script, delay=delay), trace=writer, meta={"id": answer}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "p", 1.0)
                tg.start_soon(one, "q", 0.7)
        return results

    results = run_virtual(main)
    lines = path.read_text().splitlines()
    runs_in_file = [json.loads(line)["run"] for line in lines]
    assert runs_in_file[:2] != [runs_in_file[0]] * 2  # the two runs really interleave
    runs = read_runs(path)
    started = [json.loads(line)["meta"]["id"] for line in lines if json.loads(line)["event"] == "start"]
    assert [r.meta["id"] for r in runs] == started and sorted(started) == ["p", "q"]  # in start order
    assert {r.stop["answer"] for r in runs if r.stop} == {res.answer for res in results} == {"p", "q"}
    assert all(len(r.samples) == 3 for r in runs)


async def test_a_text_stream_target_is_left_open() -> None:
    buffer = io.StringIO()
    await bc.solve(Replay([Sample(answer="a")]), trace=buffer, concurrency=1)
    assert not buffer.closed
    assert [json.loads(line)["event"] for line in buffer.getvalue().splitlines()][::2] == ["start", "decision", "stop"]


async def test_infinite_limits_are_written_as_null(tmp_path: Path) -> None:
    # math.inf means "no limit"; JSON has no Infinity, so the trace says null, as for None.
    path = tmp_path / "inf.jsonl"
    await bc.solve(
        Replay([Sample(answer="a")]), trace=path, deadline=math.inf, budget=Budget(seconds=math.inf), concurrency=1
    )
    start, *_, decision, stop = read_events(path)
    assert start["config"]["deadline"] is None and start["config"]["budget"]["seconds"] is None
    assert decision["state"]["time_left"] is None
    assert stop["reason"] == "exhausted"


def test_gzipped_traces_read_back(tmp_path: Path) -> None:
    plain = tmp_path / "t.jsonl"
    bc.solve_sync(Replay([Sample(answer="z", tokens=4)]), trace=plain)
    packed = tmp_path / "t.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(read_events(packed)) == list(read_events(plain))


# -- damaged files ---------------------------------------------------------------------------------------


def _good_trace(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "good.jsonl"
    bc.solve_sync(Replay([Sample(answer="a", tokens=2), Sample(answer="b", tokens=2)]), trace=path)
    return path, path.read_text().splitlines(keepends=True)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path, lines = _good_trace(tmp_path)
    complete = list(read_events(path))
    torn = tmp_path / "torn.jsonl"
    torn.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert list(read_events(torn)) == complete[:-1]
    (run,) = read_runs(torn)
    assert run.stop is None and len(run.samples) == 2


def test_a_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path, lines = _good_trace(tmp_path)
    unterminated = tmp_path / "unterminated.jsonl"
    unterminated.write_text("".join(lines).rstrip("\n"))
    assert list(read_events(unterminated)) == list(read_events(path))


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"event":"sample","run":"r1","i":0,"tokens":1', "not valid JSON"),
        ("[1, 2, 3]\n", "expected a JSON object, got list"),
        ('{"event":"guess","run":"r1"}\n', "unknown event 'guess'"),
        ('{"event":"sample","i":0,"tokens":1}\n', "missing the run id"),
        ('{"event":"sample","run":"r1","tokens":-4}\n', "tokens must be an int >= 0, got -4"),
        ('{"event":"sample","run":"r1","tokens":"many"}\n', "got 'many'"),
        ("\n", "not valid JSON"),
    ],
)
def test_a_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    _, lines = _good_trace(tmp_path)
    damaged = tmp_path / "damaged.jsonl"
    if not bad_line.endswith("\n"):
        bad_line += "\n"  # a bad line followed by more lines is damage, not a torn write
    damaged.write_text("".join(lines[:2]) + bad_line + "".join(lines[2:]))
    with pytest.raises(TraceFormatError) as info:
        list(read_events(damaged))
    error = info.value
    assert error.line == 3 and error.path == str(damaged)
    assert str(error).startswith(f"{damaged}:3: ")
    assert message in str(error)


def test_a_bad_last_line_with_its_newline_is_not_a_torn_write(tmp_path: Path) -> None:
    _, lines = _good_trace(tmp_path)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines) + "{oops}\n")
    with pytest.raises(TraceFormatError, match=rf":{len(lines) + 1}: not valid JSON"):
        list(read_events(damaged))


@pytest.mark.parametrize("version", [TRACE_SCHEMA_VERSION + 1, 99, "1", None])
def test_newer_or_missing_schema_versions_are_refused(tmp_path: Path, version: Any) -> None:
    path = tmp_path / "future.jsonl"
    start: dict[str, Any] = {"event": "start", "run": "r1", "config": {}, "meta": {}}
    if version is not None:
        start["v"] = version
    path.write_text(json.dumps(start) + "\n")
    with pytest.raises(TraceFormatError, match=rf"{path}:1: trace schema version .* not supported"):
        list(read_events(path))


def test_read_runs_groups_events_without_a_start(tmp_path: Path) -> None:
    # A file cut at its head (log rotation) still yields the runs it holds.
    path = tmp_path / "headless.jsonl"
    events = [
        {"event": "sample", "run": "r9", "i": 0, "at": 0.1, "answer": "a", "tokens": 3},
        {"event": "stop", "run": "r9", "at": 0.2, "reason": "policy", "answer": "a"},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    (run,) = read_runs(path)
    assert run.run == "r9" and run.config == {} and run.samples == [Sample(answer="a", tokens=3)]


def test_trace_writer_rejects_what_it_cannot_write_to() -> None:
    with pytest.raises(TypeError, match="trace must be a path"):
        TraceWriter(42)  # type: ignore[arg-type]
