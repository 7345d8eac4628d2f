"""Workspaces start from the base as the forge has it, update rounds merge or rebase it in, and a run's
size counts every byte it changes, binary files included."""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sandbox_end import collect

from fleet_tui.engines.base import Invocation
from fleet_tui.workspace import WorkspaceError, WorkspaceManager, _LineBytes, commit_after

IMAGE = "fleet-test:latest"

SECRET = "Bearer s3cr3t-token-never-written"
FORGE_URL = "https://forge.invalid/acme/app.git"
AUTHOR = ("fleet agent", "agent@localhost")


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout.strip()


@dataclass(frozen=True)
class Source:
    """What a forge hands out: where git fetches from, and the environment that fetch needs."""

    url: str
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def forge(tmp_path: Path) -> Path:
    """A bare repository standing in for the forge, with `main` holding app.py and README.md."""
    bare = tmp_path / "forge.git"
    sh("git", "init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    human = tmp_path / "human"
    sh("git", "clone", "-q", str(bare), str(human), cwd=tmp_path)
    sh("git", "checkout", "-qb", "main", cwd=human)
    write(human, "app.py", "def greet():\n    return 'hello'\n")
    write(human, "README.md", "# demo\none\ntwo\n")
    sh("git", "add", ".", cwd=human)
    sh("git", "commit", "-qm", "initial", cwd=human)
    sh("git", "push", "-q", "origin", "main", cwd=human)
    return bare


@pytest.fixture
def human(forge: Path) -> Path:
    """A person's clone of the forge: what they push lands on the forge."""
    return forge.parent / "human"


@pytest.fixture
def source(forge: Path) -> Source:
    """The forge reached through an URL only the given environment resolves, carrying an auth header."""
    return Source(FORGE_URL, {"GIT_CONFIG_COUNT": "2",
                              "GIT_CONFIG_KEY_0": f"url.{forge}.insteadOf", "GIT_CONFIG_VALUE_0": FORGE_URL,
                              "GIT_CONFIG_KEY_1": "http.extraHeader",
                              "GIT_CONFIG_VALUE_1": f"Authorization: {SECRET}"})


def write(repo: Path, path: str, text: str | bytes) -> None:
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)


def commit(repo: Path, path: str, text: str | bytes, message: str) -> str:
    write(repo, path, text)
    sh("git", "add", "--all", cwd=repo)
    sh("git", "commit", "-qm", message, cwd=repo)
    return sh("git", "rev-parse", "HEAD", cwd=repo)


def land(human: Path, branch: str, path: str, text: str, message: str) -> str:
    """A person pushes a commit onto `branch` of the forge."""
    sh("git", "fetch", "-q", "origin", cwd=human)
    sh("git", "checkout", "-q", "-B", branch, f"origin/{branch}", cwd=human)
    sha = commit(human, path, text, message)
    sh("git", "push", "-q", "origin", branch, cwd=human)
    return sha


def run_agent(repo: Path, script: str) -> None:
    """What the Dev run does in its sandbox: the agent's commands, then `commit_after` commits what is left."""
    wrapped = commit_after(Invocation(argv=("sh", "-c", script)), "Work on #1", AUTHOR)
    subprocess.run(list(wrapped.argv), cwd=repo, env={**os.environ, **wrapped.env}, check=True)


def parents(repo: Path, rev: str = "HEAD") -> list[str]:
    return sh("git", "rev-list", "--parents", "-n", "1", rev, cwd=repo).split()[1:]


async def pushed_fleet_branch(manager: WorkspaceManager, source: Source, forge: Path, *, text: str) -> str:
    """A first Dev run that changed app.py, collected and pushed to the forge the way the fleet does."""
    ws = await manager.create("dev-1", source, issue=1, title="Greet loudly")
    commit(ws.repo, "app.py", text, "Greet loudly")
    await collect(manager, ws)
    sh("git", "push", "-q", str(forge), f"{ws.branch}:{ws.branch}", cwd=manager.mirror)
    return ws.branch


