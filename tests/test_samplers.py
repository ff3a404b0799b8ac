"""The OpenAI-compatible samplers, against the real ``openai`` client over a mock HTTP transport.

Every response here is written by hand, so each test knows exactly what the server billed and can
check the samples against it: token counts from ``usage``, batches, logprobs, prices, retries (only
on 429/5xx, only while the deadline allows), streamed chains with probes, and mixing kinds of compute.
"""

from __future__ import annotations

import importlib
import json
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import budgetctl as bc
from budgetctl.policies import MaxSamples, Stable
from budgetctl.samplers import (
    Price,
    Retry,
    alternate,
    openai_chat,
    openai_chat_stream,
    openai_completion,
    openai_completion_stream,
    settled_text,
)
from budgetctl.samplers._openai import make_client, split_tokens

openai = pytest.importorskip("openai")
# openai 1.x is built on httpx, 3.x on httpx2: use whichever its client class comes from.
httpx: Any = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])

pytestmark = pytest.mark.anyio

#: Streamed responses run on asyncio only: openai's SSE reader leaves its inner async generators to the
#: garbage collector after ``[DONE]``, which trio (rightly) reports as a ResourceWarning.
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

Handler = Callable[[Any], Awaitable[Any]]


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class FakeServer:
    """Answers requests with a script of responses (or a function of the request) and records the requests."""

    def __init__(self, *responses: Any) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.requests.append(body)
        step = self.responses[min(len(self.requests), len(self.responses)) - 1]
        return step(body) if callable(step) else step


def client_for(handler: Handler) -> Any:
    transport = httpx.MockTransport(handler)
    return openai.AsyncOpenAI(
        base_url="http://replay.test/v1",
        api_key="test",
        http_client=openai.DefaultAsyncHttpxClient(transport=transport),
    )


def chat_response(
    *texts: str,
    prompt_tokens: int = 10,
    completion_tokens: int | None = None,
    logprobs: list[list[float]] | None = None,
) -> Any:
    choices = []
    for i, text in enumerate(texts):
        lp: dict[str, Any] | None = None
        if logprobs is not None:
            lp = {"content": [{"token": "t", "logprob": v, "bytes": None, "top_logprobs": []} for v in logprobs[i]]}
        choices.append(
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": "stop"}
        )
    usage = None
    if completion_tokens is not None:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": choices, "usage": usage}
    return httpx.Response(200, json=body)


def completion_response(
    text: str, *, prompt_tokens: int, completion_tokens: int, logprobs: list[float] | None = None
) -> Any:
    lp = (
        None
        if logprobs is None
        else {
            "tokens": ["t"] * len(logprobs),
            "token_logprobs": logprobs,
            "top_logprobs": None,
            "text_offset": [0] * len(logprobs),
        }
    )
    body = {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 0},
    }
    return httpx.Response(200, json=body)


def error(status: int, headers: dict[str, str] | None = None) -> Any:
    return httpx.Response(status, json={"error": {"message": f"status {status}", "type": "x"}}, headers=headers or {})


