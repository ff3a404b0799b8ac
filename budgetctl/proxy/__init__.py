"""The proxy: an OpenAI-compatible server that answers with anytime runs over any OpenAI-compatible upstream.

``budgetctl proxy --upstream URL`` on the command line; from Python, ``ProxyServer(ProxyConfig(upstream=URL))``
is an ASGI app (``.app``) that :func:`budgetctl.serve.serve_in_thread` runs on a free loopback port.
Needs ``pip install 'budgetctl[proxy]'`` (Starlette, uvicorn, openai, prometheus-client), and
``budgetctl[redis]`` for a budget shared across replicas. See docs/proxy.md.
"""

from ._app import ProxyConfig as ProxyConfig
from ._app import ProxyServer as ProxyServer
from ._ledger import BudgetLimits as BudgetLimits
from ._ledger import LocalLedger as LocalLedger
from ._ledger import RedisLedger as RedisLedger

__all__ = ("BudgetLimits", "LocalLedger", "ProxyConfig", "ProxyServer", "RedisLedger")
