"""A repository humans merge into while the fleet works, end to end on the real local forge, runner, workspaces
and journal: every run starts from the base as merged, and a PR that turns dirty after another merge gets an
update round (the Dev agent resolves the conflict), QA again, and is ready once more."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_orchestrator import (
    approve_new_issue,
    fleet,
    make_config,
    run_once,
)

from fleet_tui.git import git_sync
from fleet_tui.model import Role, RunState
from fleet_tui.reconcile import readiness

# Every Dev run appends a line to the same file, so the second PR conflicts once the first is merged.
SCRIPT = {
    "pm": [{"final": "nothing"}],
    "dev": [
        {"resolve": "union"},
        {"append": "CHANGELOG.md", "content": "- #{issue}: {title}\n"},
        {"commit": "#{issue}: {title}"},
        {"final": "done"},
    ],
    "qa": {"default": [{"final": "Fine.\n\nVERDICT: pass\n"}]},
}


def _file_on(checkout: Path, ref: str, path: str) -> str:
    return git_sync("show", f"{ref}:{path}", cwd=checkout)


@pytest.mark.anyio
async def test_a_pr_made_dirty_by_a_human_merge_is_updated_reviewed_and_ready_again(tmp_path: Path,
                                                                                   repo: Path) -> None:
    (repo / "CHANGELOG.md").write_text("# Changes\n")
    git_sync("add", "-A", cwd=repo)
    git_sync("commit", "-q", "-m", "changelog", cwd=repo)
    async with fleet(tmp_path, repo, make_config(tmp_path, SCRIPT)) as orch:
        first = await approve_new_issue(orch, "Add a flag", "Add --flag.")
        second = await approve_new_issue(orch, "Add a switch", "Add --switch.")
        await run_once(orch)
        pulls = {p.head: p for p in await orch.forge.list_pulls()}
        assert len(pulls) == 2
        by_issue = {int(p.head.split("/")[1].split("-")[0]): p for p in pulls.values()}
        await orch.merge(by_issue[first].number)  # the human merges the first PR

        await run_once(orch)  # the second PR conflicts now: an update round, then QA again
        pull = await orch.forge.get_pull(by_issue[second].number)
        assert pull.head_sha != by_issue[second].head_sha
        assert pull.mergeable is True and pull.mergeable_state == "clean"
        changelog = _file_on(repo, pull.head_sha, "CHANGELOG.md")
        assert "- #1: Add a flag" in changelog and "- #2: Add a switch" in changelog
        assert "<<<<<<<" not in changelog and "=======" not in changelog
        updates = [r for r in orch.journal.runs(issue=second)
                   if orch.ctx.extras(r.run_id).get("kind") == "update"]
        assert len(updates) == 1 and updates[0].state == RunState.SUCCEEDED
        rounds = orch.journal.qa_rounds(pull.number)
        on_head = [r for r in rounds if r.head_sha == pull.head_sha]
        assert on_head and on_head[-1].verdict is not None
        assert readiness(pull, on_head[-1].verdict) == (True, "")

        # a later issue's branch is cut from the base as merged, never from an old one
        third = await approve_new_issue(orch, "Add a knob", "Add --knob.")
        await run_once(orch)
        [dev] = [r for r in orch.journal.runs(issue=third) if r.role == Role.DEV]
        head = orch.ctx.extras(dev.run_id)["head_sha"]
        merged = git_sync("rev-parse", "main", cwd=repo).strip()
        ancestry = subprocess.run(["git", "merge-base", "--is-ancestor", merged, head], cwd=orch.workspaces.mirror,
                                  check=False)
        assert ancestry.returncode == 0, "the new branch does not contain the human's merge"
