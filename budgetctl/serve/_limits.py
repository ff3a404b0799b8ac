"""Server hardening shared by the replay server and the proxy: body, JSON, connection and cache limits.

What a hostile or broken client on the network can do to an HTTP server, and what stops it here:

- a huge body (200 MB): :class:`LimitedApp` reads at most ``max_body_bytes`` (answered 413 at
  once when ``Content-Length`` says more, else as soon as the count passes it), so the body is
  never buffered whole; a body trickled slower than ``body_timeout`` is answered 408;
- idle and slowloris connections: :func:`server_config` runs uvicorn with a protocol that closes a
  connection whose request headers are not complete ``header_timeout`` seconds after it opened (or
  after its last response), however slowly bytes trickle in, caps the header size, and, at
  ``max_connections`` open connections, closes the longest-idle one to make room for a new client;
- hostile JSON (nested 100,000 deep, a 5,000-digit integer, ``NaN``): :func:`loads_json` raises
  :class:`JSONLimitError`, answered 400, before the value reaches any handler;
- unbounded caches: :class:`BytesLRU` holds at most ``max_bytes`` of keys and values;
- memory kept after a storm: a connection that has sent nothing holds no h11 parser or flow
  control (made on its first byte), and after a burst of connections or request bytes the C heap's
  free memory is handed back to the OS (:mod:`budgetctl.serve._memory`).

Everything here answers in OpenAI's error format (``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import contextvars
import json
import math
import resource
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

import anyio

from .._optional import import_optional
from ._memory import BurstWatch, malloc_trim, trim_available

__all__ = [
    "ServerLimits",
    "LimitedApp",
    "JSONLimitError",
    "loads_json",
    "server_config",
    "error_body",
    "BytesLRU",
    "default_max_connections",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI application (the shape of Starlette's ``ASGIApp``, without importing Starlette).
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, param: str | None = None, type: str | None = None) -> bytes:
    """An OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}`` as JSON bytes."""
    kind = type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "error")
    error = {"message": message, "type": kind, "param": param, "code": status}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def default_max_connections() -> int:
    """Open connections a server keeps at most: half the process's descriptor limit, at most 4,096.

    Half leaves descriptors for upstream connections, trace files and the like, so a flood of idle
    connections can never take the descriptor the next ``accept`` needs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft // 2))


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may ask of a server; the defaults suit an OpenAI-compatible JSON API."""

    #: Largest request body in bytes (more is answered 413).
    max_body_bytes: int = 1 << 20
    #: Seconds to receive a whole request body (slower is answered 408).
    body_timeout: float = 30.0
    #: Seconds from a connection's opening (or its last response) to complete request headers.
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open after a response.
    keep_alive_timeout: float = 5.0
    #: Largest request head (request line and headers) in bytes; more is answered 400 by uvicorn.
    max_header_bytes: int = 16 << 10
    #: Open connections kept at most (0: :func:`default_max_connections`); at the cap the
    #: longest-idle connection is closed for each new one.
    max_connections: int = 0
    #: Deepest nesting of JSON arrays and objects accepted.
    max_json_depth: int = 64
    #: Most digits of a JSON integer (Python refuses more than 4,300 anyway, with a ValueError).
    max_int_digits: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"ServerLimits.{f.name} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and f.name != "max_connections"):
                raise ValueError(f"ServerLimits.{f.name} must be > 0, got {value!r}")

    @property
    def connections(self) -> int:
        """The connection cap in effect."""
        return self.max_connections or default_max_connections()


class JSONLimitError(ValueError):
    """A request body that is not JSON, or is JSON beyond the server's limits; answered 400."""


