"""Sample pools: many i.i.d. samples per question, with gold answers, read from files.

Two formats are read: the pool format of ``../shared/traces`` (one question per line, its samples
inline; see that README and ``docs/trace-format.md``) and the trace logs that :func:`budgetctl.solve`
writes (one run per question; ``meta`` may carry ``id``, ``question``, ``gold``, ``dataset``).
Both become :class:`Question` objects, which the simulator, the replay server and training use.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._aggregate import normalize_answer
from ._jsonl import DEFAULT_LIMITS, ReadLimits, TraceFormatError, checked_number, iter_lines, parse_json
from ._sample import Sample
from ._trace import MAX_TOKENS, OnSkip, answer_value, collect_runs, warn_skipped

__all__ = ["Question", "Pool", "load_pool", "demo_pool_path"]


@dataclass(frozen=True)
class Question:
    """One question of a pool: its samples in file order, and which answers are right."""

    #: Unique id within the pool.
    id: str
    #: The samples, in the order the file gives them (any order is a valid draw: they are i.i.d.).
    samples: tuple[Sample, ...]
    #: Normalised answers judged correct (from the source's own grading, or equal to ``gold``).
    correct_keys: frozenset[Hashable]
    #: Reference answer, ``None`` where many answers are right (Game of 24).
    gold: Hashable = None
    #: Dataset name (one file may hold several).
    dataset: str = ""
    #: Model that produced the samples.
    model: str = ""
    #: The prompt's question text, for replaying it as a real endpoint.
    text: str = ""
    #: Whether the samples carry real token counts (``False``: tokens are 0 and unknown).
    tokens_known: bool = True
    #: Where it was read from, ``file:line``.
    origin: str = ""

    def is_correct(self, answer: Hashable) -> bool:
        """Whether ``answer`` (as sampled, or normalised) is a right answer to this question."""
        return answer is not None and normalize_answer(answer) in self.correct_keys


@dataclass
class Pool:
    """Questions read from one or more files, and what was skipped on the way."""

    questions: list[Question]
    files: list[str]
    #: ``(file, line, reason)`` of every line skipped: torn by a crash (traces), or bad with ``skip_bad=True``.
    skipped: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def tokens_known(self) -> bool:
        """True when every question carries real token counts."""
        return all(q.tokens_known for q in self.questions)

    @property
    def datasets(self) -> list[str]:
        """Dataset names, in first-seen order."""
        return list(dict.fromkeys(q.dataset for q in self.questions))

    def by_dataset(self) -> dict[str, list[Question]]:
        """Questions grouped by dataset."""
        groups: dict[str, list[Question]] = {}
        for q in self.questions:
            groups.setdefault(q.dataset, []).append(q)
        return groups


def demo_pool_path() -> str:
    """Path of the demo pool bundled with the package (a subset of Faithful-CoT, MIT)."""
    return os.path.join(os.path.dirname(__file__), "data", "demo_fcot_date.jsonl.gz")


def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float | None:
    return None if value is None else checked_number(value, name, low=low, high=high)


def _hashable(value: Any, name: str = "answer") -> Hashable:
    return answer_value(value, name)  # type: ignore[no-any-return]


def _parse_question(record: Any, origin: str) -> Question:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    qid = record.get("id")
    if not isinstance(qid, str | int) or isinstance(qid, bool):
        raise ValueError(f"missing or invalid 'id': {qid!r}")
    raw_samples = record.get("samples")
    if not isinstance(raw_samples, list) or not raw_samples:
        raise ValueError("'samples' must be a non-empty list")
    gold = _hashable(record.get("gold"), "gold")
    samples: list[Sample] = []
    correct: set[Hashable] = set()
    tokens_known = True
    for i, raw in enumerate(raw_samples):
        if not isinstance(raw, dict):
            raise ValueError(f"samples[{i}] must be an object, got {type(raw).__name__}")
        try:
            answer = _hashable(raw.get("answer"))
            tokens = _number(raw.get("tokens"), "tokens", 0.0, MAX_TOKENS)
            logprob = _number(raw.get("logprob"), "logprob", None, 0.0)
            score = _number(raw.get("score"), "score")
            confidence = _number(raw.get("confidence"), "confidence", 0.0, 1.0)
        except ValueError as error:
            raise ValueError(f"samples[{i}]: {error}") from None
        if tokens is None:
            tokens_known = False
        samples.append(
            Sample(
                answer=answer,
                tokens=0 if tokens is None else round(tokens),
                logprob=logprob,
                score=score,
                confidence=confidence,
            )
        )
        flag = raw.get("correct")
        if answer is not None and (flag is True or (flag is None and gold is not None and _same(answer, gold))):
            correct.add(normalize_answer(answer))
    if gold is not None:
        correct.add(normalize_answer(gold))
    return Question(
        id=str(qid),
        samples=tuple(samples),
        correct_keys=frozenset(correct),
        gold=gold,
        dataset=str(record.get("dataset") or ""),
        model=str(record.get("model") or ""),
        text=str(record.get("question") or ""),
        tokens_known=tokens_known,
        origin=origin,
    )


def _same(answer: Hashable, gold: Hashable) -> bool:
    return normalize_answer(answer) == normalize_answer(gold)


def _is_trace(path: str, limits: ReadLimits) -> bool:
    for number, line, _ in iter_lines(path, limits, skip_blank=True):
        if not line.strip():
            continue
        try:
            first = parse_json(path, number, line)
        except TraceFormatError:
            return False
        return isinstance(first, dict) and "event" in first
    return False


def _questions_from_trace(
    path: str, skip_bad: bool, skipped: list[tuple[str, int, str]], limits: ReadLimits
) -> list[Question]:
    questions = []
    for run in collect_runs(path, skip_bad=skip_bad, limits=limits, on_skip=_recorder(skipped)):
        samples = tuple(s for s in run.samples if s.error is None)
        if not samples:
            continue
        try:
            gold = _hashable(run.meta.get("gold"), "meta.gold")
        except ValueError as error:
            if not skip_bad:
                raise TraceFormatError(path, run.line, f"run {run.run}: {error}") from None
            skipped.append((path, run.line, f"run {run.run}: {error}"))
            continue
        correct = {normalize_answer(gold)} if gold is not None else set()
        questions.append(
            Question(
                id=str(run.meta.get("id", run.run)),
                samples=samples,
                correct_keys=frozenset(correct),
                gold=gold,
                dataset=str(run.meta.get("dataset", "")),
                model=str(run.meta.get("model", "")),
                text=str(run.meta.get("question", "")),
                tokens_known=True,
                origin=run.origin,
            )
        )
    return questions


def _recorder(skipped: list[tuple[str, int, str]]) -> OnSkip:
    def record(path: str, line: int, reason: str, torn: bool) -> None:
        skipped.append((path, line, reason))
        if torn:  # skipped without skip_bad: say so
            warn_skipped(path, line, reason)

    return record


def _questions_from_pool(
    path: str, skip_bad: bool, skipped: list[tuple[str, int, str]], limits: ReadLimits
) -> list[Question]:
    questions = []
    for number, line, _ in iter_lines(path, limits, skip_blank=True):
        if not line.strip():
            continue
        try:
            questions.append(_parse_question(parse_json(path, number, line), f"{path}:{number}"))
        except TraceFormatError as error:
            if not skip_bad:
                raise
            skipped.append((path, number, error.message))
        except ValueError as error:
            if not skip_bad:
                raise TraceFormatError(path, number, str(error)) from None
            skipped.append((path, number, str(error)))
    return questions


def load_pool(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    datasets: Iterable[str] | None = None,
    skip_bad: bool = False,
    limits: ReadLimits = DEFAULT_LIMITS,
) -> Pool:
    """Read sample pools and ``solve`` trace logs (``.jsonl`` or ``.jsonl.gz``) into one :class:`Pool`.

    ``datasets`` keeps only those datasets. A malformed line raises :class:`~budgetctl.TraceFormatError`
    naming its file and line, unless ``skip_bad``, which records it in ``Pool.skipped`` instead.
    Duplicate question ids across files are an error (they would be counted twice). Lines of a
    trace torn by a crash are skipped (recorded in ``Pool.skipped``, with a ``TraceWarning``).
    ``limits`` bounds line length and decompressed size (see ``docs/trace-format.md``).
    """
    files = [os.fspath(paths)] if isinstance(paths, str | os.PathLike) else [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("no pool files given")
    wanted = set(datasets) if datasets is not None else None
    questions: list[Question] = []
    skipped: list[tuple[str, int, str]] = []
    seen: dict[str, str] = {}
    for path in files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"pool file not found: {path}")
        if _is_trace(path, limits):
            found = _questions_from_trace(path, skip_bad, skipped, limits)
        else:
            found = _questions_from_pool(path, skip_bad, skipped, limits)
        for q in found:
            if wanted is not None and q.dataset not in wanted:
                continue
            if q.id in seen:
                raise ValueError(f"question id {q.id!r} appears twice: {seen[q.id]} and {q.origin}")
            seen[q.id] = q.origin
            questions.append(q)
    if wanted is not None and not questions:
        available = sorted({q.dataset for p in files for q in _peek(p, limits)})
        raise ValueError(f"no question of dataset(s) {sorted(wanted)} in {files}; datasets there: {available}")
    return Pool(questions=questions, files=files, skipped=skipped)


def _peek(path: str, limits: ReadLimits) -> list[Question]:
    if _is_trace(path, limits):
        return _questions_from_trace(path, True, [], limits)
    return _questions_from_pool(path, True, [], limits)
