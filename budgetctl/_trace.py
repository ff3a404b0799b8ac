"""Trace logs: one JSON line per run event, appended and flushed as it happens.

The format (documented in ``docs/trace-format.md``) is what ``budgetctl train`` and
``budgetctl simulate`` read back. Writing is append-only so that a crash loses at most the line
being written; reading tolerates that torn last line and reports any other bad line with its file
and line number.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeAlias

from ._sample import Sample
from ._state import Result, RunState

__all__ = [
    "TRACE_SCHEMA_VERSION",
    "TraceWriter",
    "TraceFormatError",
    "TracedRun",
    "read_events",
    "read_runs",
    "open_text",
]

#: Version of the event format written by this release; readers refuse newer versions.
TRACE_SCHEMA_VERSION = 1

EVENTS = ("start", "sample", "decision", "stop")

TraceTarget: TypeAlias = "str | os.PathLike[str] | IO[str] | TraceWriter"


class TraceFormatError(ValueError):
    """A trace or pool file has a line that is not what it should be; names the file and line."""

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        super().__init__(f"{os.fspath(path)}:{line}: {message}")
        self.path = os.fspath(path)
        self.line = line
        self.message = message


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a text file for reading, transparently gunzipping ``.gz`` files."""
    if os.fspath(path).endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _dumps(record: Mapping[str, Any]) -> str:
    try:
        return json.dumps(record, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        # An infinite cap or deadline (``deadline=math.inf``) means "no limit": write null, as for
        # None, rather than Infinity, which is not JSON.
        return json.dumps(_finite(record), separators=(",", ":"), default=str, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class TraceWriter:
    """Appends trace events to a file (or any text stream), one JSON object per line, flushed per event.

    Give it a path (opened in append mode, closed by :meth:`close`) or an open text stream (left
    open). ``fsync=True`` also forces each event to disk, for logs that must survive a power cut.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[str], *, fsync: bool = False) -> None:
        if isinstance(target, str | os.PathLike):
            self._stream: IO[str] = open(target, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._owned = True
            self.path: str | None = os.fspath(target)
        elif hasattr(target, "write"):
            self._stream = target
            self._owned = False
            self.path = getattr(target, "name", None)
        else:
            raise TypeError(f"trace must be a path, a text stream or a TraceWriter, got {target!r}")
        self._fsync = fsync

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one event and flush it."""
        self._stream.write(_dumps(record) + "\n")
        self._stream.flush()
        if self._fsync:
            with contextlib.suppress(OSError, io.UnsupportedOperation):
                os.fsync(self._stream.fileno())

    def close(self) -> None:
        """Close the file if this writer opened it."""
        if self._owned and not self._stream.closed:
            self._stream.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sample_event(run: str, index: int, at: float, sample: Sample) -> dict[str, Any]:
    """The trace record of one sample."""
    return {
        "event": "sample",
        "run": run,
        "i": index,
        "at": round(at, 6),
        "answer": sample.answer,
        "tokens": sample.tokens,
        "latency": sample.latency,
        "logprob": sample.logprob,
        "confidence": sample.confidence,
        "score": sample.score,
        "cost": sample.cost,
        "error": sample.error,
    }


def state_record(state: RunState) -> dict[str, Any]:
    """A run snapshot as plain JSON values (``counts`` as ``[answer, weight]`` pairs)."""
    record = state._asdict()
    record["counts"] = [[k, v] for k, v in state.counts.items()]
    for key in ("time_left", "elapsed", "dollars"):
        value = record[key]
        record[key] = None if value is None else round(value, 6)
    return record


def decision_event(run: str, at: float, state: RunState, reason: str | None) -> dict[str, Any]:
    """The trace record of one stop decision and the snapshot it was taken on."""
    return {
        "event": "decision",
        "run": run,
        "at": round(at, 6),
        "stop": reason is not None,
        "reason": reason,
        "state": state_record(state),
    }


def stop_event(run: str, result: Result) -> dict[str, Any]:
    """The trace record of a run's end."""
    return {
        "event": "stop",
        "run": run,
        "at": round(result.elapsed, 6),
        "reason": result.stop_reason,
        "answer": result.answer,
        "confidence": result.confidence,
        "n_samples": result.n_samples,
        "n_failed": result.n_failed,
        "n_cancelled": result.n_cancelled,
        "wasted_tokens": result.wasted_tokens,
        "tokens": result.tokens,
        "dollars": result.dollars,
    }


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the events of a trace file in order.

    A last line without its newline that does not parse is a write torn by a crash and is skipped;
    any other line that is not a valid event raises :class:`TraceFormatError` with file and line.
    """
    with open_text(path) as stream:
        pending: tuple[int, str] | None = None
        for number, line in enumerate(stream, start=1):
            if pending is not None:
                yield _parse_event(path, *pending)
            pending = (number, line)
        if pending is not None:
            number, line = pending
            if line.endswith("\n"):
                yield _parse_event(path, number, line)
            else:
                try:
                    yield _parse_event(path, number, line)
                except TraceFormatError:
                    return  # torn last write


def _parse_event(path: str | os.PathLike[str], number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceFormatError(path, number, f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise TraceFormatError(path, number, f"expected a JSON object, got {type(record).__name__}")
    event = record.get("event")
    if event not in EVENTS:
        raise TraceFormatError(path, number, f"unknown event {event!r}; expected one of {', '.join(EVENTS)}")
    if not isinstance(record.get("run"), str):
        raise TraceFormatError(path, number, "missing the run id ('run')")
    if event == "start":
        version = record.get("v")
        if not isinstance(version, int) or version > TRACE_SCHEMA_VERSION:
            raise TraceFormatError(
                path,
                number,
                f"trace schema version {version!r} is not supported (this release reads <= {TRACE_SCHEMA_VERSION})",
            )
    if event == "sample":
        tokens = record.get("tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise TraceFormatError(path, number, f"sample tokens must be an int >= 0, got {tokens!r}")
    return record


@dataclass
class TracedRun:
    """One run read back from a trace: its configuration, metadata, samples and how it stopped."""

    run: str
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    stop: dict[str, Any] | None = None


def _hashable(value: Any) -> Any:
    # JSON has no tuples: an answer logged as a tuple comes back as a list.
    return tuple(_hashable(v) for v in value) if isinstance(value, list) else value


def read_runs(path: str | os.PathLike[str]) -> list[TracedRun]:
    """Group a trace file's events into runs, in the order the runs started."""
    runs: dict[str, TracedRun] = {}
    for record in read_events(path):
        run_id = record["run"]
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = TracedRun(run_id)
        event = record["event"]
        if event == "start":
            run.config = dict(record.get("config") or {})
            run.meta = dict(record.get("meta") or {})
        elif event == "sample":
            run.samples.append(
                Sample(
                    answer=_hashable(record.get("answer")),
                    tokens=record["tokens"],
                    latency=record.get("latency"),
                    logprob=record.get("logprob"),
                    confidence=record.get("confidence"),
                    score=record.get("score"),
                    cost=record.get("cost"),
                    error=record.get("error"),
                )
            )
        elif event == "stop":
            run.stop = record
    return list(runs.values())
