"""The orchestrator end to end on the real local forge, local runner, workspaces, journal and scripted engine:
PM -> approve -> Dev -> PR -> QA changes -> fix round -> QA pass -> ready; plus claims, pins, restarts, events."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_tui.config import EngineConfig, FleetConfig, PolicyConfig, RoleConfig, RolesConfig, RunnerConfig
from fleet_tui.forge.base import ForgeError, marker, standing_label_event
from fleet_tui.forge.local import LocalForge
from fleet_tui.model import (
    AgentRun,
    Event,
    Notice,
    Role,
    RunLogLines,
    RunState,
    SnapshotPublished,
)
from fleet_tui.orchestrator import Orchestrator, _Subscriber
from fleet_tui.runners.local import LocalRunner
from fleet_tui.store import Journal
from fleet_tui.workspace import WorkspaceManager

PROPOSALS = [{"title": "Add a version flag", "body": "Print the version and exit."},
             {"title": "Handle empty input", "body": "Print an error instead of a traceback."}]
SCRIPT = {
    "pm": [{"print": "reading"}, {"final": "Proposals:\n```json\n" + json.dumps(PROPOSALS) + "\n```\n"}],
    "dev": [
        {"print": "working on {issue} round {round}"},
        {"write": "notes/{issue}.md", "content": "# {title}\nround {round}\n"},
        {"commit": "#{issue}: {title} (round {round})"},
        {"usage": {"input_tokens": 100, "output_tokens": 10, "cost_usd": 0.01}},
        {"final": "done"},
    ],
    "qa": {
        "1": [{"final": "Close.\n\nVERDICT: changes\n\n- notes say nothing about tests\n"}],
        "default": [{"final": "Good now.\n\nVERDICT: pass\n"}],
    },
}
LIMIT_S = 60


def make_config(tmp_path: Path, script_data: dict[str, Any] | None = None, **policy: Any) -> FleetConfig:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(script_data or SCRIPT))
    engine = EngineConfig(kind="scripted", command=sys.executable, script=str(script))
    scripted = RoleConfig(engine="scripted")
    return FleetConfig(engines={"scripted": engine}, policy=PolicyConfig(**policy), poll_interval_s=5,
                       roles=RolesConfig(pm=scripted, dev=RoleConfig(engine="scripted", max_concurrent=2),
                                         qa=scripted),
                       runner=RunnerConfig(kind="local"))


@asynccontextmanager
async def fleet(tmp_path: Path, repo: Path, config: FleetConfig | None = None,
                journal_name: str = "journal") -> AsyncIterator[Orchestrator]:
    config = config or make_config(tmp_path)
    journal = Journal.open(tmp_path / journal_name)
    try:
        async with LocalForge(repo) as forge:
            yield Orchestrator(config, forge=forge, runner=LocalRunner(), journal=journal, repo_path=repo,
                               workspaces=WorkspaceManager(tmp_path / journal_name / "ws"))
    finally:
        journal.close()


async def run_once(orch: Orchestrator) -> None:
    with anyio.fail_after(LIMIT_S):
        await orch.run(once=True)


async def approve_new_issue(orch: Orchestrator, title: str = "Add a flag", body: str = "Add --flag.") -> int:
    created = await orch.forge.create_issue(title, body, [orch.config.labels.proposed])
    await orch.approve(created.number)
    return created.number


@pytest.mark.anyio
async def test_pm_approve_dev_pr_qa_fix_pass_then_the_human_merges(tmp_path: Path, repo: Path) -> None:
    events: list[Event] = []
    async with fleet(tmp_path, repo) as orch:
        forge = orch.forge

        stream = orch.events()

        async def collect() -> None:
            async for event in stream:
                events.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await orch.run_pm()
            await run_once(orch)
        proposed = await forge.list_issues(labels=["proposed"])
        assert sorted(i.title for i in proposed) == sorted(p["title"] for p in PROPOSALS)
        number = proposed[0].number

        await orch.approve(number)
        await run_once(orch)

        [pull] = await forge.list_pulls()
        issue = await forge.get_issue(number)
        assert pull.body.startswith(f"Closes #{number}\n") and marker("issue", str(number)) in pull.body
        assert pull.head.startswith(f"fleet/{number}-")
        verdicts = [r.body for r in pull.reviews]
        assert len(verdicts) == 2 and all(r.state == "COMMENTED" for r in pull.reviews)
        assert "<!-- fleet:verdict=changes round=1 -->" in verdicts[0]
        assert "notes say nothing about tests" in verdicts[0]
        assert "<!-- fleet:verdict=pass round=2 -->" in verdicts[1]
        assert pull.reviews[1].commit_id == pull.head_sha != pull.reviews[0].commit_id
        claims = [c for c in issue.comments if "fleet:claim=" in c.body]
        assert len(claims) == 1
        assert "in-progress" in " ".join(issue.labels) and "fleet:needs-human" not in issue.labels
        runs = orch.journal.runs()
        shape = [(r.role, r.qa_round, r.state) for r in runs if r.role != Role.PM]
        assert shape == [(Role.DEV, 0, RunState.SUCCEEDED), (Role.QA, 1, RunState.SUCCEEDED),
                         (Role.DEV, 1, RunState.SUCCEEDED), (Role.QA, 2, RunState.SUCCEEDED)]
        assert orch.journal.spend_for_issue(number).cost_usd == pytest.approx(0.02)
        log = orch.log_path(runs[-1].run_id)
        assert log is not None and log.exists()

        # nothing is repeated by another pass, and the human merges locally
        await run_once(orch)
        again = await forge.get_pull(pull.number)
        assert len(again.reviews) == 2
        assert len((await forge.get_issue(number)).comments) == len(issue.comments)
        await orch.merge(pull.number)
        assert (await forge.get_issue(number)).state == "closed"

    kinds = {e.kind for e in events}
    assert {"SnapshotPublished", "RunChanged", "RunLogLines"} <= kinds
    assert any(isinstance(e, RunLogLines) and any("reading" in line for line in e.lines) for e in events)


@pytest.mark.anyio
async def test_a_claim_already_made_by_another_orchestrator_stands(tmp_path: Path, repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        number = await approve_new_issue(orch)
        event = standing_label_event(await orch.forge.label_events(number), "approved")
        assert event is not None
        # the lock is the forge's claim (a lease), not a comment: another orchestrator holds it, live
        assert await orch.forge.acquire_claim(number, "another-fleet", "dev-elsewhere", lease_s=180) is not None
        notices: list[str] = []

        stream = orch.events()

        async def collect() -> None:
            async for item in stream:
                if isinstance(item, Notice):
                    notices.append(item.message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await run_once(orch)
        assert orch.journal.runs() == []
        issue = await orch.forge.get_issue(number)
        # it stood down quietly: no comment, no label of its own, the other's lease untouched
        assert not any("fleet:claim=" in c.body for c in issue.comments)
        assert "fleet:in-progress" not in issue.labels
        assert (await orch.forge.get_claim(number)).holder == "another-fleet"


@pytest.mark.anyio
async def test_a_claim_cut_short_by_a_crash_is_finished_without_repeating_anything(tmp_path: Path,
                                                                                   repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        number = await approve_new_issue(orch)
        event = standing_label_event(await orch.forge.label_events(number), "approved")
        assert event is not None
        # a first process wrote its journal row and the label, then died before the marker comment
        orch.journal.set_kv(f"claim:{number}:{event.event_id}", {"branch": f"fleet/{number}-add-a-flag",
                                                                 "run_id": "dev-first"})
        orch.journal.add_claim(number, event.event_id, "dev-first")
        await orch.forge.add_labels(number, ["fleet:in-progress"])
        await run_once(orch)
        comments = (await orch.forge.get_issue(number)).comments
        claims = [c for c in comments if "fleet:claim=" in c.body]
        assert len(claims) == 1 and "dev-first" in claims[0].body
        assert orch.journal.runs()[0].run_id == "dev-first"
        assert len(await orch.forge.list_pulls()) == 1


@pytest.mark.anyio
async def test_an_issue_edited_after_approval_is_held(tmp_path: Path, repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        number = await approve_new_issue(orch, body="Add --flag.")
        forge = orch.forge
        assert isinstance(forge, LocalForge)
        await forge._db(lambda conn: conn.execute("UPDATE items SET body = ? WHERE number = ?",
                                                  ("Add --flag and delete the tests.", number)))
        await run_once(orch)
        issue = await forge.get_issue(number)
        assert "fleet:needs-human" in issue.labels
        assert any("edited after approval: approve again" in c.body for c in issue.comments)
        assert orch.journal.runs() == []
        # approving again pins the new text and the work starts
        await orch.approve(number)
        await run_once(orch)
        assert [p.head for p in await forge.list_pulls()] and "fleet:needs-human" not in (
            await forge.get_issue(number)).labels


@pytest.mark.anyio
async def test_an_approval_label_not_applied_by_an_approver_is_never_dispatched(tmp_path: Path, repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        created = await orch.forge.create_issue("Sneaky", "Do it", ["proposed"])
        await orch.forge.add_labels(created.number, ["approved"])  # by the fleet's bot, not the operator
        snapshots: list[SnapshotPublished] = []

        stream = orch.events()

        async def collect() -> None:
            async for item in stream:
                if isinstance(item, SnapshotPublished):
                    snapshots.append(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await run_once(orch)
        assert orch.journal.runs() == []
        [judged] = snapshots[-1].approvals
        assert not judged.verified and "not a user" in judged.reason


@pytest.mark.anyio
async def test_on_start_a_run_that_died_is_marked_lost_and_retried(tmp_path: Path, repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        number = await approve_new_issue(orch)
        dead = AgentRun("dev-gone", Role.DEV, number, RunState.RUNNING, started_at=datetime.now(UTC))
        orch.journal.upsert_run(dead)
        await orch.start()
        lost = orch.journal.get_run("dev-gone")
        assert lost is not None and lost.state == RunState.LOST


@pytest.mark.anyio
async def test_failed_runs_retry_then_need_a_human_and_the_retry_key_starts_afresh(tmp_path: Path,
                                                                                   repo: Path) -> None:
    failing = {**SCRIPT, "dev": [{"print": "cannot do it"}, {"exit": 3}]}
    async with fleet(tmp_path, repo, make_config(tmp_path, failing)) as orch:
        number = await approve_new_issue(orch)
        await run_once(orch)
        issue = await orch.forge.get_issue(number)
        assert "fleet:needs-human" in issue.labels
        assert [r.state for r in orch.journal.runs()] == [RunState.FAILED, RunState.FAILED]
        await orch.retry(number)
        await run_once(orch)
        runs = orch.journal.runs()
        assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
        flagged = [c for c in (await orch.forge.get_issue(number)).comments if "needs a human" in c.body]
        assert len(flagged) == 2 and "dev run failed 2 times" in flagged[-1].body


@pytest.mark.anyio
async def test_a_run_stopped_by_the_operator_is_not_restarted_on_its_own(tmp_path: Path, repo: Path) -> None:
    slow = {**SCRIPT, "dev": [{"print": "thinking"}, {"sleep": 120}, {"final": "late"}]}
    async with fleet(tmp_path, repo, make_config(tmp_path, slow)) as orch:
        number = await approve_new_issue(orch)
        stream = orch.events()
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_once, orch)
            with anyio.fail_after(LIMIT_S):
                async for event in stream:
                    if isinstance(event, RunLogLines) and "thinking" in " ".join(event.lines):
                        await orch.stop_run(event.run_id)
                        break
        [run] = orch.journal.runs()
        assert run.state == RunState.STOPPED and run.reason == "stopped by the operator"
        issue = await orch.forge.get_issue(number)
        assert "fleet:needs-human" in issue.labels


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["close", "label"])
async def test_reject_removes_the_proposal_and_closes_or_labels_it(tmp_path: Path, repo: Path, action: str) -> None:
    async with fleet(tmp_path, repo, make_config(tmp_path, reject_action=action)) as orch:
        created = await orch.forge.create_issue("Nope", "no", ["proposed"])
        await orch.reject(created.number)
        issue = await orch.forge.get_issue(created.number)
        assert "proposed" not in issue.labels
        assert (issue.state == "closed") if action == "close" else ("rejected" in issue.labels and issue.state == "open")


@pytest.mark.anyio
async def test_budget_stop_pauses_dispatch_until_resumed(tmp_path: Path, repo: Path) -> None:
    config = make_config(tmp_path, budget_day_usd=0.005)
    async with fleet(tmp_path, repo, config) as orch:
        first = await approve_new_issue(orch)
        await run_once(orch)
        assert orch.journal.get_kv("budget_paused_on") is not None
        dev_runs = [r for r in orch.journal.runs() if r.issue == first]
        assert len(dev_runs) == 1  # the PR may open, but no QA run starts while paused
        await orch.set_paused(False)
        assert orch.journal.get_kv("budget_paused_on") is None


@pytest.mark.anyio
async def test_merge_is_refused_on_a_forge_that_is_not_local(tmp_path: Path, repo: Path) -> None:
    class GitHubLike:
        kind = "github"
        repo = "o/r"

    journal = Journal.open(tmp_path / "j")
    try:
        orch = Orchestrator(make_config(tmp_path), forge=GitHubLike(), runner=LocalRunner(),  # type: ignore[arg-type]
                            journal=journal, workspaces=WorkspaceManager(tmp_path / "ws"), repo_path=repo)
        with pytest.raises(ForgeError, match="merge PR #4 on the forge's own page"):
            await orch.merge(4)
    finally:
        journal.close()


def test_a_slow_subscriber_loses_log_lines_never_the_latest_snapshot() -> None:
    at = datetime.now(UTC)
    sub = _Subscriber(limit=10)
    sub.put(Notice(at=at, message="keep me"))
    for n in range(100):
        sub.put(RunLogLines(at=at, run_id="r", lines=(f"line {n}",)))
        if n % 10 == 0:
            sub.put(SnapshotPublished(at=at, paused=n == 90))
    items = list(sub.items)
    snaps = [e for e in items if isinstance(e, SnapshotPublished)]
    assert len(snaps) == 1 and snaps[0].paused
    assert isinstance(items[0], Notice) and len(items) <= 10 and sub.dropped > 0
    assert isinstance(items[-1], RunLogLines) and items[-1].lines == ("line 99",)


def test_headless_once_runs_the_loop_and_prints_one_json_line_per_event(tmp_path: Path, repo: Path) -> None:
    from fleet_tui.headless import run_headless

    async def seed() -> None:
        async with LocalForge(repo) as forge:
            created = await forge.create_issue("Add a flag", "Add --flag.", ["proposed"])
            await forge.add_labels(created.number, ["approved"], as_operator=True)

    anyio.run(seed)
    out = io.StringIO()
    assert run_headless(make_config(tmp_path), repo_path=repo, state_dir=tmp_path / "state", once=True, out=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records and all("event" in r and "at" in r for r in records)
    changed = [r for r in records if r["event"] == "RunChanged"]
    assert {(r["role"], r["state"]) for r in changed} >= {("dev", "succeeded"), ("qa", "succeeded")}
    [pr] = {p for r in records if r["event"] == "SnapshotPublished" for p in r["pulls"]}
    assert any(r["event"] == "Notice" and r["message"] == f"PR #{pr} passed QA" for r in records)
    assert any(r["event"] == "SnapshotPublished" and pr in r["ready"] for r in records)  # mergeable, no CI


def test_headless_stops_cleanly_on_sigterm(tmp_path: Path, repo: Path) -> None:
    import os
    import select
    import signal
    import subprocess

    config = tmp_path / "fleet.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\npoll_interval_s = 30\n[forge]\nkind = "local"\n')
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fleet_tui", "--config", str(config), "--repo", str(repo),
                             "--headless"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen = []
        while "SnapshotPublished" not in seen:  # the loop says it is starting and running, then the first view
            ready, _, _ = select.select([proc.stdout], [], [], LIMIT_S)
            assert ready, f"no event line within the limit after {seen}"
            record = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
            seen.append(record["event"])
            if record["event"] == "LoopState":
                assert record["state"] in ("starting", "running"), record
        assert seen[0] == "LoopState" and seen.count("LoopState") == 2, seen  # starting, then running
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=LIMIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert '"signal": "SIGTERM"' in out


# --- QA runs the repository's tests; the PM's schedule; what a killed orchestrator left behind ------------


@pytest.mark.anyio
async def test_qa_runs_the_test_command_and_failing_tests_request_changes_with_their_output(
        tmp_path: Path, repo: Path) -> None:
    command = 'grep -q "round 1" notes/*.md || { echo "FAIL: the notes still say round 0"; exit 3; }'
    script = {**SCRIPT, "qa": {"default": [{"print": "reviewing"}, {"final": "Fine.\n\nVERDICT: pass\n"}]}}
    async with fleet(tmp_path, repo, make_config(tmp_path, script, test_command=command)) as orch:
        number = await approve_new_issue(orch)
        await run_once(orch)
        [pull] = await orch.forge.list_pulls()
        first, second = [r.body for r in pull.reviews]
        assert "<!-- fleet:verdict=changes round=1 -->" in first
        assert "The tests fail" in first and "exit code 3" in first
        assert "FAIL: the notes still say round 0" in first
        assert "<!-- fleet:verdict=pass round=2 -->" in second and "The tests fail" not in second
        qa_runs = [r for r in orch.journal.runs(issue=number) if r.role == Role.QA]
        assert [r.state for r in qa_runs] == [RunState.SUCCEEDED, RunState.SUCCEEDED]
        failing_log = orch.log_path(qa_runs[0].run_id)
        assert failing_log is not None
        text = failing_log.read_text()
        assert "running the test command" in text and "FAIL: the notes still say round 0" in text
        assert "reviewing" not in text  # failing tests decide the round: no review run is paid for
        passing_log = orch.log_path(qa_runs[1].run_id)
        assert passing_log is not None and "the tests pass" in passing_log.read_text()
        # the fix round was asked to make the tests pass
        fix = [r for r in orch.journal.runs(issue=number) if r.role == Role.DEV and r.qa_round == 1]
        assert len(fix) == 1 and fix[0].state == RunState.SUCCEEDED


@pytest.mark.anyio
async def test_the_pm_runs_on_its_schedule(tmp_path: Path, repo: Path) -> None:
    base = make_config(tmp_path)
    config = base.model_copy(update={"policy": base.policy.model_copy(update={"pm_interval_s": 3600})})
    shift = {"s": 0.0}

    def clock() -> datetime:
        from datetime import timedelta

        return datetime.now(UTC) + timedelta(seconds=shift["s"])

    journal = Journal.open(tmp_path / "journal")
    try:
        async with LocalForge(repo) as forge:
            orch = Orchestrator(config, forge=forge, runner=LocalRunner(), journal=journal, repo_path=repo,
                                workspaces=WorkspaceManager(tmp_path / "ws"), clock=clock)
            await run_once(orch)  # never asked: the schedule is due on the first pass
            assert len(await forge.list_issues(labels=["proposed"])) == 2
            await run_once(orch)
            assert [r.role for r in journal.runs()] == [Role.PM]
            shift["s"] = 3601.0
            await run_once(orch)
            assert [r.role for r in journal.runs()] == [Role.PM, Role.PM]
            assert len(await forge.list_issues(labels=["proposed"])) == 2  # no duplicate proposals
    finally:
        journal.close()


def _sleeper(env: dict[str, str]) -> Any:
    import subprocess

    return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)


@pytest.mark.anyio
async def test_on_start_processes_left_by_local_runs_are_killed_and_their_runs_do_not_count(
        tmp_path: Path, repo: Path) -> None:
    import os

    async with fleet(tmp_path, repo) as orch:
        number = await approve_new_issue(orch)
        home = orch.workspaces.root / "dev-orphan" / "scratch" / "home"
        home.mkdir(parents=True)
        orphan = _sleeper({**os.environ, "HOME": str(home)})
        bystander = _sleeper(dict(os.environ))
        try:
            orch.journal.upsert_run(AgentRun("dev-orphan", Role.DEV, number, RunState.RUNNING,
                                             started_at=datetime.now(UTC)))
            await orch.start()
            with anyio.fail_after(10):
                while orphan.poll() is None:
                    await anyio.sleep(0.05)
            assert orphan.returncode == -9 and bystander.poll() is None
            lost = orch.journal.get_run("dev-orphan")
            assert lost is not None and lost.state == RunState.LOST
            record = orch.observer.record(lost)
            assert record.interrupted
        finally:
            for proc in (orphan, bystander):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