# --- a fresh base for every run ---------------------------------------------------------------------------

@pytest.mark.anyio
async def test_every_run_starts_from_the_base_as_the_forge_has_it_now(tmp_path: Path, forge: Path, human: Path,
                                                                      source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    first = await manager.create("run-1", source, issue=1, title="One")
    merged = land(human, "main", "merged.py", "x = 1\n", "A PR a person merged")
    second = await manager.create("run-2", source, issue=2, title="Two")
    assert not (first.repo / "merged.py").exists()
    assert (second.repo / "merged.py").read_text() == "x = 1\n"
    assert second.base == "main" and second.base_sha == merged == sh("git", "rev-parse", "HEAD", cwd=second.repo)


@pytest.mark.anyio
async def test_the_forge_credentials_serve_the_fetch_and_are_written_nowhere(tmp_path: Path, forge: Path,
                                                                             source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    with pytest.raises(WorkspaceError, match="cannot read https://forge.invalid/acme/app.git"):
        await manager.create("no-env", Source(FORGE_URL), issue=1)  # the URL resolves only with the env
    ws = await manager.create("run-1", source, issue=1, title="One")
    assert (ws.repo / "app.py").exists()
    for top in (manager.mirror, ws.repo / ".git", ws.dir):
        for path in top.rglob("*"):
            if path.is_file() and "objects" not in path.parts:
                assert SECRET.encode() not in path.read_bytes(), path
                assert b"forge.invalid" not in path.read_bytes(), path
    assert not (manager.mirror / "FETCH_HEAD").exists()


@pytest.mark.anyio
async def test_a_local_checkout_as_source_gives_its_committed_base_not_its_work_tree(tmp_path: Path,
                                                                                     human: Path) -> None:
    write(human, "README.md", "half-done edit\n")  # the operator's uncommitted work
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-1", human, issue=1, title="One")
    assert (ws.repo / "README.md").read_text() == "# demo\none\ntwo\n"


@pytest.mark.anyio
async def test_a_fix_round_starts_from_the_branch_as_the_forge_has_it(tmp_path: Path, forge: Path, human: Path,
                                                                      source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    pushed_by_a_person = land(human, branch, "notes.txt", "see #1\n", "A reviewer's own fix")
    ws = await manager.create("fix-1", source, branch=branch, existing=True)
    assert ws.start_sha == pushed_by_a_person and (ws.repo / "notes.txt").exists()


@pytest.mark.anyio
async def test_work_collected_but_not_yet_pushed_is_kept_and_a_forced_push_on_the_forge_wins(
        tmp_path: Path, forge: Path, human: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    round_1 = await manager.create("fix-1", source, branch=branch, existing=True)
    collected = commit(round_1.repo, "fix.py", "x = 1\n", "Round 1")
    await collect(manager, round_1)  # not pushed: the forge is behind the mirror
    round_2 = await manager.create("fix-2", source, branch=branch, existing=True)
    assert round_2.start_sha == collected

    sh("git", "fetch", "-q", "origin", cwd=human)
    sh("git", "checkout", "-q", "-B", branch, "origin/main", cwd=human)
    rewritten = commit(human, "mine.py", "z = 0\n", "Started over")
    sh("git", "push", "-q", "--force", "origin", branch, cwd=human)
    round_3 = await manager.create("fix-3", source, branch=branch, existing=True)
    assert round_3.start_sha == rewritten


@pytest.mark.anyio
async def test_bad_sources_and_names_are_clear_errors(tmp_path: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    with pytest.raises(WorkspaceError, match="base branch 'develop' is not on https://forge.invalid"):
        await manager.create("run-1", source, issue=1, base="develop")
    with pytest.raises(WorkspaceError, match="not a valid branch name"):
        await manager.create("run-2", source, branch="x:refs/heads/main")
    with pytest.raises(WorkspaceError, match="branch 'fleet/9-gone' is neither"):
        await manager.create("run-3", source, branch="fleet/9-gone", existing=True)
    with pytest.raises(WorkspaceError, match="has `url`"):
        await manager.create("run-4", object(), issue=1)  # type: ignore[arg-type]
    with pytest.raises(WorkspaceError, match="needs an existing branch"):
        await manager.create("run-5", source, issue=1, update="merge")
    assert list((tmp_path / "workspaces").iterdir()) == []


# --- update rounds -----------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_clean_merge_update_is_a_commit_made_and_measured_against_the_fresh_base(
        tmp_path: Path, forge: Path, human: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    base_sha = land(human, "main", "other.py", "y = 2\n", "Someone else's PR")

    ws = await manager.create("update-1", source, branch=branch, existing=True, update="merge")
    assert (ws.update, ws.conflicts, ws.updated_from) == ("merge", (), base_sha)
    assert parents(ws.repo) == [ws.start_sha, base_sha] and (ws.repo / "other.py").exists()
    run_agent(ws.repo, "true")  # nothing to resolve: the agent has nothing to do
    changes = await collect(manager, ws)
    assert [c.subject for c in changes.commits] == [f"Merge main into {branch}"]
    assert changes.paths == ("app.py",) and changes.base_sha == base_sha  # other.py is the base's, not the PR's
    assert not changes.rewritten


@pytest.mark.anyio
async def test_merge_conflicts_are_left_for_the_agent_and_its_commit_concludes_the_merge(
        tmp_path: Path, forge: Path, human: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    base_sha = land(human, "main", "app.py", "def greet():\n    return 'hi'\n", "Conflicting PR")

    ws = await manager.create("update-1", source, branch=branch, existing=True, update="merge")
    assert ws.update == "merge" and ws.conflicts == ("app.py",) and "conflicts in 1 file" in ws.update_note
    assert "<<<<<<< " in (ws.repo / "app.py").read_text() and (ws.repo / ".git" / "MERGE_HEAD").exists()
    assert manager.open("update-1").conflicts == ("app.py",)  # survives a restart

    run_agent(ws.repo, "printf \"def greet():\\n    return 'HI'\\n\" > app.py")
    assert parents(ws.repo) == [ws.start_sha, base_sha]  # `git add -A && git commit` concluded the merge
    changes = await collect(manager, ws)
    assert changes.unresolved == () and changes.paths == ("app.py",) and changes.base_sha == base_sha
    assert (changes.additions, changes.deletions) == (1, 1)  # 'hi' -> 'HI', against the fresh base


@pytest.mark.anyio
async def test_conflict_markers_committed_as_they_are_are_reported_unresolved(
        tmp_path: Path, forge: Path, human: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    land(human, "main", "app.py", "def greet():\n    return 'hi'\n", "Conflicting PR")
    ws = await manager.create("update-1", source, branch=branch, existing=True, update="merge")
    run_agent(ws.repo, "true")  # the agent gave up; commit_after commits the markers
    assert (await collect(manager, ws)).unresolved == ("app.py",)


@pytest.mark.anyio
async def test_a_clean_rebase_rewrites_the_branch_onto_the_fresh_base(tmp_path: Path, forge: Path, human: Path,
                                                                      source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    base_sha = land(human, "main", "other.py", "y = 2\n", "Someone else's PR")

    ws = await manager.create("update-1", source, branch=branch, existing=True, update="rebase")
    assert (ws.update, ws.conflicts, ws.updated_from) == ("rebase", (), base_sha)
    assert parents(ws.repo) == [base_sha]
    changes = await collect(manager, ws)
    assert [c.subject for c in changes.commits] == ["Greet loudly"]  # the rebased commit, a new one
    assert changes.rewritten and changes.paths == ("app.py",)


@pytest.mark.anyio
async def test_a_conflicting_rebase_falls_back_to_a_merge_left_for_the_agent(
        tmp_path: Path, forge: Path, human: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    land(human, "main", "app.py", "def greet():\n    return 'hi'\n", "Conflicting PR")

    ws = await manager.create("update-1", source, branch=branch, existing=True, update="rebase")
    assert ws.update == "merge" and ws.conflicts == ("app.py",)
    assert "rebasing onto main conflicted" in ws.update_note
    assert sh("git", "rev-parse", "ORIG_HEAD", cwd=ws.repo) == ws.start_sha
    assert not (ws.repo / ".git" / "rebase-merge").exists() and (ws.repo / ".git" / "MERGE_HEAD").exists()
    run_agent(ws.repo, "printf \"def greet():\\n    return 'HI'\\n\" > app.py")
    changes = await collect(manager, ws)
    assert len(parents(ws.repo)) == 2 and not changes.rewritten


@pytest.mark.anyio
async def test_an_update_runs_no_hooks_and_ignores_the_operators_git_config(
        tmp_path: Path, forge: Path, human: Path, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    land(human, "main", "other.py", "y = 2\n", "Someone else's PR")
    hooks, ran = tmp_path / "hooks", tmp_path / "ran"
    hooks.mkdir()
    for hook in ("pre-merge-commit", "post-merge", "pre-rebase", "post-rewrite", "commit-msg"):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> {ran}\nexit 1\n")
        (hooks / hook).chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(f"[core]\n\thooksPath = {hooks}\n[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = false\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))

    merged = await manager.create("update-1", source, branch=branch, existing=True, update="merge")
    rebased = await manager.create("update-2", source, branch=branch, existing=True, update="rebase")
    assert (merged.update, rebased.update) == ("merge", "rebase")
    assert not ran.exists(), ran.read_text()


@pytest.mark.anyio
async def test_an_update_with_nothing_to_bring_in_says_so(tmp_path: Path, forge: Path, source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    branch = await pushed_fleet_branch(manager, source, forge, text="def greet():\n    return 'HELLO'\n")
    ws = await manager.create("update-1", source, branch=branch, existing=True, update="merge")
    assert ws.update == "" and "already contains main" in ws.update_note
    assert sh("git", "rev-parse", "HEAD", cwd=ws.repo) == ws.start_sha


# --- size: every byte counts --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_one_nul_byte_makes_a_77_kb_file_binary_and_it_counts_by_its_size(tmp_path: Path,
                                                                                source: Source) -> None:
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-1", source, issue=1, title="Data")
    blob = b"a" * 1000 + b"\0" + b"b" * (77 * 1024 - 1001)
    commit(ws.repo, "data/table.txt", blob, "Add data")
    changes = await collect(manager, ws)
    assert changes.binary_files == ("data/table.txt",)
    assert changes.lines_changed == 0 and changes.bytes_changed == 77 * 1024


@pytest.mark.anyio
async def test_deleting_a_binary_file_is_not_adding_one(tmp_path: Path, human: Path, source: Source) -> None:
    land(human, "main", "logo.bin", "\0" * 5000, "A logo")
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-1", source, issue=1, title="Drop the logo")
    sh("git", "rm", "-q", "logo.bin", cwd=ws.repo)
    sh("git", "commit", "-qm", "Drop the logo", cwd=ws.repo)
    changes = await collect(manager, ws)
    assert changes.paths == ("logo.bin",) and changes.binary_files == () and changes.bytes_changed == 0


@pytest.mark.anyio
async def test_text_counts_the_bytes_of_lines_added_and_removed(tmp_path: Path, human: Path,
                                                                source: Source) -> None:
    header_like = "-- a/looks-like-a-header\n"  # removed, it reads "--- a/..." in a patch
    land(human, "main", "tricky.txt", header_like + "keep\n", "Tricky")
    manager = WorkspaceManager(tmp_path / "workspaces")
    ws = await manager.create("run-1", source, issue=1, title="Text")
    commit(ws.repo, "README.md", "# demo\nuno\ntwo\n", "Translate")
    commit(ws.repo, "tricky.txt", "keep\n", "Trim")
    changes = await collect(manager, ws)
    assert changes.bytes_changed == len("one\n") + len("uno\n") + len(header_like)
    assert changes.binary_files == ()


def test_line_bytes_do_not_depend_on_how_the_stream_is_cut() -> None:
    patch = (b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n--- a/x\n-old\n+new line\n"
             b"\\ No newline at end of file\ndiff --git a/y b/y\nBinary files a/y and b/y differ\n")
    whole = _LineBytes()
    whole.feed(patch)
    split = _LineBytes()
    for i in range(len(patch)):
        split.feed(patch[i:i + 1])
    assert whole.close() == split.close() == len(b"-- a/x\n") + len(b"old\n") + len(b"new line\n")


@pytest.fixture
def sandbox():  # type: ignore[no-untyped-def]
    """The Docker runner on the test image; each run's container is removed by its supervisor."""
    from conftest import in_ci

    from fleet_tui.config import RunnerConfig
    from fleet_tui.runners.docker import DockerRunner

    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        client.images.get(IMAGE)
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means there is nothing to run in
        if in_ci():
            pytest.fail(f"Docker tests must run under CI=true: {exc}")
        pytest.skip(f"no Docker engine with {IMAGE}: {exc}")
    return DockerRunner(RunnerConfig(kind="docker", image=IMAGE, memory="256m", cpus=1.0, pids=64),
                        instance="f" + uuid.uuid4().hex[:15], grace_s=1)


@pytest.mark.docker
@pytest.mark.anyio
async def test_in_the_sandbox_the_agent_resolves_and_the_final_commit_concludes_the_merge(
        tmp_path: Path, forge: Path, human: Path, source: Source, sandbox) -> None:  # type: ignore[no-untyped-def]
    from test_agents import ListLog, ShellEngine

    from fleet_tui.agents import AgentSupervisor
    from fleet_tui.engines.base import Task
    from fleet_tui.model import Role, RunState
    from fleet_tui.workspace import CommittingEngine

    first = WorkspaceManager(tmp_path / "workspaces")  # the first run's clone stays the host user's, to commit in
    branch = await pushed_fleet_branch(first, source, forge, text="def greet():\n    return 'HELLO'\n")
    manager = WorkspaceManager(tmp_path / "workspaces", owner=(1000, 1000) if os.geteuid() == 0 else None,
                               author=AUTHOR)
    base_sha = land(human, "main", "app.py", "def greet():\n    return 'hi'\n", "Conflicting PR")
    ws = await manager.create(f"update-{os.getpid()}", source, branch=branch, existing=True, update="merge")
    assert ws.conflicts == ("app.py",)

    resolve = "printf \"def greet():\\n    return 'HI'\\n\" > app.py"  # the agent edits and leaves it there
    engine = CommittingEngine(ShellEngine(resolve), "Work on #1", AUTHOR)
    log = ListLog()
    supervisor = AgentSupervisor(sandbox, engine, log=log)
    task = Task(run_id=ws.run_id, role=Role.DEV, prompt="resolve the conflicts", issue=1, branch=ws.branch)
    outcome = await supervisor.run(supervisor.build_spec(task, workspace=ws.repo, scratch=ws.scratch, timeout_s=60))
    assert outcome.state is RunState.SUCCEEDED, log.lines

    changes = await manager.collect(ws)  # the sandbox left the bundle; the runner brought the scratch dir back
    head = changes.head_sha
    assert sh("git", "rev-list", "--parents", "-n", "1", head, cwd=manager.mirror).split()[1:] == [ws.start_sha,
                                                                                                  base_sha]
    assert sh("git", "show", f"{head}:app.py", cwd=manager.mirror) == "def greet():\n    return 'HI'"
    assert changes.unresolved == () and changes.base_sha == base_sha and not changes.rewritten
