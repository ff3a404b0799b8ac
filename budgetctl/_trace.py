"""Trace logs: one JSON line per run event, appended as it happens, readable after any crash.

The format and the crash guarantee are documented in ``docs/trace-format.md``; ``budgetctl train``
and ``budgetctl simulate`` read traces back. In short: each event is one line written by one
``write`` call to a file opened for appending; a crash can tear only the line being written; the
next writer to open the file ends a torn last line with :data:`TORN_MARK`, so that the events it
appends stay readable; readers skip torn lines with a :class:`TraceWarning` naming ``file:line`` and
refuse any other bad line with a :class:`TraceFormatError` naming ``file:line``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, TypeAlias

from ._jsonl import DEFAULT_LIMITS, ReadLimits, TraceFormatError, checked_number, iter_lines, parse_json
from ._sample import Sample
from ._state import Result, RunState

__all__ = [
    "TRACE_SCHEMA_VERSION",
    "TORN_MARK",
    "MAX_TOKENS",
    "TraceWriter",
    "TraceFormatError",
    "TraceWarning",
    "TracedRun",
    "ReadLimits",
    "read_events",
    "read_runs",
]

#: Version of the event format written by this release; readers refuse newer versions.
TRACE_SCHEMA_VERSION = 1

EVENTS = ("start", "sample", "decision", "stop")

#: What a writer appends to a torn last line (one cut short by a crash) before it writes on.
TORN_MARK = b" <torn>\n"

#: Most tokens one sample may carry in a trace or pool (a larger count is damage, refused by name).
MAX_TOKENS = 10**12

#: Deepest nesting of lists in an answer.
MAX_ANSWER_DEPTH = 32

TraceTarget: TypeAlias = "str | os.PathLike[str] | IO[str] | TraceWriter"


class TraceWarning(UserWarning):
    """A reader skipped a line (torn by a crash, or bad and ``skip_bad``); the message names ``file:line``."""


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
    """Appends trace events to a file (or any text stream), one JSON object per line, each written at once.

    Give it a path (opened for appending, closed by :meth:`close`) or an open text stream (left
    open, flushed per event). For a path, each event is encoded first and written by one ``write``
    call, so a crash tears at most that line; a file whose last line was torn by an earlier crash is
    first ended with :data:`TORN_MARK` (``repaired`` then holds the torn line's length in bytes), so
    this writer's events start on a fresh line (a tail longer than ``limits.max_line_bytes`` counts
    as torn). ``fsync=True`` also forces each event to disk before :meth:`write` returns, for logs
    that must survive a power cut or an OS crash.

    A ``.gz`` path is refused: appending to a gzip stream cannot be made crash-safe. Write plain
    ``.jsonl`` and compress it once the runs are done; every reader reads ``.jsonl.gz``.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | IO[str],
        *,
        fsync: bool = False,
        limits: ReadLimits = DEFAULT_LIMITS,
    ) -> None:
        self._file: io.FileIO | None = None
        self._stream: IO[str] | None = None
        #: Bytes of the torn last line this writer found and ended, or ``None`` if the file was whole.
        self.repaired: int | None = None
        if isinstance(target, str | os.PathLike):
            path = os.fspath(target)
            if path.endswith(".gz"):
                raise ValueError(
                    f"{path}: traces are written uncompressed, so that a crash tears at most one line; "
                    f"trace to {path[:-3]!r} and gzip it when the runs are done (readers read .gz)"
                )
            try:
                self._file = io.FileIO(path, "a+")  # O_APPEND: every write lands at the end
            except PermissionError:  # a file we may append to but not read: no tail to check
                self._file = io.FileIO(path, "a")
            self.path: str | None = path
            try:
                if self._file.readable():
                    self.repaired = _end_torn_tail(self._file, limits)
                if self.repaired is not None and fsync:
                    os.fsync(self._file.fileno())
            except BaseException:
                self._file.close()
                raise
        elif hasattr(target, "write"):
            self._stream = target
            self.path = getattr(target, "name", None)
        else:
            raise TypeError(f"trace must be a path, a text stream or a TraceWriter, got {target!r}")
        self._fsync = fsync

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one event; it is in the file (on disk with ``fsync=True``) when this returns."""
        line = _dumps(record) + "\n"
        if self._file is None:
            assert self._stream is not None
            self._stream.write(line)
            self._stream.flush()
            if self._fsync:
                with contextlib.suppress(OSError, io.UnsupportedOperation):
                    os.fsync(self._stream.fileno())
            return
        _write_all(self._file, line.encode("utf-8"))
        if self._fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file if this writer opened it."""
        if self._file is not None and not self._file.closed:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(f"could not write to {file.name!r}")
        view = view[written:]


