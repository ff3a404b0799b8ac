"""Without scikit-learn, ``budgetctl.learn`` says which extra to install, and every other policy still works."""

from __future__ import annotations

from test_optional import run_python


def test_learn_without_sklearn_names_the_extra() -> None:
    done = run_python(
        'lambda top: top not in {"sklearn", "torch"}',
        """
import budgetctl.policies as policies
try:
    import budgetctl.learn
except ImportError as error:
    print("import:", error)
else:
    raise SystemExit("budgetctl.learn imported without sklearn")
assert policies.parse_policy("ac:threshold=0.9").threshold == 0.9
try:
    policies.parse_policy("learned")
except policies.PolicySpecError as error:
    print("spec:", error)
""",
    )
    assert done.returncode == 0, done.stderr
    assert "import: budgetctl.learn" in done.stdout and "pip install 'budgetctl[learn]'" in done.stdout
    # The spec says what is missing and how to install it, not "unknown policy".
    spec = next(line for line in done.stdout.splitlines() if line.startswith("spec:"))
    assert "policy 'learned' is not available" in spec and "pip install 'budgetctl[learn]'" in spec
