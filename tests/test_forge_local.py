"""What only the embedded local forge does: state in the git dir, real git merges by the human, bad paths."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from fleet_tui.forge.base import ForgeError, NotFound, marker
from fleet_tui.forge.local import LocalForge
from fleet_tui.git import git_sync

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def init_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git_sync("init", "-q", "-b", "main", cwd=path)
    (path / "app.py").write_text("def main():\n    return 1\n")
    git_sync("add", "-A", cwd=path)
    git_sync("commit", "-q", "-m", "initial", cwd=path)
    return path


def commit_branch(workspace: Path, name: str, files: dict[str, str], *, start: str = "origin/main") -> None:
    git_sync("checkout", "-q", "-B", name, start, cwd=workspace)
    for rel, text in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(text)
    git_sync("add", "-A", cwd=workspace)
    git_sync("commit", "-q", "-m", f"work on {name}", cwd=workspace)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "repo")


@pytest.fixture
def workspace(repo: Path, tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    git_sync("clone", "-q", str(repo), str(path), cwd=tmp_path)
    return path


def sha(repo: Path, ref: str) -> str:
    return git_sync("rev-parse", ref, cwd=repo)


async def open_pr(forge: LocalForge, workspace: Path, branch: str, files: dict[str, str], body: str) -> int:
    commit_branch(workspace, branch, files)
    await forge.push_branch(workspace, branch)
    return (await forge.open_pull(title=f"Work on {branch}", body=body, head=branch, base="main")).number


async def test_a_directory_that_is_not_a_repository_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="git init"):
        async with LocalForge(tmp_path / "plain"):
            pass
    (tmp_path / "plain").mkdir()
    with pytest.raises(ForgeError, match="git init"):
        async with LocalForge(tmp_path / "plain"):
            pass


async def test_state_survives_a_new_instance_on_the_same_repo(repo: Path, workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        issue = await forge.create_issue("Persist me", "body", ["proposed"])
        await forge.add_labels(issue.number, ["approved"], as_operator=True)
        await forge.post_comment(issue.number, "claimed", marker("run", "r1"))
        pr = await open_pr(forge, workspace, "fleet/1-persist", {"new.txt": "x\n"}, "Closes #1")
        await forge.post_review(pr, "fine", "")
    async with LocalForge(repo) as again:
        read = await again.get_issue(issue.number)
        assert set(read.labels) == {"proposed", "approved"}
        assert [c.body for c in read.comments] == [f"claimed\n\n{marker('run', 'r1')}"]
        events = await again.label_events(issue.number)
        assert [(e.label, e.actor.login) for e in events] == [("proposed", "fleet"), ("approved", "Test Operator")]
        [pull] = await again.list_pulls()
        assert pull.number == pr and [r.body for r in pull.reviews] == ["fine"]
        assert pull.reviews[0].commit_id == sha(repo, "fleet/1-persist")
        # numbering continues where it stopped: issues and PRs share it
        assert (await again.create_issue("next", "b")).number == pr + 1


async def test_the_database_lives_in_the_git_dir_and_the_checkout_stays_clean(repo: Path,
                                                                               workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        await forge.create_issue("Something", "body", ["proposed"])
        await open_pr(forge, workspace, "fleet/2-clean", {"a.txt": "a\n"}, "")
        assert forge.db_path == repo / ".git" / "fleet" / "forge.sqlite3"
        assert forge.db_path.is_file()
        assert git_sync("status", "--porcelain", "--untracked-files=all", cwd=repo) == ""
    assert git_sync("status", "--porcelain", "--untracked-files=all", cwd=repo) == ""


async def test_a_worktree_of_the_repo_shares_the_database(repo: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    git_sync("worktree", "add", "-q", "-b", "side", str(linked), cwd=repo)
    async with LocalForge(repo) as forge:
        issue = await forge.create_issue("Seen from both", "body")
    async with LocalForge(linked) as other:
        assert other.repo == "linked"
        assert (await other.get_issue(issue.number)).title == "Seen from both"
        assert other.db_path == repo / ".git" / "fleet" / "forge.sqlite3"
        # a branch made in a worktree of this repository is already there: pushing it is a lookup
        (linked / "side.txt").write_text("side\n")
        git_sync("add", "-A", cwd=linked)
        git_sync("commit", "-q", "-m", "side", cwd=linked)
        assert await other.push_branch(linked, "side") == sha(repo, "side")


async def test_identities_and_permissions(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with LocalForge(repo) as forge:
        operator = await forge.operator_identity()
        assert (operator.login, operator.type) == ("Test Operator", "User")  # git config user.name
        fleet = await forge.fleet_identity()
        assert (fleet.login, fleet.type) == ("fleet", "Bot")
        assert await forge.permission("Test Operator") == "admin"
        assert await forge.permission("fleet") == "write"
        assert await forge.permission("mallory") == "none"
        assert forge.base_branch == "main"
    async with LocalForge(repo, operator="alice") as named:
        assert (await named.operator_identity()).login == "alice"
        assert await named.permission("Test Operator") == "none"


async def test_unknown_numbers_are_not_found(repo: Path) -> None:
    async with LocalForge(repo) as forge:
        with pytest.raises(NotFound):
            await forge.add_labels(5, ["x"])
        with pytest.raises(NotFound):
            await forge.label_events(5)
        with pytest.raises(NotFound):
            await forge.post_comment(5, "hi", marker("run", "x"))
        with pytest.raises(NotFound):
            await forge.get_pull(5)


async def test_two_forges_racing_to_post_one_marked_comment_post_it_once(repo: Path) -> None:
    async with LocalForge(repo) as first, LocalForge(repo) as second:
        issue = await first.create_issue("Race", "body")
        tag = marker("claim", "issue-1")
        async with anyio.create_task_group() as tg:
            for forge in (first, second, first, second):
                tg.start_soon(forge.post_comment, issue.number, "claimed", tag)
        assert len((await second.get_issue(issue.number)).comments) == 1


async def test_a_pr_needs_a_pushed_branch_with_new_commits(repo: Path, workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        with pytest.raises(ForgeError, match="push it first"):
            await forge.open_pull(title="t", body="b", head="fleet/nothing", base="main")
        git_sync("branch", "empty", cwd=repo)
        with pytest.raises(ForgeError, match="no commits"):
            await forge.open_pull(title="t", body="b", head="empty", base="main")
        with pytest.raises(ForgeError, match="no such branch"):
            await forge.push_branch(workspace, "fleet/missing")
        assert await forge.list_pulls() == []


async def test_merge_as_human_makes_a_real_merge_and_closes_the_linked_issue(repo: Path,
                                                                            workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        linked = await forge.create_issue("Add a feature", "body", ["approved"])
        other = await forge.create_issue("Unrelated", "body")
        pr = await open_pr(forge, workspace, "fleet/1-feature", {"feature.py": "X = 1\n"},
                           f"Adds it.\n\nCloses #{linked.number}")
        base_before, head = sha(repo, "main"), sha(repo, "fleet/1-feature")

        merged = await forge.merge_as_human(pr)

        assert sha(repo, "main") == merged
        parents = git_sync("rev-list", "--parents", "-n", "1", merged, cwd=repo).split()[1:]
        assert parents == [base_before, head]
        assert f"#{pr}" in git_sync("log", "-1", "--format=%s", merged, cwd=repo)
        # main was checked out and clean, so the checkout moved with it
        assert (repo / "feature.py").read_text() == "X = 1\n"
        assert git_sync("status", "--porcelain", cwd=repo) == ""
        assert (await forge.get_issue(linked.number)).state == "closed"
        assert (await forge.get_issue(other.number)).state == "open"
        assert await forge.list_pulls() == []
        done = await forge.get_pull(pr)
        assert (done.state, done.head_sha, done.files) == ("merged", head, ("feature.py",))
        with pytest.raises(ForgeError, match="merged"):
            await forge.merge_as_human(pr)


async def test_merge_as_human_when_the_base_is_not_checked_out(repo: Path, workspace: Path) -> None:
    git_sync("checkout", "-q", "-b", "elsewhere", cwd=repo)
    (repo / "scratch.txt").write_text("uncommitted work on another branch\n")
    async with LocalForge(repo, base_branch="main") as forge:
        pr = await open_pr(forge, workspace, "fleet/2-side", {"side.py": "Y = 2\n"}, "")
        base_before, head = sha(repo, "main"), sha(repo, "fleet/2-side")
        merged = await forge.merge_as_human(pr)
    assert sha(repo, "main") == merged
    assert git_sync("rev-list", "--parents", "-n", "1", merged, cwd=repo).split()[1:] == [base_before, head]
    assert git_sync("symbolic-ref", "--short", "HEAD", cwd=repo) == "elsewhere"
    assert not (repo / "side.py").exists()
    assert (repo / "scratch.txt").exists()
    assert git_sync("worktree", "list", "--porcelain", cwd=repo).count("worktree ") == 1


async def test_a_conflicting_merge_is_refused_and_changes_nothing(repo: Path, workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        issue = await forge.create_issue("Change main()", "body")
        pr = await open_pr(forge, workspace, "fleet/3-conflict", {"app.py": "def main():\n    return 3\n"},
                           f"Closes #{issue.number}")
        (repo / "app.py").write_text("def main():\n    return 4\n")
        git_sync("commit", "-q", "-am", "meanwhile on main", cwd=repo)
        base_before = sha(repo, "main")

        [pull] = await forge.list_pulls()
        assert (pull.mergeable, pull.mergeable_state) == (False, "dirty")
        with pytest.raises(ForgeError, match=r"conflicts.*app\.py.*Nothing was changed"):
            await forge.merge_as_human(pr)

        assert sha(repo, "main") == base_before
        assert git_sync("status", "--porcelain", cwd=repo) == ""
        assert (await forge.get_pull(pr)).state == "open"
        assert (await forge.get_issue(issue.number)).state == "open"


async def test_a_dirty_checkout_of_the_base_is_not_merged_into(repo: Path, workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        pr = await open_pr(forge, workspace, "fleet/4-dirty", {"new.py": "Z = 1\n"}, "")
        assert (await forge.get_pull(pr)).mergeable_state == "clean"
        (repo / "app.py").write_text("def main():\n    return 'edited, not committed'\n")
        base_before = sha(repo, "main")
        with pytest.raises(ForgeError, match="uncommitted changes"):
            await forge.merge_as_human(pr)
        assert sha(repo, "main") == base_before
        assert "edited, not committed" in (repo / "app.py").read_text()
        assert (await forge.get_pull(pr)).state == "open"


async def test_a_bare_repository_works_and_a_rename_counts_as_one_file(tmp_path: Path, repo: Path,
                                                                       workspace: Path) -> None:
    bare = tmp_path / "served.git"
    git_sync("clone", "-q", "--bare", str(repo), str(bare), cwd=tmp_path)
    async with LocalForge(bare, operator="alice") as forge:
        assert (forge.repo, forge.base_branch) == ("served", "main")
        git_sync("checkout", "-q", "-B", "fleet/5-rename", "origin/main", cwd=workspace)
        git_sync("mv", "app.py", "main.py", cwd=workspace)
        git_sync("commit", "-q", "-m", "rename", cwd=workspace)
        await forge.push_branch(workspace, "fleet/5-rename")
        pull = await forge.open_pull(title="Rename", body="", head="fleet/5-rename", base="main")
        assert (pull.files, pull.lines_changed, pull.html_url) == (("main.py",), 0, f"local:served#{pull.number}")
        merged = await forge.merge_as_human(pull.number)
        assert git_sync("rev-parse", "main", cwd=bare) == merged
        assert git_sync("ls-tree", "--name-only", "main", cwd=bare).split() == ["main.py"]


async def test_edits_are_recorded_with_their_editor_and_survive_a_restart(repo: Path) -> None:
    async with LocalForge(repo, operator="alice") as forge:
        issue = await forge.create_issue("Proposal", "Do one thing.", ["approved"])
        await forge.edit_issue(issue.number, title="Proposal, widened", as_user="bob")
        await forge.edit_issue(issue.number, body="Do two things.")
        with pytest.raises(NotFound):
            await forge.edit_issue(999, title="x")
    async with LocalForge(repo, operator="alice") as again:
        edits = await again.text_edits(issue.number)
        assert [(e.field, e.actor.login, e.actor.type) for e in edits] == [
            ("title", "bob", "User"), ("body", "fleet", "Bot")]
        assert [e.kind for e in await again.label_events(issue.number)] == ["labeled"]  # renames are not labels
        read = await again.get_issue(issue.number)
        assert (read.title, read.body) == ("Proposal, widened", "Do two things.")
        assert read.updated_at is not None and read.updated_at >= edits[-1].at


async def test_default_branch_is_the_one_checked_out(repo: Path) -> None:
    git_sync("checkout", "-q", "-b", "trunk", cwd=repo)
    async with LocalForge(repo) as forge:
        assert await forge.default_branch() == "trunk"
        source = await forge.git_source()
        assert Path(source.url) == repo.resolve() and dict(source.env) == {}


async def test_a_forced_push_without_a_lease_replaces_the_branch(repo: Path, workspace: Path) -> None:
    async with LocalForge(repo) as forge:
        number = await open_pr(forge, workspace, "fleet/3-rebase", {"x.py": "x = 1\n"}, "")
        git_sync("commit", "-q", "--amend", "-m", "rebased", cwd=workspace)
        new = await forge.push_branch(workspace, "fleet/3-rebase", force=True)
        assert new == sha(workspace, "fleet/3-rebase") == (await forge.get_pull(number)).head_sha
