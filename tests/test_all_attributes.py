"""The public surface cannot drift: ``__all__`` lists exactly what is public, and all of it is documented.

Modelled on anyio's ``tests/test_all_attributes.py``.
"""

from __future__ import annotations

import inspect
import typing
from types import ModuleType
from typing import Any

import pytest

import budgetctl
import budgetctl.policies

PUBLIC_MODULES = [budgetctl, budgetctl.policies]

#: Public names that are type aliases (documented by a ``#:`` comment in their module, not a docstring).
TYPE_ALIASES = {"Sampler", "StopReason", "PolicyLike"}


def _exports(module: ModuleType) -> list[tuple[str, Any]]:
    return [(name, getattr(module, name)) for name in module.__all__]


def _cases() -> list[Any]:
    return [
        pytest.param(module, name, obj, id=f"{module.__name__}.{name}")
        for module in PUBLIC_MODULES
        for name, obj in _exports(module)
        if name != "__version__"
    ]


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_all_is_a_sorted_tuple_of_unique_existing_names(module: ModuleType) -> None:
    assert isinstance(module.__all__, tuple)
    assert len(set(module.__all__)) == len(module.__all__), "duplicate names in __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_nothing_public_is_missing_from_all(module: ModuleType) -> None:
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType) and name != "annotations"
    }
    assert public - set(module.__all__) == set(), "public names not in __all__"


@pytest.mark.parametrize(("module", "name", "obj"), _cases())
def test_export_is_defined_inside_the_package(module: ModuleType, name: str, obj: Any) -> None:
    if name in TYPE_ALIASES:
        # A string (or a quoted part) is resolved in the *user's* module by typing.get_type_hints,
        # where the names it mentions are usually not imported.
        assert not _has_forward_refs(obj), f"{name} holds a string annotation: {obj!r}"
        return
    assert obj.__module__.startswith(module.__name__ + "."), f"{name}.__module__ is {obj.__module__!r}"
    # Private modules only: users import from the public namespace.
    assert obj.__module__.rsplit(".", 1)[-1].startswith("_")


@pytest.mark.parametrize(("module", "name", "obj"), _cases())
def test_export_is_documented(module: ModuleType, name: str, obj: Any) -> None:
    if name in TYPE_ALIASES:
        # An alias is documented by the ``#:`` comment above its definition.
        lines = inspect.getsource(_defining_module(name)).splitlines()
        line = next(i for i, text in enumerate(lines) if text.startswith((f"{name}: TypeAlias", f"{name} =")))
        assert lines[line - 1].startswith("#:"), f"alias {name} has no #: comment"
        return
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    if inspect.isclass(obj):
        assert not doc.startswith(f"{obj.__name__}("), f"{name} only has the dataclass-generated docstring"
        for attribute, member in vars(obj).items():
            if attribute.startswith("_") or not callable(member) or isinstance(member, type):
                continue
            assert inspect.getdoc(member), f"{name}.{attribute} has no docstring"


def _has_forward_refs(annotation: Any) -> bool:
    if isinstance(annotation, str | typing.ForwardRef):
        return True
    if isinstance(annotation, list | tuple):
        return any(_has_forward_refs(a) for a in annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return False  # its strings are values, not annotations
    return any(_has_forward_refs(a) for a in typing.get_args(annotation))


def _defining_module(name: str) -> ModuleType:
    import budgetctl._runtime
    import budgetctl._state
    import budgetctl.policies._base

    return {
        "Sampler": budgetctl._runtime,
        "StopReason": budgetctl._state,
        "PolicyLike": budgetctl.policies._base,
    }[name]


@pytest.mark.parametrize(("module", "name", "obj"), [c for c in _cases() if callable(c.values[2])])
def test_type_hints_resolve_at_runtime(module: ModuleType, name: str, obj: Any) -> None:
    # Tools that read annotations (typeguard, pydantic, sphinx-autodoc-typehints) need this.
    if name in TYPE_ALIASES:
        return
    targets = [obj.__init__] if inspect.isclass(obj) else [obj]
    if inspect.isclass(obj):
        targets += [m for a, m in vars(obj).items() if inspect.isfunction(m) and not a.startswith("__")]
    for target in targets:
        typing.get_type_hints(target)


def test_version_is_a_pep440_string() -> None:
    import re

    assert re.fullmatch(r"\d+\.\d+(\.\d+)?([ab]|rc)?\d*(\.dev\d+)?", budgetctl.__version__)
