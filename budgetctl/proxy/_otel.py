"""OpenTelemetry spans of the proxy (``budgetctl proxy --otel``): one per request, one per upstream call inside it.

Attributes follow OpenTelemetry's GenAI semantic conventions (``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.response.model``,
``gen_ai.usage.input_tokens`` / ``output_tokens``...), plus ``budgetctl.*`` on the request span:
how the run ended. The request span is a SERVER span, child of the client's ``traceparent`` when
it sends one; each upstream call is a CLIENT span under it, and sends its own ``traceparent``
upstream. Spans go to the global TracerProvider (configured by the application, by
``opentelemetry-instrument`` or the ``OTEL_*`` variables), unless one is given.

Only ``opentelemetry-api`` is needed, imported when telemetry is switched on: without ``--otel``
the proxy never imports it. No key, header or prompt is put on a span; the prompt and the answer's
text only with ``--trace-prompts`` (``gen_ai.input.messages``, ``gen_ai.output.messages``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .._optional import import_optional
from .._state import Result
from .._version import __version__
from ..serve._requests import content_text
from ._request import ProxyRequest

__all__ = ["RequestSpan", "SampleSpan", "Telemetry"]

#: What ``gen_ai.provider.name`` says: the proxy speaks the OpenAI API to its upstream, whatever serves it
#: (the conventions ask for the instrumentation's best knowledge; ``server.address`` and the models tell more).
PROVIDER = "openai"
_PURPOSE = "the proxy's OpenTelemetry spans (--otel)"


class Telemetry:
    """Makes the proxy's spans; one per :class:`~budgetctl.proxy.ProxyServer` with ``otel=True``."""

    def __init__(self, upstream: str, *, prompts: bool = False, tracer_provider: Any = None) -> None:
        self.trace = import_optional("opentelemetry.trace", "otel", _PURPOSE)
        self.propagate = import_optional("opentelemetry.propagate", "otel", _PURPOSE)
        self.tracer = self.trace.get_tracer("budgetctl.proxy", __version__, tracer_provider=tracer_provider)
        self.prompts = prompts
        parts = urlsplit(upstream)
        self.address = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)

    def request(self, request: ProxyRequest, headers: Mapping[str, str]) -> RequestSpan:
        """The span of one request (not started yet), under the client's trace context found in ``headers``."""
        return RequestSpan(self, request, self.propagate.extract(headers))


def _base(request: ProxyRequest) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if request.chat else "text_completion",
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": request.model,
    }
    if request.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = request.max_tokens
    return attributes


def _input_messages(request: ProxyRequest) -> str:
    """The request's prompt as ``gen_ai.input.messages`` (the conventions' JSON form of a chat history)."""
    if not request.chat:
        return json.dumps([{"role": "user", "parts": [{"type": "text", "content": request.prompt_text}]}])
    messages = [
        {"role": message.get("role"), "parts": [{"type": "text", "content": content_text(message.get("content"))}]}
        for message in request.upstream_body["messages"]
    ]
    return json.dumps(messages, default=str)


