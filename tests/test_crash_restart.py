"""Kill -9 a process writing a trace, restart it, append: no complete event is lost, torn lines are skipped."""

from __future__ import annotations

from pathlib import Path

from crash_harness import crash_cycles


def test_kill_9_restart_cycles_lose_no_complete_event(tmp_path: Path) -> None:
    path = tmp_path / "crashy.jsonl"
    report = crash_cycles(path, cycles=4, event_bytes=256 * 1024, seed=1)
    assert report.written >= report.cycles  # every child got at least one event down
    assert report.lost == 0
    # Each tear is skipped and named once; the tears made on purpose (every other cycle) are among them.
    assert report.torn >= report.torn_on_purpose == 2
    assert report.repaired >= report.torn_on_purpose - 1  # the last tear has no later writer to end it
