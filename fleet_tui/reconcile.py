"""The pure heart of the fleet: `reconcile(snapshot, config) -> list[Action]`.

It owns the decision of what should happen next for every issue, PR and run, and nothing else: no I/O, no
clock (time comes in `snapshot.now`), no randomness. The orchestrator observes the world into a `Snapshot`
and executes the actions idempotently. There is no merge and no approve action: neither exists here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from fleet_tui.config import FleetConfig, PolicyConfig
from fleet_tui.model import (
    AgentRun,
    Approval,
    CIState,
    Issue,
    PullRequest,
    Role,
    RunState,
    Usage,
    Verdict,
)

EDITED_AFTER_APPROVAL = "edited after approval: approve again"
# Runs lost because the orchestrator itself stopped (a crash, a kill -9) are not the agent's failed attempts;
# this many of them in one step still stop the issue, so a fleet that keeps dying cannot loop forever.
MAX_INTERRUPTIONS = 12


def text_sha(text: str) -> str:
    """The digest an approval pins a title or body with."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- what reconcile reads ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    """An approval pinned to the issue's title and body as they were when it was approved."""

    issue: int
    event_id: str
    title_sha: str
    body_sha: str


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """This orchestrator's claim of an issue, keyed by the approval event it acts on."""

    issue: int
    event_id: str
    run_id: str
    branch: str
    confirmed: bool = True  # the forge's lease taken, then the label and marker comment written


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as the journal knows it, with what its result means for the issue."""

    run: AgentRun
    event_id: str = ""  # approval event the run works under (dev runs)
    head_sha: str = ""  # QA: the PR head reviewed; dev: the commit produced
    commits: int = 0  # dev: commits the run made on its branch
    lines_changed: int = 0  # dev: diff size against the base
    files: tuple[str, ...] = ()  # dev: paths touched
    pushed: bool = False  # dev: its branch was pushed (and the PR opened or updated)
    verdict: Verdict | None = None  # QA: the verdict the run gave
    findings: tuple[str, ...] = ()  # QA: its findings
    posted: bool = False  # QA: its review is on the PR
    workspace: bool = False  # its workspace still exists on disk
    interrupted: bool = False  # lost because the orchestrator stopped under it, not through its own fault
    bytes_changed: int = 0  # dev: bytes the diff changes (binary files by size)
    binary_files: tuple[str, ...] = ()  # dev: paths git treats as binary
    kind: str = ""  # dev: "fix" (review findings) or "update" (fresh base brought in); "" for the first run
    fixes_head: str = ""  # fix/update runs: the PR head they act on
    unresolved: tuple[str, ...] = ()  # dev: files still holding conflict markers at its head

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def live(self) -> bool:
        return self.run.state.live


@dataclass(frozen=True, slots=True)
class Hold:
    """A needs-human stop the fleet placed on an issue, and when."""

    reason: str
    at: datetime
    event_id: str = ""  # the approval it held: any other (newer) approval lifts an edit hold


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything reconcile may look at, observed at `now`."""

    now: datetime
    issues: tuple[Issue, ...] = ()  # open issues labelled proposed / approved / in-progress / needs-human
    approvals: Mapping[int, Approval] = field(default_factory=dict)  # judged standing approval per issue
    pins: Mapping[tuple[int, str], Pin] = field(default_factory=dict)
    pulls: tuple[PullRequest, ...] = ()
    runs: tuple[RunRecord, ...] = ()  # live runs and this tick's relevant finished ones
    claims: Mapping[int, ClaimRecord] = field(default_factory=dict)
    spend_day: Usage = Usage()
    spend_issue: Mapping[int, Usage] = field(default_factory=dict)
    paused: bool = False  # by the operator
    budget_paused_on: date | None = None  # day a budget stop happened; a new day lifts it
    fleet_login: str = ""
    fleet_is_separate: bool = False
    pm_requested: bool = False  # the operator asked for a PM run (or its schedule is due)
    handled: frozenset[int] = frozenset()  # issues already flagged needs-human by this orchestrator
    approvers: tuple[str, ...] = ()  # logins whose reviews count as the human's (changes requested)
    edits: Mapping[int, datetime] = field(default_factory=dict)  # latest title/body edit per approved issue
    holds: Mapping[int, Hold] = field(default_factory=dict)  # needs-human stops the fleet placed
    budget_lifted_on: date | None = None  # the operator lifted the daily budget stop for this day
    # claims across orchestrators (the forge's leases): issues another orchestrator holds a lease on, and those
    # of them whose lease this orchestrator has seen unrenewed for a whole lease period (issue -> version seen)
    leased_elsewhere: frozenset[int] = frozenset()
    claimable: Mapping[int, str] = field(default_factory=dict)


