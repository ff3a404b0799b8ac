"""The budget shared in a real Redis: atomic reservations across replicas, settling, expiry, windows, Redis down.

Redis comes from ``$BUDGETCTL_TEST_REDIS_URL`` (``.ci/run`` starts one), else a ``redis-server``
on PATH is started on a free loopback port for this module. Without either the tests are skipped,
except under CI (``CI=true``), where a missing Redis fails them: fakeredis does not count.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

redis = pytest.importorskip("redis")
openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from test_proxy import SPLIT, ask, write_pool  # noqa: E402

from budgetctl.proxy import BudgetLimits, ProxyConfig, ProxyServer, RedisLedger  # noqa: E402
from budgetctl.proxy._ledger import FallbackLedger, LedgerUnavailable, Refused, Reservation  # noqa: E402
from budgetctl.serve import (  # noqa: E402
    ReplayServer,
    RunningServer,
    serve_in_thread,
)

NO_REDIS = (
    "no Redis: set BUDGETCTL_TEST_REDIS_URL or install redis-server (apt-get install redis-server); "
    "CI must have one (.ci/run starts it)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.exceptions.RedisError:
        return False


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Redis tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("BUDGETCTL_TEST_REDIS_URL")
    if url:
        if not _reachable(url):
            _missing(f"BUDGETCTL_TEST_REDIS_URL={url} does not answer")
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _missing(NO_REDIS)
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        limit = time.monotonic() + 10
        while not _reachable(url):
            if time.monotonic() > limit or process.poll() is not None:
                _missing(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer[ReplayServer]]:
    path = write_pool(tmp_path_factory.mktemp("pool"))
    with serve_in_thread(ReplayServer(path, seed=0, ms_per_token=1.0), startup_timeout=20) as handle:
        yield handle


#: A real Redis on a loaded 2-core CI machine can stall for seconds;
#: only the unreachable-Redis tests use short timeouts.
LOADED_MACHINE_TIMEOUT = 30.0


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_reservations_from_two_replicas_never_pass_the_budget(redis_url: str) -> None:
    name = _name()

    async def main() -> list[Any]:
        limits = BudgetLimits(tokens=500)
        replicas = [RedisLedger(redis_url, limits, name=name, timeout=LOADED_MACHINE_TIMEOUT) for _ in range(2)]
        results: list[Any] = []

        async def reserve(ledger: RedisLedger) -> None:
            results.append(await ledger.reserve(7, 0.0, 60.0))

        async with anyio.create_task_group() as group:
            for i in range(200):
                group.start_soon(reserve, replicas[i % 2])
        remaining = await replicas[0].remaining()
        assert remaining.tokens == 500 - 7 * 71
        for ledger in replicas:
            await ledger.aclose()
        return results

    results = anyio.run(main)
    held = [r for r in results if isinstance(r, Reservation)]
    assert len(held) == 500 // 7  # exactly as many as fit: none more, none lost
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(refused) == 200 - 71 and all(r.retry_after is not None for r in refused)  # 1 s: reservations may end


def test_settling_charges_the_actual_cost_and_releasing_gives_it_back(redis_url: str) -> None:
    async def main() -> None:
        ledger = RedisLedger(redis_url, BudgetLimits(tokens=100, usd=1.0), name=_name(), timeout=LOADED_MACHINE_TIMEOUT)
        first = await ledger.reserve(50, 0.5, 60.0)
        second = await ledger.reserve(50, 0.5, 60.0)
        assert isinstance(first, Reservation) and isinstance(second, Reservation)
        assert isinstance(await ledger.reserve(1, 0.0, 60.0), Refused)
        await ledger.settle(first, 20, 0.125)
        await ledger.release(second)
        remaining = await ledger.remaining()
        assert remaining.tokens == 80 and remaining.usd == pytest.approx(0.875)
        await ledger.aclose()

    anyio.run(main)


def test_a_killed_replicas_reservations_expire(redis_url: str) -> None:
    name = _name()

    async def main() -> None:
        limits = BudgetLimits(tokens=100)
        killed = RedisLedger(redis_url, limits, name=name, timeout=LOADED_MACHINE_TIMEOUT)
        assert isinstance(await killed.reserve(100, 0.0, 0.3), Reservation)
        await killed.aclose()  # never settles: as if killed mid-call
        survivor = RedisLedger(redis_url, limits, name=name, timeout=LOADED_MACHINE_TIMEOUT)
        assert isinstance(await survivor.reserve(1, 0.0, 60.0), Refused)
        await anyio.sleep(0.5)
        assert isinstance(await survivor.reserve(100, 0.0, 60.0), Refused) is False
        assert await survivor.expired() == 1
        await survivor.aclose()

    anyio.run(main)


def test_windows_start_from_zero(redis_url: str) -> None:
    window = 2.0
    # Start just after a window boundary (Redis's clock is this machine's), so that the spending and
    # the refusal below fall in one window.
    time.sleep(window - time.time() % window + 0.05)

    async def main() -> None:
        limits = BudgetLimits(tokens=10, window=window)
        ledger = RedisLedger(redis_url, limits, name=_name(), timeout=LOADED_MACHINE_TIMEOUT)
        held = await ledger.reserve(10, 0.0, window)
        assert isinstance(held, Reservation)
        await ledger.settle(held, 10, 0.0)
        refused = await ledger.reserve(1, 0.0, window)
        assert isinstance(refused, Refused) and refused.retry_after is not None
        assert 0 <= refused.retry_after <= window
        await anyio.sleep(refused.retry_after + 0.05)
        assert isinstance(await ledger.reserve(10, 0.0, window), Reservation)
        await ledger.aclose()

    anyio.run(main)


def test_unreachable_redis_refuses_or_spends_the_stated_local_share() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there

    async def main() -> None:
        limits = BudgetLimits(tokens=100)
        with pytest.raises(LedgerUnavailable, match="unreachable"):
            await RedisLedger(url, limits, timeout=0.5).reserve(1, 0.0, 10.0)
        refusing = FallbackLedger(RedisLedger(url, limits, timeout=0.5), share=None)
        with pytest.raises(LedgerUnavailable):
            await refusing.reserve(1, 0.0, 10.0)
        sharing = FallbackLedger(RedisLedger(url, limits, timeout=0.5), share=0.25)
        assert isinstance(await sharing.reserve(25, 0.0, 10.0), Reservation)
        assert isinstance(await sharing.reserve(1, 0.0, 10.0), Refused)  # never unlimited

    anyio.run(main)


def test_two_proxies_share_one_redis_budget(redis_url: str, upstream: Any) -> None:
    config = ProxyConfig(
        upstream=upstream.base_url,
        policy="fixed:n=4",
        request_concurrency=1,  # exactly 4 samples per request: no fifth in flight when the fourth ends it
        deadline=10.0,
        budget=BudgetLimits(tokens=60, window=1e7),  # no window boundary (a renewal) inside the test
        redis_url=redis_url,
        budget_name=_name(),
    )
    with (
        serve_in_thread(ProxyServer(config), startup_timeout=20) as one,
        serve_in_thread(ProxyServer(config), startup_timeout=20) as two,
        openai.OpenAI(base_url=one.base_url, api_key="k", max_retries=0) as a,
        openai.OpenAI(base_url=two.base_url, api_key="k", max_retries=0) as b,
    ):
        first, second = ask(a, SPLIT, max_tokens=5), ask(b, SPLIT, max_tokens=5)
        assert first.usage.completion_tokens + second.usage.completion_tokens == 40
        third = ask(a, SPLIT, max_tokens=5)  # 20 left: 4 samples of 5
        assert third.usage.completion_tokens == 20
        with pytest.raises(openai.RateLimitError):
            ask(b, SPLIT, max_tokens=5)


def test_a_proxy_whose_redis_is_down_answers_503(upstream: Any) -> None:
    config = ProxyConfig(
        upstream=upstream.base_url,
        deadline=5.0,
        budget=BudgetLimits(tokens=1000),
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
    )
    with (
        serve_in_thread(ProxyServer(config), startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="k", max_retries=0) as made,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            ask(made, SPLIT)
        assert caught.value.status_code == 503 and "unreachable" in caught.value.message


def test_a_cancelled_request_releases_its_reservations_at_once(redis_url: str, upstream: Any) -> None:
    from test_proxy import SLOW

    name = _name()
    config = ProxyConfig(
        upstream=upstream.base_url,
        deadline=30.0,  # reservations would live 40 s: coming back sooner is the release, not the expiry
        budget=BudgetLimits(tokens=100_000),
        redis_url=redis_url,
        budget_name=name,
        redis_timeout=LOADED_MACHINE_TIMEOUT,
    )

    async def remaining() -> float | None:
        ledger = RedisLedger(redis_url, config.budget, name=name, timeout=LOADED_MACHINE_TIMEOUT)
        try:
            return (await ledger.remaining()).tokens
        finally:
            await ledger.aclose()

    with (
        serve_in_thread(ProxyServer(config), startup_timeout=20) as running,
        openai.OpenAI(base_url=running.base_url, api_key="k", max_retries=0, timeout=3.0) as impatient,
    ):
        errors: list[BaseException] = []

        def call() -> None:
            try:
                ask(impatient, SLOW, extra_body={"budgetctl": {"concurrency": 3}})  # its samples take 4 s
            except BaseException as error:
                errors.append(error)

        caller = threading.Thread(target=call)
        caller.start()
        limit = time.monotonic() + 10
        while anyio.run(remaining) == 100_000 and time.monotonic() < limit:
            time.sleep(0.02)
        held = anyio.run(remaining)
        caller.join(timeout=30)
        assert held is not None and held < 100_000  # the calls had reserved
        assert errors and isinstance(errors[0], openai.APITimeoutError)  # the client gave up after 3 s
        limit = time.monotonic() + 10
        while anyio.run(remaining) != 100_000 and time.monotonic() < limit:
            time.sleep(0.05)
        assert anyio.run(remaining) == 100_000
