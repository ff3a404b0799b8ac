"""What the replay server says, without the HTTP: question matching, seeded decks of samples, and the text of a reply.

Kept free of web dependencies so it can be tested, and reasoned about, on its own.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

from .._pool import Question
from .._sample import Sample
from ._limits import BytesLRU
from ._requests import message_texts

__all__ = [
    "ServerStats",
    "QuestionIndex",
    "Decks",
    "Reply",
    "render_answer",
    "reply_pieces",
    "probe_pieces",
    "estimate_tokens",
    "is_probe",
    "message_texts",
]

_WORDS = re.compile(r"\s*\S+")
_FILLER = (
    "Let's",
    " work",
    " through",
    " this",
    " step",
    " by",
    " step",
    ".",
    " First",
    ",",
    " we",
    " look",
    " at",
    " each",
    " part",
    " of",
    " the",
    " question",
    ".",
    " Then",
    " we",
    " check",
    " it",
    ".",
)
_PROBE_END = re.compile(r"the\s+answer\s+is[\s.:…]*$", re.IGNORECASE)


@dataclass
class ServerStats:
    """What the replay server has seen since it started (or was last reset); ``GET /stats`` returns it."""

    #: Completion requests received (chat and text, probes included).
    requests: int = 0
    #: Responses delivered in full.
    completed: int = 0
    #: Requests whose client went away before the response was complete (cancelled requests).
    disconnected: int = 0
    #: Requests refused with a 4xx status (bad JSON, unknown question, bad parameter).
    rejected: int = 0
    #: Requests answered as a stream of server-sent events.
    streams: int = 0
    #: Probe requests ("... the answer is") answered.
    probes: int = 0
    #: Pool samples drawn (each choice of each request, probes excluded).
    samples_drawn: int = 0
    #: Prompt tokens of the completed responses (as their ``usage`` reported).
    prompt_tokens: int = 0
    #: Completion tokens of the completed responses (as their ``usage`` reported).
    completion_tokens: int = 0
    #: Tokens generated for clients that went away before the end (streamed to them, or, for a whole
    #: reply, as far as its pacing had got): work the cancellation came too late to save.
    tokens_before_disconnect: int = 0
    #: Requests being answered right now.
    in_flight: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def estimate_tokens(text: str) -> int:
    """Tokens of a prompt, approximated as the pools do: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / 4)


def render_answer(answer: Hashable) -> str:
    """An answer as the reply states it: integral floats without ``.0``, tuples joined by commas."""
    if isinstance(answer, float) and math.isfinite(answer) and answer == int(answer):
        return str(int(answer))
    if isinstance(answer, tuple):
        return ", ".join(render_answer(a) for a in answer)
    return str(answer)


def _answer_sentence(answer: Hashable) -> list[str]:
    if answer is None:
        return _WORDS.findall(" I am not sure.")
    return _WORDS.findall(f" The answer is {render_answer(answer)}.")


def reply_pieces(sample: Sample) -> list[str]:
    """The reply replaying ``sample``, one piece per token: reasoning filler, then "The answer is X."

    The reply has the sample's token count (or just the answer sentence, when that is longer or the
    count is unknown), so pacing and ``usage`` follow the pool. An unparsable sample (answer
    ``None``) ends with "I am not sure." instead, which the default extractor does not parse.
    """
    sentence = _answer_sentence(sample.answer)
    filler_count = max(sample.tokens - len(sentence), 0)
    filler = [_FILLER[i % len(_FILLER)] for i in range(filler_count)]
    pieces = filler + sentence
    pieces[0] = pieces[0].lstrip()
    return pieces


def probe_pieces(answer: Hashable) -> list[str]:
    """The reply to a probe ("... the answer is"): just the answer and a period."""
    if answer is None:
        return _WORDS.findall(" unclear.")
    return _WORDS.findall(f" {render_answer(answer)}.")


def token_logprobs(sample: Sample, count: int) -> list[float] | None:
    """Per-token logprobs for a replayed sample: its total spread evenly, or ``None`` when the pool has none."""
    if sample.logprob is not None:
        total = sample.logprob
    elif sample.confidence is not None and sample.confidence > 0:
        total = math.log(sample.confidence) * max(sample.tokens, 1)
    else:
        return None
    return [total / max(sample.tokens, 1)] * count


