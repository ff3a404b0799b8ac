"""The proxy: an OpenAI-compatible server that answers each request with an anytime run over an upstream server.

Each ``/v1/chat/completions`` or ``/v1/completions`` request becomes one run of the shared
:class:`~budgetctl.sched.Scheduler`: its sampler sends the client's own request upstream (one
choice per call), the request's stop policy decides when the answer is settled, and its deadline
when time is up. The client gets one choice, the text of a sample whose extracted answer is the
final answer, with ``usage`` summing every sample the proxy paid for and a ``budgetctl`` object
saying how the answer was reached. Each upstream call first reserves its expected cost in the
budget ledger (in the process, or in Redis across replicas) and settles the actual cost after.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .._aggregate import MajorityVote
from .._budget import Budget
from .._optional import import_optional
from .._sample import Exhausted, Sample
from .._state import Result
from ..extract import get_extractor
from ..policies._base import StopPolicy
from ..policies._spec import parse_policy
from ..samplers._price import Price
from ..serve._limits import (
    JSONLimitError,
    LimitedApp,
    Message,
    Receive,
    Scope,
    Send,
    ServerLimits,
    error_body,
    loads_json,
)
from ._ledger import (
    BudgetLimits,
    FallbackLedger,
    Ledger,
    LedgerUnavailable,
    LocalLedger,
    RedisLedger,
    Refused,
    Reservation,
)
from ._metrics import ProxyMetrics
from ._request import BadRequest, Defaults, ProxyRequest, parse_request
from ._traces import RotatingTraces, run_events, shadow_stop

import_optional("starlette", "proxy", "the proxy (budgetctl proxy)")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

__all__ = ["ProxyConfig", "ProxyServer"]

log = logging.getLogger("budgetctl.proxy")

#: Seconds past its deadline after which an answer counts as a deadline miss (scheduling noise is less).
DEADLINE_SLACK = 0.1
#: Upstream statuses that no retry can fix: the request ends at once with the upstream's answer.
_FATAL = frozenset({400, 401, 403, 404, 413, 422})


@dataclass(frozen=True)
class ProxyConfig:
    """Everything ``budgetctl proxy`` is told; see ``budgetctl proxy --help`` and docs/proxy.md."""

    #: Base URL of the OpenAI-compatible server the samples come from (``http://host:port/v1``).
    upstream: str
    #: Stop policy spec of requests that bring none.
    policy: str = "ac|fixed:n=16"
    #: Seconds a request may take, unless it says otherwise.
    deadline: float = 30.0
    #: Upstream calls in flight at once over all requests (the scheduler's slots).
    slots: int = 64
    #: A request's own calls in flight at once, unless it says otherwise.
    request_concurrency: int = 4
    #: Samples per request at most, unless it says otherwise (``None``: the policy and deadline decide).
    max_samples: int | None = 16
    #: The budget shared by every request (and every replica, with ``redis_url``).
    budget: BudgetLimits = field(default_factory=BudgetLimits)
    #: Dollars per token, for ``usd`` budgets and the spend metric.
    price: Price | None = None
    #: Redis URL of a budget shared across replicas.
    redis_url: str | None = None
    #: Without Redis: ``None`` refuses every request (503); a fraction is the budget share spent locally.
    redis_fallback: float | None = None
    #: Seconds to wait for Redis before it counts as unreachable.
    redis_timeout: float = 2.0
    #: Name of the shared budget in Redis (replicas with the same name share it).
    budget_name: str = "default"
    #: Directory for JSONL traces (``None``: none written).
    trace_dir: str | None = None
    #: Bytes per trace file before the next one starts.
    trace_max_bytes: int = 64 << 20
    #: Write the prompt text into traces (``meta.question``); off by default (prompts may be private).
    trace_prompts: bool = False
    #: A policy spec to replay beside the real one; where it would have stopped goes into the traces.
    shadow: str | None = None
    #: The proxy's own API keys (``Authorization: Bearer KEY``); empty: no key asked for.
    api_keys: tuple[str, ...] = ()
    #: Key sent upstream; ``None``: the client's own key when the proxy asks none, else ``$OPENAI_API_KEY``.
    upstream_api_key: str | None = None
    #: Extractor of answers from texts, unless a request says otherwise.
    extract: str = "default"
    #: Tokens reserved for a call whose request sets no ``max_tokens``, until completions have been seen.
    reserve_tokens: int = 512
    #: Seconds after which one upstream call is abandoned and counted as failed.
    sample_timeout: float | None = None
    #: What one client may ask of the proxy.
    limits: ServerLimits = field(default_factory=ServerLimits)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return str(value)


def _error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(status, message, param), status_code=status, media_type="application/json", headers=headers
    )


@dataclass
class _Outcome:
    """How a request ended: a body to send, or an error."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    #: For a successful stream: the final text and finish reason.
    text: str = ""
    finish_reason: str = "stop"


