"""Property and example tests of the pure `reconcile`: caps, exactly one dispatch per issue, approvals,
policy before a PR reaches a human, QA rounds, budgets."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from fleet_tui import reconcile as rc
from fleet_tui.config import FleetConfig, PolicyConfig, RoleConfig, RolesConfig
from fleet_tui.model import (
    Actor,
    AgentRun,
    Approval,
    Issue,
    LabelEvent,
    PullRequest,
    Role,
    RunState,
    Usage,
    Verdict,
)
from fleet_tui.reconcile import (
    Claim,
    ClaimRecord,
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

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONFIG = FleetConfig()
LABELS = CONFIG.labels
DISPATCHES = (DispatchDev, DispatchQA, DispatchFix)


def approval(issue: int, *, verified: bool = True, login: str = "alice", event_id: str = "ev1",
             minutes: int = 0) -> Approval:
    event = LabelEvent(event_id, "labeled", LABELS.approved, Actor(login), NOW - timedelta(hours=1, minutes=-minutes))
    return Approval(issue, LABELS.approved, event, verified, "" if verified else "not an approver")


def issue(number: int, *labels: str, title: str = "Fix it", body: str = "Do the thing") -> Issue:
    return Issue(number, title, body, labels=tuple(labels))


def pinned(i: Issue, event_id: str = "ev1") -> dict[tuple[int, str], Pin]:
    return {(i.number, event_id): Pin(i.number, event_id, text_sha(i.title), text_sha(i.body))}


def run(run_id: str, role: Role, issue_no: int | None, state: RunState, **kw: object) -> RunRecord:
    fields = {f.name for f in dataclasses.fields(RunRecord)}
    extra = {k: v for k, v in kw.items() if k in fields}
    agent = {k: v for k, v in kw.items() if k not in fields}
    agent.setdefault("started_at", NOW - timedelta(minutes=1))
    return RunRecord(AgentRun(run_id, role, issue_no, state, **agent), **extra)  # type: ignore[arg-type]


def claimed(number: int, event_id: str = "ev1") -> dict[int, ClaimRecord]:
    return {number: ClaimRecord(number, event_id, f"dev-{number}", f"fleet/{number}-x")}


def pull(number: int, issue_no: int, sha: str = "s1", **kw: object) -> PullRequest:
    return PullRequest(number, "t", f"Closes #{issue_no}", f"fleet/{issue_no}-x", "main", sha, "", **kw)  # type: ignore[arg-type]


# --- random snapshots ---------------------------------------------------------------------------------

TITLES = ("Fix it", "Add a flag", "Speed up")
LOGINS = ("alice", "fleet", "mallory")
STATES = tuple(RunState)


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[Snapshot, FleetConfig]:
    numbers = draw(st.lists(st.integers(1, 8), unique=True, max_size=8))
    issues, approvals, pins, claims, pulls, runs = [], {}, {}, {}, [], []
    label_pool = (LABELS.proposed, LABELS.approved, LABELS.in_progress, LABELS.needs_human)
    for n in numbers:
        labels = draw(st.lists(st.sampled_from(label_pool), unique=True, max_size=3))
        title, body = draw(st.sampled_from(TITLES)), draw(st.sampled_from(("a", "b")))
        i = issue(n, *labels, title=title, body=body)
        issues.append(i)
        event_id = draw(st.sampled_from(("ev1", "ev2")))
        if draw(st.booleans()):
            approvals[n] = approval(n, verified=draw(st.booleans()), login=draw(st.sampled_from(LOGINS)),
                                    event_id=event_id, minutes=draw(st.integers(0, 50)))
        if draw(st.booleans()):
            same = draw(st.booleans())
            pins[(n, event_id)] = Pin(n, event_id, text_sha(title if same else "other"), text_sha(body))
        if draw(st.booleans()):
            claims[n] = ClaimRecord(n, draw(st.sampled_from(("ev1", "ev2"))), f"dev-{n}", f"fleet/{n}-x")
            if draw(st.booleans()):
                files = draw(st.lists(st.sampled_from(("src/a.py", ".github/workflows/ci.yml", "AGENTS.md")),
                                      max_size=2))
                pulls.append(pull(100 + n, n, draw(st.sampled_from(("s1", "s2"))),
                                  additions=draw(st.integers(0, 1200)), files=tuple(files)))
        for k in range(draw(st.integers(0, 3))):
            role = draw(st.sampled_from(tuple(Role)))
            runs.append(run(
                f"r{n}-{k}", role, n if role != Role.PM else None, draw(st.sampled_from(STATES)),
                qa_round=draw(st.integers(0, 3)), attempt=draw(st.integers(1, 3)),
                pr=100 + n if role == Role.QA else None,
                usage=Usage(draw(st.integers(0, 2000)), 0, 0, draw(st.floats(0, 3))),
                event_id=draw(st.sampled_from(("ev1", "ev2"))), head_sha=draw(st.sampled_from(("s1", "s2"))),
                commits=draw(st.integers(0, 2)), pushed=draw(st.booleans()),
                verdict=draw(st.sampled_from((None, Verdict.PASS, Verdict.CHANGES))),
                findings=tuple(draw(st.lists(st.sampled_from(("x", "y")), max_size=2))), posted=draw(st.booleans()),
                workspace=draw(st.booleans()), lines_changed=draw(st.integers(0, 1000)),
            ))
    roles = RolesConfig(
        pm=RoleConfig(max_concurrent=draw(st.integers(1, 2)), budget_tokens=draw(st.sampled_from((0, 1000)))),
        dev=RoleConfig(max_concurrent=draw(st.integers(1, 3))),
        qa=RoleConfig(max_concurrent=draw(st.integers(1, 2))),
    )
    policy = PolicyConfig(max_live_runs=draw(st.integers(1, 4)), budget_day_usd=draw(st.sampled_from((0.0, 5.0))),
                          budget_issue_usd=draw(st.sampled_from((0.0, 1.0))))
    config = FleetConfig(roles=roles, policy=policy)
    snapshot = Snapshot(
        now=NOW, issues=tuple(issues), approvals=approvals, pins=pins, pulls=tuple(pulls), runs=tuple(runs),
        claims=claims, spend_day=Usage(0, 0, 0, draw(st.floats(0, 10))),
        spend_issue={n: Usage(0, 0, 0, draw(st.floats(0, 2))) for n in numbers},
        paused=draw(st.booleans()), fleet_login="fleet", fleet_is_separate=draw(st.booleans()),
        pm_requested=draw(st.booleans()),
    )
    return snapshot, config


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _issue_of(action: object) -> int | None:
    return getattr(action, "issue", None)


@PROPS
@given(snapshots())
def test_never_two_dispatches_for_one_issue(case: tuple[Snapshot, FleetConfig]) -> None:
    snapshot, config = case
    actions = reconcile(snapshot, config)
    killed = {a.run_id for a in actions if isinstance(a, Kill)}
    for number in {i.number for i in snapshot.issues}:
        live = [r for r in snapshot.runs if r.live and r.run.issue == number and r.run_id not in killed]
        dispatched = [a for a in actions if isinstance(a, DISPATCHES) and a.issue == number]
        assert len(dispatched) <= 1
        if live:
            assert not dispatched, (live, dispatched)


@PROPS
@given(snapshots())
def test_never_over_a_role_cap_or_the_fleet_cap(case: tuple[Snapshot, FleetConfig]) -> None:
    snapshot, config = case
    actions = reconcile(snapshot, config)
    killed = {a.run_id for a in actions if isinstance(a, Kill)}
    live = [r for r in snapshot.runs if r.live and r.run_id not in killed]
    new = {Role.DEV: sum(isinstance(a, (DispatchDev, DispatchFix, Claim)) for a in actions),
           Role.QA: sum(isinstance(a, DispatchQA) for a in actions),
           Role.PM: sum(isinstance(a, Propose) for a in actions)}
    for role, count in new.items():
        cap = getattr(config.roles, role.value).max_concurrent
        running = sum(1 for r in live if r.run.role == role)
        assert count <= max(0, cap - running), (role, count, running)
    assert sum(new.values()) <= max(0, config.policy.max_live_runs - len(live))


@PROPS
@given(snapshots())
def test_never_acts_on_an_unverified_approval(case: tuple[Snapshot, FleetConfig]) -> None:
    snapshot, config = case
    for action in reconcile(snapshot, config):
        number = _issue_of(action)
        if number is None:
            continue
        found = snapshot.approvals.get(number)
        assert found is not None and found.verified, action
        if snapshot.fleet_is_separate:
            assert found.event.actor.login != "fleet", action


@PROPS
@given(snapshots())
def test_pure_and_never_merges_or_approves(case: tuple[Snapshot, FleetConfig]) -> None:
    snapshot, config = case
    first = reconcile(snapshot, config)
    assert first == reconcile(snapshot, config)
    allowed = (Propose, Claim, DispatchDev, OpenPR, DispatchQA, PostReview, DispatchFix, rc.DispatchUpdate,
               MarkNeedsHuman, rc.ClearHold, Kill, rc.Cleanup, PauseForBudget)
    assert all(isinstance(a, allowed) for a in first)
    names = [name.lower() for name in dir(rc)]
    assert not [n for n in names if "merge" in n or "approve" in n]


@PROPS
@given(snapshots())
def test_paused_or_edited_means_no_new_work(case: tuple[Snapshot, FleetConfig]) -> None:
    snapshot, config = case
    actions = reconcile(snapshot, config)
    if snapshot.paused:
        assert not [a for a in actions if isinstance(a, (*DISPATCHES, Claim, Propose))]
    for action in actions:
        if isinstance(action, (*DISPATCHES, Claim, OpenPR)):
            i = next(i for i in snapshot.issues if i.number == action.issue)
            pin = snapshot.pins.get((i.number, snapshot.approvals[i.number].event.event_id))
            assert pin is None or pin.title_sha == text_sha(i.title)


# --- examples -------------------------------------------------------------------------------------------


def base(*issues_: Issue, **kw: object) -> Snapshot:
    approvals = {i.number: approval(i.number, minutes=i.number) for i in issues_ if i.has_label(LABELS.approved)}
    pins: dict[tuple[int, str], Pin] = {}
    for i in issues_:
        pins.update(pinned(i))
    values: dict[str, object] = dict(now=NOW, issues=issues_, approvals=approvals, pins=pins, fleet_login="fleet",
                                     fleet_is_separate=True)
    values.update(kw)
    return Snapshot(**values)  # type: ignore[arg-type]


def test_approved_issues_are_claimed_in_approval_order_up_to_the_dev_cap() -> None:
    issues_ = [issue(n, LABELS.approved) for n in (3, 1, 2)]
    approvals = {3: approval(3, minutes=0), 1: approval(1, minutes=10), 2: approval(2, minutes=20)}
    actions = reconcile(base(*issues_, approvals=approvals), CONFIG)
    assert [a.issue for a in actions if isinstance(a, Claim)] == [3, 1]  # dev cap is 2 by default


def test_edited_after_approval_is_held_and_flagged() -> None:
    i = issue(1, LABELS.approved)
    pins = {(1, "ev1"): Pin(1, "ev1", text_sha("Fix it"), text_sha("the approved body"))}
    actions = reconcile(base(i, pins=pins, claims=claimed(1)), CONFIG)
    assert actions == [MarkNeedsHuman(1, "edited after approval: approve again", event_id="ev1")]


def test_an_approval_by_the_fleet_itself_never_triggers_work() -> None:
    i = issue(1, LABELS.approved)
    actions = reconcile(base(i, approvals={1: approval(1, login="fleet")}), CONFIG)
    assert actions == []


def test_another_orchestrators_claim_is_left_alone() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    assert reconcile(base(i), CONFIG) == []


def test_dev_result_over_the_line_cap_goes_to_a_human_not_a_pr() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, lines_changed=5000)
    actions = reconcile(base(i, claims=claimed(1), runs=(dev,)), CONFIG)
    assert len(actions) == 1 and isinstance(actions[0], MarkNeedsHuman)
    assert "over the policy cap" in actions[0].reason


def test_dev_result_touching_a_workflow_goes_to_a_human() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, lines_changed=3,
              files=(".github/workflows/ci.yml",))
    actions = reconcile(base(i, claims=claimed(1), runs=(dev,)), CONFIG)
    assert isinstance(actions[0], MarkNeedsHuman) and ".github/workflows/ci.yml" in actions[0].reason


def test_good_dev_result_opens_the_pr_then_qa_reviews_the_head() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, lines_changed=3)
    assert reconcile(base(i, claims=claimed(1), runs=(dev,)), CONFIG) == [OpenPR(1, "dev-1", "fleet/1-x")]
    pushed = dataclasses.replace(dev, pushed=True)
    actions = reconcile(base(i, claims=claimed(1), runs=(pushed,), pulls=(pull(10, 1),)), CONFIG)
    assert actions == [DispatchQA(1, 10, "s1", "fleet/1-x", 1, 1)]


def _qa(round_: int, sha: str, verdict: Verdict, findings: tuple[str, ...] = (), posted: bool = True) -> RunRecord:
    return run(f"qa-10-{round_}", Role.QA, 1, RunState.SUCCEEDED, pr=10, qa_round=round_, head_sha=sha,
               verdict=verdict, findings=findings, posted=posted)


def test_qa_changes_lead_to_a_fix_round_on_the_same_branch() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    unposted = _qa(1, "s1", Verdict.CHANGES, ("add tests",), posted=False)
    snap = base(i, claims=claimed(1), runs=(dev, unposted), pulls=(pull(10, 1),))
    assert reconcile(snap, CONFIG) == [PostReview(1, 10, "qa-10-1", "s1", 1, Verdict.CHANGES, ("add tests",))]
    posted = dataclasses.replace(unposted, posted=True)
    snap = base(i, claims=claimed(1), runs=(dev, posted), pulls=(pull(10, 1),))
    assert reconcile(snap, CONFIG) == [DispatchFix(1, 10, "ev1", "fleet/1-x", 1, ("add tests",), 1, "s1")]


def test_qa_pass_leaves_the_pr_for_the_human() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    snap = base(i, claims=claimed(1), runs=(dev, _qa(1, "s1", Verdict.PASS)), pulls=(pull(10, 1),))
    assert reconcile(snap, CONFIG) == []


def test_round_cap_and_repeated_findings_stop_with_needs_human() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    same = (_qa(1, "s1", Verdict.CHANGES, ("a",)), _qa(2, "s2", Verdict.CHANGES, ("A ",)))
    snap = base(i, claims=claimed(1), runs=(dev, *same), pulls=(pull(10, 1, "s2"),))
    [action] = reconcile(snap, CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "same findings" in action.reason
    rounds = tuple(_qa(n, f"s{n}", Verdict.CHANGES, (f"f{n}",)) for n in (1, 2, 3))
    snap = base(i, claims=claimed(1), runs=(dev, *rounds), pulls=(pull(10, 1, "s3"),))
    [action] = reconcile(snap, CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "3 rounds" in action.reason


def test_failed_dev_runs_retry_then_escalate() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    one = run("dev-1", Role.DEV, 1, RunState.FAILED, event_id="ev1", reason="exit 1")
    assert reconcile(base(i, claims=claimed(1), runs=(one,)), CONFIG) == [DispatchDev(1, "ev1", "fleet/1-x", 2)]
    two = run("dev-1-a2", Role.DEV, 1, RunState.LOST, event_id="ev1", attempt=2, reason="gone")
    [action] = reconcile(base(i, claims=claimed(1), runs=(one, two)), CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "failed 2 times" in action.reason


def test_budget_over_kills_pauses_and_a_new_day_lifts_the_pause() -> None:
    config = FleetConfig(policy=PolicyConfig(budget_day_usd=1.0))
    i = issue(1, LABELS.approved)
    live = run("dev-9", Role.DEV, 9, RunState.RUNNING)
    snap = base(i, runs=(live,), spend_day=Usage(0, 0, 0, 1.5))
    actions = reconcile(snap, config)
    assert Kill("dev-9", "daily budget spent", RunState.OVER_BUDGET) in actions
    assert PauseForBudget("daily budget spent") in actions
    assert not [a for a in actions if isinstance(a, (Claim, *DISPATCHES))]
    held = base(i, budget_paused_on=NOW.date())
    assert reconcile(held, config) == []
    next_day = dataclasses.replace(held, now=NOW + timedelta(days=1))
    assert [type(a) for a in reconcile(next_day, config)] == [Claim]


def test_a_run_past_its_timeout_is_killed() -> None:
    live = run("qa-1-1", Role.QA, 1, RunState.RUNNING, started_at=NOW - timedelta(hours=2))
    assert reconcile(base(runs=(live,)), CONFIG) == [Kill("qa-1-1", "timed out after 1800 s", RunState.TIMED_OUT)]


def test_pm_respects_the_proposal_cap() -> None:
    waiting = [issue(n, LABELS.proposed) for n in range(1, 4)]
    assert reconcile(base(*waiting, pm_requested=True), CONFIG) == [Propose(2)]
    full = [issue(n, LABELS.proposed) for n in range(1, 6)]
    assert reconcile(base(*full, pm_requested=True), CONFIG) == []


def test_a_pr_touching_a_protected_path_is_not_reviewed_as_ready() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    snap = base(i, claims=claimed(1), runs=(dev,), pulls=(pull(10, 1, files=("CODEOWNERS",)),))
    [action] = reconcile(snap, CONFIG)
    assert isinstance(action, MarkNeedsHuman) and action.pr == 10 and "CODEOWNERS" in action.reason


# --- a real repository: update rounds, the human's reviews, edits, binary files, readiness -------------------

def _passed_pr(state: str, mergeable: bool | None = True, **kw: object) -> tuple[Issue, Snapshot]:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    runs = (dev, _qa(1, "s1", Verdict.PASS), *kw.pop("runs", ()))  # type: ignore[misc]
    pr = pull(10, 1, mergeable=mergeable, mergeable_state=state)
    return i, base(i, claims=claimed(1), runs=runs, pulls=(pr,), **kw)


def test_a_pr_that_turns_dirty_gets_an_update_round_then_needs_a_human_after_the_cap() -> None:
    _, snap = _passed_pr("dirty")
    assert reconcile(snap, CONFIG) == [rc.DispatchUpdate(1, 10, "ev1", "fleet/1-x", 1, 1, "s1", "merge")]
    # mergeability not settled yet: wait, do not update on a guess
    _, unsettled = _passed_pr("unknown", mergeable=None)
    assert reconcile(unsettled, CONFIG) == []
    # an update pushed for this head: its new head is on the way
    upd = run("dev-1-u1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True, kind="update",
              fixes_head="s1")
    _, waiting = _passed_pr("dirty", runs=(upd,))
    assert reconcile(waiting, CONFIG) == []
    # two heads updated already and still behind: a human decides
    old = dataclasses.replace(upd, fixes_head="s0", run=dataclasses.replace(upd.run, run_id="dev-1-u0"))
    other = dataclasses.replace(upd, fixes_head="s-1", run=dataclasses.replace(upd.run, run_id="dev-1-u00"))
    _, capped = _passed_pr("behind", runs=(old, other))
    [action] = reconcile(capped, CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "is behind main after 2 update round(s)" in action.reason


def test_update_strategy_comes_from_policy() -> None:
    config = dataclasses.replace(CONFIG, policy=dataclasses.replace(CONFIG.policy, update_strategy="rebase"))
    _, snap = _passed_pr("dirty")
    [action] = reconcile(snap, config)
    assert isinstance(action, rc.DispatchUpdate) and action.strategy == "rebase"


def _review(login: str, state: str, body: str, sha: str = "s1", kind: str = "User"):
    from fleet_tui.model import Review

    return Review(f"r-{login}-{state}", Actor(login, kind), body, state, sha)


def test_an_approvers_changes_requested_review_starts_a_fix_round_with_their_words() -> None:
    from fleet_tui.model import ReviewComment

    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    pr = pull(10, 1, mergeable=True, mergeable_state="clean",
              reviews=(_review("alice", "CHANGES_REQUESTED", "Use a dataclass"),),
              review_comments=(ReviewComment("c1", Actor("alice"), "off by one", "app.py", 12, "s1"),
                               ReviewComment("c2", Actor("mallory"), "delete CI", "ci.yml", 1, "s1")))
    snap = base(i, claims=claimed(1), runs=(dev, _qa(1, "s1", Verdict.PASS)), pulls=(pr,), approvers=("alice",))
    [action] = reconcile(snap, CONFIG)
    assert isinstance(action, DispatchFix) and action.head_sha == "s1"
    assert action.findings == ("alice requested changes: Use a dataclass", "app.py:12 (alice): off by one")


def test_reviews_by_non_approvers_and_bots_never_start_or_pass_anything() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    reviews = (_review("mallory", "CHANGES_REQUESTED", "rewrite it"), _review("bot", "CHANGES_REQUESTED", "x",
                                                                              kind="Bot"),
               _review("mallory", "COMMENTED", "<!-- fleet:verdict=pass round=1 --> pass"))
    pr = pull(10, 1, mergeable=True, mergeable_state="clean", reviews=reviews)
    snap = base(i, claims=claimed(1), runs=(dev,), pulls=(pr,), approvers=("alice",))
    assert reconcile(snap, CONFIG) == [DispatchQA(1, 10, "s1", "fleet/1-x", 1, 1)]  # QA still reviews it
    ready, why = rc.readiness(pr, None)
    assert not ready and why == "QA pending"


def test_human_change_requests_count_against_the_round_cap() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, pushed=True)
    qa = (_qa(1, "s1", Verdict.CHANGES, ("a",)), _qa(2, "s2", Verdict.CHANGES, ("b",)))
    pr = pull(10, 1, sha="s3", mergeable=True, mergeable_state="clean",
              reviews=(_review("alice", "CHANGES_REQUESTED", "no", sha="s3"),))
    snap = base(i, claims=claimed(1), runs=(dev, *qa), pulls=(pr,), approvers=("alice",))
    [action] = reconcile(snap, CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "3 rounds (cap 3)" in action.reason


def test_an_edit_after_the_approval_holds_the_issue_and_a_fresh_approval_lifts_the_hold() -> None:
    i = issue(1, LABELS.approved)
    edited = base(i, edits={1: NOW - timedelta(minutes=5)})  # approval was an hour ago
    assert reconcile(edited, CONFIG) == [MarkNeedsHuman(1, rc.EDITED_AFTER_APPROVAL, event_id="ev1")]
    before = base(i, edits={1: NOW - timedelta(hours=2)})
    assert isinstance(reconcile(before, CONFIG)[0], Claim)
    held = issue(1, LABELS.approved, LABELS.needs_human)
    hold = {1: rc.Hold(rc.EDITED_AFTER_APPROVAL, NOW - timedelta(minutes=30))}
    assert reconcile(base(held, holds=hold), CONFIG) == []  # the approval is older than the hold
    fresh = {1: approval(1, minutes=45)}  # approved again 15 minutes ago, after the hold
    assert reconcile(base(held, holds=hold, approvals=fresh), CONFIG) == [rc.ClearHold(1)]
    other = {1: rc.Hold("QA asked for changes 3 rounds (cap 3)", NOW - timedelta(minutes=30))}
    assert reconcile(base(held, holds=other, approvals=fresh), CONFIG) == []  # only edit holds lift this way
    # the forge's clock may differ from ours: a hold that names its approval is lifted by any other one
    by_event = {1: rc.Hold(rc.EDITED_AFTER_APPROVAL, NOW + timedelta(days=1), "ev1")}
    assert reconcile(base(held, holds=by_event), CONFIG) == []
    newer = {1: approval(1, event_id="ev2", minutes=-600)}
    assert reconcile(base(held, holds=by_event, approvals=newer), CONFIG) == [rc.ClearHold(1)]


def test_binary_files_and_bytes_count_in_the_size_policy() -> None:
    i = issue(1, LABELS.approved, LABELS.in_progress)
    dev = run("dev-1", Role.DEV, 1, RunState.SUCCEEDED, event_id="ev1", commits=1, lines_changed=0,
              bytes_changed=77_000, binary_files=("logo.bin",))
    [action] = reconcile(base(i, claims=claimed(1), runs=(dev,)), CONFIG)
    assert isinstance(action, MarkNeedsHuman) and "binary files: logo.bin" in action.reason
    allow = dataclasses.replace(CONFIG, policy=dataclasses.replace(CONFIG.policy, allow_binary=True,
                                                                    max_pr_bytes=50_000))
    [action] = reconcile(base(i, claims=claimed(1), runs=(dev,)), allow)
    assert isinstance(action, MarkNeedsHuman) and "77000 bytes" in action.reason


def test_a_lifted_daily_budget_lets_dispatch_go_on_for_that_day() -> None:
    config = dataclasses.replace(CONFIG, policy=dataclasses.replace(CONFIG.policy, budget_day_usd=1.0))
    i = issue(1, LABELS.approved)
    spent = base(i, spend_day=Usage(cost_usd=2.0))
    assert isinstance(reconcile(spent, config)[0], PauseForBudget)
    lifted = base(i, spend_day=Usage(cost_usd=2.0), budget_paused_on=NOW.date(), budget_lifted_on=NOW.date())
    assert isinstance(reconcile(lifted, config)[0], Claim)


def test_ready_means_qa_passed_and_the_forge_says_mergeable_and_green() -> None:
    from fleet_tui.model import CIState

    clean = pull(10, 1, mergeable=True, mergeable_state="clean", ci=CIState.SUCCESS)
    assert rc.readiness(clean, Verdict.PASS) == (True, "")
    assert rc.readiness(dataclasses.replace(clean, mergeable=None), Verdict.PASS)[0] is False
    assert rc.readiness(dataclasses.replace(clean, mergeable_state="dirty", mergeable=False), Verdict.PASS) == (
        False, "conflicts with main")
    assert rc.readiness(dataclasses.replace(clean, mergeable_state="behind"), Verdict.PASS) == (False, "behind main")
    assert rc.readiness(dataclasses.replace(clean, ci=CIState.FAILURE, mergeable_state="blocked"),
                        Verdict.PASS) == (False, "CI failing")
    assert rc.readiness(dataclasses.replace(clean, ci=CIState.PENDING), Verdict.PASS) == (False, "CI pending")
    assert rc.readiness(clean, Verdict.CHANGES) == (False, "QA asked for changes")
