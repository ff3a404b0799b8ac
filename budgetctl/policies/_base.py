"""The stop-policy protocol and its algebra: ``a | b`` stops when either does, ``a & b`` when both do, ``~a`` inverts.

A policy is a pure function of a :class:`~budgetctl.RunState`: the same snapshot always gets the
same answer. That is what lets the simulator replay a policy offline and get exactly what a live
run would have done.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from .._state import RunState

__all__ = [
    "StopPolicy",
    "PolicyLike",
    "AnyOf",
    "AllOf",
    "Not",
    "Never",
    "stop_when",
    "as_policy",
]


@runtime_checkable
class PolicyProtocol(Protocol):
    """Anything that, given a run's snapshot, says whether to stop."""

    def __call__(self, state: RunState, /) -> bool: ...


class StopPolicy:
    """Base of the built-in policies: adds the ``|``, ``&`` and ``~`` operators.

    Subclasses are immutable values (frozen dataclasses) whose ``repr`` shows how they were built.
    You never need to subclass it: a plain function ``state -> bool`` is a policy too, and
    :func:`stop_when` gives it the operators.
    """

    __slots__ = ()

    def __call__(self, state: RunState, /) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __or__(self, other: PolicyLike) -> StopPolicy:
        return AnyOf(_flatten(AnyOf, (self, as_policy(other))))

    def __ror__(self, other: PolicyLike) -> StopPolicy:
        return AnyOf(_flatten(AnyOf, (as_policy(other), self)))

    def __and__(self, other: PolicyLike) -> StopPolicy:
        return AllOf(_flatten(AllOf, (self, as_policy(other))))

    def __rand__(self, other: PolicyLike) -> StopPolicy:
        return AllOf(_flatten(AllOf, (as_policy(other), self)))

    def __invert__(self) -> StopPolicy:
        return Not(self)


#: What every API that takes a policy accepts: a :class:`StopPolicy` or a plain ``state -> bool`` callable.
#: A real union at runtime (not a string), so ``typing.get_type_hints`` works on the public API.
PolicyLike: TypeAlias = StopPolicy | Callable[[RunState], bool]


def _flatten(kind: type[AnyOf] | type[AllOf], parts: tuple[StopPolicy, ...]) -> tuple[StopPolicy, ...]:
    flat: list[StopPolicy] = []
    for part in parts:
        if isinstance(part, kind):
            flat.extend(part.policies)
        else:
            flat.append(part)
    return tuple(flat)


@dataclass(frozen=True, slots=True)
class AnyOf(StopPolicy):
    """Stop when any of ``policies`` says stop (what ``a | b`` builds)."""

    policies: tuple[StopPolicy, ...]

    def __call__(self, state: RunState, /) -> bool:
        return any(policy(state) for policy in self.policies)

    def __repr__(self) -> str:
        return " | ".join(_wrap(p, AllOf) for p in self.policies)


@dataclass(frozen=True, slots=True)
class AllOf(StopPolicy):
    """Stop only when every one of ``policies`` says stop (what ``a & b`` builds)."""

    policies: tuple[StopPolicy, ...]

    def __call__(self, state: RunState, /) -> bool:
        return all(policy(state) for policy in self.policies)

    def __repr__(self) -> str:
        return " & ".join(_wrap(p, AnyOf) for p in self.policies)


def _wrap(policy: StopPolicy, looser: type) -> str:
    text = repr(policy)
    return f"({text})" if isinstance(policy, looser) else text


@dataclass(frozen=True, slots=True)
class Not(StopPolicy):
    """Stop exactly when ``policy`` would not (what ``~a`` builds)."""

    policy: StopPolicy

    def __call__(self, state: RunState, /) -> bool:
        return not self.policy(state)

    def __repr__(self) -> str:
        inner = repr(self.policy)
        return f"~({inner})" if isinstance(self.policy, AnyOf | AllOf) else f"~{inner}"


@dataclass(frozen=True, slots=True)
class Never(StopPolicy):
    """Never stops: the run ends only at its budget, its deadline, or when the sampler is exhausted."""

    def __call__(self, state: RunState, /) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class _FunctionPolicy(StopPolicy):
    fn: Callable[[RunState], bool]

    def __call__(self, state: RunState, /) -> bool:
        return bool(self.fn(state))

    def __repr__(self) -> str:
        return f"stop_when({getattr(self.fn, '__qualname__', repr(self.fn))})"


def stop_when(fn: Callable[[RunState], bool]) -> StopPolicy:
    """Make a plain ``state -> bool`` function a policy with ``|``, ``&`` and ``~``.

    The function must be pure (no hidden state, no clock, no randomness) for simulation to match
    live runs.
    """
    if not callable(fn):
        raise TypeError(f"stop_when needs a callable state -> bool, got {fn!r}")
    return _FunctionPolicy(fn)


def as_policy(policy: PolicyLike | None) -> StopPolicy:
    """``policy`` as a :class:`StopPolicy`: ``None`` is :class:`Never`, a callable is wrapped."""
    if policy is None:
        return Never()
    if isinstance(policy, StopPolicy):
        return policy
    if callable(policy):
        return stop_when(policy)
    raise TypeError(f"a policy must be a StopPolicy or a callable state -> bool, got {policy!r}")