def _check_depth(value: Any, limit: int) -> None:
    # Iterative: a check of nesting must not itself recurse.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise JSONLimitError(f"the request body nests arrays/objects deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def loads_json(raw: bytes | str, limits: ServerLimits | None = None) -> Any:
    """Parse a request body as JSON within ``limits``; raises :class:`JSONLimitError` with a one-line reason.

    Refused: invalid JSON or UTF-8, nesting deeper than ``max_json_depth``, an integer of more than
    ``max_int_digits`` digits, a number too large for a float, and ``NaN``/``Infinity`` (not JSON).
    """
    limits = limits or ServerLimits()
    digits = limits.max_int_digits

    def parse_int(text: str) -> int:
        if len(text) - text.startswith("-") > digits:
            raise JSONLimitError(f"the request body has an integer of {len(text)} digits (at most {digits})")
        return int(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise JSONLimitError(f"the request body has a number out of range ({text[:40]})")
        return value

    def parse_constant(text: str) -> Any:
        raise JSONLimitError(f"the request body has {text}, which is not JSON")

    try:
        value = json.loads(raw, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except JSONLimitError:
        raise
    except RecursionError:
        raise JSONLimitError(
            f"the request body nests arrays/objects deeper than {limits.max_json_depth} levels"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JSONLimitError(f"the request body is not valid JSON: {error}") from None
    except ValueError as error:  # e.g. int() past sys.get_int_max_str_digits
        raise JSONLimitError(f"the request body is not acceptable JSON: {error}") from None
    _check_depth(value, limits.max_json_depth)
    return value


class LimitedApp:
    """ASGI middleware: reads each HTTP request's body within the limits before the app sees it.

    A ``Content-Length`` over ``max_body_bytes`` is answered 413 without reading a byte of the
    body; a chunked body is counted as it arrives and answered 413 as soon as it passes the limit
    (so at most ``max_body_bytes`` are ever held); a body not complete within ``body_timeout`` is
    answered 408. The app then receives the whole body as one message, and later ``receive()``
    calls (a disconnect) go to the server as usual. Each refusal closes the connection.
    """

    def __init__(self, app: ASGIApp, limits: ServerLimits | None = None) -> None:
        self.app = app
        self.limits = limits or ServerLimits()
        #: Requests refused here, by status (413, 408).
        self.refused: dict[int, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                reason = f"the request body is {int(value)} bytes; this server takes at most {limit}"
                await self._refuse(send, 413, reason)
                return
        body = bytearray()
        more = True
        disconnected = False
        with anyio.move_on_after(self.limits.body_timeout):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._refuse(send, 413, f"the request body is over {limit} bytes, the most this server takes")
                    return
        if more and not disconnected:
            timeout = self.limits.body_timeout
            await self._refuse(send, 408, f"the request body did not arrive within {timeout:g} s")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected:
                    return {"type": "http.disconnect"}
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        body = error_body(status, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


_NO_CONTEXT = contextvars.Context()
#: Seconds without a closing connection, after a burst, before the heap is trimmed.
_TRIM_DELAY = 1.0


def _protocol_class(limits: ServerLimits) -> type:
    """uvicorn's h11 protocol, with a header deadline and a connection cap that evicts the longest idle."""
    import h11
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.h11_impl import H11Protocol

    cap = limits.connections
    header_timeout = limits.header_timeout
    burst = BurstWatch()
    trim_available()  # look malloc_trim up now, not in the event loop under load
    trim_timer: Any = None

    def trim_after_burst(protocol: Any) -> None:
        # Called as a connection closes: after a burst, trim the heap once the burst has passed,
        # i.e. a second after the last of its connections closed (each close postpones the trim).
        nonlocal trim_timer
        if not burst.due:
            return
        if trim_timer is not None:
            trim_timer.cancel()
        connections = protocol.connections

        def trim() -> None:
            nonlocal trim_timer
            trim_timer = None
            malloc_trim()
            burst.trimmed(len(connections))

        trim_timer = protocol.loop.call_later(_TRIM_DELAY, trim, context=_NO_CONTEXT)

    class HardenedH11Protocol(H11Protocol):
        _idle_since: float | None = None
        _header_timer: Any = None
        _armed_for: Any = None
        _h11: Any = None
        _flow: Any = None

        # The h11 parser and the flow control (with its asyncio.Event) are about a third of what an
        # open connection holds (1,000 idle connections: RSS +3.5 MiB instead of +5.5 MiB); one that
        # has sent nothing needs neither, so both are made on first use. uvicorn makes them eagerly;
        # those are dropped at once, freed before the next connection is accepted.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._h11 = None

        @property
        def conn(self) -> Any:
            if self._h11 is None:
                self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
            return self._h11

        @conn.setter
        def conn(self, value: Any) -> None:
            self._h11 = value

        @property
        def flow(self) -> Any:
            if self._flow is None and self.transport is not None:
                self._flow = FlowControl(self.transport)
            return self._flow

        @flow.setter
        def flow(self, value: Any) -> None:
            self._flow = value

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._flow = None
            self._arm_header_timer()
            burst.opened(len(self.connections))
            if len(self.connections) > cap:
                others: list[Any] = [c for c in self.connections if c is not self]
                idle = [c for c in others if getattr(c, "_idle_since", None) is not None]
                victim = min(idle, key=lambda c: c._idle_since) if idle else self
                victim._drop()

        def _arm_header_timer(self) -> None:
            self._idle_since = self.loop.time()
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._armed_for = self.cycle
            # The callback needs no context variables: one shared empty context, not a copy per timer.
            self._header_timer = self.loop.call_later(header_timeout, self._header_deadline, context=_NO_CONTEXT)

        def _header_deadline(self) -> None:
            # Closes the connection unless a request's headers arrived since the timer was armed;
            # bytes trickling in do not postpone it (that is the slowloris attack).
            self._header_timer = None
            if self.cycle is self._armed_for:
                self._drop()

        def _drop(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            self._idle_since = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            burst.read(len(data))
            super().data_received(data)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers arrived: busy, not idle
                self._idle_since = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            self._idle_since = None
            self._armed_for = None
            super().connection_lost(exc)
            trim_after_burst(self)

    return HardenedH11Protocol


def server_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    limits: ServerLimits | None = None,
    log_level: str = "info",
    purpose: str = "the replay server (budgetctl serve)",
    lifespan: str = "off",
) -> Any:
    """A ``uvicorn.Config`` for ``app`` with every limit of ``limits`` (the app itself is not wrapped).

    h11 with the hardened protocol, ``limits.keep_alive_timeout`` for idle keep-alive connections,
    ``limits.max_header_bytes`` for a request head, and uvicorn's ``limit_concurrency`` just above
    the connection cap (the eviction keeps connections at the cap, so requests are not refused 503
    for idle neighbours; tasks stay bounded). The listen backlog is half the cap: asyncio accepts up
    to a backlog's worth of connections at once and the descriptors of the idle ones they evict
    close only afterwards, so cap + backlog must stay under the descriptor limit (with a backlog of
    the whole cap, 1,000 idle connections at ``ulimit -n 256`` ran out of descriptors, and each time
    asyncio stopped accepting for a second). ``lifespan="on"`` for an app with startup and shutdown.
    """
    uvicorn = import_optional("uvicorn", "serve", purpose)
    limits = limits or ServerLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan=lifespan,
        ws="none",
        http=_protocol_class(limits),
        loop="asyncio",
        timeout_graceful_shutdown=2,
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout)),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.connections + 1,
        backlog=max(16, min(2048, limits.connections // 2)),
    )


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BytesLRU(Generic[K, V]):
    """A least-recently-used cache bounded by the bytes of its keys and values (``sys.getsizeof``).

    An entry larger than the whole bound is not kept. ``size`` gives what an entry weighs (default
    ``sys.getsizeof`` of the key plus the value).
    """

    def __init__(self, max_bytes: int, size: Callable[[K, V], int] | None = None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._size = size or (lambda k, v: sys.getsizeof(k) + sys.getsizeof(v))
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        #: Bytes held now.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (marking it recently used), or ``default``."""
        entry = self._items.get(key)
        if entry is None:
            return default
        self._items.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used entries past the bound."""
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        weight = self._size(key, value)
        if weight > self.max_bytes:
            return
        self._items[key] = (value, weight)
        self.bytes += weight
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()
        self.bytes = 0


def add_limit_arguments(parser: Any) -> None:
    """Add the limit flags (``--max-body-bytes`` and friends) to an argparse parser."""
    default = ServerLimits()
    group = parser.add_argument_group("limits (what one client may ask of the server)")
    group.add_argument(
        "--max-body-bytes",
        type=int,
        default=default.max_body_bytes,
        help="largest request body; more is answered 413 (default: %(default)s)",
    )
    group.add_argument(
        "--header-timeout",
        type=float,
        default=default.header_timeout,
        help="seconds for a connection to send complete request headers (default: %(default)s)",
    )
    group.add_argument(
        "--body-timeout",
        type=float,
        default=default.body_timeout,
        help="seconds to receive a whole request body; slower is answered 408 (default: %(default)s)",
    )
    group.add_argument(
        "--max-connections",
        type=int,
        default=0,
        help="open connections kept at most, the longest-idle closed for a new one (default: half of ulimit -n, "
        "at most 4096)",
    )


def limits_from_arguments(args: Any) -> ServerLimits:
    """The :class:`ServerLimits` of parsed limit flags; ``ValueError`` names the bad flag."""
    checks = (
        ("--max-body-bytes", args.max_body_bytes, 1),
        ("--header-timeout", args.header_timeout, 1e-3),
        ("--body-timeout", args.body_timeout, 1e-3),
        ("--max-connections", args.max_connections, 0),
    )
    for flag, value, low in checks:
        if not (math.isfinite(value) and value >= low):
            raise ValueError(f"{flag} must be a number >= {low:g}, got {value}")
    return ServerLimits(
        max_body_bytes=args.max_body_bytes,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
    )
