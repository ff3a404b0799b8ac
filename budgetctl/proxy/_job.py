"""One proxied request's run: its sampler (reserve, call upstream, settle), what its samples said, its answer.

The sampler sends the client's request upstream (one choice per call), after reserving the call's
expected cost in the server's ledger; it records each text, so that the answer is the text of a
sample whose extracted answer is the final one, and the usage of every sample paid for.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._aggregate import MajorityVote
from .._budget import Budget
from .._sample import Exhausted, Sample
from .._state import Result
from ..extract import get_extractor
from ..policies._base import StopPolicy
from ..serve._limits import error_body
from ._ledger import LedgerUnavailable, Refused, Reservation
from ._request import BadRequest, ProxyRequest

if TYPE_CHECKING:
    from ._app import ProxyServer
    from ._otel import RequestSpan, SampleSpan

__all__ = ["Job", "Outcome", "DEADLINE_SLACK"]

#: Seconds past its deadline after which an answer counts as a deadline miss (scheduling noise is less).
DEADLINE_SLACK = 0.1
#: Upstream statuses that no retry can fix: the request ends at once with the upstream's answer.
_FATAL = frozenset({400, 401, 403, 404, 413, 422})


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass
class Outcome:
    """How a request ended: a body to send, or an error."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    #: For a successful stream: the final text and finish reason.
    text: str = ""
    finish_reason: str = "stop"


