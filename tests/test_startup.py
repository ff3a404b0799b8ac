"""Start-up cost: ``import budgetctl`` and rule specs load no heavy optional module; the rest loads on first use.

Each check runs in a fresh interpreter, so what it finds in ``sys.modules`` is what a user's
process would hold after the same lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import budgetctl as bc
from budgetctl.policies import MaxSamples, PolicySpecError, StopPolicy, _spec, parse_policy

#: Modules a rule-based run must not pay for: the extras, and budgetctl's own heavy subpackages.
HEAVY = (
    "sklearn",
    "torch",
    "openai",
    "httpx",
    "matplotlib",
    "scipy",
    "budgetctl.sim",
    "budgetctl.sched",
    "budgetctl.learn",
    "budgetctl.samplers",
    "budgetctl.serve",
)


def loaded_after(code: str) -> set[str]:
    """The modules of ``HEAVY`` that a fresh interpreter holds after running ``code``."""
    probe = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_import_and_rule_specs_load_nothing_heavy() -> None:
    loaded = loaded_after(
        """
        import budgetctl as bc
        from budgetctl.policies import parse_policy
        for spec in ("ac:threshold=0.95", "esc:window=5|fixed:n=40", "stable:k=3&max-tokens:n=900", "unbeatable"):
            parse_policy(spec)
        bc.solve_sync(lambda: None, deadline=0.0)  # the runtime itself
        """
    )
    assert loaded == set()


def test_the_learned_plugin_loads_for_learned_specs_only() -> None:
    pytest.importorskip("sklearn")
    loaded = loaded_after("from budgetctl.policies import parse_policy\nparse_policy('learned')")
    assert {"budgetctl.learn", "sklearn"} <= loaded


def test_lazy_names_load_on_first_use() -> None:
    loaded = loaded_after("import budgetctl as bc\nbc.Scheduler\nbc.samplers.openai_chat")
    assert {"budgetctl.sched", "budgetctl.samplers"} <= loaded
    assert "openai" not in loaded  # the samplers import openai only when one is made
    assert {"Scheduler", "samplers", "sim", "sched", "extract"} <= set(dir(bc))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bc.nope  # noqa: B018


def test_path_loaders_are_tried_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []

    def not_mine(path: str) -> StopPolicy:
        tried.append("first")
        raise ValueError("not a first-kind policy")

    def mine(path: str) -> StopPolicy:
        tried.append("second")
        return MaxSamples(7)

    monkeypatch.setattr(_spec, "_PATH_LOADERS", [not_mine, mine])
    assert parse_policy(str(tmp_path)) == MaxSamples(7)
    assert tried == ["first", "second"]
    monkeypatch.setattr(_spec, "_PATH_LOADERS", [not_mine])
    with pytest.raises(PolicySpecError, match=r"no loader could read it.*not a first-kind policy"):
        parse_policy(str(tmp_path))


def test_a_missing_path_says_it_looked_for_a_directory(tmp_path: Path) -> None:
    missing = tmp_path / "policies" / "nope"
    with pytest.raises(PolicySpecError, match=r"also looked for a trained-policy directory .*nope.*there is none"):
        parse_policy(str(missing))
    with pytest.raises(PolicySpecError, match="did you mean ac") as info:
        parse_policy("acc:threshold=0.9")
    assert "directory" not in str(info.value)  # a spec with parameters is not a path


def test_policy_names_include_the_plugins_that_can_load() -> None:
    names = _spec.policy_names()
    assert {"ac", "esc", "fixed"} <= set(names)
    assert ("learned" in names) == (_spec._load_plugin("budgetctl.learn") is None)


def test_worker_pools_never_fork() -> None:
    from budgetctl._workers import worker_context

    assert worker_context().get_start_method() in ("forkserver", "spawn")


def test_a_simulation_in_spawned_workers_equals_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # spawn: the strictest start method (a fresh interpreter per worker), the only one on Windows.
    import multiprocessing

    from budgetctl._pool import demo_pool_path
    from budgetctl.sim import _simulate, simulate

    monkeypatch.setattr(_simulate, "worker_context", lambda: multiprocessing.get_context("spawn"))
    specs = ["ac:threshold=0.95", "esc:window=5"]
    alone = simulate(demo_pool_path(), specs, orders=2, seed=3, jobs=1)
    workers = simulate(demo_pool_path(), specs, orders=2, seed=3, jobs=2)
    assert [(r.policy, r.accuracy, r.mean_samples) for r in alone.overall.rows] == [
        (r.policy, r.accuracy, r.mean_samples) for r in workers.overall.rows
    ]
