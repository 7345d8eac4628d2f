"""The orchestrator: the level-triggered loop (observe -> reconcile -> execute -> publish), the event fan-out
to the console or `--headless`, and the operator intents of `FleetControl`. Its parts live beside it:
observing the forge (`observe.py`), executing actions (`execute.py`), supervising runs (`supervise.py`),
all sharing one `FleetContext`. It never imports Textual.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc

from fleet_tui.config import FleetConfig
from fleet_tui.context import FleetContext, now_utc
from fleet_tui.control import Detail
from fleet_tui.execute import ActionExecutor
from fleet_tui.forge.base import Forge, ForgeError, RateLimitedError, standing_label_event
from fleet_tui.model import (
    Event,
    NeedsHuman,
    PullRequest,
    RateLimited,
    RunChanged,
    RunLogLines,
    RunState,
    SnapshotPublished,
)
from fleet_tui.observe import ForgeObserver
from fleet_tui.reconcile import (
    Action,
    Claim,
    Cleanup,
    DispatchDev,
    DispatchFix,
    DispatchQA,
    Kill,
    Propose,
    Snapshot,
    reconcile,
)
from fleet_tui.runners.base import Runner
from fleet_tui.supervise import RunSupervisor

log = logging.getLogger("fleet_tui.orchestrator")

QUEUE_LIMIT = 500  # events a subscriber may fall behind by before log lines are dropped
_PR_ISSUE_RE = re.compile(r"<!-- fleet:issue=(\d+) -->")


# --- event fan-out ------------------------------------------------------------------------------------


class _Subscriber:
    """A bounded queue: log batches are dropped first when the reader is slow; a new snapshot replaces an
    unread older one, so the latest snapshot always arrives."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.items: deque[Event] = deque()
        self.limit = limit
        self.ready = anyio.Event()
        self.dropped = 0
        self.closed = False

    def put(self, event: Event) -> None:
        if isinstance(event, SnapshotPublished):
            self.items = deque(e for e in self.items if not isinstance(e, SnapshotPublished))
        self.items.append(event)
        while len(self.items) > self.limit:
            victim = next((e for e in self.items if isinstance(e, RunLogLines)), None)
            if victim is None:
                victim = next((e for e in self.items if isinstance(e, RunChanged)), None)
            if victim is None:
                break
            self.items.remove(victim)
            self.dropped += 1
        self.ready.set()



