"""Retries with backoff for transient HTTP failures (429, 5xx, a dropped connection), never past the deadline.

Failures that no retry can fix (connection refused, an unknown host, 400, 401, 403, 404, 405, 422)
become :class:`~budgetctl.FatalSamplerError` at once, naming the URL and what to check: the run
then stops instead of sending the same doomed request again and again.
"""

from __future__ import annotations

import math
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from .._errors import FatalSamplerError

__all__ = ["Retry", "DEFAULT_RETRY", "call_with_retry", "fatal_error", "is_transient", "retry_after"]

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


#: HTTP statuses that the same request gets every time, with what the user should check.
_FATAL_STATUS = {
    400: "the server rejected the request: check the model name and the parameters it accepts "
    "(max_tokens, temperature, n, logprobs, params)",
    401: "the server refused the API key: check it (api_key=, --api-key or $OPENAI_API_KEY)",
    403: "the API key may not use this model or endpoint: check the key's permissions and the model name",
    404: "check the base URL (it usually ends in /v1; GET <base URL>/models lists the models) and the model name",
    405: "the server does not take this request at this URL: check the base URL and chat vs completions",
    422: "the server could not process the request: check the model name and the parameters it accepts",
}


def _causes(error: BaseException) -> list[BaseException]:
    # The error, what caused it, and the members of exception groups on the way (trio's connect
    # reports each refused address inside one).
    found: list[BaseException] = []
    todo, seen = [error], set()
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
    return found


def _url(error: BaseException) -> str:
    request: Any = getattr(error, "request", None)
    url = getattr(request, "url", None)
    return str(url) if url is not None else "the server"


def fatal_error(error: BaseException) -> FatalSamplerError | None:
    """The :class:`~budgetctl.FatalSamplerError` for a failure no retry can fix, or ``None`` if a retry may help.

    Fatal: a refused connection or an unknown host (nothing listens there), and the statuses of a
    request the server will always reject (400, 401, 403, 404, 405, 422). The message names the URL,
    what the server said and what to check.
    """
    if isinstance(error, FatalSamplerError):
        return error
    status = _status(error)
    if status in _FATAL_STATUS:
        said = str(getattr(error, "message", "") or error)
        said = said if len(said) <= 300 else said[:297] + "..."
        hint = _FATAL_STATUS[status]
        if status == 404 and "prompt" in said.lower():
            # The server found the URL and the model but not what was asked (budgetctl serve's replay
            # answers so for a question outside its pool): the URL is not what to check.
            hint = "the server has no answer for this prompt (a replay server answers only its pool's questions)"
        return FatalSamplerError(f"{_url(error)} answered {status} ({said}); {hint}")
    if status is None and _is_connection_error(error):
        causes = _causes(error)
        if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
            return FatalSamplerError(
                f"cannot connect to {_url(error)}: connection refused; check that the server is running "
                "and that the base URL's host and port are right"
            )
        if any(isinstance(cause, socket.gaierror) for cause in causes):
            return FatalSamplerError(f"cannot connect to {_url(error)}: unknown host; check the base URL's host name")
    return None


async def call_with_retry(call: Callable[[], Awaitable[T]], retry: Retry | None, rng: random.Random) -> T:
    """Await ``call()``, retrying transient failures as ``retry`` says while the deadline allows.

    A failure no retry can fix raises :class:`~budgetctl.FatalSamplerError` (from the original error).
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as error:
            fatal = fatal_error(error)
            if fatal is not None and fatal is not error:
                raise fatal from error
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