# --- what reconcile asks for ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Propose:
    """Run the PM."""

    slots: int  # most proposals it may add


@dataclass(frozen=True, slots=True)
class Claim:
    issue: int
    event_id: str
    title_sha: str
    body_sha: str
    lease: str = ""  # take over the lease seen expired at this version ("": acquire a claim nobody holds)


@dataclass(frozen=True, slots=True)
class DispatchDev:
    issue: int
    event_id: str
    branch: str
    attempt: int


@dataclass(frozen=True, slots=True)
class OpenPR:
    """Push the dev run's branch and open (or find) the PR for it."""

    issue: int
    run_id: str
    branch: str


@dataclass(frozen=True, slots=True)
class DispatchQA:
    issue: int
    pr: int
    head_sha: str
    branch: str
    round: int
    attempt: int


@dataclass(frozen=True, slots=True)
class PostReview:
    issue: int
    pr: int
    run_id: str
    head_sha: str
    round: int
    verdict: Verdict
    findings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DispatchFix:
    issue: int
    pr: int
    event_id: str
    branch: str
    round: int
    findings: tuple[str, ...]
    attempt: int
    head_sha: str = ""  # the PR head whose review asked for the changes


@dataclass(frozen=True, slots=True)
class DispatchUpdate:
    """Bring the fresh base into a PR that turned dirty or behind (merge or rebase in the sandbox); the Dev
    agent resolves what conflicts."""

    issue: int
    pr: int
    event_id: str
    branch: str
    round: int
    attempt: int
    head_sha: str
    strategy: str = "merge"


@dataclass(frozen=True, slots=True)
class ClearHold:
    """A fresh approval after the fleet held an edited issue: lift the needs-human stop."""

    issue: int


@dataclass(frozen=True, slots=True)
class MarkNeedsHuman:
    issue: int
    reason: str
    pr: int | None = None
    event_id: str = ""  # the approval the stop holds (an edit after it)


@dataclass(frozen=True, slots=True)
class Kill:
    run_id: str
    reason: str
    state: RunState = RunState.STOPPED


@dataclass(frozen=True, slots=True)
class Cleanup:
    run_id: str


@dataclass(frozen=True, slots=True)
class PauseForBudget:
    reason: str


Action = (Propose | Claim | DispatchDev | OpenPR | DispatchQA | PostReview | DispatchFix | DispatchUpdate
          | MarkNeedsHuman | ClearHold | Kill | Cleanup | PauseForBudget)
DISPATCHES = (DispatchDev, DispatchQA, DispatchFix, DispatchUpdate)


# --- policy helpers ---------------------------------------------------------------------------------


def protected_hits(files: tuple[str, ...] | list[str], policy: PolicyConfig) -> list[str]:
    """The paths among `files` that policy says only a human may change."""
    hits = []
    for path in files:
        clean = path.lstrip("./") if path.startswith("./") else path
        for rule in policy.protected_paths:
            if rule.endswith("/"):
                if clean.startswith(rule) or ("/" + rule) in ("/" + clean):
                    hits.append(path)
                    break
            elif clean == rule or clean.endswith("/" + rule):
                hits.append(path)
                break
    return hits


