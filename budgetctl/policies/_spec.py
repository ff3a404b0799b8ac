"""Policy specs: the command line's way to name a policy, ``NAME[:key=value,...]``.

``ac:threshold=0.9``, ``esc:window=5``, ``fixed:n=40``; ``a|b`` and ``a&b`` compose them (``&``
binds tighter, as in Python). A spec that is a path to a trained policy loads it. Unknown names and
keys are errors that list the close matches, so a typo never silently runs the wrong policy.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from typing import Any

from ._base import AllOf, AnyOf, StopPolicy
from ._rules import ESC, AdaptiveConsistency, ConfidenceStop, MaxSamples, MaxTokens, Stable, Unbeatable

__all__ = ["parse_policy", "register_policy", "policy_names", "PolicySpecError"]


class PolicySpecError(ValueError):
    """A policy spec that names no known policy or parameter, or gives a bad value."""


_Factory = Callable[..., StopPolicy]

_REGISTRY: dict[str, _Factory] = {
    "fixed": MaxSamples,
    "max-samples": MaxSamples,
    "max-tokens": MaxTokens,
    "ac": AdaptiveConsistency,
    "adaptive-consistency": AdaptiveConsistency,
    "esc": ESC,
    "stable": Stable,
    "confidence": ConfidenceStop,
    "unbeatable": Unbeatable,
}
#: Loaders for specs that are a path (a trained policy), tried in order until one reads it.
_PATH_LOADERS: list[Callable[[str], StopPolicy]] = []
#: Policies that live in optional modules: spec name -> the module whose import registers it. They
#: are imported only when a spec names them (or is a path), so rule specs never load scikit-learn.
_PLUGINS: dict[str, str] = {"learned": "budgetctl.learn"}
#: Modules that register path loaders when imported.
_PATH_PLUGINS: tuple[str, ...] = ("budgetctl.learn",)
#: Why a plug-in module could not be imported (its ImportError names the pip command), by module.
_PLUGIN_ERRORS: dict[str, str] = {}


def register_policy(name: str, factory: _Factory, *, path_loader: Callable[[str], StopPolicy] | None = None) -> None:
    """Make ``name`` usable in specs (``name:key=value``); ``path_loader`` also accepts bare paths."""
    _REGISTRY[name] = factory
    if path_loader is not None and path_loader not in _PATH_LOADERS:
        _PATH_LOADERS.append(path_loader)


def policy_names() -> list[str]:
    """Every name a spec may use (plug-ins whose optional dependency is missing are left out)."""
    for module in {*_PLUGINS.values(), *_PATH_PLUGINS}:
        _load_plugin(module)
    return sorted(_REGISTRY)


def _load_plugin(module: str) -> str | None:
    """Import a plug-in module (it registers its policies); the reason if it cannot be imported."""
    if module in _PLUGIN_ERRORS:
        return _PLUGIN_ERRORS[module]
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as error:
        _PLUGIN_ERRORS[module] = str(error)
        return str(error)
    return None


def _from_path(text: str) -> StopPolicy:
    # A spec that names an existing path: every registered loader, in order, until one reads it.
    problems = [problem for problem in map(_load_plugin, _PATH_PLUGINS) if problem is not None]
    if not _PATH_LOADERS:
        why = f": {problems[0]}" if problems else ""
        raise PolicySpecError(f"{text!r} is a path, but no trained-policy loader is available{why}")
    failures = []
    for loader in _PATH_LOADERS:
        try:
            return loader(text)
        except (ValueError, OSError) as error:  # not this loader's format, or unreadable
            failures.append(f"{getattr(loader, '__qualname__', loader)}: {error}")
    raise PolicySpecError(f"{text!r} is a path, but no loader could read it ({'; '.join(failures)})")


def _unknown(name: str, text: str) -> PolicySpecError:
    known = sorted({*_REGISTRY, *_PLUGINS})
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    where = ""
    if ":" not in text and "=" not in text:  # a bare word or a path: it may have meant a trained policy
        where = f"; also looked for a trained-policy directory {os.path.abspath(text)!r}: there is none"
    return PolicySpecError(f"unknown policy {name!r}{hint} (known: {', '.join(known)}){where}")


def _convert(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _parameters(factory: object) -> list[str] | None:
    names = getattr(factory, "spec_parameters", None)
    if names is None and isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return [f.name for f in dataclasses.fields(factory) if f.init]
    return list(names) if names is not None else None


def _one(spec: str) -> StopPolicy:
    text = spec.strip()
    if not text:
        raise PolicySpecError("empty policy spec")
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    factory = _REGISTRY.get(name)
    if factory is None and name in _PLUGINS:
        problem = _load_plugin(_PLUGINS[name])
        if problem is not None:
            raise PolicySpecError(f"policy {name!r} is not available: {problem}")
        factory = _REGISTRY.get(name)
    if factory is None:
        if os.path.exists(text):
            return _from_path(text)
        raise _unknown(name, text)
    kwargs: dict[str, Any] = {}
    allowed = _parameters(factory)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise PolicySpecError(f"{name}: expected key=value, got {item!r}")
        if allowed is not None and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise PolicySpecError(f"{name}: unknown parameter {key!r}{hint} (parameters: {', '.join(allowed)})")
        kwargs[key] = _convert(value.strip())
    if allowed is not None:
        required = [
            f.name
            for f in (
                dataclasses.fields(factory) if isinstance(factory, type) and dataclasses.is_dataclass(factory) else ()
            )
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [key for key in required if key not in kwargs]
        if missing:
            raise PolicySpecError(f"{name}: missing parameter(s) {', '.join(missing)} (e.g. {name}:{missing[0]}=...)")
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as error:
        raise PolicySpecError(f"{spec!r}: {error}") from None


def parse_policy(spec: str) -> StopPolicy:
    """Build the policy a spec names: ``NAME[:key=value,...]`` joined by ``|`` (either) and ``&`` (both).

    A part that names no registered policy but an existing path is read by the registered path
    loaders, in order. Optional plug-ins (``learned``) are imported only when a spec needs them.
    """
    alternatives = [part for part in spec.split("|")]
    policies = []
    for alternative in alternatives:
        parts = [_one(p) for p in alternative.split("&")]
        policies.append(parts[0] if len(parts) == 1 else AllOf(tuple(parts)))
    return policies[0] if len(policies) == 1 else AnyOf(tuple(policies))
