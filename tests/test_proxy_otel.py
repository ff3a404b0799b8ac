"""The proxy's OpenTelemetry spans: the real openai client -> the proxy (``otel=True``) -> `budgetctl serve`.

Spans go to an SDK ``TracerProvider`` of the test's own with an ``InMemorySpanExporter`` (the
global provider is left alone); the pool of tests/test_proxy.py makes the tokens of every sample known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")
pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402
from test_optional import run_python  # noqa: E402
from test_proxy import MAJORITY, SPLIT, ask, write_pool  # noqa: E402

from budgetctl.cli import build_parser  # noqa: E402
from budgetctl.cli._proxy import config_from_arguments  # noqa: E402
from budgetctl.proxy import ProxyConfig, ProxyServer  # noqa: E402
from budgetctl.serve import ReplayServer, RunningServer, serve_in_thread  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer[ReplayServer]]:
    path = write_pool(tmp_path_factory.mktemp("pool"))
    with serve_in_thread(ReplayServer(path, seed=0, ms_per_token=1.0), startup_timeout=20) as handle:
        yield handle


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def proxy(upstream: RunningServer[Any], exporter: InMemorySpanExporter) -> Iterator[RunningServer[ProxyServer]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ProxyConfig(upstream=upstream.base_url, policy="ac|fixed:n=12", deadline=10.0, otel=True)
    with serve_in_thread(ProxyServer(config, tracer_provider=provider), startup_timeout=20) as handle:
        yield handle
    provider.shutdown()


@pytest.fixture
def client(proxy: RunningServer[Any], exporter: InMemorySpanExporter) -> Iterator[Any]:
    exporter.clear()
    with openai.OpenAI(base_url=proxy.base_url, api_key="client-key", max_retries=0) as made:
        yield made


def request_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def children(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        s for s in exporter.get_finished_spans() if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def wait_until(condition: Callable[[], bool]) -> None:
    """Spans of calls cancelled when a run stopped may end just after the answer went out."""
    limit = time.monotonic() + 10
    while not condition() and time.monotonic() < limit:
        time.sleep(0.02)


def total(spans: list[ReadableSpan], name: str) -> int:
    return sum(int(s.attributes.get(name, 0)) for s in spans if s.attributes is not None)


def test_a_request_is_one_span_whose_sample_spans_add_up_to_its_usage(client: Any, exporter: Any) -> None:
    response = ask(client, SPLIT, extra_body={"budgetctl": {"policy": "fixed:n=5", "concurrency": 1}})
    ours = response.model_extra["budgetctl"]
    (span,) = request_spans(exporter)
    samples = children(exporter, span)
    assert span.name == "chat replay" and len(samples) == ours["samples"] == 5
    assert span.attributes is not None
    attributes = dict(span.attributes)
    assert {k: attributes[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "replay",
    }
    assert attributes["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == response.usage.completion_tokens == 25
    assert attributes["gen_ai.response.id"] == response.id
    assert attributes["gen_ai.response.model"] == response.model
    assert attributes["http.response.status_code"] == 200
    for name in ("stop_reason", "samples", "wasted_tokens", "deadline", "policy"):
        assert attributes[f"budgetctl.{name}"] == ours[name], name
    for sample in samples:
        assert sample.kind == SpanKind.CLIENT and sample.name == "chat replay"
        assert sample.attributes is not None and sample.attributes["server.address"] == "127.0.0.1"
        assert sample.attributes["gen_ai.usage.output_tokens"] == 5
        assert sample.attributes["gen_ai.response.finish_reasons"] == ("stop",)
        assert sample.status.status_code == StatusCode.UNSET
    assert total(samples, "gen_ai.usage.input_tokens") == response.usage.prompt_tokens
    assert total(samples, "gen_ai.usage.output_tokens") == response.usage.completion_tokens


def test_parallel_calls_cut_short_are_cancelled_spans_and_the_tokens_still_add_up(client: Any, exporter: Any) -> None:
    response = ask(client, MAJORITY, extra_body={"budgetctl": {"concurrency": 4}})
    ours = response.model_extra["budgetctl"]
    (span,) = request_spans(exporter)
    calls = ours["samples"] + ours["failed"] + ours["cancelled"]
    wait_until(lambda: len(children(exporter, span)) >= calls)
    samples = children(exporter, span)
    paid = [s for s in samples if s.attributes is not None and "gen_ai.usage.output_tokens" in s.attributes]
    cut = [s for s in samples if s.attributes is not None and s.attributes.get("budgetctl.cancelled")]
    assert len(paid) == ours["samples"] and len(paid) + len(cut) == len(samples)
    assert all(s.status.status_code == StatusCode.UNSET for s in samples)
    assert total(paid, "gen_ai.usage.input_tokens") == response.usage.prompt_tokens
    assert total(paid, "gen_ai.usage.output_tokens") == response.usage.completion_tokens


def test_the_clients_trace_context_is_the_parent(client: Any, exporter: Any) -> None:
    ask(client, SPLIT, extra_body={"budgetctl": {"policy": "fixed:n=1"}},
        extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})  # fmt: skip
    (span,) = request_spans(exporter)
    assert span.parent is not None and span.parent.is_remote
    assert (format(span.parent.trace_id, "032x"), format(span.parent.span_id, "016x")) == (TRACE_ID, PARENT_ID)
    assert all(format(s.context.trace_id, "032x") == TRACE_ID for s in exporter.get_finished_spans() if s.context)


def test_a_failed_upstream_call_is_an_error_span(client: Any, exporter: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(client, "Nothing the pool knows")
    (span,) = request_spans(exporter)
    assert span.attributes is not None and span.attributes["error.type"] == "404"
    assert span.status.status_code == StatusCode.UNSET  # a 4xx is the client's error, not the server's
    calls = children(exporter, span)  # the request's calls in flight at once all got the 404
    assert calls and all(c.status.status_code == StatusCode.ERROR for c in calls)
    assert [c.attributes["error.type"] for c in calls if c.attributes is not None] == ["404"] * len(calls)
    assert not any("gen_ai.usage.output_tokens" in (c.attributes or {}) for c in calls)


def test_an_unreachable_upstream_makes_error_spans_all_the_way_up(upstream: RunningServer[Any]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ProxyConfig(upstream="http://127.0.0.1:9/v1", policy="fixed:n=2", deadline=5.0, otel=True)
    with (
        serve_in_thread(ProxyServer(config, tracer_provider=provider), startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="k", max_retries=0) as made,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(made)
        assert caught.value.status_code == 502
    (span,) = request_spans(exporter)
    assert span.status.status_code == StatusCode.ERROR and span.attributes is not None
    assert span.attributes["error.type"] == "502" and span.attributes["budgetctl.samples"] == 0
    calls = children(exporter, span)
    assert calls and all(c.status.status_code == StatusCode.ERROR for c in calls)
    assert {c.attributes["error.type"] for c in calls if c.attributes is not None} == {"APIConnectionError"}


def _everything(exporter: InMemorySpanExporter) -> str:
    return repr([(s.name, dict(s.attributes or {})) for s in exporter.get_finished_spans()])


def test_spans_carry_no_prompt_and_no_key_unless_trace_prompts(client: Any, exporter: Any) -> None:
    ask(client)
    written = _everything(exporter)
    assert "gen_ai.usage.output_tokens" in written
    assert MAJORITY not in written and "client-key" not in written and "Bearer" not in written


def test_trace_prompts_puts_the_messages_on_the_request_span(upstream: RunningServer[Any]) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ProxyConfig(upstream=upstream.base_url, policy="fixed:n=1", otel=True, trace_prompts=True)
    with (
        serve_in_thread(ProxyServer(config, tracer_provider=provider), startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="client-key", max_retries=0) as made,
    ):
        response = ask(made)
        text = made.completions.create(model="replay", prompt=[MAJORITY])  # a list of one prompt is one prompt
    chat, completion = request_spans(exporter)
    assert (chat.name, completion.name) == ("chat replay", "text_completion replay")
    assert chat.attributes is not None and completion.attributes is not None
    assert json.loads(str(chat.attributes["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": MAJORITY}]}
    ]
    assert json.loads(str(completion.attributes["gen_ai.input.messages"]))[0]["parts"][0]["content"] == MAJORITY
    assert response.choices[0].message.content in str(chat.attributes["gen_ai.output.messages"])
    assert text.choices[0].text in str(completion.attributes["gen_ai.output.messages"])
    assert "client-key" not in _everything(exporter)


def test_the_otel_flag_switches_spans_on() -> None:
    parser = build_parser()
    assert config_from_arguments(parser.parse_args(["proxy", "--upstream", "http://h/v1", "--otel"])).otel
    assert not config_from_arguments(parser.parse_args(["proxy", "--upstream", "http://h/v1"])).otel


PROXY_WITHOUT_OTEL = """
import json, sys, urllib.request
from budgetctl.proxy import ProxyConfig, ProxyServer
from budgetctl.serve import ReplayServer, serve_in_thread

