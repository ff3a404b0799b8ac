"""The HTTP side of a proxied request: run its job while the client is connected, then answer whole or streamed."""

from __future__ import annotations

import json
import math
from contextlib import suppress
from typing import Any

import anyio

from .._optional import import_optional
from ..serve._limits import Message, Receive, Scope, Send
from ._job import Job, Outcome

import_optional("starlette", "proxy", "the proxy (budgetctl proxy)")

from starlette.responses import Response  # noqa: E402

__all__ = ["JobResponse"]


class JobResponse(Response):
    """Runs a job while the client is connected (a disconnect cancels it) and sends its answer, whole or streamed.

    A stream's headers go out with the first best answer (or the end): a request that fails before
    any sample came back is still answered with its real status (429, 502...), not a 200 stream.
    """

    def __init__(self, job: Job) -> None:
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
            outcome: Outcome = payload
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

    async def _whole(self, send: Send, outcome: Outcome) -> None:
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

    async def _finish_stream(self, send: Send, outcome: Outcome) -> None:
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
