"""The proxy end to end: the real openai client -> the proxy -> `budgetctl serve`, both on uvicorn over loopback.

The replay server answers each question with a known mix of samples, so what the proxy must say
(the majority answer, the usage of every sample it drew) is known exactly.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from budgetctl._pool import load_pool  # noqa: E402
from budgetctl._trace import read_runs  # noqa: E402
from budgetctl.cli import main  # noqa: E402
from budgetctl.proxy import BudgetLimits, LocalLedger, ProxyConfig, ProxyServer  # noqa: E402
from budgetctl.proxy._ledger import Refused, Reservation  # noqa: E402
from budgetctl.proxy._request import BadRequest, Defaults, parse_request  # noqa: E402
from budgetctl.proxy._traces import RotatingTraces  # noqa: E402
from budgetctl.serve import ReplayServer, RunningServer, serve_in_thread  # noqa: E402
from budgetctl.serve._limits import ServerLimits  # noqa: E402

MAJORITY = "Q-majority: Which planet is largest?"
SPLIT = "Q-split: Heads or tails?"
SLOW = "Q-slow: Count to a million."


def _question(qid: str, text: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": qid, "dataset": "synthetic", "model": "fake", "gold": None, "question": text, "samples": samples}


def write_pool(directory: Path) -> Path:
    """The module's pool: each question's mix of answers and token counts is known."""
    questions = [
        # 3 in 4 say jupiter: a majority policy settles on it.
        _question(
            "majority", MAJORITY, [{"answer": "jupiter", "tokens": 12}] * 30 + [{"answer": "saturn", "tokens": 8}] * 10
        ),
        _question("split", SPLIT, [{"answer": "heads", "tokens": 5}] * 20 + [{"answer": "tails", "tokens": 5}] * 20),
        _question("slow", SLOW, [{"answer": "1000000", "tokens": 4000}] * 5),
    ]
    path = directory / "pool.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer[ReplayServer]]:
    path = write_pool(tmp_path_factory.mktemp("pool"))
    with serve_in_thread(ReplayServer(path, seed=0, ms_per_token=1.0), startup_timeout=20) as handle:
        yield handle


def _proxy(upstream: RunningServer[Any], **options: Any) -> ProxyServer:
    options.setdefault("policy", "ac|fixed:n=12")
    options.setdefault("deadline", 10.0)
    return ProxyServer(ProxyConfig(upstream=upstream.base_url, **options))


@pytest.fixture(scope="module")
def proxy(
    upstream: RunningServer[Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer[ProxyServer]]:
    traces = tmp_path_factory.mktemp("traces")
    server = _proxy(upstream, trace_dir=str(traces), shadow="fixed:n=2")
    with serve_in_thread(server, startup_timeout=20) as handle:
        yield handle


@pytest.fixture
def client(proxy: RunningServer[Any]) -> Iterator[Any]:
    with openai.OpenAI(base_url=proxy.base_url, api_key="client-key", max_retries=0) as made:
        yield made


def ask(client: Any, question: str = MAJORITY, **options: Any) -> Any:
    return client.chat.completions.create(model="replay", messages=[{"role": "user", "content": question}], **options)


# -- answers -----------------------------------------------------------------------------------------------
def test_a_chat_request_gets_one_choice_whose_answer_is_the_final_answer(client: Any) -> None:
    response = ask(client)
    ours = response.model_extra["budgetctl"]
    assert len(response.choices) == 1
    assert ours["answer"] == "jupiter"
    assert response.choices[0].message.content.endswith("The answer is jupiter.")
    assert response.choices[0].finish_reason == "stop"
    assert ours["samples"] >= 2 and ours["stop_reason"] in ("policy", "budget")
    # usage sums every sample paid for: 12 tokens per jupiter, 8 per saturn
    assert response.usage.completion_tokens == ours["tokens"]
    assert response.usage.completion_tokens == ours["wasted_tokens"] + 12 * (
        (response.usage.completion_tokens - ours["wasted_tokens"]) // 12
    )
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert 0 < ours["confidence"] <= 1 and ours["elapsed"] > 0 and ours["deadline"] == 10.0


def test_the_text_completion_endpoint_answers_the_same_way(client: Any) -> None:
    response = client.completions.create(model="replay", prompt=MAJORITY)
    assert response.choices[0].text.endswith("The answer is jupiter.")
    assert response.model_extra["budgetctl"]["answer"] == "jupiter"


def test_the_budgetctl_object_overrides_the_policy_and_max_samples(client: Any) -> None:
    fixed = ask(client, SPLIT, extra_body={"budgetctl": {"policy": "fixed:n=5", "concurrency": 1}})
    assert fixed.model_extra["budgetctl"]["samples"] == 5
    assert fixed.usage.completion_tokens == 25
    # With calls in parallel, one that came back with the last is paid for, and counted, too.
    wide = ask(client, SPLIT, extra_body={"budgetctl": {"policy": "fixed:n=5", "concurrency": 3}})
    paid = wide.model_extra["budgetctl"]["samples"]
    assert 5 <= paid <= 7 and wide.usage.completion_tokens == 5 * paid
    capped = ask(client, SPLIT, extra_body={"budgetctl": {"policy": "fixed:n=40", "max_samples": 3}})
    assert capped.model_extra["budgetctl"]["samples"] == 3
    assert capped.model_extra["budgetctl"]["stop_reason"] == "budget"


def test_a_per_request_deadline_returns_in_time_with_a_504_when_nothing_came(client: Any) -> None:
    # The slow question takes 4 s per sample: a 0.2 s deadline gets nothing back.
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, SLOW, extra_body={"budgetctl": {"deadline": 0.2}})
    assert caught.value.status_code == 504
    assert "deadline" in caught.value.message


def test_models_are_those_of_the_upstream(client: Any) -> None:
    assert "replay" in [m.id for m in client.models.list().data]


def test_streaming_sends_best_answers_then_the_final_choice(client: Any) -> None:
    stream = ask(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    progress = [c.model_extra["budgetctl"] for c in chunks if not c.choices and c.model_extra.get("budgetctl")]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert progress and all("best" in p for p in progress)
    assert content.endswith("The answer is jupiter.")
    assert len(finals) == 1 and finals[0].model_extra["budgetctl"]["answer"] == "jupiter"
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == finals[0].model_extra["budgetctl"]["tokens"]
    )


# -- errors ------------------------------------------------------------------------------------------------
def test_an_upstream_404_comes_back_as_an_openai_error_at_once(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, "Nothing the pool knows")
    assert "no question of the replayed pool" in caught.value.message


def test_a_stream_that_fails_before_any_sample_gets_the_real_status(client: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        list(ask(client, "Nothing the pool knows", stream=True))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"budgetctl": {"deadline": -1}}, "deadline"),
        ({"budgetctl": {"policy": "no-such-policy"}}, "policy"),
        ({"budgetctl": {"colour": "blue"}}, "budgetctl"),
        ({"budgetctl": {"budget": {"usd": 1}}}, "budget"),
        ({"n": 3}, "n"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(client: Any, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, extra_body=extra)
    assert caught.value.body["param"] == param


def test_the_server_limits_apply_to_the_proxy(proxy: RunningServer[Any]) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 209715200\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    deep = b"[" * 10_000 + b"]" * 10_000
    request = urllib.request.Request(f"{proxy.base_url}/chat/completions", data=deep)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    caught.value.close()
    assert caught.value.code == 400


def test_an_unreachable_upstream_is_502(upstream: RunningServer[Any]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    server = ProxyServer(ProxyConfig(upstream=f"http://127.0.0.1:{port}/v1", deadline=5.0))
    with (
        serve_in_thread(server, startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="k", max_retries=0) as made,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(made)
        assert caught.value.status_code == 502 and f"127.0.0.1:{port}" in caught.value.message


# -- budgets and keys --------------------------------------------------------------------------------------
def test_a_spent_budget_answers_429_with_retry_after(upstream: RunningServer[Any]) -> None:
    # A window of months: no window boundary (which would renew the budget) falls inside the test.
    window = 1e7
    server = _proxy(upstream, budget=BudgetLimits(tokens=40, window=window), policy="fixed:n=4", request_concurrency=1)
    with (
        serve_in_thread(server, startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="k", max_retries=0) as made,
    ):
        first = ask(made, SPLIT, max_tokens=5)  # 4 samples x 5 tokens reserved and spent
        assert first.usage.completion_tokens == 20
        ask(made, SPLIT, max_tokens=5)
        with pytest.raises(openai.RateLimitError) as caught:
            ask(made, SPLIT, max_tokens=5)
        assert 1 <= int(caught.value.response.headers["retry-after"]) <= window
        assert caught.value.body["type"] == "budget_exceeded"
        metrics = urllib.request.urlopen(f"http://{running.host}:{running.port}/metrics", timeout=10).read().decode()
        assert "budgetctl_budget_remaining_tokens 0.0" in metrics


def test_the_proxy_asks_its_own_keys_and_passes_the_clients_key_upstream(upstream: RunningServer[Any]) -> None:
    server = _proxy(upstream, api_keys=("sesame",))
    with serve_in_thread(server, startup_timeout=20) as running:
        with (
            openai.OpenAI(base_url=running.base_url, api_key="wrong", max_retries=0) as made,
            pytest.raises(openai.AuthenticationError),
        ):
            ask(made)
        with openai.OpenAI(base_url=running.base_url, api_key="sesame", max_retries=0) as made:
            assert ask(made).model_extra["budgetctl"]["answer"] == "jupiter"


# -- metrics and traces ------------------------------------------------------------------------------------
def test_metrics_are_served_in_prometheus_text(client: Any, proxy: RunningServer[Any]) -> None:
    ask(client)
    text = urllib.request.urlopen(f"http://{proxy.host}:{proxy.port}/metrics", timeout=10).read().decode()
    for name in (
        "budgetctl_request_duration_seconds_bucket",
        "budgetctl_samples_per_request_count",
        'budgetctl_tokens_total{type="billed"}',
        'budgetctl_tokens_total{type="wasted"}',
        "budgetctl_spend_usd_total",
        "budgetctl_deadline_misses_total",
        "budgetctl_requests_waiting",
        "budgetctl_budget_remaining_tokens",
    ):
        assert name in text, name


def test_traces_are_what_train_and_simulate_read_with_the_shadow_policy(client: Any, proxy: RunningServer[Any]) -> None:
    ask(client, extra_body={"budgetctl": {"meta": {"id": "q-majority", "gold": "jupiter"}}})
    server = proxy.server
    assert server.traces is not None and server.traces.files
    runs = [r for path in server.traces.files for r in read_runs(path)]
    run = next(r for r in runs if r.meta.get("id") == "q-majority")
    assert run.meta["gold"] == "jupiter" and run.meta["shadow"]["policy"] == "fixed:n=2"
    assert run.meta["shadow"]["stopped"] is True and run.meta["shadow"]["samples"] == 2
    assert run.stop is not None and run.stop["answer"] == "jupiter"
    assert {s.answer for s in run.samples} <= {"jupiter", "saturn"}
    assert "client-key" not in Path(server.traces.files[-1]).read_text()  # no secret in a trace
    pool = load_pool(server.traces.files)
    assert any(q.id == "q-majority" and q.gold == "jupiter" for q in pool.questions)


# -- the ledger ---------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50), st.booleans()), max_size=40), st.integers(0, 400))
def test_a_local_ledger_never_lets_settled_spend_pass_the_budget(
    calls: list[tuple[int, int, bool]], limit: int
) -> None:
    async def main() -> float:
        ledger = LocalLedger(BudgetLimits(tokens=limit))
        held: list[tuple[Reservation, int, bool]] = []
        for reserve, actual, cancel in calls:
            got = await ledger.reserve(reserve, 0.0, 60.0)
            if isinstance(got, Refused):
                continue
            held.append((got, min(actual, reserve), cancel))
            remaining = await ledger.remaining()
            assert remaining.tokens is not None and remaining.tokens >= 0
        for reservation, actual, cancel in held:
            if cancel:
                await ledger.release(reservation)
            else:
                await ledger.settle(reservation, actual, 0.0)
        remaining = await ledger.remaining()
        assert remaining.tokens is not None
        return limit - remaining.tokens

    spent = anyio.run(main)
    assert spent <= limit


def test_a_local_ledger_window_resets_and_reservations_expire() -> None:
    now = [1000.0]

    async def main() -> None:
        ledger = LocalLedger(BudgetLimits(tokens=10, window=60.0), clock=lambda: now[0])
        held = await ledger.reserve(10, 0, ttl=5.0)
        assert isinstance(held, Reservation)
        refused = await ledger.reserve(1, 0, ttl=5.0)
        assert isinstance(refused, Refused) and refused.retry_after == pytest.approx(20.0)
        now[0] += 6  # the holder died: its reservation expires
        assert isinstance(await ledger.reserve(10, 0, ttl=5.0), Reservation)
        now[0] = 1080.0  # the next window
        assert (await ledger.remaining()).tokens == 10

    anyio.run(main)


# -- the command line ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--deadline", "0"], "--deadline"),
        (["--redis-fallback", "most"], "--redis-fallback"),
        (["--price", "1"], "--price"),
        (["--budget-usd", "5"], "price"),
        (["--policy", "nope"], "unknown policy"),
        (["--max-body-bytes", "0"], "--max-body-bytes"),
    ],
)
def test_bad_proxy_flags_are_one_line_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["proxy", "--upstream", "http://127.0.0.1:9/v1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# -- cancellation, rotation, parsing -------------------------------------------------------------------------
def test_a_client_that_goes_away_cancels_its_upstream_calls(client: Any, upstream: RunningServer[Any]) -> None:
    stats = upstream.server.stats
    before = stats.disconnected
    with (
        openai.OpenAI(base_url=client.base_url, api_key="k", max_retries=0, timeout=0.5) as impatient,
        pytest.raises(openai.APITimeoutError),
    ):
        ask(impatient, SLOW, extra_body={"budgetctl": {"deadline": 30, "concurrency": 2}})
    limit = time.monotonic() + 10
    while stats.disconnected < before + 2 and time.monotonic() < limit:
        time.sleep(0.05)
    assert stats.disconnected >= before + 2  # both calls were closed, long before the 30 s deadline


def test_traces_rotate_by_size_and_keep_runs_whole(tmp_path: Path) -> None:
    traces = RotatingTraces(tmp_path, max_bytes=300)
    for i in range(6):
        traces.write_run([{"event": "start", "run": f"r{i}", "meta": {}}, {"event": "stop", "run": f"r{i}"}])
    traces.close()
    assert len(traces.files) >= 2
    for path in traces.files:
        runs = [json.loads(line)["run"] for line in Path(path).read_text().splitlines()]
        assert all(runs.count(r) == 2 for r in set(runs))  # both events of a run in one file


bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["model", "messages", "prompt", "n", "stream", "stream_options", "max_tokens", "budgetctl"])
inner = st.sampled_from(["deadline", "policy", "max_samples", "budget", "concurrency", "extract", "meta", "x"])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(keys, bodies, max_size=6),
    st.dictionaries(inner, bodies, max_size=4),
    st.booleans(),
)
def test_any_request_body_parses_or_is_a_400(body: dict[str, Any], ours: dict[str, Any], chat: bool) -> None:
    if ours:
        body = {**body, "budgetctl": ours}
    defaults = Defaults(deadline=1.0, policy="fixed:n=2", max_samples=4, concurrency=2, extract="default")
    try:
        parsed = parse_request(body, chat=chat, defaults=defaults)
    except BadRequest:
        return
    assert parsed.deadline > 0 and parsed.concurrency >= 1 and "budgetctl" not in parsed.upstream_body


class _EchoUpstream:
    """A minimal OpenAI-compatible upstream that answers "The answer is 7." and records each Authorization header."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        self.seen: list[str | None] = []

        async def chat(request: Request) -> JSONResponse:
            self.seen.append(request.headers.get("authorization"))
            message = {"role": "assistant", "content": "The answer is 7."}
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }
            )

        self.app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
        self.limits = ServerLimits()


