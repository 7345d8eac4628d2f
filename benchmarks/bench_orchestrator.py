"""How fast the orchestrator reacts and decides: approve-to-dispatch latency and `reconcile()` time.

1. Approve-to-dispatch: from the operator's approve intent (`Orchestrator.approve`, which writes the label as
   the operator and pins the approval) to the dev run's `RunChanged` event in state starting/running: the
   wake, one observe, the claim (the forge's lease, label, marker comment), the workspace clone and the dispatch.
   Measured on the local forge and on the fake GitHub over loopback (no write spacing, so it is the fleet's
   own cost, not GitHub's), local runner, scripted engine. The poll interval is 60 s: only the wake counts.
2. `reconcile()` on a snapshot of 5,000 open issues (proposed / approved and claimed / in progress) and
   500 open PRs with QA runs, median of N runs.

Run: `python benchmarks/bench_orchestrator.py [samples] [reconcile_runs]` (defaults 40 and 11; about 20 s).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fleet_tui.config import (
    EngineConfig,
    FleetConfig,
    PolicyConfig,
    RoleConfig,
    RolesConfig,
)
from fleet_tui.git import git_sync
from fleet_tui.model import (
    Actor,
    AgentRun,
    Approval,
    Issue,
    LabelEvent,
    PullRequest,
    Role,
    RunChanged,
    RunState,
    Verdict,
)
from fleet_tui.reconcile import (
    ClaimRecord,
    Pin,
    RunRecord,
    Snapshot,
    reconcile,
    text_sha,
)

DEV_SCRIPT = {"dev": [{"print": "started"}, {"sleep": 600}, {"final": "never"}],
              "qa": [{"final": "VERDICT: pass"}], "pm": [{"final": "[]"}]}


def fleet_config(root: Path, samples: int) -> FleetConfig:
    script = root / "script.json"
    script.write_text(json.dumps(DEV_SCRIPT))
    engine = EngineConfig(kind="scripted", command=sys.executable, script=str(script))
    return FleetConfig(engines={"scripted": engine}, poll_interval_s=60,
                       roles=RolesConfig(dev=RoleConfig(max_concurrent=samples + 2)),
                       policy=PolicyConfig(max_live_runs=samples + 4))


@asynccontextmanager
async def local_fleet(root: Path, config: FleetConfig) -> AsyncIterator[Any]:
    from fleet_tui.forge.local import LocalForge
    from fleet_tui.orchestrator import Orchestrator
    from fleet_tui.runners.local import LocalRunner
    from fleet_tui.store import Journal
    from fleet_tui.workspace import WorkspaceManager

    repo = root / "project"
    repo.mkdir()
    git_sync("init", "-q", "-b", "main", cwd=repo)
    (repo / "README.md").write_text("# bench\n")
    git_sync("add", "-A", cwd=repo)
    git_sync("-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-q", "-m", "start",
             cwd=repo)
    journal = Journal.open(root / "journal")
    try:
        async with LocalForge(repo) as forge:
            yield Orchestrator(config, forge=forge, runner=LocalRunner(grace_s=0.5), journal=journal,
                               repo_path=repo, workspaces=WorkspaceManager(root / "ws"))
    finally:
        journal.close()


@asynccontextmanager
async def github_fleet(root: Path, config: FleetConfig) -> AsyncIterator[Any]:
    from fake_github import OPERATOR_LOGIN, open_github_forge

    from fleet_tui.orchestrator import Orchestrator
    from fleet_tui.runners.local import LocalRunner
    from fleet_tui.store import Journal
    from fleet_tui.workspace import WorkspaceManager

    config = config.model_copy(update={"approvers": [OPERATOR_LOGIN]})
    journal = Journal.open(root / "journal")
    try:
        async with open_github_forge(root) as (forge, server):
            checkout = root / "checkout"
            git_sync("clone", "-q", server.push_url, str(checkout), cwd=root)
            yield Orchestrator(config, forge=forge, runner=LocalRunner(grace_s=0.5), journal=journal,
                               repo_path=checkout, workspaces=WorkspaceManager(root / "ws"))
    finally:
        journal.close()


async def approve_latencies(make: Callable[[Path, FleetConfig], Any], samples: int) -> list[float]:
    """Seconds from each approve() call to its dev run's RunChanged(starting/running)."""
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        root = Path(tmp)
        config = fleet_config(root, samples)
        async with make(root, config) as orch:
            latencies: list[float] = []
            waiting: dict[int, anyio.Event] = {}
            stream = orch.events()

            async def watch() -> None:
                async for event in stream:
                    if isinstance(event, RunChanged) and event.run is not None and event.run.role == Role.DEV \
                            and event.run.state in (RunState.STARTING, RunState.RUNNING) \
                            and event.run.issue in waiting:
                        waiting.pop(event.run.issue).set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                tg.start_soon(orch.run)
                with anyio.fail_after(120):
                    while orch.ticks == 0:
                        await anyio.sleep(0.01)
                    for n in range(samples):
                        issue = await orch.forge.create_issue(f"Bench task {n}", f"Do {n}.", ["proposed"])
                        done = waiting[issue.number] = anyio.Event()
                        start = time.perf_counter()
                        await orch.approve(issue.number)
                        await done.wait()
                        latencies.append(time.perf_counter() - start)
                    for run in list(orch.journal.runs(live_only=True)):
                        await orch.stop_run(run.run_id)  # no agent outlives the benchmark
                    while orch.journal.runs(live_only=True):
                        await anyio.sleep(0.05)
                await orch.shutdown()
            return latencies


