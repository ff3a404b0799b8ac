"""Aggregators: how the samples of a run become one current best answer and a confidence in it.

An aggregator is an immutable description (``MajorityVote()``); ``start()`` gives the mutable
:class:`Tally` of one run, updated in O(1) per sample so that the runtime and the simulator can ask
for the current best after every sample.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, runtime_checkable

from ._sample import Sample

__all__ = [
    "Aggregator",
    "Tally",
    "MajorityVote",
    "WeightedVote",
    "BestOfN",
    "FirstAccepted",
    "normalize_answer",
]

_SPACES = re.compile(r"\s+")
# "1,000" and "-12,345.5" use thousands separators; "1,2" does not (a list, or a decimal comma).
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?")


@lru_cache(maxsize=1 << 16, typed=True)
def normalize_answer(answer: Hashable) -> Hashable:
    """The default vote key: strings trimmed, case-folded and whitespace-collapsed; integral floats as ints.

    Numbers written as text (``"1,000"``, ``"1000.0"``) become the same number, so they vote together;
    commas count only as thousands separators (``"1,2"`` stays text), and integers are read exactly.
    Anything else is returned unchanged.
    """
    if isinstance(answer, str):
        text = _SPACES.sub(" ", answer.strip()).casefold()
        number = text.replace(",", "") if _THOUSANDS.fullmatch(text) else text
        if number and number[0] in "+-0123456789.":
            with contextlib.suppress(ValueError):
                return int(number)  # exact, however large
            if _looks_numeric(number):
                return _canonical_number(float(number))
        return text
    if isinstance(answer, float) and not isinstance(answer, bool):
        return _canonical_number(answer)
    return answer


def _looks_numeric(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value)


def _canonical_number(value: float) -> Hashable:
    if math.isfinite(value) and value == int(value):
        return int(value)
    return value


class Tally:
    """The running vote of one run: weighted counts per normalised answer and the current leader.

    Ties go to the answer seen first, as with ``collections.Counter.most_common`` in the published
    self-consistency and Adaptive-Consistency code (the same rule in live runs and in simulation).
    """

    __slots__ = (
        "_normalize",
        "counts",
        "raw",
        "_rank",
        "leader",
        "leader_votes",
        "runner_up_votes",
        "total_votes",
        "_conf_sum",
        "_conf_n",
        "_best_score",
        "settled",
    )

    def __init__(self, normalize: Callable[[Hashable], Hashable]) -> None:
        self._normalize = normalize
        #: Vote weight per normalised answer.
        self.counts: dict[Hashable, float] = {}
        #: The first raw answer seen for each normalised key: what is reported.
        self.raw: dict[Hashable, Hashable] = {}
        #: Order in which each normalised key was first seen: ties go to the earliest.
        self._rank: dict[Hashable, int] = {}
        self.leader: Hashable = None
        self.leader_votes = 0.0
        self.runner_up_votes = 0.0
        self.total_votes = 0.0
        self._conf_sum: dict[Hashable, float] = {}
        self._conf_n: dict[Hashable, int] = {}
        self._best_score: dict[Hashable, float] = {}
        self.settled = False

    def key(self, answer: Hashable) -> Hashable:
        """The normalised vote key of ``answer``."""
        return self._normalize(answer)

    def copy(self) -> Tally:
        """An independent copy (the simulator forks a run where replayed orders diverge)."""
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                value = getattr(self, name)
                object.__setattr__(new, name, value.copy() if isinstance(value, dict) else value)
        return new

    def weight(self, sample: Sample) -> float:
        """How much one successful sample's vote weighs."""
        return 1.0

    def add(self, sample: Sample) -> Hashable:
        """Count one successful, non-abstaining sample; returns its vote key (``None``: it abstains)."""
        key = self._normalize(sample.answer)
        if key is None:
            return None
        w = self.weight(sample)
        counts = self.counts
        rank = self._rank
        leader = self.leader
        # Every comparison of the answer (its hash and ==) before the tally changes: an answer whose
        # __eq__ raises is then a failed sample that left no trace in the vote.
        is_leader = leader is None or key == leader
        if key in counts:
            new = counts[key] + w
        else:
            new = w
            self.raw[key] = sample.answer
            rank[key] = len(rank)
        counts[key] = new
        self.total_votes += w
        if is_leader:
            self.leader = key
            self.leader_votes = new
        elif new > self.leader_votes or (new == self.leader_votes and rank[key] < rank[leader]):
            self.runner_up_votes = self.leader_votes
            self.leader = key
            self.leader_votes = new
        elif new > self.runner_up_votes:
            self.runner_up_votes = new
        confidence = sample.sample_confidence()
        if confidence is not None:
            self._conf_sum[key] = self._conf_sum.get(key, 0.0) + confidence
            self._conf_n[key] = self._conf_n.get(key, 0) + 1
        if sample.score is not None:
            previous = self._best_score.get(key)
            if previous is None or sample.score > previous:
                self._best_score[key] = sample.score
        return key

    @property
    def best_key(self) -> Hashable:
        """The normalised key of the current best answer."""
        return self.leader

    @property
    def best(self) -> Hashable:
        """The current best answer as it was sampled, or ``None`` before any vote."""
        key = self.best_key
        return None if key is None else self.raw[key]

    @property
    def confidence(self) -> float:
        """Confidence in :attr:`best`: its share of the vote."""
        return self.vote_share()

    def vote_share(self) -> float:
        """The leader's share of all votes (0 before any vote)."""
        return self.leader_votes / self.total_votes if self.total_votes > 0 else 0.0

    def sample_confidence_of(self, key: Hashable) -> float | None:
        """Mean per-sample confidence of the samples that voted for ``key``."""
        n = self._conf_n.get(key)
        return self._conf_sum[key] / n if n else None

    def score_of(self, key: Hashable) -> float | None:
        """Best verifier score among samples that voted for ``key``."""
        return self._best_score.get(key)


