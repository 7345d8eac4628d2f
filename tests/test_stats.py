"""The stats view's numbers from the journal: spend per hour and day, runs and merges per day, QA's first-review
pass rate, approve -> PR and PR -> merge latency, cost per merged PR by engine and role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_orchestrator import (
    SCRIPT,
    approve_new_issue,
    fleet,
    make_config,
    run_once,
)

from fleet_tui import stats
from fleet_tui.model import AgentRun, Role, RunState, Usage, Verdict
from fleet_tui.store import Journal

NOW = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)


def _run(journal: Journal, run_id: str, role: Role, issue: int, engine: str, cost: float, started: datetime) -> None:
    journal.upsert_run(AgentRun(run_id, role, issue, RunState.SUCCEEDED, engine=engine, started_at=started,
                                ended_at=started + timedelta(minutes=5), usage=Usage(1000, 100, 0, cost)))
    journal.add_usage(run_id, issue, Usage(1000, 100, 0, cost), at=started + timedelta(minutes=5))


def test_the_numbers_from_a_journal(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j")
    try:
        day = timedelta(days=1)
        # issue 1: approved 2 days ago, PR an hour later, merged a day after; codex dev, claude QA
        journal.append_event("approve", {"issue": 1}, at=NOW - 2 * day)
        _run(journal, "dev-1", Role.DEV, 1, "codex", 1.50, NOW - 2 * day + timedelta(minutes=10))
        journal.append_event("pr_opened", {"issue": 1, "pr": 10}, at=NOW - 2 * day + timedelta(hours=1))
        _run(journal, "qa-10-1", Role.QA, 1, "claude", 0.50, NOW - 2 * day + timedelta(hours=1, minutes=5))
        journal.record_qa_round(10, 1, head_sha="a", verdict=Verdict.PASS)
        journal.append_event("merged", {"issue": 1, "pr": 10}, at=NOW - day + timedelta(hours=1))
        # issue 2: approved today, PR 3 hours later, QA asked for changes first; not merged
        journal.append_event("approve", {"issue": 2}, at=NOW - timedelta(hours=5))
        _run(journal, "dev-2", Role.DEV, 2, "codex", 2.00, NOW - timedelta(hours=4, minutes=50))
        journal.append_event("pr_opened", {"issue": 2, "pr": 11}, at=NOW - timedelta(hours=2))
        journal.record_qa_round(11, 1, head_sha="b", verdict=Verdict.CHANGES)

        found = stats.compute(journal, NOW)
    finally:
        journal.close()
    assert len(found.spend_daily) == stats.DAYS and len(found.spend_hourly) == stats.HOURS
    assert found.spend_daily[-1] == pytest.approx(2.00) and found.spend_daily[-3] == pytest.approx(2.00)
    assert found.spend_hourly[-6] == pytest.approx(2.00)  # spent at 10:45; the last hour is 15:00-16:00
    assert found.runs_daily[-3] == 2 and found.runs_daily[-1] == 1
    assert found.merged == 1 and found.merged_daily[-2] == 1
    assert found.first_review_pass == (1, 2) and found.first_review_pass_rate == 0.5
    assert found.approve_to_pr.n == 2 and found.approve_to_pr.median_s == pytest.approx(2 * 3600)
    assert found.pr_to_merge == stats.Latency(24 * 3600, 24 * 3600, 1)
    assert found.cost_per_merged_by_engine == {"claude": pytest.approx(0.50), "codex": pytest.approx(1.50)}
    assert found.cost_per_merged_by_role == {"dev": pytest.approx(1.50), "qa": pytest.approx(0.50)}
    text = "\n".join(stats.report(found, budget_day_usd=5.0))
    assert "spend today       $2.00 of $5.00" in text and "50% passed (1 of 2)" in text
    assert "codex $1.50" in text and "qa $0.50" in text


def test_sparklines_scale_to_the_largest_value() -> None:
    assert stats.sparkline([0, 0, 0]) == "▁▁▁"
    assert stats.sparkline([0, 1, 2, 4]) == "▁▃▅█"


@pytest.mark.anyio
async def test_a_human_merge_on_the_forge_is_counted_with_its_cost(tmp_path: Path, repo: Path) -> None:
    script = dict(SCRIPT, qa={"default": SCRIPT["qa"]["default"]})  # QA passes on its first review
    async with fleet(tmp_path, repo, make_config(tmp_path, script)) as orch:
        await approve_new_issue(orch)
        await run_once(orch)
        [pull] = await orch.forge.list_pulls()
        await orch.merge(pull.number)
        await run_once(orch)  # the next look sees the PR merged
        found = stats.compute(orch.journal, datetime.now(UTC))
    assert found.merged == 1 and found.pr_to_merge.n == 1 and found.approve_to_pr.n == 1
    assert found.first_review_pass == (1, 1)
    assert found.cost_per_merged_by_role["dev"] == pytest.approx(0.01)


def test_the_stats_command_prints_the_numbers_and_says_when_there_is_no_journal(tmp_path: Path, repo: Path) -> None:
    import subprocess
    import sys

    config = repo / "fleet.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[runner]\nkind = "local"\n')
    config.chmod(0o600)
    first = subprocess.run([sys.executable, "-m", "fleet_tui", "stats"], cwd=repo, capture_output=True, text=True,
                           check=False)
    assert first.returncode == 0 and "no journal" in first.stdout
    from fleet_tui.store import journal_dir

    journal = Journal.open(journal_dir(tmp_path / "state", str(repo.resolve())))
    journal.add_usage("dev-1", 1, Usage(10, 1, 0, 0.25))
    journal.close()
    shown = subprocess.run([sys.executable, "-m", "fleet_tui", "stats"], cwd=repo, capture_output=True, text=True,
                           check=False)
    assert shown.returncode == 0 and "spend today       $0.25" in shown.stdout, shown.stdout + shown.stderr