class Orchestrator:
    """Hosts the fleet: the console and `--headless` both drive this object through `FleetControl`."""

    def __init__(
        self,
        config: FleetConfig,
        *,
        forge: Forge,
        runner: Runner,
        journal: Any,  # fleet_tui.store.Journal
        workspaces: Any,  # fleet_tui.workspace.WorkspaceManager
        repo_path: Path,
        engine_factory: Callable[[str, FleetConfig], Any] | None = None,
        pm_mode: Literal["engine", "builtin"] = "engine",
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.config = config
        self.forge = forge
        self.runner = runner
        self.journal = journal
        self.workspaces = workspaces
        self.repo_path = Path(repo_path)
        self.repo = forge.repo
        self.forge_kind = forge.kind
        self.clock = clock
        if engine_factory is None:
            from fleet_tui.engines import make_engine

            engine_factory = make_engine
        self._subscribers: list[_Subscriber] = []
        self._wake = anyio.Event()
        self._stopping = False
        self._started = False
        self._last: SnapshotPublished | None = None
        self.ctx = FleetContext(config=config, forge=forge, runner=runner, journal=journal, workspaces=workspaces,
                                repo_path=self.repo_path, publish=self.publish, wake=self.wake, clock=clock,
                                approvers=list(config.approvers))
        self.executor = ActionExecutor(self.ctx, observer=None, pm_mode=pm_mode)  # type: ignore[arg-type]
        self.supervisor = RunSupervisor(self.ctx, engine_factory, self.executor.create_proposals)
        self.observer = ForgeObserver(self.ctx, self.supervisor.live_run)
        self.executor.observer = self.observer
        self.executor.supervisor = self.supervisor
        self.ticks = 0

    # --- FleetControl: events ----------------------------------------------------------------------

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on (the latest snapshot first). The subscription starts at this call."""
        sub = _Subscriber()
        self._subscribers.append(sub)
        if self._last is not None:
            sub.put(self._last)
        return self._drain(sub)

    async def _drain(self, sub: _Subscriber) -> AsyncIterator[Event]:
        try:
            while not sub.closed or sub.items:
                if not sub.items:
                    sub.ready = anyio.Event()
                    await sub.ready.wait()
                    continue
                yield sub.items.popleft()
        finally:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(sub)

    def publish(self, event: Event) -> None:
        if isinstance(event, SnapshotPublished):
            self._last = event
        for sub in list(self._subscribers):
            sub.put(event)

    def wake(self) -> None:
        self._wake.set()

    # --- FleetControl: the loop ----------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> None:
        """Run until `shutdown()`; with `once`, until nothing is left to do and no run is live."""
        self._stopping = False
        async with anyio.create_task_group() as tg:
            self.supervisor.bind(tg)
            try:
                await self.start()
                while not self._stopping:
                    self._wake = anyio.Event()
                    actions = await self.tick()
                    busy = [a for a in actions if not isinstance(a, Cleanup)]
                    if once and not busy and not len(self.supervisor):
                        break  # nothing left to do and no run is live
                    if busy and not self._stopping:
                        continue  # act on the consequences at once
                    with anyio.move_on_after(self.config.poll_interval_s):
                        await self._wake.wait()
            finally:
                self._stopping = True
                self.supervisor.detach_all()  # leave the processes themselves to be re-attached
                tg.cancel_scope.cancel()
        for sub in self._subscribers:
            sub.closed = True
            sub.ready.set()

    async def shutdown(self) -> None:
        self._stopping = True
        self.wake()

    async def start(self) -> None:
        """Identities, labels, and re-attachment of runs a previous process left behind."""
        if self._started:
            return
        self._started = True
        fleet = await self.forge.fleet_identity()
        operator = await self.forge.operator_identity()
        ctx = self.ctx
        ctx.fleet_login = fleet.login
        ctx.operator_login = operator.login
        ctx.fleet_separate = fleet.login.lower() != operator.login.lower()
        if not ctx.approvers and self.forge.kind == "local":
            ctx.approvers = [operator.login]
        ctx.base = getattr(self.forge, "base_branch", "") or self.config.forge.base_branch or "main"
        labels = self.config.labels
        try:
            await self.forge.ensure_labels([labels.proposed, labels.approved, labels.in_progress,
                                            labels.needs_human, labels.rejected])
        except ForgeError as exc:
            self.ctx.notice(f"cannot create the fleet's labels: {exc}", "warning")
        await self.supervisor.reattach()

    async def tick(self) -> list[Action]:
        """One pass: observe, reconcile, execute, publish. Errors become notices; the loop goes on."""
        self.ticks += 1
        self.supervisor.settle_unsupervised()
        try:
            snapshot = await self.observer.observe()
        except RateLimitedError as exc:
            self.publish(RateLimited(at=self.clock(), until=exc.until, reason=str(exc)))
            return []
        except Exception as exc:
            log.exception("observe failed")
            self.ctx.notice(f"cannot read the forge: {exc}", "error")
            return []
        actions = reconcile(snapshot, self.config)
        actions.sort(key=lambda a: 0 if isinstance(a, Kill) else 1)
        executed: list[Action] = []
        for action in actions:
            if self._stopping and isinstance(action, (Claim, DispatchDev, DispatchFix, DispatchQA, Propose)):
                continue
            try:
                await self.executor.execute(action)
                executed.append(action)
            except Exception as exc:
                log.exception("action %r failed", action)
                self.ctx.notice(f"{type(action).__name__} failed: {exc}", "error")
        await self._publish_snapshot(snapshot)
        return executed

    async def _publish_snapshot(self, snapshot: Snapshot) -> None:
        labels = self.config.labels
        live = self.supervisor.live_runs()
        live_ids = {run.run_id for run in live}
        runs = tuple(live) + tuple(r.run for r in snapshot.runs if r.run_id not in live_ids)
        flagged = tuple(
            NeedsHuman(at=snapshot.now, issue=i.number, reason=self.journal.get_kv(f"nh:{i.number}", "") or "")
            for i in snapshot.issues if i.has_label(labels.needs_human))
        self.publish(SnapshotPublished(
            at=snapshot.now,
            proposals=tuple(i for i in snapshot.issues if i.has_label(labels.proposed)),
            approvals=tuple(snapshot.approvals.values()),
            runs=runs,
            pulls=snapshot.pulls,
            needs_human=flagged,
            rate=self.forge.rate_limit,
            spend_today=snapshot.spend_day,
            paused=snapshot.paused or (snapshot.budget_paused_on is not None
                                       and snapshot.budget_paused_on >= snapshot.now.date()),
        ))

    # --- FleetControl: operator intents ---------------------------------------------------------------

    async def approve(self, issue: int) -> None:
        labels = self.config.labels
        current = await self.forge.get_issue(issue)
        operator = await self.forge.operator_identity()
        for label in (labels.needs_human, labels.proposed, labels.rejected):
            if current.has_label(label):
                await self.forge.remove_label(issue, label)
        if current.has_label(labels.approved):
            await self.forge.remove_label(issue, labels.approved)  # a fresh approval event for the text shown
        await self.forge.add_labels(issue, [labels.approved], as_operator=True)
        event = standing_label_event(await self.forge.label_events(issue), labels.approved)
        if event is None:
            raise ForgeError(f"approving #{issue}: the approval label did not stick; try again")
        self.journal.pin_approval(issue, event.event_id, title=current.title, body=current.body,
                                  operator=operator.login)
        self.journal.append_event("approve", {"issue": issue, "event_id": event.event_id, "operator": operator.login})
        self.journal.delete_kv(f"retry:{issue}")
        self.ctx.flagged.discard(issue)
        self.observer.forget(issue)
        self.wake()

    async def reject(self, issue: int) -> None:
        labels = self.config.labels
        await self.forge.remove_label(issue, labels.proposed)
        if self.config.policy.reject_action == "close":
            await self.forge.close_issue(issue)
        else:
            await self.forge.add_labels(issue, [labels.rejected])
        self.journal.append_event("reject", {"issue": issue})
        self.wake()

    async def stop_run(self, run_id: str) -> None:
        await self.supervisor.kill(run_id, RunState.STOPPED, "stopped by the operator")
        self.wake()

    async def retry(self, issue: int) -> None:
        """Clear the needs-human stop: attempts and rounds count afresh from now."""
        self.journal.set_kv(f"retry:{issue}", self.clock().isoformat())
        await self.forge.remove_label(issue, self.config.labels.needs_human)
        self.journal.delete_kv(f"nh:{issue}")
        self.ctx.flagged.discard(issue)
        self.journal.append_event("retry", {"issue": issue})
        self.wake()

    async def run_pm(self) -> None:
        self.journal.set_kv("pm_requested", True)
        self.wake()

    async def set_paused(self, paused: bool) -> None:
        self.journal.set_kv("paused", paused)
        if not paused:
            self.journal.delete_kv("budget_paused_on")
        self.ctx.notice("dispatch paused" if paused else "dispatch resumed")
        self.wake()

    async def merge(self, pr: int) -> None:
        merge_as_human = getattr(self.forge, "merge_as_human", None)
        if self.forge.kind != "local" or merge_as_human is None:
            raise ForgeError(f"the fleet does not merge on {self.forge.kind}: merge PR #{pr} on the forge's "
                             "own page")
        sha = await merge_as_human(pr)
        self.journal.append_event("merge", {"pr": pr, "sha": sha})
        self.ctx.notice(f"merged PR #{pr}")
        self.wake()

    # --- FleetControl: reads -------------------------------------------------------------------------

    def log_path(self, run_id: str) -> Path | None:
        try:
            path = self.journal.log_path(run_id)
        except Exception:  # noqa: BLE001 - an odd run id has no log
            return None
        return path if path.exists() else None

    async def detail(self, *, issue: int | None = None, pr: int | None = None) -> Detail:
        found_issue = await self.forge.get_issue(issue) if issue is not None else None
        pull: PullRequest | None = await self.forge.get_pull(pr) if pr is not None else None
        if pull is None and found_issue is not None and self.observer.last is not None:
            claim = self.observer.last.claims.get(found_issue.number)
            if claim is not None:
                pull = await self.forge.find_pull(claim.branch)
        if found_issue is None and pull is not None:
            match = _PR_ISSUE_RE.search(pull.body)
            if match:
                with contextlib.suppress(ForgeError):
                    found_issue = await self.forge.get_issue(int(match.group(1)))
        diffstat = ""
        if pull is not None:
            diffstat = f"{pull.changed_files} files, +{pull.additions} -{pull.deletions}"
        return Detail(issue=found_issue, pull=pull, reviews=pull.reviews if pull else (),
                      comments=found_issue.comments if found_issue else (), diffstat=diffstat)



# --- wiring -------------------------------------------------------------------------------------------


@asynccontextmanager
async def build_fleet(config: FleetConfig, *, repo_path: Path, state_dir: Path | None,
                      pm_mode: Literal["engine", "builtin"] | None = None) -> AsyncIterator[Orchestrator]:
    """The orchestrator for `config`: forge and runner picked from it, the journal locked for this process.
    The PM is the built-in one when `roles.pm.engine = "builtin"` (or `pm_mode` says so)."""
    from fleet_tui.config import BUILTIN_PM
    from fleet_tui.store import Journal, journal_dir
    from fleet_tui.workspace import WorkspaceManager, parse_user

    if pm_mode is None:
        pm_mode = "builtin" if config.roles.pm.engine == BUILTIN_PM else "engine"
    repo_path = Path(repo_path)
    forge: Any
    if config.forge.kind == "github":
        import os

        from fleet_tui.config import resolve_token
        from fleet_tui.forge.github import GitHubForge
        from fleet_tui.logs import register_secret

        token, _ = resolve_token(config.forge)
        operator_token = os.environ.get(config.forge.operator_token_env) if config.forge.operator_token_env else None
        for secret in (token, operator_token):
            register_secret(secret)
        if not token and config.forge.app_id is None:
            raise ForgeError("no GitHub token: export GITHUB_TOKEN (or run `gh auth login`), or configure an App")
        forge = GitHubForge.from_config(config, token or "", operator_token or None)
        repo_id = config.forge.repo
    else:
        from fleet_tui.forge.local import LocalForge

        forge = LocalForge(repo_path, base_branch=config.forge.base_branch)
        repo_id = str(repo_path.resolve())
    runner: Any
    owner = None
    if config.runner.kind == "docker":
        from fleet_tui.runners.docker import DockerRunner

        runner = DockerRunner(config.runner)
        owner = parse_user(config.runner.user)
    else:
        from fleet_tui.runners.local import LocalRunner

        runner = LocalRunner()
    journal = Journal.open(journal_dir(state_dir, repo_id), lock=True)
    try:
        workspaces = WorkspaceManager(journal.dir / "workspaces", retention_h=config.runner.workspace_retention_h,
                                      owner=owner)
        async with forge:
            yield Orchestrator(config, forge=forge, runner=runner, journal=journal, workspaces=workspaces,
                               repo_path=repo_path, pm_mode=pm_mode)
    finally:
        journal.close()


__all__ = ["Orchestrator", "build_fleet"]
