"""The orchestrator: the level-triggered loop (observe -> reconcile -> execute -> publish) and the operator
intents of `FleetControl`. It owns run supervision (engine through runner, log file, live lines, usage),
idempotent forge writes (markers, PR-by-head), claims, re-attachment after a restart, and the event fan-out
to the console or `--headless`. It never imports Textual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import signal
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc

from fleet_tui.config import FleetConfig
from fleet_tui.control import Detail
from fleet_tui.engines.base import EngineResult, Task
from fleet_tui.forge.base import (
    Forge,
    ForgeError,
    RateLimitedError,
    judge_approval,
    marker,
    standing_label_event,
)
from fleet_tui.model import (
    AgentRun,
    Approval,
    Event,
    Issue,
    NeedsHuman,
    Notice,
    PullRequest,
    RateLimited,
    Role,
    RunChanged,
    RunLogLines,
    RunState,
    SnapshotPublished,
    Usage,
    Verdict,
)
from fleet_tui.reconcile import (
    Action,
    Claim,
    ClaimRecord,
    Cleanup,
    DispatchDev,
    DispatchFix,
    DispatchQA,
    Kill,
    MarkNeedsHuman,
    OpenPR,
    PauseForBudget,
    Pin,
    PostReview,
    Propose,
    RunRecord,
    Snapshot,
    reconcile,
    text_sha,
)
from fleet_tui.roles import dev as dev_role
from fleet_tui.roles import pm as pm_role
from fleet_tui.roles import qa as qa_role
from fleet_tui.runners.base import Runner

log = logging.getLogger("fleet_tui.orchestrator")

QUEUE_LIMIT = 500  # events a subscriber may fall behind by before log lines are dropped
LOG_BATCH_LINES = 50
LOG_BATCH_S = 0.2
_CLAIM_RE = re.compile(r"<!-- fleet:run=([A-Za-z0-9._-]+) -->")
_PR_ISSUE_RE = re.compile(r"<!-- fleet:issue=(\d+) -->")


def _now() -> datetime:
    return datetime.now(UTC)


def _short() -> str:
    return uuid.uuid4().hex[:6]


def _usage_minus(a: Usage, b: Usage) -> Usage:
    return Usage(max(0, a.input_tokens - b.input_tokens), max(0, a.output_tokens - b.output_tokens),
                 max(0, a.cached_tokens - b.cached_tokens), max(0.0, a.cost_usd - b.cost_usd))


def _findings_hash(findings: Iterable[str]) -> str:
    canon = sorted({" ".join(f.lower().split()) for f in findings})
    return hashlib.sha256("\n".join(canon).encode()).hexdigest()[:16]


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


# --- collaborators the orchestrator drives ---------------------------------------------------------


@dataclasses.dataclass
class _Live:
    """A run this orchestrator supervises right now."""

    run: AgentRun
    sup: Any = None  # fleet_tui.agents.AgentSupervisor
    log: Any = None  # fleet_tui.store.RunLog
    kill: tuple[RunState, str] | None = None
    usage: Usage = Usage()
    scope: anyio.CancelScope | None = None
    tests: Any = None  # the supervisor of the QA run's test command while it runs


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
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.config = config
        self.forge = forge
        self.runner = runner
        self.journal = journal
        self.workspaces = workspaces
        self.repo_path = Path(repo_path)
        self.repo = forge.repo
        self.forge_kind = forge.kind
        self.pm_mode = pm_mode
        self.clock = clock
        if engine_factory is None:
            from fleet_tui.engines import make_engine

            engine_factory = make_engine
        self._engine_factory = engine_factory
        self._subscribers: list[_Subscriber] = []
        self._wake = anyio.Event()
        self._stopping = False
        self._live: dict[str, _Live] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._fleet_login = ""
        self._fleet_separate = False
        self._operator_login = ""
        self._approvers: list[str] = list(config.approvers)
        self._flagged: set[int] = set()
        self._last: SnapshotPublished | None = None
        self._last_snapshot: Snapshot | None = None
        self._base = ""
        self._started = False
        self._titles: dict[str, str] = {}
        self._judged: dict[int, tuple[tuple[Any, ...], Approval | None]] = {}
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

    def _notice(self, message: str, level: Literal["info", "warning", "error"] = "info", bell: bool = False) -> None:
        (log.warning if level != "info" else log.info)("%s", message)
        self.publish(Notice(at=self.clock(), level=level, message=message, bell=bell))

    def wake(self) -> None:
        self._wake.set()

    # --- FleetControl: the loop ----------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> None:
        """Run until `shutdown()`; with `once`, until nothing is left to do and no run is live."""
        self._stopping = False
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self.start()
                while not self._stopping:
                    self._wake = anyio.Event()
                    actions = await self.tick()
                    busy = [a for a in actions if not isinstance(a, Cleanup)]
                    if once and not busy and not self._live:
                        break  # nothing left to do and no run is live
                    if busy and not self._stopping:
                        continue  # act on the consequences at once
                    with anyio.move_on_after(self.config.poll_interval_s):
                        await self._wake.wait()
            finally:
                self._stopping = True
                for live in self._live.values():
                    if live.scope is not None:
                        live.scope.cancel()  # leave the process itself to be re-attached
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
        self._fleet_login = fleet.login
        self._operator_login = operator.login
        self._fleet_separate = fleet.login.lower() != operator.login.lower()
        if not self._approvers and self.forge.kind == "local":
            self._approvers = [operator.login]
        self._base = getattr(self.forge, "base_branch", "") or self.config.forge.base_branch or "main"
        labels = self.config.labels
        try:
            await self.forge.ensure_labels([labels.proposed, labels.approved, labels.in_progress,
                                            labels.needs_human, labels.rejected])
        except ForgeError as exc:
            self._notice(f"cannot create the fleet's labels: {exc}", "warning")
        await self._reattach()

    async def _reattach(self) -> None:
        if self.runner.kind == "local":
            self._sweep_local_orphans()
        found = {r.run_id: r for r in await self.runner.find_runs()}
        for run in self.journal.runs(live_only=True):
            if run.run_id in self._live:
                continue
            if run.run_id in found:
                try:
                    ws = self.workspaces.open(run.run_id)
                    role_cfg = getattr(self.config.roles, run.role.value)
                    engine = self._engine_factory(role_cfg.engine, self.config)
                except Exception as exc:  # noqa: BLE001 - any failure means the run is lost to us
                    self._end_lost(run, f"cannot re-attach: {exc}")
                    continue
                live = self._make_live(run, engine)
                started = run.started_at.timestamp() if run.started_at else None
                self._notice(f"re-attached run {run.run_id}")
                self._spawn(live, ws, lambda live=live, ws=ws, role_cfg=role_cfg, started=started: live.sup.reattach(
                    live.run.run_id, scratch=ws.scratch, timeout_s=float(role_cfg.timeout_s), started_at=started))
            else:
                self._set_extras(run.run_id, interrupted=True)
                self._end_lost(run, "the run was gone when the orchestrator started")
        for run_id, live_run in found.items():
            if self.journal.get_run(run_id) is None:
                self._notice(f"a run {run_id} not in the journal is alive; stopping it", "warning")
                with contextlib.suppress(Exception):
                    handle = await self.runner.attach(run_id)
                    await handle.stop()
                    await self.runner.cleanup(run_id)

    def _sweep_local_orphans(self) -> None:
        """Kill what local runs of an earlier orchestrator process left running: a local agent leads its own
        session, so it outlives an orchestrator killed with SIGKILL, and a local run cannot be re-attached.
        Such processes are known by their HOME, which every engine puts inside the run's scratch dir."""
        keep = set(self._live)
        for pid, run_id in _processes_of_workspaces(Path(self.workspaces.root), os.getpid()):
            if run_id in keep:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                log.info("killed process %d left by run %s", pid, run_id)

    def _end_lost(self, run: AgentRun, reason: str) -> None:
        ended = dataclasses.replace(run, state=RunState.LOST, ended_at=self.clock(), reason=reason)
        self.journal.upsert_run(ended)
        self.publish(RunChanged(at=self.clock(), run=ended))

    async def tick(self) -> list[Action]:
        """One pass: observe, reconcile, execute, publish. Errors become notices; the loop goes on."""
        self.ticks += 1
        try:
            snapshot = await self.observe()
        except RateLimitedError as exc:
            self.publish(RateLimited(at=self.clock(), until=exc.until, reason=str(exc)))
            return []
        except Exception as exc:
            log.exception("observe failed")
            self._notice(f"cannot read the forge: {exc}", "error")
            return []
        actions = reconcile(snapshot, self.config)
        actions.sort(key=lambda a: 0 if isinstance(a, Kill) else 1)
        executed: list[Action] = []
        for action in actions:
            if self._stopping and isinstance(action, (Claim, DispatchDev, DispatchFix, DispatchQA, Propose)):
                continue
            try:
                await self.execute(action)
                executed.append(action)
            except Exception as exc:
                log.exception("action %r failed", action)
                self._notice(f"{type(action).__name__} failed: {exc}", "error")
        await self._publish_snapshot(snapshot)
        return executed

    # --- observe ------------------------------------------------------------------------------------

    async def observe(self) -> Snapshot:
        now = self.clock()
        labels = self.config.labels
        by_number: dict[int, Issue] = {}
        for label in (labels.proposed, labels.approved, labels.in_progress, labels.needs_human):
            for issue in await self.forge.list_issues(labels=[label]):
                by_number[issue.number] = issue
        approvals: dict[int, Approval] = {}
        pins: dict[tuple[int, str], Pin] = {}
        claims: dict[int, ClaimRecord] = {}
        for number, issue in by_number.items():
            if issue.has_label(labels.approved):
                approval = await self._judge_cached(issue)
                if approval is not None:
                    approvals[number] = approval
                    if approval.verified:
                        pins.update(self._pins_for(issue, approval))
            claim = self._claim_for(number, approvals.get(number))
            if claim is not None:
                claims[number] = claim
        pulls = tuple(await self.forge.list_pulls())
        records: dict[str, RunRecord] = {}
        for number in claims:
            retry_at = self._retry_at(number)
            for run in self.journal.runs(issue=number):
                if retry_at and run.started_at is not None and run.started_at < retry_at:
                    continue
                records[run.run_id] = self._record(run)
        for run in self.journal.runs(live_only=True):
            if run.run_id not in self._live:
                self._end_lost(run, "the run was not supervised (its start failed)")
                records.pop(run.run_id, None)
                continue
            records[run.run_id] = self._record(run)
        for run_id in self.journal.get_kv("open-workspaces", []):
            if run_id not in records:
                run = self.journal.get_run(run_id)
                if run is not None:
                    records[run_id] = self._record(run)
        day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        spend_issue = {n: self.journal.spend_for_issue(n) for n in claims}
        paused_on = self.journal.get_kv("budget_paused_on")
        self._flagged = {n for n in self._flagged if n in by_number and not by_number[n].has_label(labels.needs_human)}
        snapshot = Snapshot(
            now=now,
            issues=tuple(by_number.values()),
            approvals=approvals,
            pins=pins,
            pulls=pulls,
            runs=tuple(records.values()),
            claims=claims,
            spend_day=self.journal.spend_since(day_start),
            spend_issue=spend_issue,
            paused=bool(self.journal.get_kv("paused", False)),
            budget_paused_on=date.fromisoformat(paused_on) if paused_on else None,
            fleet_login=self._fleet_login,
            fleet_is_separate=self._fleet_separate,
            pm_requested=bool(self.journal.get_kv("pm_requested", False)) or self._pm_due(now),
            handled=frozenset(self._flagged),
        )
        self._last_snapshot = snapshot
        return snapshot

    def _pm_due(self, now: datetime) -> bool:
        """Whether the PM's schedule (`policy.pm_interval_s`, 0 = off) asks for a run now."""
        interval = self.config.policy.pm_interval_s
        if interval <= 0:
            return False
        last = self.journal.get_kv("pm_last_at")
        if not last:
            return True
        with contextlib.suppress(ValueError):
            return (now - datetime.fromisoformat(last)).total_seconds() >= interval
        return True

    def _retry_at(self, number: int) -> datetime | None:
        value = self.journal.get_kv(f"retry:{number}")
        return datetime.fromisoformat(value) if value else None

    def _fresh_id(self, candidate: str) -> str:
        """`candidate`, unless the journal already holds a run by that name (after a retry)."""
        run_id = candidate
        while self.journal.get_run(run_id) is not None:
            run_id = f"{candidate}-{_short()}"
        return run_id

    async def _judge_cached(self, issue: Issue) -> Approval | None:
        """`_judge`, read again only when the issue changed: a label event moves its `updated_at`, so an
        unchanged issue keeps its judged approval and a tick costs no timeline request per approved issue.
        Approvals that rest on a live permission check are judged afresh every time."""
        if issue.updated_at is None or self.config.policy.approvers_with_write:
            return await self._judge(issue.number)
        key = (issue.updated_at, tuple(sorted(issue.labels)))
        cached = self._judged.get(issue.number)
        if cached is not None and cached[0] == key:
            return cached[1]
        approval = await self._judge(issue.number)
        self._judged[issue.number] = (key, approval)
        return approval

    async def _judge(self, number: int) -> Approval | None:
        events = await self.forge.label_events(number)
        event = standing_label_event(events, self.config.labels.approved)
        if event is None:
            return None
        permission = None
        if self.config.policy.approvers_with_write:
            permission = await self.forge.permission(event.actor.login)
        return judge_approval(number, event, approvers=self._approvers, fleet_login=self._fleet_login,
                              fleet_is_separate=self._fleet_separate, permission=permission,
                              allow_write_permission=self.config.policy.approvers_with_write)

    def _pins_for(self, issue: Issue, approval: Approval) -> dict[tuple[int, str], Pin]:
        """The journal's pin of this approval; an approval first seen here (made on the forge's own page)
        is pinned to the text as first seen."""
        event_id = approval.event.event_id
        found = [p for p in self.journal.approval_pins(issue.number) if p.event_id == event_id]
        if not found:
            found = [self.journal.pin_approval(issue.number, event_id, title=issue.title, body=issue.body,
                                               operator=approval.event.actor.login)]
        pin = found[0]
        return {(issue.number, event_id): Pin(issue.number, event_id, pin.title_sha, pin.body_sha)}

    def _claim_for(self, number: int, approval: Approval | None) -> ClaimRecord | None:
        claims = self.journal.claims_for(number)
        if approval is not None:
            claims = [c for c in claims if c.approval_event_id == approval.event.event_id] or claims
        if not claims:
            return None
        claim = claims[-1]
        meta = self.journal.get_kv(f"claim:{number}:{claim.approval_event_id}") or {}
        if meta.get("foreign") or not meta.get("branch"):
            return None
        return ClaimRecord(number, claim.approval_event_id, claim.run_id, meta["branch"],
                           confirmed=bool(meta.get("confirmed")))

    def _extras(self, run_id: str) -> dict[str, Any]:
        return dict(self.journal.get_kv(f"run:{run_id}") or {})

    def _set_extras(self, run_id: str, **values: Any) -> None:
        extras = self._extras(run_id)
        extras.update(values)
        self.journal.set_kv(f"run:{run_id}", extras)
        if "workspace" in values:
            open_ws = [r for r in self.journal.get_kv("open-workspaces", []) if r != run_id]
            if values["workspace"]:
                open_ws.append(run_id)
            self.journal.set_kv("open-workspaces", open_ws)

    def _record(self, run: AgentRun) -> RunRecord:
        live = self._live.get(run.run_id)
        if live is not None:
            run = live.run
        extras = self._extras(run.run_id)
        verdict = extras.get("verdict")
        return RunRecord(
            run=run, event_id=extras.get("event_id", ""), head_sha=extras.get("head_sha", ""),
            commits=int(extras.get("commits", 0)), lines_changed=int(extras.get("lines", 0)),
            files=tuple(extras.get("files", ())), pushed=bool(extras.get("pushed")),
            verdict=Verdict(verdict) if verdict else None, findings=tuple(extras.get("findings", ())),
            posted=bool(extras.get("posted")), workspace=bool(extras.get("workspace")),
            interrupted=bool(extras.get("interrupted")),
        )

    async def _publish_snapshot(self, snapshot: Snapshot) -> None:
        labels = self.config.labels
        runs = tuple(live.run for live in self._live.values()) + tuple(
            r.run for r in snapshot.runs if r.run_id not in self._live)
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

    # --- execute ------------------------------------------------------------------------------------

    async def execute(self, action: Action) -> None:
        handler = getattr(self, f"_do_{type(action).__name__.lower()}")
        await handler(action)

    async def _do_claim(self, action: Claim) -> None:
        number = action.issue
        issue = await self.forge.get_issue(number)
        if text_sha(issue.title) != action.title_sha or text_sha(issue.body) != action.body_sha:
            return  # changed since observed: the next tick sees it
        existing = [c for c in self.journal.claims_for(number) if c.approval_event_id == action.event_id]
        run_id = existing[0].run_id if existing else f"dev-{number}-{_short()}"
        branch = self._branch(number, issue.title)
        key = f"claim:{number}:{action.event_id}"
        self.journal.set_kv(key, {"branch": branch, "run_id": run_id})
        self.journal.add_claim(number, action.event_id, run_id)
        run_id = next(c.run_id for c in self.journal.claims_for(number) if c.approval_event_id == action.event_id)
        self.journal.set_kv(key, {"branch": branch, "run_id": run_id})
        await self.forge.add_labels(number, [self.config.labels.in_progress])
        claim_marker = dev_role.claim_marker(number, action.event_id)
        await self.forge.post_comment(number, dev_role.claim_body(run_id) + "\n" + marker("run", run_id),
                                      claim_marker)
        # read back: the earliest claim comment for this approval stands; a later one stands down
        issue = await self.forge.get_issue(number)
        mine = sorted((c for c in issue.comments if claim_marker in c.body), key=lambda c: (c.created_at, c.id))
        winner = _CLAIM_RE.search(mine[0].body) if mine else None
        if winner is None or winner.group(1) != run_id:
            self.journal.set_kv(key, {"branch": branch, "run_id": run_id, "foreign": True})
            self._notice(f"issue #{number} is claimed by another orchestrator; standing down", "warning")
            return
        self.journal.set_kv(key, {"branch": branch, "run_id": run_id, "confirmed": True})
        self.journal.append_event("claim", {"issue": number, "event_id": action.event_id, "run_id": run_id})

    def _branch(self, number: int, title: str) -> str:
        try:
            from fleet_tui.workspace import branch_name
        except ImportError:  # pragma: no cover - the workspace layer is always shipped
            return f"fleet/{number}"
        return branch_name(number, title)

    async def _approved_issue(self, number: int, event_id: str) -> Issue | None:
        """The issue as approved, or None (and flagged) when it was edited after the approval."""
        issue = await self.forge.get_issue(number)
        pins = [p for p in self.journal.approval_pins(number) if p.event_id == event_id]
        if not pins or not pins[0].matches(issue.title, issue.body):
            await self._do_markneedshuman(MarkNeedsHuman(number, "edited after approval: approve again"))
            return None
        return issue

    async def _do_dispatchdev(self, action: DispatchDev) -> None:
        claim = self._claim_for(action.issue, None)
        if claim is None:
            return
        issue = await self._approved_issue(action.issue, action.event_id)
        if issue is None:
            return
        run_id = self._fresh_id(claim.run_id if action.attempt == 1 else f"{claim.run_id}-a{action.attempt}")
        prompt = dev_role.build_prompt(issue, approvers=self._approvers, branch=action.branch, base=self._base)
        await self._dispatch(Role.DEV, run_id, prompt, issue=action.issue, title=issue.title,
                             branch=action.branch, attempt=action.attempt, qa_round=0, existing=False,
                             extras={"event_id": action.event_id})

    async def _do_dispatchfix(self, action: DispatchFix) -> None:
        claim = self._claim_for(action.issue, None)
        if claim is None:
            return
        issue = await self._approved_issue(action.issue, action.event_id)
        if issue is None:
            return
        run_id = self._fresh_id(f"{claim.run_id}-r{action.round}" + (f"-a{action.attempt}" if action.attempt > 1 else ""))
        prompt = dev_role.build_fix_prompt(issue, approvers=self._approvers, branch=action.branch,
                                           round=action.round, findings=action.findings)
        await self._dispatch(Role.DEV, run_id, prompt, issue=action.issue, title=issue.title,
                             branch=action.branch, attempt=action.attempt, qa_round=action.round, existing=True,
                             pr=action.pr, extras={"event_id": action.event_id})

    async def _do_dispatchqa(self, action: DispatchQA) -> None:
        issue = await self.forge.get_issue(action.issue)
        pull = await self.forge.get_pull(action.pr)
        if pull.head_sha != action.head_sha:
            return  # a newer head arrived; the next tick reviews that one
        run_id = self._fresh_id(f"qa-{action.pr}-{action.round}" + (f"-a{action.attempt}" if action.attempt > 1 else ""))
        prompt = qa_role.build_prompt(issue, pull, round=action.round, test_command=self.config.policy.test_command)
        await self._dispatch(Role.QA, run_id, prompt, issue=action.issue, title=issue.title, branch=action.branch,
                             attempt=action.attempt, qa_round=action.round, existing=True, pr=action.pr,
                             extras={"head_sha": action.head_sha})

    async def _do_propose(self, action: Propose) -> None:
        self.journal.set_kv("pm_requested", False)
        self.journal.set_kv("pm_last_at", self.clock().isoformat())
        open_titles = [i.title for i in await self.forge.list_issues()]
        if self.pm_mode == "builtin":
            proposals = pm_role.builtin_proposals(self.repo_path, open_titles=open_titles, limit=action.slots)
            await self._create_proposals(proposals, action.slots)
            return
        readme, roadmap = pm_role.read_docs(self.repo_path)
        prompt = pm_role.build_prompt(repo=self.repo, readme=readme, roadmap=roadmap, open_titles=open_titles,
                                      slots=action.slots)
        run_id = f"pm-{self.clock().strftime('%Y%m%d%H%M%S')}-{_short()}"
        await self._dispatch(Role.PM, run_id, prompt, issue=None, title="proposals", branch=f"fleet/pm-{run_id}",
                             attempt=1, qa_round=0, existing=False, extras={"slots": action.slots})

    async def _create_proposals(self, proposals: list[pm_role.Proposal], slots: int) -> int:
        labels = self.config.labels
        waiting = await self.forge.list_issues(labels=[labels.proposed])
        room = min(slots, self.config.policy.max_open_proposals - len(waiting))
        existing = await self.forge.list_issues(state="all")
        made = 0
        for proposal in proposals:
            if made >= room:
                break
            tag = pm_role.proposal_marker(proposal)
            if any(tag in i.body for i in existing):
                continue
            await self.forge.create_issue(proposal.title, pm_role.render_proposal_body(proposal), [labels.proposed])
            made += 1
        if made:
            self._notice(f"the PM proposed {made} issue(s)")
        return made

    async def _dispatch(self, role: Role, run_id: str, prompt: str, *, issue: int | None, title: str,
                        branch: str, attempt: int, qa_round: int, existing: bool, pr: int | None = None,
                        extras: dict[str, Any] | None = None) -> None:
        role_cfg = getattr(self.config.roles, role.value)
        engine = self._engine_factory(role_cfg.engine, self.config)
        self._titles[run_id] = title
        run = AgentRun(run_id=run_id, role=role, issue=issue, state=RunState.QUEUED, pr=pr, branch=branch,
                       attempt=attempt, qa_round=qa_round, engine=role_cfg.engine, runner=self.runner.kind,
                       started_at=self.clock())
        self.journal.upsert_run(run)
        self._set_extras(run_id, **(extras or {}))
        try:
            await self._start_run(run, role_cfg, engine, prompt, existing=existing)
        except BaseException as exc:
            if run_id not in self._live:
                failed = dataclasses.replace(run, state=RunState.FAILED, ended_at=self.clock(),
                                             reason=f"cannot start: {exc}"[:300])
                with anyio.CancelScope(shield=True):
                    self.journal.upsert_run(failed)
                self.publish(RunChanged(at=self.clock(), run=failed))
            raise

    async def _start_run(self, run: AgentRun, role_cfg: Any, engine: Any, prompt: str, *, existing: bool) -> None:
        run_id, role, issue, title, branch = run.run_id, run.role, run.issue, "", run.branch
        title = self._titles.pop(run_id, "")
        ws = await self.workspaces.create(run_id, self.repo_path, issue=issue, title=title, base=self._base,
                                          branch=branch, existing=existing)
        if role == Role.DEV:
            from fleet_tui.workspace import CommittingEngine

            engine = CommittingEngine(engine, f"Work on #{issue}", self.workspaces.author)
        self._set_extras(run_id, workspace=True)
        task = Task(run_id=run_id, role=role, prompt=prompt, issue=issue, title=title, branch=branch,
                    qa_round=run.qa_round)
        live = self._make_live(run, engine)
        network = role_cfg.network or self.config.runner.network
        spec = live.sup.build_spec(task, workspace=ws.repo, scratch=ws.scratch, timeout_s=float(role_cfg.timeout_s),
                                   network=network, labels={"fleet.run_id": run_id, "fleet.issue": str(issue or ""),
                                                            "fleet.role": role.value})
        live.run = dataclasses.replace(run, state=RunState.RUNNING)
        self.journal.upsert_run(live.run)
        command = self.config.policy.test_command.strip()
        if role == Role.QA and command:
            self._spawn(live, ws, lambda: self._tests_then_review(live, ws, task, command, role_cfg, spec))
        else:
            self._spawn(live, ws, lambda: live.sup.run(spec))

    async def _tests_then_review(self, live: _Live, ws: Any, task: Task, command: str, role_cfg: Any,
                                 spec: Any) -> Any:
        """QA: the repository's test command first, as its own run with no network; the review only when it
        passes (a failing suite already decides the verdict, and the fix round needs nothing more)."""
        from fleet_tui.agents import AgentSupervisor, RunOutcome

        run_id = live.run.run_id
        tests_id = f"{run_id}-tests"
        engine = qa_role.TestCommandEngine(command)
        sup = AgentSupervisor(self.runner, engine, log=live.log, publish=lambda batch: self._on_lines(live, batch))
        live.tests = sup
        test_task = dataclasses.replace(task, run_id=tests_id, prompt="")
        test_spec = sup.build_spec(test_task, workspace=ws.repo, scratch=ws.scratch,
                                   timeout_s=float(role_cfg.timeout_s), network="none",
                                   labels={"fleet.run_id": tests_id, "fleet.issue": str(task.issue or ""),
                                           "fleet.role": Role.QA.value})
        live.log.write(f"[fleet] running the test command: {command}")
        try:
            tests = await sup.run(test_spec)
        finally:
            live.tests = None
        passed = tests.state == RunState.SUCCEEDED
        self._set_extras(run_id, tests={"passed": passed, "exit_code": tests.exit_code, "state": tests.state.value,
                                        "output": tests.result.summary[-qa_role.TEST_TAIL_CHARS * 2:]})
        live.log.write(f"[fleet] the tests {'pass' if passed else 'fail'} ({tests.reason or tests.state.value})")
        if passed and live.kill is None:
            return await live.sup.run(spec)
        state = RunState.SUCCEEDED if tests.state == RunState.FAILED else tests.state
        return RunOutcome(run_id, state, tests.exit_code, Usage(), EngineResult(ok=state == RunState.SUCCEEDED),
                          "" if state == RunState.SUCCEEDED else tests.reason, tests.last_line, tests.started_at,
                          tests.ended_at, tests.lines)

    # --- supervision (fleet_tui.agents does the work; this keeps the journal and the events) ----------

    def _make_live(self, run: AgentRun, engine: Any) -> _Live:
        from fleet_tui.agents import AgentSupervisor, Budget

        role_cfg = getattr(self.config.roles, run.role.value)
        run_log = self.journal.open_run_log(run.run_id)
        live = _Live(run=run, usage=run.usage, log=run_log)
        live.sup = AgentSupervisor(self.runner, engine, log=run_log, publish=lambda batch: self._on_lines(live, batch),
                                   budget=Budget(role_cfg.budget_tokens, role_cfg.budget_usd))
        self._live[run.run_id] = live
        return live

    def _spawn(self, live: _Live, ws: Any, start: Callable[[], Any]) -> None:
        self.publish(RunChanged(at=self.clock(), run=live.run))
        assert self._tg is not None, "runs are supervised inside run()"
        self._tg.start_soon(self._supervise, live, ws, start)

    async def _supervise(self, live: _Live, ws: Any, start: Callable[[], Any]) -> None:
        with anyio.CancelScope() as scope:
            live.scope = scope
            try:
                outcome = await start()
                with anyio.CancelScope(shield=True):
                    await self._finish(live, ws, outcome)
            finally:
                if live.log is not None:
                    live.log.close()
        if scope.cancelled_caught:
            self._live.pop(live.run.run_id, None)

    def _on_lines(self, live: _Live, batch: tuple[str, ...]) -> None:
        self._account(live, live.sup.usage)
        last = next((line for line in reversed(batch) if line.strip()), "")
        if last:
            live.run = dataclasses.replace(live.run, last_line=last[-300:])
        self.publish(RunLogLines(at=self.clock(), run_id=live.run.run_id, lines=tuple(batch)))

    def _account(self, live: _Live, usage: Usage) -> None:
        """Record the spend since the last look, so daily and issue budgets see it while the run goes on."""
        delta = _usage_minus(usage, live.usage)
        if delta.tokens or delta.cost_usd or delta.cached_tokens:
            self.journal.add_usage(live.run.run_id, live.run.issue, delta)
            live.usage = usage
            live.run = dataclasses.replace(live.run, usage=usage)
            self.wake()

    async def _finish(self, live: _Live, ws: Any, outcome: Any) -> None:
        self._account(live, outcome.usage)
        run = live.run
        result: EngineResult = outcome.result
        state, reason, code = outcome.state, outcome.reason, outcome.exit_code
        if live.kill is not None:
            state, reason = live.kill
        extras: dict[str, Any] = {}
        try:
            if state == RunState.SUCCEEDED and run.role == Role.DEV:
                made = await self.workspaces.collect(ws, base=self._base)
                extras.update(commits=len(made.commits), lines=made.lines_changed, files=list(made.paths),
                              head_sha=made.head_sha)
                if not made.commits:
                    state, reason = RunState.FAILED, "the run made no commits"
            elif state == RunState.SUCCEEDED and run.role == Role.QA:
                tests = self._extras(run.run_id).get("tests") or {}
                if tests and not tests.get("passed"):
                    verdict: Verdict | None = Verdict.CHANGES
                    findings: tuple[str, ...] = (qa_role.test_failure_finding(
                        self.config.policy.test_command, tests.get("exit_code"), tests.get("output", "")),)
                else:
                    parsed = qa_role.parse_message(result.summary)
                    verdict = result.verdict or parsed.verdict
                    findings = tuple(result.findings) or parsed.findings
                if verdict is None:
                    state, reason = RunState.FAILED, "the review gave no verdict"
                else:
                    extras.update(verdict=verdict.value, findings=list(findings))
                    if run.pr is not None:
                        self.journal.record_qa_round(run.pr, run.qa_round, head_sha=self._extras(run.run_id).get(
                            "head_sha", ""), verdict=verdict, findings_hash=_findings_hash(findings))
            elif state == RunState.SUCCEEDED and run.role == Role.PM:
                slots = int(self._extras(run.run_id).get("slots", self.config.policy.max_open_proposals))
                open_titles = [i.title for i in await self.forge.list_issues()]
                proposals = pm_role.parse_message(result.summary, open_titles=open_titles, limit=slots)
                await self._create_proposals(proposals, slots)
        except Exception as exc:
            log.exception("collecting the result of %s failed", run.run_id)
            state, reason = RunState.FAILED, f"cannot collect the result: {exc}"[:300]
        if extras:
            self._set_extras(run.run_id, **extras)
        ended = dataclasses.replace(run, state=state, ended_at=self.clock(), exit_code=code, reason=reason,
                                    usage=live.usage, last_line=outcome.last_line or run.last_line)
        self.journal.upsert_run(ended)
        self._live.pop(run.run_id, None)
        with contextlib.suppress(Exception):
            self.workspaces.finish(run.run_id)
        self.publish(RunChanged(at=self.clock(), run=ended))
        self.wake()

    # --- the remaining actions ----------------------------------------------------------------------

    async def _do_openpr(self, action: OpenPR) -> None:
        issue = await self.forge.get_issue(action.issue)
        head = await self.forge.push_branch(self.workspaces.mirror, action.branch)
        pull = await self.forge.find_pull(action.branch)
        if pull is None:
            pull = await self.forge.open_pull(title=dev_role.pr_title(issue), head=action.branch, base=self._base,
                                              body=dev_role.pr_body(issue, run_id=action.run_id))
            self._notice(f"opened PR #{pull.number} for issue #{action.issue}")
        self._set_extras(action.run_id, pushed=True, head_sha=head, pr=pull.number)

    async def _do_postreview(self, action: PostReview) -> None:
        pull = await self.forge.get_pull(action.pr)
        tag = qa_role.verdict_marker(action.verdict, action.round)
        run_tag = marker("run", action.run_id)
        found = next((r for r in pull.reviews if tag in r.body and run_tag in r.body), None)
        if found is None:
            body = qa_role.review_body(verdict=action.verdict, round=action.round, findings=action.findings,
                                       run_id=action.run_id)
            found = await self.forge.post_review(action.pr, body, action.head_sha)
        self.journal.record_qa_round(action.pr, action.round, head_sha=action.head_sha, verdict=action.verdict,
                                     findings_hash=_findings_hash(action.findings), review_id=found.id)
        self._set_extras(action.run_id, posted=True)
        if action.verdict == Verdict.PASS:
            self._notice(f"PR #{action.pr} passed QA and is ready for you to merge", bell=True)

    async def _do_markneedshuman(self, action: MarkNeedsHuman) -> None:
        labels = self.config.labels
        retry_at = self.journal.get_kv(f"retry:{action.issue}") or ""
        key = hashlib.sha256(f"{action.reason}|{retry_at}".encode()).hexdigest()[:10]
        await self.forge.add_labels(action.issue, [labels.needs_human])
        await self.forge.post_comment(
            action.issue, f"The fleet stopped on this issue and needs a human: {action.reason}.",
            dev_role.needs_human_marker(action.issue, f"{key}-{len(self.journal.approval_pins(action.issue))}"))
        self.journal.set_kv(f"nh:{action.issue}", action.reason)
        self.journal.append_event("needs_human", {"issue": action.issue, "pr": action.pr, "reason": action.reason})
        self._flagged.add(action.issue)
        self.publish(NeedsHuman(at=self.clock(), issue=action.issue, pr=action.pr, reason=action.reason))
        self._notice(f"issue #{action.issue} needs a human: {action.reason}", "warning", bell=self.config.ui.bell)

    async def _do_kill(self, action: Kill) -> None:
        live = self._live.get(action.run_id)
        if live is None:
            run = self.journal.get_run(action.run_id)
            if run is not None and run.state.live:
                self._end_lost(dataclasses.replace(run, reason=action.reason), action.reason)
            return
        live.kill = (action.state, action.reason)
        self._notice(f"stopping run {action.run_id}: {action.reason}", "warning")
        if live.tests is not None:
            await live.tests.stop(action.reason)
        await live.sup.stop(action.reason)

    async def _do_cleanup(self, action: Cleanup) -> None:
        with contextlib.suppress(Exception):
            await self.runner.cleanup(action.run_id)
        with contextlib.suppress(Exception):
            self.workspaces.finish(action.run_id)
        self._set_extras(action.run_id, workspace=False)
        live = {r for r in self._live}
        with contextlib.suppress(Exception):
            await self.workspaces.cleanup(live)

    async def _do_pauseforbudget(self, action: PauseForBudget) -> None:
        self.journal.set_kv("budget_paused_on", self.clock().date().isoformat())
        self.journal.append_event("budget_pause", {"reason": action.reason})
        self._notice(f"budget stop: {action.reason}; dispatch is paused until you resume or the day ends",
                     "error", bell=True)

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
        self._flagged.discard(issue)
        self._judged.pop(issue, None)
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
        await self._do_kill(Kill(run_id, "stopped by the operator", RunState.STOPPED))
        self.wake()

    async def retry(self, issue: int) -> None:
        """Clear the needs-human stop: attempts and rounds count afresh from now."""
        self.journal.set_kv(f"retry:{issue}", self.clock().isoformat())
        await self.forge.remove_label(issue, self.config.labels.needs_human)
        self.journal.delete_kv(f"nh:{issue}")
        self._flagged.discard(issue)
        self.journal.append_event("retry", {"issue": issue})
        self.wake()

    async def run_pm(self) -> None:
        self.journal.set_kv("pm_requested", True)
        self.wake()

    async def set_paused(self, paused: bool) -> None:
        self.journal.set_kv("paused", paused)
        if not paused:
            self.journal.delete_kv("budget_paused_on")
        self._notice("dispatch paused" if paused else "dispatch resumed")
        self.wake()

    async def merge(self, pr: int) -> None:
        merge_as_human = getattr(self.forge, "merge_as_human", None)
        if self.forge.kind != "local" or merge_as_human is None:
            raise ForgeError(f"the fleet does not merge on {self.forge.kind}: merge PR #{pr} on the forge's "
                             "own page")
        sha = await merge_as_human(pr)
        self.journal.append_event("merge", {"pr": pr, "sha": sha})
        self._notice(f"merged PR #{pr}")
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
        if pull is None and found_issue is not None and self._last_snapshot is not None:
            claim = self._last_snapshot.claims.get(found_issue.number)
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


def _processes_of_workspaces(root: Path, me: int) -> list[tuple[int, str]]:
    """(pid, run id) of every process whose HOME lies inside a run's dir under `root` (Linux /proc; none
    elsewhere). Engines and the test command give each run a HOME in its scratch dir; nothing else has one."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    prefix = (str(Path(root).resolve()) + os.sep).encode()
    found: list[tuple[int, str]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(b"HOME=") and item[5:].startswith(prefix):
                run_id = item[5 + len(prefix):].split(b"/", 1)[0].decode(errors="replace")
                found.append((int(entry.name), run_id))
                break
    return found


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