class Job:
    """One request's run: its sampler, what its samples said, and the answer it ends with."""

    def __init__(self, server: ProxyServer, request: ProxyRequest, auth: str | None, policy: StopPolicy) -> None:
        self.server = server
        self.request = request
        self.policy = policy
        try:
            self.extract = get_extractor(request.extract)
        except (KeyError, ValueError) as error:
            raise BadRequest(str(error).strip("'\""), "extract") from None
        self.headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.tally = MajorityVote().start()
        self.texts: dict[Hashable, tuple[str, str]] = {}
        self.last_text: tuple[str, str] | None = None
        self.samples: list[tuple[float, Sample]] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.usd = 0.0
        self.fatal: tuple[int, dict[str, Any]] | None = None
        self.refused: Refused | None = None
        self.ledger_error: str | None = None
        self.last_error: tuple[int, dict[str, Any]] | None = None
        self.best: Hashable = None
        self.updates: MemoryObjectSendStream[tuple[str, Any]] | None = None
        self.started = 0.0
        self.started_wall = 0.0
        self.wall = 0.0
        #: The request's span, with ``--otel`` (``None``: no telemetry, and no cost).
        self.otel: RequestSpan | None = None

    # -- the sampler ---------------------------------------------------------------------------------
    async def sample(self) -> Sample:
        server, request = self.server, self.request
        if self.fatal is not None or self.refused is not None or self.ledger_error is not None:
            raise Exhausted("the request has ended")
        ledger = server.ledger
        assert ledger is not None
        reservation: Reservation | None = None
        if not ledger.limits.unlimited:
            expected = request.max_tokens or server.expected_tokens()
            prompt = request.prompt_chars / 4
            usd = server.price.cost(prompt, expected) if server.price is not None else 0.0
            ttl = request.deadline + 10.0
            if ledger.limits.window is not None:
                ttl = min(ttl, ledger.limits.window)
            try:
                # Shielded: a reservation made in Redis must come back to us to be released, even
                # when the run is cancelled meanwhile (the next await below raises, and releases it).
                with anyio.CancelScope(shield=True):
                    held = await ledger.reserve(expected, usd, ttl)
            except LedgerUnavailable as error:
                self.ledger_error = f"the shared budget cannot be checked: {error}"
                raise Exhausted(str(error)) from None
            if isinstance(held, Refused):
                self.refused = held
                raise Exhausted(held.reason)
            reservation = held
        settled = False
        span = self.otel.sample() if self.otel is not None else None
        try:
            data = await self._call(self.headers if span is None else span.headers(self.headers))
            text, finish, prompt_tokens, completion_tokens = self._read(data)
            cost = server.price.cost(prompt_tokens, completion_tokens) if server.price is not None else None
            if reservation is not None:
                with anyio.CancelScope(shield=True):
                    await ledger.settle(reservation, completion_tokens, cost or 0.0)
                settled = True
            sample = self._record(text, finish, prompt_tokens, completion_tokens, cost)
            if span is not None:
                span.returned(data, finish, prompt_tokens, completion_tokens)
            return sample
        except BaseException as error:
            if span is not None:
                self._span_error(span, error)
            raise
        finally:
            if span is not None:
                span.end()
            if reservation is not None and not settled:
                with anyio.CancelScope(shield=True):
                    await ledger.release(reservation)

    def _span_error(self, span: SampleSpan, error: BaseException) -> None:
        """Say on an upstream call's span how it failed, or that it was cancelled."""
        if isinstance(error, anyio.get_cancelled_exc_class()):
            span.cancelled()
        elif isinstance(error, self.server.openai.APIStatusError):
            span.failed(str(error.status_code))
        elif isinstance(error, Exhausted) and self.fatal is not None:
            span.failed(str(self.fatal[0]))
        else:
            span.failed(type(error).__qualname__)

    async def _call(self, headers: dict[str, str]) -> Any:
        openai = self.server.openai
        client = self.server.client
        path = "/chat/completions" if self.request.chat else "/completions"
        try:
            return await client.post(
                path, cast_to=object, body=self.request.upstream_body, options={"headers": headers}
            )
        except openai.APIStatusError as error:
            status = int(error.status_code)
            detail = error.body if isinstance(error.body, dict) else {"message": str(error.body or error)}
            body = {"error": detail.get("error", detail) if isinstance(detail, dict) else detail}
            if status in _FATAL:
                self.fatal = (status, body)
                raise Exhausted(f"upstream answered {status}") from None
            self.last_error = (status if status == 429 else 502, body)
            raise
        except openai.APITimeoutError:
            self.last_error = (504, json.loads(error_body(504, "the upstream server timed out")))
            raise
        except openai.APIConnectionError:
            where = self.server.config.upstream
            self.last_error = (502, json.loads(error_body(502, f"cannot reach the upstream server at {where}")))
            raise

    def _read(self, data: Any) -> tuple[str, str, int, int]:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            self.last_error = (502, json.loads(error_body(502, "the upstream server returned no choices")))
            raise ValueError("the upstream server returned no choices")
        choice = choices[0]
        if self.request.chat:
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        text = text if isinstance(text, str) else ""
        reason = choice.get("finish_reason")
        finish = reason if isinstance(reason, str) else "stop"
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 0:
            prompt_tokens = math.ceil(self.request.prompt_chars / 4)
        if isinstance(completion_tokens, bool) or not isinstance(completion_tokens, int) or completion_tokens < 0:
            completion_tokens = math.ceil(len(text) / 4)
        return text, finish, prompt_tokens, completion_tokens

    def _record(self, text: str, finish: str, prompt_tokens: int, completion_tokens: int, cost: float | None) -> Sample:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.usd += cost or 0.0
        self.server.observe_completion(completion_tokens)
        sample = Sample(answer=self.extract(text), tokens=completion_tokens, cost=cost)
        self.samples.append((anyio.current_time() - self.started, sample))
        self.last_text = (text, finish)
        if sample.answer is not None:
            key = self.tally.add(sample)
            self.texts.setdefault(key, (text, finish))
            best = self.tally.best
            if self.updates is not None and best != self.best:
                self.updates.send_nowait(("best", self._progress()))
            self.best = best
        return sample

    def _progress(self) -> dict[str, Any]:
        return {
            "best": _jsonable(self.tally.best),
            "confidence": self.tally.confidence,
            "samples": len(self.samples),
            "elapsed": anyio.current_time() - self.started,
        }

    # -- the run -------------------------------------------------------------------------------------
    async def run(self) -> Outcome:
        """Sample until the policy, the budget or the deadline says stop; count the request; its outcome."""
        self.started = anyio.current_time()
        self.started_wall = time.time()
        if self.otel is None:
            return await self._run()
        self.otel.start()
        try:
            return await self._run()
        finally:
            self.otel.end()

    async def _run(self) -> Outcome:
        server, request = self.server, self.request
        scheduler = server.scheduler
        assert scheduler is not None
        budget = Budget(samples=request.max_samples, tokens=request.tokens, dollars=request.usd)
        result = await scheduler.solve(
            self.sample, deadline=request.deadline, policy=self.policy, budget=budget, concurrency=request.concurrency
        )
        outcome = self._outcome(result)
        self.wall = anyio.current_time() - self.started
        if self.otel is not None:
            self.otel.finish(self.summary(result), result, outcome, (self.prompt_tokens, self.completion_tokens))
        await server.finished(self, result, outcome)
        return outcome

    def _outcome(self, result: Result) -> Outcome:
        if self.fatal is not None:
            status, body = self.fatal
            return Outcome(status, body)
        chosen = None
        if result.answer is not None:
            chosen = self.texts.get(self.tally.key(result.answer))
        if chosen is None:
            chosen = self.last_text
        if chosen is None:  # nothing came back
            if self.refused is not None:
                headers = {}
                if self.refused.retry_after is not None:
                    headers["Retry-After"] = str(max(1, math.ceil(self.refused.retry_after)))
                message = f"{self.refused.reason}; " + (
                    f"retry after {headers['Retry-After']} s" if headers else "it does not renew (no --window)"
                )
                return Outcome(429, json.loads(error_body(429, message, type="budget_exceeded")), headers)
            if self.ledger_error is not None:
                return Outcome(503, json.loads(error_body(503, self.ledger_error)))
            if self.last_error is not None:
                status, body = self.last_error
                return Outcome(status, body)
            if result.stop_reason == "budget" and result.n_failed == 0:
                # The scheduler's admission control: no upstream slot would free before the deadline.
                message = "the proxy is at capacity: no upstream slot frees before this request's deadline"
                return Outcome(503, json.loads(error_body(503, message, type="overloaded")), {"Retry-After": "1"})
            message = f"no sample came back within the deadline ({self.request.deadline:g} s)"
            return Outcome(504, json.loads(error_body(504, message, type="timeout_error")))
        text, finish = chosen
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        choice: dict[str, Any]
        if self.request.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = finish
        body = {
            "id": self.id,
            "object": "chat.completion" if self.request.chat else "text_completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [choice],
            "usage": usage,
            "budgetctl": self.summary(result),
        }
        return Outcome(200, body, text=text, finish_reason=finish)

    def wasted_tokens(self, result: Result) -> int:
        """Completion tokens of samples whose answer is not the final one."""
        final = None if result.answer is None else self.tally.key(result.answer)
        return sum(s.tokens for _, s in self.samples if s.answer is None or self.tally.key(s.answer) != final)

    def summary(self, result: Result) -> dict[str, Any]:
        """The response's ``budgetctl`` object."""
        stopped_by_budget = self.refused is not None or self.ledger_error is not None
        stop_reason = "budget" if stopped_by_budget and result.stop_reason == "exhausted" else result.stop_reason
        return {
            "answer": _jsonable(result.answer),
            "confidence": result.confidence,
            "samples": len(self.samples),
            "failed": result.n_failed,
            "cancelled": result.n_cancelled,
            "stop_reason": stop_reason,
            "tokens": self.completion_tokens,
            "wasted_tokens": self.wasted_tokens(result),
            "usd": self.usd,
            "elapsed": result.elapsed,
            "deadline": self.request.deadline,
            "policy": self.request.policy,
        }
