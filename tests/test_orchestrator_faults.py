"""Fault injection on the real local forge, runner and journal: failed actions back off and escalate, the loop
says when it stopped and restarts, a stop is never issued twice, a spent daily budget can be lifted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from test_orchestrator import (
    LIMIT_S,
    SCRIPT,
    approve_new_issue,
    fleet,
    make_config,
    run_once,
)

from fleet_tui.forge.base import ForgeError
from fleet_tui.model import Event, LoopState, Notice, RunState, SnapshotPublished, Usage


@pytest.mark.anyio
async def test_a_push_that_keeps_failing_backs_off_then_goes_to_needs_human_with_the_error(
        tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleet_tui.execute.BACKOFF_BASE_S", 0.3)
    config = make_config(tmp_path, max_action_failures=3)
    async with fleet(tmp_path, repo, config) as orch:
        tries: list[float] = []

        async def refuse(*args: Any, **kwargs: Any) -> str:
            tries.append(anyio.current_time())
            raise ForgeError("push refused: the remote hung up")

        orch.forge.push_branch = refuse  # type: ignore[method-assign]
        number = await approve_new_issue(orch)
        await run_once(orch)  # --once waits out each backoff, so it ends only when the issue is settled
        assert len(tries) == 3
        first, second = tries[1] - tries[0], tries[2] - tries[1]
        assert first >= 0.3 and second >= 0.6  # exponential, never a busy retry
        issue = await orch.forge.get_issue(number)
        assert issue.has_label(orch.config.labels.needs_human)
        said = [c.body for c in issue.comments if "needs a human" in c.body]
        assert said and "failed 3 times; last error: push refused: the remote hung up" in said[-1]
        assert orch.failed_actions == 3 and orch.needs_human_raised == 1
        await run_once(orch)
        assert len(tries) == 3  # held: the fleet does not try again until a human retries


@pytest.mark.anyio
async def test_a_loop_that_cannot_start_says_why_and_starts_again(tmp_path: Path, repo: Path) -> None:
    async with fleet(tmp_path, repo) as orch:
        real = orch.forge.fleet_identity
        failures = 1

        async def flaky() -> Any:
            nonlocal failures
            if failures:
                failures -= 1
                raise ForgeError("cannot reach the forge: connection refused")
            return await real()

        orch.forge.fleet_identity = flaky  # type: ignore[method-assign]
        states: list[LoopState] = []
        stream = orch.events()

        async def watch() -> None:
            async for event in stream:
                if isinstance(event, LoopState):
                    states.append(event)
                    if event.state == "stopped" and event.retry_at is not None:
                        await orch.restart()  # the console's restart key: try again now
                    if event.state == "running":
                        await orch.shutdown()

        with anyio.fail_after(LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await orch.run()
    kinds = [(s.state, s.reason) for s in states]
    assert kinds[0] == ("starting", "")
    stopped = next(s for s in states if s.state == "stopped")
    assert "connection refused" in stopped.reason and stopped.retry_at is not None
    assert ("running", "") in kinds
    assert kinds[-1][0] == "stopped"  # and it says so when it ends


@pytest.mark.anyio
async def test_a_run_is_stopped_once_however_often_the_stop_is_asked_for(tmp_path: Path, repo: Path) -> None:
    script = dict(SCRIPT, dev=[{"print": "working"}, {"sleep": 30}, {"final": "done"}])
    async with fleet(tmp_path, repo, make_config(tmp_path, script)) as orch:
        notices: list[Notice] = []
        stream = orch.events()

        async def watch() -> None:
            async for event in stream:
                if isinstance(event, Notice):
                    notices.append(event)

        with anyio.fail_after(LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                tg.start_soon(orch.run)
                await approve_new_issue(orch)
                while not orch.supervisor.live_runs():
                    await anyio.sleep(0.05)
                run_id = orch.supervisor.live_runs()[0].run_id
                for _ in range(20):
                    await orch.stop_run(run_id)
                while orch.supervisor.live_run(run_id) is not None:
                    await anyio.sleep(0.05)
                await orch.shutdown()
        assert orch.journal.get_run(run_id).state == RunState.STOPPED
    stops = [n for n in notices if n.message.startswith(f"stopping run {run_id}")]
    assert len(stops) == 1


@pytest.mark.anyio
async def test_a_spent_daily_budget_pauses_dispatch_until_the_operator_lifts_it(tmp_path: Path, repo: Path) -> None:
    config = make_config(tmp_path, budget_day_usd=0.5)
    async with fleet(tmp_path, repo, config) as orch:
        orch.journal.add_usage("earlier-run", None, Usage(cost_usd=1.0))
        number = await approve_new_issue(orch)
        seen: list[Event] = []
        stream = orch.events()

        async def watch() -> None:
            async for event in stream:
                seen.append(event)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await run_once(orch)
            assert not orch.journal.runs(issue=number)  # nothing dispatched
            snapshot = [e for e in seen if isinstance(e, SnapshotPublished)][-1]
            assert snapshot.paused and snapshot.budget_stop == "daily budget spent"
            await orch.resume_budget()
            await run_once(orch)
            tg.cancel_scope.cancel()
        assert orch.journal.runs(issue=number)  # dispatched once lifted