def _end_torn_tail(file: io.FileIO, limits: ReadLimits) -> int | None:
    """End the file's last line if a crash tore it; return its length, or ``None`` if it was whole.

    A last line without its newline that parses as a JSON object is whole (only its newline is
    missing) and gets one; anything else there is the head of a line cut short, and gets
    :data:`TORN_MARK`, which readers recognise.
    """
    size = os.fstat(file.fileno()).st_size
    if size == 0:
        return None
    file.seek(size - 1)
    if file.read(1) == b"\n":
        return None
    parts: list[bytes] = []
    start = size
    found = False
    while start > 0 and size - start <= limits.max_line_bytes:
        step = min(1 << 20, start)
        file.seek(start - step)
        block = file.read(step) or b""
        newline = block.rfind(b"\n")
        if newline >= 0:
            parts.append(block[newline + 1 :])
            start -= step - newline - 1
            found = True
            break
        parts.append(block)
        start -= step
    tail = b"".join(reversed(parts))
    whole = False
    if found or start == 0:
        try:
            whole = isinstance(json.loads(tail), dict)
        except (ValueError, RecursionError):
            whole = False
    _write_all(file, b"\n" if whole else TORN_MARK)
    return None if whole else size - start


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


#: Called with ``(file, line, reason, torn)`` for each line a reader skips; ``torn``: cut by a crash.
OnSkip: TypeAlias = Callable[[str, int, str, bool], None]


def warn_skipped(path: str, line: int, reason: str, torn: bool = True) -> None:
    """Report a skipped line as a :class:`TraceWarning` naming ``file:line``."""
    warnings.warn(TraceWarning(f"{path}:{line}: skipped: {reason}"), stacklevel=4)


def read_events(
    path: str | os.PathLike[str], *, skip_bad: bool = False, limits: ReadLimits = DEFAULT_LIMITS
) -> Iterator[dict[str, Any]]:
    """Yield the events of a trace file (``.jsonl`` or ``.jsonl.gz``) in order.

    Lines torn by a crash are skipped with a :class:`TraceWarning` naming ``file:line``: a last
    line without its newline that does not parse, and a line a later writer ended with
    :data:`TORN_MARK`. Any other line that is not a valid event raises :class:`TraceFormatError`
    naming ``file:line``, or, with ``skip_bad=True``, is skipped with a warning too. ``limits``
    bounds line length and decompressed size.
    """
    return scan_events(path, skip_bad=skip_bad, limits=limits, on_skip=warn_skipped)


