"""``budgetctl proxy --upstream URL``: an OpenAI-compatible proxy answering with anytime runs (docs/proxy.md)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``proxy`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "proxy",
        help="serve an OpenAI-compatible proxy that answers with anytime runs over an upstream server",
        description=(
            "An OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, /metrics) in front "
            "of any OpenAI-compatible upstream: each request is answered by sampling the upstream until its stop "
            "policy, budget or deadline says stop, with one choice whose answer is the final answer. A request may "
            "tune its run with a 'budgetctl' object in its body. Needs budgetctl[proxy]; --redis needs "
            "budgetctl[redis]. See docs/proxy.md."
        ),
    )
    parser.add_argument(
        "--upstream", required=True, metavar="URL", help="base URL of the upstream, http://host:port/v1"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument("--policy", default="ac|fixed:n=16", help="stop policy spec (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds per request (default: %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="upstream calls in flight over all requests (default: %(default)s)"
    )
    parser.add_argument(
        "--request-concurrency", type=int, default=4, help="one request's calls in flight (default: %(default)s)"
    )
    parser.add_argument(
        "--max-samples", type=int, default=16, help="samples per request at most, 0: no cap (default: %(default)s)"
    )
    parser.add_argument("--extract", default="default", help="answer extractor (default: %(default)s)")
    parser.add_argument("--sample-timeout", type=float, default=None, help="seconds before one upstream call fails")
    budget = parser.add_argument_group("shared budget (every request; every replica with --redis)")
    budget.add_argument("--budget-tokens", type=int, default=None, help="generated tokens per window")
    budget.add_argument("--budget-usd", type=float, default=None, help="dollars per window (needs --price)")
    budget.add_argument("--window", type=float, default=None, help="seconds per budget window (default: no reset)")
    budget.add_argument(
        "--price", default=None, metavar="IN,OUT", help="dollars per million prompt and generated tokens, e.g. 0.15,0.6"
    )
    budget.add_argument("--redis", default=None, metavar="URL", help="share the budget in Redis (redis://host:port/0)")
    budget.add_argument(
        "--redis-fallback",
        default="refuse",
        metavar="refuse|FRACTION",
        help="when Redis is unreachable: refuse requests (503, default) or spend FRACTION of the budget locally",
    )
    budget.add_argument("--budget-name", default="default", help="name of the shared budget in Redis")
    budget.add_argument(
        "--redis-timeout", type=float, default=2.0, help="seconds before Redis counts as unreachable (default: 2)"
    )
    traces = parser.add_argument_group("traces and metrics")
    traces.add_argument("--trace", default=None, metavar="DIR", help="write JSONL traces (train/simulate read them)")
    traces.add_argument("--trace-max-mb", type=float, default=64.0, help="MB per trace file (default: %(default)s)")
    traces.add_argument("--trace-prompts", action="store_true", help="write prompt texts into the traces")
    traces.add_argument(
        "--otel",
        action="store_true",
        help="OpenTelemetry spans per request and upstream call, to the tracer provider OTEL_* configures "
        "(needs budgetctl[otel])",
    )
    traces.add_argument("--shadow", default=None, metavar="SPEC", help="log where this policy would have stopped")
    auth = parser.add_argument_group("keys")
    auth.add_argument(
        "--api-key",
        action="append",
        default=None,
        help="a key clients must send (repeatable; or $BUDGETCTL_PROXY_API_KEYS, comma-separated, kept out of ps)",
    )
    auth.add_argument(
        "--upstream-api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the upstream's key (default: the client's key, else $OPENAI_API_KEY)",
    )
    from ..serve._limits import add_limit_arguments

    add_limit_arguments(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(func=_run)


def _price(text: str | None) -> Any:
    if text is None:
        return None
    from ..samplers import Price

    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"--price must be two numbers >= 0, dollars per million prompt,generated tokens; got {text!r}")
    return Price.per_million(values[0], values[1])


def config_from_arguments(args: argparse.Namespace) -> Any:
    """The :class:`~budgetctl.proxy.ProxyConfig` of parsed arguments; ``ValueError`` names the bad flag."""
    from ..proxy import BudgetLimits, ProxyConfig
    from ..serve._limits import limits_from_arguments

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {args.port}")
    for flag, value in (("--deadline", args.deadline), ("--trace-max-mb", args.trace_max_mb)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a number > 0, got {value}")
    for flag, value in (("--concurrency", args.concurrency), ("--request-concurrency", args.request_concurrency)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if args.max_samples < 0:
        raise ValueError(f"--max-samples must be >= 0, got {args.max_samples}")
    if not (math.isfinite(args.redis_timeout) and args.redis_timeout > 0):
        raise ValueError(f"--redis-timeout must be a number > 0, got {args.redis_timeout}")
    if args.sample_timeout is not None and not args.sample_timeout > 0:
        raise ValueError(f"--sample-timeout must be > 0, got {args.sample_timeout}")
    fallback: float | None = None
    if args.redis_fallback != "refuse":
        try:
            fallback = float(args.redis_fallback)
        except ValueError:
            fallback = -1.0
        if not 0 < fallback <= 1:
            raise ValueError(f"--redis-fallback must be 'refuse' or a fraction in (0, 1], got {args.redis_fallback!r}")
    try:
        budget = BudgetLimits(tokens=args.budget_tokens, usd=args.budget_usd, window=args.window)
    except ValueError as error:
        raise ValueError(f"--budget-tokens/--budget-usd/--window: {error}") from None
    keys = list(args.api_key or [])
    keys += [k.strip() for k in os.environ.get("BUDGETCTL_PROXY_API_KEYS", "").split(",") if k.strip()]
    upstream_key = None
    if args.upstream_api_key_env is not None:
        upstream_key = os.environ.get(args.upstream_api_key_env)
        if not upstream_key:
            raise ValueError(f"--upstream-api-key-env: ${args.upstream_api_key_env} is not set")
    return ProxyConfig(
        upstream=args.upstream,
        policy=args.policy,
        deadline=args.deadline,
        slots=args.concurrency,
        request_concurrency=args.request_concurrency,
        max_samples=args.max_samples or None,
        budget=budget,
        price=_price(args.price),
        redis_url=args.redis,
        redis_fallback=fallback,
        budget_name=args.budget_name,
        redis_timeout=args.redis_timeout,
        trace_dir=args.trace,
        trace_max_bytes=max(1, int(args.trace_max_mb * 1e6)),
        trace_prompts=args.trace_prompts,
        otel=args.otel,
        shadow=args.shadow,
        api_keys=tuple(keys),
        upstream_api_key=upstream_key,
        extract=args.extract,
        sample_timeout=args.sample_timeout,
        limits=limits_from_arguments(args),
    )


def _run(args: argparse.Namespace) -> int:
    from ..cli import UsageError

    try:
        config = config_from_arguments(args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    from ..proxy import ProxyServer
    from ..serve import run_server
    from ..serve._run import is_loopback

    server = ProxyServer(config)
    if not is_loopback(args.host):
        print(f"budgetctl proxy: warning: listening on {args.host}, reachable from other machines", file=sys.stderr)
        if not config.api_keys:
            print("budgetctl proxy: warning: and no --api-key is asked of clients", file=sys.stderr)
    shared = f"Redis budget {config.budget_name!r}" if config.redis_url else "this process's budget"
    print(
        f"budgetctl proxy: http://{args.host}:{args.port}/v1 -> {server.upstream} (policy {config.policy!r}, "
        f"deadline {config.deadline:g} s, {config.slots} upstream slots, {shared})",
        file=sys.stderr,
        flush=True,
    )
    run_server(server, host=args.host, port=args.port, log_level=args.log_level)
    return 0
