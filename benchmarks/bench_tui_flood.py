"""Key press -> screen update latency and memory of the console under a log flood, against an idle baseline.

8 fake agents each write 5,000 lines/s for 20 s through the fake control's event stream (batches of 50 lines
every 10 ms per agent, the way an orchestrator forwards a run's output). Every 100 ms a real key event
(`down`/`up` in the Proposals pane) goes through the driver, and the time until the frame that shows the moved
cursor has been rendered to terminal output is recorded. Each scenario runs in its own process so memory
figures are not mixed.

    python benchmarks/bench_tui_flood.py            # flood 20 s, idle 10 s
    python benchmarks/bench_tui_flood.py --seconds 5 --idle-seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

AGENTS = 8
LINES_PER_SECOND = 5_000
TICK_S = 0.01
KEY_EVERY_S = 0.1
QUEUE_LIMIT = 2_000  # events the fake keeps for a slow reader before it drops the oldest, like the real control


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _terminal_sink() -> Any:
    """A Rich console writing to /dev/null: stands in for the terminal the frames would be written to."""
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), force_terminal=True, color_system="truecolor",
                   width=160, height=48)


def _flood_snapshot() -> Any:
    from fake_fleet import NOW, sample_snapshot

    from fleet_tui.model import AgentRun, Role, RunState, Usage

    snap = sample_snapshot()
    runs = tuple(
        AgentRun(f"run-{n:02d}", Role.DEV, 100 + n, RunState.RUNNING, started_at=NOW - timedelta(minutes=n),
                 usage=Usage(10_000 * n, 1_000 * n, 0, 0.1 * n))
        for n in range(AGENTS)
    )
    return replace(snap, runs=runs)


async def _scenario(flood: bool, seconds: float) -> dict[str, Any]:
    from fake_fleet import NOW, FakeFleet
    from textual import events

    from fleet_tui.config import FleetConfig
    from fleet_tui.model import RunLogLines
    from fleet_tui.tui.app import make_app

    fake = FakeFleet(_flood_snapshot())
    state = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    app = make_app(fake, FleetConfig(), state_dir=state, theme_dir=state, environ={}, platform="linux")
    output = _terminal_sink()
    frames = 0
    waiting: dict[str, Any] = {}

    async with app.run_test(size=(160, 48)) as pilot:
        while app.main.table("proposals").row_count < 2:
            await pilot.pause(0.01)
        table = app.main.table("proposals")
        original_display = app._display

        def display(screen: Any, renderable: Any) -> None:
            """Render every frame to terminal output, as a real terminal session would, and time the key's frame."""
            nonlocal frames
            original_display(screen, renderable)
            if renderable is None:
                return
            frames += 1
            if hasattr(renderable, "render_segments"):
                output.file.write(renderable.render_segments(output))
            target = waiting.get("row")
            if target is not None and table.cursor_row == target:
                waiting["done"].set_result(time.perf_counter())
                waiting.clear()

        app._display = display  # type: ignore[method-assign]

        produced = 0
        dropped = 0
        stop = asyncio.Event()

        async def producer() -> None:
            nonlocal produced, dropped
            per_tick = int(LINES_PER_SECOND * TICK_S)
            serial = 0
            queue = fake._queue
            next_tick = time.perf_counter()
            while not stop.is_set():
                for agent in range(AGENTS):
                    lines = tuple(f"agent {agent} line {serial + i}: compiling module_{i % 17}.py … ok"
                                  for i in range(per_tick))
                    fake.push(RunLogLines(at=NOW, run_id=f"run-{agent:02d}", lines=lines))
                    produced += per_tick
                    while queue.qsize() > QUEUE_LIMIT:
                        queue.get_nowait()
                        dropped += per_tick
                serial += per_tick
                next_tick += TICK_S
                await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))

        task = asyncio.create_task(producer()) if flood else None
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        driver = app._driver
        assert driver is not None
        start = time.perf_counter()
        next_key = start + 0.5
        next_rss = start
        direction = "down"
        while (now := time.perf_counter()) - start < seconds:
            if now >= next_rss:
                rss.append((now - start, _rss_mib()))
                next_rss += 1.0
            if now < next_key:
                await asyncio.sleep(min(next_key, next_rss) - now)
                continue
            next_key += KEY_EVERY_S
            row = table.cursor_row
            target = row + 1 if direction == "down" else row - 1
            waiting["row"] = target
            waiting["done"] = asyncio.get_running_loop().create_future()
            t0 = time.perf_counter()
            key = events.Key(direction, None)
            key.set_sender(app)
            driver.send_message(key)
            try:
                t1 = await asyncio.wait_for(waiting["done"], timeout=5)
            except TimeoutError:
                t1 = time.perf_counter()
                waiting.clear()
            latencies.append((t1 - t0) * 1000)
            direction = "up" if direction == "down" else "down"
        stop.set()
        if task is not None:
            await task
        log_lines = app.main.query_one("#log").line_count  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - start
    latencies.sort()
    warm = [mib for t, mib in rss if t >= min(5.0, seconds / 2)]
    return {
        "scenario": "flood" if flood else "idle",
        "seconds": round(elapsed, 1),
        "lines_per_s": round(produced / elapsed) if flood else 0,
        "dropped_lines": dropped,
        "keys": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "max_ms": round(latencies[-1], 1),
        "frames_per_s": round(frames / elapsed, 1),
        "log_widget_lines": log_lines,
        "rss_after_warmup_mib": round(warm[0], 1) if warm else None,
        "rss_end_mib": round(rss[-1][1], 1),
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }


def _run_child(mode: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--seconds", str(seconds)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the flood run")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="length of the idle baseline")
    parser.add_argument("--child", choices=("idle", "flood"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_scenario(args.child == "flood", args.seconds))))
        return 0
    results = [_run_child("idle", args.idle_seconds), _run_child("flood", args.seconds)]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    columns = ["scenario", "seconds", "lines_per_s", "dropped_lines", "keys", "p50_ms", "p99_ms", "max_ms",
               "frames_per_s", "log_widget_lines", "rss_after_warmup_mib", "rss_end_mib", "peak_rss_mib"]
    widths = [max(len(c), *(len(str(r[c])) for r in results)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for result in results:
        print("  ".join(str(result[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    flood = results[1]
    verdict = "meets" if flood["p99_ms"] < 100 else "misses"
    print(f"\nflood p99 {flood['p99_ms']} ms {verdict} the 100 ms target; RSS after warm-up "
          f"{flood['rss_after_warmup_mib']} MiB -> end {flood['rss_end_mib']} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
