"""Observing the world: the forge, the journal and the live runs, read into the `Snapshot` that `reconcile`
decides on. It owns how approvals are judged (and cached), pinned and matched to this orchestrator's claims,
and how a journal run becomes a `RunRecord`. Reads only, apart from pinning an approval first seen here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from fleet_tui.context import FleetContext
from fleet_tui.forge.base import ForgeError, judge_approval, standing_label_event
from fleet_tui.model import AgentRun, Approval, Issue, PullRequest, Verdict
from fleet_tui.reconcile import ClaimRecord, Hold, Pin, RunRecord, Snapshot


class ForgeObserver:
    """Builds each tick's `Snapshot`; `live_run` gives the supervisor's fresher view of a running run."""

    def __init__(self, ctx: FleetContext, live_run: Callable[[str], AgentRun | None]) -> None:
        self.ctx = ctx
        self.live_run = live_run
        self.last: Snapshot | None = None
        self._judged: dict[int, tuple[tuple[Any, ...], Approval | None]] = {}
        self._edited: dict[int, tuple[tuple[Any, ...], datetime | None]] = {}
        self.degraded: dict[int, str] = {}  # issues the last look could not read, and why

    def forget(self, issue: int) -> None:
        """Judge `issue`'s approval afresh at the next look (the operator just approved it)."""
        self._judged.pop(issue, None)
        self._edited.pop(issue, None)

    async def observe(self) -> Snapshot:
        now = self.ctx.clock()
        labels = self.ctx.config.labels
        if self.ctx.claims is not None:
            await self.ctx.claims.look()  # every orchestrator's leases, in one request
        by_number: dict[int, Issue] = {}
        for label in (labels.proposed, labels.approved, labels.in_progress, labels.needs_human):
            for issue in await self.ctx.forge.list_issues(labels=[label]):
                by_number[issue.number] = issue
        approvals: dict[int, Approval] = {}
        pins: dict[tuple[int, str], Pin] = {}
        claims: dict[int, ClaimRecord] = {}
        edits: dict[int, datetime] = {}
        self.degraded = {}
        for number, issue in by_number.items():
            if issue.has_label(labels.approved):
                try:
                    approval = await self._judge_cached(issue)
                    edited = await self._last_edit(issue) if approval is not None and approval.verified else None
                except ForgeError as exc:  # this issue waits for the next look; the others go on
                    self.degraded[number] = str(exc)
                    continue
                if approval is not None:
                    approvals[number] = approval
                    if approval.verified:
                        pins.update(self._pins_for(issue, approval))
                if edited is not None:
                    edits[number] = edited
            claim = self.claim_for(number, approvals.get(number))
            if claim is not None:
                claims[number] = claim
        pulls = tuple(await self._pulls({claim.branch for claim in claims.values()}))
        await self._note_closed(pulls, {claim.branch: number for number, claim in claims.items()})
        records: dict[str, RunRecord] = {}
        for number in claims:
            retry_at = self.ctx.retry_at(number)
            for run in self.ctx.journal.runs(issue=number):
                if retry_at and run.started_at is not None and run.started_at < retry_at:
                    continue
                records[run.run_id] = self.record(run)
        for run in self.ctx.journal.runs(live_only=True):  # the supervisor settled the unsupervised ones
            records[run.run_id] = self.record(run)
        for run_id in self.ctx.journal.get_kv("open-workspaces", []):
            if run_id not in records:
                run = self.ctx.journal.get_run(run_id)
                if run is not None:
                    records[run_id] = self.record(run)
        day_start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        spend_issue = {n: self.ctx.journal.spend_for_issue(n) for n in claims}
        paused_on = self.ctx.journal.get_kv("budget_paused_on")
        lifted_on = self.ctx.journal.get_kv("budget_lifted_on")
        self.ctx.flagged = {n for n in self.ctx.flagged
                            if n in by_number and not by_number[n].has_label(labels.needs_human)}
        snapshot = Snapshot(
            now=now,
            issues=tuple(by_number.values()),
            approvals=approvals,
            pins=pins,
            pulls=pulls,
            runs=tuple(records.values()),
            claims=claims,
            spend_day=self.ctx.journal.spend_since(day_start),
            spend_issue=spend_issue,
            paused=bool(self.ctx.journal.get_kv("paused", False)),
            budget_paused_on=date.fromisoformat(paused_on) if paused_on else None,
            fleet_login=self.ctx.fleet_login,
            fleet_is_separate=self.ctx.fleet_separate,
            pm_requested=bool(self.ctx.journal.get_kv("pm_requested", False)) or self._pm_due(now),
            handled=frozenset(self.ctx.flagged),
            approvers=tuple(self.ctx.approvers),
            edits=edits,
            holds=self._holds(by_number),
            budget_lifted_on=date.fromisoformat(lifted_on) if lifted_on else None,
        )
        self.last = snapshot
        return snapshot

    async def _pulls(self, fleet_heads: set[str]) -> list[PullRequest]:
        """Open PRs; full details (reviews, CI, mergeability) only for the fleet's own, where the forge can tell
        them apart, so an idle poll does not grow with the PRs humans have open."""
        list_pulls = self.ctx.forge.list_pulls
        if "details_for" in inspect.signature(list_pulls).parameters:
            pulls = await list_pulls(details_for=fleet_heads)
        else:
            pulls = await list_pulls()  # a forge that always reads every PR in full
        # a fork's branch may carry a fleet branch's name: only the repository's own branches are the fleet's
        repo = self.ctx.forge.repo.lower()
        return [p for p in pulls if not getattr(p, "head_repo", "") or p.head_repo.lower() == repo]

    async def _note_closed(self, pulls: tuple[PullRequest, ...], branches: dict[str, int]) -> None:
        """Record when a fleet PR left the open list, merged (by a human) or closed: the journal's numbers of
        merged PRs and their cost come from here. One read of each PR that left; nothing while none does."""
        open_now = {p.number: branches[p.head] for p in pulls if p.head in branches}
        known: dict[str, int] = self.ctx.journal.get_kv("open_fleet_prs", {}) or {}
        for number, issue in [(int(n), i) for n, i in known.items() if int(n) not in open_now]:
            try:
                pull = await self.ctx.forge.get_pull(number)
            except ForgeError:
                continue  # asked again at the next look
            if pull.state != "open":  # still open but no longer the fleet's to follow: forget it, say nothing
                kind = "merged" if pull.state == "merged" else "pr_closed"
                self.ctx.journal.append_event(kind, {"pr": number, "issue": issue})
                self.ctx.journal.set_kv(f"pr_ended:{issue}", kind)  # the claim's work is done: its lease goes
            known.pop(str(number), None)
        for issue in open_now.values():
            if self.ctx.journal.get_kv(f"pr_ended:{issue}"):
                self.ctx.journal.delete_kv(f"pr_ended:{issue}")  # a new PR for it: worked again
        known.update({str(n): i for n, i in open_now.items()})
        if known != (self.ctx.journal.get_kv("open_fleet_prs", {}) or {}):
            self.ctx.journal.set_kv("open_fleet_prs", known)

    async def _last_edit(self, issue: Issue) -> datetime | None:
        """When the issue's title or body was last edited (None when never, or when the forge cannot say),
        read again only when the issue changed."""
        text_edits = getattr(self.ctx.forge, "text_edits", None)
        if text_edits is None:
            return None
        key = (issue.updated_at, issue.title, issue.body)
        cached = self._edited.get(issue.number)
        if cached is not None and cached[0] == key and issue.updated_at is not None:
            return cached[1]
        found = await text_edits(issue.number)
        last = max((edit.at for edit in found), default=None)
        self._edited[issue.number] = (key, last)
        return last

    def _holds(self, by_number: dict[int, Issue]) -> dict[int, Hold]:
        """The needs-human stops this fleet placed on the issues it sees labelled so."""
        holds: dict[int, Hold] = {}
        label = self.ctx.config.labels.needs_human
        for number, issue in by_number.items():
            if not issue.has_label(label):
                continue
            value = self.ctx.journal.get_kv(f"nh:{number}")
            if isinstance(value, dict):
                with contextlib.suppress(KeyError, ValueError, TypeError):
                    holds[number] = Hold(value["reason"], datetime.fromisoformat(value["at"]),
                                         str(value.get("event_id", "")))
            elif value:  # written before holds had a time: any fresh approval is newer
                holds[number] = Hold(str(value), datetime.min.replace(tzinfo=UTC))
        return holds

    def _pm_due(self, now: datetime) -> bool:
        """Whether the PM's schedule (`policy.pm_interval_s`, 0 = off) asks for a run now."""
        interval = self.ctx.config.policy.pm_interval_s
        if interval <= 0:
            return False
        last = self.ctx.journal.get_kv("pm_last_at")
        if not last:
            return True
        with contextlib.suppress(ValueError):
            return (now - datetime.fromisoformat(last)).total_seconds() >= interval
        return True

    async def _judge_cached(self, issue: Issue) -> Approval | None:
        """`_judge`, read again only when the issue changed: a label event moves its `updated_at`, so an
        unchanged issue keeps its judged approval and a tick costs no timeline request per approved issue.
        Approvals that rest on a live permission check are judged afresh every time."""
        if issue.updated_at is None or self.ctx.config.policy.approvers_with_write:
            return await self._judge(issue.number)
        key = (issue.updated_at, tuple(sorted(issue.labels)))
        cached = self._judged.get(issue.number)
        if cached is not None and cached[0] == key:
            return cached[1]
        approval = await self._judge(issue.number)
        self._judged[issue.number] = (key, approval)
        return approval

    async def _judge(self, number: int) -> Approval | None:
        events = await self.ctx.forge.label_events(number)
        event = standing_label_event(events, self.ctx.config.labels.approved)
        if event is None:
            return None
        permission = None
        if self.ctx.config.policy.approvers_with_write:
            permission = await self.ctx.forge.permission(event.actor.login)
        return judge_approval(number, event, approvers=self.ctx.approvers, fleet_login=self.ctx.fleet_login,
                              fleet_is_separate=self.ctx.fleet_separate, permission=permission,
                              allow_write_permission=self.ctx.config.policy.approvers_with_write)

    def _pins_for(self, issue: Issue, approval: Approval) -> dict[tuple[int, str], Pin]:
        """The journal's pin of this approval; an approval first seen here (made on the forge's own page)
        is pinned to the text as first seen."""
        event_id = approval.event.event_id
        found = [p for p in self.ctx.journal.approval_pins(issue.number) if p.event_id == event_id]
        if not found:
            found = [self.ctx.journal.pin_approval(issue.number, event_id, title=issue.title, body=issue.body,
                                               operator=approval.event.actor.login)]
        pin = found[0]
        return {(issue.number, event_id): Pin(issue.number, event_id, pin.title_sha, pin.body_sha)}

    def claim_for(self, number: int, approval: Approval | None) -> ClaimRecord | None:
        claims = self.ctx.journal.claims_for(number)
        if approval is not None:
            claims = [c for c in claims if c.approval_event_id == approval.event.event_id] or claims
        if not claims:
            return None
        claim = claims[-1]
        meta = self.ctx.journal.get_kv(f"claim:{number}:{claim.approval_event_id}") or {}
        if meta.get("foreign") or not meta.get("branch"):
            return None
        return ClaimRecord(number, claim.approval_event_id, claim.run_id, meta["branch"],
                           confirmed=bool(meta.get("confirmed")))


    def record(self, run: AgentRun) -> RunRecord:
        run = self.live_run(run.run_id) or run
        extras = self.ctx.extras(run.run_id)
        verdict = extras.get("verdict")
        return RunRecord(
            run=run, event_id=extras.get("event_id", ""), head_sha=extras.get("head_sha", ""),
            commits=int(extras.get("commits", 0)), lines_changed=int(extras.get("lines", 0)),
            files=tuple(extras.get("files", ())), pushed=bool(extras.get("pushed")),
            verdict=Verdict(verdict) if verdict else None, findings=tuple(extras.get("findings", ())),
            posted=bool(extras.get("posted")), workspace=bool(extras.get("workspace")),
            interrupted=bool(extras.get("interrupted")),
            bytes_changed=int(extras.get("bytes", 0)), binary_files=tuple(extras.get("binary", ())),
            kind=str(extras.get("kind", "")), fixes_head=str(extras.get("fixes_head", "")),
            unresolved=tuple(extras.get("unresolved", ())),
        )
