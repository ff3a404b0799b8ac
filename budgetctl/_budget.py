"""The caps a run may not pass: samples, tokens, dollars and wall time."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Budget"]


def _check_cap(name: str, value: float | None, *, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Budget({name}=...) must be a number or None, got {value!r}")
    if integer and not isinstance(value, int):
        raise TypeError(f"Budget({name}=...) must be an int or None, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"Budget({name}=...) cannot be negative or NaN, got {value!r}")


@dataclass(frozen=True, slots=True)
class Budget:
    """What one run may spend; ``None`` means no cap.

    A new sample is launched only while every cap still has room, so a run overshoots a token or
    dollar cap by at most the samples already in flight when it was reached (their cost is unknown
    until they return). ``samples`` counts launches, so it is never overshot.
    """

    #: Most samples to launch (successful or failed).
    samples: int | None = None
    #: Most generated tokens to spend.
    tokens: int | None = None
    #: Most dollars to spend; a sample costs ``Sample.cost`` or ``tokens * price_per_token``.
    dollars: float | None = None
    #: Dollars per generated token, for samples that do not report their own ``cost``.
    price_per_token: float = 0.0
    #: Wall-clock seconds; reaching it ends the run with ``stop_reason == "budget"``.
    seconds: float | None = None
    #: Charge the tokens of cancelled calls (``Result.wasted_tokens``: decoded, never delivered, still
    #: billed by most providers) to ``tokens`` and ``dollars``, as they are counted: a timed-out call's
    #: at once, the calls cancelled at the stop in the result.
    charge_wasted: bool = False

    def __post_init__(self) -> None:
        _check_cap("samples", self.samples, integer=True)
        _check_cap("tokens", self.tokens, integer=True)
        _check_cap("dollars", self.dollars)
        _check_cap("seconds", self.seconds)
        _check_cap("price_per_token", self.price_per_token)
        if not isinstance(self.charge_wasted, bool):
            raise TypeError(f"Budget(charge_wasted=...) must be a bool, got {self.charge_wasted!r}")

    def cost_of(self, tokens: int, cost: float | None) -> float:
        """Dollars charged for a sample of ``tokens`` tokens that reported ``cost`` (or ``None``)."""
        return cost if cost is not None else tokens * self.price_per_token

    def to_dict(self) -> dict[str, float | int | None]:
        """The budget as plain JSON-ready values (used in trace logs)."""
        return {
            "samples": self.samples,
            "tokens": self.tokens,
            "dollars": self.dollars,
            "price_per_token": self.price_per_token,
            "seconds": self.seconds,
            "charge_wasted": self.charge_wasted,
        }
