"""The replay server: real sample pools served as an OpenAI-compatible HTTP endpoint, with realistic timing.

``budgetctl serve POOL`` on the command line; from Python, ``ReplayServer(pool)`` is an ASGI app
(``.app``) and :func:`serve_in_thread` runs it on a free loopback port for tests and benchmarks.
Needs ``pip install 'budgetctl[serve]'`` (Starlette and uvicorn).
"""

from ._app import ReplayServer as ReplayServer
from ._replay import ServerStats as ServerStats
from ._run import RunningServer as RunningServer
from ._run import run_server as run_server
from ._run import serve_in_thread as serve_in_thread

__all__ = ("ReplayServer", "RunningServer", "ServerStats", "run_server", "serve_in_thread")
