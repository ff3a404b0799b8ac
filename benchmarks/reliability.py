"""Reliability figures for docs/reliability.md: fuzz cases and failures per target, and kill -9 crash cycles.

Runs the fuzz targets of ``tests/fuzz_targets.py`` (the same as the test suite, with many more
examples) and counts, per target, the cases tried, those ending in a documented error, the raw
tracebacks (any other exception escaping) and the hangs (a case running past ``--hang-s``); then
runs ``tests/crash_harness.py``'s kill -9 crash-restart cycles with large events and counts the
complete events lost. Targets whose hardening is not in this checkout are listed as not run.

    python benchmarks/reliability.py                 # ~5 minutes on 2 busy cores; writes docs/reliability.md
    python benchmarks/reliability.py --examples 100 --cycles 5 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "simulations")]

from benchdoc import write_section  # noqa: E402
from crash_harness import crash_cycles  # noqa: E402
from fuzz_targets import TARGETS, Target  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"


class Hang(BaseException):
    """A case ran past the time limit (a BaseException, so no target's handler can swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: types.FrameType | None) -> None:
        raise Hang()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fuzz(target: Target, examples: int, hang_s: float, seed: int) -> dict[str, Any]:
    """Run ``examples`` generated cases through ``target``; count the outcomes."""
    counts = {"cases": 0, "documented": 0, "tracebacks": 0, "hangs": 0}
    first: dict[str, str] = {}
    started = time.perf_counter()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(target.strategy)
    def case(value: Any) -> None:
        counts["cases"] += 1
        try:
            with time_limit(hang_s):
                target.run(value)
        except Hang:
            counts["hangs"] += 1
            first.setdefault("hang", repr(value)[:120])
        except target.allowed:
            counts["documented"] += 1
        except Exception as error:  # a raw traceback for a user
            counts["tracebacks"] += 1
            first.setdefault(type(error).__name__, f"{error!s:.120}")

    from hypothesis import seed as hypothesis_seed

    hypothesis_seed(seed)(case)()
    return {**counts, "seconds": time.perf_counter() - started, "first": first}


def fuzz_table(examples: int, hang_s: float, seed: int) -> tuple[str, int]:
    lines = [
        "| target | cases | documented errors | raw tracebacks | hangs | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    bad = 0
    for target in TARGETS:
        missing = target.missing()
        if missing is not None:
            lines.append(f"| {target.name} | not run: {missing} | | | | |")
            continue
        row = fuzz(target, examples, hang_s, seed)
        bad += row["tracebacks"] + row["hangs"]
        lines.append(
            f"| {target.name} | {row['cases']:,} | {row['documented']:,} | {row['tracebacks']} | {row['hangs']} | "
            f"{row['seconds']:.0f} |"
        )
        notes += [f"* {target.name}: first {kind}: `{text}`" for kind, text in row["first"].items()]
        print(lines[-1], flush=True)
    return "\n".join(lines + (["", *notes] if notes else [])), bad


def crash_table(cycles: int, event_mib: float, seed: int) -> tuple[str, int]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "crash.jsonl"
        started = time.perf_counter()
        report = crash_cycles(path, cycles=cycles, event_bytes=int(event_mib * (1 << 20)), seed=seed)
        seconds = time.perf_counter() - started
        size = path.stat().st_size
    text = (
        "| cycles | event size | events written (write returned) | read back | complete events lost | "
        "torn lines skipped | of them kills inside write | torn tails ended by the next writer | file | seconds |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {report.cycles} | {event_mib:g} MiB | {report.written} | {report.read_back} | **{report.lost}** | "
        f"{report.torn} | {report.torn - report.torn_on_purpose} | {report.repaired} | {size / (1 << 20):,.0f} MiB | "
        f"{seconds:.0f} |"
    )
    print(text, flush=True)
    return text, report.lost


def hostile_inputs(folder: Path) -> list[tuple[str, Path]]:
    """The hostile files of the reliability checks, made in milliseconds (gzip members of 1 MiB each are valid .gz)."""
    import gzip
    import json

    def made(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    good = {"id": "q", "gold": "a", "samples": [{"answer": "a", "tokens": 5}]}
    pool_text = "".join(json.dumps({**good, "id": f"q{i}"}) + "\n" for i in range(2000)).encode()

    def half(data: bytes) -> bytes:
        return data[: len(data) // 2]

    return [
        ("128 MiB of newlines in 130 KB (.gz)", made("nl.jsonl.gz", gzip.compress(b"\n" * (1 << 20), 9) * 128)),
        ("one 2 GiB line in 2 MB (.gz)", made("line.jsonl.gz", gzip.compress(b"a" * (1 << 20), 9) * 2048)),
        ("one 80 MiB line (plain)", made("line.jsonl", b"a" * (80 << 20) + b"\n")),
        (
            "tokens 1e300",
            made("big.jsonl", json.dumps({**good, "samples": [{"answer": "a", "tokens": 1e300}]}).encode()),
        ),
        (
            "tokens of 4,000 digits",
            made("digits.jsonl", b'{"id": "q", "samples": [{"answer": "a", "tokens": ' + b"9" * 4000 + b"}]}"),
        ),
        ("JSON nested 100,000 deep", made("deep.jsonl", b"[" * 100_000 + b"]" * 100_000)),
        ("a truncated .gz", made("cut.jsonl.gz", half(gzip.compress(pool_text)))),
        ("a .gz that is not gzip", made("fake.jsonl.gz", json.dumps(good).encode())),
        ("a directory", folder),
    ]


def hostile_table() -> str:
    from budgetctl._pool import load_pool

    lines = ["| input | result | seconds |", "|---|---|---:|"]
    with tempfile.TemporaryDirectory() as name:
        for label, path in hostile_inputs(Path(name)):
            started = time.perf_counter()
            try:
                load_pool(path)
                outcome = "read (not refused!)"
            except Exception as error:  # the one line a user would see
                outcome = f"{type(error).__name__}: {str(error).replace(name, '…')}"
            lines.append(f"| {label} | `{outcome[:150]}` | {time.perf_counter() - started:.2f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=1000, help="cases per fuzz target (default 1000)")
    parser.add_argument("--hang-s", type=float, default=10.0, help="a case running longer is a hang (default 10)")
    parser.add_argument("--cycles", type=int, default=30, help="kill -9 crash-restart cycles (default 30)")
    parser.add_argument("--event-mib", type=float, default=4.0, help="size of each traced event (default 4 MiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/reliability.md alone")
    args = parser.parse_args(argv)
    command = "python benchmarks/reliability.py" + "".join(
        f" --{name.replace('_', '-')} {getattr(args, name)}"
        for name in ("examples", "hang_s", "cycles", "event_mib", "seed")
        if getattr(args, name) != parser.get_default(name)
    )
    hostile_text = hostile_table()
    fuzz_text, fuzz_bad = fuzz_table(args.examples, args.hang_s, args.seed)
    crash_text, lost = crash_table(args.cycles, args.event_mib, args.seed)
    if not args.no_write:
        write_section(
            DOC,
            "## Hostile files\n\n"
            f"`{command}`: `load_pool` on hostile files, with the default `ReadLimits`; what a user "
            "sees (the CLI prints the message as one line) and how long it takes to say it.\n\n" + hostile_text,
        )
        write_section(
            DOC,
            "## Fuzzing the input parsers\n\n"
            f"`{command}` ({args.examples:,} generated cases per target; a case running over {args.hang_s:g} s "
            "counts as a hang). Target: 0 raw tracebacks, 0 hangs.\n\n" + fuzz_text,
        )
        write_section(
            DOC,
            "## Kill -9 crash-restart cycles\n\n"
            f"`{command}`: each cycle a child process opens the trace, appends {args.event_mib:g} MiB events "
            "until it is killed with SIGKILL at a random moment of an event's turn (encoding, then writing it); "
            "every other cycle it first tears an event on purpose (as a kill inside `write` does). "
            "Target: 0 complete events lost.\n\n" + crash_text,
        )
        print(f"wrote {DOC}")
    return 1 if fuzz_bad or lost else 0


if __name__ == "__main__":
    sys.exit(main())
