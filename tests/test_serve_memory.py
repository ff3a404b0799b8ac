"""What an idle connection holds, and when the server hands freed heap back to the OS.

The protocol is driven over a real socket pair on a real asyncio loop; the app behind it is the
replay server's, with its limits.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from uvicorn.server import ServerState

from budgetctl.serve import ReplayServer
from budgetctl.serve._limits import ServerLimits, server_config
from budgetctl.serve._memory import BurstWatch, malloc_trim, trim_available

QUESTION = "Q-memory: What is two plus two?"


def request_bytes() -> bytes:
    body = json.dumps({"model": "replay", "messages": [{"role": "user", "content": QUESTION}]}).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


async def exchange(app: Any, limits: ServerLimits) -> tuple[dict[str, bool], bytes]:
    """Serve one connection of a socket pair: what the protocol held before and after a request, and the reply."""
    config = server_config(app, host="127.0.0.1", port=0, limits=limits, log_level="warning")
    config.load()
    loop = asyncio.get_running_loop()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})
    server_side, client_side = socket.socketpair()
    client_side.setblocking(False)
    with server_side, client_side:
        await loop.connect_accepted_socket(lambda: protocol, server_side)
        await asyncio.sleep(0)
        held = {"idle_parser": protocol._h11 is not None, "idle_flow": protocol._flow is not None}
        await loop.sock_sendall(client_side, request_bytes())
        reply = b""
        while b"The answer is 4." not in reply:
            chunk = await asyncio.wait_for(loop.sock_recv(client_side, 65536), timeout=10)
            if not chunk:
                break
            reply += chunk
        held["busy_parser"] = protocol._h11 is not None
        protocol.transport.close()
        await asyncio.sleep(0)
    return held, reply


def test_an_idle_connection_holds_no_parser_and_a_request_still_gets_its_answer(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    question = {"id": "q", "dataset": "d", "gold": "4", "question": QUESTION, "samples": [{"answer": "4", "tokens": 5}]}
    path.write_text(json.dumps(question) + "\n")
    server = ReplayServer(path)
    held, reply = asyncio.run(exchange(server.app, server.limits))
    assert held == {"idle_parser": False, "idle_flow": False, "busy_parser": True}
    assert reply.startswith(b"HTTP/1.1 200") and b"The answer is 4." in reply


@given(
    events=st.lists(
        st.one_of(st.tuples(st.just("open"), st.integers(0, 600)), st.tuples(st.just("read"), st.integers(0, 1 << 22)))
    ),
)
def test_a_trim_is_due_exactly_after_a_burst_of_connections_or_bytes(events: list[tuple[str, int]]) -> None:
    watch = BurstWatch(connections=256, received=16 << 20)
    peak = total = 0
    for kind, value in events:
        if kind == "open":
            watch.opened(value)
            peak = max(peak, value)
        else:
            watch.read(value)
            total += value
        assert watch.due == (peak >= 256 or total >= 16 << 20)
    watch.trimmed(3)
    assert not watch.due


def test_burst_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="connections=0"):
        BurstWatch(connections=0)


def test_malloc_trim_runs_where_glibc_has_it() -> None:
    import platform
    import sys

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert trim_available() is expected
    assert malloc_trim() is expected


@given(st.integers(1, 20_000))
def test_the_accept_batch_leaves_descriptors_for_the_connections_it_evicts(cap: int) -> None:
    # asyncio accepts up to a backlog of connections at once; the idle ones they evict close after the batch.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    config = server_config(app, host="127.0.0.1", port=0, limits=ServerLimits(max_connections=cap))
    assert 1 <= config.backlog <= max(16, cap // 2)
