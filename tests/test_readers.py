"""Pool and trace readers: bounded memory and time, every error one line naming file:line, numbers range-checked."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from budgetctl import TraceFormatError
from budgetctl._jsonl import ReadLimits
from budgetctl._pool import load_pool
from budgetctl._trace import read_runs
from budgetctl.cli import main

GOOD_SAMPLE = {"answer": "a", "tokens": 5}


def _pool_line(**sample: Any) -> str:
    return json.dumps({"id": "q", "gold": "a", "samples": [GOOD_SAMPLE, {**GOOD_SAMPLE, **sample}]})


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _bomb(path: Path, unit: bytes, size: int) -> Path:
    # Many gzip members of 1 MiB each: a valid .gz file, made in milliseconds.
    path.write_bytes(gzip.compress(unit * (1 << 20), compresslevel=9) * (size >> 20))
    return path


# -- bounded size ----------------------------------------------------------------------------------------


def test_a_gzip_bomb_of_newlines_is_refused_by_default(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.jsonl.gz", b"\n", 128 << 20)  # 128 MiB of newlines in ~130 KB
    assert bomb.stat().st_size < 200_000
    with pytest.raises(TraceFormatError, match=r"bomb\.jsonl\.gz:\d+: inflates \d+ times .* likely gzip bomb"):
        load_pool(bomb)


def test_one_huge_line_is_refused_by_default_before_it_is_held(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "line.jsonl.gz", b"a", 256 << 20)
    with pytest.raises(TraceFormatError, match=r"line\.jsonl\.gz:1: "):
        load_pool(bomb)


def test_line_length_and_inflated_size_limits_are_overridable(tmp_path: Path) -> None:
    pool = _write(tmp_path / "p.jsonl", _pool_line(), _pool_line(answer="x" * 5000).replace('"q"', '"r"'))
    assert len(load_pool(pool).questions) == 2
    with pytest.raises(
        TraceFormatError, match=r"p\.jsonl:2: line longer than 4,000 bytes \(ReadLimits.max_line_bytes\)"
    ):
        load_pool(pool, limits=ReadLimits(max_line_bytes=4000))
    packed = tmp_path / "p.jsonl.gz"
    packed.write_bytes(gzip.compress(pool.read_bytes()))
    with pytest.raises(TraceFormatError, match=r"inflates to more than 1,000 bytes \(ReadLimits.max_bytes\)"):
        load_pool(packed, limits=ReadLimits(max_bytes=1000))
    with pytest.raises(ValueError, match="max_ratio must be a positive number"):
        ReadLimits(max_ratio=0)


# -- broken gzip -----------------------------------------------------------------------------------------


def test_truncated_and_non_gzip_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = gzip.compress(("".join(_pool_line().replace('"q"', f'"q{i}"') + "\n" for i in range(200))).encode())
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text(_pool_line() + "\n")
    for path, message in ((truncated, "the gzip data ends early"), (plain, "not a gzip file")):
        with pytest.raises(TraceFormatError, match=rf"{path.name}:\d+: {message}"):
            load_pool(path)
        assert main(["simulate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    events = [START] + [{"event": "sample", "run": "r1", "i": i, "answer": "a", "tokens": i} for i in range(3000)]
    packed = gzip.compress("".join(json.dumps(e) + "\n" for e in events).encode())
    trace = tmp_path / "cut-trace.jsonl.gz"
    trace.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(TraceFormatError, match=r"cut-trace\.jsonl\.gz:\d{3,}: the gzip data ends early"):
        read_runs(trace)  # named at the line where the data stops, not at line 1


# -- numbers and shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ('{"answer": "a", "tokens": 1e300}', r"samples\[1\]: tokens must be in \[0, 1e\+12\], got 1e\+300"),
        ('{"answer": "a", "tokens": ' + "9" * 4000 + "}", r"tokens must be in .*, got an integer of 4000 digits"),
        ('{"answer": "a", "tokens": ' + "9" * 5000 + "}", r"not valid JSON \(Exceeds the limit"),
        ('{"answer": "a", "tokens": NaN}', r"not valid JSON \(NaN is not a number JSON allows\)"),
        ('{"answer": "a", "tokens": -5}', r"tokens must be in \[0, 1e\+12\], got -5"),
        ('{"answer": "a", "logprob": -' + "9" * 400 + "}", r"logprob is too large, got an integer of 400 digits"),
        ('{"answer": "a", "confidence": 2}', r"confidence must be in \[0, 1\], got 2"),
        ('{"answer": "a", "score": "high"}', r"score must be a number, got 'high'"),
        ('{"answer": ' + "[" * 40 + "]" * 40 + "}", r"answer is nested deeper than 32 levels"),
        ('{"answer": {"x": 1}}', r"answer must be a string, number, array or null, got an object"),
    ],
)
def test_pool_numbers_out_of_range_are_refused_by_name(tmp_path: Path, sample: str, message: str) -> None:
    line = '{"id": "q", "gold": "a", "samples": [{"answer": "a", "tokens": 5}, ' + sample + "]}"
    pool = _write(tmp_path / "pool.jsonl", _pool_line().replace('"q"', '"first"'), line)
    with pytest.raises(TraceFormatError, match=rf"pool\.jsonl:2: .*{message}"):
        load_pool(pool)
    assert [q.id for q in load_pool(pool, skip_bad=True).questions] == ["first"]


def test_deeply_nested_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pool = _write(tmp_path / "deep.jsonl", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(TraceFormatError, match=r"deep\.jsonl:1: JSON nested too deeply"):
        load_pool(pool)
    trace = _write(tmp_path / "deep-trace.jsonl", '{"event":"start","v":1,"run":"r","meta":' + "[" * 100_000)
    with pytest.raises(TraceFormatError, match=r"deep-trace\.jsonl:1: JSON nested too deeply"):
        load_pool(trace)
    assert main(["simulate", str(pool)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _trace(*events: dict[str, Any]) -> list[str]:
    return [json.dumps(e) for e in events]


START = {"event": "start", "v": 1, "run": "r1", "config": {}, "meta": {"id": "q1", "gold": "a"}}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({**START, "meta": "q1"}, r":1: 'meta' must be an object, got str"),
        ({**START, "config": [1, 2]}, r":1: 'config' must be an object, got list"),
        ({**START, "v": True}, r":1: trace schema version True is not supported"),
        ({"event": "sample", "run": "r1", "i": 0, "answer": "a", "tokens": 1e300}, r":1: sample tokens must be an int"),
        ({"event": "sample", "run": "r1", "i": 0, "answer": "a", "tokens": 10**4000}, r"got a huge integer"),
        ({"event": "sample", "run": "r1", "i": 0, "answer": "a", "tokens": 1, "latency": -1}, r"latency must be in"),
        ({"event": "sample", "run": "r1", "i": 0, "answer": {"a": 1}, "tokens": 1}, r"answer must be a string"),
        ({"event": "sample", "run": "r1", "i": 0, "answer": "a", "tokens": 1, "error": 7}, r"'error' must be a string"),
    ],
)
def test_trace_fields_of_the_wrong_type_or_range_are_refused_by_name(
    tmp_path: Path, event: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path / "t.jsonl", *_trace(event))
    with pytest.raises(TraceFormatError, match=rf"t\.jsonl{message}" if message.startswith(":") else message):
        read_runs(path)
    with pytest.raises(TraceFormatError):
        load_pool(path)


def test_a_trace_gold_that_is_an_object_names_the_run_start(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.jsonl", *_trace({**START, "meta": {"id": "q1", "gold": {"x": 1}}}))
    path.write_text(
        path.read_text() + json.dumps({"event": "sample", "run": "r1", "i": 0, "answer": "a", "tokens": 1}) + "\n"
    )
    with pytest.raises(TraceFormatError, match=r"t\.jsonl:1: run r1: meta\.gold must be a string"):
        load_pool(path)
