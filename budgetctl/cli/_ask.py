"""``budgetctl ask``: answer one question with an OpenAI-compatible endpoint, under a deadline and a budget."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``ask`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ask",
        help="answer a question with an OpenAI-compatible endpoint under a deadline and a budget",
        description=(
            "Sample answers from an OpenAI-compatible server (vLLM, SGLang, llama.cpp, OpenAI, budgetctl serve) "
            "until the stop policy, the budget or the deadline says stop; print the best answer. Needs "
            "budgetctl[openai]."
        ),
    )
    parser.add_argument("question", help="the question (the user message), or - to read it from stdin")
    parser.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="model name the server knows")
    parser.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY, else 'EMPTY')")
    parser.add_argument("--system", default=None, help="a system message sent before the question")
    parser.add_argument("--completions", action="store_true", help="use /completions with the question as prompt")
    parser.add_argument("--policy", default="ac:threshold=0.95", help="stop policy spec (default: %(default)s)")
    parser.add_argument("--deadline", type=float, default=None, help="seconds until the best answer is returned")
    parser.add_argument("--budget-usd", type=float, default=None, help="most dollars to spend (needs prices)")
    parser.add_argument("--budget-tokens", type=int, default=None, help="most generated tokens to spend")
    parser.add_argument("--max-samples", type=int, default=40, help="most requests to launch (default: %(default)s)")
    parser.add_argument(
        "--concurrency",
        default="auto",
        help="requests in flight at once: N, or auto (planned at every arrival), auto:SPEED (0..1, cheapest.."
        "fastest) (default: %(default)s)",
    )
    parser.add_argument("--n", type=int, default=1, help="completions per request (default: %(default)s)")
    parser.add_argument("--extract", default="default", help="answer extractor: default, answer-is, boxed, ...")
    parser.add_argument("--choices", default="ABCDE", help="letters for --extract choice (default: %(default)s)")
    parser.add_argument("--price-in", type=float, default=None, help="dollars per million prompt tokens")
    parser.add_argument("--price-out", type=float, default=None, help="dollars per million generated tokens")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (server default)")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens per completion (server default)")
    parser.add_argument("--logprobs", action="store_true", help="ask for logprobs: per-sample confidence")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="deeper reasoning: stream each chain and probe its answer every --probe-every tokens",
    )
    parser.add_argument("--probe-every", type=int, default=64, help="tokens between probes with --stream")
    parser.add_argument(
        "--probe", choices=("text", "request"), default="text", help="how --stream probes (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--trace", default=None, metavar="FILE", help="append the run's events to FILE (JSONL)")
    parser.add_argument("--id", default=None, help="the question's id, written into the trace (for simulate/train)")
    parser.add_argument("--gold", default=None, help="the right answer, written into the trace (for simulate/train)")
    parser.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more metadata for the trace (repeatable; VALUE is read as JSON when it parses, e.g. dataset=mytask)",
    )
    parser.set_defaults(func=_run)


def _check(args: argparse.Namespace) -> None:
    from .._plan import parse_concurrency
    from ..cli import UsageError

    try:
        args.concurrency = parse_concurrency(args.concurrency, name="--concurrency")
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    positive = {"--max-samples": args.max_samples, "--n": args.n}
    positive["--probe-every"] = args.probe_every
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    non_negative = {
        "--deadline": args.deadline,
        "--budget-usd": args.budget_usd,
        "--budget-tokens": args.budget_tokens,
        "--price-in": args.price_in,
        "--price-out": args.price_out,
    }
    for flag, value in non_negative.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag} must be a number >= 0, got {value}")
    if args.budget_usd is not None and args.price_in is None and args.price_out is None:
        raise UsageError("--budget-usd needs --price-in and/or --price-out (dollars per million tokens)")
    if args.stream and args.n != 1:
        raise UsageError("--stream streams one chain per request; it cannot be combined with --n")
    _meta(args, "")  # checks --meta before any work


def _meta(args: argparse.Namespace, question: str) -> dict[str, Any]:
    """The trace's metadata: the question, model and server, ``--meta`` pairs, then ``--id`` and ``--gold``."""
    from ..cli import UsageError

    meta: dict[str, Any] = {"question": question, "model": args.model, "base_url": args.base_url}
    for item in args.meta:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--meta takes KEY=VALUE, got {item!r}")
        try:
            meta[key.strip()] = json.loads(value)
        except ValueError:
            meta[key.strip()] = value
    if args.id is not None:
        meta["id"] = args.id
    if args.gold is not None:
        meta["gold"] = args.gold
    return meta


