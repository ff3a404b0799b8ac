"""The stop-policy protocol and its algebra: ``a | b`` stops when either does, ``a & b`` when both do, ``~a`` inverts.

A policy is a pure function of a :class:`~budgetctl.RunState`: the same snapshot always gets the
same answer. That is what lets the simulator replay a policy offline and get exactly what a live
run would have done.

A policy may also bound the work that can still matter to it (:meth:`StopPolicy.remaining_bound`):
the engine then never has more calls launched than could change the decision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

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
    "PolicyError",
]


class PolicyError(RuntimeError):
    """A stop policy raised while judging a run: a bug in the policy, raised unwrapped by every runtime door.

    The run is stopped (its calls in flight cancelled) before this is raised; :attr:`result` holds
    the run's result at that moment, ``stop_reason="error"``, so the best answer so far is not lost.
    The policy's own exception is the ``__cause__``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: The run's result when the policy raised (set by the runtime before raising).
        self.result: Any = None


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

    def remaining_bound(self, state: RunState, /) -> int | None:
        """At most how many more successful samples, counted from ``state``, can still change the decision.

        A finite ``k`` promises: once ``k`` more samples have come back successfully (whatever
        they say), this policy says stop, and keeps saying it. The engine counts the calls in
        flight against it, so it never has more calls launched than could still matter (a failed
        call frees its place). ``None`` (the default): no such bound, launches are not limited.
        A bound may be an estimate (see :class:`~budgetctl.policies.MaxTokens`): the engine only
        delays launches by it, always keeping one call in flight while the policy has not stopped.
        """
        return None

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

    def remaining_bound(self, state: RunState, /) -> int | None:
        """The smallest bound of the parts: the run stops as soon as any part does."""
        best: int | None = None
        for policy in self.policies:
            bound = policy.remaining_bound(state)
            if bound is not None and (best is None or bound < best):
                best = bound
        return best

    def __repr__(self) -> str:
        return " | ".join(_wrap(p, AllOf) for p in self.policies)


@dataclass(frozen=True, slots=True)
class AllOf(StopPolicy):
    """Stop only when every one of ``policies`` says stop (what ``a & b`` builds)."""

    policies: tuple[StopPolicy, ...]

    def __call__(self, state: RunState, /) -> bool:
        return all(policy(state) for policy in self.policies)

    def remaining_bound(self, state: RunState, /) -> int | None:
        """The largest bound of the parts (unbounded if any part is): it stops only when all do.

        Sound because a bound promises that its part says stop from then on.
        """
        worst = 0
        for policy in self.policies:
            bound = policy.remaining_bound(state)
            if bound is None:
                return None
            if bound > worst:
                worst = bound
        return worst

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

    # remaining_bound: the default, None. That the inner policy will say stop says nothing about
    # when its negation will.

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
    if isinstance(policy, type):
        raise TypeError(
            f"policy must be a policy instance, got the class {policy.__name__}: call it, e.g. {policy.__name__}(...)"
        )
    if isinstance(policy, StopPolicy):
        return policy
    if callable(policy):
        return stop_when(policy)
    raise TypeError(f"a policy must be a StopPolicy or a callable state -> bool, got {policy!r}")
