"""Optional dependencies: import them lazily, and say which extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` naming ``pip install 'budgetctl[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}: "
            f"install it with `pip install 'budgetctl[{extra}]'`"
        ) from error
