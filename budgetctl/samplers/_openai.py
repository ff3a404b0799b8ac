"""Samplers for OpenAI-compatible endpoints (vLLM, SGLang, llama.cpp, OpenAI and the like).

Built on the official ``openai`` async client: it knows every such server's wire format, its error
classes carry the HTTP status that retry decisions need, and cancelling an ``await`` on it closes
the HTTP connection, so a run that stops takes its requests down with it (the server sees the
disconnect and can stop generating).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
from collections.abc import Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from .._optional import import_optional
from .._sample import Sample
from ..extract import Extractor, default
from ._price import Price, PriceLike, resolve_price
from ._retry import DEFAULT_RETRY, Retry, call_with_retry

__all__ = [
    "OpenAISampler",
    "Messages",
    "openai_chat",
    "openai_completion",
    "make_client",
    "sample_from",
    "split_tokens",
]

#: Chat messages: a list of ``{"role": ..., "content": ...}`` dicts, or one string (a single user message).
Messages: TypeAlias = Sequence[Mapping[str, Any]] | str


def _with_v1(base_url: str) -> str:
    # "http://host:8000" -> "http://host:8000/v1": the path every OpenAI-compatible server uses.
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must look like http://host:port/v1, got {base_url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1")
    return urlunsplit(parts)


def make_client(client_or_base_url: Any, *, api_key: str | None = None) -> tuple[Any, bool]:
    """An ``openai.AsyncOpenAI`` client without its own retries, and whether the caller owns (must close) it.

    A base URL gets a new client (``api_key`` defaults to ``$OPENAI_API_KEY``, else ``"EMPTY"``, which
    local servers accept). A given client is used as is, through ``with_options(max_retries=0)``:
    budgetctl retries itself, and only while the deadline allows.
    """
    if isinstance(client_or_base_url, str):
        openai = import_optional("openai", "openai", "an OpenAI-compatible sampler from a base URL")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        return openai.AsyncOpenAI(base_url=_with_v1(client_or_base_url), api_key=key, max_retries=0), True
    if not hasattr(client_or_base_url, "chat") or not hasattr(client_or_base_url, "completions"):
        raise TypeError(
            f"client_or_base_url must be a base URL or an openai.AsyncOpenAI client, got {client_or_base_url!r}"
        )
    with_options = getattr(client_or_base_url, "with_options", None)
    client = with_options(max_retries=0) if callable(with_options) else client_or_base_url
    return client, False


def _check_messages(messages: Messages) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            f"messages must be a non-empty list of {{'role', 'content'}} dicts or a string, got {messages!r}"
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"messages[{i}] must be a dict with a 'role', got {message!r}")
        checked.append(dict(message))
    return checked


def split_tokens(total: int | None, texts: Sequence[str], known: Sequence[int | None]) -> list[int]:
    """Per-choice token counts of one response whose ``usage`` only gives the ``total``.

    Counts known per choice (from logprobs) are used when they add up to ``total``; otherwise
    ``total`` is shared in proportion to the texts' lengths (largest remainders), so the counts
    always add up to what the server billed. Without a total, known counts or ``len(text) / 4``.
    """
    if all(k is not None for k in known) and (total is None or sum(k for k in known if k is not None) == total):
        return [int(k) for k in known if k is not None]
    if total is None:
        return [int(k) if k is not None else math.ceil(len(t) / 4) for k, t in zip(known, texts, strict=True)]
    weights = [max(len(t), 1) for t in texts]
    scale = total / sum(weights)
    shares = [w * scale for w in weights]
    counts = [math.floor(s) for s in shares]
    left = total - sum(counts)
    for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[:left]:
        counts[i] += 1
    return counts


def _chat_logprobs(choice: Any) -> list[float] | None:
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None)
    if not content:
        return None
    return [float(token.logprob) for token in content]


def _completion_logprobs(choice: Any) -> list[float] | None:
    logprobs = getattr(choice, "logprobs", None)
    values = getattr(logprobs, "token_logprobs", None)
    if not values:
        return None
    return [float(v) for v in values if v is not None]


def _usage(response: Any) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    if usage is None:
        return None, None
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
    )


def sample_from(
    answer: Hashable,
    tokens: int,
    token_logprobs: Sequence[float] | None,
    *,
    price: Price | None,
    prompt_tokens: float,
) -> Sample:
    """One :class:`Sample`: logprobs become ``logprob`` (their sum) and ``confidence`` (their geometric mean)."""
    logprob = confidence = None
    if token_logprobs:
        logprob = min(math.fsum(token_logprobs), 0.0)
        confidence = math.exp(logprob / len(token_logprobs))
    cost = None if price is None else price.cost(prompt_tokens, tokens)
    return Sample(answer=answer, tokens=tokens, logprob=logprob, confidence=confidence, cost=cost)


#: Modules an OpenAI client's first request imports (its resources, the HTTP transport, anyio's
#: sockets and thread pool): imported when a sampler is made, so that the first call of a process
#: does not hold the event loop for them inside a run (over 0.4 s on a busy machine, past a 0.3 s
#: deadline). Names that this openai/httpx version lacks are skipped.
_FIRST_CALL_MODULES = (
    "openai.resources.chat.completions",
    "openai.resources.completions",
    "httpcore",
    "httpcore2",
    "anyio._core._sockets",
    "concurrent.futures.thread",
)


def _import_first_call_modules() -> None:
    import importlib
    import importlib.util

    for name in _FIRST_CALL_MODULES:
        if name in sys.modules:
            continue
        with contextlib.suppress(ImportError, ValueError):
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)


class ClientOwner:
    """The lifecycle of a sampler's HTTP client: made on the first call, closed by :meth:`aclose` (or ``async with``).

    Given a base URL, the sampler checks it and imports ``openai`` when it is made (a missing extra
    or a malformed URL fails there), but creates the client (its connection pool and TLS context)
    only on its first call: inside the run, so that the run's deadline counts it. The modules that
    first call would import are imported when the sampler is made (a process-wide cost, paid once,
    that would otherwise hold the event loop inside the run). A client passed in is used as is and
    never closed here.
    """

    _client: Any
    _owns_client: bool
    _client_args: dict[str, Any]
    _client_factory: Any

    def _set_client(self, client_or_base_url: Any, api_key: str | None) -> None:
        if isinstance(client_or_base_url, str):
            base_url = _with_v1(client_or_base_url)
            openai = import_optional("openai", "openai", "an OpenAI-compatible sampler from a base URL")
            _import_first_call_modules()
            key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
            self._client_factory = openai.AsyncOpenAI
            self._client_args = {"base_url": base_url, "api_key": key, "max_retries": 0}
            self._client, self._owns_client = None, True
        else:
            self._client, self._owns_client = make_client(client_or_base_url, api_key=api_key)

    @property
    def client(self) -> Any:
        """The ``openai.AsyncOpenAI`` client, made now if the sampler was given a base URL and has none yet."""
        if self._client is None:
            self._client = self._client_factory(**self._client_args)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client, if this sampler made it from a base URL (a later call makes a new one)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class OpenAISampler(ClientOwner):
    """A sampler that sends one request per call to an OpenAI-compatible endpoint (made by :func:`openai_chat`).

    Each call returns one :class:`~budgetctl.Sample` (``n=1``) or a batch of ``n``. Use it as an
    async context manager, or call :meth:`aclose`, to close a client it made from a base URL.
    """

    def __init__(
        self,
        client_or_base_url: Any,
        model: str,
        *,
        kind: Literal["chat", "completion"],
        messages: Messages | None = None,
        prompt: str | None = None,
        extract: Extractor = default,
        n: int = 1,
        price: PriceLike = None,
        logprobs: bool = False,
        temperature: float | None = None,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        retry: Retry | None = DEFAULT_RETRY,
        api_key: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if not callable(extract):
            raise TypeError(f"extract must be a function text -> answer, got {extract!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a budgetctl.samplers.Retry or None, got {retry!r}")
        self.kind = kind
        self.model = model
        self.n = n
        self.extract = extract
        self.logprobs = logprobs
        self.retry = retry
        self.price = resolve_price(price, model)
        self._messages = _check_messages(messages) if kind == "chat" and messages is not None else None
        if kind == "chat" and self._messages is None:
            raise ValueError("a chat sampler needs messages")
        if kind == "completion" and not isinstance(prompt, str):
            raise ValueError(f"a completion sampler needs a prompt string, got {prompt!r}")
        self._prompt = prompt
        self._params: dict[str, Any] = dict(params or {})
        if temperature is not None:
            self._params["temperature"] = temperature
        if max_tokens is not None:
            self._params["max_tokens"] = max_tokens
        self._set_client(client_or_base_url, api_key)
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        extract = getattr(self.extract, "__name__", repr(self.extract))
        return f"openai_{self.kind}(model={self.model!r}, n={self.n}, extract={extract})"

    async def __call__(self) -> Sample | list[Sample]:
        """Send one request; return its sample (or its ``n`` samples)."""
        if self.kind == "chat":
            return await self._chat()
        return await self._completion()

    async def _chat(self) -> Sample | list[Sample]:
        extra: dict[str, Any] = {"logprobs": True} if self.logprobs else {}
        if self.n != 1:
            extra["n"] = self.n

        async def request() -> Any:
            return await self.client.chat.completions.create(
                model=self.model, messages=self._messages, **extra, **self._params
            )

        response = await call_with_retry(request, self.retry, self._rng)
        choices = sorted(response.choices, key=lambda c: c.index)
        texts = [getattr(c.message, "content", None) or "" for c in choices]
        return self._samples(response, texts, [_chat_logprobs(c) for c in choices])

    async def _completion(self) -> Sample | list[Sample]:
        extra: dict[str, Any] = {"logprobs": 1} if self.logprobs else {}
        if self.n != 1:
            extra["n"] = self.n

        async def request() -> Any:
            return await self.client.completions.create(model=self.model, prompt=self._prompt, **extra, **self._params)

        response = await call_with_retry(request, self.retry, self._rng)
        choices = sorted(response.choices, key=lambda c: c.index)
        texts = [c.text or "" for c in choices]
        return self._samples(response, texts, [_completion_logprobs(c) for c in choices])

    def _samples(self, response: Any, texts: list[str], logprobs: list[list[float] | None]) -> Sample | list[Sample]:
        if not texts:
            raise ValueError("the server returned no choices")
        prompt_tokens, completion_tokens = _usage(response)
        counts = split_tokens(completion_tokens, texts, [None if lp is None else len(lp) for lp in logprobs])
        prompt_share = (prompt_tokens or 0) / len(texts)
        samples = [
            sample_from(self.extract(text), tokens, lp, price=self.price, prompt_tokens=prompt_share)
            for text, tokens, lp in zip(texts, counts, logprobs, strict=True)
        ]
        return samples[0] if self.n == 1 and len(samples) == 1 else samples


def openai_chat(
    client_or_base_url: Any,
    model: str,
    messages: Messages,
    *,
    extract: Extractor = default,
    n: int = 1,
    price: PriceLike = None,
    logprobs: bool = False,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    retry: Retry | None = DEFAULT_RETRY,
    api_key: str | None = None,
    seed: int | None = None,
) -> OpenAISampler:
    """A sampler sending ``messages`` to ``/chat/completions`` of an OpenAI-compatible server.

    Args:
        client_or_base_url: an ``openai.AsyncOpenAI`` client, or a base URL such as
            ``"http://127.0.0.1:8000/v1"`` (a client is made, and closed by :meth:`OpenAISampler.aclose`).
        model: the model name the server knows.
        messages: chat messages, or one string sent as the user message.
        extract: text -> answer (``None`` abstains); see :mod:`budgetctl.extract`.
        n: completions per request; ``n > 1`` returns a batch of samples from one request.
        price: a :class:`Price` (or ``{model: Price}``) to fill ``Sample.cost`` in dollars; the
            prompt's cost is shared among the ``n`` samples of a request.
        logprobs: ask for token logprobs; they become ``Sample.logprob`` and ``Sample.confidence``.
        temperature, max_tokens: sent when given (else the server's defaults).
        params: any other ``create()`` arguments (``top_p``, ``extra_body``...).
        retry: retries on 429/5xx/dropped connections while the deadline allows; ``None`` never retries.
        api_key: for a base URL (default ``$OPENAI_API_KEY``, else ``"EMPTY"``).
        seed: seeds the backoff jitter.

    Token counts come from the response's ``usage`` (split among the ``n`` choices by their
    logprob counts when given, else by length, always adding up to ``usage.completion_tokens``).
    """
    return OpenAISampler(
        client_or_base_url,
        model,
        kind="chat",
        messages=messages,
        extract=extract,
        n=n,
        price=price,
        logprobs=logprobs,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        retry=retry,
        api_key=api_key,
        seed=seed,
    )


def openai_completion(
    client_or_base_url: Any,
    model: str,
    prompt: str,
    *,
    extract: Extractor = default,
    n: int = 1,
    price: PriceLike = None,
    logprobs: bool = False,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    retry: Retry | None = DEFAULT_RETRY,
    api_key: str | None = None,
    seed: int | None = None,
) -> OpenAISampler:
    """A sampler sending ``prompt`` to ``/completions`` (the legacy text API; base models, vLLM).

    Takes the same arguments as :func:`openai_chat`, with a ``prompt`` string instead of messages.
    """
    return OpenAISampler(
        client_or_base_url,
        model,
        kind="completion",
        prompt=prompt,
        extract=extract,
        n=n,
        price=price,
        logprobs=logprobs,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        retry=retry,
        api_key=api_key,
        seed=seed,
    )
