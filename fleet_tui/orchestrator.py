"""The orchestrator: the level-triggered loop (observe -> reconcile -> execute -> publish), the event fan-out
to the console or `--headless`, and the operator intents of `FleetControl`. Its parts live beside it:
observing the forge (`observe.py`), executing actions (`execute.py`), supervising runs (`supervise.py`),
all sharing one `FleetContext`. It never imports Textual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc

from fleet_tui.claims import ClaimKeeper, claim_holder, supports_claims
from fleet_tui.config import FleetConfig
from fleet_tui.context import FleetContext, now_utc
from fleet_tui.control import Detail
from fleet_tui.execute import ActionExecutor
from fleet_tui.forge.base import Forge, ForgeError, RateLimitedError, standing_label_event
from fleet_tui.model import (
    Event,
    LoopState,
    NeedsHuman,
    PullRequest,
    PullStatus,
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
    readiness,
    reconcile,
)
from fleet_tui.runners.base import Runner
from fleet_tui.supervise import RunSupervisor

log = logging.getLogger("fleet_tui.orchestrator")

QUEUE_LIMIT = 500  # events a subscriber may fall behind by before log lines are dropped
MIN_TICK_S = 0.1  # the loop never ticks faster than this, however busy
RESTART_MIN_S, RESTART_MAX_S = 5.0, 300.0  # backoff of a loop that stopped on an error


def _reason(exc: BaseException) -> str:
    """The message of the error that stopped the loop (the inner one of a task group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return (str(exc) or type(exc).__name__)[:300]
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
        if supports_claims(forge):
            self.ctx.claims = ClaimKeeper(forge, claim_holder(forge.repo, journal, runner),
                                          config.forge.claim_lease_s)
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

    @property
    def failed_actions(self) -> int:
        """Actions that failed since start (`--headless --once` exits non-zero on any)."""
        return self.ctx.failed_actions

    @property
    def needs_human_raised(self) -> int:
        """Issues this process sent to needs-human since start."""
        return self.ctx.needs_human_raised

    async def run(self, *, once: bool = False) -> None:
        """Run until `shutdown()`; with `once`, until nothing is left to do and no run is live.

        When the loop cannot go on (the Docker engine or the forge unreachable at start, a failure outside one
        action), it says so with a `LoopState` and, unless `once`, starts again after a backoff (the restart
        intent tries at once)."""
        self._stopping = False
        delay = RESTART_MIN_S
        reason = "the fleet was stopped"
        try:
            while True:
                try:
                    await self._run_loop(once=once)
                    return
                except Exception as exc:
                    reason = _reason(exc)
                    log.exception("the fleet loop stopped")
                    if once or self._stopping:
                        raise
                    retry_at = self.clock() + timedelta(seconds=delay)
                    self.publish(LoopState(at=self.clock(), state="stopped", reason=reason, retry_at=retry_at))
                    self._wake = anyio.Event()
                    with anyio.move_on_after(delay):
                        await self._wake.wait()
                    if self._stopping:
                        return
                    delay = min(RESTART_MAX_S, delay * 2)
        finally:
            self._stopping = True
            self.publish(LoopState(at=self.clock(), state="stopped", reason=reason))
            for sub in self._subscribers:
                sub.closed = True
                sub.ready.set()

    async def _run_loop(self, *, once: bool) -> None:
        async with anyio.create_task_group() as tg:
            self.supervisor.bind(tg)
            try:
                self.publish(LoopState(at=self.clock(), state="starting"))
                await self.start()
                self.publish(LoopState(at=self.clock(), state="running"))
                if self.ctx.claims is not None:
                    tg.start_soon(self._keep_claims)
                last = -MIN_TICK_S
                while not self._stopping:
                    since = anyio.current_time() - last
                    if since < MIN_TICK_S:  # however busy, never faster than this
                        await anyio.sleep(MIN_TICK_S - since)
                    last = anyio.current_time()
                    self._wake = anyio.Event()
                    self.executor.next_retry = None
                    live_before = len(self.supervisor)
                    actions = await self.tick()
                    busy = [a for a in actions if not isinstance(a, (Cleanup, Kill))]
                    retry = self.executor.next_retry
                    if once and not busy and not live_before and not len(self.supervisor) and retry is None:
                        # nothing left to do, nothing waiting to be retried, and no run was live during the tick
                        # (a run that ended while it observed left results the tick has not seen)
                        break
                    if self._stopping:
                        break  # a shutdown asked for during the tick ends the loop now, not a poll later
                    if busy:
                        continue  # act on the consequences at once
                    wait = self.config.poll_interval_s
                    if retry is not None:  # wake when a backing-off action may run again
                        wait = min(wait, max(MIN_TICK_S, (retry - self.clock()).total_seconds()))
                    with anyio.move_on_after(wait):
                        await self._wake.wait()
            finally:
                self.supervisor.detach_all()  # leave the processes themselves to be re-attached
                self.supervisor.bind(None)
                tg.cancel_scope.cancel()

    async def shutdown(self) -> None:
        self._stopping = True
        self.wake()

    async def restart(self) -> None:
        """Try a stopped loop again now instead of at its next retry."""
        self.wake()

    async def start(self) -> None:
        """Identities, labels, and re-attachment of runs a previous process left behind."""
        if self._started:
            return
        fleet = await self.forge.fleet_identity()
        operator = await self.forge.operator_identity()
        ctx = self.ctx
        ctx.fleet_login = fleet.login
        ctx.operator_login = operator.login
        ctx.fleet_separate = fleet.login.lower() != operator.login.lower()
        if not ctx.approvers and self.forge.kind == "local":
            ctx.approvers = [operator.login]
        ctx.base = await self._base_branch()
        labels = self.config.labels
        try:
            await self.forge.ensure_labels([labels.proposed, labels.approved, labels.in_progress,
                                            labels.needs_human, labels.rejected])
        except ForgeError as exc:
            self.ctx.notice(f"cannot create the fleet's labels: {exc}", "warning")
        await self.supervisor.reattach()
        self._started = True

    async def _base_branch(self) -> str:
        """`forge.base_branch`, or the default branch the forge reports; a branch the forge does not have stops
        the loop with what to set."""
        base = self.config.forge.base_branch
        if not base:
            default_branch = getattr(self.forge, "default_branch", None)
            base = await default_branch() if default_branch is not None else ""
            return base or getattr(self.forge, "base_branch", "") or "main"
        branch_exists = getattr(self.forge, "branch_exists", None)
        if branch_exists is not None and not await branch_exists(base):
            raise ForgeError(f"the base branch {base!r} does not exist on the forge: set forge.base_branch to an "
                             "existing branch, or leave it empty for the repository's default branch")
        return base

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
        snapshot = await self._settle_claims(snapshot)
        actions = reconcile(snapshot, self.config)
        actions.sort(key=lambda a: 0 if isinstance(a, Kill) else 1)
        executed: list[Action] = []
        for action in actions:
            if self._stopping and isinstance(action, (Claim, DispatchDev, DispatchFix, DispatchQA, Propose)):
                continue
            try:
                if await self.executor.execute(action):
                    executed.append(action)
            except Exception as exc:
                log.exception("action %r failed", action)
                self.ctx.notice(f"{type(action).__name__} failed: {exc}", "error")
        for number, error in self.observer.degraded.items():
            self.ctx.notice(f"cannot read issue #{number} this time: {error}", "warning")
        await self._publish_snapshot(snapshot)
        return executed

    # --- claims across orchestrators ------------------------------------------------------------------

    async def _settle_claims(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot with this orchestrator's leases brought in line: claims it lost or could not take the
        lease of are left out (nothing is dispatched for them), and other orchestrators' leases are named."""
        keeper = self.ctx.claims
        if keeper is None:
            return snapshot
        try:
            lost = await keeper.settle(snapshot, self.config.labels, self.journal)
        except ForgeError as exc:
            self.ctx.notice(f"cannot keep the fleet's claims on the forge: {exc}", "warning")
            lost = keeper.take_lost()
        if lost:
            await self._drop_lost(lost)
        out = lost | keeper.unheld()
        snapshot = dataclasses.replace(
            snapshot, claims={n: c for n, c in snapshot.claims.items() if n not in out},
            leased_elsewhere=keeper.elsewhere(), claimable=keeper.breakable())
        self.observer.last = snapshot
        return snapshot

    async def _keep_claims(self) -> None:
        """Renew the held leases on time, whatever the poll interval (every third of `forge.claim_lease_s`)."""
        keeper = self.ctx.claims
        while True:
            await anyio.sleep(max(MIN_TICK_S, keeper.next_renewal_in()))
            try:
                taken = await keeper.renew_due()
            except Exception as exc:  # noqa: BLE001 - the network: the next turn tries again
                self.ctx.notice(f"cannot renew the fleet's claims: {exc}", "warning")
                await anyio.sleep(min(5.0, keeper.lease_s / 9))
                continue
            if taken:
                await self._drop_lost(keeper.take_lost() | taken)
                self.wake()

    async def _drop_lost(self, issues: set[int]) -> None:
        """Stand down on issues whose lease another orchestrator took over (after this one's expired unrenewed,
        so it was cut off or stalled for a whole lease): stop their runs and drop the claims. Nothing more is
        written to the forge: the issue is the other orchestrator's now."""
        for number in sorted(issues):
            for claim in self.journal.claims_for(number):
                key = f"claim:{number}:{claim.approval_event_id}"
                meta = self.journal.get_kv(key) or {}
                if meta and not meta.get("foreign"):
                    self.journal.set_kv(key, {**meta, "foreign": True, "lost": True})
            stopped = [run.run_id for run in self.supervisor.live_runs() if run.issue == number]
            for run_id in stopped:
                # lost to the fleet, not failed by the agent: should the issue come back here, a fresh run starts
                self.ctx.set_extras(run_id, interrupted=True)
                await self.supervisor.kill(run_id, RunState.LOST, f"another orchestrator took issue #{number} over")
            self.journal.append_event("claim_lost", {"issue": number, "stopped": stopped})
            self.ctx.notice(f"issue #{number}: another orchestrator took the claim over after this one's lease "
                            f"expired unrenewed; {'stopped ' + ', '.join(stopped) + ' and ' if stopped else ''}"
                            "dropped the claim (nothing more is posted)", "warning")

    async def _publish_snapshot(self, snapshot: Snapshot) -> None:
        labels = self.config.labels
        today = snapshot.now.date()
        budget_stop = ""
        if (snapshot.budget_paused_on is not None and snapshot.budget_paused_on >= today
                and not (snapshot.budget_lifted_on is not None and snapshot.budget_lifted_on >= today)):
            budget_stop = str(self.journal.get_kv("budget_reason", "") or "daily budget spent")
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
            paused=snapshot.paused or budget_stop != "",
            pull_status=self._pull_status(snapshot),
            budget_stop=budget_stop,
        ))

    def _pull_status(self, snapshot: Snapshot) -> tuple[PullStatus, ...]:
        """Each fleet PR's QA verdict on its current head (the fleet's own, from the journal) and readiness."""
        branches = {claim.branch: claim.issue for claim in snapshot.claims.values()}
        found = []
        for pull in snapshot.pulls:
            issue = branches.get(pull.head)
            if issue is None:
                continue
            on_head = [r for r in self.journal.qa_rounds(pull.number)
                       if r.head_sha == pull.head_sha and r.verdict is not None]
            verdict = on_head[-1].verdict if on_head else None
            ready, why = readiness(pull, verdict)
            found.append(PullStatus(pr=pull.number, issue=issue, verdict=verdict.value if verdict else "",
                                    round=on_head[-1].round if on_head else 0, ready=ready, why=why))
        return tuple(found)

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
        self.journal.delete_kv(f"pr_ended:{issue}")  # worked again: its claim takes the lease again
        await self.forge.remove_label(issue, self.config.labels.needs_human)
        self.journal.delete_kv(f"nh:{issue}")
        self.ctx.flagged.discard(issue)
        self.journal.append_event("retry", {"issue": issue})
        self.wake()

    async def run_pm(self) -> None:
        self.journal.set_kv("pm_requested", True)
        self.wake()

    async def resume_budget(self) -> None:
        """Lift today's budget stop: dispatch goes on for the rest of the day (run and issue budgets still hold)."""
        self.journal.set_kv("budget_lifted_on", self.clock().date().isoformat())
        self.journal.delete_kv("budget_paused_on")
        self.journal.append_event("budget_lifted", {"operator": self.ctx.operator_login})
        self.ctx.notice("budget stop lifted for today")
        self.wake()

    async def set_paused(self, paused: bool) -> None:
        if not paused and self.journal.get_kv("budget_paused_on"):
            await self.resume_budget()  # resuming while a budget stop holds lifts it for the day
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

    async def stats(self) -> Any:
        """The fleet's numbers from the journal (`fleet_tui.stats.Stats`) as of now."""
        from fleet_tui.stats import compute

        return compute(self.journal, self.clock())

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
        diffstat = diff = ""
        if pull is not None:
            diffstat = f"{pull.changed_files} files, +{pull.additions} -{pull.deletions}"
            pull_diff = getattr(self.forge, "pull_diff", None)
            if pull_diff is not None:
                try:
                    diff = await pull_diff(pull.number)
                except ForgeError as exc:
                    diff = f"(the diff cannot be read now: {exc})\n"
        return Detail(issue=found_issue, pull=pull, reviews=pull.reviews if pull else (),
                      comments=found_issue.comments if found_issue else (), diffstat=diffstat, diff=diff)



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
    from fleet_tui.runners.base import fleet_instance_id

    runner: Any
    owner = None
    where = journal_dir(state_dir, repo_id)
    instance = fleet_instance_id(repo_id, where)  # this fleet touches only runs that carry it
    if config.runner.kind == "docker":
        from fleet_tui.runners.pool import PoolRunner

        runner = PoolRunner(config.runner, instance=instance, repo=repo_id)  # [[runner.hosts]], or the one engine
        owner = parse_user(config.runner.user)
    elif config.runner.kind == "kubernetes":
        from fleet_tui.runners.kubernetes import KubernetesRunner  # needs the `kubernetes` extra: a clear error

        # The workspace travels to the pod as a tar owned by the agent's uid; host files keep their owner.
        runner = KubernetesRunner(config.runner, instance=instance, repo=repo_id, owner=parse_user(config.runner.user),
                                  read_only_root=config.runner.kubernetes.read_only_root)
    else:
        from fleet_tui.runners.local import LocalRunner

        runner = LocalRunner(instance=instance, repo=repo_id, runs_dir=where / "local-runs",
                             sandbox=config.runner.sandbox, ro_paths=[Path(p) for p in config.runner.ro_paths])
    journal = Journal.open(where, lock=True)
    try:
        workspaces = WorkspaceManager(journal.dir / "workspaces", retention_h=config.runner.workspace_retention_h,
                                      owner=owner)
        async with forge:
            yield Orchestrator(config, forge=forge, runner=runner, journal=journal, workspaces=workspaces,
                               repo_path=repo_path, pm_mode=pm_mode)
    finally:
        journal.close()


__all__ = ["Orchestrator", "build_fleet"]
