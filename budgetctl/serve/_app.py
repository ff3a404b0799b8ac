"""The replay server's HTTP side: an OpenAI-compatible Starlette app that replays sample pools with realistic timing."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from .._optional import import_optional
from .._pool import Pool, Question, load_pool
from ._limits import JSONLimitError, LimitedApp, ServerLimits, loads_json
from ._replay import (
    Decks,
    QuestionIndex,
    Reply,
    ServerStats,
    estimate_tokens,
    is_probe,
    probe_pieces,
)
from ._requests import BadRequest, message_texts, prompt_of, stream_settings

import_optional("starlette", "serve", "the replay server (budgetctl serve)")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import ClientDisconnect, Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.types import Message, Receive, Scope, Send  # noqa: E402

__all__ = ["ReplayServer"]

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 410: "samples_exhausted"}


@dataclass
class _Params:
    model: str
    prompts: list[str]  # texts searched for the question, in order (the last one that matches wins)
    last_text: str  # the text that ends the prompt (a probe ends with "the answer is")
    prompt_text: str  # everything the model would read, for the prompt token count
    n: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    logprobs: bool


def _int_param(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise BadRequest(f"'{name}' must be an integer {bounds}, got {value!r}", name)
    return value


def _parse(body: Any, chat: bool) -> _Params:
    body, model, asked = prompt_of(body, chat=chat)
    if isinstance(asked, list):
        prompts = message_texts(asked, role="user")
        every = message_texts(asked)
        last_text = every[-1] if every else ""
        prompt_text = "\n".join(every)
    else:
        prompts = [asked]
        last_text = prompt_text = asked
    n = _int_param(body, "n", 1, 128) or 1
    max_tokens = _int_param(body, "max_completion_tokens", 1) or _int_param(body, "max_tokens", 1)
    stream, options = stream_settings(body)
    logprobs = body.get("logprobs")
    if chat and logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest(f"'logprobs' must be true or false, got {logprobs!r}", "logprobs")
    if not chat:
        _int_param(body, "logprobs", 0, 20)
    return _Params(
        model=model,
        prompts=prompts,
        last_text=last_text,
        prompt_text=prompt_text,
        n=n,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        logprobs=bool(logprobs) if chat else logprobs is not None,
    )


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    error = {"message": message, "type": _ERROR_TYPES.get(status, "error"), "param": param, "code": status}
    return JSONResponse({"error": error}, status_code=status)


class ReplayServer:
    """An OpenAI-compatible server that answers each question with that question's pool samples.

    A request is matched to a pool question by its text (the longest question text contained in the
    last user message that contains one); each choice draws the question's next sample from a seeded
    random order without replacement, and is replayed as "<reasoning> The answer is X." with the
    sample's token count, paced at ``ttft_ms`` before the first token and ``ms_per_token`` per token
    after it. ``app`` is the ASGI app; ``stats`` counts what happened, cancelled requests included.

    A probe request, whose prompt ends with "the answer is" (Dynasor's Certaindex probe), is
    answered with just " X.": the answer of the chain for that question being streamed right now (the
    most recent one), else a fresh draw. A replayed chain knows where it ends, so its probes are
    exact from the first; real probes early in a chain are noisier.
    """

    def __init__(
        self,
        pool: Pool | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        seed: int = 0,
        ttft_ms: float = 0.0,
        ms_per_token: float = 0.0,
        model: str = "replay",
        exhaust: Literal["cycle", "error"] = "cycle",
        datasets: Sequence[str] | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        for name, value in (("ttft_ms", ttft_ms), ("ms_per_token", ms_per_token)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(pool, Pool):
            # A server replays what it can: malformed lines are skipped and listed in ``pool.skipped``.
            pool = load_pool(pool, datasets=datasets, skip_bad=True)
        self.pool = pool
        self.index = QuestionIndex(pool.questions)
        if not self.index.questions:
            raise ValueError(f"no question in {pool.files} has a question text to match requests against")
        self.decks = Decks(seed, exhaust)
        #: What the server has seen; also served as JSON at ``GET /stats``.
        self.stats = ServerStats()
        self.model = model
        self.ttft = ttft_ms / 1000.0
        self.per_token = ms_per_token / 1000.0
        self._chains: dict[str, list[Hashable]] = {}
        #: What one client may ask: body size, JSON shape, connections (see :mod:`budgetctl.serve._limits`).
        self.limits = limits or ServerLimits()
        self.routes = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._text, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET"]),
                Route("/reset", self._reset, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ]
        )
        #: The ASGI app: the routes behind the body limits.
        self.app = LimitedApp(self.routes, self.limits)

    def __repr__(self) -> str:
        return (
            f"ReplayServer({len(self.index.questions)} questions from {self.pool.files}, seed={self.decks.seed}, "
            f"ttft_ms={self.ttft * 1000:g}, ms_per_token={self.per_token * 1000:g})"
        )

    def reset(self, seed: int | None = None) -> None:
        """Start every question's order afresh (from ``seed`` when given) and zero the stats."""
        self.decks.reset(seed)
        self.stats = ServerStats()

    # -- routes --------------------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        names = [self.model, *(d for d in self.pool.datasets if d and d != self.model)]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "budgetctl-replay"} for name in names]
        return JSONResponse({"object": "list", "data": data})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({**self.stats.to_dict(), "questions": len(self.index.questions)})

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _reset(self, request: Request) -> Response:
        seed = None
        raw = await request.body()
        if raw.strip():
            try:
                body = loads_json(raw, self.limits)
            except JSONLimitError as error:
                return _error(400, str(error))
            seed = body.get("seed") if isinstance(body, dict) else None
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                return _error(400, f"'seed' must be an integer, got {seed!r}", "seed")
        self.reset(seed)
        return JSONResponse({"seed": self.decks.seed})

    async def _chat(self, request: Request) -> Response:
        return await self._complete(request, chat=True)

    async def _text(self, request: Request) -> Response:
        return await self._complete(request, chat=False)

    async def _complete(self, request: Request, *, chat: bool) -> Response:
        # A request counts in the stats current when it arrived, to its end, even across a reset.
        stats = self.stats
        stats.requests += 1
        stats.in_flight += 1  # from arrival; a paced response takes over and ends it
        response = await self._answer(request, chat=chat, stats=stats)
        if not isinstance(response, _PacedResponse):
            stats.in_flight -= 1
        return response

    async def _answer(self, request: Request, *, chat: bool, stats: ServerStats) -> Response:
        try:
            try:
                raw = await request.body()
            except ClientDisconnect:
                stats.disconnected += 1
                return Response(status_code=499)  # never sent: nobody is listening
            try:
                body = loads_json(raw, self.limits)
            except JSONLimitError as error:
                raise BadRequest(str(error)) from None
            params = _parse(body, chat)
        except BadRequest as error:
            stats.rejected += 1
            return _error(400, str(error), error.param)
        question = self.index.find(params.prompts, params.model)
        if question is None:
            stats.rejected += 1
            shown = params.prompts[-1] if params.prompts else ""
            return _error(
                404,
                f"no question of the replayed pool matches this prompt ({shown[:80]!r}); "
                f"the server replays {len(self.index.questions)} questions from {', '.join(self.pool.files)}",
                "messages" if chat else "prompt",
            )
        try:
            replies = self._replies(question, params, stats)
        except LookupError as error:
            stats.rejected += 1
            return _error(410, str(error))
        if params.stream:
            stats.streams += 1
        return _PacedResponse(self, stats, question, replies, params, chat=chat)

    def _replies(self, question: Question, params: _Params, stats: ServerStats) -> list[Reply]:
        if is_probe(params.last_text):
            stats.probes += 1
            chains = self._chains.get(question.id)
            replies = []
            for _ in range(params.n):
                if chains:
                    answer = chains[-1]
                else:
                    sample = self.decks.draw(question)
                    stats.samples_drawn += 1
                    answer = sample.answer
                pieces = probe_pieces(answer)
                cut = params.max_tokens is not None and len(pieces) > params.max_tokens
                replies.append(
                    Reply(
                        question.samples[0],
                        pieces[: params.max_tokens] if cut else pieces,
                        "length" if cut else "stop",
                        None,
                    )
                )
            return replies
        replies = [self.decks.reply(question, params.max_tokens) for _ in range(params.n)]
        stats.samples_drawn += len(replies)
        return replies

    # -- bookkeeping used by the paced response ------------------------------------------------------
    def _chain_started(self, question: Question, replies: Sequence[Reply]) -> None:
        self._chains.setdefault(question.id, []).extend(r.sample.answer for r in replies)

    def _chain_ended(self, question: Question, replies: Sequence[Reply]) -> None:
        chains = self._chains.get(question.id, [])
        for reply in replies:
            if reply.sample.answer in chains:
                chains.remove(reply.sample.answer)
        if not chains:
            self._chains.pop(question.id, None)


def _chat_logprobs(pieces: Sequence[str], logprobs: Sequence[float] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {"token": p, "logprob": lp, "bytes": list(p.encode()), "top_logprobs": []}
            for p, lp in zip(pieces, logprobs, strict=True)
        ]
    }


