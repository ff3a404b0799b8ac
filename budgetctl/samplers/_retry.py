"""Retries with backoff for transient HTTP failures (429, 5xx, a dropped connection), never past the deadline."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

__all__ = ["Retry", "DEFAULT_RETRY", "call_with_retry", "is_transient", "retry_after"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Retry:
    """How a sampler retries a request that failed with 429, a 5xx status or a dropped connection.

    The ``k``-th retry waits ``initial * multiplier**k`` seconds (capped at ``maximum``), half of it
    jittered, or what the server's ``Retry-After`` asks if that is longer. Other failures (400, 401,
    404...) are never retried: they would fail again. A retry is only made when its wait ends before
    the run's deadline (the enclosing cancel scope's); otherwise the error is raised at once, so the
    run can use the time left for something else.
    """

    #: Retries after the first try (0 disables retrying).
    attempts: int = 3
    #: Seconds before the first retry.
    initial: float = 0.25
    #: Longest backoff, in seconds (a longer ``Retry-After`` from the server is still honoured).
    maximum: float = 8.0
    #: Growth factor of the backoff from one retry to the next.
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 0:
            raise ValueError(f"Retry: attempts must be an int >= 0, got {self.attempts!r}")
        for name in ("initial", "maximum", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Retry: {name} must be a finite number >= 0, got {value!r}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based): half fixed, half jittered."""
        base = min(self.maximum, self.initial * self.multiplier**retry)
        return base / 2 + rng.uniform(0.0, base / 2)


#: What samplers use unless told otherwise: three retries, from a quarter of a second up.
DEFAULT_RETRY = Retry()


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def _is_connection_error(error: BaseException) -> bool:
    # openai.APIConnectionError (and its APITimeoutError) without importing openai here.
    return any(cls.__name__ == "APIConnectionError" for cls in type(error).__mro__)


def retry_after(error: BaseException) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms`` or ``retry-after`` header), if it said."""
    response: Any = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except (TypeError, ValueError):
            continue  # an HTTP date: use our own backoff
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def is_transient(error: BaseException) -> bool:
    """Whether a request that failed with ``error`` may succeed if tried again (429, 5xx, connection)."""
    status = _status(error)
    if status is not None:
        return status == 429 or status >= 500
    return _is_connection_error(error)


async def call_with_retry(call: Callable[[], Awaitable[T]], retry: Retry | None, rng: random.Random) -> T:
    """Await ``call()``, retrying transient failures as ``retry`` says while the deadline allows."""
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as error:
            if retry is None or attempt >= retry.attempts or not is_transient(error):
                raise
            wait = retry.backoff(attempt, rng)
            asked = retry_after(error)
            if asked is not None:
                wait = max(wait, asked)
            if anyio.current_time() + wait >= anyio.current_effective_deadline():
                raise  # the deadline would come first: give the time back to the run
            await anyio.sleep(wait)
            attempt += 1
