"""Executing actions: each `Action` reconcile asks for becomes forge writes, journal records or a started run,
done idempotently (markers, PR-by-head, claims taken through the forge's own compare-and-swap) so that repeating
one after a crash changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Any

from fleet_tui.context import FleetContext, findings_hash, short_id
from fleet_tui.forge.base import marker
from fleet_tui.model import Issue, NeedsHuman, Role, Verdict
from fleet_tui.observe import ForgeObserver
from fleet_tui.reconcile import (
    EDITED_AFTER_APPROVAL,
    Action,
    Claim,
    ClaimRecord,
    Cleanup,
    ClearHold,
    DispatchDev,
    DispatchFix,
    DispatchQA,
    DispatchUpdate,
    Kill,
    MarkNeedsHuman,
    OpenPR,
    PauseForBudget,
    PostReview,
    Propose,
    text_sha,
)
from fleet_tui.roles import dev as dev_role
from fleet_tui.roles import pm as pm_role
from fleet_tui.roles import qa as qa_role
from fleet_tui.supervise import RunSupervisor

log = logging.getLogger("fleet_tui.execute")

CLAIM_RE = re.compile(r"<!-- fleet:run=([A-Za-z0-9._-]+) -->")
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 600.0
_ACTION_WORDS = {"OpenPR": "pushing the branch or opening the PR", "PostReview": "posting the QA review",
                 "Claim": "claiming the issue", "DispatchDev": "starting the dev run",
                 "DispatchFix": "starting the fix run",
                 "DispatchQA": "starting the QA run", "DispatchUpdate": "starting the update run",
                 "ClearHold": "lifting the hold"}


def _failure_key(action: Action) -> str | None:
    """The journal key that counts failures of this kind of action on its issue (None: not counted)."""
    issue = getattr(action, "issue", None)
    if issue is None or isinstance(action, (Kill, Cleanup)):
        return None
    return f"fail:{type(action).__name__}:{issue}"


class ActionExecutor:
    """Carries out reconcile's actions; runs are started through the supervisor."""

    def __init__(self, ctx: FleetContext, observer: ForgeObserver, pm_mode: str) -> None:
        self.ctx = ctx
        self.observer = observer
        self.pm_mode = pm_mode
        self.supervisor: RunSupervisor  # set by the orchestrator (the supervisor hands PM results back here)
        self.next_retry: datetime | None = None  # the earliest moment a backing-off action may run again

    def _fresh_id(self, candidate: str) -> str:
        """`candidate`, unless the journal already holds a run by that name (after a retry)."""
        run_id = candidate
        while self.ctx.journal.get_run(run_id) is not None:
            run_id = f"{candidate}-{short_id()}"
        return run_id

    async def execute(self, action: Action) -> bool:
        """Carry out `action` unless it is backing off after failures; False when it was skipped. A failure is
        counted against the action and its issue: retries back off exponentially, and after
        `policy.max_action_failures` the issue goes to needs-human with the last error."""
        key = _failure_key(action)
        record = self.ctx.journal.get_kv(key) if key else None
        now = self.ctx.clock()
        if record and (retry := datetime.fromisoformat(record["next_at"])) > now:
            self.next_retry = min(self.next_retry or retry, retry)
            return False
        handler = getattr(self, f"_do_{type(action).__name__.lower()}")
        try:
            await handler(action)
        except Exception as exc:
            self.ctx.failed_actions += 1
            if key is None:
                raise
            count = int(record["count"]) + 1 if record else 1
            delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (count - 1))
            retry = now + timedelta(seconds=delay)
            self.ctx.journal.set_kv(key, {"count": count, "error": str(exc)[:300], "next_at": retry.isoformat()})
            issue = getattr(action, "issue", None)
            limit = self.ctx.config.policy.max_action_failures
            if count < limit:
                self.next_retry = min(self.next_retry or retry, retry)
            elif issue is not None and not isinstance(action, MarkNeedsHuman):
                self.ctx.journal.delete_kv(key)
                name = _ACTION_WORDS.get(type(action).__name__, type(action).__name__)
                with contextlib.suppress(Exception):
                    await self._do_markneedshuman(MarkNeedsHuman(
                        issue, f"{name} failed {count} times; last error: {str(exc)[:200]}",
                        getattr(action, "pr", None)))
            raise
        if record:
            self.ctx.journal.delete_kv(key)
        return True

    async def _do_claim(self, action: Claim) -> None:
        number = action.issue
        issue = await self.ctx.forge.get_issue(number)
        if text_sha(issue.title) != action.title_sha or text_sha(issue.body) != action.body_sha:
            return  # changed since observed: the next tick sees it
        existing = [c for c in self.ctx.journal.claims_for(number) if c.approval_event_id == action.event_id]
        run_id = existing[0].run_id if existing else f"dev-{number}-{short_id()}"
        branch = self._branch(number, issue.title)
        key = f"claim:{number}:{action.event_id}"
        keeper = self.ctx.claims
        takeover = bool(action.lease)
        if keeper is not None:
            # the lock: the forge's own compare-and-swap. Only its winner writes the label and the comment
            lease = await keeper.acquire(number, run_id, seen_version=action.lease)
            if lease is None:
                log.info("issue #%s is claimed by another orchestrator; standing down", number)
                return
            if takeover:
                self.ctx.notice(f"issue #{number}: another orchestrator's claim expired unrenewed; taking it over "
                                "with a fresh dev run", "warning")
        meta = {"branch": branch, "run_id": run_id, "takeover": takeover}
        self.ctx.journal.set_kv(key, meta)
        self.ctx.journal.add_claim(number, action.event_id, run_id)
        run_id = next(c.run_id for c in self.ctx.journal.claims_for(number) if c.approval_event_id == action.event_id)
        meta["run_id"] = run_id
        self.ctx.journal.set_kv(key, meta)
        await self.ctx.forge.add_labels(number, [self.ctx.config.labels.in_progress])
        claim_marker = dev_role.claim_marker(number, action.event_id)
        if keeper is not None:
            # the comment is the record humans read; a takeover gets its own (the marker names the run)
            tag = claim_marker + (marker("run", run_id) if takeover else "")
            await self.ctx.forge.post_comment(number, dev_role.claim_body(run_id, takeover=takeover), tag)
            self.ctx.journal.set_kv(key, {**meta, "confirmed": True})
            self.ctx.journal.append_event("claim", {"issue": number, "event_id": action.event_id, "run_id": run_id,
                                                    "takeover": takeover})
            return
        await self.ctx.forge.post_comment(number, dev_role.claim_body(run_id) + "\n" + marker("run", run_id),
                                          claim_marker)
        # a forge without claims of its own: the earliest claim comment for this approval stands
        issue = await self.ctx.forge.get_issue(number)
        mine = sorted((c for c in issue.comments if claim_marker in c.body), key=lambda c: (c.created_at, c.id))
        winner = CLAIM_RE.search(mine[0].body) if mine else None
        if winner is None or winner.group(1) != run_id:
            self.ctx.journal.set_kv(key, {**meta, "foreign": True})
            self.ctx.notice(f"issue #{number} is claimed by another orchestrator; standing down", "warning")
            return
        self.ctx.journal.set_kv(key, {**meta, "confirmed": True})
        self.ctx.journal.append_event("claim", {"issue": number, "event_id": action.event_id, "run_id": run_id})

    def _branch(self, number: int, title: str) -> str:
        try:
            from fleet_tui.workspace import branch_name
        except ImportError:  # pragma: no cover - the workspace layer is always shipped
            return f"fleet/{number}"
        return branch_name(number, title)

    async def _claimed_and_approved(self, number: int, event_id: str) -> tuple[ClaimRecord, Issue] | None:
        """This orchestrator's claim of the issue and the issue as approved; None when either is missing."""
        claim = self.observer.claim_for(number, None)
        if claim is None:
            return None
        issue = await self._approved_issue(number, event_id)
        return None if issue is None else (claim, issue)

    async def _approved_issue(self, number: int, event_id: str) -> Issue | None:
        """The issue as approved, or None (and flagged) when it was edited after the approval."""
        issue = await self.ctx.forge.get_issue(number)
        pins = [p for p in self.ctx.journal.approval_pins(number) if p.event_id == event_id]
        if not pins or not pins[0].matches(issue.title, issue.body):
            await self._do_markneedshuman(MarkNeedsHuman(number, EDITED_AFTER_APPROVAL, event_id=event_id))
            return None
        return issue

    async def _do_dispatchdev(self, action: DispatchDev) -> None:
        found = await self._claimed_and_approved(action.issue, action.event_id)
        if found is None:
            return
        claim, issue = found
        run_id = self._fresh_id(claim.run_id if action.attempt == 1 else f"{claim.run_id}-a{action.attempt}")
        prompt = dev_role.build_prompt(issue, approvers=self.ctx.approvers, branch=action.branch, base=self.ctx.base)
        await self.supervisor.dispatch(Role.DEV, run_id, prompt, issue=action.issue, title=issue.title,
                             branch=action.branch, attempt=action.attempt, qa_round=0, existing=False,
                             extras={"event_id": action.event_id})

    async def _do_dispatchfix(self, action: DispatchFix) -> None:
        found = await self._claimed_and_approved(action.issue, action.event_id)
        if found is None:
            return
        claim, issue = found
        again = f"-a{action.attempt}" if action.attempt > 1 else ""
        run_id = self._fresh_id(f"{claim.run_id}-r{action.round}{again}")
        prompt = dev_role.build_fix_prompt(issue, approvers=self.ctx.approvers, branch=action.branch,
                                           round=action.round, findings=action.findings)
        await self.supervisor.dispatch(Role.DEV, run_id, prompt, issue=action.issue, title=issue.title,
                                       branch=action.branch, attempt=action.attempt, qa_round=action.round,
                                       existing=True, pr=action.pr,
                                       extras={"event_id": action.event_id, "kind": "fix",
                                               "fixes_head": action.head_sha})

    async def _do_dispatchupdate(self, action: DispatchUpdate) -> None:
        found = await self._claimed_and_approved(action.issue, action.event_id)
        if found is None:
            return
        claim, issue = found
        pull = await self.ctx.forge.get_pull(action.pr)
        if pull.head_sha != action.head_sha:
            return  # a newer head arrived; the next tick looks at that one
        again = f"-a{action.attempt}" if action.attempt > 1 else ""
        run_id = self._fresh_id(f"{claim.run_id}-u{action.round}{again}")

        def prompt(ws: Any) -> str:
            return dev_role.build_update_prompt(issue, approvers=self.ctx.approvers, branch=action.branch,
                                                base=self.ctx.base, conflicts=getattr(ws, "conflicts", ()),
                                                strategy=getattr(ws, "update", "") or action.strategy,
                                                note=getattr(ws, "update_note", ""))

        self.ctx.notice(f"PR #{action.pr} {'conflicts with' if pull.mergeable_state == 'dirty' else 'is behind'} "
                        f"{self.ctx.base}: update round {action.round}")
        await self.supervisor.dispatch(Role.DEV, run_id, prompt, issue=action.issue, title=issue.title,
                                       branch=action.branch, attempt=action.attempt, qa_round=0, existing=True,
                                       pr=action.pr, update=action.strategy,
                                       extras={"event_id": action.event_id, "kind": "update",
                                               "fixes_head": action.head_sha})

    async def _do_clearhold(self, action: ClearHold) -> None:
        await self.ctx.forge.remove_label(action.issue, self.ctx.config.labels.needs_human)
        self.ctx.journal.delete_kv(f"nh:{action.issue}")
        self.ctx.flagged.discard(action.issue)
        self.observer.forget(action.issue)
        self.ctx.journal.append_event("hold_lifted", {"issue": action.issue})
        self.ctx.notice(f"issue #{action.issue} was approved again after the edit; the new text stands")

    async def _do_dispatchqa(self, action: DispatchQA) -> None:
        issue = await self.ctx.forge.get_issue(action.issue)
        pull = await self.ctx.forge.get_pull(action.pr)
        if pull.head_sha != action.head_sha:
            return  # a newer head arrived; the next tick reviews that one
        again = f"-a{action.attempt}" if action.attempt > 1 else ""
        run_id = self._fresh_id(f"qa-{action.pr}-{action.round}{again}")
        prompt = qa_role.build_prompt(issue, pull, round=action.round, test_command=self.ctx.config.policy.test_command)
        await self.supervisor.dispatch(Role.QA, run_id, prompt, issue=action.issue, title=issue.title,
                                       branch=action.branch,
                             attempt=action.attempt, qa_round=action.round, existing=True, pr=action.pr,
                             extras={"head_sha": action.head_sha})

    async def _do_propose(self, action: Propose) -> None:
        self.ctx.journal.set_kv("pm_requested", False)
        self.ctx.journal.set_kv("pm_last_at", self.ctx.clock().isoformat())
        open_titles = [i.title for i in await self.ctx.forge.list_issues()]
        if self.pm_mode == "builtin":
            proposals = pm_role.builtin_proposals(self.ctx.repo_path, open_titles=open_titles, limit=action.slots)
            await self.create_proposals(proposals, action.slots)
            return
        readme, roadmap = pm_role.read_docs(self.ctx.repo_path)
        prompt = pm_role.build_prompt(repo=self.ctx.forge.repo, readme=readme, roadmap=roadmap, open_titles=open_titles,
                                      slots=action.slots)
        run_id = f"pm-{self.ctx.clock().strftime('%Y%m%d%H%M%S')}-{short_id()}"
        await self.supervisor.dispatch(Role.PM, run_id, prompt, issue=None, title="proposals",
                                       branch=f"fleet/pm-{run_id}",
                             attempt=1, qa_round=0, existing=False, extras={"slots": action.slots})

    async def create_proposals(self, proposals: list[pm_role.Proposal], slots: int) -> int:
        labels = self.ctx.config.labels
        waiting = await self.ctx.forge.list_issues(labels=[labels.proposed])
        room = min(slots, self.ctx.config.policy.max_open_proposals - len(waiting))
        existing = await self.ctx.forge.list_issues(state="all")
        made = 0
        for proposal in proposals:
            if made >= room:
                break
            tag = pm_role.proposal_marker(proposal)
            if any(tag in i.body for i in existing):
                continue
            await self.ctx.forge.create_issue(proposal.title, pm_role.render_proposal_body(proposal), [labels.proposed])
            made += 1
        self.ctx.notice(f"the PM proposed {made} issue(s)" if made else "the PM proposed nothing new")
        return made

    async def _do_openpr(self, action: OpenPR) -> None:
        issue = await self.ctx.forge.get_issue(action.issue)
        extras = self.ctx.extras(action.run_id)
        claim = self.ctx.journal.get_kv(f"claim:{action.issue}:{extras.get('event_id', '')}") or {}
        if extras.get("rewritten"):  # a rebased branch replaces the head it was cut from, and only that one
            head = await self.ctx.forge.push_branch(self.ctx.workspaces.mirror, action.branch, force=True,
                                                    expected=extras.get("fixes_head") or None)
        elif claim.get("takeover"):
            # taken over from an orchestrator whose lease expired: it may have pushed this branch name before it
            # died. Its work is not ours to build on (this run started from the base), so replace what is there,
            # and only what the forge has just now (a lease against the head read before the push)
            head = await self.ctx.forge.push_branch(self.ctx.workspaces.mirror, action.branch, force=True)
        else:
            head = await self.ctx.forge.push_branch(self.ctx.workspaces.mirror, action.branch)
        pull = await self.ctx.forge.find_pull(action.branch)
        if pull is None:
            pull = await self.ctx.forge.open_pull(title=dev_role.pr_title(issue), head=action.branch,
                                                  base=self.ctx.base,
                                              body=dev_role.pr_body(issue, run_id=action.run_id))
            self.ctx.notice(f"opened PR #{pull.number} for issue #{action.issue}")
            self.ctx.journal.append_event("pr_opened", {"issue": action.issue, "pr": pull.number})
        self.ctx.set_extras(action.run_id, pushed=True, head_sha=head, pr=pull.number)

    async def _do_postreview(self, action: PostReview) -> None:
        pull = await self.ctx.forge.get_pull(action.pr)
        tag = qa_role.verdict_marker(action.verdict, action.round)
        run_tag = marker("run", action.run_id)
        found = next((r for r in pull.reviews if tag in r.body and run_tag in r.body), None)
        if found is None:
            body = qa_role.review_body(verdict=action.verdict, round=action.round, findings=action.findings,
                                       run_id=action.run_id)
            found = await self.ctx.forge.post_review(action.pr, body, action.head_sha)
        self.ctx.journal.record_qa_round(action.pr, action.round, head_sha=action.head_sha, verdict=action.verdict,
                                     findings_hash=findings_hash(action.findings), review_id=found.id)
        self.ctx.set_extras(action.run_id, posted=True)
        if action.verdict == Verdict.PASS:
            # ready only once the forge says mergeable and CI is green: the snapshot's PR status says when
            self.ctx.notice(f"PR #{action.pr} passed QA")

    async def _do_markneedshuman(self, action: MarkNeedsHuman) -> None:
        labels = self.ctx.config.labels
        retry_at = self.ctx.journal.get_kv(f"retry:{action.issue}") or ""
        key = hashlib.sha256(f"{action.reason}|{retry_at}".encode()).hexdigest()[:10]
        await self.ctx.forge.add_labels(action.issue, [labels.needs_human])
        await self.ctx.forge.post_comment(
            action.issue, f"The fleet stopped on this issue and needs a human: {action.reason}.",
            dev_role.needs_human_marker(action.issue, f"{key}-{len(self.ctx.journal.approval_pins(action.issue))}"))
        self.ctx.journal.set_kv(f"nh:{action.issue}", {"reason": action.reason, "at": self.ctx.clock().isoformat(),
                                                       "event_id": action.event_id})
        self.ctx.needs_human_raised += 1
        self.ctx.journal.append_event("needs_human", {"issue": action.issue, "pr": action.pr, "reason": action.reason})
        self.ctx.flagged.add(action.issue)
        self.ctx.publish(NeedsHuman(at=self.ctx.clock(), issue=action.issue, pr=action.pr, reason=action.reason))
        self.ctx.notice(f"issue #{action.issue} needs a human: {action.reason}", "warning",
                        bell=self.ctx.config.ui.bell)

    async def _do_kill(self, action: Kill) -> None:
        await self.supervisor.kill(action.run_id, action.state, action.reason)

    async def _do_cleanup(self, action: Cleanup) -> None:
        with contextlib.suppress(Exception):
            await self.ctx.runner.cleanup(action.run_id)
        with contextlib.suppress(Exception):
            self.ctx.workspaces.finish(action.run_id)
        self.ctx.set_extras(action.run_id, workspace=False)
        live = {run.run_id for run in self.supervisor.live_runs()}
        with contextlib.suppress(Exception):
            await self.ctx.workspaces.cleanup(live)

    async def _do_pauseforbudget(self, action: PauseForBudget) -> None:
        self.ctx.journal.set_kv("budget_paused_on", self.ctx.clock().date().isoformat())
        self.ctx.journal.set_kv("budget_reason", action.reason)
        self.ctx.journal.append_event("budget_pause", {"reason": action.reason})
        self.ctx.notice(f"budget stop: {action.reason}; dispatch is paused until you resume or the day ends",
                     "error", bell=True)
