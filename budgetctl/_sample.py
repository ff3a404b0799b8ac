"""One unit of compute: what a sampler returns, and how a bad return is turned into a recorded failure."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

__all__ = ["Sample", "Exhausted", "validate_sample"]


@dataclass(frozen=True, slots=True)
class Sample:
    """One answer drawn from a model, with what it cost.

    A sampler returns one of these (or a list of them, for a batched call). ``answer=None`` means the
    output could not be parsed: the sample still costs its tokens but abstains from every vote.
    Fields are checked on construction (``ValueError`` naming the field): a sampler that builds a bad
    sample fails, and its failure is recorded by the run like any other.
    """

    #: The extracted final answer; ``None`` abstains.
    answer: Hashable = None
    #: Generated tokens this sample cost (output tokens; add input tokens if you pay for them).
    tokens: int = 0
    #: Seconds the call took; filled in by the runtime when left at ``None``.
    latency: float | None = None
    #: Total log-probability of the generated text, when the server returns it.
    logprob: float | None = None
    #: The sample's own confidence in its answer, in [0, 1] (e.g. from logprobs); overrides ``logprob``.
    confidence: float | None = None
    #: A verifier's or reward model's score of this answer (higher is better).
    score: float | None = None
    #: Dollars this sample cost, when the sampler knows better than ``Budget.price_per_token``.
    cost: float | None = None
    #: Why the sample failed (``None`` for a good sample). Failed samples never vote.
    error: str | None = None

    def __post_init__(self) -> None:
        problem = _sample_problem(self)
        if problem is not None:
            raise ValueError(f"Sample: {problem}")

    @property
    def ok(self) -> bool:
        """True when the sample succeeded (it may still abstain with ``answer=None``)."""
        return self.error is None

    def sample_confidence(self) -> float | None:
        """The per-sample confidence used by confidence-weighted votes.

        ``confidence`` when given; otherwise the geometric-mean token probability
        ``exp(logprob / tokens)``; otherwise ``None``.
        """
        if self.confidence is not None:
            return self.confidence
        if self.logprob is not None:
            return math.exp(self.logprob / max(self.tokens, 1))
        return None


class Exhausted(Exception):
    """Raised by a sampler that has nothing more to give (a replayed pool ran out).

    The run stops launching new samples and ends with ``stop_reason == "exhausted"`` once the samples
    already in flight are back.
    """


def _finite(name: str, value: object, *, low: float | None = None, high: float | None = None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{name} must be finite, got {value!r}"
    if low is not None and value < low:
        return f"{name} must be >= {low}, got {value!r}"
    if high is not None and value > high:
        return f"{name} must be <= {high}, got {value!r}"
    return None


def _sample_problem(value: Sample) -> str | None:
    tokens = value.tokens
    if type(tokens) is not int and (isinstance(tokens, bool) or not isinstance(tokens, int)):
        return f"tokens must be an int, got {tokens!r}"
    if tokens < 0:
        return f"tokens must be >= 0, got {tokens}"
    if value.latency is not None:
        problem = _finite("latency", value.latency, low=0.0)
        if problem:
            return problem
    if value.logprob is not None:
        problem = _finite("logprob", value.logprob, high=0.0)
        if problem:
            return problem
    if value.confidence is not None:
        problem = _finite("confidence", value.confidence, low=0.0, high=1.0)
        if problem:
            return problem
    if value.score is not None:
        problem = _finite("score", value.score)
        if problem:
            return problem
    if value.cost is not None:
        problem = _finite("cost", value.cost, low=0.0)
        if problem:
            return problem
    answer = value.answer
    if type(answer) is float and answer != answer:
        return "answer is NaN"
    try:
        hash(answer)
    except TypeError:
        return f"answer must be hashable, got {type(answer).__name__}"
    return None


def validate_sample(value: Any) -> str | None:
    """Say what is wrong with a sampler's return value, or ``None`` when it is a usable :class:`Sample`.

    A :class:`Sample` checks its fields when it is made, so only other objects can be wrong here.
    """
    if type(value) is Sample:
        return None
    if not isinstance(value, Sample):
        return f"sampler returned {type(value).__name__} {value!r:.80}, not a budgetctl.Sample"
    return _sample_problem(value)