class RequestSpan:
    """The SERVER span of one proxied request: started when its run starts, ended when the run ends."""

    def __init__(self, telemetry: Telemetry, request: ProxyRequest, parent: Any) -> None:
        self.telemetry = telemetry
        self.request = request
        self.parent = parent
        self.span: Any = None
        self.response_model: str | None = None
        self.finished = False

    def start(self) -> None:
        """Open the span (named ``{operation} {model}``, as the conventions ask)."""
        telemetry = self.telemetry
        attributes = _base(self.request)
        attributes["budgetctl.prompt_id"] = self.request.prompt_id
        attributes["budgetctl.stream"] = self.request.stream
        if telemetry.prompts:
            attributes["gen_ai.input.messages"] = _input_messages(self.request)
        self.span = telemetry.tracer.start_span(
            f"{attributes['gen_ai.operation.name']} {self.request.model}",
            context=self.parent,
            kind=telemetry.trace.SpanKind.SERVER,
            attributes=attributes,
        )

    def sample(self) -> SampleSpan:
        """A new CLIENT span for one upstream call, child of this one."""
        return SampleSpan(self)

    def finish(self, summary: Mapping[str, Any], result: Result, outcome: Any, usage: tuple[int, int]) -> None:
        """Record how the run ended: the tokens paid for, the ``budgetctl`` summary, the HTTP status."""
        span = self.span
        self.finished = True
        prompt_tokens, completion_tokens = usage
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)
        if self.response_model is not None:
            span.set_attribute("gen_ai.response.model", self.response_model)
        span.set_attribute("http.response.status_code", outcome.status)
        for name in ("stop_reason", "samples", "failed", "cancelled", "wasted_tokens", "deadline", "policy", "usd"):
            span.set_attribute(f"budgetctl.{name}", summary[name])
        if result.confidence is not None:
            span.set_attribute("budgetctl.confidence", float(result.confidence))
        span.set_attribute("budgetctl.elapsed", float(result.elapsed))
        if outcome.status == 200:
            span.set_attribute("gen_ai.response.id", outcome.body["id"])
            span.set_attribute("gen_ai.response.finish_reasons", [outcome.finish_reason])
            if self.telemetry.prompts:
                output = [{"role": "assistant", "parts": [{"type": "text", "content": outcome.text}]}]
                output[0]["finish_reason"] = outcome.finish_reason
                span.set_attribute("gen_ai.output.messages", json.dumps(output))
        else:
            span.set_attribute("error.type", str(outcome.status))
            if outcome.status >= 500:  # a server span's error, as HTTP's conventions count them (4xx: the client's)
                span.set_status(self.telemetry.trace.Status(self.telemetry.trace.StatusCode.ERROR))

    def end(self) -> None:
        """Close the span; one never finished is marked ``budgetctl.abandoned`` (the client went away)."""
        if not self.finished:
            self.span.set_attribute("budgetctl.abandoned", True)
        self.span.end()


class SampleSpan:
    """The CLIENT span of one upstream call: its response's model, id, finish reason and usage, or its error."""

    def __init__(self, owner: RequestSpan) -> None:
        telemetry = owner.telemetry
        self.owner = owner
        self.trace = telemetry.trace
        attributes = _base(owner.request)
        attributes["server.address"] = telemetry.address
        attributes["server.port"] = telemetry.port
        context = telemetry.trace.set_span_in_context(owner.span, owner.parent)
        self.span = telemetry.tracer.start_span(
            f"{attributes['gen_ai.operation.name']} {owner.request.model}",
            context=context,
            kind=telemetry.trace.SpanKind.CLIENT,
            attributes=attributes,
        )
        self._context = telemetry.trace.set_span_in_context(self.span)

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """``headers`` with this call's trace context added (``traceparent``), for the upstream to join the trace."""
        carrier = dict(headers)
        self.owner.telemetry.propagate.inject(carrier, context=self._context)
        return carrier

    def returned(self, data: Mapping[str, Any], finish: str, prompt_tokens: int, completion_tokens: int) -> None:
        """The call came back and was paid for: what the upstream said it was."""
        span = self.span
        model = data.get("model")
        if isinstance(model, str):
            span.set_attribute("gen_ai.response.model", model)
            self.owner.response_model = model
        response_id = data.get("id")
        if isinstance(response_id, str):
            span.set_attribute("gen_ai.response.id", response_id)
        span.set_attribute("gen_ai.response.finish_reasons", [finish])
        span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", completion_tokens)

    def failed(self, error_type: str) -> None:
        """The call failed: ``error.type`` (the upstream's status, or the exception's name) and an error status."""
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, f"upstream call failed: {error_type}"))

    def cancelled(self) -> None:
        """The run stopped (or the client left) while the call was in flight: not an error."""
        self.span.set_attribute("budgetctl.cancelled", True)

    def end(self) -> None:
        """Close the span."""
        self.span.end()