def stream_chunk(piece: str | None, *, chat: bool = True, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One server-sent chunk: a piece of text (chat delta or completion text), or the final usage chunk."""
    choices: list[dict[str, Any]] = []
    if piece is not None:
        choice: dict[str, Any] = {"delta": {"content": piece}} if chat else {"text": piece, "logprobs": None}
        choices.append({"index": 0, "finish_reason": None, **choice})
    kind = "chat.completion.chunk" if chat else "text_completion"
    chunk: dict[str, Any] = {"id": "s", "object": kind, "created": 0, "model": "m", "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def sse(pieces: list[str], *, chat: bool = True, prompt_tokens: int, completion_tokens: int) -> Any:
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": 0}
    events = [stream_chunk(p, chat=chat) for p in pieces] + [stream_chunk(None, chat=chat, usage=usage)]
    content = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=content, headers={"content-type": "text/event-stream"})


async def collect(stream: Any) -> list[bc.Sample]:
    return [sample async for sample in stream]


# -- one request per call ----------------------------------------------------------------------------------
async def test_chat_sample_takes_answer_tokens_and_cost_from_the_response() -> None:
    server = FakeServer(chat_response("Thinking. The answer is 1,000.", prompt_tokens=12, completion_tokens=7))
    async with client_for(server) as client:
        sampler = openai_chat(client, "m", "What?", price=Price(input=0.5, output=2.0), temperature=0.7)
        sample = await sampler()
    assert isinstance(sample, bc.Sample)
    assert sample.answer == 1000
    assert sample.tokens == 7
    assert sample.cost == pytest.approx(12 * 0.5 + 7 * 2.0)
    assert server.requests[0]["messages"] == [{"role": "user", "content": "What?"}]
    assert server.requests[0]["temperature"] == 0.7
    assert "n" not in server.requests[0]


async def test_batch_of_n_adds_up_to_the_billed_usage() -> None:
    texts = ("The answer is 3.", "A much longer derivation... The answer is 4.", "I am not sure.")
    server = FakeServer(chat_response(*texts, prompt_tokens=30, completion_tokens=50))
    price = Price.per_million(1.0, 3.0)
    async with client_for(server) as client:
        samples = await openai_chat(client, "m", [{"role": "user", "content": "q"}], n=3, price=price)()
    assert isinstance(samples, list) and len(samples) == 3
    assert [s.answer for s in samples] == [3, 4, None]
    assert sum(s.tokens for s in samples) == 50
    assert samples[1].tokens > samples[0].tokens  # shared by length
    assert math.fsum(s.cost or 0.0 for s in samples) == pytest.approx(price.cost(30, 50))
    assert server.requests[0]["n"] == 3


async def test_logprobs_become_logprob_and_confidence() -> None:
    logprobs = [[-0.1, -0.2, -0.3], [-1.0, -1.0]]
    server = FakeServer(chat_response("The answer is a.", "The answer is b.", completion_tokens=5, logprobs=logprobs))
    async with client_for(server) as client:
        samples = await openai_chat(client, "m", "q", n=2, logprobs=True)()
    assert isinstance(samples, list)
    assert [s.tokens for s in samples] == [3, 2]  # per-choice counts from the logprobs
    assert samples[0].logprob == pytest.approx(-0.6)
    assert samples[0].confidence == pytest.approx(math.exp(-0.2))
    assert samples[1].confidence == pytest.approx(math.exp(-1.0))
    assert server.requests[0]["logprobs"] is True


async def test_completion_sampler_sends_the_prompt() -> None:
    server = FakeServer(
        completion_response(" so \\boxed{12}", prompt_tokens=4, completion_tokens=3, logprobs=[-0.5, -0.5, -0.5])
    )
    async with client_for(server) as client:
        sample = await openai_completion(client, "m", "Q: 3*4?\nA:", logprobs=True, max_tokens=64)()
    assert isinstance(sample, bc.Sample)
    assert (sample.answer, sample.tokens) == (12, 3)
    assert sample.confidence == pytest.approx(math.exp(-0.5))
    assert server.requests[0]["prompt"] == "Q: 3*4?\nA:"
    assert server.requests[0]["max_tokens"] == 64


async def test_missing_usage_falls_back_to_an_estimate() -> None:
    server = FakeServer(chat_response("The answer is 8." * 2))
    async with client_for(server) as client:
        sample = await openai_chat(client, "m", "q")()
    assert isinstance(sample, bc.Sample)
    assert sample.tokens == math.ceil(len("The answer is 8." * 2) / 4)


# -- retries -----------------------------------------------------------------------------------------------
FAST = Retry(attempts=3, initial=0.001, maximum=0.002)


async def test_retries_429_and_5xx_then_succeeds() -> None:
    server = FakeServer(error(429), error(503), chat_response("The answer is 1.", completion_tokens=4))
    async with client_for(server) as client:
        sample = await openai_chat(client, "m", "q", retry=FAST)()
    assert isinstance(sample, bc.Sample) and sample.answer == 1
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "check"),
    [(400, "parameters"), (401, "API key"), (403, "permissions"), (404, "base URL"), (422, "parameters")],
)
async def test_client_errors_are_fatal_and_not_retried(status: int, check: str) -> None:
    server = FakeServer(error(status), chat_response("The answer is 1.", completion_tokens=4))
    async with client_for(server) as client:
        with pytest.raises(bc.FatalSamplerError) as info:
            await openai_chat(client, "m", "q", retry=FAST)()
    assert len(server.requests) == 1
    message = str(info.value)
    assert "http://replay.test/v1/chat/completions" in message and f"answered {status}" in message
    assert f"status {status}" in message and check in message  # what the server said, and what to check
    assert isinstance(info.value.__cause__, openai.APIStatusError)


async def test_a_404_for_an_unknown_prompt_does_not_blame_the_url() -> None:
    unknown = httpx.Response(404, json={"error": {"message": "no question of the replayed pool matches this prompt"}})
    server = FakeServer(unknown)
    async with client_for(server) as client:
        with pytest.raises(bc.FatalSamplerError) as info:
            await openai_chat(client, "m", "q", retry=FAST)()
    assert "no answer for this prompt" in str(info.value) and "check the base URL" not in str(info.value)


async def test_retries_give_up_after_their_attempts() -> None:
    server = FakeServer(error(500))
    async with client_for(server) as client:
        with pytest.raises(openai.InternalServerError):
            await openai_chat(client, "m", "q", retry=FAST)()
        assert len(server.requests) == 4  # the try and three retries
        with pytest.raises(openai.InternalServerError):
            await openai_chat(client, "m", "q", retry=None)()
    assert len(server.requests) == 5


async def test_no_retry_when_the_backoff_would_pass_the_deadline() -> None:
    server = FakeServer(error(429), chat_response("The answer is 1.", completion_tokens=4))
    async with client_for(server) as client:
        sampler = openai_chat(client, "m", "q", retry=Retry(initial=30.0, maximum=30.0))
        with anyio.CancelScope(deadline=anyio.current_time() + 5), pytest.raises(openai.RateLimitError):
            await sampler()
    assert len(server.requests) == 1


async def test_a_long_retry_after_is_honoured_and_checked_against_the_deadline() -> None:
    server = FakeServer(error(429, {"retry-after": "60"}), chat_response("The answer is 1.", completion_tokens=4))
    async with client_for(server) as client:
        with anyio.CancelScope(deadline=anyio.current_time() + 5), pytest.raises(openai.RateLimitError):
            await openai_chat(client, "m", "q", retry=FAST)()
    assert len(server.requests) == 1


async def test_failures_inside_solve_are_recorded_not_raised() -> None:
    server = FakeServer(error(500), error(500), chat_response("The answer is 1.", completion_tokens=4))
    async with client_for(server) as client:
        result = await bc.solve(openai_chat(client, "m", "q", retry=None), budget=bc.Budget(samples=3), fallback="?")
    assert result.answer == 1
    assert result.n_failed == 2 and all("500" in e for e in result.errors)


async def test_a_fatal_error_ends_the_run_at_once() -> None:
    server = FakeServer(error(404))
    async with client_for(server) as client:
        result = await bc.solve(openai_chat(client, "m", "q"), concurrency=1, fallback="?")
    assert (result.answer, result.stop_reason, result.n_failed) == ("?", "error", 1)
    assert len(server.requests) == 1 and "FatalSamplerError" in result.errors[0] and "404" in result.errors[0]


async def test_a_refused_connection_is_fatal_and_names_the_url() -> None:
    port = free_port()  # nothing listens there
    async with openai_chat(f"http://127.0.0.1:{port}/v1", "m", "q") as sampler:
        result = await bc.solve(sampler, concurrency=4, deadline=30)
    assert result.stop_reason == "error" and result.n_failed <= 4  # the calls already in flight, no more
    assert f"http://127.0.0.1:{port}/v1/chat/completions" in result.errors[0]
    assert "connection refused" in result.errors[0] and "server is running" in result.errors[0]


async def test_the_client_is_made_on_the_first_call_inside_the_run() -> None:
    port = free_port()
    sampler = openai_chat(f"http://127.0.0.1:{port}/v1", "m", "q")

    def made() -> bool:
        return sampler._client is not None

    assert not made()  # nothing made before the run
    await sampler.aclose()  # closing an unused sampler is fine
    with pytest.raises(bc.FatalSamplerError):
        await sampler()
    assert made() and str(sampler.client.base_url).rstrip("/").endswith(f"{port}/v1")
    await sampler.aclose()
    assert not made()


# -- configuration -----------------------------------------------------------------------------------------
def test_price_table_and_validation() -> None:
    table = {"small": Price.per_million(0.15, 0.60)}
    server = FakeServer()
    client = client_for(server)
    assert openai_chat(client, "small", "q", price=table).price == Price(0.15e-6, 0.60e-6)
    with pytest.raises(ValueError, match="no entry for model 'big'"):
        openai_chat(client, "big", "q", price=table)
    with pytest.raises(ValueError, match="input"):
        Price(input=-1.0)
    with pytest.raises(ValueError, match="n must be"):
        openai_chat(client, "m", "q", n=0)
    with pytest.raises(ValueError, match="messages"):
        openai_chat(client, "m", [])
    with pytest.raises(TypeError, match="client_or_base_url"):
        openai_chat(object(), "m", "q")
    with pytest.raises(ValueError, match="probe_every"):
        openai_chat_stream(client, "m", "q", probe_every=0)
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=-1)


async def test_base_url_gets_v1_and_the_client_is_closed() -> None:
    client, owned = make_client("http://127.0.0.1:9", api_key="k")
    assert owned and str(client.base_url).rstrip("/") == "http://127.0.0.1:9/v1"
    await client.close()
    with pytest.raises(ValueError, match="base URL"):
        make_client("127.0.0.1:9")
    async with openai_chat("http://127.0.0.1:9/v1", "m", "q") as sampler:
        assert "openai_chat" in repr(sampler)


@given(
    st.lists(st.text(max_size=30), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=500),
)
def test_split_tokens_always_adds_up(texts: list[str], total: int) -> None:
    counts = split_tokens(total, texts, [None] * len(texts))
    assert sum(counts) == total and all(c >= 0 for c in counts)


# -- deeper reasoning: streamed chains with probes ---------------------------------------------------------
def test_settled_text_stops_at_the_last_finished_sentence() -> None:
    assert settled_text("The answer is 4. Then the answer is 4") == "The answer is 4."
    assert settled_text("no sentence end") == ""
    assert settled_text("line one\nline two") == "line one\n"


@asyncio_only
async def test_stream_probes_add_up_to_the_usage() -> None:
    pieces = ["Hmm", ".", " The", " answer", " is", " 4", ".", " Check", ":", " the", " answer", " is", " 5", "."]
    server = FakeServer(sse(pieces, prompt_tokens=9, completion_tokens=len(pieces) + 1))
    price = Price(input=1.0, output=10.0)
    async with client_for(server) as client:
        sampler = openai_chat_stream(client, "m", "q", probe_every=4, price=price)
        samples = await collect(sampler())
    # Probes after 4, 8 and 12 tokens, then the final sample with the rest of the billed tokens.
    assert [s.tokens for s in samples] == [4, 4, 4, 3]
    assert [s.answer for s in samples] == [None, 4, 4, 5]
    assert sum(s.tokens for s in samples) == len(pieces) + 1
    assert math.fsum(s.cost or 0.0 for s in samples) == pytest.approx(price.cost(9, len(pieces) + 1))
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


@asyncio_only
async def test_stream_probe_requests_ask_for_the_answer_so_far() -> None:
    pieces = ["Let", " me", " think", " about", " it", " more", " and", " more"]

    def reply(body: dict[str, Any]) -> Any:
        if body.get("stream"):
            return sse(pieces, chat=False, prompt_tokens=5, completion_tokens=len(pieces))
        assert body["prompt"].endswith("... the answer is")
        assert body["max_tokens"] == 3
        return completion_response(" 7.", prompt_tokens=20, completion_tokens=2)

    server = FakeServer(reply)
    async with client_for(server) as client:
        sampler = openai_completion_stream(client, "m", "Q:", probe_every=3, probe="request", probe_max_tokens=3)
        samples = await collect(sampler())
    assert [s.answer for s in samples] == [7, 7, None]
    assert [s.tokens for s in samples] == [3 + 2, 3 + 2, 2]
    assert len(server.requests) == 3
    assert server.requests[1]["prompt"] == "Q:Let me think... the answer is"


@asyncio_only
async def test_stopping_the_run_closes_the_stream() -> None:
    closed = anyio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            for i in range(10_000):
                yield b"data: " + json.dumps(stream_chunk(" The answer is 9. ")).encode() + b"\n\n"
                if i % 4 == 3:
                    await anyio.lowlevel.checkpoint()
        finally:
            closed.set()

    async def handler(request: Any) -> Any:
        return httpx.Response(200, content=endless(), headers={"content-type": "text/event-stream"})

    async with client_for(handler) as client:
        result = await bc.solve(openai_chat_stream(client, "m", "q", probe_every=2), policy=Stable(3), deadline=30)
        with anyio.fail_after(10):
            await closed.wait()
    assert result.stop_reason == "policy"
    assert result.answer == 9
    assert result.n_samples == 3
    assert result.tokens == 6


# -- mixing parallel samples and longer chains -------------------------------------------------------------
def test_alternate_follows_its_weights() -> None:
    order: list[str] = []

    def named(name: str) -> Callable[[], Awaitable[bc.Sample]]:
        async def sampler() -> bc.Sample:
            return bc.Sample(answer=name)

        def call() -> Awaitable[bc.Sample]:
            order.append(name)
            return sampler()

        return call

    mixed = alternate(named("a"), named("b"), weights=(3, 1))
    for _ in range(8):
        mixed().close()
    assert order == ["a", "a", "b", "a", "a", "a", "b", "a"]
    assert mixed.calls == [6, 2]
    with pytest.raises(ValueError, match="weights"):
        alternate(named("a"), weights=(0,))
    with pytest.raises(ValueError):
        alternate()


@asyncio_only
async def test_a_run_mixes_batches_and_streamed_chains() -> None:
    stream_pieces = ["The", " answer", " is", " 6", ".", " Done", "."]

    def reply(body: dict[str, Any]) -> Any:
        if body.get("stream"):
            return sse(stream_pieces, prompt_tokens=3, completion_tokens=len(stream_pieces))
        return chat_response("The answer is 6.", "The answer is 6.", prompt_tokens=3, completion_tokens=10)

    server = FakeServer(reply)
    async with client_for(server) as client:
        mixed = alternate(openai_chat(client, "m", "q", n=2), openai_chat_stream(client, "m", "q", probe_every=6))
        result = await bc.solve(mixed, policy=MaxSamples(6), concurrency=2, deadline=30)
    assert result.answer == 6
    assert mixed.calls[0] >= 1 and mixed.calls[1] >= 1
    streamed = sum(1 for r in server.requests if r.get("stream"))
    batched = len(server.requests) - streamed
    assert streamed >= 1 and batched >= 1
    # Every request ran to its end here, so the run's tokens are exactly what was billed.
    assert result.n_cancelled == 0 or result.tokens <= 10 * batched + len(stream_pieces) * streamed
