"""Cold-start benchmark: the first ``solve`` of a fresh process returns within its deadline plus a small slack.

``budgetctl serve`` replays the ESC last-letters pool (or, without ../shared/traces, the bundled
demo pool) at 80 ms to the first token and 15 ms per token, so no sample can arrive within 0.3 s.
Each of N fresh interpreters imports budgetctl, makes ``openai_chat(base_url, ...)`` (which imports
openai and the modules its first request needs, but makes no client), then times, with its own
clock, ``await bc.solve(sampler, deadline=0.3, concurrency=4)``: client creation, connection set-up
and the first requests all fall inside that call, and the run must end at the deadline. Lateness is
the caller's measured time minus 0.3 s; the target (issue 9) is a median of at most 20 ms.

    python benchmarks/cold_start.py            # measures, prints, rewrites its part of docs/benchmarks.md
    python benchmarks/cold_start.py --quick    # 5 processes, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
PART = "### Cold start: the first solve of a process"
DEADLINE = 0.3
TARGET_MS = 20.0
SHARED = ROOT.parent / "shared" / "traces" / "esc_lastletters_gpt35.jsonl"

#: What each fresh process runs: argv[1] is the base URL, argv[2] the question.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import anyio
import budgetctl as bc
from budgetctl.samplers import openai_chat
t1 = time.perf_counter()
sampler = openai_chat(sys.argv[1], "replay", sys.argv[2])
t2 = time.perf_counter()

async def main():
    started = time.perf_counter()
    result = await bc.solve(sampler, deadline=float(sys.argv[3]), concurrency=4)
    took = time.perf_counter() - started
    await sampler.aclose()
    return result, took

result, took = anyio.run(main)
print(json.dumps({"import": t1 - t0, "make": t2 - t1, "solve": took, "elapsed": result.elapsed,
                  "stop_reason": result.stop_reason, "samples": result.n_samples, "failed": result.n_failed}))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def measure(processes: int) -> tuple[list[dict[str, float | str | int]], str]:
    """One record per fresh process (its timings and how its run ended), and the pool served."""
    from budgetctl._pool import demo_pool_path, load_pool

    pool = SHARED if SHARED.exists() else Path(demo_pool_path())
    question = next(q.text for q in load_pool([str(pool)]).questions if q.text)
    port = _free_port()
    argv = [sys.executable, "-m", "budgetctl", "serve", str(pool), "--port", str(port)]
    argv += ["--ttft-ms", "80", "--ms-per-token", "15"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    try:
        limit = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > limit or server.poll() is not None:
                    raise RuntimeError("the replay server did not start") from None
                time.sleep(0.2)
        records = []
        for i in range(processes):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, f"http://127.0.0.1:{port}/v1", question, str(DEADLINE)],
                capture_output=True,
                text=True,
                env=_env(),
                check=True,
            )
            record = json.loads(done.stdout.strip().splitlines()[-1])
            records.append(record)
            print(f"process {i + 1}/{processes}: solve {record['solve'] * 1000:.1f} ms", flush=True)
        return records, pool.name
    finally:
        server.terminate()
        server.wait(timeout=30)


def render(command: str, records: list[dict[str, float | str | int]], pool: str, seconds: float) -> str:
    late = sorted((float(r["solve"]) - DEADLINE) * 1000 for r in records)
    outside = sorted((float(r["solve"]) - float(r["elapsed"])) * 1000 for r in records)
    median = statistics.median(late)
    p90 = int(0.9 * (len(late) - 1))
    inside = statistics.median(outside)
    imports = statistics.median(float(r["import"]) for r in records)
    make = statistics.median(float(r["make"]) for r in records)
    verdict = "met" if median <= TARGET_MS else "NOT met"
    reasons = sorted({str(r["stop_reason"]) for r in records})
    return f"""{PART}

`{command}`: {len(records)} fresh processes, Python {platform.python_version()}, {os.cpu_count()} CPUs
shared with other work, {seconds:.0f} s in all. `budgetctl serve` replays {pool} at 80 ms to
the first token and 15 ms per token. Each process makes `openai_chat(base_url, ...)` and times
`await bc.solve(sampler, deadline={DEADLINE}, concurrency=4)` with its own clock; client creation,
connection set-up and the first requests happen inside that call. Stop reasons: {", ".join(reasons)}.

| | median | p90 | max |
|---|---|---|---|
| return after the deadline (caller's clock - {DEADLINE} s) | {median:.1f} ms | {late[p90]:.1f} ms | {late[-1]:.1f} ms |
| caller's clock - `Result.elapsed` | {inside:.1f} ms | {outside[p90]:.1f} ms | {outside[-1]:.1f} ms |

Target: median at most {TARGET_MS:g} ms after the deadline ({verdict}). Outside the call (median),
{imports:.2f} s went to importing budgetctl and anyio and {make:.2f} s to making the sampler:
importing openai and the modules its first request needs, so that they do not hold the event loop
inside the run (before that change, they held it for over 0.4 s and the first solve returned about
0.27 s late on this machine).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 processes, print only (no docs written)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    records, pool = measure(5 if args.quick else 20)
    text = render("python benchmarks/cold_start.py", records, pool, time.perf_counter() - started)
    print(text)
    if not args.quick:
        write_part(DOC, SECTION, text)
        print(f"wrote {PART!r} to {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
