"""Start-up benchmark: what ``import budgetctl`` plus a rule spec costs, and what ``budgetctl ask`` adds to its answer.

1. Import time: ``python -X importtime -c "import budgetctl; parse_policy('ac:threshold=0.95')"``
   against ``python -X importtime -c "import numpy"`` (numpy is a core dependency, so it is the
   floor), in alternating fresh interpreters; the figure is the sum of the cumulative times of the
   imports the statement makes (the top-level entries after interpreter start-up). Also the wall
   time of each command minus that of ``python -c pass``.
2. ``budgetctl ask`` against the replay server (``budgetctl serve`` in a subprocess, the ESC
   last-letters pool when ../shared/traces has it, else the bundled demo pool): the command's wall
   time minus the ``elapsed`` it reports (interpreter start-up, imports, argument parsing, the
   sampler's construction and the exit), next to the wall time of ``python -c pass``.

Target: the import at most 2x ``import numpy``.

    python benchmarks/startup.py            # measures, prints, rewrites its part of docs/benchmarks.md
    python benchmarks/startup.py --quick    # fewer runs, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "simulations"))
from benchdoc import write_part  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## Start-up"
PART = "### Import and command-line start-up"
TARGET_RATIO = 2.0
BUDGETCTL = "import budgetctl; from budgetctl.policies import parse_policy; parse_policy('ac:threshold=0.95')"
NUMPY = "import numpy"
SHARED = ROOT.parent / "shared" / "traces" / "esc_lastletters_gpt35.jsonl"
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def import_us(code: str) -> float:
    """Microseconds of imports that ``code`` makes in a fresh interpreter (top-level cumulative times after site)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    total, after_site = 0, False
    for line in done.stderr.splitlines():
        found = _LINE.match(line)
        if found is None or found.group(3) != " ":  # only top-level imports (one space of indentation)
            continue
        if after_site:
            total += int(found.group(2))
        elif found.group(4) == "site":
            after_site = True
    return float(total)


def wall_s(argv: list[str]) -> float:
    """Seconds a command takes from start to exit."""
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, env=_env(), check=True)
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _question(pool: Path) -> str:
    from budgetctl._pool import load_pool

    return next(q.text for q in load_pool([str(pool)]).questions if q.text)


def measure_ask(runs: int) -> tuple[list[float], list[float], str]:
    """``budgetctl ask`` wall times and reported elapsed times against a replay server, and the pool used."""
    from budgetctl._pool import demo_pool_path

    pool = SHARED if SHARED.exists() else Path(demo_pool_path())
    port = _free_port()
    serve = [sys.executable, "-m", "budgetctl", "serve", str(pool), "--port", str(port)]
    serve += ["--ttft-ms", "80", "--ms-per-token", "15"]
    server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the replay server did not start") from None
                time.sleep(0.2)
        question = _question(pool)
        argv = [sys.executable, "-m", "budgetctl", "ask", "--base-url", f"http://127.0.0.1:{port}/v1"]
        argv += ["--model", "replay", "--deadline", "5", "--json", question]
        walls, elapsed = [], []
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
            walls.append(time.perf_counter() - started)
            elapsed.append(float(json.loads(done.stdout)["elapsed"]))
        return walls, elapsed, pool.name
    finally:
        server.terminate()
        server.wait(timeout=30)


Ask = tuple[list[float], list[float], str]


def render(command: str, rows: dict[str, list[float]], ask: Ask, load: tuple[float, float]) -> str:
    """The docs part: the import table and the ``ask`` overhead."""
    med = {name: statistics.median(values) for name, values in rows.items()}
    ratio = med["budgetctl_us"] / med["numpy_us"]
    numpy_wall = (med["numpy_wall"] - med["pass_wall"]) * 1000
    budgetctl_wall = (med["budgetctl_wall"] - med["pass_wall"]) * 1000
    walls, elapsed, pool = ask
    overhead = [w - e for w, e in zip(walls, elapsed, strict=True)]
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    spec = '`import budgetctl` + `parse_policy("ac:threshold=0.95")`'
    return f"""{PART}

`{command}`: {len(rows["numpy_us"])} fresh interpreters per figure, alternating, medians; Python
{platform.python_version()}, {os.cpu_count()} CPUs shared with other work (load average {load[0]:.1f} at
the start, {load[1]:.1f} at the end).

| what | import time (`-X importtime`) | wall time minus `python -c pass` |
|---|---|---|
| `import numpy` | {med["numpy_us"] / 1000:.1f} ms | {numpy_wall:.0f} ms |
| {spec} | {med["budgetctl_us"] / 1000:.1f} ms | {budgetctl_wall:.0f} ms |
| ratio | {ratio:.2f}x (target at most {TARGET_RATIO:g}x: {verdict}) | {budgetctl_wall / numpy_wall:.2f}x |

The rule spec imports no scikit-learn, torch, openai, matplotlib or simulator (tests/test_startup.py
checks it); numpy comes with the rule policies' vote posteriors.

`budgetctl ask --deadline 5 --json` against `budgetctl serve` ({pool}, 80 ms to the first token,
15 ms per token), {len(walls)} runs: wall time {statistics.median(walls):.2f} s against the
{statistics.median(elapsed):.2f} s `elapsed` it reports, so {statistics.median(overhead):.2f} s (median;
{min(overhead):.2f}-{max(overhead):.2f} s) is spent outside the run: interpreter start-up
({med["pass_wall"]:.2f} s for `python -c pass`), importing budgetctl, importing openai when the
sampler is made (`python -c "import openai"` alone takes {med["openai_wall"] - med["pass_wall"]:.2f} s more than
`python -c pass` here), argument parsing and exit.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs, print only (no docs written)")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 15
    before = os.getloadavg()[0]
    names = ("numpy_us", "budgetctl_us", "pass_wall", "numpy_wall", "budgetctl_wall", "openai_wall")
    rows: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        print(f"run {i + 1}/{runs}", flush=True)
        rows["numpy_us"].append(import_us(NUMPY))
        rows["budgetctl_us"].append(import_us(BUDGETCTL))
        rows["pass_wall"].append(wall_s([sys.executable, "-c", "pass"]))
        rows["numpy_wall"].append(wall_s([sys.executable, "-c", NUMPY]))
        rows["budgetctl_wall"].append(wall_s([sys.executable, "-c", BUDGETCTL]))
        rows["openai_wall"].append(wall_s([sys.executable, "-c", "import openai"]))
    print("budgetctl ask", flush=True)
    ask = measure_ask(3 if args.quick else 10)
    text = render("python benchmarks/startup.py", rows, ask, (before, os.getloadavg()[0]))
    if args.quick:
        print(text)
    else:
        write_part(DOC, SECTION, text)
        print(text)
        print(f"wrote {PART!r} to {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