def is_probe(text: str) -> bool:
    """Whether a prompt ends by asking for the answer ("... the answer is"): a Dynasor-style probe."""
    return bool(_PROBE_END.search(text.rstrip()))


class QuestionIndex:
    """Finds the pool question a prompt asks: the longest question text contained in it.

    An exact match is found in O(1); otherwise every question text is searched for (fast enough
    for pools of thousands), and the result is cached (at most ``cache_bytes`` of prompts). Several
    questions with the same text (Game of 24 under two prompts) are told apart by dataset when the
    request's ``model`` names one; otherwise the first in file order answers.
    """

    def __init__(self, questions: Iterable[Question], *, cache_bytes: int = 4 << 20) -> None:
        self.questions = [q for q in questions if q.text.strip()]
        self._exact: dict[str, list[Question]] = {}
        for q in self.questions:
            self._exact.setdefault(q.text.strip(), []).append(q)
        self._by_length = sorted(self._exact, key=len, reverse=True)
        # Prompts that are no question's exact text, and what they matched: bounded by bytes, so
        # clients sending large unmatched prompts cannot grow the server.
        self._cache: BytesLRU[str, str | None] = BytesLRU(cache_bytes)

    @property
    def duplicates(self) -> int:
        """How many question texts are shared by more than one question."""
        return sum(1 for group in self._exact.values() if len(group) > 1)

    def _text_in(self, prompt: str) -> str | None:
        key = prompt.strip()
        if key in self._exact:
            return key
        if key in self._cache:
            return self._cache.get(key)
        found = next((text for text in self._by_length if text in prompt), None)
        self._cache.put(key, found)
        return found

    def find(self, prompts: Sequence[str], model: str = "") -> Question | None:
        """The question asked by the last of ``prompts`` that contains one, preferring dataset ``model``."""
        for prompt in reversed(prompts):
            text = self._text_in(prompt)
            if text is not None:
                group = self._exact[text]
                return next((q for q in group if q.dataset == model), group[0])
        return None


@dataclass
class Reply:
    """One drawn sample and the pieces (tokens) that replay it."""

    sample: Sample
    pieces: list[str]
    finish_reason: Literal["stop", "length"]
    logprobs: list[float] | None


class Decks:
    """Each question's samples in a seeded random order, drawn without replacement.

    The order of question ``q`` depends only on ``seed`` and ``q.id``, not on which other questions
    were asked in between, so two clients asking the same questions see the same samples. When a
    deck runs out it is reshuffled (``exhaust="cycle"``) or further draws raise :class:`LookupError`
    (``exhaust="error"``).
    """

    def __init__(self, seed: int = 0, exhaust: Literal["cycle", "error"] = "cycle") -> None:
        if exhaust not in ("cycle", "error"):
            raise ValueError(f"exhaust must be 'cycle' or 'error', got {exhaust!r}")
        self.seed = seed
        self.exhaust = exhaust
        self._decks: dict[str, tuple[random.Random, list[Sample]]] = {}
        self._dealt: set[str] = set()

    def reset(self, seed: int | None = None) -> None:
        """Forget every deck; the next draws start new orders (from ``seed`` when given)."""
        if seed is not None:
            self.seed = seed
        self._decks.clear()
        self._dealt.clear()

    def draw(self, question: Question) -> Sample:
        """The next sample of ``question``'s deck."""
        entry = self._decks.get(question.id)
        if entry is None:
            entry = (random.Random(f"{self.seed}:{question.id}"), [])
            self._decks[question.id] = entry
        rng, deck = entry
        if not deck:
            if self.exhaust == "error" and question.id in self._dealt:
                raise LookupError(f"question {question.id!r} has no samples left ({len(question.samples)} were served)")
            deck.extend(question.samples)
            rng.shuffle(deck)
            deck.reverse()  # pop() from the end takes the shuffled order front to back
            self._dealt.add(question.id)
        return deck.pop()

    def reply(self, question: Question, max_tokens: int | None) -> Reply:
        """Draw one sample of ``question`` and the reply that replays it, cut at ``max_tokens``."""
        sample = self.draw(question)
        pieces = reply_pieces(sample)
        finish: Literal["stop", "length"] = "stop"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            finish = "length"
        return Reply(sample, pieces, finish, token_logprobs(sample, len(pieces)))
