"""Launch planning: how many sampler calls to keep in flight, re-planned at every arrival. No I/O, no clock.

Three parts, each a pure function of what a run has seen:

* :class:`LatencyEstimate`, an online estimate of this sampler's timing: time to the first token and
  seconds per token (a line fitted through every ``(age, tokens so far)`` point a call showed: its
  streamed partial answers and its end), and the mean tokens of a finished call, exponentially
  weighted so it follows a server that speeds up or slows down, with a prior before the first arrival;
* :func:`expected_need`, the expected number of further successful samples a stop policy still needs,
  from the vote posterior (Adaptive-Consistency, ESC, ``Stable``), exactly (``MaxSamples``), from a
  policy's own ``expected_need(state)`` method (a learned policy may predict it), or a vote-based
  default for any other policy;
* :func:`plan_in_flight`, the number of calls to have in flight now, from the time left, the latency
  estimate and the expected need: about the need plus one in flight (each arrival re-plans, so
  there are no waves), everything that could still help when the deadline allows only one more
  round, never more than an explicit cap or the policy's bound on launched work. One setting,
  ``speed`` in [0, 1], moves it from the cheapest plan (one call at a time) to the fastest (every
  useful call at once).

:class:`Planner` is the engine's :class:`~budgetctl._core.LaunchPlanner` for ``concurrency="auto"``;
:class:`Flights` is the drivers' record of the calls in flight (launch times, what each showed),
which feeds the estimate and counts the tokens cancelled calls had decoded. The live run and the
simulator feed the same numbers to the same functions, so a simulated run plans what a live run
plans.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ._sample import Sample
from ._state import RunState
from .policies._base import AllOf, AnyOf, StopPolicy
from .policies._posterior import prob_leader_beta
from .policies._rules import ESC, AdaptiveConsistency, MaxSamples, MaxTokens, Stable

if TYPE_CHECKING:
    from ._core import RunCore

__all__ = [
    "Auto",
    "Concurrency",
    "Flights",
    "LatencyEstimate",
    "Planner",
    "SPEEDS",
    "default_need",
    "expected_need",
    "need_function",
    "parse_concurrency",
    "plan_in_flight",
]

#: The engine's ``concurrency`` when no cap is set (its plan is clamped to it).
_NO_CAP = 1 << 30

#: Named settings of :attr:`Auto.speed`, cheapest to fastest.
SPEEDS: Mapping[str, float] = {"cheapest": 0.0, "cheap": 0.25, "balanced": 0.5, "fast": 0.75, "fastest": 1.0}


def _number(owner: str, name: str, value: object, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if not (low <= value <= high) or math.isnan(value):
        raise ValueError(f"{owner}: {name} must be in [{low:g}, {high:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Auto:
    """``concurrency=Auto(...)``: plan the calls in flight at every arrival (``concurrency="auto"`` is ``Auto()``).

    ``speed`` moves the plan from the cheapest (0: one call at a time, unless the deadline needs
    more) through the balanced default (0.5: the expected need plus one in flight) to the fastest
    (1: every call that could still change the answer, at once). ``max_in_flight`` is an upper
    bound, like an explicit ``concurrency=c``. ``prior_latency`` is the seconds one call is assumed
    to take before the first one has come back; ``horizon`` the further samples assumed able to
    help when neither the policy nor the budget bounds them.
    """

    speed: float = 0.5
    max_in_flight: int | None = None
    prior_latency: float = 1.0
    horizon: int = 32

    def __post_init__(self) -> None:
        _number("Auto", "speed", self.speed, low=0.0, high=1.0)
        _number("Auto", "prior_latency", self.prior_latency, low=0.0)
        if self.prior_latency <= 0 or math.isinf(self.prior_latency):
            raise ValueError(f"Auto: prior_latency must be a positive finite number, got {self.prior_latency!r}")
        for name in ("max_in_flight", "horizon"):
            value = getattr(self, name)
            if value is None and name == "max_in_flight":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Auto: {name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"Auto: {name} must be >= 1, got {value!r}")

    @property
    def cap(self) -> int:
        """The explicit upper bound the engine clamps the plan to (``max_in_flight``, else none in effect)."""
        return self.max_in_flight if self.max_in_flight is not None else _NO_CAP

    def __str__(self) -> str:
        named = next((k for k, v in SPEEDS.items() if v == self.speed), None)
        text = "auto" if self.speed == 0.5 else f"auto:{named or f'{self.speed:g}'}"
        return text if self.max_in_flight is None else f"{text},max={self.max_in_flight}"


#: What ``concurrency=`` accepts: calls in flight at most (an int), or a plan (:class:`Auto`, "auto", ...).
Concurrency = int | str | Auto


def parse_concurrency(value: object, *, name: str = "concurrency") -> int | Auto:
    """``value`` as an int >= 1 or an :class:`Auto`; raise a one-line error naming ``name`` otherwise.

    Strings: ``"auto"``, a named speed (``"cheapest"``, ``"cheap"``, ``"balanced"``, ``"fast"``,
    ``"fastest"``), ``"auto:0.8"`` or ``"auto:fast"`` (a speed), optionally with ``",max=8"``; or
    digits (an int).
    """
    if isinstance(value, Auto):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 1 or 'auto', got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an int >= 1 or 'auto', got {value!r}")
    text = value.strip().lower()
    if text.isdigit():
        return parse_concurrency(int(text), name=name)
    head, _, rest = text.partition(",")
    cap: int | None = None
    if rest:
        key, _, number = rest.partition("=")
        if key.strip() != "max" or not number.strip().isdigit() or int(number) < 1:
            raise ValueError(f"{name}: expected ',max=N' with N >= 1 after the speed, got {value!r}")
        cap = int(number)
    speed_text = head[len("auto:") :] if head.startswith("auto:") else ("" if head == "auto" else head)
    if speed_text == "":
        speed = 0.5
    elif speed_text in SPEEDS:
        speed = SPEEDS[speed_text]
    else:
        try:
            speed = float(speed_text)
        except ValueError:
            raise ValueError(
                f"{name} must be an int >= 1, 'auto', 'auto:SPEED' (0..1 or one of {', '.join(SPEEDS)}), got {value!r}"
            ) from None
        if not 0.0 <= speed <= 1.0:
            raise ValueError(f"{name}: the speed must be in [0, 1], got {value!r}")
    return Auto(speed=speed, max_in_flight=cap)


# -- (a) latency ----------------------------------------------------------------------------------------


class LatencyEstimate:
    """Online estimate of one sampler's timing, from the calls of a run (or of many runs, when shared).

    Every point ``(age, tokens)`` a call shows (a streamed partial answer ``age`` seconds after the
    call started with ``tokens`` decoded so far, or its end) lies on ``age = ttft + tokens * per_token``;
    the line is fitted by exponentially weighted least squares (``half_life`` points), falling back to
    ``ttft = 0`` and the mean seconds per token while the points cannot separate the two. Finished
    calls also give the mean tokens and seconds of a call. Before the first arrival a call is
    assumed to take ``prior_latency`` seconds; a straggler counts at most four times the mean.
    Observed times are rounded to the microsecond, so a simulated run and a live one on a mock clock
    agree to the last bit.
    """

    __slots__ = ("prior_latency", "_decay", "_w", "_t", "_a", "_tt", "_ta", "_calls", "_call_tokens", "_call_seconds")

    def __init__(self, *, prior_latency: float = 1.0, half_life: float = 16.0) -> None:
        _number("LatencyEstimate", "prior_latency", prior_latency, low=0.0)
        _number("LatencyEstimate", "half_life", half_life, low=1.0)
        self.prior_latency = float(prior_latency)
        self._decay = 0.5 ** (1.0 / half_life)
        self._w = self._t = self._a = self._tt = self._ta = 0.0
        self._calls = 0.0  # weight of finished calls
        self._call_tokens = 0.0
        self._call_seconds = 0.0

    def copy(self) -> LatencyEstimate:
        """An independent copy (the simulator forks runs)."""
        new = object.__new__(LatencyEstimate)
        for name in LatencyEstimate.__slots__:
            object.__setattr__(new, name, getattr(self, name))
        return new

    def observe_point(self, age: float, tokens: int) -> None:
        """A call showed ``tokens`` decoded ``age`` seconds after it started (a partial answer or its end)."""
        age = round(max(age, 0.0), 6)
        d = self._decay
        self._w = self._w * d + 1.0
        self._t = self._t * d + tokens
        self._a = self._a * d + age
        self._tt = self._tt * d + tokens * tokens
        self._ta = self._ta * d + tokens * age

    def observe_call(self, latency: float, tokens: int) -> None:
        """A call ended after ``latency`` seconds having decoded ``tokens`` in all.

        Robust to a straggler: once three calls are in, a call's seconds count at most four times
        the current mean (a hung connection must not make every later plan think calls are slow).
        """
        if self._calls >= 3.0:
            latency = min(latency, 4.0 * self._call_seconds / self._calls)
        self.observe_point(latency, tokens)
        d = self._decay
        self._calls = self._calls * d + 1.0
        self._call_tokens = self._call_tokens * d + tokens
        self._call_seconds = self._call_seconds * d + round(max(latency, 0.0), 6)

    @property
    def n_calls(self) -> float:
        """Weight of the finished calls seen (0 before the first)."""
        return self._calls

    def _line(self) -> tuple[float, float] | None:
        # (ttft, per_token) or None before any point.
        w = self._w
        if w <= 0:
            return None
        mean_t, mean_a = self._t / w, self._a / w
        var_t = self._tt / w - mean_t * mean_t
        if var_t > 1e-9 * max(mean_t * mean_t, 1.0):
            slope = (self._ta / w - mean_t * mean_a) / var_t
            intercept = mean_a - slope * mean_t
            if slope > 0 and intercept >= 0:
                return intercept, slope
        if mean_t > 0:
            return 0.0, mean_a / mean_t
        return mean_a, 0.0

    @property
    def ttft(self) -> float:
        """Seconds to the first token (the prior latency before any point)."""
        line = self._line()
        return self.prior_latency if line is None else line[0]

    @property
    def per_token(self) -> float | None:
        """Seconds per decoded token; ``None`` before any point with tokens."""
        line = self._line()
        return None if line is None or line[1] <= 0 else line[1]

    @property
    def mean_tokens(self) -> float | None:
        """Mean tokens of a finished call; ``None`` before the first."""
        return self._call_tokens / self._calls if self._calls > 0 else None

    @property
    def call_seconds(self) -> float:
        """Expected seconds of one new call: the weighted mean of finished calls, else the prior."""
        return self._call_seconds / self._calls if self._calls > 0 else self.prior_latency

    def remaining(self, age: float) -> float:
        """Expected seconds until a call that started ``age`` seconds ago ends (0 once overdue)."""
        return max(self.call_seconds - age, 0.0)

    def tokens_after(self, seconds: float) -> int:
        """Tokens a call has decoded ``seconds`` after it started (or after its last partial answer, ``ttft=0``)."""
        line = self._line()
        if line is None or line[1] <= 0:
            return 0
        ttft, per_token = line
        decoded = max(seconds - ttft, 0.0) / per_token
        most = self.mean_tokens
        return int(min(decoded, 4.0 * most) if most is not None else decoded)

    def tokens_since(self, seconds: float) -> int:
        """Tokens decoded in ``seconds`` of streaming (no time to first token: the stream had started)."""
        per_token = self.per_token
        return 0 if per_token is None else int(max(seconds, 0.0) / per_token)


# -- (b) expected need ----------------------------------------------------------------------------------

#: Prior on the share of votes the eventual leader gets (pseudo-counts), before and beside the votes seen.
_PRIOR_SHARE = 0.8
_PRIOR_WEIGHT = 2.0


def _shares(state: RunState) -> tuple[float, float]:
    """Posterior-predictive chance that the next vote goes to the leader, and to the runner-up."""
    total = state.total_votes
    leader = (state.leader_votes + _PRIOR_WEIGHT * _PRIOR_SHARE) / (total + _PRIOR_WEIGHT)
    runner = (state.runner_up_votes + _PRIOR_WEIGHT * (1.0 - _PRIOR_SHARE) / 2.0) / (total + _PRIOR_WEIGHT)
    answered = 1.0 - state.n_abstained / state.n_samples if state.n_samples else 1.0
    return leader * answered, runner * answered


@lru_cache(maxsize=65536)
def _beta_need(leader: float, runner: float, q_leader: float, q_runner: float, threshold: float, horizon: int) -> int:
    # The smallest k whose expected votes pass the Beta criterion (the plug-in path of the posterior).
    for k in range(horizon + 1):
        a, b = leader + k * q_leader, runner + k * q_runner
        if prob_leader_beta(max(a, b), min(a, b)) >= threshold:
            return k
    return horizon


def _ac_need(policy: AdaptiveConsistency, state: RunState, horizon: int) -> float:
    q_leader, q_runner = _shares(state)
    # Rounded keys: the memo stays small, and the answer moves by at most one sample.
    return float(
        _beta_need(
            float(state.leader_votes),
            float(state.runner_up_votes),
            round(q_leader, 2),
            round(q_runner, 2),
            float(policy.threshold),
            horizon,
        )
    )


def _esc_need(policy: ESC, state: RunState, horizon: int) -> float:
    # Samples to the next window boundary, then whole windows until one agrees throughout.
    w = policy.window
    n = state.n_samples
    to_boundary = (-n) % w or w
    done_in_window = w - to_boundary
    q_leader, q_runner = _shares(state)
    agree = q_leader**w + q_runner**w  # a fresh window agreeing throughout
    if done_in_window == 0:
        first = agree
    elif state.answer_run >= done_in_window:  # the current window may still close agreeing
        first = q_leader**to_boundary
    else:
        first = 0.0
    more = (1.0 - first) * (w / agree if agree > 0 else float(horizon))
    return min(to_boundary + more, float(horizon))


NeedFunction = Callable[[RunState], "float | None"]


def _unknown(state: RunState) -> float | None:
    return None


def need_function(policy: object, *, horizon: int = 32) -> NeedFunction:
    """:func:`expected_need` for ``policy``, with the dispatch on its kind done once (runs call it at every arrival)."""
    own: Callable[[RunState], Any] | None = getattr(policy, "expected_need", None)
    top = float(horizon)
    if own is not None and callable(own):
        predict = own

        def predicted(state: RunState) -> float | None:
            value = predict(state)
            return None if value is None else min(max(float(value), 0.0), top)

        return predicted
    if isinstance(policy, MaxSamples):
        n = policy.n
        return lambda state: float(min(max(n - state.n_samples, 0), horizon))
    if isinstance(policy, MaxTokens):
        cap = policy.n

        def tokens_need(state: RunState) -> float | None:
            left = cap - state.tokens
            if left <= 0:
                return 0.0
            per = state.tokens / state.n_done if state.n_done else None
            return float(min(math.ceil(left / per), horizon)) if per else None

        return tokens_need
    if isinstance(policy, AdaptiveConsistency):
        ac = policy
        return lambda state: _ac_need(ac, state, horizon)
    if isinstance(policy, ESC):
        esc = policy
        return lambda state: _esc_need(esc, state, horizon)
    if isinstance(policy, Stable):
        k = policy.k

        def stable_need(state: RunState) -> float:
            if state.total_votes <= 0:
                return float(min(k, horizon))
            q_leader, _ = _shares(state)
            return float(min(max(k - state.leader_streak, 0) / max(q_leader, 1e-3), horizon))

        return stable_need
    if isinstance(policy, AnyOf | AllOf):
        parts = [need_function(p, horizon=horizon) for p in policy.policies]
        if isinstance(policy, AnyOf):
            known = [f for f in parts if f is not _unknown]
            if not known:
                return _unknown
            if len(known) == 1:
                return known[0]

            def least(state: RunState) -> float | None:
                values = [v for v in (f(state) for f in known) if v is not None]
                return min(values) if values else None

            return least
        if any(f is _unknown for f in parts):
            return _unknown

        def most(state: RunState) -> float | None:
            values = [f(state) for f in parts]
            return None if any(v is None for v in values) else max(v for v in values if v is not None)

        return most
    return _unknown


def expected_need(policy: object, state: RunState, *, horizon: int = 32) -> float | None:
    """Expected further successful samples ``policy`` needs before it stops, after ``state``; ``None``: unknown.

    A policy's own ``expected_need(state)`` method comes first (a learned policy may predict it).
    ``MaxSamples`` and ``MaxTokens`` are counted; Adaptive-Consistency (Beta criterion; the
    Dirichlet one is approximated by it), ESC and ``Stable`` are read from the vote posterior:
    the next vote goes to the leader with its posterior-predictive share (a prior of 80% beside
    the votes seen). ``a | b`` needs the least of its parts, ``a & b`` the most. The answer is at
    most ``horizon``.
    """
    return need_function(policy, horizon=horizon)(state)


def default_need(state: RunState, *, horizon: int = 32) -> float:
    """The need assumed for a policy that states none: what Adaptive-Consistency(0.95) would need."""
    return _ac_need(_DEFAULT_AC, state, horizon)


_DEFAULT_AC = AdaptiveConsistency(0.95)


# -- (c) the plan -------------------------------------------------------------------------------------


def plan_in_flight(
    *,
    need: float,
    in_flight: int,
    time_left: float | None,
    call_seconds: float,
    speed: float = 0.5,
    bound: int | None = None,
    cap: int | None = None,
    horizon: int = 32,
) -> int:
    """How many calls to have in flight now (the driver launches the difference; it never cancels).

    Args:
        need: expected further successful samples the policy needs (calls in flight count towards it).
        in_flight: calls in flight now.
        time_left: seconds to the deadline; ``None`` without one.
        call_seconds: expected seconds of one new call.
        speed: 0 cheapest (one call at a time) .. 0.5 need + 1 in flight .. 1 every useful call at once.
        bound: most calls that may be in flight at all: further samples that could still change the
            policy's decision, and the budget's launches left (``None``: unbounded).
        cap: an explicit upper bound (``concurrency=c`` or ``Auto(max_in_flight=c)``).
        horizon: the useful calls assumed when ``bound`` is ``None``.

    Rules, in order: the speed sets the plan between one call and every useful call, with the
    expected need plus one at 0.5; with a deadline, enough calls that the need fits in the rounds
    left, and every useful call when at most one more round fits (no new call, though, while calls
    are in flight and a new one could not be back in time); then the cap and the bound.
    """
    useful = max(bound if bound is not None else horizon, 0)
    balanced = min(math.ceil(need) + 1, max(useful, 1))
    if speed <= 0.5:
        target = 1 + round(2.0 * speed * (balanced - 1))
    else:
        target = balanced + round((2.0 * speed - 1.0) * max(useful - balanced, 0))
    if time_left is not None and need > 0:
        rounds = time_left / call_seconds if call_seconds > 0 else math.inf
        if rounds < 1.0 and in_flight > 0:  # a call launched now is not expected back before those in flight
            target = min(target, in_flight)
        elif rounds < 2.0:  # one more round at most: everything that could still help, now
            # (with none in flight and less than a round left, only a call faster than usual answers:
            # the more are launched, the likelier one is)
            target = max(target, useful)
        else:
            target = max(target, math.ceil(need / math.floor(rounds)))
    target = max(target, 1)
    if cap is not None:
        target = min(target, cap)
    if bound is not None:
        target = min(target, bound)
    return max(target, 0)


# -- calls in flight and the work cancelled ------------------------------------------------------------


def _outcome_tokens(outcome: object) -> int | None:
    """Tokens an outcome reports (a sample or a batch); ``None`` for an exception or anything else."""
    if isinstance(outcome, Sample):
        return outcome.tokens
    if isinstance(outcome, list | tuple) and outcome:
        batch: list[object] = list(outcome)
        if all(isinstance(s, Sample) for s in batch):
            return sum(s.tokens for s in batch if isinstance(s, Sample))
    return None


class Flights:
    """The calls of a run in flight: when each started and what it has shown, feeding a :class:`LatencyEstimate`.

    Also counts the work cancelled: tokens decoded for calls that ended without handing them over
    (cancelled at the stop, or timed out), which no provider refunds. A stream's partial answers
    already report their tokens, so only what it decoded since the last one is estimated, from the
    time since at the measured rate; other calls are estimated from the time they ran.
    """

    __slots__ = ("latency", "wasted", "_calls")

    def __init__(self, latency: LatencyEstimate | None = None) -> None:
        self.latency = latency if latency is not None else LatencyEstimate()
        #: Estimated tokens decoded by calls that ended without reporting them (timeouts), so far.
        self.wasted = 0
        # index -> [started, tokens reported so far, time of the last partial answer or None]
        self._calls: dict[int, list[Any]] = {}

    def copy(self) -> Flights:
        """An independent copy (the simulator forks runs)."""
        new = Flights(self.latency.copy())
        new.wasted = self.wasted
        new._calls = {k: v.copy() for k, v in self._calls.items()}
        return new

    def launched(self, index: int, now: float) -> None:
        """Call ``index`` started at ``now``."""
        self._calls[index] = [now, 0, None]

    def arrived(self, index: int, outcome: object, age: float, now: float, *, final: bool) -> int:
        """Call ``index`` gave ``outcome`` ``age`` seconds after it started; returns tokens newly counted as wasted."""
        call = self._calls.get(index)
        if call is None:
            return 0
        tokens = _outcome_tokens(outcome)
        if tokens is not None:
            call[1] += tokens
        if not final:
            call[2] = now
            self.latency.observe_point(age, call[1])
            return 0
        del self._calls[index]
        if tokens is not None or (
            outcome is not None and call[2] is not None and not isinstance(outcome, BaseException)
        ):
            self.latency.observe_call(age, call[1])  # a finished call (a stream ends with no item of its own)
            return 0
        if isinstance(outcome, TimeoutError):  # abandoned mid-decode: its tokens are lost
            lost = self._decoded(call, now)
            self.wasted += lost
            return lost
        return 0

    def _decoded(self, call: list[Any], now: float) -> int:
        started, _, last = call
        if last is not None:
            return self.latency.tokens_since(now - last)
        return self.latency.tokens_after(now - started)

    def cancelled(self, now: float) -> int:
        """Forget the calls still in flight (cancelled at ``now``); returns the tokens they had decoded unreported."""
        lost = sum(self._decoded(call, now) for call in self._calls.values())
        self._calls.clear()
        self.wasted += lost
        return lost

    @property
    def in_flight(self) -> int:
        """Calls started and not yet ended."""
        return len(self._calls)


class Planner:
    """The launch planner of runs with ``concurrency=Auto(...)``: the engine's :class:`~budgetctl._core.LaunchPlanner`.

    :meth:`target_in_flight` is the one decision the engine asks for (after the start and after
    every outcome): :func:`plan_in_flight` from the run's snapshot, the latency estimate ``latency``
    (fed by the driver's :class:`Flights`, which also knows each call's launch time) and the
    policy's expected need, compiled once per policy (the simulator judges several on one run).
    The live run and the simulator ask it with the same snapshot and the same estimate, so they
    launch the same calls.
    """

    __slots__ = ("auto", "latency", "_needs", "_observing", "_tokens_seen", "_answered")

    def __init__(self, auto: Auto, latency: LatencyEstimate | None = None, *, observing: bool = False) -> None:
        self.auto = auto
        self.latency = latency if latency is not None else LatencyEstimate(prior_latency=auto.prior_latency)
        self._needs: dict[int, tuple[object, Callable[[RunState], float]]] = {}
        #: Whether :meth:`observe` feeds the estimate (drivers without :class:`Flights`: the scheduler).
        self._observing = observing
        self._tokens_seen = 0
        self._answered = 0

    def reading(self, latency: LatencyEstimate) -> Planner:
        """The same planner reading another estimate (a forked simulated run has its own)."""
        new = Planner(self.auto, latency)
        new._needs = self._needs
        return new

    def _need(self, policy: object) -> Callable[[RunState], float]:
        entry = self._needs.get(id(policy))
        if entry is None or entry[0] is not policy:
            horizon = self.auto.horizon
            need = need_function(policy, horizon=horizon)
            if need is _unknown:
                entry = (policy, lambda state: default_need(state, horizon=horizon))
            else:
                entry = (policy, _or_default(need, horizon))
            self._needs[id(policy)] = entry
        return entry[1]

    def target_in_flight(self, core: RunCore, policy: StopPolicy) -> int:
        """The calls to have in flight now, for the run ``core`` judged by ``policy``.

        The calls that could still help are the fewest of what the budget may still launch and what
        the policy's :meth:`~budgetctl.policies.StopPolicy.remaining_bound` could still use (the engine
        caps the launches by both again).
        """
        state = core.state
        bound = None if state.samples_left is None else state.samples_left + state.n_in_flight
        remaining = getattr(policy, "remaining_bound", None)
        own = remaining(state) if remaining is not None else None
        if own is not None:
            bound = own if bound is None else min(bound, own)
        auto = self.auto
        return plan_in_flight(
            need=self._need(policy)(state),
            in_flight=state.n_in_flight,
            time_left=state.time_left,
            call_seconds=self.latency.call_seconds,
            speed=auto.speed,
            bound=bound,
            cap=auto.max_in_flight,
            horizon=auto.horizon,
        )

    def observe(self, core: RunCore, latency: float, final: bool) -> None:
        """Learn from an outcome, for a driver without :class:`Flights` (else nothing: they feed the estimate).

        The engine does not say which call an outcome ends, so the tokens are the run's new ones:
        exact for whole calls; a stream's last piece alone is under-counted.
        """
        if not self._observing:
            return
        tokens, self._tokens_seen = core.tokens - self._tokens_seen, core.tokens
        answered, self._answered = core.n_samples > self._answered, core.n_samples
        if final and answered:  # a failure or an exhausted sampler says nothing of the latency
            self.latency.observe_call(latency, tokens)


def _or_default(need: NeedFunction, horizon: int) -> Callable[[RunState], float]:
    def known(state: RunState) -> float:
        value = need(state)
        return default_need(state, horizon=horizon) if value is None else value

    return known
