"""Workspaces: clone and branch per run, what a run changed, ownership for containers, cleanup."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from fleet_tui.git import GitError, git
from fleet_tui.workspace import (
    SAFE_DIRECTORY_ENV,
    WorkspaceError,
    WorkspaceManager,
    branch_name,
    parse_user,
    slugify,
    write_scratch_files,
)


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    repo = tmp_path / "source"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    (repo / "app.py").write_text("print('hello')\n")
    (repo / "README.md").write_text("# demo\none\ntwo\n")
    sh("git", "add", ".", cwd=repo)
    sh("git", "commit", "-qm", "initial", cwd=repo)
    return repo


def commit(repo: Path, path: str, text: str, message: str) -> None:
    (repo / path).parent.mkdir(parents=True, exist_ok=True)
    (repo / path).write_text(text)
    sh("git", "add", "--all", cwd=repo)
    sh("git", "commit", "-qm", message, cwd=repo)


def test_branch_names_are_short_ascii_slugs() -> None:
    assert branch_name(12, "Add a dark theme!") == "fleet/12-add-a-dark-theme"
    assert branch_name(3, "Café crème — déjà vu") == "fleet/3-cafe-creme-deja-vu"
    long = branch_name(9, "word " * 30)
    assert len(long.split("-", 1)[1]) <= 40 and not long.endswith("-")
    assert branch_name(5, "日本語 ✨") == "fleet/5-work"
    assert slugify("../../etc/passwd") == "etc-passwd"


def test_parse_user() -> None:
    assert parse_user("1000:1001") == (1000, 1001)
    assert parse_user("1000") == (1000, 1000)
    assert parse_user("agent") is None


@pytest.mark.anyio
async def test_a_run_gets_its_own_clone_on_a_new_branch_and_its_changes_are_measured(
        tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-1", source, issue=12, title="Add a dark theme")
    assert ws.repo == tmp_path / "workspaces" / "run-1" / "repo"
    assert ws.scratch.is_dir() and ws.scratch.parent == ws.repo.parent
    assert await git("branch", "--show-current", cwd=ws.repo) == "fleet/12-add-a-dark-theme"
    assert not (ws.repo / ".git" / "objects" / "info" / "alternates").exists()  # nothing points at the host

    commit(ws.repo, "app.py", "print('hello')\nprint('dark')\n", "Add dark")
    commit(ws.repo, "themes/dark.toml", "a = 1\nb = 2\n", "Theme file")
    (ws.repo / "README.md").write_text("# demo\none\n")  # left uncommitted
    (ws.repo / "notes.txt").write_text("scratch\n")

    changes = await manager.changes(ws)
    assert [c.subject for c in changes.commits] == ["Add dark", "Theme file"]
    assert (changes.additions, changes.deletions, changes.files_changed) == (3, 0, 2)
    assert changes.paths == ("app.py", "themes/dark.toml")
    assert changes.uncommitted == ("README.md", "notes.txt")
    assert sh("git", "log", "--oneline", cwd=source).count("\n") == 0  # the source is untouched

    assert await manager.commit_pending(ws, "Leftovers") is True
    assert await manager.commit_pending(ws, "Nothing") is False
    changes = await manager.changes(ws)
    assert (changes.additions, changes.deletions, changes.files_changed) == (4, 1, 4)
    assert changes.uncommitted == ()


@pytest.mark.anyio
async def test_a_fix_round_continues_the_existing_branch(tmp_path: Path, source: Path) -> None:
    sh("git", "checkout", "-qb", "fleet/4-fix-it", cwd=source)
    commit(source, "fix.py", "x = 1\n", "First round")
    sh("git", "checkout", "-q", "main", cwd=source)
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-2", source, branch="fleet/4-fix-it", existing=True)
    assert (ws.repo / "fix.py").exists()
    assert ws.start_sha == sh("git", "rev-parse", "fleet/4-fix-it", cwd=source)
    assert (await manager.changes(ws)).commits == ()
    commit(ws.repo, "fix.py", "x = 2\n", "Second round")
    this_round = await manager.changes(ws)
    whole_pr = await manager.changes(ws, against="origin/main")
    assert [c.subject for c in this_round.commits] == ["Second round"]
    assert [c.subject for c in whole_pr.commits] == ["First round", "Second round"]
    assert whole_pr.paths == ("fix.py",) and whole_pr.additions == 1


@pytest.mark.anyio
async def test_create_refuses_bad_run_ids_and_leaves_nothing_behind_on_failure(tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    with pytest.raises(WorkspaceError):
        await manager.create("../escape", source, issue=1)
    with pytest.raises(GitError):
        await manager.create("run-3", source, branch="fleet/9-missing", existing=True)
    assert not (tmp_path / "workspaces" / "run-3").exists()


@pytest.mark.anyio
@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_a_workspace_given_to_the_container_uid_stays_usable_from_the_host(tmp_path: Path,
                                                                                 source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces", owner=(1000, 1000))
    ws = await manager.create("run-4", source, issue=2, title="x")
    assert (ws.repo / "app.py").stat().st_uid == 1000 and ws.scratch.stat().st_uid == 1000
    with pytest.raises(GitError, match="dubious ownership"):
        await git("status", cwd=ws.repo)  # what plain git says: the reason for SAFE_DIRECTORY_ENV
    assert await git("status", "--short", cwd=ws.repo, env=SAFE_DIRECTORY_ENV) == ""
    assert (await manager.changes(ws)).commits == ()


@pytest.mark.anyio
async def test_cleanup_removes_old_finished_workspaces_and_never_a_live_one(tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces", retention_h=1)
    for run_id in ("old-done", "new-done", "live", "orphan"):
        await manager.create(run_id, source, issue=1)
    manager.finish("old-done")
    manager.finish("new-done")
    restarted = WorkspaceManager(tmp_path / "workspaces", retention_h=1)  # knows nothing of what is live
    later = time.time() + 2 * 3600
    assert await restarted.cleanup(live={"live"}, now=later) == ["new-done", "old-done", "orphan"]
    assert (tmp_path / "workspaces" / "live" / "repo" / "app.py").exists()
    assert await manager.cleanup(now=later) == []  # `live` is still live for the manager that made it
    assert await manager.cleanup(now=time.time()) == []


@pytest.mark.anyio
async def test_cleanup_keeps_workspaces_inside_the_retention(tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces", retention_h=24)
    await manager.create("done", source, issue=1)
    manager.finish("done")
    assert await manager.cleanup(now=time.time() + 3600) == []
    assert await manager.cleanup(now=time.time() + 25 * 3600) == ["done"]


def test_scratch_files_cannot_leave_the_scratch_dir(tmp_path: Path) -> None:
    write_scratch_files(tmp_path, {"prompt.md": "hi", "sub/out.txt": "x"})
    assert (tmp_path / "prompt.md").read_text() == "hi" and (tmp_path / "sub" / "out.txt").exists()
    for name in ("../evil", "/etc/x", "sub/../../evil"):
        with pytest.raises(WorkspaceError):
            write_scratch_files(tmp_path, {name: "x"})
