"""The features of a run's snapshot that learned stop policies read, and the horizons they are judged at.

Every feature is a function of one :class:`~budgetctl.RunState`, which already holds the run's
running aggregates (vote counts of the leader and runner-up, streaks, tokens, first sample's
length, verifier and confidence statistics), so computing them costs the same after sample 2 as
after sample 200: nothing re-scans the samples. The one loop is over the *distinct answers* of the
vote histogram, for the entropy, and only when there are three or more of them.

Budget and time left are not regression inputs: the expected gain of ``h`` more samples does not
depend on how many more the budget would allow (samples are i.i.d.), and training pools carry no
budget, so a model could not learn them anyway. They enter where they matter, as the cap on the
horizons a decision considers (:func:`horizon_cap`): a horizon the budget, the tokens left or the
deadline cannot reach is never weighed, and when none is left the run stops.

Bump :data:`FEATURE_SCHEMA` whenever a feature is added, removed, reordered or redefined; artifacts
record it and refuse to load under another one.
"""

from __future__ import annotations

import math

from .._state import RunState
from ..policies._posterior import prob_leader_beta

__all__ = [
    "FEATURE_SCHEMA",
    "FEATURE_NAMES",
    "FEATURE_DOCS",
    "IN_FLIGHT_SHARE",
    "state_features",
    "horizon_cap",
    "call_latency",
    "in_flight_landing",
    "charged_samples",
    "per_sample_tokens",
]

#: Version of the feature definitions below.
FEATURE_SCHEMA = 1

#: (name, what it is), in the order :func:`state_features` returns them.
FEATURE_DOCS: tuple[tuple[str, str], ...] = (
    ("log_samples", "log(1 + successful samples so far)"),
    ("inv_samples", "1 / successful samples (1 before any)"),
    ("leader_share", "leader's share of the votes"),
    ("runner_up_share", "runner-up's share of the votes"),
    ("rest_share", "share of the votes of all answers but the top two"),
    ("margin", "leader's share minus runner-up's"),
    ("log_vote_gap", "log(1 + leader votes - runner-up votes): samples needed to overturn the leader"),
    ("p_leader", "Adaptive-Consistency's P(leader is the majority), Beta(leader+1, runner-up+1)"),
    ("entropy", "Shannon entropy (nats) of the vote distribution"),
    ("distinct_share", "distinct answers / successful samples"),
    ("abstain_share", "unparsable answers (abstentions) / successful samples"),
    ("failed_share", "failed samples / samples back"),
    ("streak_share", "samples in a row the leader has stayed the leader / successful samples"),
    ("run_share", "samples in a row giving the same answer / successful samples"),
    ("tokens_known", "1 when the run reports tokens, else 0 (then every token feature is 0)"),
    ("log_mean_tokens", "log(1 + mean tokens per sample so far)"),
    ("log_first_tokens", "log(1 + tokens of the first sample): a prior on the question's difficulty"),
    ("log_mean_over_first", "log((1 + mean tokens) / (1 + first sample's tokens))"),
    ("has_score", "1 when the leader's samples carry a verifier score"),
    ("leader_score", "best verifier score among the leader's samples (0 without one)"),
    ("has_confidence", "1 when the leader's samples carry a confidence (logprobs)"),
    ("leader_confidence", "mean confidence of the leader's samples (0 without one)"),
)
#: Feature names, in order.
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _ in FEATURE_DOCS)

_log = math.log
_log1p = math.log1p


