"""Kill -9 crash-restart cycles of a trace writer, and a count of the complete events lost.

Each cycle starts a child process that opens the trace with :class:`~budgetctl.TraceWriter` (which
ends a torn tail left by the cycle before) and appends large events as fast as it can, reporting on
stdout the index of each event whose ``write`` has returned; the parent kills it with SIGKILL at a
random moment within one event's turn (encoding it, then writing it). Few of those moments fall
inside the ``write`` call itself (encoding takes longer), so every other cycle the child also tears
one event on purpose (writes its first half, as a kill inside ``write`` leaves it) before the kill.
Afterwards every reported event must read back, and every other line must be a torn line that
readers skip with a warning.

Used by ``tests/test_crash_restart.py`` (a few cycles) and ``benchmarks/reliability.py`` (many).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import budgetctl
from budgetctl._trace import TraceWarning, read_events

ROOT = Path(budgetctl.__file__).resolve().parent.parent

CHILD = """
import sys
from budgetctl._trace import TraceWriter
import json, time
path, run, size, tear = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
writer = TraceWriter(path)
print("repaired", writer.repaired is not None, flush=True)
payload = "y" * size
i = 0
while True:
    event = {"event": "sample", "run": run, "i": i, "at": 0.0, "answer": payload[i % 7:], "tokens": i}
    if tear and i == 2:
        line = json.dumps(event).encode()
        with open(path, "ab") as raw:
            raw.write(line[: len(line) // 2])
        print("torn", flush=True)
        time.sleep(60)
    writer.write(event)
    print(i, flush=True)
    i += 1
"""


@dataclass
class CrashReport:
    """What the cycles did, and what the readers got back."""

    cycles: int
    #: Events whose write returned before the kill (reported by the children).
    written: int
    #: Of those, how many read back.
    read_back: int
    #: Lines the readers skipped as torn (one per kill inside a write, and one per tear on purpose).
    torn: int
    #: Events torn on purpose.
    torn_on_purpose: int
    #: Opens that found a torn tail and ended it.
    repaired: int

    @property
    def lost(self) -> int:
        """Complete events that did not read back (the target: 0)."""
        return self.written - self.read_back


def crash_cycles(path: Path, *, cycles: int, event_bytes: int, seed: int = 0) -> CrashReport:
    """Run ``cycles`` kill -9 cycles appending ``event_bytes``-sized events to ``path``; see the module doc."""
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    reported: set[tuple[str, int]] = set()
    repaired = 0
    on_purpose = 0
    for cycle in range(cycles):
        run = f"c{cycle}"
        tear = cycle % 2 == 1
        on_purpose += tear
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), run, str(event_bytes), "1" if tear else "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        header = child.stdout.readline().split()
        if header != ["repaired", "False"] and header != ["repaired", "True"]:
            child.kill()
            child.wait()
            raise RuntimeError(f"crash child failed to start: {header}")
        repaired += header[1] == "True"
        # At least one event is down before the kill; without a tear, two, timing one event's turn
        # (encode, then write) so that the kill falls anywhere in the next one.
        seen: list[float] = []
        for line in child.stdout:
            if line.strip() == "torn":
                break
            reported.add((run, int(line)))
            seen.append(time.perf_counter())
            if not tear and len(seen) == 2:
                break
        interval = seen[1] - seen[0] if not tear else 0.02
        time.sleep(rng.uniform(0.0, interval))
        os.kill(child.pid, signal.SIGKILL)
        for line in child.stdout:
            if line.strip() and line.strip() != "torn":
                reported.add((run, int(line)))
        child.wait()
        child.stdout.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = {(e["run"], e["i"]) for e in read_events(path)}
    torn = sum(issubclass(w.category, TraceWarning) for w in caught)
    return CrashReport(
        cycles=cycles,
        written=len(reported),
        read_back=len(reported & events),
        torn=torn,
        torn_on_purpose=on_purpose,
        repaired=repaired,
    )
