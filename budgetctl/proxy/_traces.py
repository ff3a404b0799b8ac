"""Production traces: each answered request as one run in the JSONL trace format, in size-rotated files.

The files are what ``budgetctl simulate`` and ``budgetctl train`` read (see docs/trace-format.md):
a ``start`` event with the configuration and the request's metadata, one ``sample`` event per
upstream sample, a ``stop`` event. A run's events are written together when the request ends, so
rotation never splits a run, through :class:`~budgetctl._trace.TraceWriter` (append, flush per
event; a crash loses at most the line being written). Nothing secret is written: no header, no
key, and the prompt text only when asked for.

A shadow policy (``--shadow SPEC``) is replayed over the same samples in the order they came:
where it would have stopped is logged in the run's metadata, so a new policy can be tried on live
traffic while the configured one answers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .._core import RunCore
from .._sample import Sample
from .._state import Result
from .._trace import TRACE_SCHEMA_VERSION, TraceWriter, sample_event, stop_event
from ..policies._base import StopPolicy

__all__ = ["RotatingTraces", "shadow_stop", "run_events"]


class RotatingTraces:
    """Appends runs to ``DIR/proxy-<pid>-<n>.jsonl``, starting file ``n + 1`` once one passes ``max_bytes``.

    Each process writes its own files (no two writers share one), numbered after any that exist.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 64 << 20) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"--trace {self.directory}: exists and is not a directory")
        os.makedirs(self.directory, exist_ok=True)
        self.max_bytes = max_bytes
        self._prefix = f"proxy-{os.getpid()}-"
        taken = [
            int(name[len(self._prefix) : -len(".jsonl")])
            for name in os.listdir(self.directory)
            if name.startswith(self._prefix) and name.endswith(".jsonl") and name[len(self._prefix) : -6].isdigit()
        ]
        self._number = max(taken, default=0)
        self._writer: TraceWriter | None = None
        self._lock = threading.Lock()
        #: Files written so far, oldest first.
        self.files: list[str] = []

    def _open_next(self) -> TraceWriter:
        if self._writer is not None:
            self._writer.close()
        self._number += 1
        path = os.path.join(self.directory, f"{self._prefix}{self._number}.jsonl")
        self.files.append(path)
        self._writer = TraceWriter(path)
        return self._writer

    def write_run(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Append one run's events, rotating first when the current file is full."""
        with self._lock:
            writer = self._writer
            if writer is None or writer.path is None or os.path.getsize(writer.path) >= self.max_bytes:
                writer = self._open_next()
            for event in events:
                writer.write(event)

    def close(self) -> None:
        """Close the current file."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def shadow_stop(policy: StopPolicy, samples: Sequence[tuple[float, Sample]]) -> dict[str, Any]:
    """Where ``policy`` would have stopped on these samples (``(seconds since start, sample)``, in arrival order).

    Replays them through the same :class:`~budgetctl._core.RunCore` a live run uses, one launch at
    a time; ``stopped: false`` when it would have wanted more than the run drew.
    """
    core = RunCore(policy=policy)
    for at, sample in samples:
        core.launch()
        state = core.record(sample, sample.latency or 0.0, at)
        reason = core.decide(state)
        if reason is not None:
            return {
                "stopped": True,
                "samples": core.n_samples + core.n_failed,
                "answer": _jsonable(state.answer),
                "tokens": core.tokens,
                "elapsed": at,
                "stop_reason": reason,
            }
    state = core.state
    return {
        "stopped": False,
        "samples": state.n_samples + state.n_failed,
        "answer": _jsonable(state.answer),
        "tokens": core.tokens,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return str(value)


def run_events(
    run_id: str,
    *,
    config: Mapping[str, Any],
    meta: Mapping[str, Any],
    samples: Sequence[tuple[float, Sample]],
    result: Result,
    started: float,
) -> list[dict[str, Any]]:
    """One request's trace events: start, each sample (at its arrival time), stop."""
    events: list[dict[str, Any]] = [
        {
            "event": "start",
            "v": TRACE_SCHEMA_VERSION,
            "run": run_id,
            "time": started,
            "config": dict(config),
            "meta": dict(meta),
        }
    ]
    events.extend(sample_event(run_id, i, at, sample) for i, (at, sample) in enumerate(samples))
    events.append(stop_event(run_id, result))
    return events
