"""End to end over a real socket: the replay server (uvicorn, in a thread) driven by the real ``openai`` client.

One server serves a small synthetic pool for the whole module (each test resets its decks and
stats). Timing is made of big contrasts, never tight bounds: replies that would take 3 s must be
abandoned by a 100 ms deadline, so "returns on time" is checked with a stated slack of 1.5 s.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import budgetctl as bc
from budgetctl import normalize_answer
from budgetctl._pool import Question, load_pool
from budgetctl.cli import main
from budgetctl.extract import default
from budgetctl.policies import AdaptiveConsistency, Stable
from budgetctl.samplers import Price, alternate, openai_chat, openai_chat_stream, openai_completion

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from budgetctl.serve import ReplayServer, RunningServer, serve_in_thread  # noqa: E402
from budgetctl.serve._replay import Decks, reply_pieces  # noqa: E402

pytestmark = pytest.mark.anyio

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"

EASY = "Q-easy: What is six times seven?"
SPLIT = "Q-split: Heads or tails?"
DEADLINE = "Q-deadline: Which number comes after six?"
LOGPROBS = "Q-logprobs: Name the letter x."
DISTINCT = "Q-distinct: Pick a letter from a to e."
CHAIN = "Q-chain: Think long and hard, then answer."
TTFT_MS, MS_PER_TOKEN = 5.0, 1.0
#: Slack allowed past a deadline on a shared, noisy machine (the slow replies take 3 s).
SLACK_S = 1.5


def _question(qid: str, text: str, samples: list[dict[str, Any]], gold: Any) -> dict[str, Any]:
    return {"id": qid, "dataset": "synthetic", "model": "fake", "gold": gold, "question": text, "samples": samples}


def _samples(answer: Any, tokens: int, count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"answer": answer, "tokens": tokens, **extra} for _ in range(count)]


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    questions = [
        _question("easy", EASY, _samples("42", 20, 40), "42"),
        _question("split", SPLIT, _samples("heads", 20, 20) + _samples("tails", 20, 20), "heads"),
        _question("deadline", DEADLINE, _samples("7", 10, 30) + _samples("7", 3000, 10), "7"),
        _question("logprobs", LOGPROBS, _samples("x", 10, 5, logprob=-2.0), "x"),
        _question("distinct", DISTINCT, [{"answer": a, "tokens": 5} for a in "abcde"], "a"),
        _question("chain", CHAIN, _samples("deep", 2000, 10), "deep"),
    ]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path


@pytest.fixture(scope="module")
def running(pool_file: Path) -> Iterator[RunningServer]:
    server = ReplayServer(pool_file, seed=0, ttft_ms=TTFT_MS, ms_per_token=MS_PER_TOKEN)
    with serve_in_thread(server, startup_timeout=20) as handle:
        yield handle


def _settle_and_reset(running: RunningServer) -> None:
    """Wait until the server has finished with earlier requests, then give it fresh decks and zeroed stats."""
    limit = time.monotonic() + 3.0
    seen = None
    while time.monotonic() < limit:
        now = (running.server.stats.requests, running.server.stats.in_flight)
        if now == seen and now[1] == 0:
            break
        seen = now
        time.sleep(0.05)
    running.server.reset(seed=0)


@pytest.fixture
def live(running: RunningServer) -> RunningServer:
    """The module's server with fresh decks and zeroed stats, once the previous test's requests have died down."""
    _settle_and_reset(running)
    return running


@pytest.fixture
def anyio_backend() -> str:
    # The openai client streams on asyncio cleanly; trio is covered by the runtime's own tests.
    return "asyncio"


@pytest.fixture
async def client(live: RunningServer) -> AsyncIterator[Any]:
    """An openai client whose first (slow: ~80 ms of model building) chat call is already made."""
    async with openai.AsyncOpenAI(base_url=live.base_url, api_key="test", max_retries=0) as made:
        await made.models.list()
        await made.chat.completions.create(model="replay", messages=[{"role": "user", "content": EASY}])
        await made.completions.create(model="replay", prompt=EASY)
        await anyio.to_thread.run_sync(_settle_and_reset, live)
        yield made


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
    with anyio.move_on_after(within):
        while not condition():
            await anyio.sleep(0.01)
        return True
    return False


# -- deadlines and cancellation ----------------------------------------------------------------------------
@pytest.mark.parametrize("deadline", [0.1, 1.0])
async def test_a_deadline_returns_the_best_so_far_and_cancels_requests(
    live: RunningServer, client: Any, deadline: float
) -> None:
    stats = live.server.stats
    start = time.monotonic()
    result = await bc.solve(openai_chat(client, "replay", DEADLINE), deadline=deadline, concurrency=4)
    wall = time.monotonic() - start
    assert result.stop_reason == "deadline"
    assert wall < deadline + SLACK_S, f"took {wall:.2f} s: the 3 s replies were waited for, not cancelled"
    # The best so far: the majority of what came back (all "7"), or the fallback if nothing did,
    # which a loaded machine may cause at 100 ms; at 1 s short replies (~15 ms) always come back.
    assert result.answer == (7 if result.n_samples else None)
    if deadline >= 1.0:
        assert result.n_samples >= 1
    assert result.n_cancelled >= 1
    # The client is still open: only the cancellation itself can have closed those requests, and the
    # server must notice well before the 3 s replies would have ended.
    assert await eventually(lambda: stats.in_flight == 0, within=2.5), stats
    assert stats.disconnected >= 1
    assert stats.completed + stats.disconnected == stats.requests
    assert 0 < stats.tokens_before_disconnect < 3000 * stats.disconnected  # cut short, not run to the end
    # Replies that finished just as the deadline came are billed but never counted by the run.
    assert stats.completion_tokens >= result.tokens


async def test_2s_deadline_adaptive_consistency_stops_early_on_easy_questions(live: RunningServer, client: Any) -> None:
    policy = AdaptiveConsistency(0.95)
    budget = bc.Budget(samples=40)
    easy = await bc.solve(openai_chat(client, "replay", EASY), policy=policy, budget=budget, deadline=2, concurrency=4)
    split = await bc.solve(
        openai_chat(client, "replay", SPLIT), policy=policy, budget=budget, deadline=2, concurrency=4
    )
    assert easy.stop_reason == "policy"
    assert easy.answer == 42
    assert easy.n_samples < 10
    assert split.n_samples > easy.n_samples  # a 50/50 question keeps sampling


# -- accounting ----------------------------------------------------------------------------------------------
PRICE = Price.per_million(2.0, 8.0)


@pytest.mark.parametrize(
    ("kind", "n"),
    [("chat", 1), ("chat", 3), ("completion", 2)],
)
async def test_tokens_and_dollars_match_the_server_usage(live: RunningServer, client: Any, kind: str, n: int) -> None:
    if kind == "chat":
        sampler = openai_chat(
            client, "replay", [{"role": "user", "content": f"Answer this.\n{SPLIT}"}], n=n, price=PRICE
        )
    else:
        sampler = openai_completion(client, "replay", f"{SPLIT}\nA:", n=n, price=PRICE)
    result = await bc.solve(sampler, policy=AdaptiveConsistency(0.95), budget=bc.Budget(samples=4), concurrency=1)
    stats = live.server.stats
    assert await eventually(lambda: stats.in_flight == 0)
    assert result.n_cancelled == 0
    assert result.n_samples == n * stats.completed
    assert stats.completion_tokens == result.tokens == 20 * result.n_samples
    assert result.dollars == pytest.approx(PRICE.cost(stats.prompt_tokens, stats.completion_tokens))


async def test_logprobs_from_the_pool_become_confidence(live: RunningServer, client: Any) -> None:
    for make in (openai_chat, openai_completion):
        sample = await make(client, "replay", LOGPROBS, logprobs=True)()
        assert isinstance(sample, bc.Sample)
        assert sample.answer == "x"
        assert sample.logprob == pytest.approx(-2.0)
        assert sample.confidence == pytest.approx(math.exp(-2.0 / 10))
    plain = await openai_chat(client, "replay", LOGPROBS)()
    assert isinstance(plain, bc.Sample) and plain.logprob is None


# -- deeper reasoning over the wire --------------------------------------------------------------------------
async def test_a_settled_chain_is_stopped_and_its_stream_closed(live: RunningServer, client: Any) -> None:
    stats = live.server.stats
    sampler = openai_chat_stream(client, "replay", CHAIN, probe_every=20, probe="request", price=PRICE)
    result = await bc.solve(sampler, policy=Stable(2), deadline=10, concurrency=1)
    assert result.stop_reason == "policy"
    assert result.answer == "deep"
    # Two probes agreed, each paying 20 streamed tokens and its probe reply (" deep.", one token);
    # the 2000-token chain was not finished.
    assert [s.tokens for s in result.samples] == [21, 21]
    assert stats.streams == 1 and stats.probes >= 2
    assert await eventually(lambda: stats.in_flight == 0, within=1.5), stats  # long before its 2 s end
    assert stats.disconnected >= 1  # the stream (and a third probe, if one had started)
    assert 40 <= stats.tokens_before_disconnect < 2000


async def test_a_finished_chain_adds_up_to_its_usage(live: RunningServer, client: Any) -> None:
    sampler = openai_chat_stream(client, "replay", EASY, probe_every=8, price=PRICE)
    result = await bc.solve(sampler, budget=bc.Budget(samples=1))
    stats = live.server.stats
    assert await eventually(lambda: stats.in_flight == 0)
    assert [s.tokens for s in result.samples] == [8, 8, 4]
    assert result.answer == 42
    assert stats.completed == 1 and stats.streams == 1
    assert result.tokens == stats.completion_tokens == 20
    assert result.dollars == pytest.approx(PRICE.cost(stats.prompt_tokens, stats.completion_tokens))


async def test_parallel_samples_and_chains_mix_in_one_run(live: RunningServer, client: Any) -> None:
    batch = openai_chat(client, "replay", EASY, n=2)
    chain = openai_chat_stream(client, "replay", EASY, probe_every=5, probe="request")
    mixed = alternate(batch, chain)
    result = await bc.solve(mixed, policy=AdaptiveConsistency(0.95), deadline=5, concurrency=2)
    stats = live.server.stats
    assert result.answer == 42 and result.stop_reason == "policy"
    assert mixed.calls[0] >= 1 and mixed.calls[1] >= 1
    assert stats.streams >= 1 and stats.probes >= 1


# -- the protocol --------------------------------------------------------------------------------------------
async def test_streamed_chat_with_n_and_usage(live: RunningServer, client: Any) -> None:
    stream = await client.chat.completions.create(
        model="replay",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": LOGPROBS}],
        n=2,
        stream=True,
        logprobs=True,
        stream_options={"include_usage": True},
    )
    texts = ["", ""]
    tokens = [0, 0]
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                texts[choice.index] += choice.delta.content
                tokens[choice.index] += len(choice.logprobs.content)
    assert [default(t) for t in texts] == ["x", "x"]
    assert usage is not None and usage.completion_tokens == sum(tokens) == 20


def _post(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (
            json.dumps({"model": "replay", "messages": [{"role": "user", "content": "Who won?"}]}).encode(),
            404,
            "no question",
        ),
        (json.dumps({"model": "replay", "messages": [{"role": "user", "content": EASY}], "n": 0}).encode(), 400, "'n'"),
        (json.dumps({"messages": [{"role": "user", "content": EASY}]}).encode(), 400, "'model'"),
    ],
)
def test_bad_requests_get_clear_errors(running: RunningServer, body: bytes, status: int, message: str) -> None:
    code, payload = _post(running.base_url + "/chat/completions", body)
    assert code == status
    assert message in payload["error"]["message"]


def test_models_stats_and_reset(running: RunningServer) -> None:
    with urllib.request.urlopen(running.base_url + "/models", timeout=10) as response:
        models = json.loads(response.read())
    assert [m["id"] for m in models["data"]] == ["replay", "synthetic"]
    base = running.base_url.removesuffix("/v1")
    code, reply = _post(base + "/reset", json.dumps({"seed": 5}).encode())
    assert (code, reply) == (200, {"seed": 5})
    with urllib.request.urlopen(base + "/stats", timeout=10) as response:
        stats = json.loads(response.read())
    assert stats["requests"] == 0 and stats["questions"] == 6


async def test_samples_are_drawn_without_replacement_in_a_seeded_order(live: RunningServer, client: Any) -> None:
    sampler = openai_chat(client, "replay", DISTINCT)

    async def five() -> list[Any]:
        return [(await sampler()).answer for _ in range(5)]  # type: ignore[union-attr]

    first = await five()
    assert sorted(first) == list("abcde")
    live.server.reset(seed=0)
    assert await five() == first
    live.server.reset(seed=1)
    assert sorted(await five()) == list("abcde")


def test_decks_can_refuse_to_repeat() -> None:
    question = Question(id="q", samples=tuple(bc.Sample(answer=a) for a in "ab"), correct_keys=frozenset())
    decks = Decks(seed=3, exhaust="error")
    assert sorted(str(decks.draw(question).answer) for _ in range(2)) == ["a", "b"]
    with pytest.raises(LookupError, match="no samples left"):
        decks.draw(question)


@pytest.mark.parametrize(("answer", "tokens"), [("yajo", 47), (1000.0, 3), (None, 12), ("05/01/2021", 64)])
def test_a_reply_has_the_sample_tokens_and_a_parsable_answer(answer: Any, tokens: int) -> None:
    pieces = reply_pieces(bc.Sample(answer=answer, tokens=tokens))
    assert len(pieces) == max(tokens, 4)  # the answer sentence is never cut
    extracted = default("".join(pieces))
    assert (None if extracted is None else normalize_answer(extracted)) == (
        None if answer is None else normalize_answer(answer)
    )


# -- the command line ----------------------------------------------------------------------------------------
def test_ask_prints_the_answer_as_json(
    running: RunningServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    running.server.reset(seed=0)
    trace = tmp_path / "trace.jsonl"
    argv = ["ask", "--base-url", running.base_url, "--model", "replay", "--deadline", "5", "--json"]
    argv += ["--price-in", "1", "--price-out", "2", "--budget-usd", "0.01", "--trace", str(trace), EASY]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["answer"] == 42 and report["stop_reason"] == "policy"
    assert report["tokens"] == 20 * report["samples"]
    assert bc.read_runs(str(trace))[0].meta["question"] == EASY


def test_ask_reports_unknown_questions_and_bad_flags(
    running: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", "--base-url", running.base_url, "--model", "replay", "--max-samples", "2", "Who won?"]
    assert main(argv) == 1
    assert "no question of the replayed pool matches" in capsys.readouterr().err
    assert main([*argv[:-1], "--budget-usd", "1", "Who won?"]) == 2
    assert "--price-in" in capsys.readouterr().err
    assert main([*argv[:-1], "--policy", "acc:threshold=0.9", EASY]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_serve_refuses_bad_arguments(pool_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(pool_file.parent / "missing.jsonl")]) == 2
    assert "pool file not found" in capsys.readouterr().err
    assert main(["serve", str(pool_file), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(pool_file), "--ttft-ms", "-1"]) == 2
    assert "--ttft-ms" in capsys.readouterr().err


def test_a_server_needs_question_texts(tmp_path: Path) -> None:
    path = tmp_path / "no_text.jsonl"
    path.write_text(json.dumps({"id": "q", "samples": [{"answer": "a", "tokens": 3}]}) + "\n")
    with pytest.raises(ValueError, match=r"no question in .* has a question text"):
        ReplayServer(path)
    with pytest.raises(ValueError, match="ms_per_token"):
        ReplayServer(path, ms_per_token=-1)


# -- the real pools, when present ----------------------------------------------------------------------------
@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real traces are not at {SHARED}")
async def test_real_pool_replays_with_the_right_answers(client: Any) -> None:
    path = SHARED / "esc_lastletters_gpt35.jsonl"
    server = ReplayServer(path, ttft_ms=1, ms_per_token=0.05)
    questions = server.pool.questions[:5]
    with serve_in_thread(server) as handle:
        async with openai_chat(handle.base_url, "replay", questions[0].text) as first:
            assert (await first()).answer is not None  # type: ignore[union-attr]
        for question in questions:
            async with openai_chat(handle.base_url, "replay", question.text) as sampler:
                result = await bc.solve(sampler, policy=AdaptiveConsistency(0.95), budget=bc.Budget(samples=40))
            majority = max(question.samples, key=[s.answer for s in question.samples].count).answer
            assert normalize_answer(result.answer) == normalize_answer(majority)


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the real traces are not at {SHARED}")
@pytest.mark.parametrize(
    ("name", "most_lost"),
    [("esc_lastletters_gpt35.jsonl", 0.0), ("fcot_date_codex.jsonl", 0.0), ("activeprompt_k10_codex.jsonl.gz", 0.02)],
)
def test_the_default_extractor_reads_every_replayed_answer(name: str, most_lost: float) -> None:
    # Only junk answers made of punctuation ("));", "n:") lose their trailing marks in the round trip.
    answers = {s.answer for q in load_pool(SHARED / name).questions for s in q.samples}
    lost = 0
    for answer in answers:
        extracted = default("".join(reply_pieces(bc.Sample(answer=answer, tokens=30))))
        want = None if answer is None else normalize_answer(answer)
        lost += (None if extracted is None else normalize_answer(extracted)) != want
    assert lost <= most_lost * len(answers)
