"""Answer extractors: what each one reads out of a model's text, and that unparsable text abstains (``None``)."""

from __future__ import annotations

import inspect
from collections.abc import Hashable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from budgetctl import extract, normalize_answer
from budgetctl.extract import (
    answer_is,
    boxed,
    choice,
    default,
    first_of,
    get_extractor,
    number,
    parse_number,
    regex,
    yes_no,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Let's see. So the answer is yajo.", "yajo"),
        ("The answer is 05/01/2021.", "05/01/2021"),
        ("The answer is 3.5.", 3.5),
        ("so the answer is 1,000.", 1000),
        ("The final answer is: 1000.0", 1000),
        ("Answer: $12.50", 12.5),
        ("The answer is **Paris**.", "Paris"),
        ('The answer is "ok".', "ok"),
        ("First the answer is 4. Wait, no: the answer is 5.", 5),
        ("The answer is nosolution..", "nosolution."),
        ("The answer is abc\nmore text", "abc"),
        ("The answer is", None),
        ("no answer here", None),
        ("", None),
    ],
)
def test_answer_is(text: str, expected: Hashable) -> None:
    assert answer_is(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}", 42),
        (r"\boxed{\frac{1}{2}} is it", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{2}", 2),
        (r"\fbox{x}", "x"),
        (r"\boxed{1,000}", 1000),
        (r"cut off \boxed{3", None),
        ("no box", None),
    ],
)
def test_boxed(text: str, expected: Hashable) -> None:
    assert boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I pick (b).", "B"),
        ("The answer is B.", "B"),
        ("The answer is (c) because", "C"),
        ("Answer: **d**", "D"),
        ("The answer is F.", None),  # not among the letters
        ("The answer is Because of (a) and (e).", "E"),  # falls back to the last parenthesised letter
        ("nothing", None),
    ],
)
def test_choice(text: str, expected: Hashable) -> None:
    assert choice()(text) == expected


def test_choice_respects_its_letters() -> None:
    assert choice("AB")("The answer is (C).") is None
    assert choice("abc")("The answer is (C).") == "C"
    with pytest.raises(ValueError, match="letters"):
        choice("")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No, it is not.", "no"),
        ("Yes.", "yes"),
        ("The answer is yes.", "yes"),
        ("Not sure... The answer is no.", "no"),
        ("The answer is True", "yes"),
        ("false", "no"),
        ("maybe", None),
        ("nothing to say", None),  # "nothing" is not "no"
    ],
)
def test_yes_no(text: str, expected: Hashable) -> None:
    assert yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("between 3 and 4.50 dollars", 4.5),
        ("1,000 apples", 1000),
        ("it costs -2.", -2),
        ("x2 and y3", None),  # digits inside words are not numbers
        ("none", None),
    ],
)
def test_number(text: str, expected: Hashable) -> None:
    assert number(text) == expected


@pytest.mark.parametrize("text", ["1,000", "1000.0", "1000", " 1000 ", "$1,000", "1e3"])
def test_numbers_are_normalised_alike(text: str) -> None:
    value = parse_number(text)
    assert value == 1000 and isinstance(value, int)


@pytest.mark.parametrize("text", ["", "abc", "1,00", "1.2.3", "nan", "inf", "--1", ","])
def test_parse_number_refuses_non_numbers(text: str) -> None:
    assert parse_number(text) is None


def test_default_prefers_a_box_then_the_stated_answer() -> None:
    assert default(r"The answer is 3, i.e. \boxed{4}") == 4
    assert default("The answer is 3.") == 3
    assert default("I am not sure.") is None


def test_first_of_and_regex() -> None:
    extractor = first_of(regex(r"ANSWER=(\w+)"), number)
    assert extractor("ANSWER=abc, 12") == "abc"
    assert extractor("just 12") == 12
    assert extractor("nothing") is None
    assert "regex" in extractor.__name__
    with pytest.raises(ValueError):
        first_of()
    with pytest.raises(TypeError):
        first_of("not callable")  # type: ignore[arg-type]


def test_get_extractor_by_name_with_close_matches() -> None:
    assert get_extractor("answer_is") is answer_is
    assert get_extractor("Boxed") is boxed
    assert get_extractor("choice")("(a)") == "A"
    with pytest.raises(ValueError, match="did you mean 'boxed'"):
        get_extractor("boxd")


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_thousands_separators_round_trip(value: int) -> None:
    assert parse_number(f"{value:,}") == value
    assert answer_is(f"The answer is {value:,}.") == value
    assert normalize_answer(f"{value:,}") == value


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_extractors_never_raise(text: str) -> None:
    for extractor in (answer_is, boxed, number, yes_no, choice(), default):
        extractor(text)


def test_public_surface_is_documented() -> None:
    assert isinstance(extract.__all__, tuple)
    for name in extract.__all__:
        obj = getattr(extract, name)
        if name in ("Extractor", "default"):
            continue  # an alias and a value, documented by #: comments
        assert inspect.getdoc(obj), f"budgetctl.extract.{name} has no docstring"
