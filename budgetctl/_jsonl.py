"""Reading JSON-lines files (pools and traces, plain or gzip) with bounded memory and time.

Every limit here is on the input, so that a hostile or damaged file fails fast with one line naming
the file and line instead of exhausting memory, taking minutes, or escaping as a raw traceback:

* a line may hold at most ``ReadLimits.max_line_bytes`` (default 64 MiB);
* a ``.gz`` file may inflate to at most ``ReadLimits.max_bytes`` (default 4 GiB), and beyond its
  first ``ratio_after`` bytes (64 MiB) to at most ``max_ratio`` (200) times its compressed size: a
  gzip bomb (128 MiB of newlines in 130 KB) is refused after its first 64 MiB, not read to the end;
* a JSON value may nest only as deep as Python's parser allows (``RecursionError`` becomes an
  error), integers are bounded by Python's 4,300-digit limit, and ``NaN``/``Infinity`` are refused.

Blank lines are skipped (pools) or reported (traces) without a Python step per newline.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

__all__ = ["ReadLimits", "TraceFormatError", "DEFAULT_LIMITS", "iter_lines", "parse_json", "checked_number"]

MiB = 1 << 20
_CHUNK = 1 * MiB
_NEWLINES = re.compile(rb"\n+")


class TraceFormatError(ValueError):
    """A trace or pool file is not what it should be; the message starts with ``file:line:`` (or ``file:``)."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        where = os.fspath(path) if line is None else f"{os.fspath(path)}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = os.fspath(path)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what one input file may make a reader hold or do (see the module docstring)."""

    #: Longest line, in bytes (without its newline).
    max_line_bytes: int = 64 * MiB
    #: Most bytes a ``.gz`` file may inflate to.
    max_bytes: int = 4096 * MiB
    #: Largest inflated/compressed ratio of a ``.gz`` file, checked once ``ratio_after`` bytes are out.
    max_ratio: float = 200.0
    #: Inflated bytes below which the ratio is not checked (small, repetitive files compress well).
    ratio_after: int = 64 * MiB

    def __post_init__(self) -> None:
        for name in ("max_line_bytes", "max_bytes", "max_ratio", "ratio_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"ReadLimits.{name} must be a positive number, got {value!r}")


DEFAULT_LIMITS = ReadLimits()


def _size(n: float) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n:,.0f} bytes"


class _Source:
    """A file's bytes, inflated when its name ends in ``.gz``, with the inflation limits enforced."""

    def __init__(self, path: str, limits: ReadLimits) -> None:
        self.path = path
        self.limits = limits
        if os.path.isdir(path):
            raise TraceFormatError(path, None, "is a directory, not a pool or trace file (.jsonl or .jsonl.gz)")
        self._raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="rb") if path.endswith(".gz") else None
        self.inflated = 0

    def read(self, line: int) -> bytes:
        if self._gzip is None:
            return self._raw.read(_CHUNK)
        try:
            chunk = self._gzip.read1(_CHUNK)  # what one step inflates: lines before a cut still come out
        except gzip.BadGzipFile as error:
            raise TraceFormatError(self.path, line, f"not a gzip file, or corrupt gzip data ({error})") from None
        except EOFError:
            raise TraceFormatError(
                self.path, line, "the gzip data ends early: the file is truncated (cut short while copied?)"
            ) from None
        except (zlib.error, OSError) as error:
            raise TraceFormatError(self.path, line, f"corrupt gzip data ({error})") from None
        self.inflated += len(chunk)
        limits = self.limits
        if self.inflated > limits.max_bytes:
            raise TraceFormatError(
                self.path, line, f"inflates to more than {_size(limits.max_bytes)} (ReadLimits.max_bytes)"
            )
        if self.inflated > limits.ratio_after:
            ratio = self.inflated / max(self._raw.tell(), 1)
            if ratio > limits.max_ratio:
                raise TraceFormatError(
                    self.path,
                    line,
                    f"inflates {ratio:,.0f} times (more than ReadLimits.max_ratio={limits.max_ratio:g}): "
                    "refused as a likely gzip bomb",
                )
        return chunk

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()
        self._raw.close()


def iter_lines(
    path: str | os.PathLike[str], limits: ReadLimits = DEFAULT_LIMITS, *, skip_blank: bool
) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(line number, bytes without the newline, whether a newline ended it)`` for each line.

    ``skip_blank`` skips empty lines (their numbers still count). A line longer than
    ``limits.max_line_bytes`` raises :class:`TraceFormatError` as soon as it grows past the limit.
    """
    name = os.fspath(path)
    source = _Source(name, limits)
    try:
        number = 0  # lines completed so far
        pending: list[bytes] = []
        pending_size = 0
        while chunk := source.read(number + 1):
            start = 0
            while start < len(chunk):
                if not pending and chunk[start] == 0x0A:
                    run = _NEWLINES.match(chunk, start)
                    assert run is not None
                    if skip_blank:  # a whole run of blank lines in one C step
                        number += run.end() - start
                        start = run.end()
                        continue
                    number += 1
                    yield number, b"", True
                    start += 1
                    continue
                end = chunk.find(b"\n", start)
                piece = chunk[start:] if end < 0 else chunk[start:end]
                pending_size += len(piece)
                if pending_size > limits.max_line_bytes:
                    raise TraceFormatError(
                        name,
                        number + 1,
                        f"line longer than {_size(limits.max_line_bytes)} (ReadLimits.max_line_bytes)",
                    )
                pending.append(piece)
                if end < 0:
                    break
                number += 1
                line = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                pending_size = 0
                if line or not skip_blank:
                    yield number, line, True
                start = end + 1
        if pending:
            yield number + 1, b"".join(pending), False
    finally:
        source.close()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(path: str | os.PathLike[str], number: int, line: bytes) -> Any:
    """Parse one line; every way it can fail becomes a :class:`TraceFormatError` naming ``path:number``."""
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise TraceFormatError(path, number, f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise TraceFormatError(path, number, "JSON nested too deeply") from None
    except UnicodeDecodeError as error:
        raise TraceFormatError(path, number, f"not valid UTF-8 (at byte {error.start})") from None
    except ValueError as error:  # NaN/Infinity, an integer of more than 4,300 digits
        raise TraceFormatError(path, number, f"not valid JSON ({error})") from None


def checked_number(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float if it is a JSON number within ``[low, high]``; else ``ValueError`` naming ``name``.

    Integers are compared before any conversion, so ``10**4000`` is refused by name rather than
    overflowing.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {_short(value)}")
    if isinstance(value, float) and value != value:
        raise ValueError(f"{name} must be a number, got NaN")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ValueError(f"{name} must be in {bounds}, got {_short(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large, got {_short(value)}") from None
    if result in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {_short(value)}")
    return result


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        try:
            return f"an integer of {len(str(abs(value)))} digits"
        except ValueError:  # beyond Python's digit limit for str()
            return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