with serve_in_thread(ReplayServer(POOL, seed=0), startup_timeout=20) as up:
    with serve_in_thread(ProxyServer(ProxyConfig(upstream=up.base_url, policy="fixed:n=2")), startup_timeout=20) as p:
        body = json.dumps({"model": "replay", "messages": [{"role": "user", "content": QUESTION}]}).encode()
        request = urllib.request.Request(p.base_url + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=30))
    assert answer["budgetctl"]["samples"] == 2, answer
    assert not any(m.partition(".")[0] == "opentelemetry" for m in sys.modules), "opentelemetry was imported"
    print("answered", answer["budgetctl"]["answer"])
    try:
        ProxyServer(ProxyConfig(upstream=up.base_url, otel=True))
    except ImportError as error:
        print(error)
"""


@pytest.mark.parametrize("installed", [True, False], ids=["installed", "missing"])
def test_without_otel_the_proxy_runs_and_never_imports_opentelemetry(tmp_path: Path, installed: bool) -> None:
    pool = write_pool(tmp_path)
    body = f"POOL = {str(pool)!r}\nQUESTION = {SPLIT!r}\n" + PROXY_WITHOUT_OTEL
    done = run_python("lambda top: True" if installed else 'lambda top: top != "opentelemetry"', body)
    assert done.returncode == 0, done.stderr
    assert "answered" in done.stdout
    missing = "the proxy's OpenTelemetry spans (--otel) needs the optional dependency 'opentelemetry'"
    assert (missing in done.stdout) is not installed
    assert ("pip install 'budgetctl[otel]'" in done.stdout) is not installed