def state_features(state: RunState) -> list[float]:
    """The feature vector of ``state`` (see :data:`FEATURE_DOCS`), as plain floats.

    Pure and O(1) in the number of samples (O(distinct answers) for the entropy when there are
    three or more).
    """
    n = state.n_samples
    done = n + state.n_failed
    total = state.total_votes
    lead = state.leader_votes
    runner = state.runner_up_votes
    per_n = 1.0 / n if n > 0 else 1.0
    if total > 0:
        inv_total = 1.0 / total
        leader_share = lead * inv_total
        runner_share = runner * inv_total
        distinct = state.n_distinct
        if distinct <= 1:
            entropy = 0.0
        elif distinct == 2 and abs(total - lead - runner) <= 1e-9 * total:
            entropy = -(leader_share * _log(leader_share) + runner_share * _log(runner_share))
        else:
            entropy = 0.0
            for count in state.counts.values():
                if count > 0:
                    p = count * inv_total
                    entropy -= p * _log(p)
    else:
        leader_share = runner_share = entropy = 0.0
    tokens = state.tokens
    if tokens > 0 and done > 0:
        mean_tokens = _log1p(tokens / done)
        first = state.first_tokens or 0
        first_tokens = _log1p(first)
        known = 1.0
    else:
        mean_tokens = first_tokens = known = 0.0
    score = state.leader_score
    confidence = state.leader_sample_confidence
    return [
        _log1p(n),
        per_n,
        leader_share,
        runner_share,
        max(1.0 - leader_share - runner_share, 0.0) if total > 0 else 0.0,
        leader_share - runner_share,
        _log1p(max(lead - runner, 0.0)),
        prob_leader_beta(lead, runner) if total > 0 else 0.0,
        entropy,
        state.n_distinct * per_n,
        state.n_abstained * per_n,
        state.n_failed / done if done > 0 else 0.0,
        state.leader_streak * per_n,
        state.answer_run * per_n,
        known,
        mean_tokens,
        first_tokens,
        mean_tokens - first_tokens,
        0.0 if score is None else 1.0,
        0.0 if score is None else float(score),
        0.0 if confidence is None else 1.0,
        0.0 if confidence is None else float(confidence),
    ]


def per_sample_tokens(state: RunState, default: float) -> float:
    """Expected tokens of one more sample: the run's mean so far, or ``default`` when it reports none.

    Samples of one question are i.i.d., so the running mean is the natural estimate; a run whose
    samples report no tokens (pools with unknown lengths) is charged ``default`` per sample.
    """
    done = state.n_samples + state.n_failed
    if state.tokens > 0 and done > 0:
        return state.tokens / done
    return default


#: Share of its tokens a call in flight is charged when it will come back before the deadline.
#: It was launched already: waiting for it costs only the rest of its generation, and under a
#: deadline it costs no time the run would otherwise have.
IN_FLIGHT_SHARE = 0.1


def call_latency(state: RunState) -> float | None:
    """Seconds one sampler call takes, estimated from the run so far; ``None`` before a timed sample.

    The calls run ``n_in_flight + 1`` at a time (the one just back frees its slot). While the
    first wave is still coming back (fewer samples back than slots) every call so far ran from
    the start, so a call takes about ``elapsed``; later, ``elapsed * slots / samples back``.
    """
    done = state.n_samples + state.n_failed
    if state.elapsed <= 0 or done <= 0:
        return None
    slots = state.n_in_flight + 1
    return state.elapsed * min(slots, done) / done


def in_flight_landing(state: RunState) -> float:
    """How many calls in flight may still come back in time: all of them while time is left, else none.

    Whether one lands is not the question: waiting for it costs no time (without it the run
    still answers by the deadline, with the same best answer) and, if it never lands, no tokens
    either; if it lands it costs its tokens and may change the answer. So every call in flight
    is within reach while any time is left. Without a deadline, all of them.
    """
    time_left = state.time_left
    if time_left is not None and time_left <= 0:
        return 0.0
    return float(state.n_in_flight)


def horizon_cap(state: RunState, sample_tokens: float) -> float:
    """The most further samples the run can still get back: budget, tokens left and the deadline.

    ``math.inf`` when nothing limits it. Samples in flight count (they may still vote). The deadline
    is turned into samples at the run's pace: ``slots / latency`` samples per second (see
    :func:`call_latency`; while the first wave is out, every slot is about to return, not one per
    ``elapsed``), and never fewer than the calls in flight while time is left
    (:func:`in_flight_landing`). A run whose samples take no time (a simulation without a
    latency model) is not limited by it.
    """
    cap = math.inf
    if state.samples_left is not None:
        cap = state.samples_left + state.n_in_flight
    if state.tokens_left is not None and sample_tokens > 0:
        cap = min(cap, state.n_in_flight + math.floor(state.tokens_left / sample_tokens))
    time_left = state.time_left
    if time_left is not None:
        latency = call_latency(state)
        if latency is not None:
            slots = state.n_in_flight + 1
            by_pace = math.floor(max(time_left, 0.0) * slots / latency)
            cap = min(cap, max(by_pace, in_flight_landing(state)))
        elif time_left <= 0:
            cap = 0.0
    return cap


def charged_samples(horizon: float, landing: float) -> float:
    """What ``horizon`` more samples cost, in samples, when ``landing`` calls in flight will land in time.

    Those calls are charged :data:`IN_FLIGHT_SHARE` of a sample each, the rest a whole one.
    """
    free = min(horizon, landing)
    return free * IN_FLIGHT_SHARE + (horizon - free)
