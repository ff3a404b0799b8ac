"""The first hour, timed: what a newcomer does after finding the repository, from clone to a trained policy.

In a scratch directory with nothing beside the clone (so no ``../shared/traces``: the tests that need
the real pools skip, as they would for a newcomer), each step timed by the wall clock:

1. ``git clone`` of this repository's current branch;
2. the README's first command: a fresh virtual environment, ``pip install -e '.[plot]'``, ``budgetctl simulate``;
3. the README's second command: ``pip install -e '.[dev]'`` into it and ``python -m pytest``;
4. ``budgetctl serve`` on the bundled demo pool and one ``budgetctl ask`` against it;
5. ``budgetctl train`` on the demo pool (a demo-sized pool: 200 questions x 40 samples) and
   ``budgetctl simulate`` of the trained policy beside Adaptive-Consistency.

pip installs from whatever index and wheel folders the machine's pip configuration names, so the
install times depend on the machine and its cache; they are reported as measured.

    python benchmarks/newcomer_path.py             # runs, prints, rewrites "## The first hour" in docs/benchmarks.md
    python benchmarks/newcomer_path.py --no-write  # runs and prints only
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
from benchdoc import write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
DEMO = "budgetctl/data/demo_fcot_date.jsonl.gz"


class Step:
    """One timed step: its name, the command as a reader would type it, and the seconds it took."""

    def __init__(self, name: str, command: str, seconds: float, note: str = "") -> None:
        self.name, self.command, self.seconds, self.note = name, command, seconds, note


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> tuple[float, str]:
    """Run ``command`` with bash in ``cwd``; its seconds and its output's last lines. Fails loudly."""
    started = time.perf_counter()
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - started
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise SystemExit(f"`{command}` exited {done.returncode} after {seconds:.0f} s:\n{output[-3000:]}")
    return seconds, output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_question(clone: Path) -> str:
    with gzip.open(clone / DEMO, "rt", encoding="utf-8") as stream:
        return str(json.loads(stream.readline())["question"])


def serve_and_ask(clone: Path, env: dict[str, str]) -> tuple[Step, Step]:
    """Start ``budgetctl serve`` on the demo pool, wait until it answers, then one ``ask``; both timed."""
    port = free_port()
    serve = f"budgetctl serve {DEMO} --port {port} --ttft-ms 80 --ms-per-token 15"
    started = time.perf_counter()
    server = subprocess.Popen(
        ["bash", "-c", f". .venv/bin/activate && exec {serve}"],
        cwd=clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 60:
                    raise SystemExit(f"`{serve}` did not start") from None
                time.sleep(0.1)
        up = time.perf_counter() - started
        question = first_question(clone).replace("'", "'\\''")
        ask = (
            f"budgetctl ask --base-url http://127.0.0.1:{port}/v1 --model replay --deadline 5 "
            f"--policy ac:threshold=0.95 '{question}'"
        )
        seconds, output = shell(f". .venv/bin/activate && {ask}", clone, env)
    finally:
        server.terminate()
        server.wait(timeout=10)
    answer = next((line for line in output.splitlines() if line.startswith("answer:")), "")
    return (
        Step("`budgetctl serve` on the demo pool, until it answers /health", serve.replace(str(port), "PORT"), up),
        Step(
            "one `budgetctl ask` against it (a demo question)",
            ask.split(" '")[0].replace(str(port), "PORT") + " '...'",
            seconds,
            answer,
        ),
    )


def measure(base: Path) -> list[Step]:
    branch = subprocess.run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["MPLBACKEND"] = "Agg"
    steps = []
    seconds, _ = shell(f"git clone -q --branch {branch} {ROOT} budgetctl", base, env)
    steps.append(Step("clone", "git clone URL budgetctl && cd budgetctl", seconds))
    clone = base / "budgetctl"
    setup = "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[plot]'"
    seconds, _ = shell(setup, clone, env)
    steps.append(Step("README, first command: the environment", setup, seconds))
    seconds, output = shell(". .venv/bin/activate && budgetctl simulate --no-progress", clone, env)
    rows = sum(1 for line in output.splitlines() if line.startswith(("fixed:", "ac:", "esc:", "stable:")))
    steps.append(Step("README, first command: `budgetctl simulate`", "budgetctl simulate", seconds, f"{rows} policies"))
    install = ". .venv/bin/activate && pip install -q -e '.[dev]'"
    seconds, _ = shell(install, clone, env)
    steps.append(Step("README, second command: the dev extra", "pip install -e '.[dev]'", seconds))
    seconds, output = shell(". .venv/bin/activate && python -m pytest -q -p no:cacheprovider", clone, env, 1800)
    summary = output.splitlines()[-1].strip("= ") if output else ""
    steps.append(Step("README, second command: the tests", "python -m pytest", seconds, summary))
    steps += serve_and_ask(clone, env)
    train = f"budgetctl train {DEMO} -o policies/demo --model linear --value 0.02"
    seconds, _ = shell(f". .venv/bin/activate && {train}", clone, env)
    steps.append(Step("`budgetctl train` on the demo pool (linear gain model)", train, seconds))
    simulate = "budgetctl simulate --policy policies/demo --policy ac:threshold=0.95 --no-progress"
    seconds, _ = shell(f". .venv/bin/activate && {simulate}", clone, env)
    steps.append(Step("`budgetctl simulate` of the trained policy on the demo pool", simulate, seconds))
    return steps


def render(steps: list[Step], load: tuple[float, float, float]) -> str:
    total = sum(s.seconds for s in steps)
    lines = [
        "## The first hour",
        "",
        f"Command: `python benchmarks/newcomer_path.py` ({os.cpu_count()} cores, shared with other jobs: load "
        f"average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at the end; Python {platform.python_version()}; pip "
        "installing from this machine's configured index and wheel folders). A fresh clone in an empty scratch "
        "directory (no `../shared/traces` beside it, so the tests that need the real pools skip), then the "
        "README's two commands, one `serve` + `ask`, and one `train` + `simulate` on the bundled demo pool, "
        "each timed by the wall clock:",
        "",
        "| step | command | seconds | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.name} | `{s.command}` | {s.seconds:.1f} | {s.note} |" for s in steps]
    lines += ["", f"End to end: {total:.0f} s ({total / 60:.1f} min)."]
    blocks = doc_blocks()
    lines += [
        "",
        f"The code blocks of README.md and docs/*.md that a newcomer copies from: {blocks['run']} are run by the "
        f"tests (`tests/test_docs.py`), {blocks['illustrative']} are marked illustrative (they need a model "
        f"server, or minutes of training, or make a virtual environment: the steps above time those), "
        f"{blocks['checked']} JSON examples are parsed and checked against what the code writes, and "
        f"{blocks['output']} show output.",
    ]
    return "\n".join(lines)


def doc_blocks() -> dict[str, int]:
    """How many code blocks of the docs the tests run, and how many are illustrative (``tests/test_docs.py``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_docs import tally

    totals: dict[str, int] = {}
    for counter in tally().values():
        for key, value in counter.items():
            totals[key] = totals.get(key, 0) + value
    return {key: totals.get(key, 0) for key in ("run", "illustrative", "checked", "output")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="budgetctl-newcomer-"))
    try:
        steps = measure(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = render(steps, os.getloadavg())
    print(text)
    if not args.no_write:
        write_section(DOC, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
