"""Mixing kinds of compute in one run: more parallel samples, or a longer chain of thought."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["alternate"]


class _Alternate:
    """Delegates each call to one of its samplers, in a smooth weighted round-robin."""

    def __init__(self, samplers: Sequence[Any], weights: Sequence[int]) -> None:
        self.samplers = list(samplers)
        self.weights = list(weights)
        self._current = [0] * len(self.samplers)
        #: How many calls each sampler has been given.
        self.calls = [0] * len(self.samplers)

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in self.samplers)
        return f"alternate({inner}, weights={self.weights})"

    def __call__(self) -> Any:
        # Smooth weighted round-robin (as nginx balances upstreams): weights 3, 1 give a a b a, a a b a...
        total = sum(self.weights)
        for i, weight in enumerate(self.weights):
            self._current[i] += weight
        chosen = max(range(len(self.samplers)), key=self._current.__getitem__)
        self._current[chosen] -= total
        self.calls[chosen] += 1
        # Return the call itself (a coroutine or an async generator) so the runtime treats it as its kind.
        return self.samplers[chosen]()

    async def aclose(self) -> None:
        """Close every sampler that can be closed."""
        for sampler in self.samplers:
            close = getattr(sampler, "aclose", None)
            if callable(close):
                await close()


def alternate(*samplers: Any, weights: Sequence[int] | None = None) -> Any:
    """One sampler made of several, taking turns by ``weights`` (default: equal turns).

    Use it to mix parallel samples with streamed chains of thought in one run::

        mixed = alternate(openai_chat(url, model, q, n=4), openai_chat_stream(url, model, q), weights=(1, 1))
        await solve(mixed, concurrency=2, policy=AdaptiveConsistency(0.95), deadline=2)

    Each call goes to the sampler whose turn it is and returns exactly what that sampler returns (a
    sample, a batch, or a stream of probes), so every kind keeps its own behaviour in the runtime.
    With ``concurrency >= 2`` a chain keeps streaming while batches of short samples come and go.
    """
    if not samplers:
        raise ValueError("alternate needs at least one sampler")
    for sampler in samplers:
        if not callable(sampler):
            raise TypeError(f"alternate: {sampler!r} is not a sampler (an async callable)")
    if weights is None:
        weights = [1] * len(samplers)
    if len(weights) != len(samplers):
        raise ValueError(f"alternate: got {len(weights)} weights for {len(samplers)} samplers")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"alternate: weights must be ints >= 1, got {list(weights)!r}")
    return _Alternate(samplers, weights)
