"""Train the shipped default learned policy on every pool in ../shared/traces and install both copies.

    python simulations/train_default.py            # a few minutes on two cores

Runs ``budgetctl train`` itself (so the artifact records that command), on all pools, with 20% of
each dataset's questions held out for the model card's metrics, and writes ``policies/default``;
then copies it to ``budgetctl/data/policies/default``, the copy an installed package loads
(``tests/test_learn.py`` checks that the two are identical). The Game of 24 file has one line with
negative token counts in the source data; ``--skip-bad`` skips it and the card lists it.
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

    argv = ["train", *(str(TRACES / name) for name in FILES), "-o", str(TARGET)]
    argv += ["--model", "mlp", "--skip-bad", "--holdout", "0.2", "--eval-orders", "20", "--seed", "0"]
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
