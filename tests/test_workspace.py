"""Workspaces: clone and branch per run, what a run changed, ownership for containers, cleanup."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from sandbox_end import collect, end_run

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


def run(invocation, cwd: Path) -> int:  # type: ignore[no-untyped-def]
    return subprocess.run(list(invocation.argv), cwd=cwd, env={**os.environ, **invocation.env}, check=False).returncode


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
    (ws.repo / "README.md").write_text("# demo\none\n")  # left uncommitted: not part of the branch

    changes = await collect(manager, ws, base="main")
    assert [c.subject for c in changes.commits] == ["Add dark", "Theme file"]
    assert (changes.additions, changes.deletions, changes.files_changed) == (3, 0, 2)
    assert changes.paths == ("app.py", "themes/dark.toml")
    assert changes.head_sha == sh("git", "rev-parse", "HEAD", cwd=ws.repo)
    # the trusted mirror now holds the branch, ready to push; the operator's repository is untouched
    assert sh("git", "rev-parse", "refs/heads/fleet/12-add-a-dark-theme", cwd=manager.mirror) == changes.head_sha
    assert sh("git", "log", "--oneline", cwd=source).count("\n") == 0
    assert "fleet/12" not in sh("git", "branch", cwd=source)


@pytest.mark.anyio
async def test_a_fix_round_continues_the_branch_the_fleet_collected(tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    first = await manager.create("run-2a", source, issue=4, title="Fix it")
    commit(first.repo, "fix.py", "x = 1\n", "First round")
    await collect(manager, first, base="main")
    commit(source, "other.py", "y = 1\n", "Meanwhile on main")  # the operator's work goes on

    ws = await manager.create("run-2b", source, branch=first.branch, existing=True)
    assert (ws.repo / "fix.py").exists()
    assert ws.start_sha == sh("git", "rev-parse", f"refs/heads/{first.branch}", cwd=manager.mirror)
    commit(ws.repo, "fix.py", "x = 2\n", "Second round")
    this_round = await collect(manager, ws, base="main")
    assert [c.subject for c in this_round.commits] == ["Second round"]
    assert this_round.paths == ("fix.py",) and this_round.additions == 1  # the whole PR against main


@pytest.mark.anyio
async def test_a_fix_round_takes_a_fleet_branch_from_the_source_when_the_mirror_is_new(
        tmp_path: Path, source: Path) -> None:
    sh("git", "checkout", "-qb", "fleet/4-fix-it", cwd=source)
    commit(source, "fix.py", "x = 1\n", "First round")
    sh("git", "checkout", "-q", "main", cwd=source)
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-2", source, branch="fleet/4-fix-it", existing=True)
    assert (ws.repo / "fix.py").exists()
    assert ws.start_sha == sh("git", "rev-parse", "fleet/4-fix-it", cwd=source)


@pytest.mark.anyio
async def test_nothing_the_agent_plants_in_its_repository_runs_on_the_host(tmp_path: Path, source: Path) -> None:
    """The agent controls its clone's .git: config that runs commands (core.fsmonitor, a diff driver) and
    hooks must never run outside the sandbox when the fleet collects and pushes its work."""
    from fleet_tui.forge.local import LocalForge

    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-evil", source, issue=7, title="Innocent")
    commit(ws.repo, "feature.py", "ok = True\n", "Feature")
    end_run(ws)  # the sandbox's last step; what the agent plants below would run there, and only there
    pwned = tmp_path / "pwned"
    payload = f"sh -c 'echo escaped >> {pwned}'"
    for key, value in (("core.fsmonitor", payload), ("core.hooksPath", str(ws.repo / "hooks")),
                       ("diff.external", payload), ("core.pager", payload), ("uploadpack.packObjectsHook", payload)):
        sh("git", "config", key, value, cwd=ws.repo)
    (ws.repo / "hooks").mkdir()
    for hook in ("pre-push", "post-checkout", "reference-transaction", "pre-auto-gc"):
        (ws.repo / "hooks" / hook).write_text(f"#!/bin/sh\necho {hook} >> {pwned}\n")
        (ws.repo / "hooks" / hook).chmod(0o755)
        (ws.repo / ".git" / "hooks" / hook).write_text(f"#!/bin/sh\necho {hook} >> {pwned}\n")
        (ws.repo / ".git" / "hooks" / hook).chmod(0o755)
    (ws.repo / ".git" / "objects" / "info" / "alternates").write_text(str(source / ".git" / "objects") + "\n")

    changes = await manager.collect(ws, base="main")
    async with LocalForge(source, operator="alice") as forge:
        await forge.push_branch(manager.mirror, ws.branch)
    assert [c.subject for c in changes.commits] == ["Feature"]
    assert not pwned.exists(), pwned.read_text()


@pytest.mark.anyio
async def test_commit_after_commits_what_the_agent_left_inside_the_same_process(
        tmp_path: Path, source: Path) -> None:
    from fleet_tui.engines.base import Invocation
    from fleet_tui.workspace import commit_after

    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-5", source, issue=5, title="Edit without committing")
    edit = Invocation(argv=("sh", "-c", "echo more >> README.md; echo new > new.txt; exit 3"))
    wrapped = commit_after(edit, "Work on #5", ("fleet agent", "agent@localhost"), branch=ws.branch,
                           result_dir=str(ws.scratch))
    assert run(wrapped, ws.repo) == 3  # the agent's own exit code is kept
    changes = await manager.collect(ws, base="main")
    assert [c.subject for c in changes.commits] == ["Work on #5"]
    assert changes.paths == ("README.md", "new.txt")


@pytest.mark.anyio
async def test_create_refuses_bad_run_ids_and_leaves_nothing_behind_on_failure(tmp_path: Path, source: Path) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    with pytest.raises(WorkspaceError):
        await manager.create("../escape", source, issue=1)
    with pytest.raises(WorkspaceError, match="fleet/9-missing"):
        await manager.create("run-3", source, branch="fleet/9-missing", existing=True)
    with pytest.raises(WorkspaceError, match="base branch 'trunk'"):
        await manager.create("run-3", source, issue=1, base="trunk")
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
    assert (await collect(manager, ws, base="main")).commits == ()  # collecting works across the uid gap


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


@pytest.mark.anyio
async def test_the_mirror_survives_a_killed_git_and_concurrent_runs(tmp_path: Path, source: Path) -> None:
    """A git process killed mid-write leaves lock files; two runs finishing at once must not trip on each
    other's ref updates."""
    import anyio

    manager = WorkspaceManager(tmp_path / "workspaces")
    first = await manager.create("run-a", source, issue=1, title="One")
    second = await manager.create("run-b", source, issue=2, title="Two")
    commit(first.repo, "one.py", "x = 1\n", "One")
    commit(second.repo, "two.py", "y = 2\n", "Two")
    end_run(first)
    end_run(second)
    # what a SIGKILLed orchestrator can leave behind
    (manager.mirror / "packed-refs.lock").write_text("")
    (manager.mirror / "refs" / "heads" / "fleet").mkdir(parents=True, exist_ok=True)
    (manager.mirror / "refs" / "heads" / "fleet" / "1-one.lock").write_text("")
    restarted = WorkspaceManager(tmp_path / "workspaces")
    results = {}

    async def collect(ws):  # type: ignore[no-untyped-def]
        results[ws.run_id] = await restarted.collect(ws, base="main")

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, first)
        tg.start_soon(collect, second)
    assert [c.subject for c in results["run-a"].commits] == ["One"]
    assert [c.subject for c in results["run-b"].commits] == ["Two"]
    assert not list(restarted.mirror.rglob("*.lock"))