def _aggregator_repr(self: object) -> str:
    # Show how it was built, the default normaliser by name (not a cache object's address), so a
    # trace's configuration reads the same from run to run.
    parts = []
    for name, value in vars(type(self))["__dataclass_fields__"].items():
        current = getattr(self, name)
        if current == value.default:
            continue
        shown = getattr(current, "__qualname__", None) if callable(current) else None
        parts.append(f"{name}={shown or repr(current)}")
    return f"{type(self).__name__}({', '.join(parts)})"


@runtime_checkable
class Aggregator(Protocol):
    """Turns samples into a current best answer; ``start()`` gives a fresh tally for one run."""

    def start(self) -> Tally:
        """A fresh, empty tally for one run."""
        ...


@dataclass(frozen=True, repr=False)
class MajorityVote:
    """Self-consistency: the most frequent answer wins; confidence is its vote share.

    ``normalize`` maps an answer to its vote key (default :func:`normalize_answer`), so that
    ``" 42 "`` and ``"42.0"`` vote together; the answer reported is the first one sampled for the key.
    """

    normalize: Callable[[Hashable], Hashable] = field(default=normalize_answer)

    def start(self) -> Tally:
        """A fresh, empty tally for one run."""
        return Tally(self.normalize)

    __repr__ = _aggregator_repr


class _WeightedTally(Tally):
    __slots__ = ("_default",)

    def __init__(self, normalize: Callable[[Hashable], Hashable], default: float) -> None:
        super().__init__(normalize)
        self._default = default

    def weight(self, sample: Sample) -> float:
        confidence = sample.sample_confidence()
        return self._default if confidence is None else confidence


@dataclass(frozen=True, repr=False)
class WeightedVote:
    """Confidence-weighted vote: each sample votes with its own confidence (logprob-derived or given).

    Samples without a confidence vote with ``default_weight``. Confidence of the winner is its share
    of the total weight.
    """

    normalize: Callable[[Hashable], Hashable] = field(default=normalize_answer)
    default_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.default_weight) and self.default_weight >= 0):
            raise ValueError(f"default_weight must be finite and >= 0, got {self.default_weight!r}")

    def start(self) -> Tally:
        """A fresh, empty tally for one run."""
        return _WeightedTally(self.normalize, self.default_weight)

    __repr__ = _aggregator_repr


class _BestScoreTally(Tally):
    __slots__ = ("_top_key", "_top_score")

    def __init__(self, normalize: Callable[[Hashable], Hashable]) -> None:
        super().__init__(normalize)
        self._top_key: Hashable = None
        self._top_score = -math.inf

    def add(self, sample: Sample) -> Hashable:
        key = super().add(sample)
        if key is not None and sample.score is not None and sample.score > self._top_score:
            self._top_score = sample.score
            self._top_key = key
        return key

    @property
    def best_key(self) -> Hashable:
        return self._top_key if self._top_key is not None else self.leader

    @property
    def confidence(self) -> float:
        if self._top_key is None:
            return self.vote_share()
        return min(1.0, max(0.0, self._top_score))


@dataclass(frozen=True, repr=False)
class BestOfN:
    """Best-of-N: the answer of the highest verifier score wins (ties: the earliest).

    Until a scored sample arrives the majority leader stands in. Confidence is the winning score,
    clipped to [0, 1].
    """

    normalize: Callable[[Hashable], Hashable] = field(default=normalize_answer)

    def start(self) -> Tally:
        """A fresh, empty tally for one run."""
        return _BestScoreTally(self.normalize)

    __repr__ = _aggregator_repr


class _AcceptTally(Tally):
    __slots__ = ("_threshold", "_accepted")

    def __init__(self, normalize: Callable[[Hashable], Hashable], threshold: float) -> None:
        super().__init__(normalize)
        self._threshold = threshold
        self._accepted: Hashable = None

    def add(self, sample: Sample) -> Hashable:
        key = super().add(sample)
        if key is not None and not self.settled and sample.score is not None and sample.score >= self._threshold:
            self._accepted = key
            self.settled = True
        return key

    @property
    def best_key(self) -> Hashable:
        return self._accepted if self.settled else self.leader

    @property
    def confidence(self) -> float:
        return 1.0 if self.settled else self.vote_share()


@dataclass(frozen=True, repr=False)
class FirstAccepted:
    """First-accepted: the first answer whose verifier score reaches ``threshold`` wins, and the run stops.

    Before any acceptance the majority leader is the anytime answer. Acceptance marks the tally
    settled, which ends the run with ``stop_reason == "policy"``.
    """

    threshold: float = 1.0
    normalize: Callable[[Hashable], Hashable] = field(default=normalize_answer)

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold!r}")

    def start(self) -> Tally:
        """A fresh, empty tally for one run."""
        return _AcceptTally(self.normalize, self.threshold)

    __repr__ = _aggregator_repr