def test_keys_go_upstream_as_documented_and_never_into_traces(tmp_path: Path) -> None:
    echo = _EchoUpstream()
    with serve_in_thread(echo, startup_timeout=20) as up:
        plain = ProxyServer(ProxyConfig(upstream=up.base_url, policy="fixed:n=1", trace_dir=str(tmp_path / "a")))
        with (
            serve_in_thread(plain, startup_timeout=20) as running,
            openai.OpenAI(base_url=running.base_url, api_key="client-secret", max_retries=0) as made,
        ):
            assert ask(made).model_extra["budgetctl"]["answer"] == 7
        assert set(echo.seen) == {"Bearer client-secret"}  # no keys of its own: the client's key passes through
        before = len(echo.seen)
        guarded = ProxyServer(
            ProxyConfig(
                upstream=up.base_url,
                policy="fixed:n=1",
                api_keys=("sesame",),
                upstream_api_key="upstream-secret",
                trace_dir=str(tmp_path / "b"),
            )
        )
        with (
            serve_in_thread(guarded, startup_timeout=20) as running,
            openai.OpenAI(base_url=running.base_url, api_key="sesame", max_retries=0) as made,
        ):
            ask(made)
        assert set(echo.seen[before:]) == {"Bearer upstream-secret"}  # its own key stays with the proxy
    written = "".join(p.read_text() for p in tmp_path.rglob("*.jsonl"))
    assert written and not any(secret in written for secret in ("client-secret", "sesame", "upstream-secret"))
