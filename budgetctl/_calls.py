"""The sampler calls of one run: started, cancelled at the run's end, awaited for a bounded grace, then abandoned.

Structured concurrency would make a run wait, when it stops, for every call it cancelled: a sampler
whose cleanup ignores the cancellation (it catches it, or sleeps in a shielded ``finally:``) would
hold the result past the deadline for as long as it likes. So the calls do not run in the run's own
task group. They run in one long-lived task group per event loop (the *call host*, started on first
use: an asyncio task, or a trio system task), each inside a cancel scope that the run owns:

* when the run stops (its policy, its budget, or its time limit, which cancels the run's own wait),
  :meth:`Calls.aclose` cancels the scopes of the calls still running and waits for them: a few
  passes of the event loop, then, for what still runs, at most :data:`ABANDON_AFTER` seconds
  (shielded, so a caller that is itself cancelled still waits that long, no longer);
* a call still running then is *abandoned*: it stays in the call host, cancelled, until its own
  cleanup ends; whatever it returns is dropped. The run's result does not wait for it.

A well-behaved sampler unwinds within one pass of the event loop, so in practice nothing outlives
the run; only a sampler that ignores cancellation is left behind, and only in the call host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
from anyio.abc import TaskGroup

__all__ = ["ABANDON_AFTER", "Calls"]

#: Seconds a stopping run waits for its cancelled calls before abandoning them (the bound by which
#: a sampler that ignores cancellation can delay a result past its deadline).
ABANDON_AFTER = 0.05

#: Passes of the event loop a stopping run gives its cancelled calls before it sets up the bounded wait.
_PASSES = 3

#: The call host of each running event loop: its key -> (task group, the host's task, if asyncio).
_hosts: dict[object, TaskGroup] = {}
_starting: dict[object, anyio.Event] = {}


def _loop_key() -> object:
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    return asyncio.get_running_loop()


async def _host(key: object, ready: anyio.Event) -> None:
    try:
        async with anyio.create_task_group() as group:
            _hosts[key] = group
            ready.set()
            await anyio.sleep_forever()
    finally:
        _hosts.pop(key, None)


_asyncio_hosts: set[asyncio.Task[None]] = set()


async def call_host() -> TaskGroup:
    """The task group that hosts sampler calls on this event loop (started on first use)."""
    key = _loop_key()
    group = _hosts.get(key)
    if group is not None:
        return group
    ready = _starting.get(key)
    if ready is None:
        ready = _starting[key] = anyio.Event()
        if isinstance(key, asyncio.AbstractEventLoop):
            task = key.create_task(_host(key, ready), name="budgetctl call host")
            _asyncio_hosts.add(task)  # a strong reference: the loop keeps only weak ones
            task.add_done_callback(_asyncio_hosts.discard)
        else:
            import trio

            trio.lowlevel.spawn_system_task(_host, key, ready, name="budgetctl call host")
    try:
        await ready.wait()
    finally:
        if _starting.get(key) is ready and ready.is_set():
            del _starting[key]
    return _hosts[key]


def _cancel_all(scopes: list[anyio.CancelScope]) -> None:
    for scope in scopes:
        scope.cancel()


def _asyncio_task_running() -> bool:
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop: trio
        return False


class Calls:
    """The sampler calls of one run, hosted by the event loop's call host, cancellable as a whole."""

    __slots__ = ("_group", "_scopes", "_idle", "_started", "abandoned")

    def __init__(self, group: TaskGroup) -> None:
        self._group = group
        self._scopes: dict[int, anyio.CancelScope] = {}
        self._idle: anyio.Event | None = None
        self._started = 0
        #: Calls left running when the run stopped (they ignored their cancellation).
        self.abandoned = 0

    @classmethod
    async def open(cls) -> Calls:
        """The calls of a new run (on this event loop's call host)."""
        return cls(await call_host())

    def start(self, call: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start ``call(*args)``, to run until it ends or :meth:`cancel` cancels it.

        The scope is made here, so a call cancelled before its task first runs is cancelled too.
        (No deadline of its own: the run's deadline cancels the run's wait, and the run then
        cancels its calls at once. A timer per call would cost more than it saves.)
        """
        key = self._started
        self._started += 1
        scope = anyio.CancelScope()
        self._scopes[key] = scope
        self._group.start_soon(self._run, key, scope, call, args, name=f"budgetctl sample {key}")

    async def _run(self, key: int, scope: anyio.CancelScope, call: Callable[..., Awaitable[None]], args: Any) -> None:
        try:
            with scope:
                await call(*args)
        finally:
            del self._scopes[key]
            if not self._scopes and self._idle is not None:
                self._idle.set()

    @property
    def running(self) -> int:
        """Calls still running."""
        return len(self._scopes)

    def cancel(self) -> None:
        """Cancel every call still running (they unwind on their own)."""
        scopes = [scope for scope in self._scopes.values() if not scope.cancel_called]
        if not scopes:
            return
        if _asyncio_task_running():
            # anyio on asyncio writes the cancelling task's repr into each scope's cancel message,
            # which costs more than the rest of a call; from a loop callback there is no task.
            asyncio.get_running_loop().call_soon(_cancel_all, scopes)
        else:
            _cancel_all(scopes)

    async def aclose(self, grace: float = ABANDON_AFTER) -> None:
        """Cancel what still runs and wait for it to end, at most ``grace`` seconds; abandon the rest."""
        self.cancel()
        for _ in range(_PASSES):  # cancelled calls that behave end within a pass or two of the loop
            if not self._scopes:
                return
            await anyio.lowlevel.cancel_shielded_checkpoint()
        if not self._scopes:
            return
        self._idle = anyio.Event()
        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
            await self._idle.wait()
        self.abandoned = len(self._scopes)
