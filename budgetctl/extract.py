"""Answer extractors: turn a model's text into the answer that votes, or ``None`` when it cannot be parsed.

An extractor is any function ``text -> answer | None``. ``None`` abstains: the sample still costs its
tokens but does not vote, which is what an unparsable output should do. The built-ins::

    answer_is("... so the answer is 1,000.")        # 1000
    boxed(r"... \\boxed{\\frac{1}{2}}")               # '\\frac{1}{2}'
    choice()("I pick (b).")                          # 'B'
    yes_no("No, it is not.")                         # 'no'
    number("between 3 and 4.50 dollars")             # 4.5   (the last number)
    first_of(boxed, answer_is)                       # the first that parses: the default

Numbers are normalised wherever an extractor returns one: ``"1,000"``, ``"1000.0"`` and ``"1000"``
all become the int ``1000`` (non-integral values stay floats), so they vote together.
Extractors are looked up by name on the command line with :func:`get_extractor`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable

__all__ = (
    "Extractor",
    "answer_is",
    "boxed",
    "choice",
    "default",
    "first_of",
    "get_extractor",
    "extractor_names",
    "number",
    "parse_number",
    "regex",
    "yes_no",
)

#: What an extractor is: the model's text in, the answer (or ``None``: unparsable, abstain) out.
Extractor = Callable[[str], Hashable | None]

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\.\d+")
_ANSWER_IS = re.compile(r"\b(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_WRAPPERS = ("**", "__", "$", "`", '"', "'", "*")


def parse_number(text: str) -> int | float | None:
    """``text`` as a normalised number (``"1,000"`` and ``"1000.0"`` -> ``1000``), or ``None`` if it is not one.

    Thousands separators, a leading ``$`` and a trailing ``%`` are allowed; integral values become ints.
    """
    cleaned = text.strip().removeprefix("$").removesuffix("%").strip()
    if not cleaned or not _NUMBER.fullmatch(cleaned) or not any(c.isdigit() for c in cleaned):
        return None
    try:
        value = float(cleaned.replace(",", ""))
    except ValueError:  # pragma: no cover - the pattern only admits floats
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return int(value) if value == int(value) and abs(value) < 2**63 else value


def _clean(answer: str) -> Hashable | None:
    """Strip markdown, quotes and math delimiters around an extracted span; numbers become numbers."""
    text = answer.strip()
    changed = True
    while changed and text:
        changed = False
        for wrapper in _WRAPPERS:
            if len(text) >= 2 * len(wrapper) and text.startswith(wrapper) and text.endswith(wrapper):
                text = text[len(wrapper) : -len(wrapper)].strip()
                changed = True
        inner = _boxed_content(text)
        if inner is not None and text.startswith("\\boxed"):
            text = inner.strip()
            changed = True
    text = text.strip().rstrip(",;:").strip()
    if not text:
        return None
    value = parse_number(text)
    return text if value is None else value


def answer_is(text: str) -> Hashable | None:
    """The answer after the last "the answer is" (or "answer:", "final answer is"), up to the end of its sentence.

    The sentence ends at a period followed by a space or the end of the text, or at a line break,
    so ``3.5`` and ``05/01/2021`` survive. Markdown bold, quotes and ``$`` around it are removed.
    """
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    end = _SENTENCE_END.search(rest)
    return _clean(rest if end is None else rest[: end.start()])


def _boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``None`` if there is none."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: the box was cut off


def boxed(text: str) -> Hashable | None:
    """The content of the last ``\\boxed{...}``, with nested braces; ``None`` when absent or cut off."""
    content = _boxed_content(text)
    return None if content is None else _clean(content)


def number(text: str) -> Hashable | None:
    """The last number in the text, normalised (``1,000`` -> ``1000``); ``None`` when there is none.

    A loose fallback for arithmetic tasks (GSM8K style); prefer :func:`answer_is` or :func:`boxed`.
    """
    found = _NUMBER_IN_TEXT.findall(text)
    return parse_number(found[-1]) if found else None


_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}
_WORD = re.compile(r"[a-z]+")


def yes_no(text: str) -> Hashable | None:
    """``"yes"`` or ``"no"``: from the stated answer when there is one, else the first yes/no word.

    ``true``/``false`` count as yes/no. ``None`` when neither is found.
    """
    stated = answer_is(text)
    candidates = [stated] if isinstance(stated, str) else []
    candidates.append(text)
    for candidate in candidates:
        for word in _WORD.findall(candidate.lower()):
            if word in _YES and len(word) > 1:
                return "yes"
            if word in _NO and len(word) > 1:
                return "no"
    return None


def choice(letters: str = "ABCDE") -> Extractor:
    """An extractor of a multiple-choice letter among ``letters``, returned upper-case.

    Looks first at the stated answer ("the answer is (B)", "Answer: b"), then at the last
    parenthesised letter ``(C)`` in the text. ``None`` when no allowed letter is found.
    """
    if not letters or not letters.isalpha():
        raise ValueError(f"choice: letters must be a non-empty string of letters, got {letters!r}")
    allowed = "".join(dict.fromkeys(letters.upper()))
    alone = re.compile(rf"^\(?([{allowed}])\)?(?:[.):,*\s]|$)", re.IGNORECASE)
    parenthesised = re.compile(rf"\(([{allowed}])\)", re.IGNORECASE)

    def extract_choice(text: str) -> Hashable | None:
        matches = list(_ANSWER_IS.finditer(text))
        if matches:
            found = alone.match(text[matches[-1].end() :].lstrip("*$ "))
            if found:
                return found.group(1).upper()
        options = parenthesised.findall(text)
        return options[-1].upper() if options else None

    extract_choice.__name__ = extract_choice.__qualname__ = f"choice({letters!r})"
    return extract_choice


def regex(pattern: str, group: int | str = 1) -> Extractor:
    """An extractor taking ``group`` of the last match of ``pattern`` (cleaned like the others)."""
    compiled = re.compile(pattern)

    def extract_regex(text: str) -> Hashable | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        value = matches[-1].group(group)
        return None if value is None else _clean(value)

    extract_regex.__name__ = extract_regex.__qualname__ = f"regex({pattern!r})"
    return extract_regex


def first_of(*extractors: Extractor) -> Extractor:
    """An extractor returning the first non-``None`` answer of ``extractors``, tried in order."""
    if not extractors:
        raise ValueError("first_of needs at least one extractor")
    for extractor in extractors:
        if not callable(extractor):
            raise TypeError(f"first_of: {extractor!r} is not callable")

    def extract_first(text: str) -> Hashable | None:
        for extractor in extractors:
            answer = extractor(text)
            if answer is not None:
                return answer
        return None

    names = ", ".join(getattr(e, "__name__", repr(e)) for e in extractors)
    extract_first.__name__ = extract_first.__qualname__ = f"first_of({names})"
    return extract_first


#: The default extractor: ``\boxed{}`` if present, else "the answer is X".
default: Extractor = first_of(boxed, answer_is)

_NAMED: dict[str, Callable[[], Extractor]] = {
    "default": lambda: default,
    "answer-is": lambda: answer_is,
    "boxed": lambda: boxed,
    "choice": choice,
    "yes-no": lambda: yes_no,
    "number": lambda: number,
}


def extractor_names() -> list[str]:
    """The names :func:`get_extractor` knows."""
    return sorted(_NAMED)


def get_extractor(name: str) -> Extractor:
    """The built-in extractor called ``name`` (``_`` and ``-`` alike); an unknown name lists close matches."""
    key = name.strip().lower().replace("_", "-")
    factory = _NAMED.get(key)
    if factory is None:
        close = difflib.get_close_matches(key, _NAMED, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown extractor {name!r}{hint} (known: {', '.join(extractor_names())})")
    return factory()
