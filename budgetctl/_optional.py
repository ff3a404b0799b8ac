"""Optional dependencies: import them lazily, and say which extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional", "TORCH_CPU"]


#: The CPU build of torch, as PyTorch's own install selector gives it (the package index's default
#: build on Linux brings CUDA, gigabytes that a CPU-only learned policy does not need).
TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` naming ``pip install 'budgetctl[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        how = f"`pip install 'budgetctl[{extra}]'`"
        if extra == "torch":
            how = f"`{TORCH_CPU}` (the CPU build), or {how}"
        raise ImportError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}: install it with {how}"
        ) from error