def policy_problem(lines: int, files: tuple[str, ...] | list[str], policy: PolicyConfig, *,
                   bytes_changed: int = 0, binary: tuple[str, ...] | list[str] = (),
                   unresolved: tuple[str, ...] | list[str] = ()) -> str:
    """Why a diff may not go to a human as a ready PR; empty when it may."""
    if unresolved:
        return "conflict markers left in: " + ", ".join(sorted(unresolved)[:10])
    if lines > policy.max_pr_lines:
        return f"diff of {lines} lines is over the policy cap of {policy.max_pr_lines}"
    if bytes_changed > policy.max_pr_bytes:
        return f"diff of {bytes_changed} bytes is over the policy cap of {policy.max_pr_bytes}"
    if binary and not policy.allow_binary:
        return "adds or changes binary files: " + ", ".join(sorted(binary)[:10])
    hits = protected_hits(files, policy)
    if hits:
        return "touches protected paths: " + ", ".join(sorted(hits)[:10])
    return ""


# mergeable_state values that call for an update round: conflicts with the base, or behind a base that
# branch protection wants PRs up to date with (GitHub reports `behind` only then).
STALE_STATES = frozenset({"dirty", "behind"})
CHANGES_REQUESTED = "CHANGES_REQUESTED"


def _is_gatekeeper(login: str, approvers: tuple[str, ...] | list[str]) -> bool:
    return login.lower() in {a.lower() for a in approvers}


def human_requests(pull: PullRequest, approvers: tuple[str, ...] | list[str], head: str) -> tuple[str, ...]:
    """What approvers asked for in "changes requested" reviews of `head` (the text stays untrusted: the prompt
    builder sanitizes it). Reviews by anyone else never start a round."""
    found = []
    for review in pull.reviews:
        if review.state.upper() != CHANGES_REQUESTED or review.commit_id != head:
            continue
        if review.author.type != "User" or not _is_gatekeeper(review.author.login, approvers):
            continue
        body = review.body.strip() or "(no summary; see the inline comments)"
        found.append(f"{review.author.login} requested changes: {body}")
    return tuple(found)


def gatekeeper_notes(pull: PullRequest, approvers: tuple[str, ...] | list[str], head: str) -> tuple[str, ...]:
    """Approvers' inline review comments on `head`, as findings: "path:line (login): text"."""
    notes = []
    for comment in pull.review_comments:
        if comment.commit_id and comment.commit_id != head:
            continue
        if comment.author.type != "User" or not _is_gatekeeper(comment.author.login, approvers):
            continue
        where = f"{comment.path}:{comment.line}" if comment.line is not None else comment.path
        notes.append(f"{where} ({comment.author.login}): {comment.body.strip()}")
    return tuple(notes)


def _human_heads(pull: PullRequest, approvers: tuple[str, ...] | list[str]) -> set[str]:
    """Heads of this PR on which an approver requested changes."""
    return {r.commit_id for r in pull.reviews if r.state.upper() == CHANGES_REQUESTED and r.author.type == "User"
            and _is_gatekeeper(r.author.login, approvers)}


def readiness(pull: PullRequest, verdict: Verdict | None) -> tuple[bool, str]:
    """Whether a fleet PR is ready for the human to merge, or why not: QA (the fleet's own verdict) passed its
    current head, the forge says it is mergeable and clean, and CI is not failing or pending."""
    if verdict is None:
        return False, "QA pending"
    if verdict != Verdict.PASS:
        return False, "QA asked for changes"
    if pull.mergeable is None:
        return False, "mergeability being computed"
    if pull.mergeable_state == "dirty" or pull.mergeable is False:
        return False, f"conflicts with {pull.base}"
    if pull.mergeable_state == "behind":
        return False, f"behind {pull.base}"
    if pull.ci == CIState.FAILURE:
        return False, "CI failing"
    if pull.ci == CIState.PENDING:
        return False, "CI pending"
    if pull.draft:
        return False, "draft"
    if pull.mergeable_state == "blocked":
        # checks are green, so what blocks it is a required review: the human's own step before merging
        return True, "needs a required review"
    return True, ""


