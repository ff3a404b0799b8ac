"""Trace logs: what solve writes reads back exactly; torn last lines are tolerated, other damage is named."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import HANG, Replay, run_virtual

import budgetctl as bc
from budgetctl import Budget, Sample, TraceFormatError, TraceWriter, read_events, read_runs
from budgetctl._pool import load_pool
from budgetctl._trace import TORN_MARK, TRACE_SCHEMA_VERSION, TraceWarning
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
    with pytest.warns(TraceWarning, match=rf"{torn}:{len(lines)}: skipped: a last line torn by a crash"):
        assert list(read_events(torn)) == complete[:-1]
    with pytest.warns(TraceWarning):
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
        ('{"event":"sample","run":"r1","tokens":-4}\n', "tokens must be an int in [0, 1e+12], got -4"),
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


# -- crash tolerance: the writer ends a torn tail, readers skip torn lines and name them -------------------


def _solve_into(path: Path, answer: str) -> None:
    bc.solve_sync(Replay([Sample(answer=answer, tokens=2)]), trace=path, meta={"id": answer})


def test_a_writer_ends_a_torn_tail_so_its_own_events_stay_readable(tmp_path: Path) -> None:
    path, lines = _good_trace(tmp_path)
    torn_at = len(lines)  # the crash cut the last event in half
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    with TraceWriter(path) as writer:
        assert writer.repaired == 20
    assert path.read_bytes().endswith(lines[-1][:20].encode() + TORN_MARK)
    _solve_into(path, "after")  # the restarted process appends
    with pytest.warns(TraceWarning, match=rf"{path}:{torn_at}: skipped: a line torn by a crash \(20 bytes\)"):
        runs = read_runs(path)
    assert [len(r.samples) for r in runs] == [2, 1] and runs[1].meta == {"id": "after"}
    assert runs[0].stop is None and runs[1].stop is not None


def test_a_whole_last_line_missing_its_newline_gets_one_and_is_kept(tmp_path: Path) -> None:
    path, lines = _good_trace(tmp_path)
    path.write_text("".join(lines).rstrip("\n"))
    with TraceWriter(path) as writer:
        assert writer.repaired is None
    assert path.read_text() == "".join(lines)  # a newline, no mark
    _solve_into(path, "b")
    assert [r.meta.get("id") for r in read_runs(path)] == [None, "b"]


def test_a_malformed_middle_line_is_an_error_or_skipped_with_skip_bad(tmp_path: Path) -> None:
    _, lines = _good_trace(tmp_path)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:2]) + '{"event":"sample","run":"x"\n' + "".join(lines[2:]))
    with pytest.raises(TraceFormatError, match=rf"{damaged}:3: not valid JSON"):
        read_runs(damaged)
    with pytest.warns(TraceWarning, match=rf"{damaged}:3: skipped: not valid JSON"):
        (run,) = read_runs(damaged, skip_bad=True)
    assert len(run.samples) == 2
    pool = load_pool(damaged, skip_bad=True)
    assert pool.skipped == [(str(damaged), 3, "not valid JSON (Expecting ',' delimiter at column 28)")]


def test_load_pool_skips_torn_lines_and_records_them(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    _solve_into(path, "a")
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the stop event, torn
    with TraceWriter(path):
        pass
    _solve_into(path, "b")
    with pytest.warns(TraceWarning, match="torn by a crash"):
        pool = load_pool(path)
    assert [q.id for q in pool.questions] == ["a", "b"]
    last = len(data.splitlines())
    assert [(line, "torn by a crash" in reason) for _, line, reason in pool.skipped] == [(last, True)]


def test_gzip_traces_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x\.jsonl\.gz: traces are written uncompressed.*x\.jsonl' and gzip it"):
        bc.solve_sync(Replay([Sample(answer="a")]), trace=str(tmp_path / "x.jsonl.gz"))
    assert not (tmp_path / "x.jsonl.gz").exists()


def test_fsync_per_event_writes_the_same_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "durable.jsonl"
    with TraceWriter(path, fsync=True) as writer:
        bc.solve_sync(Replay([Sample(answer="a"), Sample(answer="a")]), trace=writer, policy=MaxSamples(2))
    assert len(synced) == len(path.read_text().splitlines()) == 6  # one per event
