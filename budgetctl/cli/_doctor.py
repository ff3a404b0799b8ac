"""``budgetctl doctor``: what this installation has (extras, torch build, data) and what to install for the rest.

It reads package metadata and files only: nothing heavy is imported (torch's build is read from its
``version.py``), so it answers in well under a second and works where an extra is broken.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["register", "Check", "checks", "torch_build"]

#: Each extra of pyproject.toml, what it is for, and the distributions it installs.
EXTRAS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("learn", "learned stop policies (policy spec 'learned', train, evaluate)", ("scikit-learn",)),
    ("torch", "the MLP learned policy (training)", ("torch",)),
    ("plot", "simulate --plot", ("matplotlib",)),
    ("openai", "samplers for OpenAI-compatible servers, budgetctl ask", ("openai",)),
    ("serve", "the replay server, budgetctl serve", ("starlette", "uvicorn")),
    ("proxy", "the OpenAI-compatible proxy, budgetctl proxy", ("starlette", "uvicorn", "openai", "prometheus-client")),
    ("redis", "a budget shared by proxy replicas (budgetctl proxy --redis)", ("redis",)),
    ("otel", "OpenTelemetry spans from the proxy (budgetctl proxy --otel)", ("opentelemetry-api",)),
)
#: Where the torch CPU wheels are (PyTorch's documented index).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"

_PACKAGE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Check:
    """One line of the report: what was looked at, whether it is there, and the detail (version, path, hint)."""

    #: What was checked ("extra learn", "torch build", "shared traces"...).
    name: str
    #: Whether it is present and usable.
    ok: bool
    #: The version or path found, or what to do when it is missing.
    detail: str


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_build() -> str | None:
    """The installed torch's version and build (``"2.13.0+cpu, CPU build"``, ``"2.4.0, CUDA 12.1 build"``) or None.

    Read from ``torch/version.py`` without importing torch (which takes seconds).
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    values: dict[str, Any] = {}
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return f"{_version('torch') or '?'}, build unknown (no readable {path})"
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Assign):
            targets = node.targets
        value = getattr(node, "value", None)
        for target in targets:
            if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                values[target.id] = value.value
    version = values.get("__version__") or _version("torch") or "?"
    if values.get("cuda"):
        build = f"CUDA {values['cuda']} build"
    elif values.get("hip") or values.get("rocm"):
        build = f"ROCm {values.get('hip') or values.get('rocm')} build"
    elif values.get("xpu"):
        build = f"XPU {values['xpu']} build"
    else:
        build = "CPU build"
    return f"{version}, {build}"


def _shared_traces() -> list[Path]:
    # ../shared/traces from the repository root (a source checkout) and from the working directory.
    candidates = [_PACKAGE.parent.parent / "shared" / "traces", Path.cwd().parent / "shared" / "traces"]
    seen: list[Path] = []
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved not in seen:
            seen.append(resolved)
    return seen


def checks() -> list[Check]:
    """Everything ``budgetctl doctor`` reports, in order."""
    from .._pool import demo_pool_path
    from .._version import __version__

    found = [
        Check("budgetctl", True, f"{__version__} at {_PACKAGE}"),
        Check("python", True, f"{platform.python_version()} ({sys.executable}, {platform.platform()})"),
    ]
    for name in ("anyio", "numpy"):
        version = _version(name)
        found.append(Check(name, version is not None, version or f"missing: pip install {name}"))
    for extra, purpose, distributions in EXTRAS:
        versions = {d: _version(d) for d in distributions}
        missing = [d for d, v in versions.items() if v is None]
        if missing:
            hint = f"not installed ({purpose}): pip install 'budgetctl[{extra}]'"
            if extra == "torch":
                hint += f" (CPU build: pip install torch --index-url {TORCH_CPU_INDEX})"
            found.append(Check(f"extra {extra}", False, hint))
        else:
            found.append(Check(f"extra {extra}", True, ", ".join(f"{d} {v}" for d, v in versions.items())))
    build = torch_build()
    found.append(Check("torch build", build is not None, build or "no torch (the MLP policy can still decide)"))
    demo = Path(demo_pool_path())
    found.append(Check("demo pool", demo.is_file(), str(demo) if demo.is_file() else f"missing: {demo}"))
    policy = _PACKAGE / "data" / "policies" / "default" / "policy.json"
    where = str(policy.parent) if policy.is_file() else f"missing: {policy}"
    found.append(Check("default policy", policy.is_file(), where))
    for traces in _shared_traces():
        pools = sorted(p.name for p in traces.glob("*.jsonl*")) if traces.is_dir() else []
        detail = f"{traces} ({len(pools)} pools: {', '.join(pools)})" if pools else f"not found at {traces}"
        found.append(Check("shared traces", bool(pools), detail))
    return found


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="report the installed extras, the torch build and the data found",
        description=(
            "Report what this installation has: budgetctl, Python and anyio versions, each optional extra "
            "(with versions, or the pip command that installs it), the torch build (CPU or CUDA), the bundled "
            "demo pool and default policy, and whether ../shared/traces is found. Always exits 0."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 0 whatever is missing (it is a report, not a gate)."""
    found = checks()
    if args.json:
        print(json.dumps([asdict(c) for c in found], indent=2))
        return 0
    width = max(len(c.name) for c in found)
    for check in found:
        print(f"{'ok ' if check.ok else '-- '} {check.name:<{width}}  {check.detail}")
    if not all(c.ok for c in found):
        print("('--' marks what is missing; the rest of budgetctl works without it)")
    return 0