def role_cfg(config: FleetConfig, role: Role):
    return getattr(config.roles, role.value)


def _over(usage: Usage, tokens: int, usd: float) -> bool:
    return (tokens > 0 and usage.tokens > tokens) or (usd > 0 and usage.cost_usd > usd)


def _claimed_branches(claims: Mapping[int, ClaimRecord]) -> dict[str, int]:
    """Branch -> issue of every claim (a PR belongs to the issue whose claim named its head branch)."""
    return {claim.branch: claim.issue for claim in claims.values() if claim.branch}


# --- reconcile --------------------------------------------------------------------------------------


@dataclass
class _Slots:
    """Capacity left this tick, per role and for the fleet."""

    role: dict[Role, int]
    fleet: int
    busy: set[int]

    def take(self, role: Role, issue: int | None) -> bool:
        if self.fleet <= 0 or self.role[role] <= 0 or (issue is not None and issue in self.busy):
            return False
        self.fleet -= 1
        self.role[role] -= 1
        if issue is not None:
            self.busy.add(issue)
        return True


def reconcile(snapshot: Snapshot, config: FleetConfig) -> list[Action]:
    """The actions that move the fleet towards where it should be. Pure."""
    actions: list[Action] = []
    live = [r for r in snapshot.runs if r.live]
    killed: set[str] = set()

    # budgets and timeouts of live runs ------------------------------------------------------------
    policy = config.policy
    budget_reason = ""
    lifted = snapshot.budget_lifted_on is not None and snapshot.budget_lifted_on >= snapshot.now.date()
    if not lifted and _over(snapshot.spend_day, policy.budget_day_tokens, policy.budget_day_usd):
        budget_reason = "daily budget spent"
        for rec in live:
            killed.add(rec.run_id)
            actions.append(Kill(rec.run_id, budget_reason, RunState.OVER_BUDGET))
    for rec in live:
        if rec.run_id in killed:
            continue
        cfg = role_cfg(config, rec.run.role)
        issue_spend = snapshot.spend_issue.get(rec.run.issue, Usage()) if rec.run.issue is not None else Usage()
        if _over(rec.run.usage, cfg.budget_tokens, cfg.budget_usd):
            reason = f"run budget spent ({rec.run.usage.tokens} tokens, ${rec.run.usage.cost_usd:.2f})"
        elif _over(issue_spend, 0, policy.budget_issue_usd):
            reason = f"issue budget spent (${issue_spend.cost_usd:.2f})"
        else:
            reason = ""
        if reason:
            killed.add(rec.run_id)
            budget_reason = budget_reason or reason
            actions.append(Kill(rec.run_id, reason, RunState.OVER_BUDGET))
            continue
        started = rec.run.started_at
        if started is not None and (snapshot.now - started).total_seconds() > cfg.timeout_s:
            killed.add(rec.run_id)
            actions.append(Kill(rec.run_id, f"timed out after {cfg.timeout_s} s", RunState.TIMED_OUT))
    budget_stopped = bool(budget_reason) or (not lifted and
        snapshot.budget_paused_on is not None and snapshot.budget_paused_on >= snapshot.now.date())
    if budget_reason and not (snapshot.budget_paused_on is not None
                              and snapshot.budget_paused_on >= snapshot.now.date()):
        actions.append(PauseForBudget(budget_reason))
    may_dispatch = not snapshot.paused and not budget_stopped

    still_live = [r for r in live if r.run_id not in killed]
    slots = _Slots(
        role={role: role_cfg(config, role).max_concurrent - sum(1 for r in still_live if r.run.role == role)
              for role in Role},
        fleet=policy.max_live_runs - len(still_live),
        busy={r.run.issue for r in live if r.run.issue is not None},
    )

    labels = config.labels
    issues = {i.number: i for i in snapshot.issues if i.state == "open"}
    runs_by_issue: dict[int, list[RunRecord]] = {}
    for rec in snapshot.runs:
        if rec.run.issue is not None:
            runs_by_issue.setdefault(rec.run.issue, []).append(rec)
    pulls_by_issue: dict[int, PullRequest] = {}
    branches = _claimed_branches(snapshot.claims)
    for pull in snapshot.pulls:
        if pull.state != "open":
            continue
        number = branches.get(pull.head)
        if number is not None:
            pulls_by_issue[number] = pull
    flagged: set[int] = set()

    def needs_human(issue: int, reason: str, pr: int | None = None, event_id: str = "") -> None:
        if issue in flagged or issue in snapshot.handled:
            return
        flagged.add(issue)
        actions.append(MarkNeedsHuman(issue, reason, pr, event_id))

    # work on approved issues, in approval order ------------------------------------------------------
    approved: list[tuple[datetime, int, Approval]] = []
    for number, issue in issues.items():
        approval = snapshot.approvals.get(number)
        if not issue.has_label(labels.approved):
            continue
        if approval is None or not approval.verified or approval.label != labels.approved:
            continue  # an unverified approval is reported, never acted on
        if issue.has_label(labels.needs_human):
            hold = snapshot.holds.get(number)
            if hold is not None and hold.reason == EDITED_AFTER_APPROVAL and (
                    approval.event.event_id != hold.event_id if hold.event_id
                    else approval.event.created_at > hold.at):
                actions.append(ClearHold(number))  # approved again after the edit: the new text stands
            continue
        actor = approval.event.actor.login.lower()
        if snapshot.fleet_is_separate and snapshot.fleet_login and actor == snapshot.fleet_login.lower():
            continue  # the fleet never acts on its own events
        approved.append((approval.event.created_at, number, approval))
    approved.sort(key=lambda item: (item[0], item[1]))

    max_rounds = config.roles.qa.max_qa_rounds
    for _, number, approval in approved:
        issue = issues[number]
        event_id = approval.event.event_id
        pin = snapshot.pins.get((number, event_id))
        edited = snapshot.edits.get(number)
        if (pin is not None and (pin.title_sha != text_sha(issue.title) or pin.body_sha != text_sha(issue.body))
                or (edited is not None and edited > approval.event.created_at)):
            needs_human(number, EDITED_AFTER_APPROVAL, event_id=event_id)
            continue
        claim = snapshot.claims.get(number)
        if claim is not None and claim.event_id == event_id and not claim.confirmed:
            # our claim was cut short (a crash between its steps): finish it, it repeats nothing
            if may_dispatch and slots.take(Role.DEV, number):
                actions.append(Claim(number, event_id, text_sha(issue.title), text_sha(issue.body)))
            continue
        if claim is None or claim.event_id != event_id:
            lease = ""
            if claim is None and (issue.has_label(labels.in_progress) or number in snapshot.leased_elsewhere):
                # claimed by another orchestrator: ours only once its lease was seen expired. An in-progress
                # label without a lease is a released claim (the lease is taken before the label is written):
                # it waits for a human, who removes the label to hand the issue back
                lease = snapshot.claimable.get(number, "")
                if not lease:
                    continue
            if may_dispatch and slots.take(Role.DEV, number):
                actions.append(Claim(number, event_id, text_sha(issue.title), text_sha(issue.body), lease))
            continue
        issue_spend = snapshot.spend_issue.get(number, Usage())
        over_issue_budget = _over(issue_spend, 0, policy.budget_issue_usd)
        recs = runs_by_issue.get(number, [])
        if any(r.live for r in recs):
            continue
        stopped = [r for r in recs if r.run.state == RunState.STOPPED]
        if stopped:
            needs_human(number, f"run {stopped[-1].run_id} was stopped by the operator; retry to go on")
            continue
        pull = pulls_by_issue.get(number)
        dev_runs = [r for r in recs if r.run.role == Role.DEV and r.event_id == event_id]
        # a finished dev run whose work is not pushed yet
        unpushed = [r for r in dev_runs if r.run.state == RunState.SUCCEEDED and r.commits > 0 and not r.pushed]
        if unpushed:
            rec = max(unpushed, key=lambda r: (r.run.qa_round, r.run.attempt))
            problem = policy_problem(rec.lines_changed, rec.files, policy, bytes_changed=rec.bytes_changed,
                                     binary=rec.binary_files, unresolved=rec.unresolved)
            if problem:
                needs_human(number, problem, pull.number if pull else None)
            else:
                actions.append(OpenPR(number, rec.run_id, claim.branch))
            continue
        if pull is None:
            first = [r for r in dev_runs if r.run.qa_round == 0]
            pushed_any = any(r.pushed for r in dev_runs)
            if pushed_any:
                continue  # the PR is being opened or was closed: nothing to dispatch
            ended = [r for r in first if r.run.state.finished]
            stop = _give_up(ended, config.roles.dev.max_attempts, "the dev run", over_issue_budget)
            if stop:
                needs_human(number, stop)
                continue
            if may_dispatch and slots.take(Role.DEV, number):
                actions.append(DispatchDev(number, event_id, claim.branch, len(ended) + 1))
            continue

        # the PR exists: keep it mergeable, take the human's change requests, QA every new head ---------
        if pull.mergeable is not None and pull.mergeable_state in STALE_STATES:
            updates = [r for r in dev_runs if r.kind == "update"]
            on_head = [r for r in updates if r.fixes_head == pull.head_sha]
            if any(r.pushed for r in on_head):
                continue  # pushed: the updated head is on its way
            used = len({r.fixes_head for r in updates if r.pushed})
            state = "conflicts with" if pull.mergeable_state == "dirty" else "is behind"
            if used >= policy.max_update_rounds:
                needs_human(number, f"PR #{pull.number} {state} {pull.base} after {used} update round(s) "
                            f"(cap {policy.max_update_rounds})", pull.number)
                continue
            ended = [r for r in on_head if r.run.state.finished]
            stop = _give_up(ended, config.roles.dev.max_attempts, "the update run", over_issue_budget)
            if stop:
                needs_human(number, stop, pull.number)
                continue
            if may_dispatch and slots.take(Role.DEV, number):
                actions.append(DispatchUpdate(number, pull.number, event_id, claim.branch, used + 1, len(ended) + 1,
                                              pull.head_sha, policy.update_strategy))
            continue
        qa_runs = [r for r in recs if r.run.role == Role.QA and r.run.pr == pull.number]
        verdicts = _verdicts(qa_runs)
        head_verdict = next((r for r in verdicts if r.head_sha == pull.head_sha), None)
        human = human_requests(pull, snapshot.approvers, pull.head_sha)
        if head_verdict is None and not human:
            pending = [r for r in qa_runs if r.head_sha == pull.head_sha and r.run.state.finished]
            done = next((r for r in pending if r.verdict is not None and not r.posted), None)
            if done is not None:
                actions.append(PostReview(number, pull.number, done.run_id, pull.head_sha, done.run.qa_round,
                                          done.verdict, done.findings))
                continue
            problem = policy_problem(pull.lines_changed, pull.files, policy)
            if problem:
                needs_human(number, problem, pull.number)
                continue
            ended = [r for r in pending if r.verdict is None]
            stop = _give_up(ended, config.roles.qa.max_attempts, "the QA run", over_issue_budget)
            if stop:
                needs_human(number, stop, pull.number)
                continue
            if may_dispatch and slots.take(Role.QA, number):
                actions.append(DispatchQA(number, pull.number, pull.head_sha, pull.head, len(verdicts) + 1,
                                          len(ended) + 1))
            continue
        qa_changes = head_verdict is not None and head_verdict.verdict == Verdict.CHANGES
        if not qa_changes and not human:
            continue  # QA passed this head: ready for the human once the forge agrees
        changes = [r for r in verdicts if r.verdict == Verdict.CHANGES]
        asked = {r.head_sha for r in changes} | _human_heads(pull, snapshot.approvers)
        if len(asked) >= max_rounds:
            needs_human(number, f"reviews asked for changes {len(asked)} rounds (cap {max_rounds})", pull.number)
            continue
        if qa_changes and len(changes) >= 2 and _finding_set(changes[-1]) == _finding_set(changes[-2]):
            needs_human(number, "QA repeated the same findings after a fix round", pull.number)
            continue
        fix_round = head_verdict.run.qa_round if head_verdict is not None else len(verdicts) + 1
        fixes = [r for r in dev_runs if r.kind != "update" and (
            r.fixes_head == pull.head_sha
            or (not r.fixes_head and head_verdict is not None and r.run.qa_round == fix_round > 0))]
        ended = [r for r in fixes if r.run.state.finished]
        if any(r.pushed for r in fixes):
            continue  # pushed: the new head is on its way
        stop = _give_up(ended, config.roles.dev.max_attempts, f"fix round {fix_round}", over_issue_budget)
        if stop:
            needs_human(number, stop, pull.number)
            continue
        findings = ((tuple(head_verdict.findings) if qa_changes and head_verdict is not None else ()) + human
                    + gatekeeper_notes(pull, snapshot.approvers, pull.head_sha))
        if may_dispatch and slots.take(Role.DEV, number):
            actions.append(DispatchFix(number, pull.number, event_id, claim.branch, fix_round, findings,
                                       len(ended) + 1, pull.head_sha))

    # the PM --------------------------------------------------------------------------------------------
    waiting = sum(1 for i in issues.values() if i.has_label(labels.proposed))
    room = policy.max_open_proposals - waiting
    pm_live = any(r.run.role == Role.PM for r in still_live)
    if snapshot.pm_requested and may_dispatch and room > 0 and not pm_live and slots.take(Role.PM, None):
        actions.append(Propose(room))

    # workspaces whose results are collected (retention on disk is the workspace layer's) -------------
    for rec in snapshot.runs:
        if not rec.workspace or rec.live:
            continue
        if rec.run.role == Role.DEV and rec.run.state == RunState.SUCCEEDED and rec.commits > 0 and not rec.pushed:
            continue  # still needed to push
        if rec.run.role == Role.QA and rec.verdict is not None and not rec.posted:
            continue
        actions.append(Cleanup(rec.run_id))
    return actions