def _text_logprobs(pieces: Sequence[str], logprobs: Sequence[float] | None, offset: int = 0) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets, at = [], offset
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return {
        "tokens": list(pieces),
        "token_logprobs": list(logprobs),
        "top_logprobs": None,
        "text_offset": offsets,
    }


class _PacedResponse(Response):
    """Sends a completion (whole, or streamed as server-sent events) at the pace of a real model.

    Watches for the client going away while it waits; a disconnect before the last byte is
    counted in the server's stats as a cancelled request.
    """

    def __init__(
        self,
        server: ReplayServer,
        stats: ServerStats,
        question: Question,
        replies: list[Reply],
        params: _Params,
        *,
        chat: bool,
    ) -> None:
        super().__init__(status_code=200)
        self.server = server
        self.stats = stats  # the stats current when the request arrived: it counts there to the end
        self.question = question
        self.replies = replies
        self.params = params
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.prompt_tokens = estimate_tokens(params.prompt_text)
        self.completion_tokens = sum(len(r.pieces) for r in replies)
        self.sent_tokens = 0
        self.finished = False
        self.probe = is_probe(params.last_text)

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def _body(self) -> dict[str, Any]:
        want = self.params.logprobs
        choices: list[dict[str, Any]] = []
        for i, reply in enumerate(self.replies):
            text = "".join(reply.pieces)
            logprobs = reply.logprobs if want else None
            if self.chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": _chat_logprobs(reply.pieces, logprobs),
                        "finish_reason": reply.finish_reason,
                    }
                )
            else:
                choices.append(
                    {
                        "index": i,
                        "text": text,
                        "logprobs": _text_logprobs(reply.pieces, logprobs),
                        "finish_reason": reply.finish_reason,
                    }
                )
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.params.model,
            "choices": choices,
            "usage": self._usage(),
        }

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.params.model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def _token_choice(self, i: int, reply: Reply, t: int) -> dict[str, Any]:
        piece = reply.pieces[t]
        logprobs = reply.logprobs[t : t + 1] if self.params.logprobs and reply.logprobs is not None else None
        if self.chat:
            return {
                "index": i,
                "delta": {"content": piece},
                "logprobs": _chat_logprobs([piece], logprobs),
                "finish_reason": None,
            }
        offset = sum(len(p) for p in reply.pieces[:t])
        return {"index": i, "text": piece, "logprobs": _text_logprobs([piece], logprobs, offset), "finish_reason": None}

    def _final_choice(self, i: int, reply: Reply) -> dict[str, Any]:
        if self.chat:
            return {"index": i, "delta": {}, "logprobs": None, "finish_reason": reply.finish_reason}
        return {"index": i, "text": "", "logprobs": None, "finish_reason": reply.finish_reason}

    async def _send_stream(self, send: Send, start: float) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.chat:
            first = [
                {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for i in range(len(self.replies))
            ]
            await send({"type": "http.response.body", "body": self._chunk(first), "more_body": True})
        longest = max(len(r.pieces) for r in self.replies)
        server = self.server
        for t in range(longest):
            await anyio.sleep_until(start + server.ttft + t * server.per_token)
            choices = [self._token_choice(i, r, t) for i, r in enumerate(self.replies) if t < len(r.pieces)]
            await send({"type": "http.response.body", "body": self._chunk(choices), "more_body": True})
            self.sent_tokens += len(choices)
        tail = self._chunk([self._final_choice(i, r) for i, r in enumerate(self.replies)])
        if self.params.include_usage:
            tail += self._chunk([], self._usage())
        tail += b"data: [DONE]\n\n"
        self.finished = True
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _send_whole(self, send: Send, start: float) -> None:
        longest = max(len(r.pieces) for r in self.replies)
        server = self.server
        await anyio.sleep_until(start + server.ttft + max(longest - 1, 0) * server.per_token)
        body = json.dumps(self._body(), separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        self.finished = True
        self.sent_tokens = self.completion_tokens
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _generated(self, start: float) -> int:
        """Tokens generated by now: those streamed, or, for a whole reply, as far as its pacing has got."""
        if self.params.stream or self.finished:
            return self.sent_tokens
        server = self.server
        elapsed = anyio.current_time() - start - server.ttft
        if elapsed < 0:
            return 0
        reached = len(max(self.replies, key=lambda r: len(r.pieces)).pieces)
        if server.per_token > 0:
            reached = min(reached, int(elapsed / server.per_token) + 1)
        return sum(min(len(r.pieces), reached) for r in self.replies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        stats = self.stats
        start = anyio.current_time()
        disconnected = False
        if not self.probe:
            server._chain_started(self.question, self.replies)
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    nonlocal disconnected
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            if not self.finished:
                                disconnected = True
                                group.cancel_scope.cancel()
                            return

                group.start_soon(watch)
                send_all: Callable[[Send, float], Awaitable[None]] = (
                    self._send_stream if self.params.stream else self._send_whole
                )
                try:
                    await send_all(send, start)
                except OSError:  # the client went away while we wrote
                    disconnected = not self.finished
                group.cancel_scope.cancel()
        finally:
            stats.in_flight -= 1
            if not self.probe:
                server._chain_ended(self.question, self.replies)
            if disconnected or not self.finished:
                stats.disconnected += 1
                stats.tokens_before_disconnect += self._generated(start)
            else:
                stats.completed += 1
                stats.prompt_tokens += self.prompt_tokens
                stats.completion_tokens += self.completion_tokens
