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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._optional import import_optional
from .._state import Result
from ..extract import get_extractor
from ..policies._base import StopPolicy
from ..policies._spec import parse_policy
from ..samplers._price import Price
from ..serve._limits import (
    JSONLimitError,
    LimitedApp,
    ServerLimits,
    error_body,
    loads_json,
)
from ._job import DEADLINE_SLACK, Job, Outcome
from ._ledger import (
    BudgetLimits,
    FallbackLedger,
    Ledger,
    LedgerUnavailable,
    LocalLedger,
    RedisLedger,
)
from ._metrics import ProxyMetrics
from ._request import BadRequest, Defaults, parse_request
from ._respond import JobResponse
from ._traces import RotatingTraces, run_events, shadow_stop

if TYPE_CHECKING:
    from ._otel import Telemetry

import_optional("starlette", "proxy", "the proxy (budgetctl proxy)")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

__all__ = ["ProxyConfig", "ProxyServer"]

log = logging.getLogger("budgetctl.proxy")


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
    #: OpenTelemetry spans per request and per upstream call (needs ``budgetctl[otel]``; see docs/proxy.md).
    otel: bool = False
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


def _error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        error_body(status, message, param), status_code=status, media_type="application/json", headers=headers
    )


class ProxyServer:
    """The proxy as an ASGI app (``.app``, behind ``.limits``); run it with ``budgetctl proxy`` or ``serve_in_thread``.

    Its scheduler, upstream client and budget ledger live from the app's startup to its shutdown
    (the ASGI lifespan), so one ``ProxyServer`` serves one uvicorn server at a time. With
    ``config.otel``, spans go to ``tracer_provider``, or OpenTelemetry's global one when it is ``None``.
    """

    #: uvicorn runs the app's startup and shutdown (the scheduler, the upstream client, the ledger).
    lifespan = "on"

    def __init__(self, config: ProxyConfig, *, tracer_provider: Any = None) -> None:
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
        self.telemetry: Telemetry | None = None
        if config.otel:
            from ._otel import Telemetry

            self.telemetry = Telemetry(self.upstream, prompts=config.trace_prompts, tracer_provider=tracer_provider)
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
            job = Job(self, parsed, key, self.policy_for(parsed.policy))
            if self.telemetry is not None:
                job.otel = self.telemetry.request(parsed, request.headers)
        except BadRequest as error:
            self.metrics.requests.labels("400").inc()
            return _error_response(400, str(error), error.param)
        return JobResponse(job)

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
    async def finished(self, job: Job, result: Result, outcome: Outcome) -> None:
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

    def _trace(self, job: Job, result: Result, outcome: Outcome) -> None:
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