def _split_interrupted(ended: list[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """(attempts that failed on their own, runs lost to an orchestrator restart)."""
    return [r for r in ended if not r.interrupted], [r for r in ended if r.interrupted]


def _give_up(ended: list[RunRecord], max_attempts: int, what: str, over_issue_budget: bool) -> str:
    """Why a step's next attempt should go to a human instead ("" when it may go on): its attempts failed
    `max_attempts` times, restarts interrupted it too often, or the issue's budget is spent."""
    failures, lost = _split_interrupted(ended)
    if len(failures) >= max_attempts:
        last = max(failures, key=lambda r: r.run.attempt)
        return f"{what} failed {len(failures)} times: {_why(last)}".removeprefix("the ")
    if len(lost) >= MAX_INTERRUPTIONS:
        return f"{what} was interrupted {len(lost)} times by orchestrator restarts"
    return "issue budget spent" if over_issue_budget else ""


def _why(rec: RunRecord) -> str:
    return rec.run.reason or rec.run.state.value


def _verdicts(qa_runs: list[RunRecord]) -> list[RunRecord]:
    """Posted QA verdicts, oldest round first, one per head."""
    seen: dict[str, RunRecord] = {}
    for rec in sorted(qa_runs, key=lambda r: (r.run.qa_round, r.run.attempt)):
        if rec.posted and rec.verdict is not None and rec.head_sha not in seen:
            seen[rec.head_sha] = rec
    return sorted(seen.values(), key=lambda r: r.run.qa_round)


def _finding_set(rec: RunRecord) -> frozenset[str]:
    return frozenset(" ".join(f.lower().split()) for f in rec.findings)
