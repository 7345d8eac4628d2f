"""Event latency from a served fleet to an attached console under a log flood, and the log lines dropped.

A fleet process serves a control on a Unix socket (`fleet_tui.remote.server`) and publishes, like the
orchestrator forwarding its runs' output, 8 agents x 5,000 lines/s (batches of 50 lines every 10 ms per
agent), plus a probe `Notice` every 20 ms. The console side, in this process, is the real client
(`RemoteFleet`) reading `events()` as the console's event worker does. Latency is measured from the moment
the fleet published an event to the moment the client yields it decoded (both processes read the same
CLOCK_MONOTONIC). Target: probe p99 < 100 ms.

    python benchmarks/bench_attach.py              # 10 s of flood
    python benchmarks/bench_attach.py --seconds 5 --consoles 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

AGENTS = 8
LINES_PER_SECOND = 5_000
TICK_S = 0.01
PROBE_EVERY_S = 0.02
LINE = "compiling src/module_{n}.py ... ok " + "x" * 60  # ~100 characters, a typical build line


class FloodControl:
    """The part of `FleetControl` the server uses, with the orchestrator's non-blocking fan-out."""

    def __init__(self) -> None:
        from fake_fleet import sample_snapshot

        self.repo, self.forge_kind = "bench/flood", "local"
        self.snapshot = sample_snapshot()
        self._subscribers: list[tuple[list[Any], list[Any]]] = []

    async def events(self) -> AsyncIterator[Any]:
        import anyio

        items: list[Any] = [self.snapshot]
        waiter = [anyio.Event()]
        self._subscribers.append((items, waiter))
        while True:
            while items:
                yield items.pop(0)
            waiter[0] = anyio.Event()
            await waiter[0].wait()

    def publish(self, event: Any) -> None:
        for items, waiter in self._subscribers:
            items.append(event)
            waiter[0].set()


def serve(directory: Path, seconds: float) -> None:
    """The fleet process: serve, wait for the console(s), flood for `seconds`, then say so and stop."""
    import anyio

    from fleet_tui.model import Notice, RunLogLines
    from fleet_tui.remote.server import serving

    async def main() -> None:
        control = FloodControl()
        async with serving(control, directory) as server:
            print("serving", flush=True)
            while not control._subscribers:
                await anyio.sleep(0.01)
            batch = int(LINES_PER_SECOND * TICK_S)
            lines = tuple(LINE.format(n=n) for n in range(batch))
            start = time.monotonic()
            next_tick = next_probe = start
            probes = published_lines = 0
            while time.monotonic() - start < seconds:
                now = time.monotonic()
                if now >= next_probe:
                    control.publish(Notice(at=datetime.now(UTC), message=f"probe {probes} {time.monotonic()!r}"))
                    probes += 1
                    next_probe += PROBE_EVERY_S
                if now >= next_tick:
                    stamp = datetime.now(UTC)
                    for agent in range(AGENTS):
                        control.publish(RunLogLines(at=stamp, run_id=f"run-{agent}", lines=lines))
                        published_lines += len(lines)
                    next_tick += TICK_S
                await anyio.sleep(max(0.0, min(next_tick, next_probe) - time.monotonic()))
            elapsed = time.monotonic() - start
            dropped = sum(c.queue.dropped_lines for c in server.connections)
            control.publish(Notice(at=datetime.now(UTC), message="done " + json.dumps(
                {"published_lines": published_lines, "seconds": elapsed, "probes": probes,
                 "dropped_at_fleet": dropped})))
            with anyio.move_on_after(10):
                while server.connections:
                    await anyio.sleep(0.05)

    anyio.run(main)


def attach(directory: Path, consoles: int) -> list[dict[str, Any]]:
    """`consoles` attached clients, each reading events until the fleet says done."""
    import anyio

    from fleet_tui.model import Notice, RunLogLines
    from fleet_tui.remote import socket_path
    from fleet_tui.remote.client import RemoteFleet

    results: list[dict[str, Any]] = []

    async def one(name: str) -> None:
        client = RemoteFleet(socket_path(directory), console=name)
        probe_ms: list[float] = []
        log_ms: list[float] = []
        lines = 0
        summary: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            async for event in client.events():
                if isinstance(event, RunLogLines):
                    lines += len(event.lines)
                    log_ms.append((datetime.now(UTC) - event.at).total_seconds() * 1000)
                elif isinstance(event, Notice) and event.message.startswith("probe "):
                    sent = float(event.message.split()[2])
                    probe_ms.append((time.monotonic() - sent) * 1000)
                elif isinstance(event, Notice) and event.message.startswith("done "):
                    summary = json.loads(event.message[5:])
                    break
            await client.shutdown()
        results.append({"console": name, "probe_ms": probe_ms, "log_ms": log_ms, "lines": lines,
                        "dropped": client.dropped_lines, **summary})

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for n in range(consoles):
                tg.start_soon(one, f"bench-{n}")

    anyio.run(main)
    return results


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--consoles", type=int, default=1)
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve), args.seconds)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-attach-") as tmp:
        fleet = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--seconds", str(args.seconds)],
                                 stdout=subprocess.PIPE, text=True)
        assert fleet.stdout is not None
        assert fleet.stdout.readline().strip() == "serving"
        try:
            results = attach(Path(tmp), args.consoles)
        finally:
            fleet.wait(timeout=30)
    console_cpu = resource.getrusage(resource.RUSAGE_SELF)
    fleet_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"log flood: {AGENTS} agents x {LINES_PER_SECOND:,} lines/s for {args.seconds:g} s, "
          f"{args.consoles} attached console(s)")
    ok = True
    for result in results:
        probes = result["probe_ms"]
        rate = result["lines"] / result.get("seconds", args.seconds)
        print(f"  {result['console']}: probe events {len(probes)}/{result.get('probes', '?')}, latency "
              f"p50 {_pct(probes, 0.5):.1f} ms, p99 {_pct(probes, 0.99):.1f} ms, max {max(probes or [0]):.1f} ms; "
              f"log batches p50 {_pct(result['log_ms'], 0.5):.1f} ms, p99 {_pct(result['log_ms'], 0.99):.1f} ms")
        print(f"  {result['console']}: log lines delivered {result['lines']:,} of {result.get('published_lines', 0):,} "
              f"({rate:,.0f}/s), dropped {result['dropped']:,} (counted and shown in the console)")
        if probes and statistics.quantiles(probes, n=100)[98] >= 100:
            ok = False
    print(f"  CPU: fleet process {fleet_cpu.ru_utime + fleet_cpu.ru_stime:.1f} s, console process(es) "
          f"{console_cpu.ru_utime + console_cpu.ru_stime:.1f} s over {args.seconds:g} s of flood "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print("target p99 < 100 ms:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
