"""Train the shipped default policy on every pool in ../shared/traces, one operating point per task, and install it.

    nice python simulations/train_default.py            # a few minutes on one core

Runs ``budgetctl train`` itself with its defaults (per task: rules and learned risk tables on the
same cross-validation folds, the best on held-out folds shipped, ``--max-loss 0.001``), so the
artifact records that command, and writes ``policies/default``; then copies it to
``budgetctl/data/policies/default``, the copy an installed package loads (``tests/test_learn.py``
checks that the two are identical). ``learned:task=NAME`` picks a task's policy; without a task
the default stops only when every task's policy would.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACES = Path("..") / "shared" / "traces"
TARGET = Path("policies") / "default"
PACKAGED = Path("budgetctl") / "data" / "policies" / "default"
FILES = (
    "activeprompt_k10_codex.jsonl.gz",
    "esc_lastletters_gpt35.jsonl",
    "fcot_date_codex.jsonl",
    "tot_game24_gpt4.jsonl",
)


def main() -> int:
    os.chdir(ROOT)  # relative paths in the recorded command
    missing = [name for name in FILES if not (TRACES / name).exists()]
    if missing:
        print(f"missing pools in {TRACES}: {missing}", file=sys.stderr)
        return 1
    from budgetctl.cli import main as cli

    argv = ["train", *(str(TRACES / name) for name in FILES), "-o", str(TARGET), "--skip-bad", "--force"]
    status = cli(argv)
    if status != 0:
        return status
    if PACKAGED.exists():
        shutil.rmtree(PACKAGED)
    shutil.copytree(TARGET, PACKAGED)
    print(f"copied {TARGET} to {PACKAGED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
