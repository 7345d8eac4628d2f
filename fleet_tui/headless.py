"""`fleet-tui --headless`: the same orchestrator with one structured line per event on stdout (JSON Lines),
for systemd, a container or a scheduled CI job. `--once` returns when nothing is left to do and no run is
live. SIGTERM and SIGINT stop dispatching and exit cleanly; live runs are left to be re-attached.

Exit codes, for a scheduler to act on: 0 nothing failed; 3 a forge action failed (push, open PR, review,
claim) at least once; 4 an issue went to needs-human (this wins over 3). A config error is 2, any other
error 1.

While it runs, the fleet is served on `fleet.sock` in its journal directory: a console started in the same
repository attaches to it (`fleet_tui.remote`)."""

from __future__ import annotations

import dataclasses
import enum
import json
import signal
import sys
from datetime import UTC, datetime
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
            ready=[s.pr for s in event.pull_status if s.ready],
            not_ready=[{"pr": s.pr, "why": _clean(s.why)} for s in event.pull_status if not s.ready],
            budget_stop=_clean(event.budget_stop),
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


EXIT_OK, EXIT_ACTION_FAILED, EXIT_NEEDS_HUMAN = 0, 3, 4


def _now() -> str:
    return datetime.now(UTC).isoformat()


def exit_code(orchestrator: Any) -> int:
    """4 when an issue went to needs-human during the run, else 3 when a forge action failed, else 0."""
    if getattr(orchestrator, "needs_human_raised", 0):
        return EXIT_NEEDS_HUMAN
    if getattr(orchestrator, "failed_actions", 0):
        return EXIT_ACTION_FAILED
    return EXIT_OK


async def host(orchestrator: Any, *, once: bool, out: TextIO, pm: bool = False, resume_budget: bool = False,
               log_lines: bool = True) -> int:
    """Ask for what the flags say (lift a spent budget, run the PM first), serve until the end, and return the
    exit code with a closing `Done` line."""
    if resume_budget:
        resume = getattr(orchestrator, "resume_budget", None)
        if resume is not None:
            await resume()
        else:  # an orchestrator without the intent: lift the budget pause it keeps in its journal
            journal = getattr(orchestrator, "journal", None)
            if journal is not None:
                journal.delete_kv("budget_paused_on")
        out.write(json.dumps({"at": _now(), "event": "BudgetResumed"}) + "\n")
    if pm:
        await orchestrator.run_pm()
    await serve(orchestrator, once=once, out=out, log_lines=log_lines)
    code = exit_code(orchestrator)
    out.write(json.dumps({"at": _now(), "event": "Done", "exit": code,
                          "failed_actions": getattr(orchestrator, "failed_actions", 0),
                          "needs_human_raised": getattr(orchestrator, "needs_human_raised", 0)}) + "\n")
    out.flush()
    return code


def run_headless(config: FleetConfig, *, repo_path: Path, state_dir: Path, once: bool = False,
                 out: TextIO | None = None, pm: bool = False, resume_budget: bool = False) -> int:
    """The `--headless` entry point; returns the exit code (see the module docstring). The fleet is served on
    its journal's socket meanwhile, so consoles can attach (`fleet-tui` in the same repository)."""
    from fleet_tui.orchestrator import build_fleet
    from fleet_tui.remote.server import serving_if_possible

    async def main() -> int:
        async with (build_fleet(config, repo_path=repo_path, state_dir=state_dir) as orchestrator,
                    serving_if_possible(orchestrator, orchestrator.journal.dir)):
            return await host(orchestrator, once=once, out=out or sys.stdout, pm=pm, resume_budget=resume_budget)

    return anyio.run(main)