class _Job:
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
        try:
            data = await self._call()
            text, finish, prompt_tokens, completion_tokens = self._read(data)
            cost = server.price.cost(prompt_tokens, completion_tokens) if server.price is not None else None
            if reservation is not None:
                with anyio.CancelScope(shield=True):
                    await ledger.settle(reservation, completion_tokens, cost or 0.0)
                settled = True
            return self._record(text, finish, prompt_tokens, completion_tokens, cost)
        finally:
            if reservation is not None and not settled:
                with anyio.CancelScope(shield=True):
                    await ledger.release(reservation)

    async def _call(self) -> Any:
        openai = self.server.openai
        client = self.server.client
        path = "/chat/completions" if self.request.chat else "/completions"
        try:
            return await client.post(
                path, cast_to=object, body=self.request.upstream_body, options={"headers": self.headers}
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
    async def run(self) -> _Outcome:
        server, request = self.server, self.request
        scheduler = server.scheduler
        assert scheduler is not None
        self.started = anyio.current_time()
        self.started_wall = time.time()
        budget = Budget(samples=request.max_samples, tokens=request.tokens, dollars=request.usd)
        result = await scheduler.solve(
            self.sample, deadline=request.deadline, policy=self.policy, budget=budget, concurrency=request.concurrency
        )
        outcome = self._outcome(result)
        self.wall = anyio.current_time() - self.started
        await server.finished(self, result, outcome)
        return outcome

    def _outcome(self, result: Result) -> _Outcome:
        if self.fatal is not None:
            status, body = self.fatal
            return _Outcome(status, body)
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
                return _Outcome(429, json.loads(error_body(429, message, type="budget_exceeded")), headers)
            if self.ledger_error is not None:
                return _Outcome(503, json.loads(error_body(503, self.ledger_error)))
            if self.last_error is not None:
                status, body = self.last_error
                return _Outcome(status, body)
            if result.stop_reason == "budget" and result.n_failed == 0:
                # The scheduler's admission control: no upstream slot would free before the deadline.
                message = "the proxy is at capacity: no upstream slot frees before this request's deadline"
                return _Outcome(503, json.loads(error_body(503, message, type="overloaded")), {"Retry-After": "1"})
            message = f"no sample came back within the deadline ({self.request.deadline:g} s)"
            return _Outcome(504, json.loads(error_body(504, message, type="timeout_error")))
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
        return _Outcome(200, body, text=text, finish_reason=finish)

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


class _JobResponse(Response):
    """Runs a job while the client is connected (a disconnect cancels it) and sends its answer, whole or streamed.

    A stream's headers go out with the first best answer (or the end): a request that fails before
    any sample came back is still answered with its real status (429, 502...), not a 200 stream.
    """

    def __init__(self, job: _Job) -> None:
        super().__init__(status_code=200)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job
        events_send, events = anyio.create_memory_object_stream[tuple[str, Any]](math.inf)
        if job.request.stream:
            job.updates = events_send
        with events_send, events:
            async with anyio.create_task_group() as group:

                async def run() -> None:
                    events_send.send_nowait(("final", await job.run()))

                async def watch() -> None:
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            group.cancel_scope.cancel()
                            return

                group.start_soon(run)
                group.start_soon(watch)
                with suppress(OSError):  # the client went away while we wrote
                    await self._answer(events, send)
                group.cancel_scope.cancel()

    async def _answer(self, events: Any, send: Send) -> None:
        job = self.job
        streaming = False
        async for kind, payload in events:
            if kind == "best":
                if not streaming:
                    await self._start_stream(send)
                    streaming = True
                await self._chunk(send, [], budgetctl=payload)
                continue
            outcome: _Outcome = payload
            if not job.request.stream or (outcome.status != 200 and not streaming):
                await self._whole(send, outcome)
                return
            if not streaming:
                await self._start_stream(send)
            if outcome.status != 200:
                await send({"type": "http.response.body", "body": self._event(outcome.body), "more_body": True})
            else:
                await self._finish_stream(send, outcome)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return

    async def _whole(self, send: Send, outcome: _Outcome) -> None:
        body = json.dumps(outcome.body, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in outcome.headers.items()]
        await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _start_stream(self, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.job.request.chat:
            await self._chunk(
                send,
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
            )

    @staticmethod
    def _event(data: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    async def _chunk(self, send: Send, choices: list[dict[str, Any]], **extra: Any) -> None:
        job = self.job
        chunk = {
            "id": job.id,
            "object": "chat.completion.chunk" if job.request.chat else "text_completion",
            "created": job.created,
            "model": job.request.model,
            "choices": choices,
            **extra,
        }
        await send({"type": "http.response.body", "body": self._event(chunk), "more_body": True})

    async def _finish_stream(self, send: Send, outcome: _Outcome) -> None:
        chat = self.job.request.chat
        if chat:
            content = {"index": 0, "delta": {"content": outcome.text}, "logprobs": None, "finish_reason": None}
            last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": outcome.finish_reason}
        else:
            content = {"index": 0, "text": outcome.text, "logprobs": None, "finish_reason": None}
            last = {"index": 0, "text": "", "logprobs": None, "finish_reason": outcome.finish_reason}
        await self._chunk(send, [content])
        await self._chunk(send, [last], budgetctl=outcome.body["budgetctl"])
        if self.job.request.include_usage:
            await self._chunk(send, [], usage=outcome.body["usage"])


class ProxyServer:
    """The proxy as an ASGI app (``.app``, behind ``.limits``); run it with ``budgetctl proxy`` or ``serve_in_thread``.

    Its scheduler, upstream client and budget ledger live from the app's startup to its shutdown
    (the ASGI lifespan), so one ``ProxyServer`` serves one uvicorn server at a time.
    """

    #: uvicorn runs the app's startup and shutdown (the scheduler, the upstream client, the ledger).
    lifespan = "on"

    def __init__(self, config: ProxyConfig) -> None:
        from ..samplers._openai import _with_v1

        self.config = config
        self.upstream = _with_v1(config.upstream)
        self.openai = import_optional("openai", "proxy", "the proxy's upstream client")
        if isinstance(config.slots, bool) or not isinstance(config.slots, int) or config.slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {config.slots!r}")
        if not (isinstance(config.deadline, int | float) and 0 < config.deadline <= 3600):
            raise ValueError(f"deadline must be in (0, 3600] seconds, got {config.deadline!r}")
        if config.budget.usd is not None and config.price is None:
            raise ValueError("a dollar budget needs a price (--price INPUT,OUTPUT per million tokens)")
        if config.redis_url is not None and config.budget.unlimited:
            raise ValueError("--redis shares a budget: give --budget-tokens and/or --budget-usd")
        self.policy = parse_policy(config.policy)
        self.shadow = parse_policy(config.shadow) if config.shadow else None
        get_extractor(config.extract)
        self.price = config.price
        self.limits = config.limits
        self.defaults = Defaults(
            deadline=float(config.deadline),
            policy=config.policy,
            max_samples=config.max_samples,
            concurrency=config.request_concurrency,
            extract=config.extract,
        )
        self.traces = RotatingTraces(config.trace_dir, max_bytes=config.trace_max_bytes) if config.trace_dir else None
        self.metrics = ProxyMetrics(waiting=self._waiting)
        self.scheduler: Any = None
        self.client: Any = None
        self.ledger: Ledger | None = None
        self._policies: dict[str, StopPolicy] = {config.policy: self.policy}
        self._expected = float(config.reserve_tokens)
        self.routes = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._text, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )
        self.app = LimitedApp(self.routes, self.limits)

    def __repr__(self) -> str:
        return f"ProxyServer(upstream={self.upstream!r}, policy={self.config.policy!r})"

    # -- lifecycle -----------------------------------------------------------------------------------
    def make_ledger(self) -> Ledger:
        """The budget ledger the config asks for: Redis (with its fallback) or this process's own."""
        config = self.config
        if config.redis_url is None:
            return LocalLedger(config.budget)
        redis = RedisLedger(config.redis_url, config.budget, name=config.budget_name, timeout=config.redis_timeout)
        return FallbackLedger(redis, config.redis_fallback)

    @asynccontextmanager
    async def _lifespan(self, app: Any) -> AsyncIterator[None]:
        from ..sched import Scheduler

        config = self.config
        key = config.upstream_api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = self.openai.AsyncOpenAI(base_url=self.upstream, api_key=key, max_retries=0, timeout=3600.0)
        self.ledger = self.make_ledger()
        try:
            async with Scheduler(
                slots=config.slots, sample_timeout=config.sample_timeout, policy=self.policy
            ) as self.scheduler:
                yield
        finally:
            self.scheduler = None
            await self.client.close()
            await self.ledger.aclose()
            if self.traces is not None:
                self.traces.close()

    def _waiting(self) -> float:
        return float(self.scheduler.stats().waiting) if self.scheduler is not None else 0.0

    def expected_tokens(self) -> float:
        """Tokens reserved for a call without ``max_tokens``: a quarter more than the recent mean completion."""
        return max(1.0, math.ceil(self._expected * 1.25))

    def observe_completion(self, tokens: int) -> None:
        """Fold one completion's length into the running mean behind :meth:`expected_tokens`."""
        self._expected += 0.1 * (tokens - self._expected)

    def policy_for(self, spec: str) -> StopPolicy:
        """The policy of ``spec`` (parsed once; at most 64 kept)."""
        policy = self._policies.get(spec)
        if policy is None:
            try:
                policy = parse_policy(spec)
            except ValueError as error:
                raise BadRequest(f"'budgetctl.policy': {error}", "policy") from None
            if len(self._policies) >= 64:
                self._policies.clear()
                self._policies[self.config.policy] = self.policy
            self._policies[spec] = policy
        return policy

    # -- routes --------------------------------------------------------------------------------------
    def _client_key(self, request: Request) -> tuple[bool, str | None]:
        """Whether the request may proceed, and the key to send upstream."""
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if self.config.api_keys:
            ok = any(hmac.compare_digest(given.encode(), k.encode()) for k in self.config.api_keys)
            return ok, self.config.upstream_api_key
        return True, self.config.upstream_api_key or given or None

    async def _chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _text(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        allowed, key = self._client_key(request)
        if not allowed:
            self.metrics.requests.labels("401").inc()
            return _error_response(401, "a valid API key of this proxy is required (Authorization: Bearer KEY)")
        try:
            try:
                raw = await request.body()
            except ClientDisconnect:
                return Response(status_code=499)
            try:
                body = loads_json(raw, self.limits)
            except JSONLimitError as error:
                raise BadRequest(str(error)) from None
            parsed = parse_request(body, chat=chat, defaults=self.defaults)
            if parsed.usd is not None and self.price is None:
                raise BadRequest("'budgetctl.budget.usd' needs the proxy to know prices (--price)", "budget")
            job = _Job(self, parsed, key, self.policy_for(parsed.policy))
        except BadRequest as error:
            self.metrics.requests.labels("400").inc()
            return _error_response(400, str(error), error.param)
        return _JobResponse(job)

    async def _models(self, request: Request) -> Response:
        allowed, key = self._client_key(request)
        if not allowed:
            return _error_response(401, "a valid API key of this proxy is required (Authorization: Bearer KEY)")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            data = await self.client.get("/models", cast_to=object, options={"headers": headers})
        except self.openai.APIStatusError as error:
            detail = error.body if isinstance(error.body, dict) else {"message": str(error)}
            status = int(error.status_code)
            return Response(
                json.dumps({"error": detail}),
                status_code=status if status < 500 else 502,
                media_type="application/json",
            )
        except self.openai.APIConnectionError:
            return _error_response(502, f"cannot reach the upstream server at {self.upstream}")
        return Response(json.dumps(data), media_type="application/json")

    async def _metrics(self, request: Request) -> Response:
        if self.ledger is not None and not self.ledger.limits.unlimited:
            with suppress(LedgerUnavailable):
                await self._update_remaining()
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def _health(self, request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def _update_remaining(self) -> None:
        assert self.ledger is not None
        remaining = await self.ledger.remaining()
        if remaining.tokens is not None:
            self.metrics.remaining_tokens.set(remaining.tokens)
        if remaining.usd is not None:
            self.metrics.remaining_usd.set(remaining.usd)

    # -- after a request -----------------------------------------------------------------------------
    async def finished(self, job: _Job, result: Result, outcome: _Outcome) -> None:
        """Count a finished request in the metrics and write its trace."""
        metrics = self.metrics
        metrics.requests.labels(str(outcome.status)).inc()
        summary = job.summary(result)
        metrics.duration.labels(job.request.policy, summary["stop_reason"]).observe(result.elapsed)
        metrics.samples.observe(len(job.samples))
        metrics.tokens.labels("billed").inc(job.prompt_tokens + job.completion_tokens)
        metrics.tokens.labels("wasted").inc(summary["wasted_tokens"])
        metrics.spend.inc(job.usd)
        if job.wall > job.request.deadline + DEADLINE_SLACK:
            metrics.deadline_misses.inc()
        if self.traces is not None and job.samples:
            self._trace(job, result, outcome)

    def _trace(self, job: _Job, result: Result, outcome: _Outcome) -> None:
        request = job.request
        meta: dict[str, Any] = {
            "id": job.id,
            "prompt_id": request.prompt_id,
            "model": request.model,
            "endpoint": "chat" if request.chat else "completions",
            "status": outcome.status,
            **request.meta,
        }
        if self.config.trace_prompts:
            meta.setdefault("question", request.prompt_text)
        if self.shadow is not None:
            meta["shadow"] = {"policy": self.config.shadow, **shadow_stop(self.shadow, job.samples)}
        config = {
            "policy": request.policy,
            "deadline": request.deadline,
            "concurrency": request.concurrency,
            "budget": {"samples": request.max_samples, "tokens": request.tokens, "dollars": request.usd},
            "proxy": True,
        }
        assert self.traces is not None
        try:
            self.traces.write_run(
                run_events(
                    job.id, config=config, meta=meta, samples=job.samples, result=result, started=job.started_wall
                )
            )
        except OSError as error:  # a full disk must not take the answer down with it
            log.error("could not write a trace to %s: %s", self.traces.directory, error)
