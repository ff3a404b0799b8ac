"""Deeper reasoning: stream one chain of thought and probe its answer every ``k`` tokens.

A streaming sampler is an async generator: the runtime records each probe it yields as a sample
and asks the policy after each one, so a chain whose answer has settled (``Stable(k=3)``, Dynasor's
Certaindex) is stopped early, and stopping it closes the stream's HTTP request. Each probe carries
the tokens generated since the previous probe, so a run's token and dollar totals add up to what
the server billed.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Literal

import anyio

from .._sample import Sample
from ..extract import Extractor, default
from ._openai import ClientOwner, Messages, _check_messages, _usage, sample_from
from ._price import PriceLike, resolve_price
from ._retry import DEFAULT_RETRY, Retry, call_with_retry

__all__ = ["StreamingSampler", "openai_chat_stream", "openai_completion_stream", "settled_text"]

#: What a probe request appends to the partial chain (Dynasor's Certaindex probe).
DEFAULT_PROBE_PROMPT = "... the answer is"
_LAST_BREAK = re.compile(r"(?s).*(?:\.(?=\s)|\n)")


def settled_text(partial: str) -> str:
    """The part of a partial text up to its last finished sentence (a period then a space, or a line break).

    Extracting from it avoids reading ``"the answer is 4"`` out of a chain that is writing ``"42."``.
    """
    found = _LAST_BREAK.match(partial)
    return found.group(0) if found else ""


class StreamingSampler(ClientOwner):
    """A sampler streaming one chain of thought per call and yielding a probe every ``probe_every`` tokens.

    Made by :func:`openai_chat_stream` / :func:`openai_completion_stream`. Each call is an async
    generator of samples: the probes, then the chain's final answer. The probe's answer is read
    from the text so far (``probe="text"``) or asked for with a short extra request that appends
    ``probe_prompt`` to the partial chain (``probe="request"``, Dynasor's Certaindex probe).
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
        probe_every: int = 64,
        probe: Literal["text", "request"] = "text",
        probe_prompt: str = DEFAULT_PROBE_PROMPT,
        probe_max_tokens: int = 16,
        price: PriceLike = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        params: Mapping[str, Any] | None = None,
        retry: Retry | None = DEFAULT_RETRY,
        api_key: str | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(probe_every, bool) or not isinstance(probe_every, int) or probe_every < 1:
            raise ValueError(f"probe_every must be an int >= 1 (tokens between probes), got {probe_every!r}")
        if probe not in ("text", "request"):
            raise ValueError(f"probe must be 'text' or 'request', got {probe!r}")
        if isinstance(probe_max_tokens, bool) or not isinstance(probe_max_tokens, int) or probe_max_tokens < 1:
            raise ValueError(f"probe_max_tokens must be an int >= 1, got {probe_max_tokens!r}")
        if not callable(extract):
            raise TypeError(f"extract must be a function text -> answer, got {extract!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        self.kind = kind
        self.model = model
        self.extract = extract
        self.probe_every = probe_every
        self.probe = probe
        self.probe_prompt = probe_prompt
        self.probe_max_tokens = probe_max_tokens
        self.retry = retry
        self.price = resolve_price(price, model)
        if kind == "chat":
            if messages is None:
                raise ValueError("a chat sampler needs messages")
            self._messages = _check_messages(messages)
        elif not isinstance(prompt, str):
            raise ValueError(f"a completion sampler needs a prompt string, got {prompt!r}")
        self._prompt = prompt or ""
        self._params: dict[str, Any] = dict(params or {})
        if temperature is not None:
            self._params["temperature"] = temperature
        if max_tokens is not None:
            self._params["max_tokens"] = max_tokens
        self._set_client(client_or_base_url, api_key)
        self._rng = random.Random(seed)

    def __repr__(self) -> str:
        return f"openai_{self.kind}_stream(model={self.model!r}, probe_every={self.probe_every}, probe={self.probe!r})"

    def _resource(self) -> Any:
        client = self.client
        return client.chat.completions if self.kind == "chat" else client.completions

    def _request_args(self) -> dict[str, Any]:
        if self.kind == "chat":
            return {"messages": self._messages}
        return {"prompt": self._prompt}

    async def __call__(self) -> AsyncGenerator[Sample, None]:
        """Stream one chain: yield a probe sample every ``probe_every`` tokens, then the final sample."""

        async def open_stream() -> Any:
            return await self._resource().create(
                model=self.model,
                stream=True,
                stream_options={"include_usage": True},
                **self._request_args(),
                **self._params,
            )

        stream = await call_with_retry(open_stream, self.retry, self._rng)
        parts: list[str] = []
        counted = 0  # tokens already handed out in probes
        pending = 0  # tokens since the last probe
        usage: Any = None
        try:
            async for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk
                for choice in chunk.choices or ():
                    if self.kind == "chat":
                        piece = getattr(choice.delta, "content", None) or ""
                    else:
                        piece = choice.text or ""
                    if piece:
                        parts.append(piece)
                        pending += 1
                if pending >= self.probe_every:
                    sample = await self._probe("".join(parts), pending)
                    counted += pending
                    pending = 0
                    yield sample
        finally:
            with anyio.move_on_after(2.0, shield=True):
                await stream.close()
        prompt_tokens, completion_tokens = _usage(usage)
        tokens = pending if completion_tokens is None else max(completion_tokens - counted, 0)
        yield sample_from(
            self.extract("".join(parts)), tokens, None, price=self.price, prompt_tokens=prompt_tokens or 0
        )

    async def _probe(self, partial: str, tokens: int) -> Sample:
        if self.probe == "text":
            return sample_from(self.extract(settled_text(partial)), tokens, None, price=self.price, prompt_tokens=0)
        if self.kind == "chat":
            args: dict[str, Any] = {
                "messages": [
                    *self._messages,
                    {"role": "assistant", "content": partial},
                    {"role": "user", "content": self.probe_prompt},
                ]
            }
        else:
            args = {"prompt": self._prompt + partial + self.probe_prompt}
        params = {k: v for k, v in self._params.items() if k != "max_tokens"}

        async def request() -> Any:
            return await self._resource().create(model=self.model, max_tokens=self.probe_max_tokens, **args, **params)

        response = await call_with_retry(request, self.retry, self._rng)
        choice = response.choices[0]
        text = (getattr(choice.message, "content", None) if self.kind == "chat" else choice.text) or ""
        prompt_tokens, completion_tokens = _usage(response)
        total = tokens + (completion_tokens or 0)
        # The probe request's prompt (the question and the partial chain) is paid again, by this probe.
        cost = None if self.price is None else self.price.cost(prompt_tokens or 0, total)
        return Sample(answer=self.extract(self.probe_prompt + text), tokens=total, cost=cost)


def openai_chat_stream(
    client_or_base_url: Any,
    model: str,
    messages: Messages,
    *,
    extract: Extractor = default,
    probe_every: int = 64,
    probe: Literal["text", "request"] = "text",
    probe_prompt: str = DEFAULT_PROBE_PROMPT,
    probe_max_tokens: int = 16,
    price: PriceLike = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    retry: Retry | None = DEFAULT_RETRY,
    api_key: str | None = None,
    seed: int | None = None,
) -> StreamingSampler:
    """Deeper reasoning on ``/chat/completions``: stream one chain per call, probe it every ``probe_every`` tokens.

    Each call of the sampler is an async generator yielding a :class:`~budgetctl.Sample` per probe
    (its ``tokens`` are those generated since the previous probe, plus a probe request's own) and a
    last one for the finished chain (the rest of ``usage.completion_tokens``, with the prompt's
    cost). Pair it with a policy that reads agreement between successive answers, e.g.
    ``Stable(3)``: the run stops the chain as soon as its answer has settled, and closing the
    generator closes the HTTP stream.

    Args:
        probe: ``"text"`` extracts from the text so far, up to its last finished sentence (free);
            ``"request"`` sends a short request (``probe_max_tokens``) with the partial chain as an
            assistant message followed by ``probe_prompt`` as a user message, and extracts from
            ``probe_prompt`` plus the reply (Dynasor's Certaindex probe; costs a request).
        Others: as :func:`~budgetctl.samplers.openai_chat`.
    """
    return StreamingSampler(
        client_or_base_url,
        model,
        kind="chat",
        messages=messages,
        extract=extract,
        probe_every=probe_every,
        probe=probe,
        probe_prompt=probe_prompt,
        probe_max_tokens=probe_max_tokens,
        price=price,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        retry=retry,
        api_key=api_key,
        seed=seed,
    )


def openai_completion_stream(
    client_or_base_url: Any,
    model: str,
    prompt: str,
    *,
    extract: Extractor = default,
    probe_every: int = 64,
    probe: Literal["text", "request"] = "text",
    probe_prompt: str = DEFAULT_PROBE_PROMPT,
    probe_max_tokens: int = 16,
    price: PriceLike = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
    retry: Retry | None = DEFAULT_RETRY,
    api_key: str | None = None,
    seed: int | None = None,
) -> StreamingSampler:
    """Deeper reasoning on ``/completions``: as :func:`openai_chat_stream`, with a prompt string.

    A ``probe="request"`` probe sends ``prompt + partial chain + probe_prompt``, exactly Dynasor's probe.
    """
    return StreamingSampler(
        client_or_base_url,
        model,
        kind="completion",
        prompt=prompt,
        extract=extract,
        probe_every=probe_every,
        probe=probe,
        probe_prompt=probe_prompt,
        probe_max_tokens=probe_max_tokens,
        price=price,
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        retry=retry,
        api_key=api_key,
        seed=seed,
    )
