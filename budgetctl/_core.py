"""The synchronous heart of a run: bookkeeping, budget checks and stop decisions, with no I/O and no clock.

The async runtime (:mod:`budgetctl._runtime`) and the offline simulator both drive this one class,
the first with real samplers and anyio's clock, the second with replayed samples and a virtual
clock. Because every decision is taken here, a simulated run and a live run on the same samples in
the same order decide the same things.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import fields, replace
from types import MappingProxyType

from ._aggregate import Aggregator, MajorityVote, Tally
from ._budget import Budget
from ._errors import FatalSamplerError
from ._sample import Exhausted, Sample, validate_sample
from ._state import Result, RunState, StopReason
from .policies._base import StopPolicy

__all__ = ["RunCore", "check_run_args", "END_OF_STREAM"]

#: What a streaming sampler call reports when its stream ends without a last item.
END_OF_STREAM = object()


def check_run_args(
    *, deadline: float | None, concurrency: int, max_failures: int | None, sample_timeout: float | None
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the bad argument, before any work starts."""
    for name, value in (("deadline", deadline), ("sample_timeout", sample_timeout)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
        if math.isnan(value) or value < 0:
            raise ValueError(f"{name} cannot be negative or NaN, got {value!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(f"concurrency must be an int, got {concurrency!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    if max_failures is not None:
        if isinstance(max_failures, bool) or not isinstance(max_failures, int):
            raise TypeError(f"max_failures must be an int or None, got {max_failures!r}")
        if max_failures < 0:
            raise ValueError(f"max_failures cannot be negative, got {max_failures!r}")


_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))


def _stamped(sample: Sample, latency: float) -> Sample:
    # ``replace(sample, latency=latency)`` without checking every field again: the sample checked
    # them when it was made, and the latency is the runtime's own. Every live sample passes here.
    new = object.__new__(Sample)
    for name in _SAMPLE_FIELDS:
        object.__setattr__(new, name, getattr(sample, name))
    object.__setattr__(new, "latency", latency)
    return new


class RunCore:
    """The state of one run, updated sample by sample, and the rules that stop it.

    Times are seconds since the run started, given by the caller (real or virtual clock).
    ``keep_samples=False`` keeps no list of the samples (``Result.samples`` is then empty): the
    simulator, which only reads snapshots, saves the memory and the copies.
    """

    __slots__ = (
        "budget",
        "policy",
        "max_failures",
        "time_limit",
        "tally",
        "samples",
        "n_samples",
        "n_failed",
        "n_in_flight",
        "n_launched",
        "n_abstained",
        "tokens",
        "dollars",
        "leader_streak",
        "answer_run",
        "first_tokens",
        "exhausted",
        "fatal",
        "_last_key",
        "_state",
        "_keep_samples",
    )

    def __init__(
        self,
        *,
        policy: StopPolicy,
        aggregator: Aggregator | None = None,
        budget: Budget | None = None,
        deadline: float | None = None,
        max_failures: int | None = None,
        keep_samples: bool = True,
    ) -> None:
        self.budget = budget if budget is not None else Budget()
        self._keep_samples = keep_samples
        self.policy = policy
        self.max_failures = max_failures
        limits = [t for t in (deadline, self.budget.seconds) if t is not None]
        #: Seconds after the start at which the run must end (deadline or time budget).
        self.time_limit: float | None = min(limits) if limits else None
        self.tally: Tally = (aggregator if aggregator is not None else MajorityVote()).start()
        self.samples: list[Sample] = []
        self.n_samples = 0
        self.n_failed = 0
        self.n_in_flight = 0
        self.n_launched = 0
        self.n_abstained = 0
        self.tokens = 0
        self.dollars = 0.0
        self.leader_streak = 0
        self.answer_run = 0
        self.first_tokens: int | None = None
        self.exhausted = False
        #: A sampler raised :class:`~budgetctl.FatalSamplerError`: launch nothing more.
        self.fatal = False
        self._last_key: Hashable = None
        self._state = self.snapshot(0.0)

    def copy(self) -> RunCore:
        """An independent copy of the run so far (the simulator forks a run where replayed orders diverge)."""
        new = object.__new__(RunCore)
        for name in RunCore.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        new.tally = self.tally.copy()
        new.samples = self.samples.copy()
        return new

    # -- launching ---------------------------------------------------------------------------------
    def can_launch(self) -> bool:
        """Whether the budget (and the sampler) allow one more sampler call now."""
        if self.exhausted or self.fatal or self._too_many_failures():
            return False
        budget = self.budget
        if budget.samples is not None and self.n_launched >= budget.samples:
            return False
        if budget.tokens is not None and self.tokens >= budget.tokens:
            return False
        return not (budget.dollars is not None and self.dollars >= budget.dollars)

    def launch(self) -> int:
        """Count one sampler call as started; returns its index."""
        self.n_launched += 1
        self.n_in_flight += 1
        return self.n_launched - 1

    # -- recording ---------------------------------------------------------------------------------
    def record(self, outcome: object, latency: float, now: float, *, final: bool = True) -> RunState:
        """Record what one sampler call gave (samples, an exception, or garbage) and snapshot the run.

        Exceptions and invalid returns become failed samples carrying the error; nothing raised by a
        sampler escapes. :class:`~budgetctl.Exhausted` marks the sampler exhausted. A streaming call
        reports each partial answer with ``final=False`` and ends with ``final=True`` (``outcome``
        may then be :data:`END_OF_STREAM`, which adds no sample).
        """
        if final:
            self.n_in_flight -= 1
        if type(outcome) is Sample and outcome.latency is not None:  # the hot path: one stamped sample
            self._add(outcome)
        elif outcome is not END_OF_STREAM:
            for sample in self._as_samples(outcome, latency):
                self._add(sample)
        self._state = self.snapshot(now)
        return self._state

    def _as_samples(self, outcome: object, latency: float) -> list[Sample]:
        if type(outcome) is Sample:  # the common case first: one sample
            batch: list[object] = [outcome]
        elif isinstance(outcome, Exhausted):
            self.exhausted = True
            return []
        elif isinstance(outcome, BaseException):
            self.fatal = self.fatal or isinstance(outcome, FatalSamplerError)
            message = f"{type(outcome).__name__}: {outcome}" if str(outcome) else type(outcome).__name__
            return [Sample(error=message, latency=latency)]
        elif isinstance(outcome, list | tuple):
            batch = list(outcome)
            if not batch:
                return [Sample(error="sampler returned an empty batch", latency=latency)]
        else:
            batch = [outcome]
        samples = []
        for item in batch:
            problem = validate_sample(item)
            if problem is not None or not isinstance(item, Sample):
                samples.append(Sample(error=problem, latency=latency))
            elif item.latency is None:
                samples.append(_stamped(item, latency) if type(item) is Sample else replace(item, latency=latency))
            else:
                samples.append(item)
        return samples

    def _add(self, sample: Sample) -> None:
        if self._keep_samples:
            self.samples.append(sample)
        self.tokens += sample.tokens
        self.dollars += sample.cost if sample.cost is not None else sample.tokens * self.budget.price_per_token
        if sample.error is not None:
            self.n_failed += 1
            return
        self.n_samples += 1
        if self.first_tokens is None:
            self.first_tokens = sample.tokens
        tally = self.tally
        before = tally.best_key
        key = tally.add(sample) if sample.answer is not None else None
        if key is None:
            self.n_abstained += 1
            self.answer_run = 0
        else:
            self.answer_run = self.answer_run + 1 if key == self._last_key and self.answer_run else 1
        self._last_key = key
        after = tally.best_key
        if after is None:
            self.leader_streak = 0
        elif after == before:
            self.leader_streak += 1
        else:
            self.leader_streak = 1

    def cancel_in_flight(self) -> int:
        """Forget the calls still in flight (the runtime cancelled them); returns how many."""
        cancelled, self.n_in_flight = self.n_in_flight, 0
        return cancelled

    # -- snapshots and decisions -------------------------------------------------------------------
    def snapshot(self, now: float) -> RunState:
        """A frozen :class:`RunState` of the run at ``now`` seconds after its start."""
        tally = self.tally
        budget = self.budget
        key = tally.best_key
        time_limit = self.time_limit
        return RunState(
            self.n_samples,
            self.n_failed,
            self.n_in_flight,
            self.tokens,
            self.dollars,
            now,
            None if time_limit is None else time_limit - now,
            None if budget.samples is None else max(budget.samples - self.n_launched, 0),
            None if budget.tokens is None else max(budget.tokens - self.tokens, 0),
            None if key is None else tally.raw[key],
            tally.confidence,
            tally.leader_votes,
            tally.runner_up_votes,
            tally.total_votes,
            self.n_abstained,
            len(tally.counts),
            self.leader_streak,
            self.answer_run,
            self.first_tokens,
            None if key is None else tally.sample_confidence_of(key),
            None if key is None else tally.score_of(key),
            tally.settled,
            MappingProxyType(tally.counts.copy()),
        )

    @property
    def state(self) -> RunState:
        """The latest snapshot."""
        return self._state

    def _too_many_failures(self) -> bool:
        return self.max_failures is not None and self.n_failed > self.max_failures

    def limit_reason(self) -> StopReason | None:
        """A reason to stop that no policy can overrule: failures, a spent budget, an exhausted sampler."""
        if self.fatal or (self.max_failures is not None and self.n_failed > self.max_failures):
            return "error"
        budget = self.budget
        if budget.tokens is not None and self.tokens >= budget.tokens:
            return "budget"
        if budget.dollars is not None and self.dollars >= budget.dollars:
            return "budget"
        if self.n_in_flight == 0:
            if self.exhausted:
                return "exhausted"
            if budget.samples is not None and self.n_launched >= budget.samples:
                return "budget"
        return None

    def decide(self, state: RunState) -> StopReason | None:
        """Whether to stop after ``state``: the policy (or a settled aggregator) first, then the limits."""
        return self.judge((self.policy,), state)[0]

    def judge(self, policies: Sequence[StopPolicy], state: RunState) -> list[StopReason | None]:
        """What :meth:`decide` would say after ``state`` for each of ``policies`` in place of the run's own.

        The simulator judges several policies on one replayed trajectory with it: until a policy
        stops, its run is the same as every other's, so one trajectory serves them all.
        """
        if state.settled:
            return ["policy"] * len(policies)
        limit = self.limit_reason()
        return ["policy" if policy(state) else limit for policy in policies]

    def time_reason(self, deadline: float | None) -> StopReason:
        """The reason for a stop by the clock: ``budget`` when the time budget came first, else ``deadline``."""
        seconds = self.budget.seconds
        if seconds is not None and (deadline is None or seconds < deadline):
            return "budget"
        return "deadline"

    def result(self, reason: StopReason, now: float, *, fallback: object = None, n_cancelled: int = 0) -> Result:
        """The :class:`Result` of the run, stopped for ``reason`` at ``now``."""
        state = self.snapshot(now)
        voted = self.tally.best_key is not None
        return Result(
            answer=state.answer if voted else fallback,
            confidence=state.confidence if voted else 0.0,
            stop_reason=reason,
            n_samples=self.n_samples,
            n_failed=self.n_failed,
            n_cancelled=n_cancelled,
            tokens=self.tokens,
            dollars=self.dollars,
            elapsed=now,
            samples=tuple(self.samples),
            state=state,
        )