# --- reconcile on a big snapshot ------------------------------------------------------------------------


def big_snapshot(issues: int = 5000, pulls: int = 500) -> tuple[Snapshot, FleetConfig]:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    operator = Actor("octo-operator")
    config = FleetConfig(approvers=["octo-operator"])
    labels = config.labels
    found: list[Issue] = []
    approvals: dict[int, Approval] = {}
    pins: dict[tuple[int, str], Pin] = {}
    claims: dict[int, ClaimRecord] = {}
    prs: list[PullRequest] = []
    runs: list[RunRecord] = []
    for n in range(1, issues + 1):
        title, body = f"Task {n}", f"Body of task {n}\n" * 3
        kind = n % 4  # 0 proposed, 1 approved (not claimed yet), 2 claimed, 3 needs-human
        if kind == 0:
            found.append(Issue(n, title, body, labels=(labels.proposed,)))
            continue
        if kind == 3:
            found.append(Issue(n, title, body, labels=(labels.approved, labels.needs_human)))
            continue
        event = LabelEvent(f"ev{n}", "labeled", labels.approved, operator, now - timedelta(seconds=n))
        approvals[n] = Approval(n, labels.approved, event, True)
        pins[(n, event.event_id)] = Pin(n, event.event_id, text_sha(title), text_sha(body))
        if kind == 1:
            found.append(Issue(n, title, body, labels=(labels.approved,)))
            continue
        found.append(Issue(n, title, body, labels=(labels.approved, labels.in_progress)))
        branch = f"fleet/{n}-task-{n}"
        claims[n] = ClaimRecord(n, event.event_id, f"dev-{n}", branch)
        dev = AgentRun(f"dev-{n}", Role.DEV, n, RunState.SUCCEEDED, branch=branch, started_at=now)
        runs.append(RunRecord(dev, event_id=event.event_id, head_sha=f"{n:040x}", commits=1, lines_changed=10,
                              files=("app.py",), pushed=True))
        if len(prs) < pulls:
            number = issues + len(prs) + 1
            prs.append(PullRequest(number, title, f"Closes #{n}", branch, "main", f"{n:040x}", "", additions=8,
                                   deletions=2, changed_files=1, files=("app.py",)))
            qa = AgentRun(f"qa-{number}-1", Role.QA, n, RunState.SUCCEEDED, pr=number, qa_round=1, started_at=now)
            verdict = Verdict.PASS if n % 3 else Verdict.CHANGES
            runs.append(RunRecord(qa, head_sha=f"{n:040x}", verdict=verdict, posted=n % 5 != 0,
                                  findings=("add a test",) if verdict == Verdict.CHANGES else ()))
    snapshot = Snapshot(now=now, issues=tuple(found), approvals=approvals, pins=pins, pulls=tuple(prs),
                        runs=tuple(runs), claims=claims, fleet_login="fleet-bot", fleet_is_separate=True)
    return snapshot, config


def reconcile_times(runs: int) -> tuple[list[float], int, Snapshot]:
    snapshot, config = big_snapshot()
    times, count = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        count = len(reconcile(snapshot, config))
        times.append(time.perf_counter() - start)
    return times, count, snapshot


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    logging.getLogger("fleet_tui").setLevel(logging.ERROR)  # the stopped runs' notices are not the result
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    reconcile_runs = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    rows: list[tuple[str, str, str, str]] = []
    for name, make in (("local forge", local_fleet), ("fake GitHub (loopback)", github_fleet)):
        lat = anyio.run(approve_latencies, make, samples)
        rows.append((f"approve -> dispatch, {name}", f"{statistics.median(lat) * 1000:.0f} ms",
                     f"{pct(lat, 0.99) * 1000:.0f} ms", f"n={len(lat)}"))
    times, count, snapshot = reconcile_times(reconcile_runs)
    rows.append((f"reconcile(), {len(snapshot.issues)} issues / {len(snapshot.pulls)} PRs",
                 f"{statistics.median(times) * 1000:.1f} ms", f"{max(times) * 1000:.1f} ms (max)",
                 f"n={len(times)}, {count} actions"))
    widths = [max(len(r[i]) for r in [("measure", "p50", "p99", "samples"), *rows]) for i in range(4)]
    for row in [("measure", "p50", "p99", "samples"), *rows]:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)))


if __name__ == "__main__":
    main()
