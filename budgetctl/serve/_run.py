"""Running the replay server (or the proxy): in the foreground (the CLI), or in a background thread (tests, benchmarks).

Anything with an ASGI ``app`` and its :class:`~budgetctl.serve._limits.ServerLimits` as ``limits`` runs here,
always with those limits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from .._optional import import_optional
from ._limits import ASGIApp, ServerLimits, server_config

__all__ = ["RunningServer", "serve_in_thread", "run_server", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Servable(Protocol):
    """What the runners serve: an ASGI app and the limits it runs under."""

    @property
    def app(self) -> ASGIApp: ...

    @property
    def limits(self) -> ServerLimits: ...


S = TypeVar("S", bound=Servable)


def _config(server: Servable, host: str, port: int, log_level: str) -> Any:
    # An app with startup and shutdown work (the proxy's scheduler) says so with ``lifespan = "on"``.
    lifespan = str(getattr(server, "lifespan", "off"))
    return server_config(server.app, host=host, port=port, limits=server.limits, log_level=log_level, lifespan=lifespan)


def run_server(server: Servable, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``server`` until interrupted (Ctrl-C), in the foreground."""
    uvicorn = import_optional("uvicorn", "serve", "the replay server (budgetctl serve)")
    uvicorn.Server(_config(server, host, port, log_level)).run()


@dataclass(frozen=True)
class RunningServer(Generic[S]):
    """A server running in a background thread (from :func:`serve_in_thread`)."""

    #: The server (a :class:`ReplayServer`: read ``server.stats`` for what it has seen).
    server: S
    #: Host it listens on.
    host: str
    #: Port it listens on (the one picked, when port 0 was asked for).
    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"


@contextlib.contextmanager
def serve_in_thread(
    server: S,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
    log_level: str = "warning",
) -> Iterator[RunningServer[S]]:
    """Run ``server`` with uvicorn in a daemon thread for the ``with`` block; port 0 picks a free port.

    Waits (at most ``startup_timeout`` seconds) until the socket is listening, and raises
    ``RuntimeError`` if uvicorn fails to start (e.g. the port is taken). Leaving the block stops
    the server, giving open requests two seconds to finish.
    """
    uvicorn = import_optional("uvicorn", "serve", "the replay server (budgetctl serve)")
    runner = uvicorn.Server(_config(server, host, port, log_level))
    failure: list[BaseException] = []

    def target() -> None:
        try:
            runner.run()
        except BaseException as error:  # SystemExit from a failed bind included
            failure.append(error)

    thread = threading.Thread(target=target, name=f"budgetctl server {host}:{port}", daemon=True)
    thread.start()
    limit = time.monotonic() + startup_timeout
    while not runner.started:
        if not thread.is_alive():
            reason = f": {failure[0]!r}" if failure else ""
            raise RuntimeError(f"the server could not start on {host}:{port}{reason} (see the log above)")
        if time.monotonic() > limit:
            runner.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"the server did not start within {startup_timeout} s on {host}:{port}")
        time.sleep(0.005)
    bound = runner.servers[0].sockets[0].getsockname()[1] if port == 0 else port
    try:
        yield RunningServer(server=server, host=host, port=int(bound))
    finally:
        runner.should_exit = True
        thread.join(timeout=10)
