"""Unattended runs: `--headless --once --pm`, `--resume-budget`, and exit codes a scheduler can act on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleet_tui.headless import EXIT_ACTION_FAILED, EXIT_NEEDS_HUMAN, EXIT_OK, exit_code, host


class FakeOrchestrator:
    """What `host` uses of the orchestrator: intents, run(once), events() and the counters."""

    def __init__(self, *, failed: int = 0, needs_human: int = 0, with_resume: bool = True) -> None:
        self.calls: list[str] = []
        self._failed, self._needs_human = failed, needs_human
        self.failed_actions = 0
        self.needs_human_raised = 0
        if with_resume:
            self.resume_budget = self._resume

    async def _resume(self) -> None:
        self.calls.append("resume_budget")

    async def run_pm(self) -> None:
        self.calls.append("run_pm")

    async def run(self, *, once: bool = False) -> None:
        self.calls.append(f"run(once={once})")
        self.failed_actions, self.needs_human_raised = self._failed, self._needs_human

    async def shutdown(self) -> None:
        self.calls.append("shutdown")

    async def events(self) -> AsyncIterator[Any]:
        await anyio.sleep_forever()
        yield None  # pragma: no cover


def _host(orchestrator: Any, **flags: Any) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = anyio.run(lambda: host(orchestrator, once=True, out=out, **flags))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all("at" in record for record in records)
    return code, [{k: v for k, v in record.items() if k != "at"} for record in records]


def test_pm_first_then_the_loop() -> None:
    fake = FakeOrchestrator()
    code, records = _host(fake, pm=True)
    assert fake.calls == ["run_pm", "run(once=True)"]
    assert code == EXIT_OK and records[-1] == {"event": "Done", "exit": 0, "failed_actions": 0,
                                               "needs_human_raised": 0}


def test_resume_budget_before_anything_else() -> None:
    fake = FakeOrchestrator()
    _host(fake, pm=True, resume_budget=True)
    assert fake.calls == ["resume_budget", "run_pm", "run(once=True)"]


def test_resume_budget_without_the_intent_lifts_the_journal_pause() -> None:
    class Journal:
        def __init__(self) -> None:
            self.kv = {"budget_paused_on": "2026-01-01", "paused": False}

        def delete_kv(self, key: str) -> None:
            self.kv.pop(key, None)

    fake = FakeOrchestrator(with_resume=False)
    fake.journal = Journal()  # type: ignore[attr-defined]
    _, records = _host(fake, resume_budget=True)
    assert fake.journal.kv == {"paused": False}  # type: ignore[attr-defined]
    assert records[0] == {"event": "BudgetResumed"}


@pytest.mark.parametrize(("failed", "needs_human", "expected"), [
    (0, 0, EXIT_OK), (2, 0, EXIT_ACTION_FAILED), (0, 1, EXIT_NEEDS_HUMAN), (5, 1, EXIT_NEEDS_HUMAN),
])
def test_exit_codes(failed: int, needs_human: int, expected: int) -> None:
    code, records = _host(FakeOrchestrator(failed=failed, needs_human=needs_human))
    assert code == expected and records[-1]["exit"] == expected
    assert (records[-1]["failed_actions"], records[-1]["needs_human_raised"]) == (failed, needs_human)


def test_an_orchestrator_without_counters_exits_0() -> None:
    assert exit_code(object()) == EXIT_OK
    assert (EXIT_ACTION_FAILED, EXIT_NEEDS_HUMAN) == (3, 4)


def test_pm_and_resume_budget_go_with_headless(tmp_path: Path) -> None:
    for flag in ("--pm", "--resume-budget"):
        result = subprocess.run([sys.executable, "-m", "fleet_tui", flag], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and f"{flag} goes with --headless" in result.stderr


def test_headless_once_pm_on_a_repository(tmp_path: Path) -> None:
    """The real loop: the scripted PM proposes, nothing is approved, the run ends with exit 0."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "start"], check=True)
    config = repo / "fleet.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\npoll_interval_s = 1\n[runner]\nkind = "local"\n'
                      + "".join(f'[roles.{role}]\nengine = "scripted"\n' for role in ("pm", "dev", "qa")))
    result = subprocess.run([sys.executable, "-m", "fleet_tui", "--headless", "--once", "--pm"], cwd=repo,
                            capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(r["event"] == "RunChanged" and r["role"] == "pm" and r["state"] == "succeeded" for r in records)
    assert any(r["event"] == "SnapshotPublished" and r["proposals"] for r in records)
    assert records[-1]["event"] == "Done" and records[-1]["exit"] == 0
