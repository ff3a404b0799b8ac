"""The core needs only anyio and numpy: it imports and runs with scikit-learn and torch unimportable.

Each check runs in a fresh interpreter whose ``sys.meta_path`` refuses the blocked modules, so it
sees what a user without the extras would see, whatever this environment has installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from budgetctl._optional import import_optional

BLOCKER = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, allow):
        self.allow = allow

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if not self.allow(top):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, Blocker(ALLOW))
"""


def run_python(allow: str, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a new interpreter where only modules with ``allow(top_level_name)`` import."""
    code = f"import sys\nALLOW = {allow}\n" + BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, check=False)


SOLVE = """
import budgetctl as bc
import budgetctl.policies as policies

answers = iter(["42", "42.0", "7", "42"])

async def sample():
    try:
        return bc.Sample(answer=next(answers), tokens=5)
    except StopIteration:
        raise bc.Exhausted from None

policy = policies.AdaptiveConsistency(0.95, criterion="dirichlet") | policies.MaxSamples(40)
result = bc.solve_sync(sample, policy=policy)
assert result.answer == "42" and result.stop_reason == "exhausted", result
print("solved", result.answer, result.n_samples)
"""


def test_core_runs_without_sklearn_and_torch() -> None:
    done = run_python(
        'lambda top: top not in {"sklearn", "torch", "scipy", "matplotlib"}',
        SOLVE
        + """
import sys
assert not {"sklearn", "torch", "scipy", "matplotlib"} & {m.partition(".")[0] for m in sys.modules}
try:  # the blocker really blocks
    import sklearn
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("sklearn imported despite the blocker")
""",
    )
    assert done.returncode == 0, done.stderr
    assert "solved 42 4" in done.stdout


def test_core_needs_nothing_but_anyio_and_numpy() -> None:
    # Everything already loaded at start-up is allowed (site hooks); after that, only the standard
    # library, anyio, numpy and anyio's own small dependencies may be imported.
    allow = (
        "(lambda seen, extra: lambda top: top in seen or top in sys.stdlib_module_names or top in extra)"
        '({m.partition(".")[0] for m in sys.modules}, {"budgetctl", "anyio", "numpy", "sniffio", "idna",'
        ' "typing_extensions", "exceptiongroup"})'
    )
    done = run_python(allow, SOLVE)
    assert done.returncode == 0, done.stderr
    refused = run_python(allow, "import trio")  # installed here, but not a core dependency
    assert refused.returncode == 1 and "blocked by the test" in refused.stderr


def test_import_optional_names_the_extra_when_the_module_is_missing() -> None:
    done = run_python(
        'lambda top: top != "sklearn"',
        """
from budgetctl._optional import import_optional
try:
    import_optional("sklearn.linear_model", "learn", "The learned stop policy")
except ImportError as error:
    print(error)
else:
    raise SystemExit("no ImportError")
""",
    )
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert "pip install 'budgetctl[learn]'" in message
    assert "'sklearn'" in message and message.startswith("The learned stop policy needs")


def test_import_optional_chains_the_original_error() -> None:
    with pytest.raises(ImportError, match=r"budgetctl\[torch\]") as info:
        import_optional("no_such_module_for_budgetctl_tests", "torch", "Something")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_import_optional_returns_the_module_when_present() -> None:
    assert import_optional("json.decoder", "none", "JSON").__name__ == "json.decoder"