def scan_events(
    path: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    limits: ReadLimits = DEFAULT_LIMITS,
    on_skip: OnSkip | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`read_events`, reporting each skipped line to ``on_skip`` instead of warning."""
    for _, record in _numbered_events(os.fspath(path), skip_bad, limits, on_skip):
        yield record


def _numbered_events(
    name: str, skip_bad: bool, limits: ReadLimits, on_skip: OnSkip | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    torn_mark = TORN_MARK.rstrip(b"\n")
    for number, line, terminated in iter_lines(name, limits, skip_blank=False):
        if line.endswith(torn_mark):
            if on_skip is not None:
                on_skip(name, number, f"a line torn by a crash ({len(line) - len(torn_mark)} bytes)", True)
            continue
        try:
            record = parse_json(name, number, line)
        except TraceFormatError as error:
            if not terminated:
                if on_skip is not None:
                    on_skip(name, number, f"a last line torn by a crash ({len(line)} bytes, no newline)", True)
                continue
            if not skip_bad:
                raise
            if on_skip is not None:
                on_skip(name, number, error.message, False)
            continue
        try:
            yield number, check_event(name, number, record)
        except TraceFormatError as error:
            if not skip_bad:
                raise
            if on_skip is not None:
                on_skip(name, number, error.message, False)


def _optional_number(record: Mapping[str, Any], key: str, low: float | None, high: float | None) -> None:
    value = record.get(key)
    if value is not None:
        checked_number(value, key, low=low, high=high)


def answer_value(value: Any, name: str = "answer", depth: int = 0) -> Any:
    """A JSON answer as a hashable value (arrays become tuples); ``ValueError`` for objects or deep nesting."""
    if isinstance(value, list):
        if depth >= MAX_ANSWER_DEPTH:
            raise ValueError(f"{name} is nested deeper than {MAX_ANSWER_DEPTH} levels")
        return tuple(answer_value(v, name, depth + 1) for v in value)
    if isinstance(value, dict):
        raise ValueError(f"{name} must be a string, number, array or null, got an object")
    return value


def check_event(path: str, line: int, record: Any) -> dict[str, Any]:
    """``record`` if it is a valid event, else :class:`TraceFormatError` naming ``path:line``."""
    if not isinstance(record, dict):
        raise TraceFormatError(path, line, f"expected a JSON object, got {type(record).__name__}")
    event = record.get("event")
    if event not in EVENTS:
        raise TraceFormatError(path, line, f"unknown event {event!r:.60}; expected one of {', '.join(EVENTS)}")
    if not isinstance(record.get("run"), str):
        raise TraceFormatError(path, line, "missing the run id ('run')")
    try:
        if event == "start":
            version = record.get("v")
            if isinstance(version, bool) or not isinstance(version, int) or version > TRACE_SCHEMA_VERSION:
                raise ValueError(
                    f"trace schema version {version!r:.40} is not supported "
                    f"(this release reads <= {TRACE_SCHEMA_VERSION})"
                )
            for key in ("config", "meta"):
                if record.get(key) is not None and not isinstance(record[key], dict):
                    raise ValueError(f"'{key}' must be an object, got {type(record[key]).__name__}")
        elif event == "sample":
            tokens = record.get("tokens")
            if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_TOKENS:
                text = f"{tokens!r:.40}" if not isinstance(tokens, int) or abs(tokens) < 10**30 else "a huge integer"
                raise ValueError(f"sample tokens must be an int in [0, {MAX_TOKENS:.0e}], got {text}")
            _optional_number(record, "latency", 0.0, None)
            _optional_number(record, "logprob", None, 0.0)
            _optional_number(record, "confidence", 0.0, 1.0)
            _optional_number(record, "score", None, None)
            _optional_number(record, "cost", 0.0, None)
            error = record.get("error")
            if error is not None and not isinstance(error, str):
                raise ValueError(f"'error' must be a string or null, got {type(error).__name__}")
            answer_value(record.get("answer"))
    except ValueError as error:
        raise TraceFormatError(path, line, str(error)) from None
    return record


@dataclass
class TracedRun:
    """One run read back from a trace: its configuration, metadata, samples and how it stopped."""

    run: str
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    stop: dict[str, Any] | None = None
    #: Where the run was read from: ``file:line`` of its first event.
    origin: str = ""
    #: The line of its first event.
    line: int = 0


def read_runs(
    path: str | os.PathLike[str], *, skip_bad: bool = False, limits: ReadLimits = DEFAULT_LIMITS
) -> list[TracedRun]:
    """Group a trace file's events into runs, in the order the runs started (skips as :func:`read_events`)."""
    return collect_runs(path, skip_bad=skip_bad, limits=limits, on_skip=warn_skipped)


def collect_runs(
    path: str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    limits: ReadLimits = DEFAULT_LIMITS,
    on_skip: OnSkip | None = None,
) -> list[TracedRun]:
    """:func:`read_runs`, reporting each skipped line to ``on_skip`` instead of warning."""
    runs: dict[str, TracedRun] = {}
    name = os.fspath(path)
    for number, record in _numbered_events(name, skip_bad, limits, on_skip):
        run_id = record["run"]
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = TracedRun(run_id, origin=f"{name}:{number}", line=number)
        event = record["event"]
        if event == "start":
            run.config = dict(record.get("config") or {})
            run.meta = dict(record.get("meta") or {})
        elif event == "sample":
            try:
                sample = Sample(
                    answer=answer_value(record.get("answer")),
                    tokens=record["tokens"],
                    latency=record.get("latency"),
                    logprob=record.get("logprob"),
                    confidence=record.get("confidence"),
                    score=record.get("score"),
                    cost=record.get("cost"),
                    error=record.get("error"),
                )
            except ValueError as error:  # check_event has checked every field; this is a second guard
                raise TraceFormatError(name, number, str(error)) from None
            run.samples.append(sample)
        elif event == "stop":
            run.stop = record
    return list(runs.values())
