"""Frozen snapshots of a run: what policies read (`RunState`) and what callers get back (`Result`)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ._sample import Sample

__all__ = ["RunState", "Result", "StopReason", "STOP_REASONS"]

#: Why a run ended.
#:
#: ``policy``: the stop policy (or an aggregator that is certain) said stop; ``deadline``: the
#: deadline came; ``budget``: a cap of the :class:`~budgetctl.Budget` was reached; ``exhausted``: the
#: sampler raised :class:`~budgetctl.Exhausted`; ``error``: too many samples failed (or the policy
#: raised, see :class:`~budgetctl.policies.PolicyError`); ``closed``: the
#: :class:`~budgetctl.Scheduler` serving the request was closed while it ran.
StopReason = Literal["policy", "deadline", "budget", "exhausted", "error", "closed"]
STOP_REASONS: tuple[StopReason, ...] = ("policy", "deadline", "budget", "exhausted", "error", "closed")


class RunState(NamedTuple):
    """Everything a stop policy may look at, frozen at one moment of a run.

    A new snapshot is taken after every sample that comes back; policies are pure functions of it.
    It is a named tuple because the simulator builds millions of them: construction is the hot path.
    """

    #: Samples that came back without error (abstaining ones included).
    n_samples: int
    #: Samples that failed (raised, timed out, or returned garbage).
    n_failed: int
    #: Sampler calls still running.
    n_in_flight: int
    #: Tokens spent so far (failed samples count what they reported, usually 0).
    tokens: int
    #: Dollars spent so far.
    dollars: float
    #: Seconds since the run started.
    elapsed: float
    #: Seconds until the deadline or the time budget, whichever is first; ``None`` without either.
    time_left: float | None
    #: Samples the budget still allows to launch; ``None`` when unlimited.
    samples_left: int | None
    #: Tokens the budget still allows; ``None`` when unlimited.
    tokens_left: int | None
    #: The current best answer (as a sampler returned it), ``None`` before any vote.
    answer: Hashable
    #: The aggregator's confidence in ``answer``, in [0, 1].
    confidence: float
    #: Vote weight of the leading answer.
    leader_votes: float
    #: Vote weight of the strongest other answer.
    runner_up_votes: float
    #: Vote weight of all answers (abstentions excluded).
    total_votes: float
    #: Successful samples whose answer was ``None``.
    n_abstained: int
    #: How many distinct (normalised) answers have been seen.
    n_distinct: int
    #: Samples in a row, ending now, after which the leader was the same.
    leader_streak: int
    #: Successful samples in a row, ending now, that gave the same (normalised, non-None) answer.
    answer_run: int
    #: Tokens of the first successful sample (a prior on the question's difficulty); ``None`` before.
    first_tokens: int | None
    #: Mean per-sample confidence of the samples voting for the leader, when samples carry one.
    leader_sample_confidence: float | None
    #: Highest verifier score among samples voting for the leader, when samples carry one.
    leader_score: float | None
    #: True when the aggregator is certain (e.g. a verifier accepted an answer).
    settled: bool
    #: Vote weight per normalised answer (read-only view).
    counts: Mapping[Hashable, float]

    @property
    def n_done(self) -> int:
        """Samples back so far, failed ones included."""
        return self.n_samples + self.n_failed

    @property
    def margin(self) -> float:
        """Leader's vote share minus the runner-up's (0 before any vote)."""
        if self.total_votes <= 0:
            return 0.0
        return (self.leader_votes - self.runner_up_votes) / self.total_votes

    @property
    def leader_share(self) -> float:
        """Leader's share of all votes (0 before any vote)."""
        return self.leader_votes / self.total_votes if self.total_votes > 0 else 0.0

    def entropy(self) -> float:
        """Shannon entropy (nats) of the vote distribution; 0 before any vote."""
        total = self.total_votes
        if total <= 0:
            return 0.0
        return -sum((c / total) * math.log(c / total) for c in self.counts.values() if c > 0)


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of a run: the best answer it had when it stopped, and what it cost."""

    #: The best answer (as sampled), or the caller's ``fallback`` when no sample voted.
    answer: Any
    #: The aggregator's confidence in ``answer`` (0 when it is the fallback).
    confidence: float
    #: Why the run ended.
    stop_reason: StopReason
    #: Successful samples.
    n_samples: int
    #: Failed samples.
    n_failed: int
    #: Samples cancelled in flight when the run stopped.
    n_cancelled: int
    #: Tokens spent by the samples that came back.
    tokens: int
    #: Dollars spent by the samples that came back.
    dollars: float
    #: Seconds from start to stop.
    elapsed: float
    #: Every sample that came back, in arrival order; failures carry ``error``.
    samples: tuple[Sample, ...]
    #: The last snapshot policies saw.
    state: RunState
    #: Tokens decoded by cancelled calls (at the stop, or timed out) that ``tokens`` does not count:
    #: tokens a stream decoded after its last partial answer, or a whole call's, estimated from how
    #: long it ran and the measured per-token rate. Providers bill them; ``Budget(charge_wasted=True)``
    #: adds them to ``tokens`` and ``dollars`` too.
    wasted_tokens: int = 0

    @property
    def errors(self) -> tuple[str, ...]:
        """The error messages of the failed samples, in arrival order."""
        return tuple(s.error for s in self.samples if s.error is not None)