def _sampler(args: argparse.Namespace, question: str) -> Any:
    from .. import extract as extractors
    from ..samplers import (
        Price,
        openai_chat,
        openai_chat_stream,
        openai_completion,
        openai_completion_stream,
    )

    extract = extractors.choice(args.choices) if args.extract == "choice" else extractors.get_extractor(args.extract)
    price = None
    if args.price_in is not None or args.price_out is not None:
        price = Price.per_million(args.price_in or 0.0, args.price_out or 0.0)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": question})
    prompt = question if not args.system else f"{args.system}\n\n{question}"
    common: dict[str, Any] = {
        "extract": extract,
        "price": price,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "api_key": args.api_key,
    }
    if args.stream:
        stream = {"probe_every": args.probe_every, "probe": args.probe}
        if args.completions:
            return openai_completion_stream(args.base_url, args.model, prompt, **stream, **common)
        return openai_chat_stream(args.base_url, args.model, messages, **stream, **common)
    batch = {"n": args.n, "logprobs": args.logprobs}
    if args.completions:
        return openai_completion(args.base_url, args.model, prompt, **batch, **common)
    return openai_chat(args.base_url, args.model, messages, **batch, **common)


def _run(args: argparse.Namespace) -> int:
    import anyio

    from .._budget import Budget
    from .._runtime import solve
    from ..policies import parse_policy

    _check(args)
    question = sys.stdin.read().strip() if args.question == "-" else args.question
    if not question:
        from ..cli import UsageError

        raise UsageError("the question is empty")
    policy = parse_policy(args.policy)
    budget = Budget(samples=args.max_samples, tokens=args.budget_tokens, dollars=args.budget_usd)
    sampler = _sampler(args, question)

    async def main() -> Any:
        async with sampler:
            return await solve(
                sampler,
                policy=policy,
                budget=budget,
                deadline=args.deadline,
                concurrency=args.concurrency,
                trace=args.trace,
                meta=_meta(args, question),
            )

    result = anyio.run(main)
    report = {
        "answer": result.answer,
        "confidence": result.confidence,
        "samples": result.n_samples,
        "failed": result.n_failed,
        "cancelled": result.n_cancelled,
        "tokens": result.tokens,
        "dollars": result.dollars,
        "elapsed": result.elapsed,
        "stop_reason": result.stop_reason,
        "errors": sorted(set(result.errors))[:3],
    }
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(f"answer:      {result.answer}")
        print(f"confidence:  {result.confidence:.3f}")
        print(f"samples:     {result.n_samples} ({result.n_failed} failed, {result.n_cancelled} cancelled)")
        print(f"tokens:      {result.tokens}")
        print(f"dollars:     {result.dollars:.6f}")
        print(f"elapsed:     {result.elapsed:.3f} s")
        print(f"stop reason: {result.stop_reason}")
    if result.answer is None:
        print(f"budgetctl ask: no answer: {why_no_answer(args, result)}", file=sys.stderr)
        return 1
    return 0


def why_no_answer(args: argparse.Namespace, result: Any) -> str:
    """One line saying why a run ended without an answer, and what to do about it."""
    errors = sorted(set(result.errors))
    if result.stop_reason == "error" or (errors and result.n_samples == 0 and result.stop_reason != "deadline"):
        shown = "; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        return f"{result.n_failed} request(s) failed: {shown}"
    if result.n_samples > 0:
        return (
            f"{result.n_samples} sample(s) came back but the extractor {args.extract!r} read no answer from any; "
            "try another --extract (answer-is, boxed, number, ...) or a --system message that asks for "
            "'The answer is X.'"
        )
    if result.stop_reason == "deadline":
        failed = f", {result.n_failed} failed ({errors[0]})" if errors else ""
        return (
            f"no sample came back before the --deadline of {args.deadline:g} s ({result.n_cancelled} request(s) "
            f"were still running and were cancelled{failed}); give a longer --deadline, or check how long one "
            "request to this server takes (e.g. run without --deadline)"
        )
    return f"the run stopped ({result.stop_reason}) before any sample came back; check --max-samples and the budgets"
