"""The replay server under abuse: idle connections and 200 MB bodies in flight while a client asks valid questions.

Starts ``budgetctl serve`` in a subprocess (its own RSS and descriptor limit), measures its RSS
after warm-up, then opens ``--idle`` idle connections and keeps sending ``--body-mb`` MB request
bodies (declared with Content-Length, and chunked) from background threads while timing valid
requests on fresh connections; then stops the abuse and measures RSS again. Run twice by default:
with the process's descriptor limit, and with ``ulimit -n 256`` (the case where 300 idle
connections used to lock out every client). Writes its section of docs/benchmarks.md.

    PYTHONPATH=. python benchmarks/server_abuse.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
from benchdoc import write_section

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Q-abuse: What is two plus two?"
BODY = json.dumps({"model": "replay", "messages": [{"role": "user", "content": QUESTION}]}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ask(port: int) -> float:
    """Seconds for one valid request on a fresh connection (raises unless it is answered 200)."""
    started = time.perf_counter()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        assert response.status == 200
    return time.perf_counter() - started


def flood(port: int, megabytes: int, stop: threading.Event, counts: dict[str, int], chunked: bool) -> None:
    """Send ``megabytes`` MB bodies again and again until ``stop``; count bytes pushed and answers."""
    chunk = b"x" * 65536
    total = megabytes << 20
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if chunked:
                    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                else:
                    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total
                sock.sendall(head)
                sent = 0
                while sent < total and not stop.is_set():
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    sent += len(chunk)
                    counts["bytes"] += len(chunk)
                counts["finished_bodies"] += 1
        except OSError:
            counts["refused_bodies"] += 1  # the server answered 413 and closed while we were sending


def abuse(port: int, pid: int, idle: int, body_mb: int, requests: int) -> dict[str, Any]:
    """One round: idle connections and floods of big bodies while valid requests are timed; then RSS after it."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(idle)]
    stop = threading.Event()
    counts = {"bytes": 0, "finished_bodies": 0, "refused_bodies": 0}
    floods = [threading.Thread(target=flood, args=(port, body_mb, stop, counts, c), daemon=True) for c in (False, True)]
    for thread in floods:
        thread.start()
    peak = 0.0
    latencies = []
    time.sleep(0.2)
    for _ in range(requests):
        latencies.append(ask(port))
        peak = max(peak, rss_mib(pid))
        time.sleep(0.02)
    stop.set()
    for thread in floods:
        thread.join(timeout=10)
    open_idle = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            open_idle += sock.recv(1) != b""
        except BlockingIOError:
            open_idle += 1  # still open: nothing to read
        except OSError:
            pass
        sock.close()
    time.sleep(2.0)
    return {
        "latencies": latencies,
        "peak": peak,
        "after": rss_mib(pid),
        "open_idle": open_idle,
        "bytes": counts["bytes"],
        "bodies": counts["finished_bodies"] + counts["refused_bodies"],
    }


def run(idle: int, body_mb: int, nofile: int | None, requests: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="budgetctl-abuse-"))
    pool = workdir / "pool.jsonl"
    pool.write_text(json.dumps({"id": "q", "question": QUESTION, "samples": [{"answer": "4", "tokens": 5}]}) + "\n")
    port = free_port()

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "budgetctl", "serve", str(pool), "--port", str(port), "--log-level", "error"],
        env=env,
        preexec_fn=limit,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ask(port)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        for _ in range(200):  # warm-up as normal traffic: allocator, caches, code paths
            ask(port)
        clients = [threading.Thread(target=lambda: [ask(port) for _ in range(25)]) for _ in range(8)]
        for client in clients:  # and a few clients at once, as any server in use has seen
            client.start()
        for client in clients:
            client.join()
        time.sleep(0.5)
        baseline = rss_mib(server.pid)
        rounds = [abuse(port, server.pid, idle, body_mb, requests) for _ in range(2)]
        ask(port)
        first, second = rounds
        latencies = first["latencies"] + second["latencies"]
        return {
            "nofile": nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "idle": idle,
            "idle_open_at_end": first["open_idle"],
            "body_mb": body_mb,
            "pushed_mb": (first["bytes"] + second["bytes"]) / (1 << 20),
            "bodies": first["bodies"] + second["bodies"],
            "requests": len(latencies),
            "p50_ms": statistics.median(latencies) * 1000,
            "max_ms": max(latencies) * 1000,
            "within_50ms": sum(t <= 0.05 for t in latencies),
            "baseline_mib": baseline,
            "peak_mib": max(first["peak"], second["peak"]),
            "after_first_mib": first["after"],
            "after_mib": second["after"],
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--body-mb", type=int, default=200)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.idle + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 256), hard))
    rows = [run(args.idle, args.body_mb, None, args.requests), run(args.idle, args.body_mb, 256, args.requests)]
    for row in rows:
        print(json.dumps(row))
    lines = [
        "## Server limits under abuse",
        "",
        f"`budgetctl serve` (default limits: 1 MiB bodies, 10 s header deadline, connection cap half of `ulimit -n`, "
        f"at most 4,096) with {args.idle:,} idle connections open and {args.body_mb} MB request bodies sent without "
        "pause from two threads (one declared by Content-Length, one chunked), while a client asks "
        f"{args.requests} valid questions per round, each on a fresh connection; two rounds. "
        "RSS of the server process. "
        "Measured on the shared 2-core development machine.",
        "",
        "| ulimit -n | idle conns (still open at end) | body MB pushed (bodies) | valid answered | p50 ms | max ms | "
        "≤ 50 ms | RSS before → peak → after round 1 → after round 2 (MiB) | after / before | round 2 / round 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nofile']} | {r['idle']} ({r['idle_open_at_end']}) | {r['pushed_mb']:.0f} ({r['bodies']}) | "
            f"{r['requests']}/{r['requests']} | {r['p50_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{r['within_50ms']}/{r['requests']} | "
            f"{r['baseline_mib']:.1f} → {r['peak_mib']:.1f} → {r['after_first_mib']:.1f} → {r['after_mib']:.1f} | "
            f"{r['after_mib'] / r['baseline_mib']:.3f} | {r['after_mib'] / r['after_first_mib']:.3f} |"
        )
    lines += [
        "",
        "A body over the limit is answered 413 as soon as its Content-Length is read, or as soon as a chunked body "
        "passes 1 MiB, and the connection is closed: the 200 MB are never buffered. With `ulimit -n 256` the cap is "
        "128 connections, so the 1,000 idle ones are closed, longest-idle first, to make room for each new client "
        "(before these limits, 300 idle connections locked every client out). RSS after the abuse (2 s after "
        "the last abusive connection closed) is compared with the baseline of the server warmed up by normal "
        "traffic (200 requests one after another, then 8 clients at once, 25 requests each), never with 1,000 "
        "connections held. What stays: an idle connection that has sent nothing holds no h11 parser and no flow "
        "control (made on its first byte), which cut what 1,000 of them leave in Python's small-object arenas "
        "from about 5 MiB to 3 MiB; arenas stay mapped while any object in them lives, so part of that is kept, "
        "and a second round reuses it (round 2 / round 1 ≈ 1: nothing grows). Refused bodies leave glibc's heap "
        "about 2.5 MiB larger; after a burst (256 connections open at once, or 64 MiB read) the server calls "
        "`malloc_trim(0)` (Linux with glibc only) a second after the burst's connections close, which returns it. "
        "Command: `PYTHONPATH=. python benchmarks/server_abuse.py`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_doc:
        write_section(ROOT / "docs" / "benchmarks.md", text)


if __name__ == "__main__":
    main()
