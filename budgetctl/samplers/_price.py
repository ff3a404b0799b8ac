"""Prices per input and output token, so that samplers can report dollars in ``Sample.cost``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["Price", "PriceLike", "resolve_price"]


def _check(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Price: {name} must be a number of dollars per token, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Price: {name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per prompt (input) token and per generated (output) token.

    Vendors quote prices per million tokens: ``Price.per_million(0.15, 0.60)``. No vendor prices are
    built in, because they change; pass your own (or a table ``{"model": Price(...)}``).
    """

    #: Dollars per prompt token.
    input: float = 0.0
    #: Dollars per generated token.
    output: float = 0.0

    def __post_init__(self) -> None:
        _check("input", self.input)
        _check("output", self.output)

    @classmethod
    def per_million(cls, input: float, output: float) -> Price:
        """A price given in dollars per million tokens, the way vendors quote it."""
        _check("input", input)
        _check("output", output)
        return cls(input=input / 1e6, output=output / 1e6)

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """Dollars for ``prompt_tokens`` read and ``completion_tokens`` generated."""
        return prompt_tokens * self.input + completion_tokens * self.output


#: What samplers accept as ``price``: one :class:`Price`, or a table from model name to price.
PriceLike: TypeAlias = Price | Mapping[str, Price] | None


def resolve_price(price: PriceLike, model: str) -> Price | None:
    """The :class:`Price` of ``model``: ``price`` itself, or its entry in a table (a missing entry is an error)."""
    if price is None or isinstance(price, Price):
        return price
    if not isinstance(price, Mapping):
        raise TypeError(f"price must be a budgetctl.samplers.Price or a mapping of model name to Price, got {price!r}")
    if model not in price:
        raise ValueError(f"price table has no entry for model {model!r} (it has: {', '.join(sorted(price)) or 'none'})")
    entry = price[model]
    if not isinstance(entry, Price):
        raise TypeError(f"price table entry for {model!r} must be a Price, got {entry!r}")
    return entry
