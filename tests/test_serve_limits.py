"""Server hardening against a real uvicorn on a loopback port: body, JSON, connection and cache limits.

Every attack is made over a real socket, and every test ends by showing that a valid request is
still answered: the process keeps serving others. Waits are generous upper bounds (a closed
connection is expected within seconds of a 0.3 s timeout), never timing assertions.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import contextlib

from budgetctl.serve import ReplayServer, RunningServer, serve_in_thread
from budgetctl.serve._limits import BytesLRU, JSONLimitError, ServerLimits, loads_json
from budgetctl.serve._replay import QuestionIndex

QUESTION = "Q-limits: What is two plus two?"
LIMITS = ServerLimits(
    max_body_bytes=64 << 10, header_timeout=0.3, body_timeout=0.5, keep_alive_timeout=1, max_connections=8
)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer[ReplayServer]]:
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    question = {"id": "q", "dataset": "d", "gold": "4", "question": QUESTION, "samples": [{"answer": "4", "tokens": 5}]}
    path.write_text(json.dumps(question) + "\n")
    with serve_in_thread(ReplayServer(path, limits=LIMITS), startup_timeout=20) as handle:
        yield handle


def post(running: RunningServer[Any], body: bytes, path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://{running.host}:{running.port}{path}", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ask(running: RunningServer[Any]) -> tuple[int, dict[str, Any]]:
    """A valid chat request."""
    body = {"model": "replay", "messages": [{"role": "user", "content": QUESTION}]}
    return post(running, json.dumps(body).encode())


def assert_still_serving(running: RunningServer[Any]) -> None:
    status, body = ask(running)
    assert status == 200 and body["choices"][0]["message"]["content"].endswith("The answer is 4.")


def connect(running: RunningServer[Any]) -> socket.socket:
    return socket.create_connection((running.host, running.port), timeout=10)


def closed_by_server(sock: socket.socket, within: float = 10.0, trickle: bytes = b"") -> bool:
    """Whether the server closes ``sock`` within ``within`` s (sending ``trickle`` a byte at a time meanwhile)."""
    sock.settimeout(0.05)
    limit = time.monotonic() + within
    sent = 0
    while time.monotonic() < limit:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                return True
            sent += 1
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return True
        if data == b"" or data.startswith(b"HTTP/1.1 4"):
            return True
    return False


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a Content-Length body) read from ``sock``."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


# -- bodies ----------------------------------------------------------------------------------------------
def test_a_declared_oversized_body_is_refused_413_before_it_is_sent(running: RunningServer[Any]) -> None:
    sock = connect(running)
    with sock:
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {200 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode())  # the 200 MB never follow: the answer comes first
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413")
    assert b'"request_too_large"' in response or b"413" in response
    assert_still_serving(running)


def test_a_chunked_body_is_cut_off_at_the_limit(running: RunningServer[Any]) -> None:
    sock = connect(running)
    with sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock.sendall(head.encode())
        chunk = b"x" * 16384
        sent = 0
        sock.settimeout(0.01)
        response = b""
        while sent < 64 << 20 and not response:  # 1,000 times the limit, unless answered first
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            except OSError:
                break
            with contextlib.suppress(TimeoutError):
                response = sock.recv(65536)
        response += read_response(sock) if b"\r\n\r\n" not in response else b""
    assert response.startswith(b"HTTP/1.1 413"), response[:100]
    assert sent < 64 << 20  # refused before the end (how soon after the limit depends on socket buffers)
    assert_still_serving(running)


def test_a_body_over_the_limit_in_one_piece_is_refused(running: RunningServer[Any]) -> None:
    status, body = post(running, b"[" + b" " * (LIMITS.max_body_bytes + 10) + b"]")
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert_still_serving(running)


def test_a_body_that_trickles_too_slowly_is_answered_408(running: RunningServer[Any]) -> None:
    sock = connect(running)
    with sock:
        head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        sock.sendall(head.encode())
        response = read_response(sock)  # the other 99 bytes never come
    assert response.startswith(b"HTTP/1.1 408")
    assert_still_serving(running)


# -- JSON ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "deeper"),
        (b"[" * 65 + b"]" * 65, "deeper"),
        (b'{"model": "replay", "n": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"model": "replay", "n": 1e999}', "out of range"),
        (b'{"model": "replay", "n": NaN}', "not JSON"),
        (b'{"model": "replay"', "not valid JSON"),
        (b'"\xff"', "not valid JSON"),
    ],
)
def test_hostile_json_is_answered_400_with_the_reason(running: RunningServer[Any], body: bytes, reason: str) -> None:
    status, answer = post(running, body)
    assert status == 400 and reason in answer["error"]["message"]
    assert_still_serving(running)


def test_reset_refuses_hostile_json_too(running: RunningServer[Any]) -> None:
    status, answer = post(running, b'{"seed": ' + b"1" * 5000 + b"}", "/reset")
    assert status == 400 and "digits" in answer["error"]["message"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_json_within_the_limits_parses_as_the_standard_library_does(value: Any) -> None:
    raw = json.dumps(value)
    assert loads_json(raw) == json.loads(raw)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200))
def test_nesting_is_refused_exactly_past_the_depth_limit(depth: int) -> None:
    raw = "[" * depth + "]" * depth
    limits = ServerLimits(max_json_depth=50)
    if depth <= 50:
        assert loads_json(raw, limits) == json.loads(raw)
    else:
        with pytest.raises(JSONLimitError, match="deeper than 50"):
            loads_json(raw, limits)


# -- connections -----------------------------------------------------------------------------------------
def test_an_idle_connection_is_closed_after_the_header_timeout(running: RunningServer[Any]) -> None:
    with connect(running) as sock:
        assert closed_by_server(sock)
    assert_still_serving(running)


def test_a_slowloris_trickle_does_not_keep_a_connection_open(running: RunningServer[Any]) -> None:
    # One byte every 50 ms would keep a naive idle timer reset forever; the header deadline does not move.
    trickle = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
    with connect(running) as sock:
        assert closed_by_server(sock, trickle=trickle)
    assert_still_serving(running)


def test_idle_connections_past_the_cap_cannot_lock_out_a_client(running: RunningServer[Any]) -> None:
    idle = [connect(running) for _ in range(LIMITS.max_connections * 3)]
    try:
        assert_still_serving(running)
    finally:
        for sock in idle:
            sock.close()


def test_a_keep_alive_connection_serves_several_requests(running: RunningServer[Any]) -> None:
    body = json.dumps({"model": "replay", "messages": [{"role": "user", "content": QUESTION}]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with connect(running) as sock:
        for _ in range(3):
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")


# -- caches ----------------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.integers()), max_size=60), st.integers(0, 4000))
def test_a_bytes_lru_never_holds_more_than_its_bound(items: list[tuple[str, int]], bound: int) -> None:
    cache: BytesLRU[str, int] = BytesLRU(bound)
    for key, value in items:
        cache.put(key, value)
        assert cache.bytes <= bound
        assert cache.bytes == sum(sys.getsizeof(k) + sys.getsizeof(cache.get(k)) for k in list(cache._items))
    if items and sys.getsizeof(items[-1][0]) + sys.getsizeof(items[-1][1]) <= bound:
        assert cache.get(items[-1][0]) == items[-1][1]  # the latest entry is kept when it fits


def test_the_unmatched_prompt_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    from budgetctl._pool import load_pool

    path = tmp_path / "pool.jsonl"
    path.write_text(json.dumps({"id": "q", "question": QUESTION, "samples": [{"answer": "4", "tokens": 1}]}) + "\n")
    index = QuestionIndex(load_pool(path).questions, cache_bytes=100_000)
    for i in range(200):
        assert index.find([f"{i} " + "filler " * 2000]) is None  # 14 kB prompts, none a question
    assert index._cache.bytes <= 100_000
    assert index.find([f"please: {QUESTION}"]) is not None
