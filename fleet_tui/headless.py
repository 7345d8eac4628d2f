"""`fleet-tui --headless`: the same orchestrator with one structured line per event on stdout (JSON Lines),
for systemd, a container or a scheduled CI job. `--once` returns when nothing is left to do and no run is
live. SIGTERM and SIGINT stop dispatching and exit cleanly; live runs are left to be re-attached."""

from __future__ import annotations

import dataclasses
import enum
import json
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import anyio

from fleet_tui.config import FleetConfig
from fleet_tui.model import (
    Event,
    LoopState,
    NeedsHuman,
    Notice,
    RateLimited,
    RunChanged,
    RunLogLines,
    SnapshotPublished,
)
from fleet_tui.untrusted import line_for_terminal


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return line_for_terminal(value, 2000)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def event_record(event: Event) -> dict[str, Any]:
    """The one line an event becomes: small, flat where possible, every string sanitized."""
    record: dict[str, Any] = {"at": event.at.isoformat(), "event": event.kind}
    if isinstance(event, SnapshotPublished):
        record.update(
            proposals=[i.number for i in event.proposals],
            approved=[a.issue for a in event.approvals if a.verified],
            unverified=[{"issue": a.issue, "reason": _clean(a.reason)} for a in event.approvals if not a.verified],
            live_runs=[r.run_id for r in event.runs if r.state.live],
            pulls=[p.number for p in event.pulls],
            needs_human=[n.issue for n in event.needs_human],
            spend_usd=round(event.spend_today.cost_usd, 4), tokens_today=event.spend_today.tokens,
            paused=event.paused,
        )
    elif isinstance(event, RunChanged) and event.run is not None:
        run = event.run
        record.update(run_id=run.run_id, role=run.role.value, issue=run.issue, pr=run.pr, state=run.state.value,
                      attempt=run.attempt, round=run.qa_round, reason=_clean(run.reason),
                      tokens=run.usage.tokens, cost_usd=round(run.usage.cost_usd, 4))
    elif isinstance(event, RunLogLines):
        record.update(run_id=event.run_id, lines=[_clean(line) for line in event.lines])
    elif isinstance(event, (NeedsHuman, Notice, RateLimited, LoopState)):
        for item in dataclasses.fields(event):
            if item.name != "at":
                record[item.name] = _clean(getattr(event, item.name))
    return record


async def serve(orchestrator: Any, *, once: bool, out: TextIO, log_lines: bool = True) -> None:
    """Host `orchestrator` until it ends (or a signal arrives), writing one line per event to `out`."""

    stream = orchestrator.events()

    async def printer() -> None:
        async for event in stream:
            if isinstance(event, RunLogLines) and not log_lines:
                continue
            out.write(json.dumps(event_record(event), ensure_ascii=False) + "\n")
            out.flush()

    async def signals() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                out.write(json.dumps({"event": "Signal", "signal": signal.Signals(signum).name}) + "\n")
                out.flush()
                await orchestrator.shutdown()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(printer)
        tg.start_soon(signals)
        await orchestrator.run(once=once)
        tg.cancel_scope.cancel()


def run_headless(config: FleetConfig, *, repo_path: Path, state_dir: Path, once: bool = False,
                 out: TextIO | None = None) -> int:
    """The `--headless` entry point; returns the exit code."""
    from fleet_tui.orchestrator import build_fleet

    async def main() -> None:
        async with build_fleet(config, repo_path=repo_path, state_dir=state_dir) as orchestrator:
            await serve(orchestrator, once=once, out=out or sys.stdout)

    anyio.run(main)
    return 0
