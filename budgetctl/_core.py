"""The engine of every run: a sans-I/O state machine that takes events and says what to do next.

In the manner of h11 and wsproto, :class:`RunCore` does no I/O and reads no clock. A driver feeds
it events and carries out the actions it answers with:

* events in: :meth:`RunCore.start` (the run begins), :meth:`RunCore.launch` (a call was started),
  :meth:`RunCore.outcome` (a call gave an outcome, or a partial one of a stream),
  :meth:`RunCore.expired` (time has advanced to ``now``), :meth:`RunCore.cancel` (the calls in
  flight were cancelled);
* actions out: a stop reason (end the run now, cancel what is in flight), or
  :meth:`RunCore.fill` / :meth:`RunCore.room`: how many calls to launch now.

How many calls to have in flight is decided in one place, :meth:`RunCore.target_in_flight`, which
asks the run's :class:`LaunchPlanner` (default: the fixed ``concurrency``); the policy's
:meth:`~budgetctl.policies.StopPolicy.remaining_bound` and the budget then cap it
(:meth:`RunCore.room`). The async runtime (:mod:`budgetctl._runtime`), the live scheduler, the
offline simulator and the shared-budget simulation are drivers of this one class, the first two
with real samplers and anyio's clock, the others with replayed samples and a virtual clock; because
every decision is taken here, a simulated run and a live run on the same samples in the same order
decide the same things.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Hashable, Sequence
from dataclasses import fields, replace
from types import MappingProxyType
from typing import Protocol

from ._aggregate import Aggregator, MajorityVote, Tally
from ._budget import Budget
from ._errors import FatalSamplerError
from ._sample import Exhausted, Sample, validate_sample
from ._state import Result, RunState, StopReason
from .policies._base import PolicyError, StopPolicy

__all__ = ["RunCore", "LaunchPlanner", "check_run_args", "END_OF_STREAM"]

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


_UNBOUNDED = StopPolicy.remaining_bound

# Snapshots are built by field name, in a dict, and put in RunState's own field order here: no
# code depends on that order, and it costs less than a call with 23 keyword arguments (the
# simulator builds millions of snapshots). A missing field is a KeyError at the first snapshot.
_STATE = RunState
_new_state = tuple.__new__
_in_field_order = operator.itemgetter(*RunState._fields)

_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))


def _stamped(sample: Sample, latency: float) -> Sample:
    # ``replace(sample, latency=latency)`` without checking every field again: the sample checked
    # them when it was made, and the latency is the runtime's own. Every live sample passes here.
    new = object.__new__(Sample)
    for name in _SAMPLE_FIELDS:
        object.__setattr__(new, name, getattr(sample, name))
    object.__setattr__(new, "latency", latency)
    return new


class LaunchPlanner(Protocol):
    """How many calls a run wants in flight: the one decision a launch planner makes.

    :meth:`RunCore.target_in_flight` asks it whenever the engine may launch (after the start and
    after every outcome); the answer is clamped to ``1..concurrency`` and then capped by the
    policy's bound and the budget (:meth:`RunCore.room`), so a planner can only launch less than
    they allow. ``policy`` is the policy being judged (the simulator judges several on one run).
    :meth:`observe` is told of every outcome once the engine has recorded it (``core.state`` is
    the new snapshot): a planner learns the sampler's latency there.
    """

    def target_in_flight(self, core: RunCore, policy: StopPolicy) -> int: ...

    def observe(self, core: RunCore, latency: float, final: bool) -> None: ...


def describe_error(error: BaseException) -> str:
    """``"Type: message"`` of an exception, even one whose ``__str__`` raises."""
    name = type(error).__name__
    try:
        text = str(error)
    except Exception:  # a broken __str__ must not lose the sample, nor crash the run
        return f"{name}: <unprintable {name}>"
    return f"{name}: {text}" if text else name


class RunCore:
    """The state of one run, updated event by event, and the rules that decide what it does next.

    Times are the driver's clock (real or virtual); :meth:`start` sets the run's ``origin`` on it,
    and snapshots report ``elapsed = now - origin``. ``keep_samples=False`` keeps no list of the
    samples (``Result.samples`` is then empty): the simulator, which only reads snapshots, saves
    the memory and the copies. ``concurrency`` is the most calls in flight at once; ``planner``
    may choose fewer (:meth:`target_in_flight`).
    """

    __slots__ = (
        "budget",
        "policy",
        "max_failures",
        "deadline",
        "time_limit",
        "origin",
        "limit_at",
        "concurrency",
        "planner",
        "now",
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
        "wasted_tokens",
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
        concurrency: int = 1,
        planner: LaunchPlanner | None = None,
    ) -> None:
        self.budget = budget if budget is not None else Budget()
        self._keep_samples = keep_samples
        self.policy = policy
        self.max_failures = max_failures
        self.deadline = deadline
        limits = [t for t in (deadline, self.budget.seconds) if t is not None]
        #: Seconds after the start at which the run must end (deadline or time budget).
        self.time_limit: float | None = min(limits) if limits else None
        #: The driver's clock at the run's start (set by :meth:`start`).
        self.origin = 0.0
        #: The driver's clock at which the run must end (``inf``: never).
        self.limit_at = math.inf if self.time_limit is None else self.time_limit
        self.concurrency = concurrency
        self.planner = planner
        #: The driver's clock at the latest event.
        self.now = 0.0
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
        #: Tokens decoded by calls the run gave up on (cancelled, timed out), which no sample reports.
        self.wasted_tokens = 0
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

    # -- events --------------------------------------------------------------------------------------
    def start(self, now: float = 0.0) -> StopReason | None:
        """Event: the run begins at ``now`` (its origin on the driver's clock).

        Returns a reason to end it before any call (a budget that allows nothing), else ``None``.
        Drivers then report the time (:meth:`expired`), which ends a run whose deadline is 0.
        """
        self.origin = self.now = now
        self.limit_at = math.inf if self.time_limit is None else now + self.time_limit
        self._state = self.snapshot(now)
        reason = self.limit_reason()
        if reason is None and self.room() == 0:
            return "budget"
        return reason

    def launch(self) -> int:
        """Event: one sampler call was started; returns its index."""
        self.n_launched += 1
        self.n_in_flight += 1
        return self.n_launched - 1

    def expired(self, now: float) -> StopReason | None:
        """Event: time has advanced to ``now``. The reason to stop by the clock, if its limit has passed.

        A call's outcome that arrives at or after the limit is too late: drivers report the time
        first, and drop the outcome when this says stop (it counts as cancelled).
        """
        if now >= self.limit_at:
            return self.time_reason()
        self.now = now
        return None

    def outcome(self, outcome: object, latency: float, now: float, *, final: bool = True) -> StopReason | None:
        """Event: a call gave ``outcome``; record it and say whether the run stops (and why).

        ``final=False`` is a partial answer of a streaming call (the call is still in flight). The
        policy (or a settled aggregator) is asked first, then the limits; when the run may go on
        but nothing is in flight and nothing may be launched, the limits say why it ends (else
        ``budget``). The snapshot is :attr:`state`.
        """
        state = self.record(outcome, latency, now, final=final)
        if self.planner is not None:
            self.planner.observe(self, latency, final)
        reason = self.decide(state)
        if reason is None and self.n_in_flight == 0 and self.room() == 0:
            reason = self.limit_reason() or "budget"
        return reason

    def wasted(self, tokens: int) -> None:
        """Event: calls the run gave up on had decoded ``tokens`` tokens that no sample reports.

        Counted in ``wasted_tokens`` (``Result.wasted_tokens``), and charged to the tokens and
        dollars spent when the budget says so (``Budget(charge_wasted=True)``): a provider bills them.
        """
        if tokens <= 0:
            return
        self.wasted_tokens += tokens
        if self.budget.charge_wasted:
            self.tokens += tokens
            self.dollars += tokens * self.budget.price_per_token

    def charged(self, state: RunState, tokens: int) -> RunState:
        """``state`` as it would read had the run also given up calls that decoded ``tokens`` tokens.

        What :meth:`wasted` does to the spending, without changing the run: the simulator stops one
        policy with it on a trajectory that the other policies go on with.
        """
        if tokens <= 0 or not self.budget.charge_wasted:
            return state
        left = state.tokens_left
        return state._replace(
            tokens=state.tokens + tokens,
            dollars=state.dollars + tokens * self.budget.price_per_token,
            tokens_left=None if left is None else max(left - tokens, 0),
        )

    def cancel(self) -> int:
        """Event: the calls still in flight were cancelled; returns how many."""
        cancelled, self.n_in_flight = self.n_in_flight, 0
        return cancelled

    cancel_in_flight = cancel

    # -- actions -------------------------------------------------------------------------------------
    def target_in_flight(self, policy: StopPolicy | None = None) -> int:
        """How many calls the run wants in flight now: the planner's choice, else ``concurrency``.

        The single point where the fan-out is decided; always at least 1 and at most
        ``concurrency`` (an explicit concurrency is an upper bound for any planner).
        """
        planner = self.planner
        if planner is None:
            return self.concurrency
        wanted = planner.target_in_flight(self, self.policy if policy is None else policy)
        return 1 if wanted < 1 else wanted if wanted < self.concurrency else self.concurrency

    def room(self, policy: StopPolicy | None = None) -> int:
        """How many more calls may be launched now (``policy``: judged in place of the run's own).

        The target of :meth:`target_in_flight`, less the calls in flight, capped by what the
        policy says could still matter (its :meth:`~budgetctl.policies.StopPolicy.remaining_bound`
        counts the calls in flight: launched work, not just the samples back), by the samples the
        budget has left, and zero once a limit forbids launching. A policy that has not stopped
        always gets at least one call in flight, so a bound can delay launches, never end a run.
        """
        if not self.can_launch():  # one list of the limits for room, rooms and the drivers
            return 0
        in_flight = self.n_in_flight
        room = (self.concurrency if self.planner is None else self.target_in_flight(policy)) - in_flight
        if room <= 0:
            return 0
        if room > 1 or in_flight:  # one call with none in flight is always allowed: no bound to ask
            bound = (self.policy if policy is None else policy).remaining_bound(self._state)
            if bound is not None:
                room = min(room, (bound if bound > 1 else 1) - in_flight)
        samples = self.budget.samples
        if samples is not None and room > samples - self.n_launched:
            room = samples - self.n_launched
        return room if room > 0 else 0

    def rooms(self, policies: Sequence[StopPolicy]) -> list[int]:
        """:meth:`room` for each of ``policies`` in place of the run's own (the simulator judges several).

        The same rule, with what does not depend on the policy worked out once.
        """
        if self.planner is not None:
            return [self.room(policy) for policy in policies]
        n = len(policies)
        if not self.can_launch():
            return [0] * n
        in_flight = self.n_in_flight
        room = self.concurrency - in_flight
        samples = self.budget.samples
        if samples is not None and room > samples - self.n_launched:
            room = samples - self.n_launched
        if room <= 0:
            return [0] * n
        if room == 1 and not in_flight:
            return [1] * n
        state = self._state
        out = []
        for policy in policies:
            if type(policy).remaining_bound is _UNBOUNDED:  # the default: no bound, nothing to ask
                out.append(room)
                continue
            bound = policy.remaining_bound(state)
            if bound is None:
                out.append(room)
            else:
                cap = (bound if bound > 1 else 1) - in_flight
                out.append(room if room < cap else cap if cap > 0 else 0)
        return out

    def fill(self) -> int:
        """Action: count as launched, and return, the calls the driver must start now (:meth:`room`)."""
        room = self.room()
        if room:
            self.n_launched += room
            self.n_in_flight += room
        return room

    def can_launch(self) -> bool:
        """Whether the limits (budget, failures, an exhausted or fatally failed sampler) allow one more call now."""
        if self.exhausted or self.fatal or self._too_many_failures():
            return False
        budget = self.budget
        if budget.samples is not None and self.n_launched >= budget.samples:
            return False
        if budget.tokens is not None and self.tokens >= budget.tokens:
            return False
        return not (budget.dollars is not None and self.dollars >= budget.dollars)

    # -- recording ---------------------------------------------------------------------------------
    def record(self, outcome: object, latency: float, now: float, *, final: bool = True) -> RunState:
        """Record what one sampler call gave (samples, an exception, or garbage) and snapshot the run.

        Exceptions and invalid returns become failed samples carrying the error; nothing raised by a
        sampler escapes, nor anything a broken return value raises when looked at (its ``repr``, its
        answer's ``hash``). :class:`~budgetctl.Exhausted` marks the sampler exhausted. A streaming
        call reports each partial answer with ``final=False`` and ends with ``final=True``
        (``outcome`` may then be :data:`END_OF_STREAM`, which adds no sample).
        """
        if final:
            self.n_in_flight -= 1
        self.now = now
        if type(outcome) is Sample and outcome.latency is not None:  # the hot path: one stamped sample
            self._add(outcome)
        elif outcome is not END_OF_STREAM:
            try:
                samples = self._as_samples(outcome, latency)
            except Exception as error:  # a return value that fails when looked at is a failed sample
                samples = [Sample(error=f"sampler returned a broken value ({describe_error(error)})", latency=latency)]
            for sample in samples:
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
            return [Sample(error=describe_error(outcome), latency=latency)]
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
        tally = self.tally
        before = tally.best_key
        key = None
        if sample.error is None and sample.answer is not None:
            try:
                key = tally.add(sample)
            except Exception as error:  # an answer whose hash or comparison fails: a failed sample
                sample = Sample(
                    tokens=sample.tokens,
                    cost=sample.cost,
                    latency=sample.latency,
                    error=f"sample's answer cannot be counted ({describe_error(error)})",
                )
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

    # -- snapshots and decisions -------------------------------------------------------------------
    def snapshot(self, now: float) -> RunState:
        """A frozen :class:`RunState` of the run at ``now`` (the driver's clock)."""
        tally = self.tally
        budget = self.budget
        key = tally.best_key
        elapsed = now - self.origin
        time_limit = self.time_limit
        return _new_state(
            _STATE,
            _in_field_order(
                {
                    "n_samples": self.n_samples,
                    "n_failed": self.n_failed,
                    "n_in_flight": self.n_in_flight,
                    "tokens": self.tokens,
                    "dollars": self.dollars,
                    "elapsed": elapsed,
                    "time_left": None if time_limit is None else time_limit - elapsed,
                    "samples_left": None if budget.samples is None else max(budget.samples - self.n_launched, 0),
                    "tokens_left": None if budget.tokens is None else max(budget.tokens - self.tokens, 0),
                    "answer": None if key is None else tally.raw[key],
                    "confidence": tally.confidence,
                    "leader_votes": tally.leader_votes,
                    "runner_up_votes": tally.runner_up_votes,
                    "total_votes": tally.total_votes,
                    "n_abstained": self.n_abstained,
                    "n_distinct": len(tally.counts),
                    "leader_streak": self.leader_streak,
                    "answer_run": self.answer_run,
                    "first_tokens": self.first_tokens,
                    "leader_sample_confidence": None if key is None else tally.sample_confidence_of(key),
                    "leader_score": None if key is None else tally.score_of(key),
                    "settled": tally.settled,
                    "counts": MappingProxyType(tally.counts.copy()),
                }
            ),
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
        """Whether to stop after ``state``: the policy (or a settled aggregator) first, then the limits.

        A policy that raises is a bug in the policy, not a fault of the sampler: it is raised as a
        :class:`~budgetctl.policies.PolicyError` (the original as its cause).
        """
        if state.settled:
            return "policy"
        try:
            stop = self.policy(state)
        except Exception as error:
            raise PolicyError(f"the stop policy {_safe_repr(self.policy)} raised {describe_error(error)}") from error
        return "policy" if stop else self.limit_reason()

    def judge(self, policies: Sequence[StopPolicy], state: RunState) -> list[StopReason | None]:
        """What :meth:`decide` would say after ``state`` for each of ``policies`` in place of the run's own.

        The simulator judges several policies on one replayed trajectory with it: until a policy
        stops, its run is the same as every other's, so one trajectory serves them all.
        """
        if state.settled:
            return ["policy"] * len(policies)
        limit = self.limit_reason()
        try:
            return ["policy" if policy(state) else limit for policy in policies]
        except Exception as error:  # as decide() does: a policy's bug, named, with its cause
            culprit = next((p for p in policies if _raises(p, state)), policies[0])
            raise PolicyError(f"the stop policy {_safe_repr(culprit)} raised {describe_error(error)}") from error

    def time_reason(self, deadline: float | None = None) -> StopReason:
        """The reason for a stop by the clock: ``budget`` when the time budget came first, else ``deadline``."""
        if deadline is None:
            deadline = self.deadline
        seconds = self.budget.seconds
        if seconds is not None and (deadline is None or seconds < deadline):
            return "budget"
        return "deadline"

    def result(self, reason: StopReason, now: float, *, fallback: object = None, n_cancelled: int = 0) -> Result:
        """The :class:`Result` of the run, stopped for ``reason`` at ``now`` (the driver's clock)."""
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
            elapsed=state.elapsed,
            samples=tuple(self.samples),
            state=state,
            wasted_tokens=self.wasted_tokens,
        )

    def finish(self, reason: StopReason, now: float, *, fallback: object = None) -> Result:
        """Event and result at once: the run ends for ``reason`` at ``now``; calls in flight are cancelled."""
        return self.result(reason, now, fallback=fallback, n_cancelled=self.cancel())


def _raises(policy: StopPolicy, state: RunState) -> bool:
    try:
        policy(state)
    except Exception:
        return True
    return False


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
