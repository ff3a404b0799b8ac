"""What a client asks the proxy: the OpenAI request, and the optional ``"budgetctl"`` object that tunes the run.

The ``"budgetctl"`` object (what the openai SDK's ``extra_body={"budgetctl": {...}}`` sends) may set
``deadline`` (seconds), ``policy`` (a spec), ``max_samples``, ``budget`` (``{"tokens": N, "usd": X}``
for this request alone), ``concurrency`` (its samples in flight at once), ``extract`` (an extractor
name) and ``meta`` (JSON written into the trace: ``id``, ``gold``, ``dataset``...). Everything
else in the body is sent to the upstream as the client wrote it, one sample per call.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..serve._requests import BadRequest, message_texts, prompt_of, stream_settings

__all__ = ["BadRequest", "ProxyRequest", "parse_request", "Defaults"]

#: The most a request may ask for, whatever its ``budgetctl`` object says.
MAX_DEADLINE = 3600.0
MAX_SAMPLES = 1024
MAX_META_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Defaults:
    """The proxy's settings a request may override."""

    deadline: float
    policy: str
    max_samples: int | None
    concurrency: int
    extract: str


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """One parsed completion request."""

    chat: bool
    model: str
    #: The body sent upstream for each sample (``budgetctl``, ``stream``, ``stream_options`` and ``n`` removed).
    upstream_body: dict[str, Any]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    #: Characters the model reads (for a prompt-token estimate before the first usage report).
    prompt_chars: int
    #: A stable id of the prompt (sha256 prefix), for traces that must not hold the prompt.
    prompt_id: str
    #: The prompt as text (last user message, or the prompt), written to traces only when asked.
    prompt_text: str
    deadline: float
    policy: str
    max_samples: int | None
    tokens: int | None
    usd: float | None
    concurrency: int
    extract: str
    meta: dict[str, Any]


def _number(options: Mapping[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = options.get(name)
    if value is None:
        return None
    kind = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise BadRequest(f"'budgetctl.{name}' must be {what} between {low:g} and {high:g}, got {value!r}", name)
    return value


def parse_request(body: Any, *, chat: bool, defaults: Defaults) -> ProxyRequest:
    """Check a completion request and split it into the upstream body and the run's settings."""
    body, model, asked = prompt_of(body, chat=chat)
    if isinstance(asked, list):
        texts = message_texts(asked)
        users = message_texts(asked, role="user")
        prompt_text = users[-1] if users else texts[-1]
        prompt_chars = sum(len(t) for t in texts)
        everything = json.dumps(asked, sort_keys=True, default=str)
    else:
        prompt_text = everything = asked
        prompt_chars = len(asked)
    n = body.get("n", 1)
    if n not in (1, None) or isinstance(n, bool):
        raise BadRequest(
            f"'n' must be 1: the proxy samples as the policy says and answers with one choice, got {n!r}", "n"
        )
    stream, options = stream_settings(body)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest(f"'max_tokens' must be an integer >= 1, got {max_tokens!r}", "max_tokens")

    ours = body.get("budgetctl") or {}
    if not isinstance(ours, dict):
        raise BadRequest("'budgetctl' must be an object", "budgetctl")
    unknown = sorted(set(ours) - {"deadline", "policy", "max_samples", "budget", "concurrency", "extract", "meta"})
    if unknown:
        raise BadRequest(
            f"unknown 'budgetctl' field(s) {', '.join(map(repr, unknown))} (known: deadline, policy, max_samples, "
            "budget, concurrency, extract, meta)",
            "budgetctl",
        )
    deadline = _number(ours, "deadline", 0.001, MAX_DEADLINE)
    max_samples = _number(ours, "max_samples", 1, MAX_SAMPLES, integer=True)
    concurrency = _number(ours, "concurrency", 1, 64, integer=True)
    policy = ours.get("policy", defaults.policy)
    if not isinstance(policy, str) or not policy.strip():
        raise BadRequest(f"'budgetctl.policy' must be a policy spec string, got {policy!r}", "policy")
    extract = ours.get("extract", defaults.extract)
    if not isinstance(extract, str):
        raise BadRequest(f"'budgetctl.extract' must be an extractor name, got {extract!r}", "extract")
    budget = ours.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - {"tokens", "usd"}:
        raise BadRequest("'budgetctl.budget' must be an object with 'tokens' and/or 'usd'", "budget")
    tokens = _number(budget, "tokens", 1, 1e12, integer=True)
    usd = _number(budget, "usd", 0, 1e9)
    meta = ours.get("meta") or {}
    if not isinstance(meta, dict) or len(json.dumps(meta, default=str)) > MAX_META_BYTES:
        raise BadRequest(f"'budgetctl.meta' must be an object of at most {MAX_META_BYTES} bytes of JSON", "meta")

    upstream = {k: v for k, v in body.items() if k not in ("budgetctl", "stream", "stream_options", "n")}
    return ProxyRequest(
        chat=chat,
        model=model,
        upstream_body=upstream,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        max_tokens=max_tokens,
        prompt_chars=prompt_chars,
        prompt_id=hashlib.sha256(everything.encode("utf-8", "replace")).hexdigest()[:16],
        prompt_text=prompt_text,
        deadline=float(deadline if deadline is not None else defaults.deadline),
        policy=policy,
        max_samples=max_samples if max_samples is not None else defaults.max_samples,
        tokens=tokens,
        usd=usd,
        concurrency=concurrency if concurrency is not None else defaults.concurrency,
        extract=extract,
        meta=dict(meta),
    )
